"""A request body of tiny chunks (1 or 2 bytes each, the worst case of chunked framing) costs the worker about what
nginx's costs it: memory near the body's size, and turns for the worker's other clients while it is parsed.

nginx parses a chunked body in place, a byte at a time in C (nginx release-1.27.1 src/http/ngx_http_parse.c:2142,
ngx_http_parse_chunked: `for (pos = b->pos; pos < b->last; pos++)`), into one buffer of client_body_buffer_size,
the rest written to a temporary file (src/http/ngx_http_request_body.c:1338-1340, ngx_http_request_body_save_filter:
`if (rb->rest > 0) { if (rb->bufs && rb->buf && rb->buf->last == rb->buf->end && ngx_http_write_request_body(r)
!= NGX_OK)`): neither what a body holds nor the time its parsing takes grows with the number of its chunks. The
gateway parses in Python, a body event per chunk (h11) or per run of chunks (llhttp): so a body read whole is one
buffer (gateway.pipeline.request_buffer.read_whole, Exchange.read_body), and the body readers give the worker's
other tasks a turn every CHECKPOINT_EVERY body events (gateway.http.net.Conn.pace), the llhttp codec joining at most
256 chunks into an event. The mechanisms are shown sans-I/O on a real codec and Exchange over a socket pair; one
gateway shows a flooding client and another client of the same worker.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable

import pytest
import trio
from backends import EchoBackend, request, service

from gateway.http.codec import NEED_DATA, Request, ServerCodec
from gateway.http.codec_h11 import H11Server
from gateway.http.codec_llhttp import LlhttpServer
from gateway.http.net import CHECKPOINT_EVERY, RECV_SIZE, Conn
from gateway.http.server import Exchange, ServerSettings
from gateway.http.timers import ConnTimer, Phase
from gateway.pipeline.request_buffer import read_whole

HEAD = b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"
CODECS = pytest.mark.parametrize("codec_cls", [H11Server, LlhttpServer], ids=["h11", "llhttp"])
# Chunks parsed at most between two turns of the worker's other tasks: an event each (h11), or up to 256 an event
# (llhttp, gateway.http.codec_llhttp._JOIN_MOST), CHECKPOINT_EVERY events between two turns.
CHUNKS_PER_TURN = {H11Server: CHECKPOINT_EVERY, LlhttpServer: 256 * CHECKPOINT_EVERY}
TIMEOUT = 10


def _exchange(codec_cls: type[ServerCodec], conn: Conn, data: bytes = b"") -> Exchange:
    """An Exchange for HEAD (a chunked POST) on `conn`, its codec having read `data` after the head."""
    codec = codec_cls()
    codec.receive_data(HEAD + data)
    req = codec.next_event()
    assert type(req) is Request
    return Exchange(req, conn, codec, ConnTimer(math.inf, Phase.BUSY), ServerSettings(codec_cls))


async def _read_whole(ex: Exchange) -> object:
    return await read_whole(ex, b"")


async def _read_body(ex: Exchange) -> object:
    return (await ex.read_body(1 << 20))[0]


# --- a body kept in memory costs what it weighs, however it was chunked ---------------------------------------------


@CODECS
@pytest.mark.parametrize("reader", [_read_whole, _read_body], ids=["read_whole", "read_body"])
async def test_a_body_of_2_byte_chunks_held_in_memory_weighs_about_its_size(
        codec_cls: type[ServerCodec], reader: Callable[[Exchange], Awaitable[object]],
        conn_pair: tuple[Conn, socket.socket]) -> None:
    """A body read whole in memory (request buffering, read_whole; a plugin's read_body) while the client stalls
    before its last chunk holds about its own size (and what the codec keeps of the last read), not an object and a
    list entry per 2-byte chunk (~24 times the body): nginx holds client_body_buffer_size at most
    (ngx_http_request_body.c:1338-1340)."""
    conn, peer = conn_pair
    size = 10_000  # (h11 parses an event per chunk, slowly under tracemalloc)
    sent = b"2\r\nXY\r\n" * (size // 2)
    ex = _exchange(codec_cls, conn)
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
                while ex.body_received < size:  # read all but the last chunk, which has not come
                    await trio.sleep(0.01)
                held = tracemalloc.get_traced_memory()[0] - before
                peer.sendall(LAST_CHUNK)
    finally:
        tracemalloc.stop()
    assert got == [b"XY" * (size // 2)]
    assert held < 2 * size + RECV_SIZE, f"a {size}-byte body of 2-byte chunks held {held} bytes"


# --- one client's tiny chunks do not hold the worker --------------------------------------------------------------


def test_the_llhttp_codec_gives_a_read_of_1_byte_chunks_as_a_few_events() -> None:
    """llhttp calls back once per chunk; the codec joins the pieces of a read into events of up to 256 chunks, so a
    read of 10,000 1-byte chunks is a few dozen events (objects to hold and to hand over), not 10,000."""
    codec = LlhttpServer()
    codec.receive_data(HEAD + b"1\r\nX\r\n" * 10_000)
    assert type(codec.next_event()) is Request
    events = []
    while (ev := codec.next_event()) is not NEED_DATA:
        events.append(ev)
    assert b"".join(events) == b"X" * 10_000
    assert len(events) == math.ceil(10_000 / 256)


@CODECS
async def test_reading_a_body_of_1_byte_chunks_gives_the_other_tasks_turns(
        codec_cls: type[ServerCodec], conn_pair: tuple[Conn, socket.socket]) -> None:
    """Body events parsed from bytes already read (no read waits, so no read is a checkpoint) count against the
    connection's checkpoint budget: the worker's other tasks get a turn at least every CHUNKS_PER_TURN chunks, as
    nginx serves its other connections while it parses one's 1-byte chunks (ngx_http_parse.c:2142)."""
    conn, _ = conn_pair
    chunks = 3 * CHUNKS_PER_TURN[codec_cls]
    ex = _exchange(codec_cls, conn, b"1\r\nX\r\n" * chunks + LAST_CHUNK)
    turns = 0
    body = bytearray()

    async def other_task() -> None:
        nonlocal turns
        while True:
            await trio.lowlevel.checkpoint()
            turns += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other_task)
        await trio.lowlevel.checkpoint()  # (the other task is under way)
        turns = 0
        while (piece := await ex.receive_body()) is not None:
            body += piece
        nursery.cancel_scope.cancel()
    assert body == b"X" * chunks
    assert turns >= 2, f"{turns} turns for the other task while {chunks} 1-byte chunks were parsed"  # (3 expected)


# A client in a process of its own (not a thread of this one, whose GIL it would share with the gateway): uploads an
# endless chunked body of 1-byte chunks as fast as the gateway reads it, for at most argv[2] seconds or until its
# stdin closes; then resets the connection (what the gateway has not read yet is dropped by the kernel).
_FLOOD = r"""
import select, socket, struct, sys, time
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
sock.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
sock.setblocking(False)
piece = memoryview(b"1\r\nX\r\n" * 10000)
view = piece
deadline = time.monotonic() + float(sys.argv[2])
print("flooding", flush=True)
while time.monotonic() < deadline:
    readable, writable, _ = select.select([sys.stdin], [sock], [], 0.1)
    if readable:
        break
    if writable:
        try:
            view = view[sock.send(view):] or piece
        except BlockingIOError:
            pass
sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
sock.close()
"""


async def test_a_client_uploading_1_byte_chunks_does_not_starve_the_other_clients(nursery, gateway):
    """One client uploading 1-byte chunks as fast as the worker reads them does not hold up another client of the
    same worker: nginx parses them in C and serves its other connections meanwhile (ngx_http_parse.c:2142). The
    gateway parses them in Python; its body readers yield by the checkpoint budget (Conn.pace), which counts body
    events as well as reads: a read of 1-byte chunks is ~11,000 chunks, one read's events used to be parsed without
    a turn for anyone else, and 32 reads between two turns (a second and more)."""
    backend = EchoBackend()
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{backend.port}")]})
    assert (await request(port, "GET", "/warm")).status == 200
    flood = subprocess.Popen([sys.executable, "-c", _FLOOD, str(port), "4"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE)
    try:
        assert flood.stdout is not None and flood.stdout.readline() == b"flooding\n"
        started = time.monotonic()  # (a worker that serves nobody else meanwhile does not end this sleep on time)
        await trio.sleep(0.5)  # the upload is under way
        with trio.fail_after(TIMEOUT):
            reply = await request(port, "GET", "/victim")
        waited = time.monotonic() - started - 0.5
    finally:
        flood.stdin.close()  # type: ignore[union-attr]  # (the flood ends at once)
        try:
            flood.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(flood.pid, signal.SIGKILL)
            flood.wait()
    assert reply.status == 200
    assert waited < 1.0, f"another client's GET took {waited:.2f}s while one client uploaded 1-byte chunks"
