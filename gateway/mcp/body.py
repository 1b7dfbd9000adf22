"""An MCP request's body as the policies that judge it read it, shared with the rest of the pipeline.

The first reader of a body (the router's peek, rate limiting by MCP method or tool, ai-mcp-proxy) keeps what it read
in the request's `McpRequest` (gateway.mcp.step), found on the exchange under `state["mcp"]` (server.BODY_READER);
later readers go on from there, and the forwarder sends those bytes first, so a body is read once and reaches the
upstream unchanged. A plugin that reads the body through the Exchange (request-transformer, key-auth's key_in_body,
hmac-auth's digest) takes those bytes back first (McpRequest.give_back), and what it leaves or sets is what the next
reader and the forwarder get. A whole body is decoded once (`messages`), however many policies look at its messages.
"""

from __future__ import annotations

from gateway.http.server import BODY_READER, Exchange
from gateway.mcp import jsonrpc
from gateway.mcp.confirm import read_all
from gateway.mcp.step import McpRequest


def current(ex: Exchange) -> McpRequest | None:
    """The request's McpRequest, if something made one."""
    state = ex.state
    return state.get(BODY_READER) if state is not None else None


def attach(ex: Exchange, mcp: McpRequest) -> McpRequest:
    """Keep `mcp` on the exchange: the MCP readers after this one go on from it, and the Exchange's readers take
    back the bytes it holds (Exchange.take_buffered_body, read_body)."""
    if ex.state is None:
        ex.state = {BODY_READER: mcp}
    else:
        ex.state[BODY_READER] = mcp
    return mcp


def buffered(ex: Exchange, limit: int) -> tuple[McpRequest, bool] | None:
    """`whole`'s answer when it needs no wait (the body came with the head, or is known to be too long); None when
    more of the body must be read first (then await `whole`)."""
    mcp = current(ex) or attach(ex, McpRequest())
    if mcp.body is None:
        mcp.body, mcp.body_done = ex.take_buffered_body()
    if mcp.body_done:
        return mcp, len(mcp.body) <= limit
    return (mcp, False) if len(mcp.body) > limit else None


async def whole(ex: Exchange, limit: int) -> tuple[McpRequest, bool]:
    """The request with its whole body read, and False when the body is longer than `limit` bytes (then what was
    read stays in `mcp.body`). A client stalling mid-body is the connection loop's (client_body_timeout: closed,
    logged 408)."""
    mcp = current(ex) or attach(ex, McpRequest())
    return mcp, await read_all(ex, mcp, limit)


def messages(mcp: McpRequest) -> tuple[list[jsonrpc.Message], bool] | None:
    """The messages of a whole body (see jsonrpc.decode_messages), decoded once per request."""
    decoded = mcp.decoded
    if decoded is None:
        decoded = mcp.decoded = jsonrpc.decode_messages(mcp.body or b"") or False
    return decoded or None


def leniently(mcp: McpRequest) -> tuple[list[jsonrpc.Message], bool] | None:
    """The messages of a whole body that `messages` refuses, as a server may still read it (NaN, Infinity: see
    jsonrpc.read_leniently), read once per request: for counting and the audit, never for forwarding."""
    lenient = mcp.lenient
    if lenient is None:
        lenient = mcp.lenient = jsonrpc.read_leniently(mcp.body or b"") or False
    return lenient or None
