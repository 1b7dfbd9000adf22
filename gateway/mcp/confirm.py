"""A call seen in a body's first `peek_bytes`, confirmed against the whole body before routing or a header check
relies on it.

JSON parsers keep the last of a repeated member (the `mcp` SDK's pydantic_core, Python's json, msgspec): a body can
name `whoami` in its first bytes and `dangerous` after them, and the server runs `dangerous`. So a body longer than
peek_bytes whose call matters (a route on MCP method or tool could take it, or it carries Mcp-Method / Mcp-Name) is
read whole, up to `whole_limit`, and decoded (past it, a body whose headers no route decided on is forwarded
unconfirmed: gateway.mcp.step); the call it names must be the one its first bytes name, as far as they name it:
what they leave unnamed (a response has no method; a method or tool may follow large params) is taken from the
whole body. A body within peek_bytes was decoded whole by the peek already and is not read again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.http.server import Exchange
from gateway.mcp import jsonrpc

if TYPE_CHECKING:
    from gateway.mcp.step import McpRequest

WHOLE_LIMIT = 1 << 20  # bodies up to this are read whole to know their call; longer ones cannot be known


def whole_limit(peek_bytes: int) -> int:
    """How much of a body longer than peek_bytes is read to confirm its call (never less than peek_bytes)."""
    return max(WHOLE_LIMIT, peek_bytes)


async def read_to(ex: Exchange, mcp: McpRequest, size: int) -> None:
    """Read the body into `mcp.body` (after what a reader before kept there) until it is whole or holds `size`
    bytes. A client stalling mid-body is the connection loop's (client_body_timeout: closed, logged 408)."""
    if mcp.body is None:
        body, done = ex.take_buffered_body()
    else:
        body, done = mcp.body, mcp.body_done
    if not done and len(body) < size:
        whole = bytearray(body)  # (one buffer, not an object per chunk: a body of tiny chunks weighs its bytes)
        while len(whole) < size:
            chunk = await ex.receive_body()
            if chunk is None:
                done = True
                break
            whole += chunk
        body = bytes(whole)
    mcp.body, mcp.body_done = body, done


async def read_all(ex: Exchange, mcp: McpRequest, limit: int) -> bool:
    """Read the rest of the body into `mcp.body`, stopping once it is longer than `limit`; True when it is whole and
    within it."""
    await read_to(ex, mcp, limit + 1)
    return mcp.body_done and len(mcp.body or b"") <= limit


def whole_call(mcp: McpRequest) -> jsonrpc.RpcInfo:
    """The call of the whole body in `mcp.body` (read whole by `read_all`), as a server's parser reads it."""
    return jsonrpc.peek(mcp.body or b"", True)


def unnamed(prefix: jsonrpc.RpcInfo, names: bool = False) -> str | None:
    """What of its call a body's first peek_bytes leave unnamed: its JSON-RPC method, a tools/call's tool, and with
    `names` the params member any method mirrors in Mcp-Name; None when they name it all."""
    if prefix.method is None:
        return "JSON-RPC method"
    key = jsonrpc.NAME_BEARING.get(prefix.method)
    if prefix.name is None and key is not None and (names or prefix.method == "tools/call"):
        return "tool (params.name)" if prefix.method == "tools/call" else f"params.{key}"
    return None


def mismatch(prefix: jsonrpc.RpcInfo, whole: jsonrpc.RpcInfo, peek_bytes: int) -> str | None:
    """Why the whole body's call (its method, and a tools/call's tool: what routes match) is not the one its first
    peek_bytes name, or None when it is; what they leave unnamed is the whole body's to say."""
    if prefix.method is not None and whole.method != prefix.method:
        what = "JSON-RPC method"
    elif prefix.tool is not None and whole.tool != prefix.tool:
        what = "tool (params.name)"
    else:
        return None
    return (f"the body names its {what} again after its first {peek_bytes} bytes (gateway.mcp.peek_bytes), and the "
            "last one, which a server runs, is not the one named in them: send each member once")
