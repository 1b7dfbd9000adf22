"""Keep-alive connections to upstream targets, per target, bounded, with an idle timeout.

The bookkeeping is synchronous (httpcore's lesson): taking and returning a connection never awaits, so
cancellation cannot leave the pool inconsistent. Only opening a new connection does I/O.
"""

from __future__ import annotations

import errno
import os

import trio

from gateway.http.codec import ClientCodec
from gateway.http.errors import ConnectError
from gateway.http.net import Conn, open_connection

STALE_CHECK_AFTER_S = 1.0  # an idle connection older than this is checked for a peer close before reuse


class UpstreamConn:
    """A connection to one target with its codec; `reused` tells a retry policy it may have gone stale."""

    __slots__ = ("conn", "codec", "key", "idle_since", "reused")

    def __init__(self, conn: Conn, codec: ClientCodec, key: tuple[str, int]) -> None:
        self.conn = conn
        self.codec = codec
        self.key = key
        self.idle_since = 0.0
        self.reused = False

    def close(self) -> None:
        self.conn.close()


class Pool:
    """Idle upstream connections keyed by (host, port), most recently used first."""

    def __init__(self, codec_cls: type[ClientCodec], max_idle: int = 64, idle_timeout: float = 60.0) -> None:
        self._codec_cls = codec_cls
        self._max_idle = max_idle
        self._idle_timeout = idle_timeout
        self._idle: dict[tuple[str, int], list[UpstreamConn]] = {}

    def take(self, key: tuple[str, int], now: float) -> UpstreamConn | None:
        """A reusable idle connection to `key`, or None; expired or peer-closed ones are closed on the way."""
        idle = self._idle.get(key)
        while idle:
            uc = idle.pop()
            age = now - uc.idle_since
            if age > self._idle_timeout or (age > STALE_CHECK_AFTER_S and uc.conn.is_stale()):
                uc.close()
                continue
            uc.reused = True
            return uc
        return None

    def put(self, uc: UpstreamConn, now: float) -> None:
        """Return a connection whose exchange completed cleanly; closed instead if the pool is full."""
        idle = self._idle.setdefault(uc.key, [])
        if len(idle) >= self._max_idle:
            uc.close()
            return
        uc.codec.start_next_cycle()
        uc.idle_since = now
        idle.append(uc)

    def sweep(self, now: float) -> int:
        """Close idle connections past the idle timeout; returns how many were closed."""
        closed = 0
        for idle in self._idle.values():
            keep = [uc for uc in idle if now - uc.idle_since <= self._idle_timeout]
            for uc in idle:
                if now - uc.idle_since > self._idle_timeout:
                    uc.close()
                    closed += 1
            idle[:] = keep
        return closed

    def idle_count(self, key: tuple[str, int] | None = None) -> int:
        if key is not None:
            return len(self._idle.get(key, ()))
        return sum(map(len, self._idle.values()))

    def close_all(self) -> None:
        for idle in self._idle.values():
            for uc in idle:
                uc.close()
        self._idle.clear()

    async def connect(self, key: tuple[str, int], timeout: float) -> UpstreamConn:
        """Open a new connection to `key` within `timeout` seconds, or raise ConnectError."""
        with trio.move_on_after(timeout):
            try:
                conn = await open_connection(*key)
            except OSError as e:
                reason = os.strerror(e.errno) if e.errno else str(e)
                if e.errno == errno.ECONNREFUSED:
                    reason = "connection refused"
                raise ConnectError(f"cannot connect to {key[0]}:{key[1]}: {reason}") from None
            return UpstreamConn(conn, self._codec_cls(), key)
        raise ConnectError(f"connect to {key[0]}:{key[1]} timed out after {timeout:g}s")
