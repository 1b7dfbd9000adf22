"""JSON-RPC (MCP) request bodies shared by the load generators, and how to read an MCP answer.

Used by ``scripts/bench`` (its readiness probe POSTs the same body wrk sends), by ``loadtest/locustfile.py``
and by the tests, which check that the literal body in ``loadtest/post_1k.lua`` is exactly ``tools_call_body()``.
Standard library only.

    python loadtest/mcp_payloads.py        # print the 1 KB tools/call body
"""

from __future__ import annotations

import json

TOOLS_CALL_SIZE = 1024
CONTENT_TYPE = "application/json"
# MCP streamable HTTP clients announce both; plain JSON-RPC backends ignore it.
MCP_ACCEPT = "application/json, text/event-stream"
PROTOCOL_VERSION = "2025-06-18"  # a session (initialize handshake, Mcp-Session-Id)
STATELESS_VERSION = "2026-07-28"  # no session; the method and tool in headers, the version in _meta


def _compact(message: dict) -> str:
    return json.dumps(message, separators=(",", ":"))


def tools_call_body(size: int = TOOLS_CALL_SIZE, request_id: int = 1) -> str:
    """A ``tools/call`` of the ``echo`` tool, its text argument padded so the body is exactly ``size`` bytes."""

    def message(text: str) -> str:
        return _compact(
            {
                "jsonrpc": "2.0",
                "id": request_id,
                "method": "tools/call",
                "params": {"name": "echo", "arguments": {"text": text}},
            }
        )

    padding = size - len(message(""))
    if padding < 0:
        raise ValueError(f"a tools/call body cannot be smaller than {len(message(''))} bytes")
    return message("x" * padding)


def initialize_body(request_id: int = 1) -> str:
    return _compact(
        {
            "jsonrpc": "2.0",
            "id": request_id,
            "method": "initialize",
            "params": {
                "protocolVersion": PROTOCOL_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "gateway-loadtest", "version": "0.1.0"},
            },
        }
    )


def initialized_notification() -> str:
    return _compact({"jsonrpc": "2.0", "method": "notifications/initialized"})


def tools_list_body(request_id: int = 1) -> str:
    return _compact({"jsonrpc": "2.0", "id": request_id, "method": "tools/list", "params": {}})


def call_body(tool: str, arguments: dict | None = None, request_id: int = 1, progress_token: int | None = None) -> str:
    """A session's ``tools/call``; with a progress token the server may send progress notifications first."""
    params: dict = {"name": tool, "arguments": arguments or {}}
    if progress_token is not None:
        params["_meta"] = {"progressToken": progress_token}
    return _compact({"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params})


def stateless_call(tool: str, arguments: dict | None = None, request_id: int = 1) -> tuple[dict[str, str], str]:
    """A 2026-07-28 ``tools/call``: (its headers, its body)."""
    headers = {
        "Content-Type": CONTENT_TYPE,
        "Accept": MCP_ACCEPT,
        "MCP-Protocol-Version": STATELESS_VERSION,
        "Mcp-Method": "tools/call",
        "Mcp-Name": tool,
    }
    meta = {
        "io.modelcontextprotocol/protocolVersion": STATELESS_VERSION,
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    body = {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments or {}, "_meta": meta},
    }
    return headers, _compact(body)


def messages(content_type: str, text: str) -> list[dict]:
    """The JSON-RPC messages of an answer: the JSON body, or each ``data:`` of a text/event-stream body (the
    server's notifications first, the response last). ValueError if the body is neither."""
    if content_type.startswith("text/event-stream"):
        out = []
        for event in text.replace("\r\n", "\n").split("\n\n"):
            data = "\n".join(line[5:].lstrip() for line in event.split("\n") if line.startswith("data:"))
            if data:
                out.append(json.loads(data))
        return out
    if content_type.startswith("application/json"):
        message = json.loads(text)
        return message if isinstance(message, list) else [message]
    raise ValueError(f"not an MCP answer: Content-Type {content_type or 'missing'}")


def response_to(request_id: int, answer: list[dict]) -> dict:
    """The JSON-RPC response with this id among an answer's messages; ValueError if there is none."""
    for message in answer:
        if message.get("id") == request_id and ("result" in message or "error" in message):
            return message
    raise ValueError(f"no response with id {request_id} among {len(answer)} message(s)")


if __name__ == "__main__":
    print(tools_call_body())
