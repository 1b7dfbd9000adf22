"""A request head the codecs mend before their parser takes it (mend_request_head: a target's bytes 0x80-0xFF
%-escaped, a Content-Length's leading zeros past 20 digits dropped, runs of spaces made single) is sized as the client
sent it, by both codecs and however it is cut into reads (sans-I/O): nginx's $request_length counts the bytes it read
(ngx_http_request.c:1124 the request line, 1454 and 1519 each header line and the blank line: `header_in->pos` less
where they began), which Kong logs as request.size (kong/pdk/log.lua:902 `size = to_decimal(var.request_length)`).
nginx source: `git -C /work/.mirror/nginx+nginx/repo show release-1.27.1:src/http/ngx_http_request.c`."""

from __future__ import annotations

import random

import pytest

from gateway.http.codec import CLOSED, END, NEED_DATA, Request
from gateway.http.codecs import codec_classes

CODECS = ["h11", "llhttp"]
PLAIN = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n"
RAW_TARGET = b"GET /caf\xc3\xa9?q=\xff HTTP/1.1\r\nHost: a\r\n\r\n"  # 36 bytes; %-escaped, 42
RAW_NEXT = b"GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n"  # 29 bytes; %-escaped, 33
LONG_LENGTH = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: " + b"0" * 22 + b"3\r\n\r\n"  # 70 bytes; 48 mended
SPACED = b"GET   /a  HTTP/1.1 \r\nHost: a\r\n\r\n"  # 32 bytes; 28 single-spaced


def cuts(data: bytes) -> list[list[bytes]]:
    """`data` whole, byte by byte, and cut at random (seeded) into reads, three ways."""
    reads = [[data], [data[i:i + 1] for i in range(len(data))]]
    for seed in range(3):
        rng = random.Random(seed)
        marks = sorted(rng.sample(range(1, len(data)), 5))
        reads.append([data[a:b] for a, b in zip([0, *marks], [*marks, len(data)], strict=True)])
    return reads


def sizes(codec: str, reads: list[bytes]) -> list[int]:
    """The size (Request.size, once its request ended) of each request a server codec parsed of `reads`, each
    answered as the gateway answers it."""
    server = codec_classes(codec)[0]()
    requests: list[Request] = []
    ended: list[int] = []
    for data in [*reads, b""]:
        server.receive_data(data)
        while (ev := server.next_event()) is not NEED_DATA and ev is not CLOSED:
            if type(ev) is Request:
                requests.append(ev)
            elif ev is END:
                ended.append(requests[-1].size)
                server.response_head(200, [(b"content-length", b"0")])
                server.end()
                server.start_next_cycle()
    return ended


def sized_alike(codec: str, data: bytes) -> list[int]:
    """`sizes` of `data` cut every way (cuts): one answer, or the read patterns it differs by."""
    seen = {tuple(sizes(codec, reads)) for reads in cuts(data)}
    assert len(seen) == 1, f"sized differently by how the reads were cut: {seen}"
    return list(seen.pop())


@pytest.mark.parametrize("codec", CODECS)
def test_target_with_raw_bytes_counts_them_as_sent(codec: str) -> None:
    """ngx_http_request.c:1124 `r->request_length = r->header_in->pos - r->request_start`: the request line's bytes
    as read, a byte 0x80-0xFF one byte (not the three of its %-escape, which the router reads)."""
    assert sized_alike(codec, RAW_TARGET) == [len(RAW_TARGET)]


@pytest.mark.parametrize("codec", CODECS)
def test_pipelined_head_with_raw_bytes_counts_them_as_sent(codec: str) -> None:
    """A head with a raw byte in its target sent after another request (pipelined, in the same read or not) is
    sized as sent too: nginx counts each request's head from its request_start (ngx_http_request.c:1124)."""
    assert sized_alike(codec, PLAIN + RAW_NEXT) == [len(PLAIN), len(RAW_NEXT)]


@pytest.mark.parametrize("codec", CODECS)
def test_two_mended_heads_in_one_read_each_sized_as_sent(codec: str) -> None:
    """Mended heads one after the other (and a plain one after them) each count their own bytes as sent."""
    data = RAW_TARGET + RAW_NEXT + PLAIN
    assert sized_alike(codec, data) == [len(RAW_TARGET), len(RAW_NEXT), len(PLAIN)]


@pytest.mark.parametrize("codec", CODECS)
def test_content_length_with_leading_zeros_counts_them(codec: str) -> None:
    """ngx_http_request.c:1454 `r->request_length += r->header_in->pos - r->header_name_start`: a header line's
    bytes as read, a Content-Length's 22 leading zeros (ngx_atoof reads them; h11 takes 20 digits at most) included,
    plus its body's (ngx_http_request_body.c:120)."""
    assert sized_alike(codec, LONG_LENGTH + b"abc") == [len(LONG_LENGTH)]
    assert sized_alike(codec, PLAIN + LONG_LENGTH + b"abc" + PLAIN) == [len(PLAIN), len(LONG_LENGTH), len(PLAIN)]


@pytest.mark.parametrize("codec", CODECS)
def test_request_line_runs_of_spaces_count_as_sent(codec: str) -> None:
    """The spaces nginx skips in a request line (sw_spaces_before_uri, sw_http_09, sw_spaces_after_digit) are bytes
    it read: counted (ngx_http_request.c:1124), though the parsers are given single spaces."""
    assert sized_alike(codec, SPACED) == [len(SPACED)]

