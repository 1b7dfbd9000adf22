"""How both server codecs read a request head where nginx (Kong's settings) reads it differently from the RFCs.

Kong's nginx runs with `ignore_invalid_headers on` (nginx's default), `underscores_in_headers on`,
`client_header_buffer_size 1k` and `large_client_header_buffers 4 8k`. What these tests pin, each checked against a
real nginx 1.22 so configured, and read from src/http/ngx_http_parse.c and ngx_http_request.c:

- head sizes: a head is read into a 1k buffer, and a line that does not end in the buffer it began in is moved whole
  into the next of 4 buffers of 8k (ngx_http_alloc_large_header_buffer): the limits are on each line as sent (its CRLF
  and padding included), a line never straddles two buffers, a request line that needs more than 8192 bytes with its
  CRLF is 414 and a header line 494 (400 "Request header or cookie too large" through Kong's error handler);
- versions: a major version above 1 is 505 (nginx's own page: 505 is not one of Kong's error_page statuses), as soon
  as its digit is read; a later 1.x minor version is served as HTTP/1.1;
- request lines (nginx 1.27.1, the one Kong 3.x bundles): any method of A-Z, `_` and `-` (llhttp knows a fixed
  table), runs of spaces before the target and the version and spaces after the version, and an absolute-form
  target's host of letters, digits, `.` and `-` (or an IP literal), with a Host header that must be valid all the
  same;
- header names: one holding a byte nginx calls invalid (anything but letters, digits, `-` and `_`) is dropped, never a
  400 and never sent upstream; a byte <= 0x20 or 0x7f in a name, or a name that is empty, stays a 400;
- field values: a control byte but NUL, CR and LF is part of one (ngx_http_parse_header_line's sw_value) and goes
  upstream as it came; NUL or a CR without LF stays a 400.
"""

from __future__ import annotations

import json

import pytest
import trio
from backends import EchoBackend, parse_raw_response, raw_exchange, service

from gateway.http.codec import (
    HEAD_TOO_LARGE,
    NEED_DATA,
    HeadBuffers,
    ProtocolError,
    Request,
    check_head_buffers,
    check_head_lines,
    head_line_lengths,
    nginx_version,
)
from gateway.http.codecs import codec_classes
from gateway.http.kong_errors import nginx_page

TIMEOUT = 10


@pytest.fixture(params=["h11", "llhttp"])
def codec(request: pytest.FixtureRequest) -> str:
    return request.param


def first_event(codec: str, chunks: list[bytes], **limits: int) -> object:
    """The first event a server codec (Kong's limits by default) gives for `chunks`, or ("error", status)."""
    server = codec_classes(codec)[0](**limits)
    try:
        for chunk in chunks:
            server.receive_data(chunk)
            ev = server.next_event()
            if ev is not NEED_DATA:
                return ev
    except ProtocolError as e:
        return ("error", e.status)
    return NEED_DATA


def cuts(raw: bytes, *at: int) -> list[list[bytes]]:
    """`raw` whole, and cut at each of `at`."""
    return [[raw], *[[raw[:n], raw[n:]] for n in at]]


# --- head sizes: nginx's buffers ------------------------------------------------------------------------------------


def request_line(wire_length: int) -> bytes:
    """A request line of `wire_length` bytes, its CRLF included, and a small head after it."""
    line = b"GET /" + b"a" * (wire_length - len(b"GET / HTTP/1.1\r\n")) + b" HTTP/1.1\r\n"
    assert len(line) == wire_length
    return line + b"Host: a\r\n\r\n"


def fields(count: int, line: int) -> bytes:
    """A head with `count` fields whose lines are `line` bytes each, CRLF included."""
    return b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(
        b"X-%04d: " % i + b"v" * (line - 10) + b"\r\n" for i in range(count)) + b"\r\n"


def test_a_request_line_of_8192_bytes_with_its_crlf_fits_a_large_buffer(codec):
    for chunks in cuts(request_line(8192), 1000):
        assert isinstance(first_event(codec, chunks), Request)


@pytest.mark.parametrize("wire_length", [8193, 8194])
def test_a_request_line_that_needs_more_than_8192_bytes_with_its_crlf_is_414(codec, wire_length):
    for chunks in cuts(request_line(wire_length), 1000):
        assert first_event(codec, chunks) == ("error", 414)


def test_five_fields_of_5000_bytes_need_five_large_buffers_494(codec):
    raw = fields(5, 5000)
    assert len(raw) < 26000  # far under 4 x 8k: but each 8k buffer holds one such line only
    for chunks in cuts(raw, 3000):
        assert first_event(codec, chunks) == ("error", HEAD_TOO_LARGE)


def test_a_33k_head_of_small_fields_fits_the_first_buffer_and_four_large_ones(codec):
    raw = fields(330, 100)
    assert len(raw) > 32768
    for chunks in cuts(raw, 3000):
        assert isinstance(first_event(codec, chunks), Request)


def test_a_field_line_is_measured_as_sent_padding_included(codec):
    exact = b"X-A:" + b"v" * (8192 - len(b"X-A:\r\n")) + b"\r\n"  # no space after the colon: 8192 bytes
    padded = b"X-A: " + b"v" * (8193 - len(b"X-A: \r\n") - 3) + b"   \r\n"  # 8190 once its padding is stripped
    assert len(exact) == 8192 and len(padded) == 8193
    assert isinstance(first_event(codec, [b"GET / HTTP/1.1\r\nHost: a\r\n" + exact + b"\r\n"]), Request)
    assert first_event(codec, [b"GET / HTTP/1.1\r\nHost: a\r\n" + padded + b"\r\n"]) == ("error", HEAD_TOO_LARGE)


def test_a_field_line_that_never_ends_is_494_once_it_fills_a_large_buffer(codec):
    """nginx refuses a line the moment it fills an 8k buffer, not when the head reaches 4 x 8k."""
    server = codec_classes(codec)[0]()
    server.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\nCookie: ")
    assert server.next_event() is NEED_DATA
    sent = 33
    with pytest.raises(ProtocolError) as caught:
        while sent < 40000:
            server.receive_data(b"c" * 500)
            sent += 500
            assert server.next_event() is NEED_DATA
    assert caught.value.status == HEAD_TOO_LARGE
    assert sent < 8192 + 1024


def test_the_buffer_rule_itself():
    """check_head_lines: a line that does not end in its buffer is moved whole, so the room after it is lost."""
    check_head_lines([1000, 24, 8192, 2], 8192, 2)  # the first buffer filled exactly, then one line per 8k buffer
    with pytest.raises(ProtocolError) as caught:
        check_head_lines([1000, 25, 8192, 2], 8192, 2)  # the 25 no longer fits: three large buffers needed
    assert caught.value.status == HEAD_TOO_LARGE
    with pytest.raises(ProtocolError) as caught:
        check_head_lines([8193, 2], 8192, 4)
    assert caught.value.status == 414
    assert head_line_lengths(b"GET / HTTP/1.1\r\nA: b\r\n\r\n") == [16, 6, 2]
    check_head_buffers([1000, 26], b"1.1", 512, 1)  # buffers smaller than the first: a line that fits it is taken
    with pytest.raises(ProtocolError) as caught:
        check_head_buffers([1025, 2], b"1.1", 512, 4)
    assert caught.value.status == 414


def test_a_head_not_ended_is_refused_when_its_buffers_are_full():
    check = HeadBuffers(None, 100, 1)
    check.feed(b"A" * 1000 + b"\n")  # the request line, in the first buffer
    check.feed(b"B" * 22 + b"\n")  # the first buffer is full to its last byte (1024)
    check.feed(b"C" * 99)  # in the one large buffer: one byte short of filling it
    with pytest.raises(ProtocolError) as caught:
        check.feed(b"C")
    assert caught.value.status == HEAD_TOO_LARGE


# --- versions -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [b"1.2", b"1.9", b"1.10", b"1.99", b"1.999", b"1.01"])
def test_a_later_http1_minor_version_is_served_as_http11(codec, version):
    raw = b"GET / HTTP/" + version + b"\r\nHost: a\r\n\r\n"
    for chunks in [*cuts(raw, 12, len(raw) - 18), [raw[i:i + 1] for i in range(len(raw))]]:
        ev = first_event(codec, chunks)
        assert isinstance(ev, Request) and ev.http_version == b"1.1" and ev.keep_alive, (chunks, ev)


@pytest.mark.parametrize("version", [b"2.0", b"3.0", b"2", b"10.0", b"1.1a"])
def test_a_major_version_above_1_is_505_and_a_broken_one_400(codec, version):
    raw = b"GET / HTTP/" + version + b"\r\nHost: a\r\n\r\n"
    status = 400 if version == b"1.1a" else 505
    for chunks in [*cuts(raw, 12), [raw[i:i + 1] for i in range(len(raw))]]:
        assert first_event(codec, chunks) == ("error", status), chunks


def test_a_major_version_above_1_is_505_before_the_head_ends(codec):
    """nginx answers at the version's digit: a head that never ends (or a header it would refuse) changes nothing."""
    assert first_event(codec, [b"GET / HTTP/2.0\r\nHost: a\r\n"]) == ("error", 505)
    assert first_event(codec, [b"GET / HTTP/2.0\r\nX@\x01: a\r\n\r\n"]) == ("error", 505)


async def test_a_fragment_ends_the_query_upstream_and_for_the_plugins_that_read_it(nursery, gateway):
    """What reads the query reads nginx's $args, which a `#` ends (ngx_http_parse_complex_uri's `args:` loop,
    nginx release-1.27.1 src/http/ngx_http_parse.c:1595-1604): the upstream target (kong/runloop/handler.lua:
    1420-1421 appends `?` and var.args), key-auth's key_in_query (kong.request.get_query(),
    kong/plugins/key-auth/handler.lua:116), request-termination's echo (get_query, handler.lua:28) and redirect's
    keep_incoming_path (get_raw_query, handler.lua:22)."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    routes = [{"paths": ["/"]}, {"paths": ["/key"], "plugins": [{"name": "key-auth"}]},
              {"paths": ["/echo"], "plugins": [{"name": "request-termination",
                                                "config": {"status_code": 200, "echo": True}}]},
              {"paths": ["/go"], "plugins": [{"name": "redirect", "config": {
                  "location": "http://example.test/", "keep_incoming_path": True}}]}]
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{echo.port}", routes)],
                          "consumers": [{"username": "bob", "keyauth_credentials": [{"key": "kong"}]}]})

    async def get(target: bytes) -> tuple[int, dict[str, str], bytes]:
        raw, _ = await raw_exchange(port, b"GET " + target + b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
                                    timeout=TIMEOUT)
        return parse_raw_response(raw)

    for sent, target in FRAGMENT_TARGETS:
        status, _, body = await get(sent)
        assert status == 200, (sent, body)
        assert echo.requests[-1].target == target.decode(), sent
    status, _, body = await get(b"/key?apikey=kong#top")
    assert status == 200, body
    assert echo.requests[-1].header("x-consumer-username") == "bob"
    status, _, body = await get(b"/echo?x=1#frag")
    assert status == 200 and json.loads(body)["request"]["query"] == {"x": "1"}, body
    status, headers, _ = await get(b"/go?x=1#frag")
    assert status == 301 and headers["location"] == "http://example.test/go?x=1", headers


@pytest.mark.parametrize("line", [b"GET * HTTP/2.0", b"FOO * HTTP/2.0", b"PUT h.test/x HTTP/11", b"GET @/x HTTP/3.0",
                                  b"GET http://a_b/x HTTP/2.0"])
def test_a_target_nginx_refuses_is_400_before_its_version_is_505(codec, line):
    """ngx_http_parse_request_line reads the line in order: a target it refuses (sw_spaces_before_uri takes `/` or a
    schema's letter; sw_schema wants `://`; sw_host its characters) is NGX_HTTP_PARSE_INVALID_REQUEST before the
    version is read."""
    raw = line + b"\r\nHost: a\r\n\r\n"
    for chunks in [*cuts(raw, 6, len(line) - 2), [raw[i:i + 1] for i in range(len(raw))]]:
        assert first_event(codec, chunks) == ("error", 400), chunks


@pytest.mark.parametrize("line", [b"FOO  / HTTP/11 ", b"GET /x  HTTP/2.0   ", b"GET / HTTP/2.0 garbage"])
def test_a_major_version_above_1_is_505_whatever_follows_it(codec, line):
    """sw_first_major_digit / sw_major_digit answer 505 at the digit: runs of spaces before it change nothing, and
    nothing after it is read."""
    raw = line + b"\r\nHost: a\r\n\r\n"
    for chunks in [*cuts(raw, 12, len(line)), [raw[i:i + 1] for i in range(len(raw))]]:
        assert first_event(codec, chunks) == ("error", 505), chunks


@pytest.mark.parametrize("line", [b"GET / HTTP/1 .1", b"GET / HTTP/1. 1", b"GET / HTTP/1.1 1", b"GET / HTTP/ 1.1"])
def test_a_space_inside_the_version_is_400_however_it_is_cut(codec, line):
    """Only sw_minor_digit goes on to sw_spaces_after_digit at a space: one after `HTTP/`, the major digit or the dot
    is NGX_HTTP_PARSE_INVALID_REQUEST, as is anything but spaces and the line end after the minor digits."""
    raw = line + b"\r\nHost: a\r\n\r\n"
    for chunks in [*cuts(raw, 12, len(line) - 1), [raw[i:i + 1] for i in range(len(raw))]]:
        assert first_event(codec, chunks) == ("error", 400), chunks


def test_a_minor_version_of_four_digits_is_400_however_it_is_cut(codec):
    raw = b"GET / HTTP/1.1000\r\nHost: a\r\n\r\n"
    assert first_event(codec, [raw]) == ("error", 400)
    assert first_event(codec, [raw[i:i + 1] for i in range(len(raw))]) == ("error", 400)


def test_nginx_version():
    assert [nginx_version(v) for v in (b"1.0", b"1.00", b"1.1", b"1.2", b"1.001", b"1.999")] == \
        [b"1.0", b"1.0", b"1.1", b"1.1", b"1.1", b"1.1"]
    for version, status in [(b"2.0", 505), (b"11", 505), (b"0.9", 400), (b"1.1000", 400), (b"1", 400), (b"", 400)]:
        with pytest.raises(ProtocolError) as caught:
            nginx_version(version)
        assert caught.value.status == status, version


# --- request lines: src/http/ngx_http_parse.c and ngx_http_request.c at release-1.27.1 -----------------------------


@pytest.mark.parametrize("method", [b"FOO", b"BAN", b"X_Y", b"M-SEARCH-X", b"PRI"])
def test_a_method_llhttp_does_not_know_is_read_however_the_head_is_cut(codec, method):
    """ngx_http_parse_request_line's sw_start and sw_method take any run of A-Z, `_` and `-` as a method (one
    outside its switch is NGX_HTTP_UNKNOWN, and served): the Request carries it as sent, whatever the reads."""
    raw = method + b" /x HTTP/1.1\r\nHost: a\r\n\r\n"
    for chunks in [*cuts(raw, 1, 2, len(method), len(method) + 3, 20), [raw[i:i + 1] for i in range(len(raw))]]:
        ev = first_event(codec, chunks)
        assert isinstance(ev, Request) and (ev.method, ev.target) == (method, b"/x"), (chunks, ev)


def test_a_refused_head_with_an_unknown_method_names_that_method(codec):
    """What the 400 and its log line show (and whether the answer has a body) is the method as sent."""
    raw = b"FOO /x HTTP/1.1\r\nHost: a b\r\n\r\n"
    for chunks in [*cuts(raw, 2, 8, 20), [raw[i:i + 1] for i in range(len(raw))]]:
        server = codec_classes(codec)[0]()
        with pytest.raises(ProtocolError) as caught:
            for chunk in chunks:
                server.receive_data(chunk)
                server.next_event()
        assert (caught.value.status, caught.value.method) == (400, b"FOO"), chunks


@pytest.mark.parametrize("fields", [b"Content-Length: 3\r\nContent-Length: 4\r\n",
                                    b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n"],
                         ids=["two-lengths", "length-and-chunked"])
def test_a_head_refused_for_its_framing_names_the_unknown_method_it_was_sent_with(codec, fields):
    """nginx refuses these heads with 400 after reading the method as sent (ngx_http_request.c:1856, "client sent
    duplicate header line", and :2070, "Content-Length" and "Transfer-Encoding"); llhttp refuses them itself, in the
    head read again with GET in place of FOO, and the 400 and its log line still show FOO."""
    raw = b"FOO /x HTTP/1.1\r\nHost: a\r\n" + fields + b"\r\nabcd"
    for chunks in cuts(raw, 2, 8, 30):
        server = codec_classes(codec)[0]()
        with pytest.raises(ProtocolError) as caught:
            for chunk in chunks:
                server.receive_data(chunk)
                server.next_event()
        assert (caught.value.status, caught.value.method) == (400, b"FOO"), chunks


def test_a_method_that_never_ends_is_414_once_it_fills_a_large_buffer(codec):
    """The method is the request line's start: nginx's 414 ("client sent too long URI") once the line needs more
    than a large header buffer (see check_head_lines), however slowly it comes."""
    chunks = [b"FOO", *[b"O" * 1000] * 9]
    assert first_event(codec, chunks) == ("error", 414)


def test_a_version_above_1_is_505_with_spaces_after_it(codec):
    """sw_first_major_digit answers 505 at the digit, before sw_spaces_after_digit reads on."""
    raw = b"GET /x HTTP/2.0  \r\nHost: a\r\n\r\n"
    for chunks in [*cuts(raw, 12, 16), [raw[i:i + 1] for i in range(len(raw))]]:
        assert first_event(codec, chunks) == ("error", 505), chunks


@pytest.mark.parametrize("line", [b"GET  /x", b"GET /x ", b"X_Y /x", b"FOO  /x  "])
def test_a_request_line_without_a_version_is_400_at_its_end_whatever_its_spaces(codec, line):
    """sw_spaces_before_uri and sw_http_09 skip spaces around the target; a line end after it is HTTP/0.9 (for a
    method but GET, NGX_HTTP_PARSE_INVALID_09_METHOD), which the gateway answers 400 there and then (see
    version_missing), not at the header timeout."""
    assert first_event(codec, [line + b"\r\n"]) == ("error", 400)


@pytest.mark.parametrize("authority", [b"a_b.test", b"a%41.test", b"a!b.test", b"a~b.test", b"user@a.test",
                                       b"a,b", b"", b"a..b", b".", b":80"])
def test_an_absolute_targets_host_of_other_characters_is_400(codec, authority):
    """sw_host takes letters, digits, `.` and `-`, and sw_host_end anything but `:`, `/`, `?` and a space after them
    as NGX_HTTP_PARSE_INVALID_REQUEST; ngx_http_validate_host refuses two dots in a row and an empty name ("client
    sent invalid host in request line"): 400 both."""
    raw = b"GET http://" + authority + b"/x HTTP/1.1\r\nHost: c\r\n\r\n"
    assert first_event(codec, [raw]) == ("error", 400)


@pytest.mark.parametrize("authority", [b"A-1.test", b"a.test.:8000", b"127.0.0.1", b"[::1]:80", b"a.test:99999"])
def test_an_absolute_targets_host_of_nginxs_characters_replaces_the_host_header(codec, authority):
    """sw_host, sw_host_ip_literal and sw_port (any digits in 1.27.1: its port range check came in 1.29.5): the
    request line's host wins over the Host header (ngx_http_process_host: `if (r->headers_in.server.len)`)."""
    ev = first_event(codec, [b"GET http://" + authority + b"/x HTTP/1.1\r\nHost: c\r\n\r\n"])
    assert isinstance(ev, Request) and (ev.target, ev.host, ev.headers) == (b"/x", authority, [(b"host", authority)])


@pytest.mark.parametrize(("target", "origin", "request_uri"), [
    (b"http://a.test/api#frag", b"/api#frag", b"/api#frag"), (b"http://a.test?q=1#frag", b"/?q=1", b"/?q=1#frag")])
def test_an_absolute_target_with_a_fragment_is_read_as_its_origin_form(codec, target, origin, request_uri):
    """nginx release-1.27.1 src/http/ngx_http_parse.c:382-391: once an absolute-form target's host ends, sw_host_end
    goes on in the origin form's states (sw_after_slash_in_uri, sw_uri), which take a `#` (:521-524); the request is
    then the origin form's, its $args ended by the `#` (ngx_http_parse_complex_uri's `args:` loop, :1595-1604) and
    its $request_uri the origin form as sent (r->unparsed_uri runs to uri_end)."""
    ev = first_event(codec, [b"GET " + target + b" HTTP/1.1\r\nHost: c\r\n\r\n"])
    assert isinstance(ev, Request) and (ev.target, ev.host) == (origin, b"a.test")
    assert (ev.request_uri, ev.absolute) == (request_uri, target)


# (the target as sent, the target as nginx and Kong read it: Kong's path, $request_uri up to its first `?`, then `?`
# and nginx's $args when Kong sends them upstream)
FRAGMENT_TARGETS = [
    (b"/a?x=1#frag", b"/a?x=1"),  # $args end at the `#`
    (b"/a#f?x=1", b"/a#f"),  # a `#` before any `?`: no $args at all
    (b"/a?#f", b"/a"),  # empty $args: Kong sends no `?` ...
    (b"/a?#f?", b"/a?"),  # ... but for a $request_uri ending in `?`
    (b"/a#?", b"/a#?"),
    (b"/a#f", b"/a#f"),  # no `?`: Kong's path keeps the fragment
]


@pytest.mark.parametrize(("sent", "target"), FRAGMENT_TARGETS)
def test_a_fragment_ends_the_query_as_it_ends_nginxs_args(codec, sent, target):
    """nginx release-1.27.1 src/http/ngx_http_parse.c: a `#` sets complex_uri (:586-588, :620-624); in
    ngx_http_parse_complex_uri a `?` goes to `args:` (:1336-1338), whose loop ends $args at the first `#`
    (:1595-1604); a `#` before any `?` is `goto done` (:1339-1340) with args_start reset (:1266): no $args. Kong
    routes on $request_uri up to its first `?` (kong/router/utils.lua:57-63) and sends `?` and $args when $args are
    not empty or $request_uri ends in `?` (kong/runloop/handler.lua:1420-1421). $request_uri keeps the fragment."""
    ev = first_event(codec, [b"GET " + sent + b" HTTP/1.1\r\nHost: c\r\n\r\n"])
    assert isinstance(ev, Request) and (ev.target, ev.request_uri) == (target, sent)


def test_a_fragment_right_after_an_absolute_targets_host_is_400(codec):
    """nginx release-1.27.1 src/http/ngx_http_parse.c:374-403: sw_host_end takes `:`, `/`, `?` or a space after the
    host; a `#` there is NGX_HTTP_PARSE_INVALID_REQUEST."""
    assert first_event(codec, [b"GET http://a.test#frag HTTP/1.1\r\nHost: c\r\n\r\n"]) == ("error", 400)


@pytest.mark.parametrize("host", [b"bad..host", b"a b", b"", b".", b"a/b"])
def test_an_invalid_host_header_is_400_with_an_absolute_target_too(codec, host):
    """ngx_http_process_host validates the Host header ("client sent invalid host header", 400: two dots in a row,
    a space, a `/`, an empty name) before it lets the request line's host win."""
    raw = b"GET http://a.test/x HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"
    assert first_event(codec, [raw]) == ("error", 400)


@pytest.mark.parametrize("first", [b"\x81", b"a", b"1", b" ", b"\x16"])
def test_a_first_byte_no_method_begins_with_is_400_at_once(codec, first):
    """nginx 1.27.1 src/http/ngx_http_parse.c:150-151, ngx_http_parse_request_line's sw_start: a byte other than
    A-Z, "_", "-" (or the CR/LF of an empty line) is NGX_HTTP_PARSE_INVALID_METHOD at once, without waiting for a
    line end (a WebSocket frame sent before a refused handshake's answer: h11 waited header_timeout_s)."""
    assert first_event(codec, [b"\r\n" + first + b"xyz"]) == ("error", 400)


# --- paths nginx refuses: ngx_http_process_request_uri -------------------------------------------------------------


@pytest.mark.parametrize("target", [b"/../x", b"/a/../../x", b"/%2e%2e/x", b"/a%zz", b"/a%", b"/f.php%00.jpg",
                                    b"http://a.test/a/../../x", b"http://a.test/%zz?q"])
def test_a_path_nginx_refuses_is_400_before_any_header_line(codec, target):
    """nginx 1.27.1 src/http/ngx_http_request.c:1129 calls ngx_http_process_request_uri once the request line is
    parsed, before any header line is read, and :1270-1276 answers what ngx_http_parse_complex_uri refuses (a ".."
    above the root, a "%" without two hex digits, %00) 400 "client sent invalid request": a refusal carrying no
    header line (a second Host after it is not what is refused, and Accept does not choose the page's format)."""
    server = codec_classes(codec)[0]()
    server.receive_data(b"GET " + target + b" HTTP/1.1\r\nHost: a\r\nHost: b\r\nAccept: application/json\r\n\r\n")
    with pytest.raises(ProtocolError) as refused:
        server.next_event()
    assert (refused.value.status, refused.value.headers, refused.value.target) == (400, [], target)


@pytest.mark.parametrize("target", [b"/a/../x", b"/%2e/x", b"/x?q=%zz&p=/../..", b"/a%2541", b"/a..b/..%2F"])
def test_a_path_nginx_parses_is_read_as_sent(codec, target):
    """ngx_http_parse_complex_uri takes a ".." with a segment to remove and whole escapes, and parses no query: the
    request is read, its target as the client sent it (the router normalizes it)."""
    ev = first_event(codec, [b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n"])
    assert isinstance(ev, Request) and ev.target == target


def test_a_version_nginx_refuses_is_answered_before_the_path(codec):
    """ngx_http_parse_request_line refuses a major version above 1 (505) before ngx_http_process_request_uri reads
    the path (ngx_http_request.c:1111-1129)."""
    assert first_event(codec, [b"GET /%zz HTTP/2.0\r\nHost: a\r\n\r\n"]) == ("error", 505)


# --- header names nginx calls invalid -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [b"X@Q", b"X/Q", b"X{Q}", b"X(Q)", b"X\xc3\xa9Q", b"Q;X", b"X.Q", b"X!Q", b"X~Q",
                                  b"\xff", b"X\"Q"])
def test_a_header_name_nginx_calls_invalid_is_dropped(codec, name):
    raw = b"GET / HTTP/1.1\r\nHost: a\r\n" + name + b": v\r\nX_Kept: k\r\n\r\n"
    for chunks in [*cuts(raw, 30), [raw[i:i + 1] for i in range(len(raw))]]:
        ev = first_event(codec, chunks)
        assert isinstance(ev, Request), (chunks, ev)
        assert ev.headers == [(b"host", b"a"), (b"x_kept", b"k")]  # underscores_in_headers on: `_` is valid


@pytest.mark.parametrize("line", [b"X@Q : v", b"X@\x01Q: v", b"X@\x7fQ: v", b": v", b"X@Q\tR: v"])
def test_a_header_name_nginx_refuses_stays_400(codec, line):
    assert first_event(codec, [b"GET / HTTP/1.1\r\nHost: a\r\n" + line + b"\r\n\r\n"]) == ("error", 400)


@pytest.mark.parametrize("value", [b"a\x01b", b"\x1b[0m", b"\x7f", b"\x0bv\x0c", b"a\x01b \t"])
def test_a_control_byte_in_a_field_value_is_taken_as_nginx_takes_it(codec, value):
    """src/http/ngx_http_parse.c (1.27.1) sw_value (`case CR: ... case LF: ... case '\\0': return
    NGX_HTTP_PARSE_INVALID_HEADER;`): a value ends at CR or LF and is refused for NUL only, any other control byte
    is part of it. llhttp and h11 refuse some: the head is read again with stand-ins and the value put back, however
    the head is cut into reads."""
    raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-A: " + value + b"\r\nX-B: b\r\n\r\n"
    for chunks in [*cuts(raw, *range(1, len(raw))), [raw[i:i + 1] for i in range(len(raw))]]:
        ev = first_event(codec, chunks)
        assert isinstance(ev, Request), (chunks, ev)
        assert ev.headers == [(b"host", b"a"), (b"x-a", value.strip(b" \t")), (b"x-b", b"b")], (chunks, ev)


@pytest.mark.parametrize("head", [b"Host: a\r\nX-A: a\x00b", b"Host: a\r\nX-A: a\rb", b"Host: a\x01b",
                                  b"Host: a\r\nContent-Length: 0\x01"])
def test_a_field_value_nginx_refuses_stays_400(codec, head):
    """sw_value refuses NUL, sw_almost_done a CR without LF; a Host with a control byte fails ngx_http_validate_host
    (`if (ch <= 0x20 || ch == 0x7f) return NGX_DECLINED;`), a Content-Length with one ngx_atoof (ngx_http_request.c):
    400 each. A framing field's value is never given a stand-in."""
    assert first_event(codec, [b"GET / HTTP/1.1\r\n" + head + b"\r\n\r\n"]) == ("error", 400)


def test_a_dropped_header_is_no_second_host_or_length(codec):
    raw = b"POST / HTTP/1.1\r\nHost: a\r\nHost.: b\r\nContent-Length: 2\r\nContent-Length@: 9\r\n\r\nok"
    ev = first_event(codec, [raw])
    assert isinstance(ev, Request) and ev.headers == [(b"host", b"a"), (b"content-length", b"2")]


# --- through the gateway --------------------------------------------------------------------------------------------


async def _gateway_and_echo(nursery: trio.Nursery, gateway) -> tuple[int, EchoBackend]:  # noqa: ANN001
    echo = EchoBackend()
    await nursery.start(echo.serve)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{echo.port}")]})
    return port, echo


async def test_an_invalid_header_name_never_reaches_the_upstream(nursery, gateway):
    port, echo = await _gateway_and_echo(nursery, gateway)
    raw, _ = await raw_exchange(port, b"GET /x HTTP/1.1\r\nHost: a\r\nX@Q: v\r\nX.Q: v\r\nX_Kept: k\r\n"
                                      b"Connection: close\r\n\r\n", timeout=TIMEOUT)
    status, _, body = parse_raw_response(raw)
    assert status == 200, (status, body)
    names = [k for k, _ in echo.requests[0].headers]
    assert "x_kept" in names and "x@q" not in names and "x.q" not in names


@pytest.mark.parametrize("version", [b"2.0", b"3.0"])
async def test_a_major_version_above_1_gets_nginxs_505_page_and_the_connection_closes(nursery, gateway, version):
    port, echo = await _gateway_and_echo(nursery, gateway)
    raw, _ = await raw_exchange(port, b"GET /x HTTP/" + version + b"\r\nHost: a\r\n\r\n", timeout=TIMEOUT)
    _, headers, body = parse_raw_response(raw)  # (raw_exchange reads until the gateway closes)
    assert raw.startswith(b"HTTP/1.1 505 HTTP Version Not Supported\r\n")
    assert body == nginx_page(505) and headers["content-type"] == "text/html; charset=UTF-8"  # (Kong's charset)
    assert headers["connection"] == "close"
    assert echo.requests == []


async def test_an_http12_request_is_proxied_as_http11(nursery, gateway):
    port, echo = await _gateway_and_echo(nursery, gateway)
    raw, _ = await raw_exchange(port, b"GET /x HTTP/1.2\r\nHost: a\r\nConnection: close\r\n\r\n", timeout=TIMEOUT)
    status, _, body = parse_raw_response(raw)
    assert status == 200, (status, body)
    assert [r.target for r in echo.requests] == ["/x"]


async def test_a_control_byte_in_a_field_value_goes_upstream_as_it_came(nursery, gateway):
    """nginx takes a control byte other than NUL, CR and LF in a field value (ngx_http_parse_header_line's sw_value,
    the parser of every request header line: ngx_http_process_request_headers), and Kong proxies the line as it
    came (ngx_http_proxy_create_request copies r->headers_in)."""
    port, echo = await _gateway_and_echo(nursery, gateway)
    head = b"GET /x HTTP/1.1\r\nHost: a\r\nX-A: a\x01b\r\nX-B: \x1b[0m\r\nX-C: \x7f\r\nConnection: close\r\n\r\n"
    raw, _ = await raw_exchange(port, head, timeout=TIMEOUT)
    status, _, body = parse_raw_response(raw)
    assert status == 200, (status, body)
    seen = echo.requests[0]
    assert (seen.header("x-a"), seen.header("x-b"), seen.header("x-c")) == ("a\x01b", "\x1b[0m", "\x7f")


async def _status(port: int, raw: bytes) -> int:
    data, _ = await raw_exchange(port, raw, timeout=TIMEOUT)
    return parse_raw_response(data)[0]


@pytest.mark.parametrize("line", [b"GET /x HTTP/1.1 \r\n", b"GET /x HTTP/1.1   \r\n"], ids=["one", "three"])
async def test_spaces_after_the_http_version_are_taken_as_nginx_takes_them(nursery, gateway, line):
    """src/http/ngx_http_parse.c (1.27.1) sw_minor_digit (`if (ch == ' ') state = sw_spaces_after_digit;`) and
    sw_spaces_after_digit (`case ' ': break; case CR: state = sw_almost_done;`): nginx takes spaces between the
    version and the line end (since 0.6.16, "compatibility with mget"), so Kong proxies such a request."""
    port, echo = await _gateway_and_echo(nursery, gateway)
    assert await _status(port, line + b"Host: a\r\nConnection: close\r\n\r\n") == 200
    assert [seen.target for seen in echo.requests] == ["/x"]


@pytest.mark.parametrize("line", [b"GET  /x HTTP/1.1\r\n", b"GET /x  HTTP/1.1\r\n"], ids=["before-uri", "after-uri"])
async def test_runs_of_spaces_in_the_request_line_are_taken(nursery, gateway, line):
    """src/http/ngx_http_parse.c (1.27.1) sw_spaces_before_uri (`case ' ': break;`) and sw_http_09 (`case ' ':
    break;`): nginx skips runs of spaces before the target and before the version."""
    port, echo = await _gateway_and_echo(nursery, gateway)
    assert await _status(port, line + b"Host: a\r\nConnection: close\r\n\r\n") == 200
    assert [seen.target for seen in echo.requests] == ["/x"]


@pytest.mark.parametrize("method", [b"FOO", b"BAN", b"X_Y"])
async def test_any_method_of_nginxs_characters_is_proxied_as_sent(nursery, gateway, method):
    """src/http/ngx_http_parse.c (1.27.1) sw_start / sw_method: any of A-Z, `_` and `-` makes a method (one not in
    its switch stays NGX_HTTP_UNKNOWN and is served), and Kong's router matches a route without `methods` for any
    of them. The upstream gets the client's method."""
    port, echo = await _gateway_and_echo(nursery, gateway)
    assert await _status(port, method + b" /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n") == 200
    assert [seen.method for seen in echo.requests] == [method.decode()]


async def test_the_body_of_an_unknown_method_is_framed_as_any_methods(nursery, gateway):
    """ngx_http_read_client_request_body frames a body by Content-Length or chunked whatever the method: two
    pipelined requests with an unknown method, one body of each framing, reach the upstream whole and in order."""
    port, echo = await _gateway_and_echo(nursery, gateway)
    raw = (b"BAN /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nfirst"
           b"BAN /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
           b"6\r\nsecond\r\n0\r\n\r\n")
    data, _ = await raw_exchange(port, raw, timeout=TIMEOUT)
    assert data.count(b"HTTP/1.1 200 ") == 2, data[:300]
    assert [(seen.method, seen.target, seen.body) for seen in echo.requests] == \
        [("BAN", "/a", b"first"), ("BAN", "/b", b"second")]


@pytest.mark.parametrize("bad_host", [b"bad..host", b"a b"])
async def test_an_invalid_host_header_is_400_even_when_the_target_is_absolute(nursery, gateway, bad_host):
    """src/http/ngx_http_request.c (1.27.1) ngx_http_process_host validates the Host header ("client sent invalid
    host header", 400) before `if (r->headers_in.server.len) return NGX_OK;` lets the request line's host win: an
    absolute-form target does not excuse an invalid Host header."""
    port, echo = await _gateway_and_echo(nursery, gateway)
    raw = b"GET http://a.test/x HTTP/1.1\r\nHost: " + bad_host + b"\r\nConnection: close\r\n\r\n"
    assert await _status(port, raw) == 400
    assert echo.requests == []


@pytest.mark.parametrize("authority", [b"a_b.test", b"a%41.test", b"a!b.test", b"a~b.test"])
async def test_an_absolute_target_host_outside_nginxs_request_line_characters_is_400(nursery, gateway, authority):
    """src/http/ngx_http_parse.c (1.27.1) sw_host of ngx_http_parse_request_line takes letters, digits, `.` and `-`
    only, then sw_host_end refuses anything but `:`, `/`, `?` or a space (NGX_HTTP_PARSE_INVALID_REQUEST, 400): no
    such host is routed on or sent as X-Forwarded-Host."""
    port, echo = await _gateway_and_echo(nursery, gateway)
    raw = b"GET http://" + authority + b"/x HTTP/1.1\r\nHost: c.test\r\nConnection: close\r\n\r\n"
    assert await _status(port, raw) == 400
    assert echo.requests == []


async def test_a_path_nginx_refuses_gets_the_400_of_an_invalid_request_line_and_is_not_proxied(nursery, gateway):
    """nginx 1.27.1 ngx_http_request.c:1270-1276 ("client sent invalid request", 400, before any Lua: Kong's router
    never sees the path): the answer is the one to any request line nginx refuses (an absolute target's host it does
    not take), and nothing reaches the upstream; a path under the root and a query nginx does not parse go on."""
    port, echo = await _gateway_and_echo(nursery, gateway)

    async def answer(target: bytes) -> tuple[int, str, bytes]:
        data, _ = await raw_exchange(port, b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n", timeout=TIMEOUT)
        status, headers, body = parse_raw_response(data)  # (raw_exchange reads until the gateway closes)
        return status, headers["content-type"], body.partition(b"request_id: ")[0]  # (each request's own id)

    invalid_line = await answer(b"http://a_b/x")
    assert invalid_line[0] == 400
    for target in (b"/../etc/passwd", b"/a/../../x", b"/%2e%2e/x", b"/..", b"/a%zz", b"/a%2", b"/a%",
                   b"/file.php%00.jpg"):
        assert await answer(target) == invalid_line, target
    assert echo.requests == []
    data, _ = await raw_exchange(port, b"GET /a/../b?q=%zz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
                                 timeout=TIMEOUT)
    assert parse_raw_response(data)[0] == 200
    assert [seen.target for seen in echo.requests] == ["/b?q=%zz"]
