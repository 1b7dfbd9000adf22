"""The answers the gateway makes itself where nginx makes them in Kong 3.x (bundling nginx 1.27.1): a request head
refused while it is read, an https redirect, an error page that ends its connection.

nginx refuses a head at the first fault in the order it reads it: its request line (ngx_http_parse_request_line),
then each header line as it comes (a second Host, a line too large), then what it checks once the head ended
(ngx_http_process_request_header: no Host, CONNECT, TRACE). The lines it read by then are the headers Kong's error
handler sees (kong/error_handlers.lua:51-57): the page is in the format of their Accept, else their Content-Type,
else error_default_type. The codecs carry those lines on the ProtocolError (`headers`); the connection loop answers
in their format.
"""

from __future__ import annotations

import json

import pytest
import trio
from backends import EchoBackend, parse_raw_response, raw_exchange, request, service

from gateway.http.codec import HEAD_TOO_LARGE, ProtocolError, Request
from gateway.http.codecs import codec_classes
from gateway.http.kong_errors import nginx_page
from gateway.http.server import Exchange, ServerSettings
from gateway.http.timers import ConnTimer, Phase

TIMEOUT = 10
JSON = "application/json; charset=utf-8"
LARGE = b"X-Large: " + b"a" * 10240 + b"\r\n"  # past one 8k large_client_header_buffers buffer


@pytest.fixture(params=["h11", "llhttp"])
def codec(request: pytest.FixtureRequest) -> str:
    return request.param


def refusal(codec: str, pieces: list[bytes]) -> ProtocolError:
    """The error a server codec refuses a head fed in `pieces` with."""
    server = codec_classes(codec)[0]()
    try:
        for piece in pieces:
            server.receive_data(piece)
            server.next_event()
    except ProtocolError as e:
        return e
    raise AssertionError("the head was not refused")


# --- what the codecs say nginx had read -------------------------------------------------------------------------------


@pytest.mark.parametrize(("line", "lines", "status"), [
    (b"TRACE / HTTP/1.1", b"Host: gw\r\nAccept: application/json\r\n", 405),
    (b"CONNECT / HTTP/1.1", b"Host: gw\r\nAccept: application/json\r\n", 405),
    (b"GET / HTTP/1.1", b"Accept: application/json\r\nX-A: 1\r\n", 400),
], ids=["trace", "connect-path", "no-host"])
def test_a_head_refused_once_it_ended_carries_all_its_lines(codec: str, line: bytes, lines: bytes,
                                                            status: int) -> None:
    """nginx release-1.27.1 src/http/ngx_http_request.c ngx_http_process_request_header: the 400 for HTTP/1.1
    without Host (:1973-1977) and the 405s for CONNECT (:2033-2038) and TRACE (:2040-2045) come once every header
    line was read."""
    error = refusal(codec, [line + b"\r\n" + lines + b"\r\n"])
    sent = [tuple(field.lower().split(b": ")) for field in lines.split(b"\r\n")[:-1]]
    assert (error.status, error.headers) == (status, sent)


def test_a_second_host_carries_the_lines_up_to_it(codec: str) -> None:
    """ngx_http_request.c ngx_http_process_request_headers pushes each line to r->headers_in.headers, then calls its
    handler: ngx_http_process_host refuses a second Host (:1829-1838) before any line after it is read."""
    error = refusal(codec, [b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nHost: b\r\nAccept: application/json\r\n\r\n"])
    assert error.status == 400
    assert error.headers == [(b"host", b"a"), (b"x-a", b"1"), (b"host", b"b")]


@pytest.mark.parametrize("lines", [b"Host: example.com:443\r\nAccept: application/json\r\n", b"Accept: text/html\r\n",
                                   b"Host: a\r\nHost: b\r\n"], ids=["host", "no-host", "two-hosts"])
def test_connect_to_host_and_port_is_a_request_line_400_before_any_header(codec: str, lines: bytes) -> None:
    """nginx release-1.27.1 src/http/ngx_http_parse.c:283-334: an authority-form target is read as a schema, and
    the byte after its ':' not being '/' is NGX_HTTP_PARSE_INVALID_REQUEST, a 400 (ngx_http_request.c:1200-1212)
    before any header line is read, whatever those lines hold."""
    error = refusal(codec, [b"CONNECT example.com:443 HTTP/1.1\r\n" + lines + b"\r\n"])
    assert (error.status, error.headers) == (400, [])


HEAD = b"GET / HTTP/1.1\r\nHost: gw\r\nAccept: application/json\r\n"
BEFORE_LARGE = [(b"host", b"gw"), (b"accept", b"application/json")]


@pytest.mark.parametrize("pieces", [
    [HEAD + LARGE + b"Accept: text/html\r\n\r\n"],
    [HEAD + LARGE[:2000], LARGE[2000:]],
], ids=["ended", "not-ended"])
def test_a_header_line_too_large_carries_the_lines_before_it(codec: str, pieces: list[bytes]) -> None:
    """ngx_http_request.c ngx_http_process_request_headers: the lines before the one too long for
    large_client_header_buffers were pushed to r->headers_in.headers when it finalizes with
    NGX_HTTP_REQUEST_HEADER_TOO_LARGE (:1420-1434), whether the head ended in that read or not."""
    error = refusal(codec, pieces)
    assert (error.status, error.headers) == (HEAD_TOO_LARGE, BEFORE_LARGE)


def test_a_head_past_its_buffers_carries_the_lines_that_fit_them(codec: str) -> None:
    """ngx_http_alloc_large_header_buffer: each line of 7000 bytes takes one of the four 8k buffers; the fifth finds
    none (NGX_DECLINED, :1413-1434), after the lines before it were read."""
    big = [b"X-%d: %s\r\n" % (n, b"b" * 7000) for n in range(5)]
    error = refusal(codec, [HEAD + b"".join(big) + b"\r\n"])
    assert error.status == HEAD_TOO_LARGE
    assert error.headers == [*BEFORE_LARGE, *[(b"x-%d" % n, b"b" * 7000) for n in range(4)]]


# --- what the connection loop answers -------------------------------------------------------------------------------


async def test_a_refused_heads_page_is_in_the_format_of_the_lines_read(nursery, gateway):
    """kong/error_handlers.lua:51-57 (Accept, then Content-Type, then error_default_type) and :61-66 (494 as 400
    "Request header or cookie too large"), reached through kong/templates/nginx_kong.lua:103-104's error_page for
    400, 405 and 494: the handler reads the lines nginx had read when it refused the head."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}")]})
    answers = {}
    for name, head in [
        ("trace", b"TRACE / HTTP/1.1\r\nHost: gw\r\nAccept: application/json\r\n\r\n"),
        ("no-host", b"GET / HTTP/1.1\r\nContent-Type: application/json\r\n\r\n"),
        ("two-hosts", b"GET / HTTP/1.1\r\nHost: a\r\nAccept: application/json\r\nHost: b\r\n\r\n"),
        ("too-large", HEAD + LARGE + b"\r\n"),
        ("connect", b"CONNECT gw:443 HTTP/1.1\r\nHost: gw:443\r\nAccept: application/json\r\n\r\n"),
    ]:
        data, _ = await raw_exchange(port, head)
        answers[name] = parse_raw_response(data)
    for name, message in [("trace", "Method not allowed"), ("no-host", "Bad request"), ("two-hosts", "Bad request"),
                          ("too-large", "Request header or cookie too large")]:
        status, headers, body = answers[name]
        assert (status, headers["content-type"]) == (405 if name == "trace" else 400, JSON), name
        assert json.loads(body) == {"message": message, "request_id": headers["x-kong-request-id"]}, name
    status, headers, body = answers["connect"]  # its request line refused: no header read, error_default_type
    assert (status, headers["content-type"]) == (400, "text/plain; charset=utf-8")
    assert body.startswith(b"Bad request\nrequest_id: ")
    assert echo.requests == []


async def test_an_https_redirect_carries_nginxs_page_for_its_status(nursery, gateway):
    """kong/runloop/handler.lua:1306-1307: `return kong.response.exit(redirect_status_code)`, no body; nginx
    answers that ngx.exit with its own page (release-1.27.1 src/http/ngx_http_special_response.c:493-497, 3xx),
    text/html; ngx_http_charset_filter_module.c:497-507 adds no charset to a 301 or 302 only."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    routes = [{"paths": ["/a"], "protocols": ["https"], "https_redirect_status_code": 301},
              {"paths": ["/b"], "protocols": ["https"], "https_redirect_status_code": 308}]
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}", routes)]})
    with trio.fail_after(TIMEOUT):
        moved = await request(port, "GET", "/a?y=1", host="gw.test")
        permanent = await request(port, "GET", "/b", host="gw.test")
    assert (moved.status, moved.header("location")) == (301, "https://gw.test/a?y=1")
    assert (moved.header("content-type"), moved.body) == ("text/html", nginx_page(301))
    assert (permanent.status, permanent.header("location")) == (308, "https://gw.test/b")
    assert permanent.header("content-type").startswith("text/html")
    assert permanent.body == nginx_page(308)


# --- keep-alive after an error page ---------------------------------------------------------------------------------


class _Sink:
    """A client connection that keeps what is sent to it."""

    def __init__(self) -> None:
        self.peer = ("127.0.0.1", 1)
        self.sent = b""

    async def sendall(self, data: bytes) -> None:
        self.sent += data


async def _error_page(codec: str, status: int) -> tuple[bytes, bool]:
    """(the head of respond_error_page(status) to a whole GET, whether the connection may carry another)."""
    cls = codec_classes(codec)[0]
    server = cls()
    server.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    req = server.next_event()
    assert type(req) is Request
    conn = _Sink()
    ex = Exchange(req, conn, server, ConnTimer(0.0, Phase.HEAD), ServerSettings(cls))  # type: ignore[arg-type]
    assert await ex.receive_body() is None
    await ex.respond_error_page(status)
    return conn.sent.partition(b"\r\n\r\n")[0].lower(), server.keep_alive


@pytest.mark.parametrize("status", [400, 500])
async def test_an_error_page_nginx_drops_keep_alive_for_ends_the_connection(codec: str, status: int) -> None:
    """nginx release-1.27.1 src/http/ngx_http_special_response.c:428-440: ngx_http_special_response_handler sets
    r->keepalive = 0 for 400, 413, 414, 495-497, 500 and 501 (a body-less kong.response.exit(500) ends there)."""
    head, keep_alive = await _error_page(codec, status)
    assert b"\r\nconnection: close" in head
    assert not keep_alive

