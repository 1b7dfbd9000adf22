"""Sending datagrams to a collector over UDP (udp-log, loggly, statsd, datadog): a socket connected to the address
the host resolves to, kept for the next datagram (a concurrent send makes one of its own).

A connected UDP socket hears back from the kernel when the collector's port is closed: the ICMP port unreachable
answering a datagram makes the socket's next send fail with ECONNREFUSED, and that send did not send its datagram
(Linux checks the pending error before it builds the datagram, and the failed call clears it). Kong sends each
entry from a fresh socket, which never hears of an earlier datagram, so a send refused so is made once more: the
datagram goes out once, and reaches the collector if it listens again. The host is resolved again after any
other failure, as a collector that moved would need.
"""

from __future__ import annotations

import errno
import logging
import socket

import trio

from gateway.http.net import NameNotResolved, is_ip, resolve
from gateway.telemetry.sender import SendError

MAX_DATAGRAM = 65507  # the largest UDP payload over IPv4
REFUSED_LOG_EVERY_S = 10.0  # a sender logs that the collector refused earlier datagrams at most this often
log = logging.getLogger("gateway.telemetry")


class UdpSender:
    """Sends datagrams to host:port; concurrent sends each use a socket of their own."""

    def __init__(self, host: str, port: int, *, timeout: float = 10.0) -> None:
        host = host[1:-1] if host.startswith("[") else host  # Kong's host takes "[ipv6]"; the socket, the address
        self.host, self.port = host, port
        self.timeout = timeout
        self.where = f"udp://{f'[{host}]' if ':' in host else host}:{port}"
        self._socket: trio.socket.SocketType | None = None  # the idle socket
        self._refused_logged = -REFUSED_LOG_EVERY_S
        self._refused = 0  # refusals since the last logged

    async def send(self, datagram: bytes) -> None:
        """Send `datagram`; one too large is dropped (logged); raise SendError when it could not be sent."""
        if len(datagram) > MAX_DATAGRAM:
            log.warning("%s: a log entry of %d bytes does not fit in a datagram (at most %d): dropped", self.where,
                        len(datagram), MAX_DATAGRAM)
            return
        sock, self._socket = self._socket, None
        try:
            with trio.fail_after(self.timeout):
                if sock is None:
                    sock = await self._connect()
                try:
                    await sock.send(datagram)
                except ConnectionRefusedError:  # an earlier datagram's ICMP error, cleared: this one was not sent
                    self._log_refused()
                    await sock.send(datagram)
        except trio.TooSlowError:
            if sock is not None:
                sock.close()
            raise SendError(f"{self.where}: could not send within {self.timeout:g}s") from None
        except OSError as e:
            if sock is not None:
                sock.close()
            if e.errno == errno.EMSGSIZE:  # (an IPv6 path, or a smaller limit than MAX_DATAGRAM assumes)
                log.warning("%s: a log entry of %d bytes does not fit in a datagram: dropped", self.where,
                            len(datagram))
                return
            raise SendError(f"{self.where}: sending failed: {e.strerror or e}") from None
        except BaseException:
            if sock is not None:
                sock.close()
            raise
        if self._socket is None:
            self._socket = sock
        else:  # a concurrent send kept its own
            sock.close()

    def _log_refused(self) -> None:
        """Say, at most every REFUSED_LOG_EVERY_S seconds, how many datagrams the collector's closed port refused."""
        self._refused += 1
        now = trio.current_time()
        if now - self._refused_logged < REFUSED_LOG_EVERY_S:
            return
        log.warning("%s: the collector's port was closed: %d datagram(s) sent to it were lost (ICMP port "
                    "unreachable)", self.where, self._refused)
        self._refused_logged, self._refused = now, 0

    async def _connect(self) -> trio.socket.SocketType:
        host, port = self.host, self.port
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
        """Close the idle socket (one in use is closed by its send)."""
        sock, self._socket = self._socket, None
        if sock is not None:
            sock.close()
