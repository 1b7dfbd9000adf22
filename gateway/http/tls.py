"""TLS as one more layer between the socket and the codec: `ssl.SSLObject` over two `ssl.MemoryBIO`s.

The standard library's SSLObject does the TLS work in OpenSSL (C) and no I/O of its own: bytes from the socket go
into the incoming BIO, records to send come out of the outgoing one. `TlsConn` drives it with the same raw,
non-blocking socket loop as `Conn` (no thread, no blocking handshake, no trio.SSLStream), so the codec, timers and
send deadlines above it do not know whether a connection is encrypted.

Server side: `server_handshake` looks at the first byte as nginx does, so that a connection that does not start a
handshake is served as plain HTTP (its requests then get nginx's 400 "The plain HTTP request was sent to HTTPS port",
`plain_http_answer`), and a ClientHello whose ALPN list holds none of nginx's protocols is refused as nginx refuses it
(`client_hello_alpn`: Python's ssl would carry on without ALPN). Client side: `client_handshake` for upstream
connections. Either way a handshake that fails raises TlsError with the reason.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import socket
import ssl
import struct
import sys
from typing import TYPE_CHECKING, Any

from gateway.http.dates import NOW
from gateway.http.kong_headers import CHARSET_OFF, KONG_CHARSET
from gateway.http.net import RECV_SIZE, Conn, is_ip

if TYPE_CHECKING:
    from gateway.http.tls_contexts import ClientTls

TLS_HANDSHAKE_RECORD = 0x16  # the first byte of every ClientHello
SSLV2_HELLO = 0x80  # a first byte with this bit: an SSLv2-format ClientHello, which nginx hands to OpenSSL too
log = logging.getLogger("gateway.tls")
# nginx's answer to a plain request on an ssl listener: its status 497 shown as 400 with its own page
# (ngx_http_special_response.c's ngx_http_error_497_page, then the tail of `server_tokens off`, naming the server
# without a version as gateway.http.kong_errors.nginx_page does); Kong's error_page does not list 497, so its error
# handler never renders it. nginx closes the connection after it (ngx_http_special_response_handler: keepalive off).
PLAIN_HTTP_BODY = (b"<html>\r\n<head><title>400 The plain HTTP request was sent to HTTPS port</title></head>\r\n"
                   b"<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n"
                   b"<center>The plain HTTP request was sent to HTTPS port</center>\r\n"
                   b"<hr><center>mcp-gateway</center>\r\n</body>\r\n</html>\r\n")


def plain_http_head_for(charset: str) -> bytes:
    """The head of that 400 up to its Date: text/html with `; charset=<charset>` as nginx's charset filter adds it
    (Kong's `charset UTF-8`, kong.conf's nginx_http_charset; `off`: none)."""
    ctype = b"text/html" if charset == CHARSET_OFF else b"text/html; charset=" + charset.encode()
    return (b"HTTP/1.1 400 Bad Request\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
            % (ctype, len(PLAIN_HTTP_BODY)))


def plain_http_answer(head: bytes, head_only: bool) -> bytes:
    """nginx's 400 for a plain HTTP request on a TLS port (`head` from plain_http_head_for), with this second's Date
    (the whole page unless HEAD)."""
    head += NOW.line + b"Connection: close\r\n\r\n"
    return head if head_only else head + PLAIN_HTTP_BODY


class ListenerContext(ssl.SSLContext):
    """The SSLContext a TLS listener's handshakes start with, carrying what its port answers plain HTTP with (built
    at config load: it depends on the configured charset)."""

    plain_http_head: bytes = plain_http_head_for(KONG_CHARSET)


# --- the ALPN list of a ClientHello --------------------------------------------------------------------------------

# nginx's NGX_HTTP_ALPN_PROTOS (src/http/modules/ngx_http_ssl_module.c:24): what an `ssl` listener without http2
# selects from, in its order of preference
LISTENER_ALPN = ("http/1.1", "http/1.0", "http/0.9")
_LISTENER_ALPN = frozenset(p.encode() for p in LISTENER_ALPN)
# The fatal alert no_application_protocol (120, RFC 7301 section 3.2), in the clear: what OpenSSL sends when nginx's
# ALPN callback finds none of its protocols (SSL_TLSEXT_ERR_ALERT_FATAL, ngx_http_ssl_module.c:528-533)
NO_APPLICATION_PROTOCOL_ALERT = b"\x15\x03\x03\x00\x02\x02\x78"
_MAX_HELLO = 65536  # bytes of ClientHello read ahead for its ALPN list (real ones are under 2 KiB); more: not looked at
_MAX_HELLO_RECORDS = 4  # records it may be split into (a ClientHello fits in one record of 16 KiB)
_MAX_RECORD = 16384  # TLS's largest plaintext record (RFC 8446 section 5.1)
_ALPN_EXTENSION = 16


class Hello(enum.Enum):
    """What client_hello_alpn makes of a connection's first bytes when they give no ALPN list."""

    NO_ALPN = "no ALPN extension, or not a ClientHello OpenSSL would take (it answers those itself)"


def client_hello_alpn(data: bytes | bytearray) -> tuple[bytes, ...] | Hello | int:
    """The ALPN protocol names the ClientHello at the start of `data` offers, read without I/O: an int when `data`
    ends before the ClientHello does (it must grow to at least that many bytes first), Hello.NO_ALPN when it offers
    none, is malformed, or is longer than this looks (_MAX_HELLO, _MAX_HELLO_RECORDS). Every length is checked
    before it is used; the bytes a caller reads ahead are bounded by those limits."""
    message = bytearray()
    pos, need = 0, 0  # need: the handshake message's length with its header, once known
    for _ in range(_MAX_HELLO_RECORDS):
        if len(data) < pos + 5:
            return pos + 5
        if data[pos] != TLS_HANDSHAKE_RECORD or data[pos + 1] != 3:
            return Hello.NO_ALPN
        size = int.from_bytes(data[pos + 3:pos + 5], "big")
        if size == 0 or size > _MAX_RECORD:
            return Hello.NO_ALPN
        if len(data) < pos + 5 + size:
            return pos + 5 + size
        message += data[pos + 5:pos + 5 + size]
        pos += 5 + size
        if not need and len(message) >= 4:
            if message[0] != 1:  # not a ClientHello
                return Hello.NO_ALPN
            need = 4 + int.from_bytes(message[1:4], "big")
            if need > _MAX_HELLO:
                return Hello.NO_ALPN
        if need and len(message) >= need:
            return _alpn_of(memoryview(message)[4:need])
    return Hello.NO_ALPN


def _alpn_of(hello: memoryview) -> tuple[bytes, ...] | Hello:
    """The ALPN list of a ClientHello's body (RFC 8446 section 4.1.2: version, random, session id, cipher suites,
    compression methods, extensions)."""
    end = len(hello)
    pos = 34  # legacy_version, random
    if pos >= end or hello[pos] > 32:
        return Hello.NO_ALPN
    pos += 1 + hello[pos]  # legacy_session_id
    if pos + 2 > end:
        return Hello.NO_ALPN
    pos += 2 + int.from_bytes(hello[pos:pos + 2], "big")  # cipher_suites
    if pos >= end:
        return Hello.NO_ALPN
    pos += 1 + hello[pos]  # legacy_compression_methods
    if pos + 2 > end or pos + 2 + int.from_bytes(hello[pos:pos + 2], "big") != end:
        return Hello.NO_ALPN  # (no extensions, or their length not the rest of the message)
    pos += 2
    seen: set[int] = set()
    names: tuple[bytes, ...] | None = None
    while pos < end:
        if pos + 4 > end:
            return Hello.NO_ALPN
        kind, size = int.from_bytes(hello[pos:pos + 2], "big"), int.from_bytes(hello[pos + 2:pos + 4], "big")
        pos += 4
        if pos + size > end or kind in seen:  # (OpenSSL refuses an extension sent twice)
            return Hello.NO_ALPN
        seen.add(kind)
        if kind == _ALPN_EXTENSION:
            names = _protocol_names(hello[pos:pos + size])
            if names is None:
                return Hello.NO_ALPN
        pos += size
    return Hello.NO_ALPN if names is None else names


def _protocol_names(ext: memoryview) -> tuple[bytes, ...] | None:
    """RFC 7301's ProtocolNameList (a 2-byte length, then names of 1 to 255 bytes, each after its 1-byte length);
    None if malformed, as an empty list or name is to OpenSSL (tls_parse_ctos_alpn: decode_error)."""
    if len(ext) < 3 or int.from_bytes(ext[:2], "big") != len(ext) - 2:
        return None
    names = []
    pos = 2
    while pos < len(ext):
        size = ext[pos]
        if size == 0 or pos + 1 + size > len(ext):
            return None
        names.append(bytes(ext[pos + 1:pos + 1 + size]))
        pos += 1 + size
    return tuple(names)


class TlsError(Exception):
    """A TLS handshake that did not complete (bad input, a certificate refused, the peer gone)."""


class CertificateRefused(TlsError):
    """The peer's certificate failed verification (untrusted, expired, not for the name): perhaps someone in the
    middle."""


class ServerNameRefused(TlsError):
    """OpenSSL would not take the name as the TLS server name (SSL_set_tlsext_host_name: over 255 bytes): the
    request's fault, not the target's, so nginx ends the request with 500 and tries no other target
    (ngx_http_upstream.c, ngx_http_upstream_ssl_init_connection)."""


class PlainHttpOnTlsPort(TlsError):
    """The connection's first byte starts no TLS handshake: nginx reads it as plain HTTP (nothing of it was read)."""


class TlsConn(Conn):
    """A Conn whose bytes are TLS records: recv returns plaintext, sendall takes plaintext."""

    __slots__ = ("_tls", "_in", "_out", "_pushback", "server_name")

    scheme = b"https"

    def __init__(self, sock: socket.socket, peer: tuple[str, int] | None, tls: ssl.SSLObject, incoming: ssl.MemoryBIO,
                 outgoing: ssl.MemoryBIO) -> None:
        super().__init__(sock, peer)
        self._tls = tls
        self._in = incoming
        self._out = outgoing
        self._pushback = b""  # plaintext _poll_records read while watching (a pipelined request)
        self.server_name: bytes | None = b""  # a client's SNI, once server_handshake has read it

    @property
    def tls(self) -> ssl.SSLObject:
        return self._tls

    async def recv(self) -> bytes:
        """Plaintext that is ready, waiting for records if none is; b"" at close_notify, EOF, reset or a TLS error
        (a record that does not decrypt is a broken connection, as a reset is)."""
        if self._pushback:
            data, self._pushback = self._pushback, b""
            return data
        tls = self._tls
        while True:
            try:
                data = tls.read(RECV_SIZE)
            except ssl.SSLWantReadError:
                if self._out.pending:  # e.g. a KeyUpdate answer
                    await Conn.sendall(self, self._out.read())
                raw = await Conn.recv(self)
                if not raw:
                    return b""
                self._in.write(raw)
                continue
            except ssl.SSLZeroReturnError:  # close_notify
                return b""
            except ssl.SSLError:  # a record that does not decrypt: the connection is broken, not ended
                self.reset = True
                return b""
            if self._out.pending:
                await Conn.sendall(self, self._out.read())
            return data

    async def recv_after_wait(self) -> bytes:
        """Like recv, but a socket read waits for readability first (the answer cannot be there yet)."""
        if not (self._pushback or self._in.pending or self._tls.pending()):
            await Conn.wait_readable(self)
        return await self.recv()

    def recv_ready(self) -> bytes | None:
        """Plaintext already readable (or b"" at the end), None if it would have to wait for the socket; records that
        carry no data (tickets) are consumed on the way."""
        if self._pushback:
            data, self._pushback = self._pushback, b""
            return data
        tls = self._tls
        while True:
            try:
                return tls.read(RECV_SIZE)
            except ssl.SSLWantReadError:
                raw = Conn.recv_ready(self)
                if raw is None:
                    return None
                if not raw:
                    return b""
                self._in.write(raw)
            except ssl.SSLZeroReturnError:  # close_notify
                return b""
            except ssl.SSLError:  # a record that does not decrypt: the connection is broken, not ended
                self.reset = True
                return b""

    def _poll_records(self) -> bytes | None:
        """Once the socket polled readable, with no read under way: the plaintext its records carry (kept for the
        next recv), b"" at the end (EOF, reset, close_notify or a broken record), None if there was nothing, or
        only TLS housekeeping (a session ticket). Reads one socket buffer at most: with plaintext (or more than a
        partial record) held already, it only peeks whether the peer closed, as Conn.peer_closed does."""
        if self._pushback or self._in.pending > _MAX_RECORD:
            return self._peek_end()
        try:
            raw = self.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return None
        except OSError:
            self.reset = True
            return b""
        if not raw:
            return b""
        self._in.write(raw)
        try:
            data = self._tls.read(RECV_SIZE)
        except ssl.SSLWantReadError:
            return None
        except ssl.SSLZeroReturnError:
            return b""
        except ssl.SSLError:
            self.reset = True
            return b""
        self._pushback = data
        return data

    def _peek_end(self) -> bytes | None:
        """_poll_records with input held, reading nothing more: b"" if the peer closed (EOF or reset, with nothing
        unread in the socket), else bytes (the plaintext held, or the socket's next byte), None if neither is there.
        A client pipelining an upload while its request waits then stays in the kernel's buffer, as nginx only looks
        for the end there (ngx_http_upstream.c:1415-1470, ngx_http_upstream_check_broken_connection: the EOF flag,
        or recv(.., 1, MSG_PEEK))."""
        try:
            peeked = self.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return self._pushback or None
        except OSError:
            self.reset = True
            return b""
        return (self._pushback or peeked) if peeked else b""

    def peer_closed(self, behind_bytes: bool = True) -> bool | None:
        """Conn.peer_closed through TLS: a close_notify or EOF is the end, and so is a FIN behind plaintext or
        housekeeping (`hung_up`: the socket's, as nginx looks at no record there); session housekeeping alone is not
        (None); plaintext (a pipelined request) is kept for the next recv, and once some is, nothing more is read."""
        data = self._poll_records()
        if data == b"":
            return True
        if behind_bytes and self.hung_up():
            return True
        return None if data is None else False

    def send_now(self, data: bytes) -> int:
        """Nothing goes out this way: ciphertext half-sent would have to be finished before any other record."""
        return 0

    async def sendall(self, data: bytes) -> None:
        """Encrypt and send every byte (bounded by the send timer like any Conn write)."""
        try:
            self._tls.write(data)
        except ssl.SSLError as e:
            raise BrokenPipeError(f"TLS connection no longer writable: {e.reason or e}") from None
        await Conn.sendall(self, self._out.read())

    def pending_input(self) -> bool:
        """For an idle pooled connection: is there anything to read? False only when nothing is, or when what came
        is whole records that carry no data (a session ticket): those are consumed. Anything else is input, as any
        byte is to nginx's idle check (ngx_http_upstream_keepalive_module.c:440, recv MSG_PEEK): plaintext or
        records held from an earlier read, part of a record (its rest may be a late answer), the end, an error.
        One non-blocking socket read at most."""
        if self._pushback or self._in.pending or self._tls.pending():
            return True
        try:
            raw = self.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return False
        except OSError:  # (a reset, or a closed socket)
            return True
        if not raw or not _whole_records(raw):
            return True
        self._in.write(raw)
        try:
            self._tls.read(RECV_SIZE)
        except ssl.SSLWantReadError:
            return False  # housekeeping only
        except ssl.SSLError:  # close_notify, or a record that does not decrypt
            return True
        return True

    def abort(self) -> None:
        """Close with a TCP reset and no close_notify, which would tell the peer the data ended cleanly: nginx ends a
        connection in error without it (ngx_event_openssl.c:3261-3263, ngx_ssl_shutdown: SSL_set_quiet_shutdown)."""
        if not self.closed:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            Conn.close(self)

    def close(self) -> None:
        """Send close_notify when the socket takes it at once, then close (never waits on a peer)."""
        if not self.closed:
            try:
                self._tls.unwrap()
            except (ssl.SSLError, ValueError):
                pass
            if self._out.pending:
                try:
                    self.sock.send(self._out.read())
                except OSError:
                    pass
            Conn.close(self)


def _whole_records(data: bytes) -> bool:
    """Does `data` end where a TLS record ends (each record a 5-byte header with its length, then that many bytes)?
    Read from a record's start: OpenSSL takes a record's bytes off the BIO only as it reads that record, so an
    idle connection's socket starts at one."""
    pos, end = 0, len(data)
    while pos + 5 <= end:
        pos += 5 + int.from_bytes(data[pos + 3:pos + 5], "big")
    return pos == end


# Where a server context's sni_callback leaves the name the client sent, on the SSLObject (Python's ssl module
# hands the name only to that callback)
SEEN_SNI = "_gateway_server_name"


def _new(ctx: ssl.SSLContext, conn: Conn, server_side: bool, server_hostname: str | None) -> TlsConn:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    if server_hostname is None:
        tls = ctx.wrap_bio(incoming, outgoing, server_side=server_side)
    else:
        tls = _wrap_client(ctx, incoming, outgoing, server_hostname)
    tconn = TlsConn(conn.sock, conn.peer, tls, incoming, outgoing)
    tconn.send_timer = conn.send_timer
    tconn.send_timeout = conn.send_timeout
    tconn.listen_port = conn.listen_port
    tconn.serial = conn.serial
    return tconn


def _wrap_client(ctx: ssl.SSLContext, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, name: str) -> ssl.SSLObject:
    """A client TLS object sending `name` as the SNI as nginx does (SSL_set_tlsext_host_name, no IDNA check: as
    bytes, Python's idna codec is skipped, which refuses a label over 63 bytes). A name Python's ssl cannot send at
    all (a leading dot, not ASCII) goes without SNI, or fails the handshake where the certificate must match it; one
    OpenSSL refuses (too long) raises ServerNameRefused, as nginx fails the request for it."""
    try:
        return ctx.wrap_bio(incoming, outgoing, server_side=False, server_hostname=name.encode("ascii"))
    except ssl.SSLError as e:
        shown = repr(name if len(name) <= 64 else name[:64] + "...")  # (a client may have sent it: kept short)
        raise ServerNameRefused(f"OpenSSL refuses the TLS server name {shown} ({len(name)} bytes; it takes up to "
                                f"255): {e.reason or e}") from None
    except (UnicodeError, ValueError, TypeError):
        if ctx.check_hostname:
            raise TlsError(f"the upstream name {name[:255]!r} cannot be sent as a TLS server name") from None
        return ctx.wrap_bio(incoming, outgoing, server_side=False)


async def _drive(tconn: TlsConn, first: bytes | bytearray = b"") -> None:
    """Run the handshake to its end, reading and writing through the raw socket."""
    tls = tconn.tls
    if first:
        tconn._in.write(first)
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            if tconn._out.pending:
                await Conn.sendall(tconn, tconn._out.read())
            raw = await Conn.recv(tconn)
            if not raw:
                raise TlsError("the peer closed the connection during the TLS handshake") from None
            tconn._in.write(raw)
        except ssl.SSLCertVerificationError as e:
            raise CertificateRefused(f"certificate verification failed: {e.verify_message}") from None
        except ssl.SSLError as e:
            if tconn._out.pending:  # an alert for the peer
                try:
                    tconn.sock.send(tconn._out.read())
                except OSError:
                    pass
            raise TlsError(f"TLS handshake failed: {e.reason or e}") from None
    if tconn._out.pending:
        await Conn.sendall(tconn, tconn._out.read())


def quiet_bad_server_names() -> None:
    """Python's ssl module decodes a ClientHello's server name as ASCII before the SNI callback; a name that is not
    (RFC 6066 allows A-labels only) fails the handshake with an internal_error alert, and goes to sys.unraisablehook
    as a traceback, one per handshake: any client could fill the log. Those become one debug line each."""
    previous = sys.unraisablehook
    if getattr(previous, "quiets_server_names", False):
        return

    def hook(unraisable: Any) -> None:
        if unraisable.exc_type is UnicodeDecodeError and type(unraisable.object) is bytes:
            log.debug("TLS handshake refused: a server name that is not ASCII (%r)", unraisable.object[:64])
            return
        previous(unraisable)

    hook.quiets_server_names = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


async def server_handshake(ctx: ListenerContext, conn: Conn) -> TlsConn:
    """The server side of a handshake on an accepted connection; PlainHttpOnTlsPort, with nothing read, when the
    first byte starts none (nginx's test, ngx_http_request.c:754-803, ngx_http_ssl_handshake: 0x16 or a byte with
    the high bit set is a handshake, anything else plain HTTP); TlsError when it fails (a ClientHello offering ALPN
    but no HTTP/1.x is refused with no_application_protocol). Bounded by the caller's timer."""
    first_byte = await _peek_first_byte(conn)
    if first_byte is None:
        raise TlsError("the peer closed the connection before a ClientHello")
    if first_byte != TLS_HANDSHAKE_RECORD and not first_byte & SSLV2_HELLO:
        raise PlainHttpOnTlsPort("plain HTTP on a TLS port")
    first = await Conn.recv(conn)
    if not first:
        raise TlsError("the peer closed the connection before a ClientHello")
    hello = await _whole_client_hello(conn, first)
    tconn = _new(ctx, conn, True, None)
    await _drive(tconn, hello)
    name = getattr(tconn.tls, SEEN_SNI, None)
    if name:
        tconn.server_name = name.encode()  # as sent: Kong's router reads ngx.ssl.server_name(), any case
    return tconn


async def _peek_first_byte(conn: Conn) -> int | None:
    """The connection's first byte, left for whoever reads it (nginx's recv(.., 1, MSG_PEEK)); None at EOF or reset."""
    while True:
        try:
            data = conn.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            await conn.wait_readable()
            continue
        except OSError:
            return None
        return data[0] if data else None


async def _whole_client_hello(conn: Conn, first: bytes) -> bytes | bytearray:
    """The connection's first bytes read on to the end of its ClientHello (bounded: client_hello_alpn), which is
    refused, with nginx's alert, if it offers ALPN protocols and none of LISTENER_ALPN."""
    data: bytes | bytearray = first
    offered = client_hello_alpn(data)
    if isinstance(offered, int):  # (rare: a ClientHello in several segments or records)
        data = bytearray(first)
        while isinstance(offered, int):
            while len(data) < offered:
                more = await Conn.recv(conn)
                if not more:
                    raise TlsError("the peer closed the connection during its ClientHello")
                data += more
            offered = client_hello_alpn(data)
    if isinstance(offered, tuple) and _LISTENER_ALPN.isdisjoint(offered):
        try:
            await conn.sendall(NO_APPLICATION_PROTOCOL_ALERT)
        except OSError:
            pass
        shown = b", ".join(offered[:8]).decode("ascii", "backslashreplace")
        raise TlsError(f"the client offers ALPN {shown[:200]} and none of {', '.join(LISTENER_ALPN)}: refused with "
                       "the no_application_protocol alert, as nginx refuses it")
    return data


async def client_handshake(tls: ClientTls, conn: Conn, server_hostname: str) -> TlsConn:
    """The client side of a handshake on a connected upstream socket (SNI = server_hostname, unless an address).
    A certificate refused is logged, with the target and the reason, whether or not the request is retried
    elsewhere, as nginx logs each ("upstream SSL certificate verify error")."""
    ctx, address = tls.context, False
    if tls.verify and is_ip(server_hostname):
        ctx, address = tls.address_context(), True
    tconn = _new(ctx, conn, False, server_hostname)
    try:
        await _drive(tconn)
        if address and not names_address(tconn.tls.getpeercert() or {}, server_hostname):
            raise CertificateRefused(f"certificate verification failed: IP address mismatch, certificate is not "
                                     f"valid for {server_hostname!r}.")  # (Python's own words for it)
    except CertificateRefused as e:
        peer = conn.peer
        where = f"{peer[0]}:{peer[1]}" if peer is not None else "?"
        log.warning("TLS with upstream %s (name %r): %s", where, server_hostname, e)
        raise
    return tconn


def names_address(cert: dict[str, Any], address: str) -> bool:
    """Whether a verified certificate (getpeercert()) is valid for an address: one of its IP SANs (RFC 6125), or, as
    nginx's X509_check_host takes the address for a name, one of its DNS SANs, or with none of those its subject's
    CN. Python's own check looks at the IP SANs only: certificates made with `-subj /CN=<ip>` would be refused."""
    ip = ipaddress.ip_address(address)
    name = address.lower()
    dns_san = False
    for kind, value in cert.get("subjectAltName", ()):
        if kind == "IP Address":
            try:
                if ipaddress.ip_address(value.strip()) == ip:
                    return True
            except ValueError:
                pass
        elif kind == "DNS":
            dns_san = True
            if value.lower() == name:
                return True
    return not dns_san and any(key == "commonName" and value.lower() == name
                               for rdn in cert.get("subject", ()) for key, value in rdn)
