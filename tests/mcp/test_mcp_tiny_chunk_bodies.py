"""The MCP body readers (gateway.mcp.confirm.read_all, gateway.mcp.step.read_peek) hold a body of tiny chunks in one
buffer, as the gateway's other readers do (tests/http/test_tiny_chunk_bodies.py) and nginx holds at most
client_body_buffer_size (release-1.27.1 src/http/ngx_http_request_body.c:1338-1340): what they hold is the body's
bytes, not an object per chunk (the h11 codec gives one body event per chunk)."""

from __future__ import annotations

import math
import socket
import tracemalloc
from types import SimpleNamespace

import trio

from gateway.http.codec import Request
from gateway.http.codec_h11 import H11Server
from gateway.http.net import RECV_SIZE, Conn
from gateway.http.server import Exchange, ServerSettings
from gateway.http.timers import ConnTimer, Phase
from gateway.mcp import body as mcp_body
from gateway.mcp.step import McpRequest, read_peek

HEAD = b"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"
TIMEOUT = 10


def _h11_exchange(conn: Conn) -> Exchange:
    """An Exchange for HEAD (a chunked POST) on `conn`, with the h11 codec (gateway.http_codec: h11): one body event
    per chunk, as h11 gives them."""
    codec = H11Server()
    codec.receive_data(HEAD)
    req = codec.next_event()
    assert type(req) is Request
    return Exchange(req, conn, codec, ConnTimer(math.inf, Phase.BUSY), ServerSettings(H11Server))


async def _held_while_stalled(ex: Exchange, peer: socket.socket, size: int, reader) -> tuple[int, list[object]]:
    """Memory the reader holds once it has read `size` bytes of a body of 2-byte chunks, the last chunk not sent."""
    sent = b"2\r\nXY\r\n" * (size // 2)
    got: list[object] = []
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:

                async def read() -> None:
                    got.append(await reader(ex))

                nursery.start_soon(read)
                await trio.to_thread.run_sync(peer.sendall, sent)
                while ex.body_received < size:
                    await trio.sleep(0.01)
                held = tracemalloc.get_traced_memory()[0] - before
                peer.sendall(LAST_CHUNK)
    finally:
        tracemalloc.stop()
    return held, got


async def test_mcp_whole_body_of_2_byte_chunks_weighs_about_its_size_h11(conn_pair) -> None:
    """gateway.mcp.body.whole (ai-mcp-proxy, ai-mcp-oauth2, the MCP rate keys, the MCP router's confirmation, up to
    1 MiB): a list of one bytes object per chunk weighed about 20 times the body."""
    conn, peer = conn_pair
    size = 10_000
    ex = _h11_exchange(conn)

    async def reader(ex: Exchange) -> object:
        mcp, whole = await mcp_body.whole(ex, 1 << 20)
        return mcp.body if whole else None

    held, got = await _held_while_stalled(ex, peer, size, reader)
    assert got == [b"XY" * (size // 2)]
    assert held < 2 * size + RECV_SIZE, f"a {size}-byte body of 2-byte chunks held {held} bytes in read_all"


async def test_mcp_peek_of_2_byte_chunks_weighs_about_its_size_h11(conn_pair) -> None:
    """gateway.mcp.step.read_peek (the MCP router's and the Mcp-Method header check's first peek_bytes, 64 KiB by
    default, up to 16 MiB) likewise."""
    conn, peer = conn_pair
    size = 10_000
    ex = _h11_exchange(conn)
    shared = SimpleNamespace(peek_bytes=1 << 20, body_timeout=TIMEOUT)

    async def reader(ex: Exchange) -> object:
        mcp = McpRequest()
        assert await read_peek(ex, mcp, shared)  # type: ignore[arg-type]
        return mcp.body

    held, got = await _held_while_stalled(ex, peer, size, reader)
    assert got == [b"XY" * (size // 2)]
    assert held < 2 * size + RECV_SIZE, f"a {size}-byte body of 2-byte chunks held {held} bytes in read_peek"

