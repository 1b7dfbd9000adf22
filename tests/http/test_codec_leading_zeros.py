"""What nginx 1.27.1 reads and h11 or llhttp refused, read by both codecs alike (sans-I/O, fed whole and cut into
reads): leading zeros in a chunk size or a Content-Length past h11's 20 digits (ngx_http_parse_chunked and ngx_atoof
read any number of them), and the head of an answer to HEAD without a length, which nginx frames neither way; and
whitespace around a request chunk line's `;` and `=` (RFC 9112 7.1.1 BWS, which nginx skips), refused alike (400).
nginx source: `git -C /work/.mirror/nginx+nginx/repo show release-1.27.1:src/<file>`."""

from __future__ import annotations

import random

import pytest

from gateway.http.chunked import ChunkedFraming
from gateway.http.codec import CLOSED, END, NEED_DATA, NO_BODY, ProtocolError, Request, Response
from gateway.http.codecs import codec_classes

CODECS = ["h11", "llhttp"]
ZEROS = b"0" * 22  # past h11's 20 digits (h11/_abnf.py chunk_size; h11/_headers.py CONTENT_LENGTH_MAX_DIGITS)
CHUNKED_POST = b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
CHUNKED_200 = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
NEXT = b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n"


def cuts(data: bytes) -> list[list[bytes]]:
    """`data` whole, byte by byte, and cut at random (seeded) into reads."""
    rng = random.Random(len(data))
    marks = sorted(rng.sample(range(1, len(data)), min(5, len(data) - 1)))
    return [[data], [data[i:i + 1] for i in range(len(data))],
            [data[a:b] for a, b in zip([0, *marks], [*marks, len(data)], strict=True)]]


def requests(codec: str, chunks: list[bytes]) -> list[object]:
    """A server codec's events for `chunks` then EOF, each request answered as the gateway would: Requests as
    (method, target, headers), body bytes joined, END, ("error", status)."""
    server = codec_classes(codec)[0]()
    events: list[object] = []
    for chunk in [*chunks, b""]:
        server.receive_data(chunk)
        while True:
            try:
                ev = server.next_event()
            except ProtocolError as e:
                return [*events, ("error", e.status)]
            if ev is NEED_DATA or ev is CLOSED:
                break
            if type(ev) is Request:
                ev = (ev.method, ev.target, ev.headers)
            elif type(ev) is bytes and events and type(events[-1]) is bytes:
                events[-1] += ev
                continue
            events.append(ev)
            if ev is END:
                server.response_head(200, [(b"content-length", b"0")])
                server.end()
                server.start_next_cycle()
    return events


def read_alike(codec: str, raw: bytes) -> list[object]:
    """`requests` of `raw` whole, checked to be the same however it is cut into reads."""
    whole, *others = [requests(codec, chunks) for chunks in cuts(raw)]
    assert all(other == whole for other in others)
    return whole


def answered(codec: str, chunks: list[bytes]) -> list[object]:
    """A client codec's events for an upstream's `chunks` after a GET: (status, headers), body bytes joined, END,
    ("error", status)."""
    client = codec_classes(codec)[1]()
    client.request_head(b"GET", b"/", [(b"host", b"up")])
    client.end()
    events: list[object] = []
    for chunk in chunks:
        client.receive_data(chunk)
        while True:
            try:
                ev = client.next_event()
            except ProtocolError as e:
                return [*events, ("error", e.status)]
            if ev is NEED_DATA:
                break
            if type(ev) is Response:
                ev = (ev.status, ev.headers)
            elif type(ev) is bytes and events and type(events[-1]) is bytes:
                events[-1] += ev
                continue
            events.append(ev)
    return events


POSTED = (b"POST", b"/x", [(b"host", b"a"), (b"transfer-encoding", b"chunked")])  # CHUNKED_POST's Request


# --- a chunk size of more than 20 digits -----------------------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("body", [ZEROS + b"3\r\nabc\r\n0\r\n\r\n", b"3\r\nabc\r\n" + ZEROS + b"\r\n\r\n",
                                  ZEROS + b"3;a=b\r\nabc\r\n" + ZEROS + b"0\r\n\r\n"])
def test_a_request_chunk_size_with_more_than_20_digits_of_leading_zeros_is_read(codec: str, body: bytes) -> None:
    """ngx_http_parse.c:2197-2214 (ngx_http_parse_chunked, sw_chunk_size): `size = size * 16 + d` for each digit,
    refused only past NGX_MAX_OFF_T_VALUE / 16, so leading zeros never end it (a last chunk's either). llhttp reads
    them so; h11 takes 20 digits at most, and the h11 codec gives it such a line as `%x` CRLF."""
    assert read_alike(codec, CHUNKED_POST + body) == [POSTED, b"abc", END]


@pytest.mark.parametrize("codec", CODECS)
def test_an_upstream_chunk_size_with_more_than_20_digits_of_leading_zeros_is_read(codec: str) -> None:
    """The same function reads an upstream's chunked body (ngx_http_proxy_chunked_filter): the answer is relayed
    whole, where the h11 codec answered 502."""
    raw = CHUNKED_200 + ZEROS + b"3\r\nabc\r\n" + ZEROS + b"\r\n\r\n"
    for chunks in cuts(raw):
        assert answered(codec, chunks) == [(200, [(b"transfer-encoding", b"chunked")]), b"abc", END]


def test_a_long_chunk_line_counts_in_the_request_size_as_it_was_sent() -> None:
    """nginx's $request_length counts the bytes read: the h11 codec, which gives h11 the line as `3` CRLF, counts
    the 25 bytes that came (the llhttp codec counts a chunk line that came in one read as `%x` CRLF, as before)."""
    for chunks in cuts(CHUNKED_POST + ZEROS + b"3\r\nabc\r\n0\r\n\r\n"):
        server = codec_classes("h11")[0]()
        for chunk in chunks:
            server.receive_data(chunk)
        request = server.next_event()
        assert type(request) is Request
        assert server.take_body() == (b"abc", True)
        assert request.size == len(CHUNKED_POST) + len(ZEROS) + 3 + 2 + 5  # (its line, the CRLF after abc, `0` ...)


def test_the_framing_check_gives_each_chunk_line_once_it_ended_a_long_one_plain() -> None:
    """What gateway.http.chunked gives h11 after it: a line once its LF came and it passed, one of more than 20 digits
    as `%x` CRLF, the bytes after the body as they came, nothing from a fault on."""
    framing = ChunkedFraming(400, 1024)
    assert framing.feed(ZEROS + b"3;") == b""
    assert framing.feed(b"a=b\r\nabc\r\n0") == b"3\r\nabc\r\n"
    assert framing.feed(b"\r\n\r\nGET") == b"0\r\n\r\nGET" and framing.done
    framing = ChunkedFraming(400, 1024)
    assert framing.feed(b"3\r\nabc\r\n3 \r\nabc") == b"3\r\nabc\r\n" and framing.error is not None
    assert framing.feed(b"\r\n0\r\n\r\n") == b""


# --- a Content-Length of more than 20 characters ---------------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS)
def test_an_upstream_content_length_with_more_than_20_digits_of_leading_zeros_is_read(codec: str) -> None:
    """ngx_http_upstream.c:4747 (ngx_http_upstream_process_content_length): `ngx_atoof(h->value.data, ...)`, which
    (ngx_string.c:1079-1103) refuses only a value past NGX_MAX_OFF_T_VALUE: any number of leading zeros is read, and
    the field is relayed as it came. The h11 codec, whose h11 takes 20 characters at most, answered 502."""
    length = ZEROS + b"3"
    for chunks in cuts(b"HTTP/1.1 200 OK\r\nContent-Length: " + length + b"\r\n\r\nabc"):
        assert answered(codec, chunks) == [(200, [(b"content-length", length)]), b"abc", END]


@pytest.mark.parametrize("codec", CODECS)
def test_such_a_content_length_is_relayed_to_the_client_as_it_came(codec: str) -> None:
    """ngx_http_header_filter_module.c writes the upstream's Content-Length line as it came (only a length without
    one is printed from content_length_n); h11 refuses to write one of more than 20 characters, so the h11 codec
    writes it in the place of the number it is."""
    server = codec_classes(codec)[0]()
    server.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert type(server.next_event()) is Request and server.next_event() is END
    head = server.response_head(200, [(b"content-length", ZEROS + b"3")])
    out = head + server.body(b"abc") + server.end()
    assert b"\r\ncontent-length: " + ZEROS + b"3\r\n" in head and out.endswith(b"\r\n\r\nabc") and server.keep_alive


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("length", [b"0" * 19 + b"3", ZEROS + b"3", b"003"])
def test_a_request_content_length_with_leading_zeros_is_read_and_kept_as_sent(codec: str, length: bytes) -> None:
    """ngx_http_request.c:1980-1990 (ngx_http_process_request_header): `content_length_n = ngx_atoof(...)`, a 400
    only for a value past 2**63 - 1, never for leading zeros (both codecs answered 400 past 19 characters, h11's
    codec past 20 before that). Plugins and logs see it as sent (Kong's get_header is $http_content_length: what
    hmac-auth signs)."""
    raw = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: " + length + b"\r\n\r\nabc" + NEXT
    assert read_alike(codec, raw) == [(b"POST", b"/x", [(b"host", b"a"), (b"content-length", length)]), b"abc", END,
                                      (b"GET", b"/next", [(b"host", b"a")]), END]


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("length", [b"09223372036854775808", b"0" * 30 + b"9223372036854775808", b"00x3", b"0 3"])
def test_a_request_content_length_past_2_63_or_not_a_number_is_still_400(codec: str, length: bytes) -> None:
    """ngx_atoof's NGX_ERROR: a value past NGX_MAX_OFF_T_VALUE, leading zeros aside, or a byte that is no digit."""
    raw = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: " + length + b"\r\n\r\nabc"
    assert read_alike(codec, raw) == [("error", 400)]


# --- whitespace around a request chunk line's `;` and `=` -------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("line", [b"3; a=b", b"3 ;a=b", b"3;a = b", b"3\t;\ta", ZEROS + b"3 ;a", b"3; a\x00",
                                  b"3 ;a\rb", b"3 ;a=b\n", b"3 ", b"3;a=b ", b"3 ;", b" 3;a"])
def test_a_request_chunk_line_with_whitespace_or_a_control_byte_is_400_in_both_codecs(codec: str, line: bytes) -> None:
    """llhttp (the default codec's parser) refuses whitespace in a request's chunk line, the BWS RFC 9112 7.1.1 allows
    around `;` and `=` too, which nginx skips (ngx_http_parse.c sw_chunk_extension): the h11 codec refuses it alike
    (README, Bad input), and a NUL, a bare CR or LF, where parsers part, a request's end among them; after the body
    bytes before it."""
    raw = CHUNKED_POST + b"1\r\nz\r\n" + line + b"\r\nabc\r\n0\r\n\r\n"
    assert read_alike(codec, raw) == [POSTED, b"z", ("error", 400)]


# --- an answer to HEAD without a length ------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("version", [b"1.1", b"1.0"])
@pytest.mark.parametrize("framing", [None, NO_BODY])
def test_an_answer_to_head_without_a_length_has_no_transfer_encoding(codec: str, version: bytes,
                                                                     framing: int | None) -> None:
    """ngx_http_chunked_filter_module.c:65-70: `|| r->method == NGX_HTTP_HEAD` skips the chunked filter, so the head
    of an answer to HEAD without a Content-Length (response-transformer's json op clears it, as Kong's
    header_transformer.lua:132-134 does; an upstream's HEAD answer without one) has no Transfer-Encoding either,
    and the connection is kept (where the client's version keeps it)."""
    server = codec_classes(codec)[0]()
    keep = b"Connection: keep-alive\r\n" if version == b"1.0" else b""
    server.receive_data(b"HEAD /x HTTP/" + version + b"\r\nHost: a\r\n" + keep + b"\r\n")
    assert type(server.next_event()) is Request and server.next_event() is END
    head = server.response_head(200, [(b"content-type", b"application/json")], framing=framing)
    head += server.body(b"{}") + server.end()
    assert head.endswith(b"\r\n\r\n") and b"{}" not in head
    names = [line.partition(b":")[0].lower() for line in head.split(b"\r\n")[1:-2]]
    assert b"transfer-encoding" not in names and b"content-length" not in names
    assert server.keep_alive == (version == b"1.1" or codec == "llhttp")  # (h11 never keeps HTTP/1.0 alive)


@pytest.mark.parametrize("codec", CODECS)
def test_a_get_sent_upstream_as_head_still_shows_its_body_cut(codec: str) -> None:
    """The client asked GET (Exchange.set_method sent HEAD upstream): its answer still announces the body a GET's
    would (chunked) and closes after the head, so the client sees that body cut."""
    server = codec_classes(codec)[0]()
    server.receive_data(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    request = server.next_event()
    assert type(request) is Request
    request.method = b"HEAD"
    head = server.response_head(200, [(b"content-type", b"application/json")])
    assert b"transfer-encoding: chunked\r\n" in head.lower() and b"connection: close\r\n" in head.lower()
