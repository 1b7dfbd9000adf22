"""The PROXY protocol header a balancer in `mode tcp` (HAProxy's send-proxy / send-proxy-v2) puts before a client's
bytes, read as nginx 1.27.1 reads it on a `listen ... proxy_protocol` (src/core/ngx_proxy_protocol.c).

`parse(data, limit)` is sans-I/O: the header at the start of `data`, None while more bytes could still complete it
(every byte so far is then part of it), BrokenHeader when no continuation can (nginx logs "broken header" and closes).
v1 is one text line, `PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\r\n` or `PROXY UNKNOWN...\r\n` (its addresses
any run of hex digits, `:` and `.`); v2 a 16-byte binary head (signature, version 2, command, family and transport,
length) and that many bytes of addresses and TLVs, which are skipped. A header with no address to take (v1 UNKNOWN;
v2 LOCAL, a transport other than STREAM, a family other than INET/INET6) is a header all the same: the connection
goes on with its peer's address. nginx parses the header from its first read alone, so that read's size is the
limit of either version: `limit`, the client_header_buffer_size (1k) a plain listener reads into
(ngx_http_wait_request_handler), or the 4097 bytes a TLS listener peeks before its handshake (ngx_http_ssl_handshake);
here the header may come in several reads (TCP may cut it anywhere), within that limit. `read_header(conn)` reads one
off a new connection without reading past it, so what follows (a TLS ClientHello, a request) is read as if the
header had never been there.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
from typing import NamedTuple

from gateway.http.codec import FIRST_BUFFER_BYTES
from gateway.http.net import Conn
from gateway.http.realip import ntop

log = logging.getLogger("gateway.proxy_protocol")

MAX_HEADER = 4096  # NGX_PROXY_PROTOCOL_MAX_HEADER
# What nginx 1.27.1 parses the header from, all of it there or the connection closed (src/http/ngx_http_request.c):
# a plain listener's first read into its client_header_buffer_size buffer (468-471), a TLS listener's peek into
# `u_char buf[NGX_PROXY_PROTOCOL_MAX_HEADER + 1]` (666, 694-729).
PLAIN_FIRST_READ = FIRST_BUFFER_BYTES
TLS_FIRST_READ = MAX_HEADER + 1
SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"  # v2's first 12 bytes
_V2_HEAD = 16
_V1_START = b"PROXY "
_UNKNOWN = b"UNKNOWN"
_ADDRESS_BYTES = frozenset(b":.0123456789abcdefABCDEF")  # ngx_proxy_protocol_read_addr's
_DIGITS = frozenset(b"0123456789")
_INET, _INET6 = 1, 2  # v2 address families (the high nibble of byte 13)
_INET_BLOCK = struct.Struct("!4s4sHH")
_INET6_BLOCK = struct.Struct("!16s16sHH")
_SHOWN = 120  # bytes of a broken header quoted in its message


class Header(NamedTuple):
    """A PROXY header: its `length` in bytes, and the client's address and port as the balancer saw them (with its
    own, `destination`), or None and 0 where the header gives none."""

    length: int
    source: str | None = None
    source_port: int = 0
    destination: str | None = None
    destination_port: int = 0


class BrokenHeader(ValueError):
    """Bytes that are no PROXY header: the connection is closed unanswered. The message is nginx's log line."""


def parse(data: bytes | bytearray, limit: int = PLAIN_FIRST_READ) -> Header | None:
    """The PROXY header `data` starts with, whole within its first `limit` bytes (nginx's first read: PLAIN_FIRST_READ
    or TLS_FIRST_READ); None when it is a beginning of one (all of it header bytes: read more); raises BrokenHeader
    when it is none and cannot become one."""
    if (len(data) < len(SIGNATURE) and SIGNATURE.startswith(data)) or data[:len(SIGNATURE)] == SIGNATURE:
        return _v2(data, limit)
    return _v1(data, limit)


def _v1(data: bytes | bytearray, limit: int) -> Header | None:
    """ngx_proxy_protocol_read's text form, step for step; where nginx would find the end of its read, None."""
    line = bytes(data[:limit])
    header = _v1_line(line)
    if header is None and len(line) == limit:
        raise _broken(line, f"no CRLF within {limit} bytes, nginx's first read")
    return header


def _v1_line(line: bytes) -> Header | None:
    """The header the bytes of nginx's first read hold, None if they hold a beginning of one."""
    if not line.startswith(_V1_START):
        if _V1_START.startswith(line):
            return None
        raise _broken(line)
    p = len(_V1_START)
    rest = line[p:]
    if rest.startswith(_UNKNOWN):  # the rest of the line, whatever it is, is skipped
        end = line.find(b"\r\n", p + len(_UNKNOWN))
        return Header(end + 2) if end >= 0 else None
    if _UNKNOWN.startswith(rest) or b"TCP4 ".startswith(rest) or b"TCP6 ".startswith(rest):
        return None
    if rest[:3] != b"TCP" or len(rest) < 5 or rest[3] not in b"46" or rest[4] != 0x20:
        raise _broken(line)
    p += 5
    fields: list[bytes] = []
    for _ in range(2):  # the addresses: ngx_proxy_protocol_read_addr (not checked further: realip parses the source)
        end = line.find(b" ", p)
        field = line[p:] if end < 0 else line[p:end]
        if not _ADDRESS_BYTES.issuperset(field):
            raise _broken(line)
        if end < 0:
            return None
        fields.append(field)
        p = end + 1
    ports: list[int] = []
    for separator in (b" ", b"\r"):  # the ports: ngx_proxy_protocol_read_port, ngx_atoi and at most 65535
        end = line.find(separator, p)
        field = line[p:] if end < 0 else line[p:end]
        if not _DIGITS.issuperset(field) or (field and int(field) > 65535):
            raise _broken(line)
        if end < 0:
            return None
        if not field:
            raise _broken(line)
        ports.append(int(field))
        p = end + 1
    if p == len(line):
        return None
    if line[p] != 0x0A:  # the LF after the CR
        raise _broken(line)
    return Header(p + 1, fields[0].decode(), ports[0], fields[1].decode(), ports[1])


def _v2(data: bytes | bytearray, limit: int) -> Header | None:
    """ngx_proxy_protocol_v2_read: the addresses of a PROXY command over STREAM in INET or INET6; any other command,
    transport or family is a header without an address. Longer than `limit`, it is "header is too large"."""
    if len(data) < _V2_HEAD:
        return None
    version, command = data[12] >> 4, data[12] & 0x0F
    if version != 2:
        raise BrokenHeader(f"unknown PROXY protocol version: {version}")
    length = _V2_HEAD + int.from_bytes(data[14:16], "big")
    if length > limit:
        raise BrokenHeader(f"header is too large: a v2 header of {length} bytes, over nginx's first read of {limit}")
    if len(data) < length:
        return None
    family, transport = data[13] >> 4, data[13] & 0x0F
    if command != 1 or transport != 1 or family not in (_INET, _INET6):  # (LOCAL is 0; STREAM 1)
        return Header(length)
    block = _INET_BLOCK if family == _INET else _INET6_BLOCK
    if length - _V2_HEAD < block.size:
        raise BrokenHeader(f"broken header: a v2 {'INET' if family == _INET else 'INET6'} address block of "
                           f"{length - _V2_HEAD} bytes (at least {block.size})")
    src, dst, src_port, dst_port = block.unpack_from(data, _V2_HEAD)
    return Header(length, _text(src), src_port, _text(dst), dst_port)


def _text(packed: bytes) -> str:
    """An address as nginx writes it (ngx_sock_ntop)."""
    return socket.inet_ntop(socket.AF_INET, packed) if len(packed) == 4 else ntop(ipaddress.IPv6Address(packed))


def _broken(line: bytes, why: str = "") -> BrokenHeader:
    """nginx's "broken header" with the header's first line, as it quotes it (up to the first CR or LF)."""
    shown = line.split(b"\r", 1)[0].split(b"\n", 1)[0][:_SHOWN].decode("ascii", "backslashreplace")
    return BrokenHeader(f'broken header: "{shown}"' + (f" ({why})" if why else ""))


async def read_header(conn: Conn, limit: int = PLAIN_FIRST_READ) -> Header:
    """Read the PROXY header off a new connection and nothing past it (peeked, then taken to its end): the TLS
    handshake or the request that follows reads the rest. BrokenHeader for bytes that are none or a header longer
    than `limit` (parse's); EOFError when the peer closes (or resets) before the header is whole. Bounded by the
    caller's deadline."""
    sock = conn.sock
    taken = b""
    while True:
        try:
            peeked = sock.recv(limit - len(taken), socket.MSG_PEEK)
        except BlockingIOError:
            await conn.wait_readable()
            continue
        except OSError as e:
            raise EOFError(f"reset the connection before its PROXY protocol header was whole ({e})") from None
        if not peeked:
            raise EOFError("closed the connection before its PROXY protocol header was whole")
        header = parse(taken + peeked, limit)
        taken += sock.recv(len(peeked) if header is None else header.length - len(taken))  # (peeked: all there)
        if header is not None and len(taken) == header.length:
            return header


async def header_or_none(conn: Conn, where: str, tls: bool = False) -> Header | None:
    """read_header within nginx's first read of a plain listener, or of a TLS one (`tls`), or None when the
    connection is to close unanswered, as nginx closes it: the header is broken or too long (logged as an error,
    naming `where`, the listener) or the peer left before it was whole (logged as info)."""
    try:
        return await read_header(conn, TLS_FIRST_READ if tls else PLAIN_FIRST_READ)
    except BrokenHeader as e:
        log.error("%s: %s from %s: connection closed (is the balancer in front sending the PROXY protocol, e.g. "
                  "HAProxy's send-proxy-v2?)", where, e, conn.peer)
    except (EOFError, OSError) as e:
        log.info("%s: client %s %s", where, conn.peer, e)
    return None
