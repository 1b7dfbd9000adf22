"""Writing log lines to a collector over a plain TCP (or TLS) connection (tcp-log): one kept-alive connection.

As Kong's tcp-log: connect (and handshake) within `timeout`, write, keep the connection for the next lines while it
is idle less than `keepalive` seconds (0: for as long as it lives). Nothing is read back, so a connection the
collector closed while idle would swallow the next lines: before it is reused, its socket is polled for the
collector's FIN (POLLRDHUP, which buffered bytes such as TLS 1.3 session tickets do not hide), and one the
collector has shut is replaced.
"""

from __future__ import annotations

import select
import ssl

import trio

from gateway.telemetry.sender import SendError, close_quietly, connect, kept_alive

_SHUT = select.POLLRDHUP | select.POLLHUP | select.POLLERR | select.POLLNVAL


class TcpSender:
    """Sends bytes to host:port; not safe for concurrent use (the queue sends one batch at a time)."""

    def __init__(self, host: str, port: int, *, tls: bool = False, sni: str | None = None, timeout: float = 10.0,
                 keepalive: float = 60.0) -> None:
        self.host, self.port, self.tls, self.sni = host, port, tls, sni
        self.timeout = timeout
        self.keepalive = keepalive
        self.where = f"{'tls' if tls else 'tcp'}://{f'[{host}]' if ':' in host else host}:{port}"
        self._stream: trio.abc.Stream | None = None
        self._idle_since = 0.0

    async def send(self, data: bytes) -> None:
        """Write `data` whole, or raise SendError (the connection is then dropped)."""
        if self._stream is not None and not (kept_alive(self._idle_since, self.keepalive) and self._quiet()):
            await self.close()
        if self._stream is None:
            self._stream = await connect(self.host, self.port, tls=self.tls, server_hostname=self.sni, verify=False,
                                         timeout=self.timeout, where=self.where)
        try:
            with trio.fail_after(self.timeout):
                await self._stream.send_all(data)
        except trio.TooSlowError:
            await self.close()
            raise SendError(f"{self.where}: the collector took no data for {self.timeout:g}s") from None
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError) as e:
            await self.close()
            raise SendError(f"{self.where}: sending failed: {e}") from None
        self._idle_since = trio.current_time()

    def _quiet(self) -> bool:
        """Whether the kept connection is still open both ways: the collector has not shut it."""
        stream = self._stream
        raw = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
        assert isinstance(raw, trio.SocketStream)
        poller = select.poll()
        poller.register(raw.socket.fileno(), select.POLLRDHUP)
        return not any(events & _SHUT for _, events in poller.poll(0))

    async def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await close_quietly(stream)
