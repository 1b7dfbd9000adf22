"""A request or response body of tiny chunks (1 or 2 bytes each, the worst case of chunked framing) costs the worker
about what nginx's costs it: memory near the body's size, and turns for the worker's other clients while it is parsed.

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

An upstream's chunked body is parsed by the same function, in place in nginx's proxy buffers
(src/http/modules/ngx_http_proxy_module.c:2182 ngx_http_proxy_chunked_filter, :2400
ngx_http_proxy_non_buffered_chunked_filter). The gateway's client codec joins as the server's does
(LlhttpClient.next_event); whatever takes an upstream's body events paces them by the upstream connection's budget
(gateway.pipeline.phases.read_whole_body, gateway.pipeline.forward's _stream_body, _edited_body and _relay_events);
and a body read whole is one buffer (read_whole_body, _edited_body, an MCP event held by gateway.mcp.sse.EventSplitter).
One gateway shows a flooding upstream and another client of the same worker.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
import trio
import trio.testing
from backends import EchoBackend, held_while_the_last_chunk_waits, request, service

from gateway.http.codec import NEED_DATA, ClientCodec, Request, Response, ServerCodec
from gateway.http.codec_h11 import H11Client, H11Server
from gateway.http.codec_llhttp import LlhttpClient, LlhttpServer
from gateway.http.net import CHECKPOINT_EVERY, RECV_SIZE, Conn
from gateway.http.pool import UpstreamConn
from gateway.http.server import Exchange, ServerSettings
from gateway.http.timers import ConnTimer, Phase
from gateway.mcp import body as mcp_body
from gateway.mcp.governance import ResponseEdit
from gateway.mcp.sse import EventSplitter
from gateway.mcp.step import McpRequest, read_peek
from gateway.pipeline.forward import Forwarder, _edited_body, _stream_body
from gateway.pipeline.phases import read_whole_body
from gateway.pipeline.request_buffer import SpooledBody, read_whole

HEAD = b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"
CODECS = pytest.mark.parametrize("codec_cls", [H11Server, LlhttpServer], ids=["h11", "llhttp"])
# Chunks parsed at most between two turns of the worker's other tasks: an event each (h11), or up to 256 an event
# (llhttp, gateway.http.codec_llhttp._JOIN_MOST), CHECKPOINT_EVERY events between two turns.
CHUNKS_PER_TURN = {H11Server: CHECKPOINT_EVERY, LlhttpServer: 256 * CHECKPOINT_EVERY,
                   H11Client: CHECKPOINT_EVERY, LlhttpClient: 256 * CHECKPOINT_EVERY}
TIMEOUT = 10
T = TypeVar("T")


def _exchange(codec_cls: type[ServerCodec], conn: Conn, data: bytes = b"") -> Exchange:
    """An Exchange for HEAD (a chunked POST) on `conn`, its codec having read `data` after the head."""
    codec = codec_cls()
    codec.receive_data(HEAD + data)
    req = codec.next_event()
    assert type(req) is Request
    return Exchange(req, conn, codec, ConnTimer(math.inf, Phase.BUSY), ServerSettings(codec_cls))


async def _read_whole(ex: Exchange) -> object:
    """Request buffering's read: its bytes (read back from the file of one past MEMORY_LIMIT)."""
    body = await read_whole(ex, b"")
    if isinstance(body, SpooledBody):
        body.rewind()
        return b"".join(iter(body.read, b""))
    return body


async def _read_body(ex: Exchange) -> object:
    return (await ex.read_body(1 << 20))[0]


async def _mcp_whole(ex: Exchange) -> object:
    """The MCP whole-body read (ai-mcp-proxy, ai-mcp-oauth2, the MCP rate keys, the MCP router's confirmation)."""
    mcp, whole = await mcp_body.whole(ex, 1 << 20)
    return mcp.body if whole else None


async def _mcp_peek(ex: Exchange) -> object:
    """The MCP router's peek at the first peek_bytes."""
    mcp = McpRequest()
    await read_peek(ex, mcp, 1 << 20)
    return mcp.body


async def _turns_while(work: Callable[[], Awaitable[T]]) -> tuple[int, T]:
    """How many turns another task had (one a checkpoint of its own) while `work` ran, and what `work` returned."""
    turns = 0

    async def other_task() -> None:
        nonlocal turns
        while True:
            await trio.lowlevel.checkpoint()
            turns += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other_task)
        await trio.lowlevel.checkpoint()  # (the other task is under way)
        turns = 0
        result = await work()
        nursery.cancel_scope.cancel()
    return turns, result


# --- a body kept in memory costs what it weighs, however it was chunked ---------------------------------------------


@CODECS
@pytest.mark.parametrize("reader", [_read_whole, _read_body, _mcp_whole, _mcp_peek],
                         ids=["read_whole", "read_body", "mcp_whole", "mcp_peek"])
async def test_a_body_of_2_byte_chunks_held_in_memory_weighs_about_its_size(
        codec_cls: type[ServerCodec], reader: Callable[[Exchange], Awaitable[object]],
        conn_pair: tuple[Conn, socket.socket]) -> None:
    """A body read whole in memory (request buffering, read_whole; a plugin's read_body; the MCP readers) while the
    client stalls before its last chunk holds about its own size (and what the codec keeps of the last read), not an
    object and a list entry per 2-byte chunk (~24 times the body): nginx holds client_body_buffer_size at most
    (ngx_http_request_body.c:1338-1340)."""
    conn, peer = conn_pair
    size = 10_000  # (h11 parses an event per chunk, slowly under tracemalloc)
    ex = _exchange(codec_cls, conn)
    got, held = await held_while_the_last_chunk_waits(ex, peer, reader, b"2\r\nXY\r\n" * (size // 2), size)
    assert got == b"XY" * (size // 2)
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

    async def read() -> bytes:
        body = bytearray()
        while (piece := await ex.receive_body()) is not None:
            body += piece
        return bytes(body)

    turns, body = await _turns_while(read)
    assert body == b"X" * chunks
    assert turns >= 2, f"{turns} turns for the other task while {chunks} 1-byte chunks were parsed"  # (3 expected)


# What both flooding processes below send: 1-byte chunks on SOCK, as fast as it is read, for at most argv[2] seconds
# or until their stdin closes.
_FLOOD_LOOP = r"""
SOCK.setblocking(False)
piece = memoryview(b"1\r\nX\r\n" * 10000)
view = piece
deadline = time.monotonic() + float(sys.argv[2])
print("flooding", flush=True)
while time.monotonic() < deadline:
    readable, writable, _ = select.select([sys.stdin], [SOCK], [], 0.1)
    if readable:
        break
    if writable:
        try:
            view = view[SOCK.send(view):] or piece
        except BlockingIOError:
            pass
"""

# A client in a process of its own (not a thread of this one, whose GIL it would share with the gateway): uploads an
# endless chunked body of 1-byte chunks as fast as the gateway reads it, for at most argv[2] seconds or until its
# stdin closes; then resets the connection (what the gateway has not read yet is dropped by the kernel).
_FLOOD = r"""
import select, socket, struct, sys, time
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
sock.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
"""
_FLOOD += _FLOOD_LOOP.replace("SOCK", "sock") + r"""
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
        await trio.sleep(0.5)  # the upload is under way
        # The CPU this process (the worker, in-process) spends before the GET is served: the turns the upload's
        # parsing takes between the GET's own (its accept, its read, the proxying, the answer). A busy host's other
        # work does not count; a worker that serves nobody else meanwhile spends a second and more in each.
        started = time.process_time()
        with trio.fail_after(TIMEOUT):
            reply = await request(port, "GET", "/victim")
        waited = time.process_time() - started
    finally:
        flood.stdin.close()  # type: ignore[union-attr]  # (the flood ends at once)
        try:
            flood.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(flood.pid, signal.SIGKILL)
            flood.wait()
    assert reply.status == 200
    assert waited < 1.0, f"another client's GET took {waited:.2f} CPU s while one client uploaded 1-byte chunks"


# === responses: an upstream's body of tiny chunks =================================================================


RESPONSE_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
CLIENT_CODECS = pytest.mark.parametrize("client_cls", [H11Client, LlhttpClient], ids=["h11", "llhttp"])
KEEP = ResponseEdit(None, lambda tool: True, [], False)  # an MCP edit that changes nothing


def _upstream(client_cls: type[ClientCodec], conn: Conn, data: bytes = b"") -> UpstreamConn:
    """An upstream connection on `conn` whose codec sent a GET and read RESPONSE_HEAD (a chunked 200), then `data`."""
    codec = client_cls()
    codec.request_head(b"GET", b"/", [(b"host", b"x")])
    codec.end()
    codec.receive_data(RESPONSE_HEAD + data)
    assert type(codec.next_event()) is Response
    return UpstreamConn(conn, codec, ("x", 80))


async def _client_exchange(conn: Conn, head: bool) -> Exchange:
    """An Exchange for a GET on client connection `conn`, the head of a chunked 200 sent on it if `head`."""
    codec = LlhttpServer()
    codec.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    req = codec.next_event()
    assert type(req) is Request
    ex = Exchange(req, conn, codec, ConnTimer(math.inf, Phase.BUSY), ServerSettings(LlhttpServer))
    if head:
        await ex.send_head(200, [(b"content-type", b"text/event-stream")])
    return ex


async def _read_whole_body(ex: Exchange, uc: UpstreamConn) -> bytes:
    return (await read_whole_body(ex, uc.codec, uc.conn, b"", TIMEOUT))[0]


async def _edit_whole(ex: Exchange, uc: UpstreamConn) -> bytes:
    return (await _edited_body(ex, uc, 200, [], b"", False, KEEP, ("x", TIMEOUT)))[2]


async def _stream(ex: Exchange, uc: UpstreamConn) -> bytes:
    await _stream_body(ex, uc, "upstream.test", TIMEOUT)
    return b""


async def _relay_edited_events(ex: Exchange, uc: UpstreamConn) -> bytes:
    forwarder = Forwarder(None)  # type: ignore[arg-type]  # (no pool: the relay reads the connection it is given)
    await forwarder._relay_events(ex, uc, b"", ("x", TIMEOUT), False, KEEP, EventSplitter())
    return b""


# Whatever reads an upstream body: read whole for a body filter (response-transformer, proxy-cache), read whole for
# an MCP edit, relayed as it comes, relayed event by event for an MCP edit (a piece of an event held meanwhile).
RELAYS = pytest.mark.parametrize(("relay", "head"), [(_read_whole_body, False), (_edit_whole, False),
                                                     (_stream, True), (_relay_edited_events, True)],
                                 ids=["read_whole_body", "edited_body", "stream_body", "relay_events"])


def test_the_llhttp_client_gives_a_read_of_1_byte_chunks_as_a_few_events() -> None:
    """As on the request side: the client codec joins the pieces of a read (one per chunk, llhttp's on_body calls)
    into events of up to 256 chunks, so a read of 10,000 1-byte chunks is a few dozen events, not 10,000."""
    codec = _upstream(LlhttpClient, None, b"1\r\nX\r\n" * 10_000).codec  # type: ignore[arg-type]  # (no reads)
    events = []
    while (ev := codec.next_event()) is not NEED_DATA:
        events.append(ev)
    assert b"".join(events) == b"X" * 10_000  # type: ignore[arg-type]
    assert len(events) == math.ceil(10_000 / 256)


@CLIENT_CODECS
@RELAYS
async def test_relaying_an_upstream_body_of_1_byte_chunks_gives_the_other_tasks_turns(
        client_cls: type[ClientCodec], relay: Callable[[Exchange, UpstreamConn], Awaitable[bytes]], head: bool,
        conn_pair: tuple[Conn, socket.socket]) -> None:
    """Body events parsed from an upstream's reads count against its connection's checkpoint budget (Conn.pace),
    whatever takes them: the worker's other tasks get a turn at least every CHUNKS_PER_TURN chunks, as nginx
    serves its other connections while it parses an upstream's 1-byte chunks (ngx_http_parse.c:2142,
    ngx_http_parse_chunked, called by ngx_http_proxy_chunked_filter and ngx_http_proxy_non_buffered_chunked_filter).
    (The relay as it comes was paced before by its writes to the client, one a chunk: Conn.sendall's budget.)"""
    conn, peer = conn_pair
    chunks = 3 * CHUNKS_PER_TURN[client_cls]
    uc = _upstream(client_cls, conn, b"1\r\nX\r\n" * chunks)
    peer.sendall(LAST_CHUNK)  # (the one read: all the rest was read with the head)
    ours, theirs = socket.socketpair()
    received = bytearray()

    def client() -> None:  # reads what is relayed to it, as it comes
        while data := theirs.recv(1 << 20):
            received.extend(data)

    reader = threading.Thread(target=client)
    reader.start()
    try:
        ex = await _client_exchange(Conn(ours), head)
        turns, body = await _turns_while(lambda: relay(ex, uc))
    finally:
        ours.shutdown(socket.SHUT_WR)
        reader.join()
        ours.close()
        theirs.close()
    assert (body or received).count(b"X") == chunks  # (the relayed: chunked again, by the client's codec)
    assert turns >= 2, f"{turns} turns for the other task while {chunks} 1-byte chunks were parsed"  # (3 expected)


@CLIENT_CODECS
@pytest.mark.parametrize("relay", [_read_whole_body, _edit_whole], ids=["read_whole_body", "edited_body"])
async def test_an_upstream_body_of_2_byte_chunks_read_whole_weighs_about_its_size(
        client_cls: type[ClientCodec], relay: Callable[[Exchange, UpstreamConn], Awaitable[bytes]],
        conn_pair: tuple[Conn, socket.socket]) -> None:
    """An upstream body read whole (for a body filter: response-transformer, proxy-cache; for an MCP edit) while
    the upstream stalls before its last chunk holds about its own size, not an object and a list entry per 2-byte
    chunk (~24 times the body): nginx parses the chunks in place, in its proxy buffers
    (ngx_http_proxy_module.c:2182, ngx_http_proxy_chunked_filter)."""
    conn, peer = conn_pair
    size = 10_000  # (h11 parses an event per chunk, slowly under tracemalloc)
    uc = _upstream(client_cls, conn)
    ours, theirs = socket.socketpair()
    got: list[bytes] = []
    tracemalloc.start()
    try:
        ex = await _client_exchange(Conn(ours), False)
        before = tracemalloc.get_traced_memory()[0]
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:

                async def read() -> None:
                    got.append(await relay(ex, uc))

                nursery.start_soon(read)
                await trio.to_thread.run_sync(peer.sendall, b"2\r\nXY\r\n" * (size // 2))
                await trio.testing.wait_all_tasks_blocked()  # all but the last chunk read, which has not come
                held = tracemalloc.get_traced_memory()[0] - before
                peer.sendall(LAST_CHUNK)
    finally:
        tracemalloc.stop()
        ours.close()
        theirs.close()
    assert got == [b"XY" * (size // 2)]
    assert held < 2 * size + RECV_SIZE, f"a {size}-byte body of 2-byte chunks held {held} bytes"


def test_an_unended_event_of_2_byte_chunks_weighs_about_its_size() -> None:
    """The MCP event-stream edit holds an event until its end (EventSplitter): one of 2-byte chunks (an event a
    body event, h11's) weighs about its size, not an object and a list entry per chunk."""
    size = 100_000
    splitter = EventSplitter()
    pieces = [b"XY"] * (size // 2)  # (one object: its references cost nothing new)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for piece in pieces:
            assert splitter.feed(piece) == []
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert splitter.feed(b"\n\n") == [b"XY" * (size // 2) + b"\n\n"]
    assert held < 2 * size, f"a {size}-byte event of 2-byte chunks held {held} bytes"


# --- one upstream's tiny chunks do not hold the worker -------------------------------------------------------------


# An upstream and a client of it in a process of their own: listens, prints its port, reads the gateway's port from
# stdin, asks the gateway for argv[1] (and reads what comes, as fast as it comes), and answers the request the gateway
# forwards with an endless chunked body of 1-byte chunks as fast as the gateway reads them, for at most argv[2]
# seconds or until its stdin closes; then resets both connections.
_UPSTREAM_FLOOD = r"""
import select, socket, struct, sys, threading, time
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
client = socket.create_connection(("127.0.0.1", int(sys.stdin.readline())))
client.sendall(b"GET " + sys.argv[1].encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")

def drain():
    try:
        while client.recv(1 << 20):
            pass
    except OSError:
        pass

threading.Thread(target=drain, daemon=True).start()
upstream, _ = listener.accept()
head = b""
while b"\r\n\r\n" not in head:
    head += upstream.recv(65536)
upstream.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
"""
_UPSTREAM_FLOOD += _FLOOD_LOOP.replace("SOCK", "upstream") + r"""
for sock in (upstream, client):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
"""


def _upstream_flood(path: str) -> tuple[subprocess.Popen[bytes], int]:
    """_UPSTREAM_FLOOD started, asking for `path` once told the gateway's port: (the process, its upstream port)."""
    proc = subprocess.Popen([sys.executable, "-c", _UPSTREAM_FLOOD, path, "4"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def _stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        proc.stdin.close()  # type: ignore[union-attr]  # (the flood ends at once)
        proc.wait(timeout=5)
    except (subprocess.TimeoutExpired, OSError):
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


async def test_an_upstream_answering_1_byte_chunks_does_not_starve_the_other_clients(nursery, gateway):
    """An upstream answering 1-byte chunks as fast as the worker reads them does not hold up another client of the
    same worker, whether its body is relayed as it comes (gateway.pipeline.forward._stream_body) or read whole for a
    body filter (response-transformer's JSON changes: gateway.pipeline.phases.read_whole_body): nginx parses them in C
    (ngx_http_parse.c:2142, ngx_http_parse_chunked, in ngx_http_proxy_chunked_filter) and serves its other
    connections meanwhile. The relays pace themselves by body events (Conn.pace), as the request side does."""
    backend = EchoBackend()
    await nursery.start(backend.serve)
    floods = {path: _upstream_flood(path) for path in ("/streamed", "/filtered")}
    try:
        transformer = {"name": "response-transformer", "config": {"add": {"json": ["added:1"]}}}
        port = await gateway({"services": [
            service("victim", f"http://127.0.0.1:{backend.port}", [{"paths": ["/victim"]}]),
            service("streamed", f"http://127.0.0.1:{floods['/streamed'][1]}", [{"paths": ["/streamed"]}]),
            service("filtered", f"http://127.0.0.1:{floods['/filtered'][1]}",
                    [{"paths": ["/filtered"], "plugins": [transformer]}])]})
        assert (await request(port, "GET", "/victim")).status == 200
        waited = {}
        for path, (proc, _) in floods.items():
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(b"%d\n" % port)
            proc.stdin.flush()
            assert await trio.to_thread.run_sync(proc.stdout.readline) == b"flooding\n"  # (the worker proxies it)
            await trio.sleep(0.5)  # the answer is under way
            # the CPU this process (the worker, in-process) spends before the GET is served: the relay's turns
            # between the GET's own; a busy host's other work does not count (as the request side's test above)
            started = time.process_time()
            with trio.fail_after(TIMEOUT):
                reply = await request(port, "GET", "/victim")
            waited[path] = time.process_time() - started
            _stop(proc)
            assert reply.status == 200
    finally:
        for proc, _ in floods.values():
            _stop(proc)
    assert all(seconds < 1.0 for seconds in waited.values()), \
        f"another client's GET waited {waited} CPU s while an upstream answered 1-byte chunks"
