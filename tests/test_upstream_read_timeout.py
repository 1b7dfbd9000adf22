"""A service's read_timeout as nginx's proxy_read_timeout (Kong 3.x's nginx, 1.27.1) applies it: once to the whole
response head, from the moment the request has been sent, and between two reads of the response body.

Citations are to nginx release-1.27.1, src/http/ngx_http_upstream.c unless named otherwise. Timings: the gateway's
timers fire up to gateway.http.timers.TIMER_RESOLUTION_S (0.1 s) late, never early; each margin below allows that
and a busy host's scheduling (0.3 s and more).
"""

from __future__ import annotations

import h11
import pytest
import trio
from backends import Client, ScriptedBackend, _Backend, request, service

TIMEOUT = 10
# A head of six pieces: sent `gap` s apart, every gap within a read_timeout of twice that, the whole head (5 gaps)
# well past it
DRIPPED_HEAD = [b"HTTP/1.1 200 OK\r\n", b"content-length: 2\r\n", b"x-a: 1\r\n", b"x-b: 2\r\n", b"x-c: 3\r\n",
                b"\r\nok"]


def _is_timeout_page(reply) -> bool:  # noqa: ANN001
    """Kong's error handler's page for nginx's own 504, to a request with no Accept or Content-Type."""
    return (reply.status, reply.header("content-type"), reply.body.decode().partition("\n")[0]) == (
        504, "text/plain; charset=utf-8", "The upstream server is timing out")


async def _gateway_to(nursery: trio.Nursery, gateway, backend: _Backend, **fields) -> int:  # noqa: ANN001
    """A gateway whose one service, `fields` its settings, goes to `backend`."""
    await nursery.start(backend.serve)
    return await gateway({"services": [service("s", f"http://127.0.0.1:{backend.port}", **fields)]})


async def test_a_response_head_in_pieces_must_all_come_within_read_timeout_of_the_request(nursery, gateway):
    """nginx arms the read timer once, when the request has been sent (ngx_http_upstream_send_request, line 2181:
    `ngx_add_timer(c->read, u->conf->read_timeout);`), and does not re-arm it while the head comes in pieces
    (ngx_http_upstream_process_header, lines 2441-2443, on NGX_AGAIN: `#if 0 / ngx_add_timer(rev,
    u->read_timeout); / #endif`). So an upstream dripping its head, each piece within read_timeout of the last,
    is cut at read_timeout from the request's end: "upstream timed out ... while reading response header from
    upstream", nginx's 504 (a real nginx, pieces 0.25 s apart and proxy_read_timeout 400ms: 504 after 0.4 s)."""
    port = await _gateway_to(nursery, gateway, ScriptedBackend(DRIPPED_HEAD, gap=0.4, hold=2.0),
                             read_timeout=800, retries=0)
    with trio.fail_after(TIMEOUT):
        started = trio.current_time()
        reply = await request(port, "GET", "/x")
        elapsed = trio.current_time() - started
    assert _is_timeout_page(reply), (reply.status, reply.body)
    assert 0.8 <= elapsed < 1.8  # (the head's last piece comes at 2.0 s)


async def test_interim_heads_do_not_restart_read_timeout(nursery, gateway):
    """An interim 1xx head the gateway reads past (the client never sees it) is part of the wait for the final
    head: it does not re-arm the read timer. nginx 1.27.1 sends no Expect and reads no 1xx apart
    (src/http/modules/ngx_http_proxy_module.c: "no 1xx since we don't send Expect and Upgrade"); nginx's own
    interim heads (early hints, from release-1.29.0) are read on the one timer armed when the request was sent,
    the re-arm in ngx_http_upstream_process_header still `#if 0`. Interim heads 0.3 s apart, each within a
    read_timeout of 0.5 s, the final one 0.9 s after the request: 504. (Here twice those times: 0.6 s apart, a
    read_timeout of 1 s, the final head at 1.8 s.)"""
    interims = [b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n",
                b"HTTP/1.1 102 Processing\r\n\r\n"]
    backend = ScriptedBackend([*interims, b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"], gap=0.6, hold=2.0)
    port = await _gateway_to(nursery, gateway, backend, read_timeout=1000, retries=0)
    with trio.fail_after(TIMEOUT):
        started = trio.current_time()
        reply = await request(port, "GET", "/x")
        elapsed = trio.current_time() - started
    assert _is_timeout_page(reply), (reply.status, reply.body)
    assert elapsed < 1.7  # (the final head comes at 1.8 s)


@pytest.mark.parametrize("http_codec", ["llhttp"])
async def test_a_head_cut_by_read_timeout_is_a_timeout_for_proxy_next_upstream(nursery, gateway, http_codec):
    """A head that did not all come within read_timeout fails the try as a timeout (ngx_http_upstream_process_header,
    line 2384: `if (c->read->timedout) { ngx_http_upstream_next(r, u, NGX_HTTP_UPSTREAM_FT_TIMEOUT);`): Kong's
    default `proxy_next_upstream error timeout` sends a GET to its next try, here the same target again."""
    backend = ScriptedBackend(DRIPPED_HEAD, gap=0.2, hold=1.0)
    port = await _gateway_to(nursery, gateway, backend, read_timeout=400, retries=1)
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/x")
    assert _is_timeout_page(reply), (reply.status, reply.body)
    assert len(backend.requests) == 2


class _HeadBeforeBody(_Backend):
    """Starts its answer's head as soon as it has the request's head, takes the whole body, then `gap` seconds
    later sends the rest of the head and a 2-byte body."""

    def __init__(self, gap: float) -> None:
        super().__init__("head-before-body")
        self.gap = gap

    async def handle_conn(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        while not isinstance(ev := conn.next_event(), h11.EndOfMessage):
            if ev is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(ev, h11.Request):
                await stream.send_all(b"HTTP/1.1 200 OK\r\n")
            elif isinstance(ev, h11.ConnectionClosed):
                return
        await trio.sleep(self.gap)
        await stream.send_all(b"content-length: 2\r\n\r\nok")
        await trio.sleep(1.0)


@pytest.mark.parametrize("http_codec", ["llhttp"])
async def test_read_timeout_starts_when_the_request_body_has_been_sent_not_when_the_head_starts(
        nursery, gateway, http_codec):
    """nginx arms the read timer when the request, its body included, has been sent (line 2174-2181: `if
    (!u->request_body_sent) { u->request_body_sent = 1; ... ngx_add_timer(c->read, u->conf->read_timeout);`),
    whenever the head began to arrive. An unbuffered body the client sends over 0.9 s, a head begun before it and
    ended 0.15 s after it, a read_timeout of 0.5 s: the answer comes whole."""
    port = await _gateway_to(nursery, gateway, _HeadBeforeBody(gap=0.15), read_timeout=500, retries=0,
                             routes=[{"paths": ["/"], "request_buffering": False}])
    async with await Client.connect(port) as client:
        with trio.fail_after(TIMEOUT):
            await client.stream.send_all(client.conn.send(h11.Request(
                method="POST", target="/x", headers=[("host", "gw"), ("content-length", "3")])))
            for piece in (b"a", b"b", b"c"):
                await trio.sleep(0.3)
                await client.stream.send_all(client.conn.send(h11.Data(data=piece)))
            client.conn.send(h11.EndOfMessage())
            reply = await client.read_response()
    assert (reply.status, reply.body) == (200, b"ok")


@pytest.mark.parametrize("http_codec", ["llhttp"])
async def test_read_timeout_runs_between_two_reads_of_the_response_body(nursery, gateway, http_codec):
    """Once the head is in, nginx re-arms the read timer at every read of the body that has to wait
    (ngx_http_upstream_process_non_buffered_request, line 3810, and src/event/ngx_event_pipe.c line 73:
    `ngx_add_timer(rev, p->read_timeout);`): a body whose pieces come 0.2 s apart passes a read_timeout of
    0.5 s although it takes 0.8 s in all."""
    pieces = [b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\na", b"b", b"c", b"d", b"e"]
    port = await _gateway_to(nursery, gateway, ScriptedBackend(pieces, gap=0.2, hold=1.0), read_timeout=500,
                             retries=0)
    with trio.fail_after(TIMEOUT):
        started = trio.current_time()
        reply = await request(port, "GET", "/x")
        elapsed = trio.current_time() - started
    assert (reply.status, reply.body) == (200, b"abcde")
    assert elapsed >= 0.8
