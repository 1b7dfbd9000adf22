"""A client's request-body framing read as nginx 1.27.1 (Kong 3.9.3's) reads it, by both server codecs (sans-I/O, fed
whole and cut into reads) and once end to end: a tab around a Content-Length's digits or around `chunked` is the
value's (nginx's 400 and 501), and a trailer section's Connection changes nothing (nginx skips its lines unread).
nginx source: `git -C /work/.mirror/nginx+nginx/repo show release-1.27.1:src/<file>`."""

from __future__ import annotations

import random
from typing import Any

import h11
import pytest
import trio
from backends import EchoBackend, service

from gateway.http.codec import CLOSED, END, NEED_DATA, ProtocolError, Request
from gateway.http.codecs import codec_classes

CODECS = ["h11", "llhttp"]
POST = b"POST /first HTTP/1.1\r\nHost: a\r\n"
NEXT = b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n"
SMUGGLED = b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"  # a chunked reader's empty body, then a request
CHUNKED_TO_TRAILERS = POST + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n"


def cuts(data: bytes) -> list[list[bytes]]:
    """`data` whole, byte by byte, and cut at random (seeded) into reads."""
    rng = random.Random(len(data))
    marks = sorted(rng.sample(range(1, len(data)), min(5, len(data) - 1)))
    return [[data], [data[i:i + 1] for i in range(len(data))],
            [data[a:b] for a, b in zip([0, *marks], [*marks, len(data)], strict=True)]]


def served(codec: str, chunks: list[bytes]) -> list[object]:
    """A server codec's events for `chunks`, each request answered 200 as the gateway answers it: a Request as
    (method, target), body bytes joined, END, ("error", status), and "close" after an answer that ends the
    connection (then whatever the codec makes of the bytes after it)."""
    server = codec_classes(codec)[0]()
    events: list[object] = []
    for chunk in chunks:
        server.receive_data(chunk)
        while True:
            try:
                ev = server.next_event()
            except ProtocolError as e:
                return [*events, ("error", e.status)]
            if ev is NEED_DATA or ev is CLOSED:
                break
            if type(ev) is Request:
                ev = (ev.method, ev.target)
            elif type(ev) is bytes and events and type(events[-1]) is bytes:
                events[-1] += ev
                continue
            events.append(ev)
            if ev is END:
                server.response_head(200, [(b"content-length", b"0")])
                server.end()
                if not server.keep_alive:
                    events.append("close")
                    continue
                server.start_next_cycle()
    return events


def read_alike(codec: str, raw: bytes) -> list[object]:
    """`served` of `raw`, checked to be the same however it is cut into reads."""
    seen = [served(codec, chunks) for chunks in cuts(raw)]
    assert all(events == seen[0] for events in seen), seen
    return seen[0]


# --- a tab around a Content-Length's digits ------------------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("value", [b"\t5", b"5\t", b" \t5", b"\t5\t", b"5 \t"])
def test_a_content_length_with_a_tab_around_its_digits_is_refused_400(codec: str, value: bytes) -> None:
    """ngx_http_parse.c:972-1013 (ngx_http_parse_header_line): sw_space_before_value skips ' ' alone and sw_value
    ends a value at ' ', CR or LF, so the tab is the value's; ngx_atoof refuses a non-digit (ngx_string.c:1091) and
    ngx_http_process_request_header answers "client sent invalid Content-Length header", 400 (ngx_http_request.c:
    1980-1990), the body never read as one. Both parsers skip the tab as whitespace and would read 5 bytes."""
    raw = POST + b"Content-Length:" + value + b"\r\n\r\nhello" + NEXT
    assert read_alike(codec, raw) == [("error", 400)]


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("before", [1, 2])
def test_a_pipelined_request_with_a_tabbed_content_length_is_refused_after_those_before_it(codec: str,
                                                                                           before: int) -> None:
    """The same 400 for a head that begins after other requests in a read (ngx_http_request.c:1980-1990): the ones
    before it are served."""
    raw = NEXT * before + POST + b"Content-Length:\t5\r\n\r\nhello"
    assert read_alike(codec, raw) == [(b"GET", b"/next"), END] * before + [("error", 400)]


@pytest.mark.parametrize("codec", CODECS)
def test_a_tabbed_content_length_line_in_a_body_is_not_the_next_heads(codec: str) -> None:
    """Only the head's own lines are read as its fields (ngx_http_parse_header_line reads the head alone): a body
    holding `Content-Length:<TAB>5` leaves the request pipelined after it as it is, served."""
    body = b"Content-Length:\t5\r\n"
    raw = POST + b"Content-Length: %d\r\n\r\n" % len(body) + body + POST + b"Content-Length: 5\r\n\r\nhello"
    assert read_alike(codec, raw) == [(b"POST", b"/first"), body, END, (b"POST", b"/first"), b"hello", END]


@pytest.mark.parametrize("codec", CODECS)
def test_a_tabbed_content_length_is_refused_400_before_a_traces_405(codec: str) -> None:
    """ngx_http_process_request_header reads the Content-Length (ngx_http_request.c:1980-1990) before it refuses
    TRACE (ngx_http_request.c:2041-2046): 400, not 405."""
    raw = b"TRACE /t HTTP/1.1\r\nHost: a\r\nContent-Length:\t0\r\n\r\n"
    assert read_alike(codec, raw) == [("error", 400)]


@pytest.mark.parametrize("codec", CODECS)
def test_a_tab_around_another_fields_value_refuses_nothing(codec: str) -> None:
    """The rule is nginx's for the framing fields it reads as numbers and codings; another field with a tab, and a
    tab in a body, are served as ever."""
    raw = POST + b"X-A:\tv\t\r\nContent-Length: 5\r\n\r\nhe\tlo" + NEXT
    assert read_alike(codec, raw) == [(b"POST", b"/first"), b"he\tlo", END, (b"GET", b"/next"), END]


# --- a tab around `chunked` ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("value", [b"\tchunked", b" \tchunked", b"\tchunked\t", b"chunked\t"])
def test_a_transfer_encoding_with_a_tab_around_chunked_is_refused_501(codec: str, value: bytes) -> None:
    """The tab is the value's (ngx_http_parse.c:972-1013), so the value is not the 7 bytes `chunked`:
    ngx_http_request.c:2001-2022 "client sent unknown Transfer-Encoding", 501, nothing read as a body. Read as
    chunked, the empty body below would end at its `0` line and a second request be served from it."""
    raw = POST + b"Transfer-Encoding:" + value + b"\r\n\r\n" + SMUGGLED
    assert read_alike(codec, raw) == [("error", 501)]


@pytest.mark.parametrize("codec", CODECS)
def test_an_http10_request_with_a_tabbed_transfer_encoding_is_400_as_nginx_reads_the_version_first(codec: str) -> None:
    """ngx_http_request.c:1993-2000: an HTTP/1.0 request with any Transfer-Encoding is "client sent HTTP/1.0 request
    with Transfer-Encoding header", 400, before its value is read."""
    raw = b"POST /first HTTP/1.0\r\nHost: a\r\nTransfer-Encoding:\tchunked\r\n\r\n" + SMUGGLED
    assert read_alike(codec, raw) == [("error", 400)]


# --- a trailer section's Connection --------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("trailer", [b"Connection: close", b"Connection: x, close", b"connection: CLOSE",
                                     b"Proxy-Connection: close"])
def test_a_connection_close_trailer_leaves_the_connection_to_the_next_request(codec: str, trailer: bytes) -> None:
    """nginx skips a request's trailer lines unread (ngx_http_parse.c:2311-2343, sw_trailer and sw_trailer_header),
    so the head's Connection stands: the request pipelined after it is served. llhttp reads the trailer as the
    head's Connection and would refuse whatever follows the message ("Data after `Connection: close`")."""
    raw = CHUNKED_TO_TRAILERS + trailer + b"\r\n\r\n" + NEXT
    assert read_alike(codec, raw) == [(b"POST", b"/first"), b"hello", END, (b"GET", b"/next"), END]


@pytest.mark.parametrize("codec", CODECS)
def test_a_connection_close_head_after_a_connection_trailer_still_ends_the_connection(codec: str) -> None:
    """The trailer changes nothing either way: a later request whose head says `Connection: close` is the
    connection's last (ngx_http_core_module.c:832-834, ngx_http_handler: keepalive off), what follows it refused."""
    raw = (CHUNKED_TO_TRAILERS + b"Connection: close\r\n\r\n" + b"GET /last HTTP/1.1\r\nHost: a\r\nConnection: close"
           b"\r\n\r\n" + NEXT)
    events = served(codec, [raw])
    assert events == [(b"POST", b"/first"), b"hello", END, (b"GET", b"/last"), END, "close", ("error", 400)]


async def _responses(stream: trio.SocketStream, targets: list[bytes]) -> list[int]:
    """The statuses of the answers to requests for `targets` read from `stream` (parsed by an h11 client that
    stands for the sender of those requests)."""
    conn = h11.Connection(h11.CLIENT)
    statuses = []
    for target in targets:
        conn.send(h11.Request(method="GET", target=target, headers=[("Host", "a")]))
        conn.send(h11.EndOfMessage())
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif type(ev) is h11.Response:
                statuses.append(ev.status_code)
            elif type(ev) is h11.EndOfMessage:
                break
        conn.start_next_cycle()
    return statuses


async def test_a_connection_close_trailer_does_not_fail_the_next_request_end_to_end(
        nursery: trio.Nursery, gateway: Any) -> None:
    """ngx_http_parse.c:2311-2343: a chunked request whose trailer says `Connection: close`, with a request behind
    it in the same write: both reach the upstream and are answered 200, and the connection serves a third."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}", [{"paths": ["/"]}])]})
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        with trio.fail_after(3):
            await stream.send_all(CHUNKED_TO_TRAILERS + b"Connection: close\r\n\r\n" + NEXT)
            assert await _responses(stream, [b"/first", b"/next"]) == [200, 200]
            await stream.send_all(b"GET /third HTTP/1.1\r\nHost: a\r\n\r\n")
            assert await _responses(stream, [b"/third"]) == [200]
    finally:
        await trio.aclose_forcefully(stream)
    assert [seen.target for seen in echo.requests] == ["/first", "/next", "/third"]
