"""What rate limiting by MCP method or tool counts in a request (rate-limiting `limit_by: mcp-method | mcp-tool`).

The body decides, never the Mcp-Method / Mcp-Name headers alone (a client could name one tool in a header and call
another), and what is counted is what a server would run: a call the gateway cannot attribute is refused, never
forwarded uncounted. A body of up to WHOLE_LIMIT bytes is read whole and decoded (once for every policy that looks at
it, gateway.mcp.body); one msgspec refuses is read as Python's parser reads it (NaN, Infinity, out-of-range numbers;
a batch of any length, its elements that are not objects left out: a server runs the others). A longer body is
refused (413): JSON parsers keep the last of a repeated member, so a method or tool seen in its first bytes may not be
the one run, and padding cannot dodge a limit. So is a body that begins as JSON but that no parser reads. `mcp-tool`
counts each tools/call under its tool's name, `mcp-method` each request or notification under its method; a batch
counts each element. What has no method or tool to count (GET streams, DELETE, responses, bodies that do not begin
as JSON) is not counted. Names longer than MAX_NAME are counted under a digest, so keys stay small (the
rate-limiting handler's key rule, in a namespace of its own, so no short name shares a long one's counter).
"""

from __future__ import annotations

from typing import Any

from gateway.http.server import Exchange
from gateway.mcp import jsonrpc
from gateway.mcp.body import buffered, leniently, messages, whole
from gateway.mcp.confirm import WHOLE_LIMIT  # bodies past it that begin as JSON are refused (413)

MAX_NAME = 128
NOT_RPC = object()  # the request's id when it is not a JSON-RPC request (the limit answers with Kong's body)
TOO_LARGE = object()  # a body past WHOLE_LIMIT: what it calls cannot be known, it is refused (413)
UNREADABLE = object()  # a body that begins as JSON but no parser reads (or a batch past MAX_BATCH): refused (400)


async def counted(ex: Exchange, tools: bool) -> list[tuple[str, Any]] | object:
    """(name to count, JSON-RPC id to answer a refusal with) for each thing the request counts; TOO_LARGE or
    UNREADABLE when what it calls cannot be known (past WHOLE_LIMIT; in JSON no parser reads, or too long a batch)."""
    if ex.request.method != b"POST":
        return []
    mcp, complete = buffered(ex, WHOLE_LIMIT) or await whole(ex, WHOLE_LIMIT)
    body = mcp.body or b""
    if not complete:
        return TOO_LARGE if jsonrpc.looks_like_json(body) else []
    decoded = messages(mcp) or leniently(mcp)
    if decoded is None:
        return UNREADABLE if jsonrpc.looks_like_json(body) else []  # not JSON: nothing a server will run
    batch = BatchIds([m.answer_id for m in decoded[0] if m.has_id]) if decoded[1] else None
    out = []
    for m in decoded[0]:
        name = m.name if tools else m.method
        if name is not None and (not tools or m.method == "tools/call"):
            out.append((name, batch if batch is not None else m.answer_id if m.has_id else NOT_RPC))
    return out


class BatchIds(list[Any]):
    """A refusal's id when the request is a batch: the ids of all its requests, each answered with the error (a
    batch is answered with an array of responses, JSON-RPC 2.0 section 6; the whole request is refused)."""
