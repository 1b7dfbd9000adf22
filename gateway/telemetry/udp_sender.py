"""Sending datagrams to a collector over UDP (udp-log, loggly, statsd, datadog): a socket connected to the address
the host resolves to, kept for the next datagram (a concurrent send makes one of its own).

Each send (an entry, or a statsd or datadog batch) resolves the host again through the gateway's DNS client, as
Kong's setpeername on the fresh socket of each does (kong/globalpatches.lua `udp_resolve_setpeername`: its DNS
client's toip, cached for the record's TTL): a collector whose record changed gets the datagrams once its TTL
passed, and the records of a name with several take turns. While the answer is cached the lookup costs no query;
the kept socket is used while the name resolves to the address it is connected to, and a new one is made when not.

A connected UDP socket hears back from the kernel when the collector's port is closed: the ICMP port unreachable
answering a datagram makes the socket's next send fail with ECONNREFUSED, and that send did not send its datagram
(Linux checks the pending error before it builds the datagram, and the failed call clears it). Kong sends each
entry from a fresh socket, which never hears of an earlier datagram, so a send refused so is made once more: the
datagram goes out once, and reaches the collector if it listens again. After any other failure the socket is
closed, and the next send makes a new one.

statsd and datadog send a batch with `send_each`, as Kong's statsd logger: a socket that cannot be made (a name
that does not resolve) fails the batch, which the queue retries; a datagram that fails on the socket is logged and
lost. A failure's message has the words of Kong's loggly, statsd and datadog: "failed to connect to HOST:PORT: ...",
"failed to send data to HOST:PORT: ..." (udp-log's own say "could not" for "failed to").
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Iterable

import trio

from gateway.http.net import NameNotResolved, is_ip, resolve
from gateway.telemetry.sender import SendError, socket_error

MAX_DATAGRAM = 65507  # the largest UDP payload over IPv4
REFUSED_LOG_EVERY_S = 10.0  # a sender logs that the collector refused earlier datagrams at most this often
log = logging.getLogger("gateway.telemetry")


Address = tuple[str, int]


class UdpSender:
    """Sends datagrams to host:port; concurrent sends each use a socket of their own."""

    def __init__(self, host: str, port: int, *, timeout: float = 10.0) -> None:
        self.named = f"{host}:{port}"  # as Kong's messages name the collector: the host as configured
        host = host[1:-1] if host.startswith("[") else host  # Kong's host takes "[ipv6]"; the socket, the address
        self.host, self.port = host, port
        self.timeout = timeout
        self.where = f"udp://{f'[{host}]' if ':' in host else host}:{port}"
        self._literal: Address | None = (host, port) if is_ip(host) else None  # an address: nothing to resolve
        self._idle: tuple[trio.socket.SocketType, Address] | None = None  # the idle socket and where it is connected
        self._refused_logged = -REFUSED_LOG_EVERY_S
        self._refused = 0  # refusals since the last logged

    async def send(self, datagram: bytes) -> None:
        """Send `datagram`; one too large is dropped (logged); raise SendError when it could not be sent."""
        sock, peer = await self._take()
        try:
            await self._send_on(sock, datagram)
        except BaseException:
            sock.close()  # the next send makes a socket anew
            raise
        self._keep(sock, peer)

    async def send_each(self, datagrams: Iterable[bytes], plugin: str) -> None:
        """A batch's datagrams as Kong's statsd logger sends them (statsd, datadog: statsd_logger.lua): the socket is
        made first, and SendError raised when it cannot be (the name does not resolve: Kong's setpeername fails,
        its handler returns false and its queue retries the batch); a datagram that then fails is logged, naming
        `plugin`, and lost, and the next one is sent on the same socket."""
        sock, peer = await self._take()
        try:
            for datagram in datagrams:
                try:
                    await self._send_on(sock, datagram)
                except SendError as e:
                    log.error("%s: %s", plugin, e)  # Kong's "[statsd] failed to send data to HOST:PORT: ..."
        except BaseException:
            sock.close()
            raise
        self._keep(sock, peer)

    async def _take(self) -> tuple[trio.socket.SocketType, Address]:
        """A socket connected to the address the host resolves to now, and that address: the idle socket when it
        is connected there, else a new one; SendError when the name does not resolve or no socket can be made."""
        peer = self._literal or await self._resolve()
        idle, self._idle = self._idle, None
        if idle is not None:
            if idle[1] == peer:
                return idle
            idle[0].close()  # connected to where the name no longer leads (or to another of its records)
        return await self._connect(peer), peer

    def _keep(self, sock: trio.socket.SocketType, peer: Address) -> None:
        """Keep `sock`, connected to `peer`, for the next send, unless a concurrent send kept its own."""
        if self._idle is None:
            self._idle = (sock, peer)
        else:
            sock.close()

    async def _send_on(self, sock: trio.socket.SocketType, datagram: bytes) -> None:
        """One datagram on a connected socket; one too large is dropped (logged); SendError when it failed."""
        if len(datagram) > MAX_DATAGRAM:
            log.warning("%s: a log entry of %d bytes does not fit in a datagram (at most %d): dropped", self.where,
                        len(datagram), MAX_DATAGRAM)
            return
        try:
            with trio.fail_after(self.timeout):
                try:
                    await sock.send(datagram)
                except ConnectionRefusedError:  # an earlier datagram's ICMP error, cleared: this one was not sent
                    self._log_refused()
                    await sock.send(datagram)
        except trio.TooSlowError:
            raise SendError(f"failed to send data to {self.named}: timeout (not sent within "
                            f"{self.timeout:g}s)") from None
        except OSError as e:
            if e.errno == errno.EMSGSIZE:  # (an IPv6 path, or a smaller limit than MAX_DATAGRAM assumes)
                log.warning("%s: a log entry of %d bytes does not fit in a datagram: dropped", self.where,
                            len(datagram))
                return
            raise SendError(f"failed to send data to {self.named}: {socket_error(e)}") from None

    def _log_refused(self) -> None:
        """Say, at most every REFUSED_LOG_EVERY_S seconds, how many datagrams the collector's closed port refused."""
        self._refused += 1
        now = trio.current_time()
        if now - self._refused_logged < REFUSED_LOG_EVERY_S:
            return
        log.warning("%s: the collector's port was closed: %d datagram(s) sent to it were lost (ICMP port "
                    "unreachable)", self.where, self._refused)
        self._refused_logged, self._refused = now, 0

    async def _resolve(self) -> Address:
        """The address and port the host name resolves to now (the DNS client's, TTL-cached; an SRV record's port
        replaces the configured one); SendError when it does not resolve in time."""
        try:
            with trio.fail_after(self.timeout):
                return await resolve(self.host, self.port)
        except NameNotResolved as e:  # Kong's patched setpeername's words
            raise SendError(f"failed to connect to {self.named}: DNS resolution failed: {e.reason}") from None
        except trio.TooSlowError:
            raise SendError(f"failed to connect to {self.named}: timeout (no DNS answer for {self.host} within "
                            f"{self.timeout:g}s)") from None

    async def _connect(self, peer: Address) -> trio.socket.SocketType:
        """A socket connected to `peer`; SendError when it cannot be made."""
        try:
            sock = trio.socket.socket(socket.AF_INET6 if ":" in peer[0] else socket.AF_INET, socket.SOCK_DGRAM)
            try:
                await sock.connect(peer)  # (a UDP connect only sets the peer: it does not wait)
            except BaseException:
                sock.close()
                raise
        except OSError as e:
            raise SendError(f"failed to connect to {self.named}: {socket_error(e)}") from None
        return sock

    def close(self) -> None:
        """Close the idle socket (one in use is closed by its send)."""
        idle, self._idle = self._idle, None
        if idle is not None:
            idle[0].close()
