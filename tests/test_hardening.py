"""Defects a security tester found with raw sockets (issue 13), one test each, once per codec: misdelivered responses
from stray upstream bytes, CONNECT and asterisk-form, absolute-form targets, sends without a deadline, framing
headers named in Connection, stalled uploads blamed on the upstream, SSE streams outliving their client, and the
DNS-rebinding Host check on MCP routes."""

from __future__ import annotations

import json
import re

import h11
import pytest
import trio
from backends import EchoBackend, EndlessSse, _Backend, parse_raw_response, raw_exchange, request, service

TIMEOUT = 10
STRAY = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nSTRAY"


class StrayBackend(_Backend):
    """Answers each request with its path as the body, then, `delay` seconds later, sends an unsolicited response
    on the same connection (a backend answering twice, or late). Records when each connection was closed by the
    gateway."""

    def __init__(self, delay: float) -> None:
        super().__init__("stray")
        self.delay = delay
        self.closed_by_peer = 0
        self.strays_sent = 0

    async def handle_conn(self, stream: trio.SocketStream) -> None:
        try:
            await self._serve(stream)
        finally:  # EOF, or a reset: the gateway closed with our stray bytes unread
            self.closed_by_peer += 1

    async def _serve(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            seen = await self._read_request(stream, conn)
            if seen is None:
                return
            body = seen.target.encode()
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n\r\n%b"
                                  % (len(body), body))
            if self.delay:
                await trio.sleep(self.delay)
            await stream.send_all(STRAY)
            self.strays_sent += 1
            # The gateway should have closed the connection; wait for its EOF (or a request, if it did not).
            conn = h11.Connection(h11.SERVER)


async def start_stray(nursery: trio.Nursery, gateway, delay: float) -> tuple[StrayBackend, int]:  # noqa: ANN001
    backend = StrayBackend(delay)
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{backend.port}")]})
    return backend, port


# --- 1. no byte received on an idle pooled connection is ever delivered ---------------------------------------------


@pytest.mark.parametrize("delay", [0.0, 0.02])
async def test_a_late_or_second_upstream_answer_never_reaches_the_next_client(nursery, gateway, delay):
    backend, port = await start_stray(nursery, gateway, delay)
    with trio.fail_after(TIMEOUT):
        for i in range(6):  # each request a new client, so a misdelivery would cross clients
            while backend.strays_sent < i or backend.closed_by_peer < i:  # the stray answer of the previous request
                await trio.sleep(0.01)  # arrived meanwhile, and the gateway closed the connection it came on
            reply = await request(port, "GET", f"/client-{i}")
            assert (reply.status, reply.body) == (200, f"/client-{i}".encode())
    assert backend.connections == 6  # no connection that carried a stray answer was used again


async def test_an_idle_connection_that_becomes_readable_is_closed_at_once(nursery, gateway):
    backend, port = await start_stray(nursery, gateway, 0.05)
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/one")
        assert reply.body == b"/one"
        while backend.strays_sent == 0:
            await trio.sleep(0.01)
        sent_at = trio.current_time()
        while backend.closed_by_peer == 0:
            await trio.sleep(0.01)
    assert trio.current_time() - sent_at < 0.5  # within the pool's watch interval (0.1 s), not at the next request


class ClosingBackend(_Backend):
    """Answers one request per connection with keep-alive, then closes: the gateway pools a connection that dies."""

    async def handle_conn(self, stream: trio.SocketStream) -> None:
        if await self._read_request(stream, h11.Connection(h11.SERVER)) is not None:
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")


async def test_an_idle_connection_the_upstream_closed_is_not_reused(nursery, gateway):
    backend = ClosingBackend()
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{backend.port}")]})
    with trio.fail_after(TIMEOUT):
        for _ in range(3):
            assert (await request(port, "POST", "/x", body=b"data")).status == 200  # a POST is never retried
            await trio.sleep(0.05)


class CrossingBackend(_Backend):
    """Answers the first request on each connection with keep-alive and closes the connection when a second one
    arrives on it: its idle close crossing the gateway's next request, which the pool's look before reuse cannot
    see coming."""

    async def handle_conn(self, stream: trio.SocketStream) -> None:
        if await self._read_request(stream, h11.Connection(h11.SERVER)) is None:
            return
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await self._read_request(stream, h11.Connection(h11.SERVER))  # (recorded) and left unanswered


@pytest.mark.parametrize("retries", [0, 2])
async def test_a_get_crossing_the_upstreams_idle_close_is_sent_again_on_a_new_connection(nursery, gateway, retries):
    backend = CrossingBackend()
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{backend.port}", retries=retries)]})
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/first")).status == 200
        second = await request(port, "GET", "/second")
    assert (second.status, second.body) == (200, b"ok")  # a single target, and no retry spent: nginx does the same
    assert [seen.target for seen in backend.requests] == ["/first", "/second", "/second"]
    assert backend.connections == 2


async def test_a_post_crossing_the_upstreams_idle_close_is_not_sent_again(nursery, gateway):
    backend = CrossingBackend()
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{backend.port}")]})
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/first")).status == 200
        second = await request(port, "POST", "/second", body=b"data")
    assert second.status == 502  # it reached the upstream, which may have acted on it
    assert [seen.target for seen in backend.requests] == ["/first", "/second"]


# --- 2. CONNECT and asterisk-form -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("target", "status", "text"), [(b"127.0.0.1:22", 400, b"Bad request"),
                                                        (b"/", 405, b"Method not allowed")])
async def test_connect_is_refused_and_what_follows_is_never_parsed(nursery, gateway, target, status, text):
    """nginx 1.27.1 answers a CONNECT whose target it parses (a path) with 405, an authority (which it does not
    parse) with 400; Kong's error handler writes the text."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}", [{"hosts": ["127.0.0.1"]}])]})
    data, _ = await raw_exchange(port, b"CONNECT %s HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n" % target
                                 + b"GET /smuggled HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    got, headers, body = parse_raw_response(data)
    assert got == status
    assert headers["connection"] == "close"
    assert body.startswith(text + b"\nrequest_id: ")  # nginx's own error: Kong's text page
    assert data.count(b"HTTP/1.1 ") == 1  # one answer, then the connection closed
    assert echo.requests == []


async def test_trace_gets_405_before_any_route_as_nginx_answers_it(nursery, gateway):
    """Kong's spec 13-error_handlers: 'Request For Routers With Trace Method Not Allowed'."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}")]})
    data, _ = await raw_exchange(port, b"TRACE / HTTP/1.1\r\nHost: a\r\n\r\n")
    status, headers, body = parse_raw_response(data)
    assert status == 405
    assert headers["server"].startswith("mcp-gateway/")
    assert re.fullmatch(rb"Method not allowed\nrequest_id: [0-9a-f]+\n", body)
    assert echo.requests == []


@pytest.mark.parametrize("method", [b"OPTIONS", b"GET"])
async def test_asterisk_form_gets_400(nursery, gateway, method):
    echo = EchoBackend()
    await nursery.start(echo.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}")]})
    data, _ = await raw_exchange(port, method + b" * HTTP/1.1\r\nHost: a\r\n\r\n")
    assert parse_raw_response(data)[0] == 400
    assert echo.requests == []


# --- 3. absolute-form targets: the authority is the host, origin form goes upstream -----------------------------------


async def test_absolute_form_routes_on_its_authority_and_sends_origin_form(nursery, gateway):
    good, evil = EchoBackend("good"), EchoBackend("evil")
    await nursery.start(good.serve)
    await nursery.start(evil.serve)
    port = await gateway({"services": [
        service("good", f"http://127.0.0.1:{good.port}", [{"hosts": ["good.test"]}]),
        service("evil", f"http://127.0.0.1:{evil.port}", [{"hosts": ["evil.example"]}])]})
    data, _ = await raw_exchange(port, b"GET http://evil.example/x?q=1 HTTP/1.1\r\nHost: good.test\r\n"
                                       b"Connection: close\r\n\r\n")
    status, _, body = parse_raw_response(data)
    assert status == 200
    seen = json.loads(body)
    assert seen["name"] == "evil"
    assert seen["path"] == "/x?q=1"
    assert ["x-forwarded-host", "evil.example"] in seen["headers"]
    assert good.requests == []


@pytest.mark.parametrize("host", [b"a b/c@d", b"a/b", b"a..b"])
async def test_host_that_is_not_an_authority_gets_400(nursery, gateway, host):
    """ngx_http_validate_host refuses a space, a `/` and two dots in a row (`user@good.test` it serves: see
    tests/http/test_target_and_host_as_sent.py)."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}")]})
    data, _ = await raw_exchange(port, b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert parse_raw_response(data)[0] == 400
    assert echo.requests == []


# --- 5. every client write is bounded by send_timeout_s ---------------------------------------------------------------


async def test_a_client_that_never_reads_is_cut_after_send_timeout_and_the_upstream_closed(nursery, gateway):
    class CountingEcho(EchoBackend):
        def __init__(self) -> None:
            super().__init__()
            self.closed = 0

        async def handle_conn(self, stream: trio.SocketStream) -> None:
            try:
                await super().handle_conn(stream)
            finally:
                self.closed += 1

    echo = CountingEcho()
    await nursery.start(echo.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}")]}, send_timeout_s=0.5)
    client = await trio.open_tcp_stream("127.0.0.1", port)
    client.setsockopt(__import__("socket").SOL_SOCKET, __import__("socket").SO_RCVBUF, 4096)
    try:
        with trio.fail_after(TIMEOUT):
            for _ in range(8):  # pipelined requests for 4 MB responses, never reading a byte
                await client.send_all(b"GET /big?bytes=4000000 HTTP/1.1\r\nHost: a\r\n\r\n")
            started = trio.current_time()
            while echo.closed == 0:
                await trio.sleep(0.05)
            elapsed = trio.current_time() - started
    finally:
        await trio.aclose_forcefully(client)
    assert 0.45 <= elapsed < 5.0


# --- 6. framing headers named in Connection never change framing -----------------------------------------------------


@pytest.mark.parametrize("connection", [b"close, Content-Length", b"Content-Length", b"keep-alive, content-length"])
async def test_content_length_named_in_connection_keeps_the_body(nursery, gateway, connection):
    echo = EchoBackend()
    await nursery.start(echo.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}")]})
    data, _ = await raw_exchange(port, b"POST /x HTTP/1.1\r\nHost: a\r\nConnection: " + connection +
                                 b"\r\nContent-Length: 5\r\n\r\nhello" + (b"" if b"close" in connection else
                                                                           b"GET /z HTTP/1.1\r\nHost: a\r\n"
                                                                           b"Connection: close\r\n\r\n"))
    status, _, _ = parse_raw_response(data)
    assert status == 200
    assert echo.requests[0].body == b"hello"
    assert echo.requests[0].header("content-length") == "5"


# --- 7. a client stalling mid-upload is cut off at client_body_timeout, and the upstream connection is closed --------


async def test_a_client_stalling_mid_upload_is_closed_at_client_body_timeout_not_504(nursery, gateway):
    """Closed unanswered, as nginx terminates a 408 (release-1.27.1 src/http/ngx_http_request.c:2531-2541): no 504
    after the upstream's read_timeout, no page."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}")]}, client_body_timeout_s=0.25)
    started = trio.current_time()
    data, _ = await raw_exchange(port, b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
    elapsed = trio.current_time() - started
    assert data == b""
    assert 0.2 <= elapsed < 3.0
    assert echo.requests == []  # the upstream got a partial request and a closed connection, never a whole one


# --- 9. an SSE stream whose client goes away is closed upstream at once -----------------------------------------------


async def test_closing_an_sse_response_closes_the_upstream_stream_at_once(nursery, gateway):
    sse = EndlessSse()
    await nursery.start(sse.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{sse.port}")]}, sse_keepalive=30)
    client = await trio.open_tcp_stream("127.0.0.1", port)
    with trio.fail_after(TIMEOUT):
        await client.send_all(b"GET /events HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\n\r\n")
        received = b""
        while b"data: one" not in received:
            received += await client.receive_some(4096)
        await client.aclose()
        closed_at = trio.current_time()
        while sse.closed_at is None:
            await trio.sleep(0.01)
    assert sse.closed_at - closed_at < 1.0  # not at the next keep-alive comment (30 s)


# --- 10. DNS rebinding: MCP routes check Host ------------------------------------------------------------------------


def mcp_doc(port: int) -> dict:
    return {"services": [service("m", f"http://127.0.0.1:{port}",
                                 [{"paths": ["/mcp"], "strip_path": False, "mcp": True}])]}


@pytest.mark.parametrize(("host", "status"), [("evil.example:8000", 421), ("evil.example", 421),
                                              ("127.0.0.1:8000", 200), ("localhost:1234", 200), ("[::1]:80", 200)])
async def test_mcp_route_on_a_loopback_listener_allows_only_loopback_hosts(nursery, gateway, host, status):
    echo = EchoBackend()
    await nursery.start(echo.serve)
    port = await gateway(mcp_doc(echo.port))
    reply = await request(port, "POST", "/mcp", headers=[("content-type", "application/json")], body=b"{}", host=host)
    assert reply.status == status
    if status == 421:
        assert reply.json()["error"]["message"] == "Invalid Host header"
        assert echo.requests == []


@pytest.mark.parametrize(("host", "status"), [("api.example.com:443", 200), ("api.example.com", 200),
                                              ("x.tools.example.com", 200), ("127.0.0.1:8000", 421)])
async def test_mcp_allowed_hosts_are_configurable(nursery, gateway, host, status):
    echo = EchoBackend()
    await nursery.start(echo.serve)
    port = await gateway(mcp_doc(echo.port), mcp={"allowed_hosts": ["api.example.com", "*.tools.example.com"]})
    reply = await request(port, "POST", "/mcp", headers=[("content-type", "application/json")], body=b"{}", host=host)
    assert reply.status == status


async def test_a_plain_route_does_not_check_host(nursery, gateway):
    echo = EchoBackend()
    await nursery.start(echo.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}")]})
    assert (await request(port, "GET", "/x", host="evil.example:8000")).status == 200


def _unrouted_with_body(framing: str, size: int) -> bytes:
    """A request no route matches, with a body of `size` bytes, then a request pipelined after it."""
    after = b"GET /ok/next HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n"
    if framing == "length":
        return (b"POST /nope HTTP/1.1\r\nHost: gw.test\r\nContent-Length: %d\r\n\r\n" % size) + b"z" * size + after
    return (b"POST /nope HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % size
            + b"z" * size + b"\r\n0\r\n\r\n" + after)


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_a_large_body_the_gateway_answered_unread_is_discarded_and_the_next_request_answered(nursery, gateway,
                                                                                                  framing):
    """nginx discards an unread body of any size (lingering_time, lingering_timeout) and keeps the connection; the
    gateway once closed after 64 KiB of it, after a 404 that did not say so (the wire fuzz, seed 31337003)."""
    echo = EchoBackend("echo")
    await nursery.start(echo.serve)
    port = await gateway({"services": [service("echo", f"http://127.0.0.1:{echo.port}", [{"paths": ["/ok"]}])]})
    data, _ = await raw_exchange(port, _unrouted_with_body(framing, 300_000))
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", data) == [b"404", b"200"], data[:600]
