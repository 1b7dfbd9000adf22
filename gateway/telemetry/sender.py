"""Sending a batch to a collector over HTTP/1.1 (http-log, OTLP/HTTP, Zipkin): the proxy's own upstream codec
(llhttp) on a Trio stream, TLS with Trio's SSL stream for https, kept-alive connections in a pool per sender. A log
entry per request goes this way with Kong's defaults (http-log's batch of one), so a send is a few joins and a parse.

Each phase has its own bound, as Kong's senders do: connecting (connect_timeout), sending the request (send_timeout),
reading the response (read_timeout), 0 being the cosocket's default, 60 s (socket_timeout). A 2xx answer is success,
as Kong's http-log counts any status below 300 as delivered (one whose body passes MAX_RESPONSE_BYTES too: the rest is
not read, the connection is closed); anything else, a timeout or a broken connection raises SendError, which the batch
queue retries and logs after "handler could not process entries: ": its message is the plugin's Kong words
(`Wording`) around ngx_lua's cosocket error ("timeout", "connection refused", "closed"...) or the answer's status.
The connection is reused for the next batch when the exchange ended cleanly and it was idle less than `keepalive`
seconds; otherwise a new one is opened. Each send has a connection to itself (Kong's senders make a client
per send): concurrent sends (a queue's concurrency_limit -1, at most batch.MAX_CONCURRENT_SENDS) each take an idle one
or open their own, and at most POOL_SIZE stay idle afterwards.
"""

from __future__ import annotations

import base64
import re
import ssl
from typing import Generic, NamedTuple, TypeVar
from urllib.parse import unquote, urlsplit

import trio

from gateway.http.codec import END, LENGTH, NEED_DATA, ProtocolError, Response
from gateway.http.codec_llhttp import LlhttpClient
from gateway.http.net import NameNotResolved, open_tcp_stream
from gateway.http.tls_contexts import client_context
from gateway.lua_socket import socket_error, socket_timeout

# a collector's answer is read (for its status) and discarded up to this much; past it, a 2xx answer is delivered
# and its connection closed, any other is a SendError
MAX_RESPONSE_BYTES = 1 << 20
# of a failed answer's body, the bytes its error line quotes: nginx cuts an error log line at NGX_MAX_ERROR_STR
# (2048 bytes), so Kong's line never shows more
BODY_SHOWN = 2048
# control characters of a quoted body or reason, escaped: a collector's answer cannot break the error log's lines
_ESCAPED = {c: f"\\x{c:02x}" for c in (*range(32), 127)}
# X509_V_ERR_HOSTNAME_MISMATCH, which ngx_lua does not report by code: it checks the name itself
_HOSTNAME_MISMATCH = 62
POOL_SIZE = 30  # idle connections a sender keeps: ngx_lua's lua_socket_pool_size, which Kong's senders' pools have
C = TypeVar("C")
# lua-resty-http 0.17.2's parse_uri pattern (lib/resty/http.lua:258-262): PCRE without flags, so "." takes no line
# feed and "\d" only ASCII digits; case-sensitive (HTTP:// is no scheme to it)
_RESTY_URI = re.compile(r"(?:(https?):)?//([^\[\]:/?]+|\[.+\])(?::([0-9]+))?([^?]*)\??(.*)")
_BAD_URI = ("lua-resty-http, which Kong sends with, refuses it (\"bad uri\"), so every send would fail: it takes "
            "http:// or https:// in lower case, then a host name, or an IPv6 address in brackets")


class SendError(Exception):
    """A batch could not be delivered; the message says where and why."""


class CosocketError(SendError):
    """No answer: `err` is ngx_lua's cosocket error for it ("timeout", "connection refused", "closed"...), maybe
    followed by a detail of the gateway's in parentheses; the message is `where`: `err`."""

    def __init__(self, where: str, err: str) -> None:
        super().__init__(f"{where}: {err}")
        self.err = err


class HandshakeError(CosocketError):
    """The TLS handshake failed, after the TCP connect (Kong's tcp-log words it apart)."""


class _NothingBack(CosocketError):
    """The exchange failed before any byte of an answer came: on a kept-alive connection, the collector had closed it
    while idle, and the request is sent again on a new one (once; never after an answer began or a timeout)."""


class Wording:
    """The messages of an HttpSender's failures, which the queue logs after "handler could not process entries: ":
    these name the endpoint; a plugin's subclass has its Kong plugin's words."""

    def __init__(self, where: str = "") -> None:
        self.where = where

    def failed(self, err: str) -> str:
        """No answer; `err` is the cosocket's error (CosocketError.err)."""
        return f"{self.where}: {err}"

    def answered(self, status: int, reason: str, body: str) -> str:
        """An answer that is no success: its status, reason phrase and (the start of) its body, escaped."""
        return f"{self.where}: the collector answered {status}"


class Endpoint:
    """A parsed collector URL: scheme, host, port, request target, and Basic credentials from its userinfo."""

    __slots__ = ("url", "scheme", "host", "port", "target", "authorization", "host_header")

    def __init__(self, url: str) -> None:
        # No message quotes the URL or a part of it: its user info may be a password (a vault reference's secret).
        try:
            parts = urlsplit(url)
        except ValueError as e:
            raise ValueError(f"not a valid URL: {_unparsable(e)}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("expected an http:// or https:// URL with a host")
        self.url = url
        self.scheme = parts.scheme
        self.host = parts.hostname
        try:
            port = parts.port
        except ValueError:
            raise ValueError("invalid port: expected a number from 0 to 65535 after the host's colon") from None
        self.port = port or (443 if parts.scheme == "https" else 80)
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.authorization: bytes | None = None
        if parts.username is not None:  # Kong's http-log: userinfo becomes Basic authentication
            userinfo = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self.authorization = b"Basic " + base64.b64encode(userinfo.encode())
        shown = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if parts.scheme == "https" else 80
        self.host_header = (shown if self.port == default else f"{shown}:{self.port}").encode()

    @classmethod
    def of(cls, url: str, uri: RestyUri, authorization: bytes | None = None) -> Endpoint:
        """The collector lua-resty-http's request_uri reaches for `uri` (Kong's reading of `url`): its host as the
        Host header (with the port unless the scheme's default, http.lua:717-733), without brackets to connect."""
        endpoint = cls.__new__(cls)
        endpoint.url, endpoint.scheme, endpoint.port, endpoint.target = url, uri.scheme, uri.port, uri.target
        endpoint.host = uri.host[1:-1] if uri.host.startswith("[") else uri.host
        endpoint.authorization = authorization
        default = 443 if uri.scheme == "https" else 80
        endpoint.host_header = (uri.host if uri.port == default else f"{uri.host}:{uri.port}").encode()
        return endpoint

    def __str__(self) -> str:
        path = self.target.split("?", 1)[0]
        # (a path with an "@" may be a user info that lua-resty-http took for the path: not shown)
        return f"{self.scheme}://{self.host}:{self.port}{'' if '@' in path else path}"


class RestyUri(NamedTuple):
    """What lua-resty-http's request_uri connects to and requests."""

    scheme: str  # "http" or "https"
    host: str  # as written: an IPv6 address keeps its brackets
    port: int
    target: str  # the path ("/" for none), then "?" and the query when it has one


def resty_parse_uri(uri: str) -> RestyUri | None:
    """lua-resty-http 0.17.2's parse_uri(uri, false) (http.lua:255-307), as request_uri calls it (:914), and the
    request target _format_request makes of its path and query (:314-329); None for its "bad uri" (or a url without
    a scheme, which needs a request's, :273-286)."""
    m = _RESTY_URI.match(uri)
    if m is None or m[1] is None:
        return None
    scheme, host, port, path, query = m.groups()
    if query and not query.startswith("?"):
        query = "?" + query
    digits = (port.lstrip("0") or "0") if port else None
    # (tonumber of the digits; past 6 of them, 65536 serves: past ngx_lua's ports as well)
    number = (443 if scheme == "https" else 80) if digits is None else int(digits) if len(digits) <= 6 else 65536
    return RestyUri(scheme, host, number, (path or "/") + query)


def request_uri_endpoint(url: str) -> Endpoint:
    """`url` as Kong's opentelemetry and zipkin senders reach it: lua-resty-http's request_uri reads it itself, not
    socket.url (a user info is nothing to it: `http://u:p@h/x` is host u and path :p@h/x). ValueError where every
    send would fail before it connects."""
    if not url.startswith(("http://", "https://")):
        raise ValueError("expected an http:// or https:// URL, in lower case: lua-resty-http, which Kong sends with, "
                         "takes no other (\"bad uri\"), so every send would fail")
    uri = resty_parse_uri(url)
    if uri is None:
        raise ValueError(_BAD_URI)
    check_port(uri.port)
    return Endpoint.of(url, uri)


def check_port(port: int) -> None:
    """ngx_lua's connect takes a port from 0 to 65535 (ngx_http_lua_socket_tcp.c: "bad port number" otherwise)."""
    if not 0 <= port <= 65535:
        raise ValueError("invalid port: Kong's sender reads a number past 65535, which ngx_lua's connect refuses "
                         "(\"bad port number\"), so every send would fail; give a port from 0 to 65535")


def _unparsable(error: ValueError) -> str:
    """Why urlsplit refused a URL, in words that do not quote it (its own messages quote the netloc or the host)."""
    text = str(error)
    if "NFKC" in text:
        return "its host or user info holds a character that Unicode normalization (NFKC) makes one of / ? # @ :"
    if "IPv4 or IPv6" in text:
        return "the host in brackets is not an IP address (brackets hold an IPv6 address, as in http://[::1]:8080/)"
    if "IPv6" in text:
        return "a [ or ] of the host is unbalanced (an IPv6 address is written http://[::1]:8080/)"
    return "it cannot be split into scheme, host and path"


def kept_alive(idle_since: float, keepalive: float) -> bool:
    """Whether a connection idle since `idle_since` may be reused: idle less than `keepalive` seconds, or forever
    with 0 (ngx_lua's setkeepalive(0), which Kong's senders call with the plugin's keepalive)."""
    return keepalive == 0 or trio.current_time() - idle_since < keepalive


async def connect(host: str, port: int, *, tls: bool, server_hostname: str | None, verify: bool, timeout: float,
                  where: str) -> trio.abc.Stream:
    """A TCP stream to a collector, TLS when `tls` (SNI `server_hostname`, certificate and name checked only with
    `verify`): the connect, then the handshake, each within `timeout` seconds, as a cosocket's connect timeout bounds
    both. CosocketError (HandshakeError for the handshake) naming `where` when it cannot be had."""
    try:
        with trio.fail_after(timeout):
            stream: trio.abc.Stream = await open_tcp_stream(host, port)
    except trio.TooSlowError:
        raise CosocketError(where, f"timeout (no connection within {timeout:g}s)") from None
    except NameNotResolved as e:  # Kong's words, from its patched connect
        raise CosocketError(where, f"DNS resolution failed: {e.reason}") from None
    except OSError as e:
        raise CosocketError(where, socket_error(e)) from None
    if not tls:
        return stream
    # verified against kong.conf's lua_ssl_trusted_certificate (gateway.http.tls_contexts)
    secure = trio.SSLStream(stream, client_context(verify), server_hostname=server_hostname)
    try:
        with trio.fail_after(timeout):
            await secure.do_handshake()
    except trio.TooSlowError:
        await close_quietly(stream)
        raise HandshakeError(where, f"timeout (no TLS handshake within {timeout:g}s)") from None
    except (OSError, trio.BrokenResourceError) as e:
        await close_quietly(stream)
        raise HandshakeError(where, handshake_error(e)) from None
    return secure


def handshake_error(error: BaseException) -> str:
    """ngx_lua's sslhandshake error (lua-resty-core prefixes OpenSSL's verify code): "20: unable to get local issuer
    certificate", "certificate host mismatch", else "handshake failed", with what went wrong in parentheses."""
    cause = error.__cause__ if isinstance(error, trio.BrokenResourceError) else error
    if isinstance(cause, ssl.SSLCertVerificationError):
        if cause.verify_code == _HOSTNAME_MISMATCH:
            return "certificate host mismatch"
        return f"{cause.verify_code}: {cause.verify_message}"
    detail = (cause.reason or cause) if isinstance(cause, ssl.SSLError) else socket_error(error)
    return f"handshake failed ({detail})"


def shown(data: bytes) -> str:
    """A collector's answer (body or reason) as an error line quotes it: its first BODY_SHOWN bytes, control
    characters escaped, "..." after when there was more."""
    text = data[:BODY_SHOWN].decode("utf-8", "replace").translate(_ESCAPED)
    return text + "..." if len(data) > BODY_SHOWN else text


class IdlePool(Generic[C]):
    """The connections a sender keeps alive between sends, the last used first out. A send takes one for itself, so
    concurrent sends never share one. Bookkeeping only, no await: what is to be closed is returned to the caller."""

    def __init__(self, keepalive: float, size: int = POOL_SIZE) -> None:
        self.keepalive = keepalive
        self.size = size
        self._idle: list[tuple[C, float]] = []  # (connection, idle since), the most recently used last

    def __len__(self) -> int:
        return len(self._idle)

    def take(self) -> tuple[C | None, list[C]]:
        """The most recently used connection if idle less than keepalive (else None: open one), and those to close:
        when it has been idle too long, so have all the others."""
        idle = self._idle
        if not idle:
            return None, []
        conn, since = idle.pop()
        if kept_alive(since, self.keepalive):
            return conn, []
        expired = [conn, *(c for c, _ in idle)]
        idle.clear()
        return None, expired

    def give(self, conn: C) -> C | None:
        """Keep `conn`, idle from now; returns it to close when POOL_SIZE are idle already."""
        if len(self._idle) >= self.size:
            return conn
        self._idle.append((conn, trio.current_time()))
        return None

    def clear(self) -> list[C]:
        """Forget every idle connection; returns them to close."""
        conns = [c for c, _ in self._idle]
        self._idle.clear()
        return conns


async def close_quietly(stream: trio.abc.Stream) -> None:
    """Close a collector connection, even from a cancelled task, within half a second, whatever state it is in."""
    with trio.CancelScope(shield=True), trio.move_on_after(0.5):
        try:
            await stream.aclose()
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError):
            pass


class _Answer(NamedTuple):
    """A collector's answer: its status, reason phrase, and a failed one's body (up to BODY_SHOWN bytes and a
    chunk)."""

    status: int
    reason: bytes
    body: bytes


class _Connection:
    """A kept-alive connection to a collector and its codec."""

    __slots__ = ("stream", "codec")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.codec = LlhttpClient()


class HttpSender:
    """POSTs (or PUTs, PATCHes) bodies to one endpoint; concurrent sends each use a connection of their own."""

    def __init__(self, endpoint: Endpoint, headers: list[tuple[bytes, bytes]] | None = None, *,
                 connect_timeout: float = 10.0, send_timeout: float = 10.0, read_timeout: float = 10.0,
                 keepalive: float = 60.0, verify: bool = False, configured_host: bool = False,
                 only_200: bool = False, wording: Wording | None = None) -> None:
        """Timeouts in seconds, taken as a cosocket takes them (socket_timeout). `verify`: check an https
        collector's certificate and name against the trust store. `configured_host`: a Host in `headers` is sent in
        place of the endpoint's (lua-resty-http's rule, which Kong's opentelemetry keeps; http-log drops it).
        `only_200`: an answer but 200 is a failed send (Kong's opentelemetry export); else any 2xx is delivered.
        `wording`: the SendError messages (the plugin's Kong words; by default, the endpoint's)."""
        self.endpoint = endpoint
        self.headers = headers or []
        self.only_200 = only_200
        self.wording = wording or Wording(str(endpoint))
        host = next((v for n, v in self.headers if n.lower() == b"host"), None) if configured_host else None
        self.host_header = host if host is not None else endpoint.host_header
        self.connect_timeout = socket_timeout(connect_timeout)
        self.send_timeout = socket_timeout(send_timeout)
        self.read_timeout = socket_timeout(read_timeout)
        self.keepalive = keepalive
        # lua-resty-http verifies unless told not to: Kong's http-log passes ssl_verify = false, its opentelemetry
        # and zipkin senders nothing
        self.verify = verify
        self._pool: IdlePool[_Connection] = IdlePool(keepalive)
        # what every request carries after Host, Content-Type and Content-Length: the userinfo's Authorization,
        # then the configured headers but those (the sender's own win)
        own = [(b"authorization", endpoint.authorization)] if endpoint.authorization is not None else []
        taken = {b"host", b"content-type", b"content-length", *(name for name, _ in own)}
        self._tail = own + [(n, v) for n, v in self.headers if n.lower() not in taken]
        self._target = endpoint.target.encode()

    async def send(self, body: bytes, content_type: bytes, method: bytes = b"POST") -> int:
        """Send one request; returns the 2xx status, or raises SendError (its message the wording's)."""
        headers = [(b"host", self.host_header), (b"content-type", content_type),
                   (b"content-length", b"%d" % len(body)), *self._tail]
        conn, expired = self._pool.take()
        for old in expired:
            await close_quietly(old.stream)
        answer = _Answer(0, b"", b"")
        try:
            for retry in (conn is not None, False):
                if conn is None:
                    conn = _Connection(await self._connect())
                try:
                    answer = await self._exchange(conn, method, headers, body)
                    break
                except _NothingBack:  # on a kept-alive connection: closed by the collector while idle, so sent again
                    await close_quietly(conn.stream)
                    conn = None
                    if not retry:
                        raise
                except BaseException:
                    await close_quietly(conn.stream)
                    raise
        except CosocketError as e:
            raise SendError(self.wording.failed(e.err)) from None
        status = answer.status
        if not self._delivered(status):  # (the connection is kept when the answer allowed it, as lua-resty-http does)
            raise SendError(self.wording.answered(status, shown(answer.reason), shown(answer.body)))
        return status

    def _delivered(self, status: int) -> bool:
        """Whether an answer with `status` delivered the batch: a 2xx (only 200 with only_200)."""
        return status == 200 if self.only_200 else 200 <= status < 300

    async def _exchange(self, conn: _Connection, method: bytes, headers: list[tuple[bytes, bytes]],
                        body: bytes) -> _Answer:
        """One request and its answer (a failed one's body kept for its message, up to BODY_SHOWN bytes); the
        connection is kept for the next when the answer allows it. CosocketError when no whole answer came."""
        ep = str(self.endpoint)
        stream, codec = conn.stream, conn.codec
        try:
            with trio.fail_after(self.send_timeout):
                await stream.send_all(codec.request_head(method, self._target, headers, LENGTH) + body + codec.end())
        except trio.TooSlowError:
            raise CosocketError(ep, f"timeout (the request was not accepted within {self.send_timeout:g}s)") from None
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as e:
            raise _NothingBack(ep, socket_error(e)) from None
        status, reason, kept = 0, b"", b""
        delivered = False
        size = 0
        try:
            with trio.fail_after(self.read_timeout):
                while (event := codec.next_event()) is not END:
                    if event is NEED_DATA:
                        chunk = await stream.receive_some(65536)
                        codec.receive_data(bytes(chunk))
                        size += len(chunk)
                        if size > MAX_RESPONSE_BYTES:  # the rest of the body is left unread
                            if not status:
                                raise CosocketError(ep, f"reading the answer failed: no head in its first "
                                                        f"{MAX_RESPONSE_BYTES} bytes")
                            await close_quietly(stream)
                            return _Answer(status, reason, kept)
                    elif type(event) is Response:
                        status, reason, delivered = event.status, event.reason, self._delivered(event.status)
                    elif type(event) is bytes:
                        if not delivered and len(kept) <= BODY_SHOWN:
                            kept += event
                    else:  # CLOSED
                        raise (CosocketError if size else _NothingBack)(ep, "closed (mid-answer)" if size else "closed")
        except trio.TooSlowError:
            raise CosocketError(ep, f"timeout (no answer within {self.read_timeout:g}s)") from None
        except ProtocolError as e:
            raise CosocketError(ep, f"reading the answer failed: {e}") from None
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as e:  # a reset, say
            raise (CosocketError if size else _NothingBack)(ep, socket_error(e)) from None
        if codec.keep_alive:
            codec.start_next_cycle()
            surplus = self._pool.give(conn)
            if surplus is not None:
                await close_quietly(surplus.stream)
        else:
            await close_quietly(stream)
        return _Answer(status, reason, kept)

    async def _connect(self) -> trio.abc.Stream:
        ep = self.endpoint
        return await connect(ep.host, ep.port, tls=ep.scheme == "https", server_hostname=ep.host,
                             verify=self.verify, timeout=self.connect_timeout, where=str(ep))

    async def close(self) -> None:
        """Close the idle connections (those in use are closed by their sends)."""
        for conn in self._pool.clear():
            await close_quietly(conn.stream)
