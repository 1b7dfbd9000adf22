"""Sending datagrams to a collector over UDP (udp-log): one socket, connected to the address the host resolves to.

A connected UDP socket hears back from the kernel when the collector's port is closed (ICMP port unreachable): the
next send fails with ECONNREFUSED and raises SendError. The host is resolved again after any failure, as a
collector that moved would need.
"""

from __future__ import annotations

import errno
import logging
import socket

import trio

from gateway.http.net import NameNotResolved, is_ip, resolve
from gateway.telemetry.sender import SendError

MAX_DATAGRAM = 65507  # the largest UDP payload over IPv4
log = logging.getLogger("gateway.telemetry")


class UdpSender:
    """Sends datagrams to host:port; not safe for concurrent use (the queue sends one batch at a time)."""

    def __init__(self, host: str, port: int, *, timeout: float = 10.0) -> None:
        self.host, self.port = host, port
        self.timeout = timeout
        self.where = f"udp://{f'[{host}]' if ':' in host else host}:{port}"
        self._socket: trio.socket.SocketType | None = None

    async def send(self, datagram: bytes) -> None:
        """Send `datagram`; one too large is dropped (logged); raise SendError when it could not be sent."""
        if len(datagram) > MAX_DATAGRAM:
            log.warning("%s: a log entry of %d bytes does not fit in a datagram (at most %d): dropped", self.where,
                        len(datagram), MAX_DATAGRAM)
            return
        try:
            with trio.fail_after(self.timeout):
                if self._socket is None:
                    self._socket = await self._connect()
                await self._socket.send(datagram)
        except trio.TooSlowError:
            self.close()
            raise SendError(f"{self.where}: could not send within {self.timeout:g}s") from None
        except OSError as e:
            self.close()
            if e.errno == errno.EMSGSIZE:  # (an IPv6 path, or a smaller limit than MAX_DATAGRAM assumes)
                log.warning("%s: a log entry of %d bytes does not fit in a datagram: dropped", self.where,
                            len(datagram))
                return
            raise SendError(f"{self.where}: sending failed: {e.strerror or e}") from None

    async def _connect(self) -> trio.socket.SocketType:
        host, port = self.host.strip("[]"), self.port
        if not is_ip(host):
            try:
                host, port = await resolve(host, port)
            except NameNotResolved as e:
                raise SendError(f"{self.where}: cannot resolve {self.host}: {e.reason}") from None
        sock = trio.socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            await sock.connect((host, port))
        except OSError:
            sock.close()
            raise
        return sock

    def close(self) -> None:
        sock, self._socket = self._socket, None
        if sock is not None:
            sock.close()
