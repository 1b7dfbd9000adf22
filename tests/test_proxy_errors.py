"""What the gateway answers when an upstream or a client misbehaves, once per codec; and that the worker survives.

Every gateway here also routes `/ok` to a healthy echo backend, and each test ends by checking that a normal
request still works on a new connection after the failure.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import ssl
import struct
import time
from typing import Any

import h11
import pytest
import trio
import trustme
from backends import (
    BadBackend,
    Client,
    EchoBackend,
    _Backend,
    free_port,
    parse_raw_response,
    raw_exchange,
    request,
    service,
    upstream,
)

TIMEOUT = 10


class Setup:
    def __init__(self, port: int, healthy: EchoBackend) -> None:
        self.port = port
        self.healthy = healthy

    async def assert_alive(self) -> None:
        with trio.fail_after(TIMEOUT):
            reply = await request(self.port, "GET", "/ok")
        assert reply.status == 200
        assert reply.json()["name"] == "healthy"


async def start(nursery: trio.Nursery, gateway, services: list[dict[str, Any]],  # noqa: ANN001
                upstreams: list[dict[str, Any]] | None = None, plugins: list[dict[str, Any]] | None = None,
                **settings: Any) -> Setup:
    """A gateway with the test's services plus `/ok` -> a healthy echo backend."""
    healthy = EchoBackend("healthy")
    await nursery.start(healthy.serve)
    doc = {"services": [*services, service("healthy", f"http://127.0.0.1:{healthy.port}", [{"paths": ["/ok"]}])],
           "upstreams": upstreams or [], "plugins": plugins or []}
    return Setup(await gateway(doc, **settings), healthy)


async def start_backend(nursery: trio.Nursery, backend):  # noqa: ANN001,ANN201
    await nursery.start(backend.serve)
    return backend


def assert_json_error(reply, status: int, message: str) -> dict:  # noqa: ANN001
    """Kong's error body: its message for the case and the request's id."""
    assert reply.status == status
    assert reply.header("content-type") == "application/json; charset=utf-8"
    body = reply.json()
    assert body == {"message": message, "request_id": body["request_id"]}
    assert len(body["request_id"]) >= 16
    return body


def assert_text_error(reply, status: int, message: str) -> None:  # noqa: ANN001
    """Kong's error handler's page for an error nginx makes itself, to a request with no Accept or Content-Type."""
    assert reply.status == status
    assert reply.header("content-type") == "text/plain; charset=utf-8"
    assert reply.body.decode() == f"{message}\nrequest_id: {reply.header('x-request-id')}\n"


# --- upstream failures ---------------------------------------------------------------------------------------------


async def test_a_connect_timeout_gets_504_as_nginx_answers_it(nursery, gateway):
    """A TLS upstream that accepts the connection and never answers the ClientHello: the connect (handshake
    included) passes connect_timeout; nginx's answer is 504, not 502."""
    silent = trio.socket.socket()
    await silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    held = []

    async def hold() -> None:
        while True:
            conn, _ = await silent.accept()
            held.append(conn)

    dead = service("silent", f"https://127.0.0.1:{silent.getsockname()[1]}", [{"paths": ["/x"]}],
                   connect_timeout=100, retries=0)
    setup = await start(nursery, gateway, [dead])
    async with trio.open_nursery() as holding:
        holding.start_soon(hold)
        with trio.fail_after(TIMEOUT):
            reply = await request(setup.port, "GET", "/x")
        holding.cancel_scope.cancel()
    for conn in held:
        conn.close()
    silent.close()
    assert_text_error(reply, 504, "The upstream server is timing out")
    await setup.assert_alive()


async def test_refused_upstream_gets_502(nursery, gateway):
    setup = await start(nursery, gateway, [service("dead", f"http://127.0.0.1:{free_port()}", retries=2)])
    with trio.fail_after(TIMEOUT):
        reply = await request(setup.port, "GET", "/x")
    assert_text_error(reply, 502, "An invalid response was received from the upstream server")
    await setup.assert_alive()


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_refused_target_is_skipped_so_every_request_succeeds(nursery, gateway, method):
    """Nothing was sent to a target that refused the connection, so even a POST moves on to the next target."""
    echo = await start_backend(nursery, EchoBackend("alive"))
    setup = await start(nursery, gateway, [service("svc", "http://pair")],
                        [upstream("pair", [free_port(), echo.port])])
    with trio.fail_after(TIMEOUT):
        replies = [await request(setup.port, method, f"/r{i}", body=b"payload") for i in range(6)]
    assert [r.status for r in replies] == [200] * 6
    assert [r.json()["name"] for r in replies] == ["alive"] * 6
    assert len(echo.requests) == 6
    await setup.assert_alive()


async def test_silent_upstream_gets_504_after_read_timeout(nursery, gateway):
    hang = await start_backend(nursery, BadBackend("hang"))
    setup = await start(nursery, gateway, [service("slow", f"http://127.0.0.1:{hang.port}", read_timeout=150,
                                                   retries=0)])
    with trio.fail_after(TIMEOUT):
        started = trio.current_time()
        reply = await request(setup.port, "GET", "/x")
        elapsed = trio.current_time() - started
    assert_text_error(reply, 504, "The upstream server is timing out")
    assert 0.14 <= elapsed < 2.0
    assert len(hang.requests) == 1
    await setup.assert_alive()


async def test_a_get_that_timed_out_is_tried_retries_more_times_then_504(nursery, gateway):
    """nginx's default proxy_next_upstream is `error timeout`: Kong's balancer gives a timed-out idempotent request
    its `retries`, on the same target when there is only one."""
    hang = await start_backend(nursery, BadBackend("hang"))
    setup = await start(nursery, gateway, [service("slow", f"http://127.0.0.1:{hang.port}", read_timeout=100,
                                                   retries=2)])
    with trio.fail_after(TIMEOUT):
        started = trio.current_time()
        reply = await request(setup.port, "GET", "/x")
        elapsed = trio.current_time() - started
    assert_text_error(reply, 504, "The upstream server is timing out")
    assert len(hang.requests) == 3
    assert 0.29 <= elapsed < 3.0
    await setup.assert_alive()


async def test_a_get_that_timed_out_moves_on_to_the_next_target(nursery, gateway):
    hang = await start_backend(nursery, BadBackend("hang"))
    echo = await start_backend(nursery, EchoBackend("alive"))
    setup = await start(nursery, gateway, [service("svc", "http://pair", read_timeout=200)],
                        [upstream("pair", [hang.port, echo.port], algorithm="round-robin")])
    with trio.fail_after(TIMEOUT):
        replies = [await request(setup.port, "GET", f"/r{i}") for i in range(2)]  # at least one tries `hang` first
    assert [(r.status, r.json()["name"]) for r in replies] == [(200, "alive")] * 2
    assert len(hang.requests) >= 1
    assert len(echo.requests) == 2


async def test_a_post_that_timed_out_is_not_sent_again(nursery, gateway):
    """It may have been processed: nginx passes a non-idempotent request to no other server once it was sent."""
    hang = await start_backend(nursery, BadBackend("hang"))
    echo = await start_backend(nursery, EchoBackend("alive"))
    setup = await start(nursery, gateway, [service("svc", "http://pair", read_timeout=200)],
                        [upstream("pair", [hang.port, echo.port], algorithm="round-robin")])
    with trio.fail_after(TIMEOUT):
        replies = [await request(setup.port, "POST", f"/r{i}", body=b"order") for i in range(2)]
    assert sorted(r.status for r in replies) == [200, 504]
    assert len(hang.requests) == 1
    assert len(echo.requests) == 1


async def test_the_client_connection_stays_open_after_a_timed_out_get(nursery, gateway):
    hang = await start_backend(nursery, BadBackend("hang"))
    setup = await start(nursery, gateway, [service("slow", f"http://127.0.0.1:{hang.port}", read_timeout=100,
                                                   retries=0)])
    with trio.fail_after(TIMEOUT):
        async with await Client.connect(setup.port) as client:
            first = await client.request("GET", "/x")
            second = await client.request("GET", "/ok")
    assert first.status == 504
    assert (second.status, second.json()["name"]) == (200, "healthy")


async def test_a_put_an_upstream_does_not_read_within_write_timeout_moves_on_to_the_next_target(nursery, gateway):
    """write_timeout bounds each wait for the upstream to take more of the request; the whole body is in hand
    (request_buffering), so the idempotent PUT is sent again, whole, to the next target."""
    deaf = trio.socket.socket()  # accepts, never reads
    await deaf.bind(("127.0.0.1", 0))
    deaf.listen(8)
    held = []

    async def hold() -> None:
        while True:
            held.append((await deaf.accept())[0])

    echo = await start_backend(nursery, EchoBackend("alive"))
    setup = await start(nursery, gateway, [service("svc", "http://pair", write_timeout=200)],
                        [upstream("pair", [deaf.getsockname()[1], echo.port], algorithm="round-robin")])
    body = b"x" * (16 << 20)  # more than loopback's socket buffers take
    async with trio.open_nursery() as holding:
        holding.start_soon(hold)
        with trio.fail_after(TIMEOUT):  # at least one of the two tries `deaf` first
            replies = [await request(setup.port, "PUT", f"/r{i}", body=body) for i in range(2)]
        holding.cancel_scope.cancel()
    for conn in held:
        conn.close()
    deaf.close()
    assert [(r.status, r.json()["name"]) for r in replies] == [(200, "alive")] * 2
    assert [len(seen.body) for seen in echo.requests] == [len(body)] * 2
    assert len(held) >= 1


async def test_body_stalling_longer_than_read_timeout_aborts_the_client_connection(nursery, gateway):
    """read_timeout also bounds the silence between two reads of a (non-SSE) body; the head is already out, so
    the gateway can only cut the client off."""
    stall = await start_backend(nursery, BadBackend("stall"))
    setup = await start(nursery, gateway, [service("slow", f"http://127.0.0.1:{stall.port}", read_timeout=300)])
    started = trio.current_time()
    data, reset = await raw_exchange(setup.port, b"GET /x HTTP/1.1\r\nhost: gw\r\n\r\n")
    elapsed = trio.current_time() - started
    status, headers, body = parse_raw_response(data)
    assert (status, headers["content-length"], body) == (200, "1000", b"x" * 10)
    assert reset
    assert 0.29 <= elapsed < 2.0
    await setup.assert_alive()


@pytest.mark.parametrize("weights", [[], [0, 0]], ids=["no-targets", "all-weight-0"])
async def test_upstream_without_usable_targets_gets_503_json(nursery, gateway, weights):
    echo = await start_backend(nursery, EchoBackend())
    up = upstream("empty", [echo.port, free_port()][:len(weights)], weights or None)  # (a target once per upstream)
    setup = await start(nursery, gateway, [service("svc", "http://empty")], [up])
    with trio.fail_after(TIMEOUT):
        reply = await request(setup.port, "GET", "/x")
    assert_json_error(reply, 503, "failure to get a peer from the ring-balancer")
    assert echo.requests == []
    await setup.assert_alive()


async def test_a_bad_chunk_read_with_the_upstreams_head_is_a_502_logged_against_the_upstream(nursery, gateway,
                                                                                               caplog):
    """Nothing went to the client yet: it gets the 502 page, and the log names the upstream (nginx's "upstream sent
    invalid chunked response"), not the client's request (found by the wire fuzz, upstream seed 61610004)."""
    bad = await start_backend(nursery, BadBackend("bad-chunk"))
    setup = await start(nursery, gateway, [service("bad", f"http://127.0.0.1:{bad.port}", retries=0)])
    caplog.set_level(logging.DEBUG)
    data, _ = await raw_exchange(setup.port, b"GET /x HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n")
    assert parse_raw_response(data)[0] == 502
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if m.startswith("bad request from")], messages
    assert [m for m in messages if m.startswith("upstream ") and str(bad.port) in m], messages


async def test_upstream_dying_mid_response_aborts_the_client_connection(nursery, gateway):
    """Content-Length 1000, 10 bytes, then close: the client must see a cut-off response, never a complete one."""
    bad = await start_backend(nursery, BadBackend("truncate"))
    setup = await start(nursery, gateway, [service("cut", f"http://127.0.0.1:{bad.port}")])
    data, reset = await raw_exchange(setup.port, b"GET /x HTTP/1.1\r\nhost: gw\r\n\r\n")
    status, headers, body = parse_raw_response(data)
    assert status == 200
    assert headers["content-length"] == "1000"
    assert len(body) < 1000
    assert reset, "the gateway must reset the connection so the client cannot take the response as complete"
    await setup.assert_alive()


async def test_chunked_upstream_dying_mid_response_never_gets_a_last_chunk(nursery, gateway):
    """A chunked body cut off upstream must not be completed by the gateway's own `0` chunk."""
    bad = await start_backend(nursery, BadBackend("truncate-chunked"))
    setup = await start(nursery, gateway, [service("cut", f"http://127.0.0.1:{bad.port}")])
    data, reset = await raw_exchange(setup.port, b"GET /x HTTP/1.1\r\nhost: gw\r\n\r\n")
    status, headers, body = parse_raw_response(data)
    assert status == 200
    assert headers["transfer-encoding"] == "chunked"
    assert b"0123456789" in body
    assert not body.endswith(b"0\r\n\r\n")
    assert reset
    await setup.assert_alive()


CUT_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nfirst part, "
FORGED_RECORD = b"\x17\x03\x03\x00\x20" + b"\x42" * 32  # application data whose MAC cannot verify


async def cutting_upstream(tls_ctx: ssl.SSLContext | None, task_status=trio.TASK_STATUS_IGNORED) -> None:  # noqa: ANN001
    """Answers with a body that ends at the close, then breaks it: a forged record over TLS, a reset over TCP."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")

    async def on_conn(stream: trio.SocketStream) -> None:
        conn = trio.SSLStream(stream, tls_ctx, server_side=True) if tls_ctx is not None else stream
        data = b""
        while b"\r\n\r\n" not in data:
            data += await conn.receive_some(65536)
        await conn.send_all(CUT_HEAD)
        await trio.sleep(0.1)
        if tls_ctx is not None:
            await stream.send_all(FORGED_RECORD)
            await trio.sleep(0.1)
            await stream.aclose()
        else:
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            stream.socket.close()

    async with trio.open_nursery() as nursery:
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(on_conn, listeners, handler_nursery=nursery)


@pytest.mark.parametrize("scheme", ["https", "http"])
async def test_a_body_ending_at_the_close_cut_by_a_reset_never_looks_complete(gateway, nursery, scheme):
    """nginx takes a failed read (a reset, a TLS record that does not decrypt) as upstream_error: no last chunk, the
    client's connection closed; only the upstream's close ends such a body. Both were ended with the 0 chunk."""
    tls_ctx = None
    if scheme == "https":
        tls_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        trustme.CA().issue_cert("127.0.0.1").configure_cert(tls_ctx)
    up = await nursery.start(cutting_upstream, tls_ctx)
    port = await gateway({"services": [service("s", f"{scheme}://127.0.0.1:{up}", [{"paths": ["/"]}], retries=0)]})
    data, _ = await raw_exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and b"first part, " in data
    assert not data.endswith(b"\r\n0\r\n\r\n"), "the cut body was ended as if complete"


async def test_post_is_not_retried_after_the_upstream_received_it(nursery, gateway):
    """The upstream read the POST and closed without answering: it may have acted on it, so no retry -> 502."""
    closer = await start_backend(nursery, BadBackend("close"))
    echo = await start_backend(nursery, EchoBackend("other"))
    setup = await start(nursery, gateway, [service("svc", "http://pair", retries=5)],
                        [upstream("pair", [closer.port, echo.port])])
    with trio.fail_after(TIMEOUT):
        statuses = sorted([(await request(setup.port, "POST", "/rpc", body=b'{"id": 1}')).status for _ in range(2)])
    assert statuses == [200, 502]
    assert len(closer.requests) == 1  # the failed POST reached the closing upstream exactly once ...
    assert len(echo.requests) == 1  # ... and was not replayed on the other target
    await setup.assert_alive()


async def test_single_target_post_gets_502_and_upstream_saw_one_request(nursery, gateway):
    closer = await start_backend(nursery, BadBackend("close"))
    setup = await start(nursery, gateway, [service("svc", f"http://127.0.0.1:{closer.port}", retries=5)])
    with trio.fail_after(TIMEOUT):
        reply = await request(setup.port, "POST", "/rpc", body=b'{"id": 1}')
    assert_text_error(reply, 502, "An invalid response was received from the upstream server")
    assert len(closer.requests) == 1
    await setup.assert_alive()


async def test_get_is_retried_after_the_upstream_closed_without_answering(nursery, gateway):
    """An idempotent request whose body is in hand is safe to replay on the next target."""
    closer = await start_backend(nursery, BadBackend("close"))
    echo = await start_backend(nursery, EchoBackend("other"))
    setup = await start(nursery, gateway, [service("svc", "http://pair")], [upstream("pair", [closer.port, echo.port])])
    with trio.fail_after(TIMEOUT):
        replies = [await request(setup.port, "GET", "/x") for _ in range(4)]
    assert [r.status for r in replies] == [200] * 4
    assert len(echo.requests) == 4
    assert len(closer.requests) >= 1
    await setup.assert_alive()


# --- broken client requests ----------------------------------------------------------------------------------------


async def assert_rejected(setup: Setup, data: bytes | list[bytes], status: int, pause: float = 0.0,
                          page: bool = True) -> None:
    """The gateway answers `status` and `connection: close`, then closes the connection: with Kong's text page for an
    error nginx makes itself (nothing says which format the client wants), else (`page` false: a plugin's
    kong.response.error) with the JSON body."""
    received, _ = await raw_exchange(setup.port, data, pause=pause)  # returns only once the gateway closed
    got, headers, body = parse_raw_response(received)
    assert got == status, received
    assert headers["connection"] == "close"
    if page:
        assert headers["content-type"] == "text/plain; charset=utf-8"
        assert re.fullmatch(rb"[A-Z][^\n]+\nrequest_id: [0-9a-f]{16,}\n", body), body
    else:
        assert headers["content-type"] == "application/json; charset=utf-8"
        assert set(json.loads(body)) == {"message", "request_id"}


async def test_malformed_request_gets_400_and_the_connection_closes(nursery, gateway):
    setup = await start(nursery, gateway, [])
    await assert_rejected(setup, b"THIS IS NOT HTTP\r\n\r\n", 400)
    await setup.assert_alive()


async def test_content_length_with_transfer_encoding_gets_400(nursery, gateway):
    setup = await start(nursery, gateway, [])
    await assert_rejected(setup, b"POST /ok HTTP/1.1\r\nhost: gw\r\ncontent-length: 5\r\n"
                                 b"transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 400)
    assert setup.healthy.requests == []  # a smuggling attempt never reaches an upstream
    await setup.assert_alive()


async def test_two_different_content_lengths_get_400(nursery, gateway):
    setup = await start(nursery, gateway, [])
    await assert_rejected(setup, b"POST /ok HTTP/1.1\r\nhost: gw\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n"
                                 b"hello!", 400)
    assert setup.healthy.requests == []
    await setup.assert_alive()


async def test_a_head_of_24_kb_in_lines_under_8_kb_passes_by_default(nursery, gateway):
    """As through nginx's default large_client_header_buffers (4 8k): a few large cookies or tokens."""
    setup = await start(nursery, gateway, [])
    lines = [(f"x-big-{i}", "a" * 7000) for i in range(3)]
    with trio.fail_after(TIMEOUT):
        reply = await request(setup.port, "GET", "/ok", headers=lines)
    assert reply.status == 200
    seen = setup.healthy.requests[0]
    assert [seen.header(name) for name, _ in lines] == ["a" * 7000] * 3


async def test_headers_over_max_header_bytes_get_400_request_header_or_cookie_too_large(nursery, gateway):
    """nginx's 494, which Kong's error handler answers 400 with its own text: the 1k first buffer and one large
    buffer of 2048 bytes hold at most about 3 KB of 511-byte lines; these are 4 KB."""
    setup = await start(nursery, gateway, [], max_header_bytes=2048)
    lines = b"".join(b"x-big-%d: %b\r\n" % (i, b"a" * 500) for i in range(8))
    received, _ = await raw_exchange(setup.port, b"GET /ok HTTP/1.1\r\nhost: gw\r\n" + lines + b"\r\n")
    status, headers, body = parse_raw_response(received)
    assert (status, headers["connection"]) == (400, "close")
    assert body.decode().startswith("Request header or cookie too large\nrequest_id: ")
    assert setup.healthy.requests == []
    await setup.assert_alive()


async def test_a_header_line_over_8_kb_gets_400_under_the_head_limit(nursery, gateway):
    """Kong's spec (04-plugins_triggering): one X-Large header of 10 KB, past large_client_header_buffers' 8k."""
    setup = await start(nursery, gateway, [])
    received, _ = await raw_exchange(setup.port, b"POST /ok?foo=bar HTTP/1.1\r\nhost: gw\r\nx-large: "
                                     + b"a" * 10240 + b"\r\ncontent-length: 0\r\n\r\n")
    status, headers, body = parse_raw_response(received)
    assert status == 400
    assert body.decode() == f"Request header or cookie too large\nrequest_id: {headers['x-kong-request-id']}\n"
    assert setup.healthy.requests == []
    await setup.assert_alive()


async def test_a_request_line_over_8_kb_gets_414_uri_too_long(nursery, gateway):
    setup = await start(nursery, gateway, [])
    received, _ = await raw_exchange(setup.port, b"GET /ok?foo=" + b"a" * 10240 + b" HTTP/1.1\r\nhost: gw\r\n\r\n")
    status, headers, body = parse_raw_response(received)
    assert (status, headers["connection"]) == (414, "close")
    assert body.decode() == f"URI too long\nrequest_id: {headers['x-kong-request-id']}\n"
    assert setup.healthy.requests == []
    await setup.assert_alive()


async def test_max_header_line_bytes_lets_a_longer_line_through(nursery, gateway):
    setup = await start(nursery, gateway, [], max_header_line_bytes=16384)
    with trio.fail_after(TIMEOUT):
        reply = await request(setup.port, "GET", "/ok", headers=[("cookie", "c" * 12000)])
    assert reply.status == 200
    assert setup.healthy.requests[0].header("cookie") == "c" * 12000


async def test_an_unreadable_request_is_answered_with_kongs_response_headers(nursery, gateway):
    """Kong's error handler runs the header filter: Server, the response latency and the request id."""
    setup = await start(nursery, gateway, [])
    received, _ = await raw_exchange(setup.port, b"THIS IS NOT HTTP\r\n\r\n")
    status, headers, body = parse_raw_response(received)
    assert status == 400
    assert headers["server"].startswith("mcp-gateway/")
    assert int(headers["x-kong-response-latency"]) >= 0
    assert body.decode() == f"Bad request\nrequest_id: {headers['x-kong-request-id']}\n"


async def test_headers_just_under_max_header_bytes_are_accepted(nursery, gateway):
    setup = await start(nursery, gateway, [], max_header_bytes=2048)
    with trio.fail_after(TIMEOUT):
        reply = await request(setup.port, "GET", "/ok", headers=[("x-big", "a" * 1500)])
    assert reply.status == 200


async def test_a_slow_request_head_is_closed_unanswered_at_header_timeout(nursery, gateway):
    """nginx release-1.27.1 src/http/ngx_http_request.c:1097-1101: a timed-out head is closed
    (ngx_http_close_request(r, 408)) with nothing written; the 408 is the log's."""
    setup = await start(nursery, gateway, [], header_timeout_s=0.25)
    started = trio.current_time()
    received, _ = await raw_exchange(setup.port, b"GET /ok HTTP/1.1\r\nhost: gw\r\n")  # the head never ends
    assert received == b""
    elapsed = trio.current_time() - started
    assert 0.24 <= elapsed < 3.0
    assert setup.healthy.requests == []
    await setup.assert_alive()


async def test_a_request_that_came_while_the_worker_was_busy_is_answered_not_timed_out(nursery, gateway):
    """nginx handles the events epoll reported before its expired timers: a request that reached the socket while
    the worker was too busy to read it (a long GC pause) past header_timeout, or past keepalive_timeout on a kept
    connection, is read and answered, not closed unanswered (the wire fuzz in CI: a fresh request "closed without an
    answer"; cancelled after the connection's task was woken, the request was cut by the cancel at its next wait: a
    504 "did not send a response within 60s")."""
    setup = await start(nursery, gateway, [], header_timeout_s=0.1, keepalive_timeout_s=0.1)
    addr = ("127.0.0.1", setup.port)
    for _ in range(6):
        fresh, kept = trio.socket.socket(), trio.socket.socket()
        await fresh.connect(addr)
        await kept.connect(addr)
        await kept.send(b"GET /ok HTTP/1.1\r\nHost: gw\r\n\r\n")
        first = b""
        while b'"healthy"' not in first:
            first += await kept.recv(65536)
        await trio.sleep(0.02)  # both connections wait for their next request now
        for sock in (fresh, kept):
            os.write(sock.fileno(), b"GET /ok HTTP/1.1\r\nHost: gw\r\n\r\n")  # (no checkpoint in between)
        time.sleep(0.15)  # the worker is busy past both timeouts, with both requests in their sockets
        for sock in (fresh, kept):
            with sock, trio.fail_after(TIMEOUT):
                received = b""
                while b'"healthy"' not in received and (data := await sock.recv(65536)):
                    received += data
                assert received.startswith(b"HTTP/1.1 200 "), received
    await setup.assert_alive()


async def test_a_slow_head_is_logged_with_its_request_line(nursery, gateway, tmp_path):
    """A 408's access-log entry has the request line that came, as a 400's to a head cut by EOF has (nginx logs the
    request ngx_http_process_request_line parsed so far; it answers nothing)."""
    access = tmp_path / "access.log"
    port = await gateway({"services": []}, access_log=str(access), header_timeout_s=0.1)
    received, _ = await raw_exchange(port, b"POST /c?foo=bar HTTP/1.1\r\nHost: gw.test\r\n")
    assert received == b""
    with trio.fail_after(TIMEOUT):
        while not (access.exists() and access.read_text()):
            await trio.sleep(0.02)
    line = json.loads(access.read_text().splitlines()[0])
    assert (line["response"]["status"], line["request"]["method"], line["request"]["querystring"]) == (
        408, "POST", {"foo": "bar"})


# --- request-size-limiting -----------------------------------------------------------------------------------------

LIMIT_PLUGIN = {"name": "request-size-limiting", "service": "limited",
                "config": {"allowed_payload_size": 1, "size_unit": "kilobytes"}}


async def start_limited(nursery: trio.Nursery, gateway, buffering: bool = True) -> tuple[Setup, EchoBackend]:  # noqa: ANN001
    echo = await start_backend(nursery, EchoBackend("limited"))
    routes = [{"paths": ["/up"], "request_buffering": buffering}]
    setup = await start(nursery, gateway, [service("limited", f"http://127.0.0.1:{echo.port}", routes)],
                        plugins=[LIMIT_PLUGIN])
    return setup, echo


async def test_a_buffered_chunked_body_over_the_size_limit_never_reaches_the_upstream(nursery, gateway):
    """With request_buffering (the default) the body is read before any upstream: the 413 comes first."""
    setup, echo = await start_limited(nursery, gateway)
    head = b"POST /up HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    chunk = b"258\r\n" + b"a" * 600 + b"\r\n"
    await assert_rejected(setup, [head + chunk, chunk], 413, pause=0.1, page=False)
    assert echo.connections == 0 and echo.requests == []
    await setup.assert_alive()


async def test_body_within_the_size_limit_is_forwarded(nursery, gateway):
    setup, echo = await start_limited(nursery, gateway)
    with trio.fail_after(TIMEOUT):
        fixed = await request(setup.port, "POST", "/up", body=b"a" * 1024)
        chunked = await request(setup.port, "POST", "/up", body=[b"a" * 500, b"b" * 524])
    assert (fixed.status, chunked.status) == (200, 200)
    assert [len(r.body) for r in echo.requests] == [1024, 1024]


async def test_content_length_over_the_size_limit_gets_413_json(nursery, gateway):
    setup, echo = await start_limited(nursery, gateway)
    with trio.fail_after(TIMEOUT):
        reply = await request(setup.port, "POST", "/up", body=b"a" * 1025)
    assert_json_error(reply, 413, "Request size limit exceeded")
    assert reply.header("connection") is None  # (kept, as Kong's kong.response.error discards the body)
    assert echo.requests == []
    await setup.assert_alive()


async def test_chunked_body_over_the_size_limit_gets_413(nursery, gateway):
    """A chunked body is read in access, as Kong's request-size-limiting reads one without Content-Length: all of
    it in the first read here, so the 413 leaves the connection as the client asked (here: closed)."""
    setup, echo = await start_limited(nursery, gateway)
    await assert_rejected(setup, b"POST /up HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\n"
                                 b"connection: close\r\n\r\n800\r\n" + b"a" * 2048 + b"\r\n0\r\n\r\n", 413, page=False)
    assert echo.requests == []
    await setup.assert_alive()


async def test_streamed_chunked_body_over_the_size_limit_gets_413_and_the_connection_closes(nursery, gateway):
    """Kong's request-size-limiting reads a body without Content-Length in access whatever request_buffering says:
    the 600 bytes of the first read wait there until the next 600 pass the 1 KB limit; the client gets the 413
    head, then the close, and the upstream is never contacted."""
    setup, echo = await start_limited(nursery, gateway, buffering=False)
    head = b"POST /up HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    chunk = b"258\r\n" + b"a" * 600 + b"\r\n"
    await assert_rejected(setup, [head + chunk, chunk], 413, pause=0.1, page=False)
    assert echo.connections == 0
    assert echo.requests == []
    await setup.assert_alive()


# --- the format of nginx's own errors (Kong's error handler) -------------------------------------------------------


async def test_an_upstream_failure_is_kongs_text_page_to_a_request_that_names_no_format(nursery, gateway):
    """Kong's error handler: no Accept and no Content-Type, so kong.conf's error_default_type (text/plain)."""
    setup = await start(nursery, gateway, [service("dead", f"http://127.0.0.1:{free_port()}", retries=0)])
    with trio.fail_after(TIMEOUT):
        reply = await request(setup.port, "GET", "/x")
    assert_text_error(reply, 502, "An invalid response was received from the upstream server")


async def test_an_upstream_failure_page_takes_the_format_of_the_requests_content_type(nursery, gateway):
    setup = await start(nursery, gateway, [service("dead", f"http://127.0.0.1:{free_port()}", retries=0)])
    with trio.fail_after(TIMEOUT):
        reply = await request(setup.port, "POST", "/x", headers=[("content-type", "application/json")], body=b"{}")
    assert_json_error(reply, 502, "An invalid response was received from the upstream server")


async def test_an_upstream_failure_page_takes_the_format_of_accept_first(nursery, gateway):
    setup = await start(nursery, gateway, [service("dead", f"http://127.0.0.1:{free_port()}", retries=0)])
    with trio.fail_after(TIMEOUT):
        reply = await request(setup.port, "POST", "/x", headers=[("content-type", "application/json"),
                                                                 ("accept", "text/html")], body=b"{}")
    assert (reply.status, reply.header("content-type")) == (502, "text/html; charset=utf-8")
    assert b"<p>An invalid response was received from the upstream server.</p>" in reply.body


async def test_error_default_type_sets_the_format_of_a_page_to_a_request_that_names_none(nursery, gateway):
    setup = await start(nursery, gateway, [service("dead", f"http://127.0.0.1:{free_port()}", retries=0)],
                        error_default_type="application/json")
    with trio.fail_after(TIMEOUT):
        reply = await request(setup.port, "GET", "/x")
    assert_json_error(reply, 502, "An invalid response was received from the upstream server")


async def test_a_read_timeout_page_is_text_unless_the_request_names_a_format(nursery, gateway):
    """A POST is not retried: the connection's timer answers it (its own path)."""
    hang = await start_backend(nursery, BadBackend("hang"))
    setup = await start(nursery, gateway, [service("slow", f"http://127.0.0.1:{hang.port}", read_timeout=100)])
    with trio.fail_after(TIMEOUT):
        plain = await request(setup.port, "POST", "/x", body=b"1")
        named = await request(setup.port, "POST", "/x", headers=[("content-type", "application/json")], body=b"1")
    assert_text_error(plain, 504, "The upstream server is timing out")
    assert_json_error(named, 504, "The upstream server is timing out")


async def test_errors_kong_answers_with_kong_response_error_stay_json_without_accept(nursery, gateway):
    """The router's 404 is kong.response.error, which reads Accept only: JSON by default."""
    setup = await start(nursery, gateway, [service("svc", f"http://127.0.0.1:{free_port()}", [{"paths": ["/api"]}])])
    with trio.fail_after(TIMEOUT):
        reply = await request(setup.port, "GET", "/nothing-here")
    assert_json_error(reply, 404, "no Route matched with those values")


async def test_a_request_the_gateway_cannot_read_gets_a_text_400(nursery, gateway):
    setup = await start(nursery, gateway, [])
    data, _ = await raw_exchange(setup.port, b"GET /x HTTP/1.1\r\nhost: gw\r\ncontent-length: 1\r\n"
                                             b"content-length: 2\r\n\r\n")
    status, headers, body = parse_raw_response(data)
    assert (status, headers["content-type"]) == (400, "text/plain; charset=utf-8")
    assert body.startswith(b"Bad request\nrequest_id: ")


async def test_an_answer_of_the_gateways_own_echoes_the_clients_request_id_under_its_own_id(nursery, gateway):
    """As a proxied request's: a sane X-Request-Id is echoed as X-Request-Id, while the body's request_id and
    X-Kong-Request-Id are the gateway's own id of the request (Kong's kong_request_id)."""
    setup = await start(nursery, gateway, [service("svc", f"http://127.0.0.1:{free_port()}", [{"paths": ["/api"]}])])
    with trio.fail_after(TIMEOUT):
        reply = await request(setup.port, "GET", "/nothing-here", headers=[("x-request-id", "client-request-0007")])
    body = assert_json_error(reply, 404, "no Route matched with those values")
    assert reply.header("x-request-id") == "client-request-0007"
    assert body["request_id"] == reply.header("x-kong-request-id") != "client-request-0007"


class RawBackend:
    """Reads a request head, sends `answer` as it is, closes: a response broken on purpose."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.requests = 0
        self.port = 0

    async def serve(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._answer, listeners)

    async def _answer(self, stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            data += chunk
        self.requests += 1
        await stream.send_all(self.answer)
        await trio.aclose_forcefully(stream)


async def _pair_behind(nursery, gateway, answer: bytes):  # noqa: ANN001, ANN202
    broken = RawBackend(answer)
    await nursery.start(broken.serve)
    echo = await start_backend(nursery, EchoBackend("alive"))
    setup = await start(nursery, gateway, [service("svc", "http://pair")],
                        [upstream("pair", [broken.port, echo.port], algorithm="round-robin")])
    return setup, broken, echo


async def test_an_invalid_response_head_is_answered_502_and_not_sent_elsewhere(nursery, gateway):
    """nginx's default proxy_next_upstream (error timeout) has no invalid_header."""
    setup, broken, echo = await _pair_behind(nursery, gateway, b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n")
    with trio.fail_after(TIMEOUT):
        replies = [await request(setup.port, "GET", f"/r{i}") for i in range(2)]  # at least one tries `broken` first
    assert sorted(r.status for r in replies)[-1] == 502
    assert broken.requests == sum(r.status == 502 for r in replies)
    assert len(echo.requests) == sum(r.status == 200 for r in replies)


async def test_a_response_head_cut_off_by_the_upstream_closing_is_retried(nursery, gateway):
    """nginx's "upstream prematurely closed connection": an error, so an idempotent request goes to the next try."""
    setup, broken, echo = await _pair_behind(nursery, gateway, b"HTTP/1.1 200 OK\r\ncontent-le")
    with trio.fail_after(TIMEOUT):
        replies = [await request(setup.port, "GET", f"/r{i}") for i in range(2)]
    assert [(r.status, r.json()["name"]) for r in replies] == [(200, "alive")] * 2
    assert broken.requests >= 1


CHUNK = b"64\r\n" + b"z" * 100 + b"\r\n"  # 100-byte chunks: many body events per 64 KiB read
CHUNKS = 60_000  # 6 MB of body, more than the loopback socket buffers hold


class FastSmallChunks(_Backend):
    """Answers with a chunked body of CHUNKS 100-byte chunks, written as fast as the gateway reads them."""

    async def handle_conn(self, stream: trio.SocketStream) -> None:
        if await self._read_request(stream, h11.Connection(h11.SERVER)) is None:
            return
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
                              b"transfer-encoding: chunked\r\n\r\n")
        for _ in range(CHUNKS // 600):
            await stream.send_all(CHUNK * 600)
        await stream.send_all(b"0\r\n\r\n")
        await trio.sleep(5)


async def test_a_slow_reading_client_is_not_cut_off_by_the_upstreams_read_timeout(nursery, gateway):
    """nginx's proxy_read_timeout runs only while it waits on the upstream (ngx_event_pipe.c: rev->active &&
    !rev->ready); a client reading slowly is bounded by send_timeout alone. A write to the client that had to wait
    put back the read_timeout deadline set before the last upstream read, past by then: the client was reset."""
    upstream = FastSmallChunks("fast")
    await nursery.start(upstream.serve)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{upstream.port}", read_timeout=100)]})
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    await sock.connect(("127.0.0.1", port))
    await sock.send(b"GET / HTTP/1.1\r\nhost: gw.test\r\n\r\n")
    got = bytearray()
    reset = False
    pauses = 0
    with trio.fail_after(15):
        while not got.endswith(b"\r\n0\r\n\r\n"):
            try:
                data = await sock.recv(65536)
            except ConnectionResetError:
                reset = True
                break
            if not data:
                break
            got += data
            if len(got) // 1_000_000 > pauses:  # the client stops reading for 0.25 s after each MB
                pauses += 1
                await trio.sleep(0.25)
    sock.close()
    assert not reset, f"reset after {len(got)} bytes"
    head, _, body = bytes(got).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert body.count(b"z") == CHUNKS * 100  # the whole body (reframed by the gateway: the same bytes)


async def test_the_client_connection_stays_open_after_a_posts_504(nursery, gateway):
    """nginx keeps a connection after its 502 or 504 (ngx_http_special_response_handler drops keep-alive only for
    400, 413, 414, 495-497, 500, 501): a POST read whole gets its 504 and the next request on the same connection;
    the gateway closed it (a timer's cancellation ended the whole connection loop)."""
    hang = BadBackend("hang")
    await nursery.start(hang.serve)
    echo = EchoBackend("healthy")
    await nursery.start(echo.serve)
    port = await gateway({"services": [
        service("slow", f"http://127.0.0.1:{hang.port}", [{"paths": ["/x"]}], read_timeout=100, retries=0),
        service("ok", f"http://127.0.0.1:{echo.port}", [{"paths": ["/ok"]}])]})
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            first = await client.request("POST", "/x", body=b'{"id": 1}')
            assert first.status == 504
            assert first.header("connection") is None  # nginx keeps the connection: no `Connection: close`
            second = await client.request("GET", "/ok")  # on the same connection
    assert (second.status, second.json()["name"]) == (200, "healthy")
    assert len(hang.requests) == 1
