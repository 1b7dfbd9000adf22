"""How long a PROXY protocol header may be: as long as nginx 1.27.1's first read of the connection, which it parses
the header from (src/http/ngx_http_request.c): a plain listener's read into its client_header_buffer_size buffer
(1k, 468-478), a TLS listener's peek of NGX_PROXY_PROTOCOL_MAX_HEADER + 1 bytes (666, 694-729). Within it a v1 line
has no limit of its own (ngx_proxy_protocol_read, src/core/ngx_proxy_protocol.c:100-190: an address is any run of
hex digits, `:` and `.`), and a v2 header longer than it is "header is too large" (352-357)."""

from __future__ import annotations

import socket
import struct

import pytest
import trio

from gateway.http.codecs import codec_classes
from gateway.http.net import Conn
from gateway.http.proxy_protocol import (
    PLAIN_FIRST_READ,
    SIGNATURE,
    TLS_FIRST_READ,
    BrokenHeader,
    Header,
    header_or_none,
    parse,
    read_header,
)
from gateway.http.realip import proxied_client
from gateway.http.server import Exchange, ServerSettings, serve_listener

REQUEST = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
INET = socket.inet_aton("1.2.3.4") + socket.inet_aton("5.6.7.8") + struct.pack("!HH", 1, 2)


def v1_of(size: int) -> bytes:
    """A TCP6 line of `size` bytes, CRLF included, its source address a long run of digits."""
    return b"PROXY TCP6 " + b"1" * (size - 21) + b" ::1 1 2\r\n"


def v2_of(size: int) -> bytes:
    """A v2 PROXY header over TCP4 of `size` bytes: 1.2.3.4:1 to 5.6.7.8:2, then a NOOP TLV filling it."""
    tlv = b"\x04" + struct.pack("!H", size - 16 - 12 - 3) + bytes(size - 16 - 12 - 3)
    return SIGNATURE + b"\x21\x11" + struct.pack("!H", size - 16) + INET + tlv


def test_a_v1_line_longer_than_107_bytes_is_a_header_realip_finds_no_address_in():
    """No NGX_PROXY_PROTOCOL_V1_MAX_HEADER on reading (that is the longest line nginx writes): a TCP6 line with a
    100-digit source is whole; realip cannot parse the source, so the peer stays the client (seen on nginx 1.22:
    200, client 127.0.0.1)."""
    line = b"PROXY TCP6 " + b"1" * 100 + b" ::1 1 2\r\n"
    header = parse(line + REQUEST)
    assert header == Header(len(line), "1" * 100, 1, "::1", 2)
    assert proxied_client(header.source, header.source_port) is None


def test_a_v1_line_must_end_within_a_plain_listeners_first_read():
    """A line of 1024 bytes is whole in the 1k first read; one byte more and the port's CR is its last byte, the LF
    not read: `if (p == last) goto invalid`, "broken header"."""
    assert PLAIN_FIRST_READ == 1024
    assert parse(v1_of(1024)) == Header(1024, "1" * 1003, 1, "::1", 2)
    with pytest.raises(BrokenHeader, match="^broken header: .*no CRLF within 1024 bytes"):
        parse(v1_of(1025))


def test_a_v2_header_larger_than_a_plain_listeners_first_read_is_too_large():
    """ngx_proxy_protocol_v2_read: `if ((size_t) (last - buf) < len)` "header is too large": a v2 header over 1024
    bytes in all is refused (seen on nginx 1.22: closed unanswered), as soon as its length is read."""
    assert parse(v2_of(1024)) == Header(1024, "1.2.3.4", 1, "5.6.7.8", 2)
    with pytest.raises(BrokenHeader, match="^header is too large"):
        parse(v2_of(1025)[:16])


def test_a_tls_listener_takes_a_header_of_up_to_4097_bytes():
    """ngx_http_ssl_handshake peeks into `u_char buf[NGX_PROXY_PROTOCOL_MAX_HEADER + 1]`: a v2 header of 4097 bytes
    fits (4098 is too large), and a v1 line longer than a plain listener's first read is whole."""
    assert parse(v2_of(4097), TLS_FIRST_READ) == Header(4097, "1.2.3.4", 1, "5.6.7.8", 2)
    with pytest.raises(BrokenHeader, match="^header is too large"):
        parse(v2_of(4098)[:16], TLS_FIRST_READ)
    assert parse(v1_of(2000), TLS_FIRST_READ) == Header(2000, "1" * 1979, 1, "::1", 2)
    with pytest.raises(BrokenHeader, match="no CRLF within 4097 bytes"):
        parse(v1_of(4098), TLS_FIRST_READ)


async def _read_off(data: bytes, tls: bool) -> Header | None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(data)
        with trio.fail_after(5):
            return await header_or_none(Conn(ours), "a test listener", tls=tls)


async def test_the_reader_keeps_to_a_plain_listeners_first_read_unless_told_it_is_tls():
    """header_or_none reads within the plain listener's 1024 bytes by default, the TLS one's 4097 with `tls`."""
    header = v2_of(1100)
    assert await _read_off(header + REQUEST, tls=False) is None
    assert await _read_off(header + REQUEST, tls=True) == Header(1100, "1.2.3.4", 1, "5.6.7.8", 2)


async def test_the_reader_takes_a_long_v1_line_and_leaves_the_request():
    """The line is taken to its LF, and the request that follows is left for the codec."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        line = v1_of(900)
        theirs.sendall(line + REQUEST)
        with trio.fail_after(5):
            assert await read_header(Conn(ours)) == Header(900, "1" * 879, 1, "::1", 2)
        assert ours.recv(100) == REQUEST


# --- through the connection loop, on a plain proxy_protocol listener -------------------------------------------------


async def _ok(ex: Exchange) -> None:
    await ex.respond(200, b"ok", b"text/plain")


async def _exchange(nursery: trio.Nursery, data: bytes) -> bytes:
    """The first bytes a loopback plain `proxy_protocol` listener (serve_listener) answers `data` with; b"": closed
    unanswered (a FIN or a reset)."""
    server = ServerSettings(codec_classes("llhttp")[0])
    nursery.start_soon(server.connections.timers.expire_forever)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    await nursery.start(serve_listener, listener, _ok, server, None, True)
    stream = await trio.open_tcp_stream("127.0.0.1", listener.getsockname()[1])
    async with stream:
        await stream.send_all(data)
        with trio.fail_after(5):
            try:
                return await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return b""


async def test_a_plain_listener_answers_after_a_long_v1_line(nursery):
    answer = await _exchange(nursery, b"PROXY TCP6 " + b"1" * 100 + b" ::1 1 2\r\n" + REQUEST)
    assert answer.startswith(b"HTTP/1.1 200")


async def test_a_plain_listener_closes_unanswered_on_a_v2_header_over_its_first_read(nursery):
    assert await _exchange(nursery, v2_of(1025) + REQUEST) == b""
