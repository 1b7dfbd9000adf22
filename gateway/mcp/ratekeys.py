"""What rate limiting by MCP method or tool counts in a request (rate-limiting `limit_by: mcp-method | mcp-tool`).

The body decides, never the Mcp-Method / Mcp-Name headers alone (a client could name one tool in a header and call
another). A body of up to WHOLE_LIMIT bytes is read whole and decoded (once for every policy that looks at it,
gateway.mcp.body); of a longer one the first WHOLE_LIMIT bytes are scanned, and a call whose tool lies past them is
refused (413): padding a body cannot dodge a limit. `mcp-tool` counts each tools/call under its tool's name,
`mcp-method` each request or notification under its method; a batch counts each element. What has no method or
tool to count (GET streams, DELETE, responses, bodies that are not JSON-RPC) is not counted. Names longer than
MAX_NAME are counted under a digest, so keys stay small.
"""

from __future__ import annotations

import hashlib
from typing import Any

from gateway.http.server import Exchange
from gateway.mcp import jsonrpc
from gateway.mcp.body import buffered, messages, whole

MAX_NAME = 128
WHOLE_LIMIT = 1 << 20  # bodies up to this are read whole; of longer ones this much is scanned
NOT_RPC = object()  # the request's id when it is not a JSON-RPC request (the limit answers with Kong's body)
TOO_LARGE = object()  # counted names lie past WHOLE_LIMIT: the request is refused (413)


def _name(name: str) -> str:
    return name if len(name) <= MAX_NAME else "sha256:" + hashlib.sha256(name.encode()).hexdigest()


async def counted(ex: Exchange, tools: bool) -> list[tuple[str, Any]] | object:
    """(name to count, JSON-RPC id to answer a refusal with) for each thing the request counts; TOO_LARGE when what
    to count lies past WHOLE_LIMIT."""
    if ex.request.method != b"POST":
        return []
    mcp, complete = buffered(ex, WHOLE_LIMIT) or await whole(ex, WHOLE_LIMIT)
    if not complete:
        info = jsonrpc.peek((mcp.body or b"")[:WHOLE_LIMIT], False)
        if not info.valid or info.batch or info.method is None or (tools and info.method == "tools/call"
                                                                    and info.name is None):
            return TOO_LARGE if info.valid else []
        name = info.tool if tools else info.method
        return [(_name(name), info.id)] if name is not None else []
    decoded = messages(mcp)
    if decoded is None:
        return []  # not JSON-RPC: nothing a server will run
    batch = BatchIds([m.answer_id for m in decoded[0] if m.has_id]) if decoded[1] else None
    out = []
    for m in decoded[0]:
        name = m.name if tools else m.method
        if name is not None and (not tools or m.method == "tools/call"):
            out.append((_name(name), batch if batch is not None else m.answer_id if m.has_id else NOT_RPC))
    return out


class BatchIds(list[Any]):
    """A refusal's id when the request is a batch: the ids of all its requests, each answered with the error (a
    batch is answered with an array of responses, JSON-RPC 2.0 section 6; the whole request is refused)."""
