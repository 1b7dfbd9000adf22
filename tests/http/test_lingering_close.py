"""nginx's lingering close: an answer given before the request body was read (413 of a size limit, 401 of an
authentication plugin) reaches a client that is still uploading. Closing a socket with unread input sends a reset,
which can destroy the answer in the client's kernel before the client reads it; so the gateway ends its side (FIN)
and reads and drops what the client still sends, bounded in time, before closing."""

from __future__ import annotations

from functools import partial

import pytest
import trio
from backends import EchoBackend, parse_raw_response, read_to_end, service, upload

from gateway.http import server

TIMEOUT = 20
BODY = 8 * 1024 * 1024  # far past what the kernel's buffers hold on either side


@pytest.fixture
async def limited(nursery, gateway):  # noqa: ANN201
    echo = EchoBackend()
    await nursery.start(echo.serve)
    return await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}", [{"paths": ["/"]}])],
                          "plugins": [{"name": "request-size-limiting",
                                       "config": {"allowed_payload_size": 1, "size_unit": "kilobytes"}}]})


async def test_a_413_before_the_body_reaches_a_client_still_uploading(limited):
    head = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % BODY
    received, reset = await upload(limited, head, BODY)
    assert not reset
    status, headers, body = parse_raw_response(received)
    assert status == 413 and b"Request size limit exceeded" in body
    assert headers["connection"] == "close"


async def test_a_413_mid_chunked_body_reaches_a_client_still_uploading(limited):
    head = b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10000\r\n"
    received, reset = await upload(limited, head, BODY)  # (one chunk's head: the rest is its data and more)
    assert not reset
    assert parse_raw_response(received)[0] == 413


async def test_lingering_ends_when_the_client_stops_sending(nursery, gateway, monkeypatch):
    """nginx's lingering_timeout: a client that goes quiet without closing is closed after it (its next bytes then
    meet a reset)."""
    monkeypatch.setattr(server, "LINGER_TIMEOUT_S", 0.3)
    echo = EchoBackend()
    await nursery.start(echo.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}", [{"paths": ["/"]}])],
                          "plugins": [{"name": "request-size-limiting",
                                       "config": {"allowed_payload_size": 1, "size_unit": "kilobytes"}}]})
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    with trio.fail_after(TIMEOUT):
        await stream.send_all(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 100_000)
        received = b""
        while data := await stream.receive_some(65536):  # the answer, then the gateway's FIN
            received += data
        assert parse_raw_response(received)[0] == 413
        await stream.send_all(b"x" * 1000)  # still read and dropped: no reset
        await trio.sleep(1.0)  # quiet for longer than lingering_timeout: the gateway closed
        with pytest.raises(trio.BrokenResourceError):
            for _ in range(10):
                await stream.send_all(b"x")
                await trio.sleep(0.05)
    await stream.aclose()


async def test_a_response_closing_at_keepalive_requests_lingers_over_a_pipelined_request(nursery, gateway):
    """The answer that ends a kept-alive connection (here keepalive_requests 1) is delivered whole although a
    pipelined request waits unread: nginx lingers then (src/http/ngx_http_request.c, ngx_http_finalize_connection:
    `r->header_in->pos < r->header_in->last || r->connection->read->ready || r->connection->pipeline` ->
    ngx_http_set_lingering_close). A close with input unread would make the kernel reset the connection and throw
    away the end of the answer still queued."""
    backend = EchoBackend()
    port = await nursery.start(backend.serve)
    gw = await gateway({"services": [service("svc", f"http://127.0.0.1:{port}")]}, keepalive_requests=1)
    size = 8_000_000
    stream = await trio.open_tcp_stream("127.0.0.1", gw)
    try:
        with trio.fail_after(TIMEOUT):
            await stream.send_all(b"GET /big?bytes=%d&delay=0.3 HTTP/1.1\r\nhost: a\r\n\r\n" % size)
            await trio.sleep(0.1)  # the second request arrives while the first waits for its upstream
            await stream.send_all(b"GET /next HTTP/1.1\r\nhost: a\r\n\r\n")
            await trio.sleep(1.0)  # a client busy elsewhere: the answer fills the socket buffers meanwhile
            received, reset = await read_to_end(stream)
    finally:
        await trio.aclose_forcefully(stream)
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"connection: close" in head.lower()
    assert (len(body), reset) == (size, False)


async def _head_only(stream: trio.SocketStream) -> None:
    """An upstream that takes a request head and then reads nothing more (its body fills the buffers)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return
        data += chunk
    await trio.sleep(TIMEOUT)


async def test_a_504_for_an_upstream_write_timeout_lingers_over_the_unread_request_body(nursery, gateway):
    """An upstream that stops reading an unbuffered request body gets the client nginx's 504 (write_timeout) while
    the client is still uploading; the connection then closes with a lingering close, so the upload ends and the
    client reads the 504 (src/http/ngx_http_request.c, ngx_http_finalize_connection: `if (r->reading_body) {
    r->keepalive = 0; r->lingering_close = 1; }`). A close with the body unread would reset it: a client that sends
    its whole body before reading (urllib3, curl) would report a reset instead of the 504."""
    listeners = await nursery.start(partial(trio.serve_tcp, _head_only, 0, host="127.0.0.1"))
    up = listeners[0].socket.getsockname()[1]
    gw = await gateway({"services": [service("svc", f"http://127.0.0.1:{up}", write_timeout=300, retries=0,
                                             routes=[{"paths": ["/"], "request_buffering": False}])]})
    size = 48 << 20
    stream = await trio.open_tcp_stream("127.0.0.1", gw)
    upload_reset = False
    try:
        with trio.fail_after(TIMEOUT):
            await stream.send_all(b"PUT /up HTTP/1.1\r\nhost: a\r\ncontent-length: %d\r\n\r\n" % size)
            piece = b"x" * (1 << 20)
            try:
                for _ in range(size >> 20):
                    await stream.send_all(piece)
            except trio.BrokenResourceError:
                upload_reset = True
            received, reset = await read_to_end(stream)
    finally:
        await trio.aclose_forcefully(stream)
    assert received.startswith(b"HTTP/1.1 504"), bytes(received[:200])
    assert (upload_reset, reset) == (False, False)


async def _refused_then_rest(port: int, start: bytes, rest: bytes) -> tuple[int, bytes]:
    """Send `start`, a head too large to read, take the answer whole, then send `rest` of the head in pieces, as a
    slow link brings it: (the answer's status, what came after it). A reset on the way is an AssertionError."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        with trio.fail_after(TIMEOUT):
            await stream.send_all(start)
            received = b""
            while b"\r\n\r\n" not in received or len(received.partition(b"\r\n\r\n")[2]) < int(
                    parse_raw_response(received)[1]["content-length"]):
                data = await stream.receive_some(65536)
                assert data, f"the connection ended before a whole response: {received!r}"
                received += data
            await trio.sleep(0.1)  # the rest comes a moment after the answer
            try:
                for piece in (rest[:4000], rest[4000:8000], rest[8000:], b"\r\n\r\n"):
                    await stream.send_all(piece)
                    await trio.sleep(0.05)
                end = await stream.receive_some(65536)
            except trio.BrokenResourceError as e:
                raise AssertionError(f"the rest of the head met a reset, no lingering close: {e}") from None
    finally:
        await trio.aclose_forcefully(stream)
    return parse_raw_response(received)[0], end


async def test_a_head_refused_as_too_large_lingers_over_the_rest_of_it(nursery, gateway):
    """494, a header line too long (Kong's 400 "Request header or cookie too large"): nginx release-1.27.1
    src/http/ngx_http_request.c:1410-1413 (ngx_http_process_request_headers) sets `r->lingering_close = 1` before
    finalizing it, so ngx_http_finalize_connection (:2810-2818) calls ngx_http_set_lingering_close: a FIN after the
    answer (:3498) and the rest of the head read and dropped. 414, a request line too long (:1229-1236): it follows a
    read that filled the buffer, which leaves c->read->ready set (src/os/unix/ngx_recv.c:155-166 clears it only when
    n < size), and `r->connection->read->ready` lingers too. Closing at once would reset the client still writing."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}", [{"paths": ["/"]}])]})
    cookie = b"GET /x HTTP/1.1\r\nHost: a\r\nCookie: " + b"c" * 9000  # past one 8k buffer
    assert await _refused_then_rest(port, cookie, b"c" * 12000) == (400, b"")  # (b"": the FIN, no reset)
    assert await _refused_then_rest(port, b"GET /" + b"a" * 9000, b"a" * 12000) == (414, b"")
