"""HTTP/1.1 on the wire as nginx (so Kong 3.x) puts it, through the running gateway once per codec: every answer's
`Date`, an HTTP/1.0 client's keep-alive, an upstream's transfer codings, an HTTP/1.0-less (0.9) request line. The
codecs' share of each is pinned sans-I/O in test_codec_conformance.py; these check what reaches a client."""

from __future__ import annotations

import gzip
import time
from email.utils import parsedate_to_datetime

import pytest
import trio
from backends import EchoBackend, ScriptedBackend, parse_raw_response, raw_exchange, request, service

from gateway.http.dates import NOW, HttpNow, http_date, parse_http_time
from gateway.http.timers import Timers

TIMEOUT = 10
UPSTREAM_DATE = "Sun, 06 Nov 1994 08:49:37 GMT"  # RFC 9110's example


def assert_date_is_now(value: str | None) -> None:
    """A Date header is there, in IMF-fixdate, within a few seconds of the test's clock."""
    assert value is not None, "no Date header"
    assert value.endswith(" GMT") and len(value) == 29
    assert abs(parsedate_to_datetime(value).timestamp() - time.time()) < 5


def dates(headers: list[tuple[str, str]]) -> list[str]:
    return [v for k, v in headers if k == "date"]


async def echo_gateway(nursery: trio.Nursery, gateway, echo: EchoBackend | None = None, **settings: object) -> int:  # noqa: ANN001
    """An echo backend behind routes /api (and nothing else), and the gateway's port."""
    echo = echo or EchoBackend()
    await nursery.start(echo.serve)
    return await gateway({"services": [service("svc", f"http://127.0.0.1:{echo.port}", [{"paths": ["/api"]}])]},
                         **settings)


# --- Date --------------------------------------------------------------------------------------------------------


def test_http_date_is_imf_fixdate_in_english() -> None:
    """nginx's ngx_http_time: RFC 9110's preferred form, whatever the process's locale (no strftime)."""
    assert http_date(784111777) == UPSTREAM_DATE.encode()
    assert parse_http_time(http_date(1_700_000_000)) == 1_700_000_000


def test_the_date_line_is_formatted_again_only_when_the_second_changes() -> None:
    """A response reads the line; it is built once a second, not per response."""
    now = HttpNow()
    now.refresh(784111777.2)
    line = now.line
    assert line == b"Date: " + UPSTREAM_DATE.encode() + b"\r\n"
    now.refresh(784111777.9)
    assert now.line is line
    now.refresh(784111778.0)
    assert now.line == b"Date: Sun, 06 Nov 1994 08:49:38 GMT\r\n"


async def test_the_timer_sweeper_keeps_the_date_line_current() -> None:
    """The worker's sweeper (which wakes at least every CLIENT_CHECK_S) refreshes the shared line as it wakes."""
    NOW.refresh(784111777.0)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(Timers().expire_forever)
            await trio.sleep(0)
            nursery.cancel_scope.cancel()
        assert_date_is_now(NOW.line[6:-2].decode())
    finally:
        NOW.refresh()


async def test_a_proxied_answer_whose_upstream_sent_no_date_gets_the_gateways(nursery, gateway):
    """RFC 9110 6.6.1 and nginx's header filter: an answer without Date gets the gateway's clock's."""
    port = await echo_gateway(nursery, gateway)
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/api/x")
    assert reply.status == 200
    assert len(dates(reply.headers)) == 1
    assert_date_is_now(reply.header("date"))


async def test_an_upstreams_own_date_is_kept_and_no_second_one_added(nursery, gateway):
    """Kong's `proxy_pass_header Date`: the upstream's, alone."""
    echo = EchoBackend()
    echo.extra_headers = [(b"date", UPSTREAM_DATE.encode())]
    port = await echo_gateway(nursery, gateway, echo)
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/api/x")
    assert dates(reply.headers) == [UPSTREAM_DATE]


@pytest.mark.parametrize("headers", ["off", "server_tokens, latency_tokens, X-Kong-Request-Id", "Via"])
async def test_the_gateways_own_answers_carry_a_date_whatever_headers_says(nursery, gateway, headers):
    """nginx writes Date whatever Kong's `headers` turns on: the router's 404 and a proxied answer."""
    port = await echo_gateway(nursery, gateway, headers=headers)
    with trio.fail_after(TIMEOUT):
        missing = await request(port, "GET", "/elsewhere")
        proxied = await request(port, "GET", "/api/x")
    assert missing.status == 404 and proxied.status == 200
    assert len(dates(missing.headers)) == 1 and len(dates(proxied.headers)) == 1
    assert_date_is_now(missing.header("date"))
    assert_date_is_now(proxied.header("date"))


async def test_a_date_a_plugin_took_away_is_the_gateways_again(nursery, gateway):
    """Date is added after the plugins' header filters, as nginx's header filter runs after Kong's: a
    response-transformer that renames the upstream's Date leaves an answer that gets the gateway's."""
    echo = EchoBackend()
    echo.extra_headers = [(b"date", UPSTREAM_DATE.encode())]
    await nursery.start(echo.serve)
    route = {"paths": ["/api"], "plugins": [{"name": "response-transformer",
                                            "config": {"rename": {"headers": ["Date:X-Date"]}}}]}
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{echo.port}", [route])]})
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/api/x")
    assert reply.header("x-date") == UPSTREAM_DATE
    assert len(dates(reply.headers)) == 1
    assert_date_is_now(reply.header("date"))


async def test_a_proxy_cache_hit_carries_the_stored_date(nursery, gateway):
    """Kong's proxy-cache serves its stored headers, the upstream's Date among them (nginx adds none then)."""
    echo = EchoBackend()
    echo.extra_headers = [(b"date", UPSTREAM_DATE.encode())]
    await nursery.start(echo.serve)
    route = {"paths": ["/api"], "plugins": [{"name": "proxy-cache", "config": {"strategy": "memory"}}]}
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{echo.port}", [route])]})
    with trio.fail_after(TIMEOUT):
        miss = await request(port, "GET", "/api/x")
        hit = await request(port, "GET", "/api/x")
    assert (miss.header("x-cache-status"), hit.header("x-cache-status")) == ("Miss", "Hit")
    assert dates(hit.headers) == [UPSTREAM_DATE]


# --- HTTP/1.0 keep-alive ------------------------------------------------------------------------------------------

REQUEST_10 = b"GET /api/r%d HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n"


async def read_answer(stream: trio.SocketStream, buf: bytearray) -> bytes | None:
    """The head of one Content-Length answer read off `stream` (its body consumed, what follows left in `buf`);
    None when the connection ended first."""
    while b"\r\n\r\n" not in buf:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return None
        buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")[1:]
                  if line.lower().startswith(b"content-length:"))
    while len(rest) < length:
        chunk = await stream.receive_some(65536)
        assert chunk, "connection closed mid-body"
        rest += chunk
    buf[:] = rest[length:]
    return head.lower()


async def test_an_http10_keep_alive_client_keeps_its_connection_INHERENT(nursery, gateway, http_codec):
    """nginx keeps an HTTP/1.0 client that sends `Connection: keep-alive` (ApacheBench's `ab -k`) when the answer
    has a length, and says `Connection: keep-alive`; the next request is served on the same connection. INHERENT:
    h11 has no HTTP/1.0 keep-alive, so with the h11 codec the connection ends after the first answer."""
    echo = EchoBackend()
    port = await echo_gateway(nursery, gateway, echo)
    heads = []
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        buf = bytearray()
        try:
            for i in range(2):
                await stream.send_all(REQUEST_10 % i)
                heads.append(await read_answer(stream, buf))
        except trio.BrokenResourceError:
            heads.append(None)  # (h11: the gateway closed before the second request was written)
        finally:
            await trio.aclose_forcefully(stream)
    assert heads[0] is not None and heads[0].startswith(b"http/1.1 200")
    if http_codec == "h11":
        assert b"\r\nconnection: close" in heads[0] and heads[1] is None
        return
    assert b"\r\nconnection: keep-alive" in heads[0]
    assert heads[1] is not None and heads[1].startswith(b"http/1.1 200")
    assert [r.target for r in echo.requests] == ["/r0", "/r1"]  # (the route strips /api)


async def test_an_http10_keep_alive_client_gets_an_answer_of_unknown_length_close_delimited(nursery, gateway):
    """An upstream's chunked answer cannot go chunked to an HTTP/1.0 client: it is close-delimited, and the
    connection ends with it (nginx's chunked filter turns keep-alive off)."""
    port = await echo_gateway(nursery, gateway)
    raw, _ = await raw_exchange(port, b"GET /api/x?framing=chunked HTTP/1.0\r\nHost: a\r\nConnection: keep-alive"
                                      b"\r\n\r\n", timeout=TIMEOUT)
    status, headers, body = parse_raw_response(raw)
    assert status == 200 and headers.get("connection") == "close" and "transfer-encoding" not in headers
    assert body.startswith(b"{") and body.endswith(b"}")


# --- an upstream's transfer codings ------------------------------------------------------------------------------

BODY = gzip.compress(b"hello")


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n%x\r\n%b\r\n0\r\n\r\n" % (len(BODY), BODY),
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n" + BODY,
], ids=["gzip-chunked", "gzip-close-delimited"])
async def test_an_upstream_answer_in_a_coding_other_than_chunked_is_502(nursery, gateway, answer):
    """nginx >= 1.23: "upstream sent unknown Transfer-Encoding", 502; relayed, the gzip bytes would reach the
    client with nothing saying so (Transfer-Encoding is hop-by-hop)."""
    backend = ScriptedBackend([answer])
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}")]})
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/x")
    assert reply.status == 502, (reply.status, reply.headers, reply.body)
    assert BODY not in reply.body


# --- HTTP/0.9 request lines ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("line", [b"POST /api/x\r\n", b"GET /api/x\r\n"])
async def test_a_request_line_without_a_version_gets_400_at_once_and_the_connection_closes(nursery, gateway, line):
    """nginx ends an HTTP/0.9 request at its line end: a method other than GET is "client sent invalid method in
    HTTP/0.9 request", 400; a GET nginx would serve as HTTP/0.9, the gateway answers 400 too. Not at
    header_timeout_s (408), which such a client, sending no blank line, would otherwise wait for."""
    echo = EchoBackend()
    port = await echo_gateway(nursery, gateway, echo, header_timeout_s=10)
    started = trio.current_time()
    raw, _ = await raw_exchange(port, line, timeout=8)  # (read until the gateway closes; not until the 408)
    took = trio.current_time() - started
    # at once: milliseconds, a few seconds on a busy host; not at header_timeout_s
    assert took < 5, f"answered after {took:.1f}s, as if at header_timeout_s"
    status, headers, _ = parse_raw_response(raw)
    assert status == 400 and headers.get("connection") == "close"
    assert_date_is_now(headers.get("date"))
    assert echo.requests == []
