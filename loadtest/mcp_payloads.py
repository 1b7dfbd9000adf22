"""JSON-RPC (MCP) request bodies shared by the load generators.

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
PROTOCOL_VERSION = "2025-03-26"


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


if __name__ == "__main__":
    print(tools_call_body())
