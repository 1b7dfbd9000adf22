"""An upstream's response head as nginx 1.23+ (Kong's OpenResty 1.27) and Kong's header filter pass it to the client:
a repeated single-valued field sent once, a proxied 204's and 304's head as it came, and the X-Kong-* fields Kong
assigns replaced by the gateway's. The header walk is pinned sans-I/O (forward._client_headers); one exchange per
behaviour checks what reaches a client, through each codec."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import trio
from backends import ScriptedBackend, request, service

from gateway.http.codec import Response
from gateway.http.codecs import codec_classes
from gateway.http.kong_headers import KongHeaders
from gateway.pipeline.forward import _client_headers

TIMEOUT = 10
RFC_DATE, LATER_DATE = "Sun, 06 Nov 1994 08:49:37 GMT", "Mon, 07 Nov 1994 08:49:37 GMT"
DEFAULTS = "server_tokens, latency_tokens, X-Kong-Request-Id"  # kong.conf's `headers` default

# ngx_http_upstream_headers_in: the fields whose handler is ngx_http_upstream_process_header_line,
# _process_last_modified or _process_expires, each with two values an upstream might repeat
SINGLE_VALUED = [
    ("status", "302 Found", "200 OK"),
    ("content-type", "text/html", "text/plain"),
    ("date", RFC_DATE, LATER_DATE),
    ("etag", '"1"', '"2"'),
    ("server", "first-server", "second-server"),
    ("location", "/first", "/second"),
    ("refresh", "5; url=/first", "5; url=/second"),
    ("last-modified", RFC_DATE, LATER_DATE),
    ("expires", RFC_DATE, LATER_DATE),
]
# the same table's fields nginx links into a list (Cache-Control, WWW-Authenticate, Vary), copies line by line
# (Set-Cookie, Link, Content-Disposition, Content-Encoding), and any field it does not know
EVERY_LINE = ["set-cookie", "cache-control", "link", "vary", "www-authenticate", "content-disposition",
              "x-custom"]


def client_headers(lines: list[tuple[bytes, bytes]], headers: str | None = DEFAULTS) -> list[tuple[bytes, bytes]]:
    """What _client_headers relays of an upstream's `lines` for a gateway whose `headers` setting is `headers`
    (None: no KongHeaders at all), without the gateway's X-Request-Id."""
    kong = None if headers is None else KongHeaders.from_setting(headers)
    ex: Any = SimpleNamespace(settings=SimpleNamespace(kong_headers=kong), request=SimpleNamespace(headers=[]))
    unused: Any = None  # the target and connection: only an MCP session id needs them
    out, _, _ = _client_headers(lines, b"rid", None, unused, unused, ex)
    assert out[-1] == (b"x-request-id", b"rid")
    return out[:-1]


# --- repeated single-valued fields ---------------------------------------------------------------------------------


def upstream_headers(codec: str, lines: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The headers a client codec gives of an upstream's answer with header `lines`."""
    client = codec_classes(codec)[1]()
    client.request_head(b"GET", b"/", [(b"host", b"up")])
    client.end()
    client.receive_data(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n" + b"".join(b"%s: %s\r\n" % line for line in lines)
                        + b"\r\n")
    response = client.next_event()
    assert type(response) is Response
    assert response.headers[0] == (b"content-length", b"0")
    return response.headers[1:]


@pytest.mark.parametrize("codec", ["h11", "llhttp"])
@pytest.mark.parametrize(("name", "first", "second"), SINGLE_VALUED, ids=[n for n, _, _ in SINGLE_VALUED])
def test_a_repeated_single_valued_field_keeps_its_first_line_only(codec: str, name: str, first: str,
                                                                  second: str) -> None:
    """nginx 1.23+ (src/http/ngx_http_upstream.c ngx_http_upstream_process_header_line, _process_last_modified,
    _process_expires): a second line of the field is logged "upstream sent duplicate header line ... ignored" and
    given hash 0, which ngx_http_upstream_process_headers skips: the client gets the first, the others around it
    untouched. Two Locations make Chromium refuse the answer; two Content-Types or ETags are read differently. The
    client codecs drop it as they read the head, as nginx's upstream module does."""
    lines = [(name.encode(), first.encode()), (b"x-a", b"1"), (name.encode(), second.encode()), (b"x-b", b"2")]
    assert upstream_headers(codec, lines) == [(name.encode(), first.encode()), (b"x-a", b"1"), (b"x-b", b"2")]


@pytest.mark.parametrize("codec", ["h11", "llhttp"])
def test_several_repeated_fields_each_keep_their_first_line(codec: str) -> None:
    """Each field is counted apart: Server's second line goes, Date's first stays."""
    lines = [(b"server", b"a"), (b"date", RFC_DATE.encode()), (b"server", b"b"), (b"date", LATER_DATE.encode()),
             (b"server", b"c")]
    assert upstream_headers(codec, lines) == [(b"server", b"a"), (b"date", RFC_DATE.encode())]


@pytest.mark.parametrize("codec", ["h11", "llhttp"])
@pytest.mark.parametrize("name", EVERY_LINE)
def test_a_field_nginx_takes_more_than_once_keeps_every_line(codec: str, name: str) -> None:
    """ngx_http_upstream_process_cache_control, _process_vary, _process_multi_header_lines link repeated lines; Link,
    Set-Cookie and the fields nginx does not know are copied one by one: every line reaches the client."""
    lines = [(name.encode(), b"one"), (name.encode(), b"two")]
    assert upstream_headers(codec, lines) == lines
    assert client_headers(lines) == lines


async def test_a_repeated_single_valued_field_reaches_the_client_once(nursery, gateway):
    """The whole path: of an upstream's repeated Location, Content-Type, ETag, Last-Modified, Expires, Server and
    Date the client gets the first of each, as through Kong."""
    repeated = [(n, a, b) for n, a, b in SINGLE_VALUED if n != "status"]
    lines = b"".join(b"%s: %s\r\n%s: %s\r\n" % (n.encode(), a.encode(), n.encode(), b.encode())
                     for n, a, b in repeated)
    backend = ScriptedBackend([b"HTTP/1.1 302 Found\r\nContent-Length: 2\r\n" + lines + b"\r\nok"])
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}")]})
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/x")
    assert reply.status == 302 and reply.body == b"ok"
    got = {name: [v for k, v in reply.headers if k == name] for name, _, _ in repeated}
    assert got == {name: [first] for name, first, _ in repeated}


# --- a proxied 204 and 304 ------------------------------------------------------------------------------------------


async def test_a_proxied_204_keeps_its_content_type_last_modified_and_content_length(nursery, gateway):
    """src/http/ngx_http_header_filter_module.c drops Content-Type, Last-Modified and Content-Length from a 204 only
    when `r->headers_out.status_line` is empty; a proxied answer has the upstream's (ngx_http_proxy_process_status_line,
    ngx_http_upstream_process_headers), so they go out as they came (Content-Length from content_length_n; the
    Content-Type with Kong's charset), and no body: ngx_http_proxy_input_filter_init reads none after a 204 (nginx
    1.22 answers so, Kong's directives)."""
    answer = (b"HTTP/1.1 204 No Content\r\nContent-Type: text/plain\r\nContent-Length: 0\r\nLast-Modified: "
              + RFC_DATE.encode() + b"\r\n\r\n")
    backend = ScriptedBackend([answer])
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}")]})
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/x")
    assert reply.status == 204 and reply.body == b""
    assert [reply.header(h) for h in ("content-type", "last-modified", "content-length")] == \
        ["text/plain; charset=UTF-8", RFC_DATE, "0"]
    assert reply.header("transfer-encoding") is None


async def test_a_proxied_304_keeps_its_content_length_and_content_type(nursery, gateway):
    """A 304 takes the same path: the upstream's Content-Length (the length a 200 would have, RFC 9110 8.6) and
    Content-Type (with Kong's charset) go out, no body (nginx's chunked filter frames none for a 304)."""
    answer = b"HTTP/1.1 304 Not Modified\r\nContent-Type: text/plain\r\nContent-Length: 1234\r\nETag: \"x\"\r\n\r\n"
    backend = ScriptedBackend([answer])
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}")]})
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/x")
    assert reply.status == 304 and reply.body == b""
    assert [reply.header(h) for h in ("content-type", "content-length", "etag")] == \
        ["text/plain; charset=UTF-8", "1234", '"x"']


# --- X-Kong-* of an upstream ----------------------------------------------------------------------------------------

UPSTREAM_KONG = [(b"x-kong-upstream-latency", b"7777"), (b"x-kong-proxy-latency", b"8888"),
                 (b"x-kong-upstream-status", b"201"), (b"x-kong-request-id", b"from-the-upstream"),
                 (b"x-kong-response-latency", b"9999")]


@pytest.mark.parametrize(("headers", "relayed"), [
    (DEFAULTS, [b"x-kong-upstream-status", b"x-kong-response-latency"]),
    ("X-Kong-Upstream-Status, X-Kong-Proxy-Latency", [b"x-kong-upstream-latency", b"x-kong-request-id",
                                                      b"x-kong-response-latency"]),
    ("off", [name for name, _ in UPSTREAM_KONG]),
    (None, [name for name, _ in UPSTREAM_KONG]),
], ids=["defaults", "some", "off", "no-kong-headers"])
def test_an_upstreams_x_kong_fields_go_where_the_gateway_sets_its_own(headers: str | None,
                                                                      relayed: list[bytes]) -> None:
    """kong/runloop/handler.lua header_filter assigns X-Kong-Upstream-Latency, -Proxy-Latency, -Upstream-Status and
    -Request-Id on a proxied answer when `headers` has them on, which replaces the upstream's lines of that name
    (lua-nginx-module ngx_http_set_header_helper); one it leaves off is not assigned, so the upstream's passes, as
    does X-Kong-Response-Latency, which Kong sets only on its own answers."""
    assert [name for name, _ in client_headers(UPSTREAM_KONG, headers)] == relayed


async def test_the_gateways_kong_headers_replace_the_upstreams(nursery, gateway):
    """A service that is itself behind a Kong: the client sees one X-Kong-Request-Id and one of each latency, the
    gateway's (the first value is what most clients read: it was the inner Kong's)."""
    answer = (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Kong-Upstream-Latency: 7777\r\n"
              b"X-Kong-Proxy-Latency: 8888\r\nX-Kong-Request-Id: from-the-upstream\r\n\r\nok")
    backend = ScriptedBackend([answer])
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}")]})
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/x")
    assert reply.status == 200 and reply.body == b"ok"
    got = {name: [v for k, v in reply.headers if k == name]
           for name in ("x-kong-upstream-latency", "x-kong-proxy-latency", "x-kong-request-id")}
    assert all(len(values) == 1 for values in got.values()), got
    assert got["x-kong-upstream-latency"] != ["7777"] and got["x-kong-proxy-latency"] != ["8888"]
    assert got["x-kong-request-id"] != ["from-the-upstream"]


async def test_with_headers_off_the_upstreams_kong_headers_pass(nursery, gateway):
    """`headers: off`: Kong assigns none of them, so the upstream's go out as they came."""
    answer = (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Kong-Upstream-Latency: 7777\r\n"
              b"X-Kong-Request-Id: from-the-upstream\r\n\r\nok")
    backend = ScriptedBackend([answer])
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}")]}, headers="off")
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/x")
    assert [v for k, v in reply.headers if k == "x-kong-upstream-latency"] == ["7777"]
    assert [v for k, v in reply.headers if k == "x-kong-request-id"] == ["from-the-upstream"]
