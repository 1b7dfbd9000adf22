"""What rate limiting by MCP method or tool counts in a request (rate-limiting `limit_by: mcp-method | mcp-tool`).

The body decides, never the Mcp-Method / Mcp-Name headers alone (a client could name one tool in a header and call
another): it is read as far as gateway.mcp.peek_bytes (gateway.mcp.body), and whole (up to WHOLE_LIMIT) when what
to count lies beyond that (a batch, or a tool name after large arguments), so padding a body cannot dodge a limit.
`mcp-tool` counts each tools/call under its tool's name, `mcp-method` each request or notification under its method;
a batch counts each element. What has no method or tool to count (GET streams, DELETE, responses, bodies that are
not JSON-RPC) is not counted. Names longer than MAX_NAME are counted under a digest, so keys stay small.
"""

from __future__ import annotations

import hashlib
from typing import Any

from gateway.http.server import Exchange
from gateway.mcp import jsonrpc
from gateway.mcp.body import peeked, whole
from gateway.mcp.step import McpShared

MAX_NAME = 128
WHOLE_LIMIT = 1 << 20  # a body whose counted names lie past peek_bytes is read whole up to this, else refused
NOT_RPC = object()  # the request's id when it is not a JSON-RPC request (the limit answers with Kong's body)
TOO_LARGE = object()  # counted names lie past WHOLE_LIMIT: the request is refused (413)


def _name(name: str) -> str:
    return name if len(name) <= MAX_NAME else "sha256:" + hashlib.sha256(name.encode()).hexdigest()


async def counted(ex: Exchange, shared: McpShared, tools: bool) -> list[tuple[str, Any]] | object | None:
    """(name to count, JSON-RPC id to answer a refusal with) for each thing the request counts; None when the
    request was answered while its body was read (408); TOO_LARGE when what to count lies past WHOLE_LIMIT."""
    if ex.request.method != b"POST":
        return []
    mcp = await peeked(ex, shared)
    if mcp is None:
        return None
    info = mcp.info
    if info is None or not info.valid:
        return []
    if not mcp.whole_info and (info.batch or info.method is None or (tools and info.method == "tools/call"
                                                                      and info.name is None)):
        mcp, complete = await whole(ex, WHOLE_LIMIT)
        if not complete:
            return TOO_LARGE
        info = mcp.info
        if info is None or not info.valid:
            return []
    if info.batch:
        decoded = jsonrpc.decode_messages(mcp.body or b"")
        if decoded is None:
            return []  # not a batch of JSON-RPC messages: nothing the server will run
        out = []
        for m in decoded[0]:
            name = m.name if tools else m.method
            if name is not None and (not tools or m.method == "tools/call"):
                out.append((_name(name), m.answer_id if m.has_id else NOT_RPC))
        return out
    name = info.tool if tools else info.method
    if name is None:
        return []
    return [(_name(name), info.id)]
