"""ldap-auth's LDAP client on Trio: one simple bind per call, over TCP, LDAPS, or StartTLS, on connections kept
alive between calls. The bytes are gateway.policies.ldap_auth.protocol's.

`bind` answers as Kong's ldap-auth (kong/plugins/ldap-auth/access.lua) settles a bind:
1. True: the server answered the BindRequest with success.
2. False (Kong: 401): the server refused the bind (any other result code), answered something other than a
   BindResponse or something malformed, or the TLS handshake failed (an unverified certificate, a timeout).
3. Unavailable(remembered=True) (Kong: 500, and the miss is cached for cache_ttl): no connection could be made
   (refused, unreachable, no answer within the timeout), or the server declined StartTLS.
4. Unavailable(remembered=False) (Kong: 500, not cached): the connection broke or went silent for `timeout` while a
   request was written or its answer awaited, or the answer announced more than MAX_RESPONSE_BYTES (Kong would wait
   for them and fail the same way; the gateway does not wait to buffer them).

`timeout` bounds each step on its own, as the ngx socket timeout Kong sets does: connecting (name resolution
included), the TLS handshake, and each request (written and answered).

Connections are kept as Kong keeps them (setkeepalive after the bind, whatever its result): per worker process (its
Trio run), per server and way of connecting, at most POOL_SIZE idle ones, each for `keepalive` seconds (0: for as
long as it lives; negative: closed at once, as ngx's already expired timer closes it). A StartTLS connection is
upgraded once, when made. One the server has closed (or written to unasked, as an LDAP server does before it
disconnects) is noticed before reuse and dropped; one that answered a bind with more bytes than its answer is not
kept (lua's setkeepalive refuses "unread data in buffer"). A connection whose exchange failed is closed.
"""

from __future__ import annotations

import logging
import select
import ssl
from collections import deque
from collections.abc import Callable
from math import inf

import trio

from gateway.http.net import open_tcp_stream
from gateway.http.tls_contexts import client_context
from gateway.policies.ldap_auth.protocol import (
    BIND_RESPONSE,
    EXTENDED_RESPONSE,
    SUCCESS,
    LdapResult,
    ProtocolError,
    ResponseDecoder,
    ResponseTooLong,
    bind_request,
    start_tls_request,
)

log = logging.getLogger("gateway.policies")

POOL_SIZE = 30  # idle connections kept per server (ngx's lua_socket_pool_size)
READ_BYTES = 16384
_NOT_IDLE = select.POLLIN | select.POLLRDHUP | select.POLLHUP | select.POLLERR | select.POLLNVAL


class Unavailable(Exception):
    """The bind could not be settled: Kong's 500. `remembered`: Kong caches the miss for cache_ttl."""

    def __init__(self, message: str, remembered: bool) -> None:
        super().__init__(message)
        self.remembered = remembered


class Server:
    """Where and how to bind: one per plugin config."""

    __slots__ = ("host", "port", "ldaps", "start_tls", "verify", "timeout", "keepalive", "where", "pool_key",
                 "_context")

    def __init__(self, host: str, port: int, *, ldaps: bool, start_tls: bool, verify: bool, timeout: float,
                 keepalive: float) -> None:
        host = host[1:-1] if host.startswith("[") else host  # Kong's ldap_host takes "[ipv6]"; the socket, the address
        self.host, self.port = host, port
        self.ldaps, self.start_tls, self.verify = ldaps, start_tls, verify
        self.timeout = timeout  # seconds, for each step
        self.keepalive = keepalive  # seconds an idle connection is kept; 0: as long as it lives; negative: not kept
        self.where = f"{f'[{host}]' if ':' in host else host}:{port}"
        # Kong pools StartTLS connections apart from the others; a verified TLS connection is not one an unverified
        # config made
        self.pool_key = (host.lower(), port, ldaps, start_tls, verify)
        self._context: ssl.SSLContext | None = None

    @property
    def tls(self) -> bool:
        return self.ldaps or self.start_tls

    def context(self) -> ssl.SSLContext:
        """The TLS context: verified (the chain against kong.conf's lua_ssl_trusted_certificate, the system's CAs
        by default, and the name ldap_host) only with verify_ldap_host, as Kong's sslhandshake(..., verify)."""
        if self._context is None:
            self._context = client_context(self.verify)
        return self._context


class Connection:
    """One connection to an LDAP server: requests written in turn, each answer read whole."""

    __slots__ = ("stream", "decoder", "next_id", "idle_until")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.decoder = ResponseDecoder()
        self.next_id = 1
        self.idle_until = 0.0  # while pooled: when its keepalive ends

    async def exchange(self, encode: Callable[[int], bytes], timeout: float, where: str) -> LdapResult:
        """Write the request `encode(message id)` and read its answer; Unavailable (not remembered) when the
        connection breaks or is silent for `timeout`, or announces an answer too long to read; ProtocolError when
        the answer is malformed."""
        message_id = self.next_id
        self.next_id += 1
        try:
            with trio.fail_after(timeout):
                await self.stream.send_all(encode(message_id))
                while (result := self.decoder.next_result()) is None:
                    data = await self.stream.receive_some(READ_BYTES)
                    if not data:
                        raise Unavailable(f"{where} closed the connection", remembered=False)
                    self.decoder.receive_data(data)
                return result
        except trio.TooSlowError:
            raise Unavailable(f"no answer from {where} within {timeout:g}s", remembered=False) from None
        except ResponseTooLong as e:
            raise Unavailable(f"{where} announced {e}", remembered=False) from None
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError) as e:
            raise Unavailable(f"the connection to {where} failed: {e!r}", remembered=False) from None

    def raw_socket(self) -> trio.socket.SocketType:
        stream = self.stream
        while isinstance(stream, trio.SSLStream):
            stream = stream.transport_stream
        assert isinstance(stream, trio.SocketStream)
        return stream.socket

    def quiet(self) -> bool:
        """Whether an idle connection is still open both ways and the server has written nothing since."""
        sock = self.raw_socket()
        if sock.fileno() < 0:
            return False
        poller = select.poll()
        poller.register(sock.fileno(), _NOT_IDLE)
        return not poller.poll(0)

    def close_now(self) -> None:
        """Close without a word (from synchronous code: pool trimming)."""
        self.raw_socket().close()


class Pools:
    """Idle connections per server, most recently used last. Synchronous: taking and giving back never wait, so a
    cancelled call cannot leave the pool half-changed; the connections they drop are closed at once."""

    def __init__(self, size: int = POOL_SIZE) -> None:
        self.size = size
        self._idle: dict[tuple[str, int, bool, bool, bool], deque[Connection]] = {}

    def take(self, server: Server) -> Connection | None:
        self.trim(trio.current_time())
        idle = self._idle.get(server.pool_key)
        while idle:
            conn = idle.pop()
            if conn.quiet():
                return conn
            conn.close_now()
        return None

    def give_back(self, server: Server, conn: Connection) -> None:
        if server.keepalive < 0:  # ngx's keepalive timer already expired: closed at once
            conn.close_now()
            return
        now = trio.current_time()
        conn.idle_until = now + server.keepalive if server.keepalive > 0 else inf
        idle = self._idle.setdefault(server.pool_key, deque())
        idle.append(conn)
        while len(idle) > self.size:
            idle.popleft().close_now()
        self.trim(now)

    def trim(self, now: float) -> None:
        """Close the connections kept past their keepalive, in every pool (one whose plugin is gone empties too)."""
        for key, idle in list(self._idle.items()):
            for conn in [c for c in idle if c.idle_until <= now]:
                idle.remove(conn)
                conn.close_now()
            if not idle:
                del self._idle[key]

    def clear(self) -> None:
        """Close every idle connection."""
        for idle in self._idle.values():
            for conn in idle:
                conn.close_now()
        self._idle.clear()


_POOLS: trio.lowlevel.RunVar[Pools] = trio.lowlevel.RunVar("ldap_auth_pools")


def current_pools() -> Pools:
    """The pools of this Trio run (a worker process runs one): connections and their deadlines belong to it."""
    try:
        return _POOLS.get()
    except LookupError:
        pools = Pools()
        _POOLS.set(pools)
        return pools


async def bind(server: Server, dn: bytes, password: bytes, pools: Pools | None = None) -> bool:
    """A simple bind as `dn` with `password`: the rules in the module docstring."""
    if pools is None:
        pools = current_pools()
    conn = pools.take(server)
    if conn is None:
        conn = await _connect(server)
        if conn is None:
            return False
    try:
        result = await conn.exchange(lambda mid: bind_request(mid, dn, password), server.timeout, server.where)
    except ProtocolError as e:
        log.warning("ldap-auth: %s answered a bind with a malformed message: %s", server.where, e)
        await trio.aclose_forcefully(conn.stream)
        return False
    except BaseException:
        await trio.aclose_forcefully(conn.stream)
        raise
    if conn.decoder.holds_bytes:  # not kept: the next bind would read them as its answer (lua's "unread data")
        await trio.aclose_forcefully(conn.stream)
    else:
        pools.give_back(server, conn)
    if result.operation != BIND_RESPONSE:
        log.warning("ldap-auth: %s answered a bind with operation %d", server.where, result.operation)
        return False
    if result.result_code != SUCCESS:
        log.debug("ldap-auth: %s refused a bind: %s", server.where, result.describe())
        return False
    return True


async def _connect(server: Server) -> Connection | None:
    """A new connection, upgraded to TLS for ldaps or start_tls; None when the TLS handshake failed (Kong: the bind
    fails); Unavailable otherwise."""
    try:
        with trio.fail_after(server.timeout):
            stream: trio.abc.Stream = await open_tcp_stream(server.host, server.port)
    except trio.TooSlowError:
        raise Unavailable(f"failed to connect to {server.where}: timeout", remembered=True) from None
    except OSError as e:
        raise Unavailable(f"failed to connect to {server.where}: {e.strerror or e}", remembered=True) from None
    conn = Connection(stream)
    try:
        if server.start_tls:
            try:
                answer = await conn.exchange(start_tls_request, server.timeout, server.where)
            except ProtocolError as e:
                raise Unavailable(f"{server.where} answered StartTLS with a malformed message: {e}",
                                  remembered=True) from None
            if answer.operation != EXTENDED_RESPONSE or answer.result_code != SUCCESS:
                raise Unavailable(f"{server.where} declined StartTLS: {answer.describe()}", remembered=True)
        if server.tls:
            secure = trio.SSLStream(conn.stream, server.context(), server_hostname=server.host)
            try:
                with trio.fail_after(server.timeout):
                    await secure.do_handshake()
            except (trio.TooSlowError, trio.BrokenResourceError, OSError, ssl.SSLError) as e:
                why = "timeout" if isinstance(e, trio.TooSlowError) else str(e.__cause__ or e)
                log.error("ldap-auth: failed to do SSL handshake with %s: %s", server.where, why)
                await trio.aclose_forcefully(secure)
                return None
            conn.stream = secure
    except BaseException:
        await trio.aclose_forcefully(conn.stream)
        raise
    return conn
