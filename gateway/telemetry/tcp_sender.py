"""Writing log lines to a collector over a plain TCP (or TLS) connection (tcp-log, statsd's use_tcp): kept-alive
connections, one to a send (a send takes an idle one or opens its own, as Kong's senders open a socket each, so
concurrent sends never write into one connection; one at a time, as tcp-log's queue sends, they use one).

As Kong's tcp-log: connect (and handshake) within `timeout`, write, keep the connection for the next lines while it
is idle less than `keepalive` seconds (0: for as long as it lives). Nothing is read back, so a connection the
collector closed while idle would swallow the next lines: before it is reused, its socket is polled for the
collector's FIN (POLLRDHUP, which buffered bytes such as TLS 1.3 session tickets do not hide), and one the
collector has shut is replaced. A failure's SendError has Kong's tcp-log's (and statsd's) words: "failed to connect
to HOST:PORT: connection refused", "failed to perform TLS handshake to ...", "failed to send data to ...: timeout".
"""

from __future__ import annotations

import select
import ssl

import trio

from gateway.telemetry.sender import (
    CosocketError,
    HandshakeError,
    IdlePool,
    SendError,
    close_quietly,
    connect,
    socket_error,
)

_SHUT = select.POLLRDHUP | select.POLLHUP | select.POLLERR | select.POLLNVAL


class TcpSender:
    """Sends bytes to host:port; concurrent sends each use a connection of their own."""

    def __init__(self, host: str, port: int, *, tls: bool = False, sni: str | None = None, timeout: float = 10.0,
                 keepalive: float = 60.0) -> None:
        self.named = f"{host}:{port}"  # as Kong's messages name the collector: the host as configured
        host = host[1:-1] if host.startswith("[") else host  # Kong's host takes "[ipv6]"; the socket, the address
        self.host, self.port, self.tls, self.sni = host, port, tls, sni
        self.timeout = timeout
        self.keepalive = keepalive
        self.where = f"{'tls' if tls else 'tcp'}://{f'[{host}]' if ':' in host else host}:{port}"
        self._pool: IdlePool[trio.abc.Stream] = IdlePool(keepalive)

    async def send(self, data: bytes) -> None:
        """Write `data` whole, or raise SendError (the connection is then dropped)."""
        stream = await self._take()
        if stream is None:
            stream = await self._connect()
        try:
            with trio.fail_after(self.timeout):
                await stream.send_all(data)
        except trio.TooSlowError:
            await close_quietly(stream)
            raise SendError(f"failed to send data to {self.named}: timeout (the collector took no data for "
                            f"{self.timeout:g}s)") from None
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError) as e:
            await close_quietly(stream)
            raise SendError(f"failed to send data to {self.named}: {socket_error(e)}") from None
        except BaseException:  # cancelled mid-write: what the connection carried is unknown
            await close_quietly(stream)
            raise
        surplus = self._pool.give(stream)
        if surplus is not None:
            await close_quietly(surplus)

    async def _connect(self) -> trio.abc.Stream:
        """A new connection (and its TLS handshake); SendError in Kong's tcp-log's words when it cannot be had."""
        try:
            return await connect(self.host, self.port, tls=self.tls, server_hostname=self.sni, verify=False,
                                 timeout=self.timeout, where=self.where)
        except HandshakeError as e:
            raise SendError(f"failed to perform TLS handshake to {self.named}: {e.err}") from None
        except CosocketError as e:
            raise SendError(f"failed to connect to {self.named}: {e.err}") from None

    async def _take(self) -> trio.abc.Stream | None:
        """An idle connection the collector has not shut, idle less than keepalive; None: open one."""
        while True:
            stream, expired = self._pool.take()
            for old in expired:
                await close_quietly(old)
            if stream is None or _quiet(stream):
                return stream
            await close_quietly(stream)

    async def close(self) -> None:
        """Close the idle connections (those in use are closed by their sends)."""
        for stream in self._pool.clear():
            await close_quietly(stream)


def _quiet(stream: trio.abc.Stream) -> bool:
    """Whether a kept connection is still open both ways: the collector has not shut it."""
    raw = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    assert isinstance(raw, trio.SocketStream)
    poller = select.poll()
    poller.register(raw.socket.fileno(), select.POLLRDHUP)
    return not any(events & _SHUT for _, events in poller.poll(0))
