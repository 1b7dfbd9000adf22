"""Relaying a `text/event-stream` answer (gateway.pipeline.forward._relay_events): its bytes as they came, and the
service's read_timeout bounding every wait for the upstream, as nginx's proxy_read_timeout does.

Each test runs the gateway in-process (tests/conftest.py `gateway` fixture, loopback only) against a raw Trio
backend written here; everything is stopped with the test's nursery.
"""

from __future__ import annotations

import gzip
import json
import logging
import zlib
from typing import Any

import trio
from backends import raw_exchange, service

from gateway.pipeline.keepalive import StreamKeepAlives

SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


class RawBackend:
    """Reads one request head, then plays `script` (bytes to send, or seconds to sleep), then holds the connection
    open, reading what comes, until the gateway closes it (`closed` is set then)."""

    def __init__(self, script: list[bytes | float]) -> None:
        self.script = script
        self.port = 0
        self.closed = trio.Event()

    async def serve(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = await stream.receive_some(65536)
            if not data:
                return
            buf += data
        try:
            for step in self.script:
                if isinstance(step, (int, float)):
                    await trio.sleep(step)
                else:
                    await stream.send_all(step)
            while await stream.receive_some(65536):
                pass
        except trio.BrokenResourceError:
            pass
        finally:
            self.closed.set()
            await trio.aclose_forcefully(stream)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def dechunk(body: bytes) -> tuple[bytes, bool]:
    """(payload of a chunked body, whether its last chunk came)."""
    out = b""
    while body:
        line, sep, rest = body.partition(b"\r\n")
        if not sep:
            return out, False
        size = int(line.split(b";")[0], 16)
        if size == 0:
            return out, True
        out += rest[:size]
        body = rest[size + 2:]
    return out, False


async def receive_until_closed(port: int, within: float) -> tuple[bytes, bool, float]:
    """Send a GET for an event stream; (what came, whether the gateway ended the connection within `within`
    seconds, when it did, on the Trio clock from the request)."""
    received = b""
    ended = False
    started = trio.current_time()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        await stream.send_all(b"GET /events HTTP/1.1\r\nHost: gw\r\n\r\n")
        with trio.move_on_after(within):
            while True:
                try:
                    data = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    data = b""
                if not data:
                    ended = True
                    break
                received += data
    finally:
        await trio.aclose_forcefully(stream)
    return received, ended, trio.current_time() - started


# --- the body as it came ---------------------------------------------------------------------------------------------


async def test_a_gzip_event_stream_reaches_the_client_byte_for_byte(nursery, gateway):
    """An upstream's `text/event-stream` with `Content-Encoding: gzip` that flushes its head, then waits for its
    first event longer than sse_keepalive: no `: keepalive` comment goes into the compressed body (it would break
    the client's decoder at byte 0); the client gets the upstream's gzip stream whole.

    nginx passes the upstream's body bytes on as they came (src/http/ngx_http_upstream.c
    ngx_http_upstream_process_non_buffered_request: u->out_bufs to ngx_http_output_filter; Kong's nginx_kong.lua
    enables no filter that rewrites a proxied body)."""
    comp = zlib.compressobj(wbits=31)  # gzip framing
    payload = comp.compress(b"data: one\n\n") + comp.flush(zlib.Z_SYNC_FLUSH)
    payload += comp.compress(b"data: two\n\n") + comp.flush()
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Encoding: gzip\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    backend = RawBackend([head, 0.8, chunk(payload) + b"0\r\n\r\n"])
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{backend.port}")]}, sse_keepalive=0.2)
    got, _ = await raw_exchange(port, b"GET /events HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 200 ")
    data, complete = dechunk(got.partition(b"\r\n\r\n")[2])
    assert complete
    assert data[:2] == b"\x1f\x8b", f"the body is not the upstream's gzip stream: {data[:40]!r}"
    assert gzip.decompress(data) == b"data: one\n\ndata: two\n\n"


class OpenEndedClient:
    """A chunked response as the keep-alive wheel sees it, recording what the wheel wrote."""

    def __init__(self) -> None:
        self.written = b""

    def extra_body(self, data: bytes) -> bytes | None:
        return data

    def send_now(self, framed: bytes) -> bytes:
        self.written += framed
        return b""


def test_a_stream_opened_without_comments_is_never_given_one():
    """What the relay opens for a coded body: decided once, as the head goes out; the wheel never queues it."""
    wheel, client = StreamKeepAlives(1.0), OpenEndedClient()
    stream = wheel.open(client, comments=False)
    assert stream.comment == b""
    assert wheel.due(100.0) == 0 and client.written == b""


async def test_an_event_stream_in_the_identity_coding_still_gets_keepalive_comments(nursery, gateway):
    """`Content-Encoding: identity` is no coding (RFC 9110 8.4.1): the body is plain events, so idle gaps get the
    gateway's `: keepalive` comment as any other event stream's."""
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Encoding: identity\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    backend = RawBackend([head, 0.8, chunk(b"data: one\n\n") + b"0\r\n\r\n"])
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{backend.port}")]}, sse_keepalive=0.2)
    got, _ = await raw_exchange(port, b"GET /events HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
    data, complete = dechunk(got.partition(b"\r\n\r\n")[2])
    assert complete
    assert data.startswith(b": keepalive\n\n") and data.endswith(b"data: one\n\n")


# --- read_timeout ----------------------------------------------------------------------------------------------------


async def test_an_event_stream_upstream_silent_past_read_timeout_is_cut(nursery, gateway):
    """A service's read_timeout (Kong: proxy_read_timeout through ngx.balancer set_timeouts, kong/init.lua 1434)
    bounds every wait for the upstream, whatever the body's Content-Type: src/http/ngx_http_upstream.c 4071-4072
    (`ngx_add_timer(upstream->read, u->conf->read_timeout)` while a non-buffered body waits) and 3936-3940
    (`upstream timed out` -> ngx_http_upstream_finalize_request(r, u, NGX_HTTP_GATEWAY_TIME_OUT)): after
    read_timeout of silence the client's response is cut (no last chunk) and the upstream connection closed."""
    backend = RawBackend([SSE_HEAD, chunk(b"data: one\n\n")])  # one event, then silence with the connection open
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{backend.port}", read_timeout=300)]},
                         sse_keepalive=30)
    received, ended, _ = await receive_until_closed(port, 3)  # ten times read_timeout
    assert received.startswith(b"HTTP/1.1 200 ") and b"data: one" in received
    assert ended, "the stream was still open 3 s after the upstream went silent (read_timeout 300 ms)"
    assert not dechunk(received.partition(b"\r\n\r\n")[2])[1], "a timed-out stream must not end as complete"
    with trio.fail_after(2):
        await backend.closed.wait()  # and the upstream connection was closed


async def test_keepalive_comments_to_the_client_do_not_hold_off_the_upstreams_read_timeout(nursery, gateway):
    """The comments are the gateway's own bytes to the client; nginx's upstream read timer is re-armed only by what
    the upstream sends (ngx_http_upstream.c 4071-4072): a stream whose upstream is silent is cut after read_timeout
    though the client heard a comment every 0.1 s meanwhile."""
    backend = RawBackend([SSE_HEAD, chunk(b"data: one\n\n")])
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{backend.port}", read_timeout=600)]},
                         sse_keepalive=0.1)
    received, ended, elapsed = await receive_until_closed(port, 5)
    data, complete = dechunk(received.partition(b"\r\n\r\n")[2])
    assert data.count(b": keepalive\n\n") >= 2
    assert ended and not complete
    assert 0.55 <= elapsed < 2.0


async def test_an_upstream_that_speaks_within_read_timeout_keeps_its_stream_open_past_it(nursery, gateway):
    """read_timeout bounds each wait, not the stream (nginx re-arms the timer after every read): events 0.25 s
    apart for 1.5 s under a read_timeout of 500 ms all reach the client, and the stream ends complete."""
    events = [chunk(b"data: %d\n\n" % i) for i in range(6)]
    script: list[bytes | float] = [SSE_HEAD]
    for event in events:
        script += [event, 0.25]
    backend = RawBackend([*script, b"0\r\n\r\n"])
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{backend.port}", read_timeout=500)]},
                         sse_keepalive=30)
    got, _ = await raw_exchange(port, b"GET /events HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n", timeout=5)
    data, complete = dechunk(got.partition(b"\r\n\r\n")[2])
    assert complete
    assert data == b"".join(b"data: %d\n\n" % i for i in range(6))


async def test_a_timed_out_event_stream_is_logged_naming_the_upstream_and_with_its_heads_status(
        nursery, gateway, tmp_path, caplog):
    """nginx logs `upstream timed out ... while reading upstream` at [error] (ngx_http_upstream.c 3936) and its
    access log keeps the status already sent ($status, $upstream_status: the head's 200), as for a cut plain body (see
    tests/telemetry/test_tel_access_log.py): the gateway's log names the upstream and the setting."""
    backend = RawBackend([SSE_HEAD, chunk(b"data: one\n\n")])
    await nursery.start(backend.serve)
    access = tmp_path / "access.log"
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{backend.port}", read_timeout=300)]},
                         sse_keepalive=30, access_log=str(access))
    with caplog.at_level(logging.WARNING, "gateway.forward"):
        _, ended, _ = await receive_until_closed(port, 3)
        assert ended
        with trio.fail_after(5):
            while not access.exists() or not access.read_text():
                await trio.sleep(0.02)
    logged = [r.getMessage().partition(", client: ")[0] for r in caplog.records
              if "read_timeout" in r.getMessage() and r.levelname == "ERROR"]
    assert logged == [f"upstream 127.0.0.1:{backend.port} sent nothing of its event stream within 0.3s "
                      "(read_timeout): the response is cut, as nginx's upstream timed out"]
    line = json.loads(access.read_text().splitlines()[0])
    assert (line["response"]["status"], line["upstream_status"]) == (200, "200")
