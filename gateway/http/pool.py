"""Keep-alive connections to upstream targets, looked up per target, bounded in all, with an idle timeout.

The bookkeeping is synchronous (httpcore's lesson): taking and returning a connection never awaits, so
cancellation cannot leave the pool inconsistent. Only opening a new connection does I/O.

No byte that arrives on an idle connection is ever delivered to a client. A backend may answer twice, or late, or
close its side while the connection waits in the pool; the next request on it would then read those bytes as its
response (another client's, perhaps). So, as nginx does:
- a connection goes back to the pool only when its response ended exactly at a message boundary with nothing after
  it (the codec's `keep_alive`), and `take` refuses one with anything to read (one poll of that socket, no
  exception: about a microsecond);
- idle connections that become readable (a stray byte, or the peer's FIN) are closed by `watch`, which the worker
  runs every WATCH_S: every connection is registered once, edge-triggered, in the pool's own epoll, so watching
  costs no system call per request; those with activity since the last look are checked and closed if idle. A busy
  one with activity is marked `stirred` instead (the edge is not reported again), and `put` checks a stirred one
  as `take` does: a FIN that came while a slow client was being written to is not kept in the pool, as nginx does
  not cache a connection that is readable then (ngx_http_upstream_keepalive_module.c:325 and 403, release-1.27.1).
- on a TLS connection, any byte counts (TlsConn.pending_input): part of a record, or records read with the response
  and not yet decrypted, may be the start of a late answer; only whole records that carry no data (a session
  ticket) do not.

A worker that is draining (a reload's old generation, a graceful stop) closes its idle connections at once and
keeps none from then on (`stop_keeping`), as nginx's ngx_close_idle_connections at quit and `ngx_exiting` in its
keepalive module.

An idle connection is closed when its idle timeout is due, as OpenResty's timer on each pooled connection closes it
(ngx_http_lua_balancer_free_peer), not only refused by `take`: the same task wakes then (`sweep`). No timer per
connection: the idle ones wait in the order they were put back, which is the order they expire in.

Idle connections hold descriptors, which an accepted client's upstream connection must always find: the pool keeps
its connections of all keys within the upstream half of the descriptor budget (`upstream_budget`), closing the least
recently used idle one before a new one would pass it, and again when socket() fails for want of a descriptor (nginx's
ngx_drain_connections); failing still, the connect is the gateway's own failure (LocalError), not the target's.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import resource
import select
from collections.abc import Callable

import trio

from gateway.http.codec import NEED_DATA, PROXY_BUFFER_SIZE, ClientCodec, Event
from gateway.http.errors import ConnectError, ConnectTimeout, LocalError, NameResolutionFailed
from gateway.http.limits import derived_max_connections
from gateway.http.net import Conn, NameNotResolved, NoSocket, is_ip, open_connection, resolve
from gateway.http.tls import ServerNameRefused, TlsConn, TlsError, client_handshake
from gateway.http.tls_contexts import ClientTls

WATCH_S = 0.1  # how often idle connections that became readable are looked for (the timer resolution)
EMPTY_WATCH_S = 1.0  # while none is idle, the watch waits this long, or until one is put back
_WATCH = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET
NO_SOCKET_LOG_S = 1.0  # a burst of failed socket() calls is one error line per this many seconds

log = logging.getLogger("gateway.pool")


def _nofile() -> int:
    """This process's descriptor limit (the soft RLIMIT_NOFILE); 0 for none."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 0 if soft == resource.RLIM_INFINITY else soft


def upstream_budget() -> int:
    """Upstream connections the descriptor limit has room for beside as many clients: the derived max_connections,
    each client's second descriptor being its upstream's (gateway.http.limits), which idle ones of absent clients
    may hold."""
    nofile = _nofile()
    return derived_max_connections(nofile) if nofile else 1 << 62


def _target_of(key: tuple) -> tuple:
    """The (host, port) of the target a pool key's connections serve: the name's, for those to an address of a
    name (keyed (address, port, tls, (name, port))[, sni]), whose port an SRV record may have changed)."""
    return (key[3] if len(key) > 3 else None) or (key[0], key[1])


def _where(key: tuple) -> str:
    """A pool key's address for a person: 'address:port', and the name it is an address of."""
    named = key[3] if len(key) > 3 else None
    return f"{key[0]}:{key[1]}" if named is None else f"{key[0]}:{key[1]} ({named[0]})"


async def locate(host: str, port: int) -> tuple[str, int]:
    """(address, port) of a target's host name from this process's DNS client (its cache; the name's records take
    turns, an SRV record's port replaces `port`), as Kong's balancer looks the name up for every try (toip);
    NameResolutionFailed when it has no address."""
    try:
        return await resolve(host, port)
    except NameNotResolved as e:
        raise NameResolutionFailed(f"cannot resolve {e.strerror}", host, e.kong_error) from None


class Answered(Exception):
    """The upstream answered before it took the whole request: `event` is what it sent (a Response, or CLOSED)."""

    def __init__(self, event: Event) -> None:
        super().__init__("the upstream answered before the request was sent")
        self.event = event


class UpstreamConn:
    """A connection to one target with its codec; `reused` tells a retry policy it may have gone stale."""

    __slots__ = ("conn", "codec", "key", "idle_since", "reused", "idle", "swept", "served", "carrying", "stirred",
                 "_pool")

    def __init__(self, conn: Conn, codec: ClientCodec, key: tuple, pool: Pool | None = None) -> None:
        self.conn = conn
        self.codec = codec
        codec.transport = conn  # a close-delimited body ended by a reset is cut, not ended
        self.key = key
        self.idle_since = 0.0
        self.reused = False
        self.idle = False  # waiting in the pool
        self.swept = False  # closed by the gateway under a request (close_target): not the target's failure
        self.served = 0  # requests it carried to their end (upstream_keepalive_max_requests)
        self.carrying: object = None  # the user's record of the request it carries, or carried last: close_target
        self.stirred = False  # the watch saw activity while it was busy: `put` looks before keeping it
        self._pool = pool

    def heard(self) -> None:
        """The upstream spoke while the request was going out (Conn.heard): what it sent is read, and once that is
        a response head (or the connection's end) the request stops there (Answered). A 1xx, or part of a head,
        lets it go on, as nginx goes on writing until the head is in (ngx_http_upstream_send_request_handler)."""
        data = self.conn.recv_ready()
        if data is None:
            return
        codec = self.codec
        codec.receive_data(data)
        if (ev := codec.next_event()) is not NEED_DATA:
            if self._pool is not None:  # the rest of the request never goes: nor does another request on it
                self._pool.retire(self)
            raise Answered(ev)

    def has_input(self) -> bool:
        """Are there bytes (or an EOF, or an error) to read? One poll(2) with no timeout (on a TLS connection one
        non-blocking read, where whole records that carry no data, a session ticket, do not count)."""
        conn = self.conn
        return conn.pending_input() if conn.__class__ is TlsConn else conn.readable()

    def close(self) -> None:
        """Close it, out of its pool's count of open connections (every close of a pooled connection comes here:
        the connection timer's too, so that a slot is never held by a closed one)."""
        self.conn.heard = None  # (a bound method of this connection's: no cycle left behind)
        if not self.conn.closed:
            if self._pool is not None:
                self._pool.forget(self)
            self.conn.close()


class Pool:
    """Idle upstream connections keyed by address and port (and what else keeps them apart: TLS settings, the name
    they are an address of, the SNI), each key's bounded on its own, most recently used first; one LRU over all keys
    for the idle timeout's sweep and for freeing a descriptor (nginx's ngx_drain_connections is the worker's)."""

    def __init__(self, codec_cls: Callable[..., ClientCodec], max_idle: int = 64, idle_timeout: float = 60.0,
                 max_requests: int = 0, max_open: int | None = None,
                 proxy_buffer_size: int = PROXY_BUFFER_SIZE) -> None:
        """`max_idle` idle connections kept per key, the key's least recently used closed to make room for one put
        back (Kong's upstream_keepalive_pool_size: kong/init.lua:1383-1397 names a pool per ip|port[|sni[|cert id]]
        of that many slots each, ngx_lua-0.10.26_01-dyn_upstream_keepalive.patch's free_peer evicting that pool's
        least recently used); one idle past `idle_timeout` seconds is closed (0: never); one that carried
        `max_requests` requests is closed instead of kept (0: no limit): kong.conf's upstream_keepalive_pool_size,
        _idle_timeout and _max_requests. With `max_open` connections open (idle and busy, of all keys; not given:
        `upstream_budget()` as the descriptor limit is when the pool is made), a new one first closes the least
        recently used idle one of any key, so idle connections never take the descriptor an accepted client's
        upstream connection needs. Each connection's codec bounds a response head by `proxy_buffer_size` (nginx's,
        kong.conf's nginx_proxy_proxy_buffer_size)."""
        self._codec_cls = codec_cls
        self._proxy_buffer_size = proxy_buffer_size
        self._max_open = max_open or upstream_budget()
        self._connecting = 0  # connects under way: their descriptors are taken, not yet in _open
        self._no_socket_logged = -NO_SOCKET_LOG_S
        self._no_socket_unlogged = 0
        self._max_idle = max_idle
        self._idle_timeout = idle_timeout or float("inf")
        self._max_requests = max_requests
        # (host, port) or (host, port, ClientTls, ...): never an empty list, so a key (a client's Host, as the SNI of a
        # preserve_host route) lasts only while a connection to it is idle
        self._idle: dict[tuple, list[UpstreamConn]] = {}
        self._lru: dict[UpstreamConn, None] = {}  # every idle connection, least recently put back first
        self._watch = select.epoll()
        self._open: dict[int, UpstreamConn] = {}  # by fd: every open connection of this pool, idle or busy
        self._first_idle: trio.Event | None = None  # set when a connection is put back while none was idle

    def take(self, key: tuple, now: float) -> UpstreamConn | None:
        """A reusable idle connection to `key`, or None; expired or readable ones are closed on the way."""
        idle = self._idle.pop(key, None)  # back in the table only if connections remain in it
        while idle:
            uc = idle.pop()
            uc.idle = False
            del self._lru[uc]
            if now - uc.idle_since > self._idle_timeout or uc.has_input():
                uc.close()
                continue
            if idle:
                self._idle[key] = idle
            uc.reused = True
            return uc
        return None

    def put(self, uc: UpstreamConn, now: float) -> None:
        """Return a connection whose exchange completed cleanly, closing its key's least recently used idle one if
        that key has `max_idle` idle (ngx_http_lua_balancer_free_peer); closed instead if keep-alive is off (or the
        worker drains: `stop_keeping`), the connection carried its last request, or the watch saw it stirred and it
        has input (the upstream's FIN, a late byte)."""
        uc.served += 1
        if not self._max_idle or uc.served == self._max_requests or (uc.stirred and self._stirred(uc)):
            uc.close()
            return
        uc.codec.start_next_cycle()
        uc.idle_since = now
        uc.idle = True
        self._lru[uc] = None
        if (idle := self._idle.get(uc.key)) is None:
            self._idle[uc.key] = [uc]
        else:
            if len(idle) >= self._max_idle:
                self._evict_oldest(idle)
            idle.append(uc)
        if self._first_idle is not None:
            self._first_idle.set()

    def _evict_oldest(self, idle: list[UpstreamConn]) -> None:
        """Close the least recently used of one key's idle connections, which stays in the table (one is being put
        back to it)."""
        oldest = idle.pop(0)
        oldest.idle = False
        del self._lru[oldest]
        oldest.close()

    @staticmethod
    def _stirred(uc: UpstreamConn) -> bool:
        """A connection the watch saw active while busy, being put back: has it input (what that activity was,
        if not the response itself)?"""
        uc.stirred = False
        return uc.has_input()

    def stop_keeping(self) -> int:
        """The worker drains: close every idle connection now, and every one put back from now on; returns how many
        were idle. nginx closes idle connections at once when told to quit (ngx_process_cycle.c:735-738,
        ngx_close_idle_connections) and caches none while exiting (ngx_http_upstream_keepalive_module.c:350,
        `if (ngx_terminate || ngx_exiting) goto invalid`; so does OpenResty's balancer pool, which Kong uses)."""
        self._max_idle = 0
        idle = list(self._lru)
        for uc in idle:
            self._unidle(uc)
            uc.close()
        return len(idle)

    def retire(self, uc: UpstreamConn) -> None:
        """Make the request `uc` carries its last: `put` closes it instead of keeping it."""
        uc.served = self._max_requests - 1  # (0, no limit: -1, which put's count makes 0)

    def watch(self) -> int:
        """Close idle connections that became readable since the last call (a stray byte, or the peer's FIN); returns
        how many. Busy ones show up too (their responses came): they are marked `stirred` for `put` to look at,
        since this edge, a FIN behind the response perhaps, will not be reported again."""
        closed = 0
        for fd, _ in self._watch.poll(0):
            uc = self._open.get(fd)
            if uc is None:
                continue
            if not uc.idle:
                uc.stirred = True
            elif uc.has_input():
                self._unidle(uc)
                uc.close()
                closed += 1
        return closed

    def sweep(self, now: float) -> int:
        """Close idle connections whose idle timeout is due; returns how many were closed. The least recently put
        back come first (`put` is given the clock's reading), so the walk ends at the first one still in time."""
        timeout = self._idle_timeout
        expired = []
        for uc in self._lru:
            if uc.idle_since + timeout > now:  # (as _due reckons it)
                break
            expired.append(uc)
        for uc in expired:
            self._unidle(uc)
            uc.close()
        return len(expired)

    def _due(self) -> float:
        """When the oldest idle connection's idle timeout is due (inf: none idle, or no timeout)."""
        oldest = next(iter(self._lru), None)
        return math.inf if oldest is None else oldest.idle_since + self._idle_timeout

    def idle_count(self, key: tuple | None = None) -> int:
        if key is not None:
            return len(self._idle.get(key, ()))
        return len(self._lru)

    def forget(self, uc: UpstreamConn) -> None:
        """A connection is closing: it leaves the watch (the kernel drops its epoll entry with the last fd)."""
        self._open.pop(uc.conn.sock.fileno(), None)

    def close_target(self, host: str, port: int, cuts: Callable[[object], bool] | None = None) -> int:
        """Close the connections to a target that are idle, and those carrying a request: each one, or with `cuts`
        those it accepts (given the `carrying` of each: circuit-breaker's sweep_force_shutdown cuts its upstream's
        requests, not those of another upstream at the same address); returns how many. A busy one is shut down,
        not closed: its task reads the EOF (or fails its write) wherever it waits, a Trio wait or the stream watch
        (which a closed descriptor would leave without a word), and closes it; its request ends as if the target
        had closed it. Connections to the addresses of a named target (keyed (address, port, tls, (name, port)))
        are the name's."""
        target = (host, port)
        doomed = [uc for uc in self._open.values()
                  if _target_of(uc.key) == target and (uc.idle or cuts is None or cuts(uc.carrying))]
        for uc in doomed:
            if uc.idle:
                self._unidle(uc)
                uc.close()
            else:
                uc.swept = True
                uc.conn.shutdown()
        return len(doomed)

    def _unidle(self, uc: UpstreamConn) -> None:
        """Take an idle connection out of its key's list, and the key out of the table if that was its last."""
        idle = self._idle[uc.key]
        idle.remove(uc)
        if not idle:
            del self._idle[uc.key]
        uc.idle = False
        del self._lru[uc]

    def _drain_one(self) -> bool:
        """Close the least recently used idle connection, whatever its key, to free its descriptor (nginx's
        ngx_drain_connections for reusable connections); False if none was idle."""
        if not self._lru:
            return False
        oldest = next(iter(self._lru))
        self._unidle(oldest)
        oldest.close()
        return True

    async def _open_socket(self, host: str, port: int, key: tuple) -> Conn:
        """open_connection; out of sockets, once more after closing the least recently used idle connection, and
        then LocalError: the gateway's own failure, never the target's."""
        try:
            return await open_connection(host, port)
        except NoSocket as e:
            error = e
        if self._drain_one():
            try:
                return await open_connection(host, port)
            except NoSocket as e:
                error = e
        raise self._no_socket(key, error)

    def _no_socket(self, key: tuple, e: OSError) -> LocalError:
        """The LocalError for a failed socket(), logged at error level once per NO_SOCKET_LOG_S at most (with how
        many failed since the last line), naming the descriptor limit an operator would raise."""
        reason = e.strerror or str(e)
        self._no_socket_unlogged += 1
        now = trio.current_time()
        if now - self._no_socket_logged >= NO_SOCKET_LOG_S:
            log.error("no socket for a connection to %s: %s (%d upstream connect(s) failed so since the last such "
                      "line: answered 500); this worker's descriptor limit (RLIMIT_NOFILE) is %d, with %d upstream "
                      "connection(s) open (%d idle): raise gateway.worker_rlimit_nofile (or the hard limit), or lower "
                      "max_connections", _where(key), reason, self._no_socket_unlogged, _nofile(), len(self._open),
                      self.idle_count())
            self._no_socket_logged = now
            self._no_socket_unlogged = 0
        return LocalError(f"no socket for a connection to {_where(key)}: {reason}")

    def close_all(self) -> None:
        for idle in self._idle.values():
            for uc in idle:
                uc.close()
        self._idle.clear()
        self._lru.clear()
        self._watch.close()

    async def connect(self, key: tuple, timeout: float, tls: ClientTls | None = None,
                      server_name: str | None = None) -> UpstreamConn:
        """Open a new connection to `key` ((host, port), (host, port, tls, None) for TLS, or (address, port, tls,
        (name, port)) for an address of a name; an SNI of its own after those) within `timeout` seconds, the TLS
        handshake included, or raise ConnectError (LocalError when this process has no socket for it, or OpenSSL
        refuses `server_name` as the TLS server name). A name as host is looked up first (`locate`), bounded by the
        DNS client's own timeouts only: Kong resolves it before connecting, and connect_timeout bounds the connect
        to the address found."""
        host, port = key[0], key[1]
        if not is_ip(host):
            host, port = await locate(host, port)
        if len(self._open) + self._connecting >= self._max_open:
            self._drain_one()
        self._connecting += 1
        try:
            with trio.move_on_after(timeout):
                try:
                    conn = await self._open_socket(host, port, key)
                except OSError as e:
                    reason = os.strerror(e.errno) if e.errno else str(e)
                    if e.errno == errno.ECONNREFUSED:
                        reason = "connection refused"
                    raise ConnectError(f"cannot connect to {_where(key)}: {reason}") from None
                if tls is not None:
                    try:
                        conn = await client_handshake(tls, conn, server_name or _target_of(key)[0])
                    except ServerNameRefused as e:  # the request's name, not the target: nginx's 500, no retry
                        conn.close()
                        raise LocalError(f"TLS with {_where(key)} not started: {e}") from None
                    except (TlsError, OSError) as e:
                        conn.close()
                        raise ConnectError(f"TLS with {_where(key)} failed: {e}") from None
                    except BaseException:
                        conn.close()
                        raise
                uc = UpstreamConn(conn, self._codec_cls(proxy_buffer_size=self._proxy_buffer_size), key, self)
                fd = conn.sock.fileno()
                self._watch.register(fd, _WATCH)
                self._open[fd] = uc
                return uc
        finally:
            self._connecting -= 1
        raise ConnectTimeout(f"connect to {_where(key)} timed out after {timeout:g}s")

    async def watch_forever(self) -> None:
        """Run `watch` every WATCH_S while connections are idle, and `sweep` then and when the oldest one's idle
        timeout is due, if sooner; with none idle, wait for the first (a worker's task)."""
        while True:
            if self._idle:
                await trio.sleep_until(min(trio.current_time() + WATCH_S, self._due()))
            else:
                self._first_idle = trio.Event()
                with trio.move_on_after(EMPTY_WATCH_S):
                    await self._first_idle.wait()
                self._first_idle = None
            self.watch()
            self.sweep(trio.current_time())
