"""The chunked-framing check the h11 codec applies (gateway.http.chunked), without sockets: what it accepts, where it
says a body ends, and each fault, however the bytes are cut."""

from __future__ import annotations

import pytest

from gateway.http.chunked import ChunkedFraming
from gateway.http.codec import END, NEED_DATA, ProtocolError, Request
from gateway.http.codec_llhttp import LlhttpServer

VALID = b"5\r\nhello\r\n6;name=value;flag\r\n world\r\nA;q=\"a \\\" b\"\r\n0123456789\r\n0\r\nX-Sum: 1\r\n\r\n"


def feed(data: bytes, cut: int = 0, status: int = 400, max_line: int = 1024) -> ChunkedFraming:
    framing = ChunkedFraming(status, max_line)
    if cut:
        for i in range(0, len(data), cut):
            framing.feed(data[i : i + cut])
    else:
        framing.feed(data)
    return framing


@pytest.mark.parametrize("cut", [0, 1, 2, 3, 7])
def test_well_framed_body_ends_after_its_trailer_section_however_it_is_cut(cut: int) -> None:
    framing = feed(VALID, cut)
    assert framing.error is None
    assert framing.done
    assert framing.body_ok == len(b"hello world0123456789")


def test_bytes_after_the_end_are_the_next_message_s() -> None:
    framing = feed(b"0\r\n\r\nGET / HTTP/1.1\r\n garbage \n")
    assert framing.done
    assert framing.error is None


def test_an_unfinished_body_is_neither_done_nor_faulty() -> None:
    framing = feed(b"5\r\nhel")
    assert not framing.done
    assert framing.error is None
    assert framing.body_ok == 3


@pytest.mark.parametrize("rest", [
    pytest.param(b"5 \r\nhello\r\n0\r\n\r\n", id="space-after-size"),
    pytest.param(b"5\nhello\r\n0\r\n\r\n", id="bare-lf-after-size"),
    pytest.param(b"1;a\rb\r\nx\r\n0\r\n\r\n", id="bare-cr-in-extension"),
    pytest.param(b"0;\r\n\r\n", id="empty-extension-name"),
    pytest.param(b"0; a\r\n\r\n", id="whitespace-before-extension"),
    pytest.param(b"0;a = b\r\n\r\n", id="whitespace-around-equals"),
    pytest.param(b"-1\r\n", id="negative-size"),
    pytest.param(b"0x5\r\nhello\r\n0\r\n\r\n", id="hex-prefix"),
    pytest.param(b"10000000000000000\r\n", id="size-past-64-bits"),
    pytest.param(b"\r\n", id="no-size"),
    pytest.param(b"0\r\n\n", id="bare-lf-ending-trailers"),
    pytest.param(b"0\r\nX: 1\n\r\n", id="bare-lf-ending-a-trailer"),
    pytest.param(b"0\r\nX: a\r\n b\r\n\r\n", id="obs-fold-in-trailers"),
    pytest.param(b"0\r\nX : 1\r\n\r\n", id="space-before-colon"),
    pytest.param(b"0\r\nBad\r\n\r\n", id="trailer-without-colon"),
    pytest.param(b"0\r\nX: \x01\r\n\r\n", id="control-byte-in-trailer"),
    pytest.param(b"0\r\nContent-Length: 5\r\n\r\n", id="content-length-trailer"),
    pytest.param(b"0\r\ntransfer-encoding: chunked\r\n\r\n", id="transfer-encoding-trailer"),
])
@pytest.mark.parametrize("cut", [0, 1])
def test_a_framing_fault_is_reported_with_the_body_bytes_before_it(rest: bytes, cut: int) -> None:
    framing = feed(b"3\r\nabc\r\n" + rest, cut, status=502)
    assert framing.error is not None
    assert framing.error.status == 502
    assert framing.body_ok == 3  # "abc": the fault's own chunk gives nothing
    assert not framing.done


def test_leading_zeros_do_not_count_against_the_size_bound() -> None:
    framing = feed(b"0000000000000000000000005\r\nhello\r\n0\r\n\r\n")
    assert framing.error is None
    assert framing.done


def test_a_line_longer_than_the_bound_is_a_fault_before_its_end_comes() -> None:
    framing = feed(b"5;" + b"x" * 100, max_line=64)
    assert framing.error is not None
    assert framing.error.status == 400


def test_a_chunk_not_followed_by_crlf_fails_after_its_data() -> None:
    framing = feed(b"3\r\nabc\r\n5\r\nhelloXX0\r\n\r\n")
    assert framing.error is not None
    assert framing.body_ok == 8  # its data was whole: llhttp hands it over too, then fails


def test_nothing_is_read_after_a_fault() -> None:
    framing = feed(b"5 \r\n")
    framing.feed(b"hello\r\n0\r\n\r\n")
    assert framing.error is not None
    assert framing.body_ok == 0


@pytest.mark.parametrize("size", [b"8000000000000000", b"ffffffffffffffff", b"10000000000000000"])
def test_a_chunk_size_past_nginx_off_t_is_refused(size: bytes) -> None:
    """ngx_http_parse_chunked: size > NGX_MAX_OFF_T_VALUE / 16 before another digit -> invalid (2**63 or more)."""
    framing = feed(size + b"\r\nhello")
    assert framing.error is not None and "too large" in str(framing.error) and framing.body_ok == 0


def test_the_largest_chunk_size_nginx_takes_is_taken() -> None:
    """2**63 - 1, leading zeros aside, is a size nginx reads (NGX_MAX_OFF_T_VALUE)."""
    framing = feed(b"00007fffffffffffffff\r\nhello")
    assert framing.error is None and framing.body_ok == 5


def _llhttp_events(pieces: list[bytes]) -> list[object]:
    """What the llhttp server codec makes of a chunked request fed in `pieces`: body bytes, "END", or the error."""
    codec = LlhttpServer()
    out: list[object] = []
    for piece in [b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", *pieces]:
        codec.receive_data(piece)
        while True:
            try:
                ev = codec.next_event()
            except ProtocolError as e:
                return [*out, str(e)]
            if ev is NEED_DATA:
                break
            if type(ev) is not Request:
                out.append("END" if ev is END else ev)
    return out


@pytest.mark.parametrize(("pieces", "before"), [([b"8000000000000000\r\nhello"], []),
                                                ([b"80000000", b"00000000\r\n", b"hello"], []),
                                                ([b"5\r\nhello\r\n0008000000000000000;a=b\r\n", b"xy"], [b"hello"])],
                         ids=["one read", "line cut", "later chunk"])
def test_llhttp_refuses_a_chunk_size_past_nginx_off_t_before_its_data(pieces: list[bytes], before: list[bytes]) -> None:
    """llhttp itself takes sizes up to 2**64 - 1; the codec refuses 2**63 and more (ngx_http_parse_chunked), with
    none of that chunk's data passed on, however the line came."""
    assert _llhttp_events(pieces) == [*before, "chunk size too large"]


def test_llhttp_takes_chunk_data_that_reads_like_a_huge_size_line() -> None:
    """The size is read where llhttp read the chunk-size line, never in the data: a data line of 16 hex digits is
    data."""
    assert _llhttp_events([b"12\r\n8000000000000000\r\n\r\n", b"0\r\n\r\n"]) == [b"8000000000000000\r\n", "END"]
