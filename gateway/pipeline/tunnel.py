"""A switched connection relayed byte for byte: after an upstream's 101 to an upgrade request (a WebSocket), as nginx
relays an upgraded connection (ngx_http_upstream_upgrade), which Kong's http and https routes use.

Two tasks in a nursery owned by `relay`, one per direction, each reading what is ready and writing it on; the first
side to close (EOF or a reset, after what it sent before was passed on) ends both directions, and the caller closes
both connections, neither ever reused. As nginx applies proxy_read_timeout and proxy_send_timeout to an upgraded
connection (Kong sets them from the service's read_timeout and write_timeout): a wait for the upstream to send
(read_timeout), or for it to take a write (write_timeout), ends the tunnel when it lasts that long without an event
of the tunnel. As in nginx's ngx_http_upstream_process_upgraded, which runs on every event of either connection and
re-arms the timers of the waits under way, an event is anything either side sent, or a write that went through: a
client that keeps talking keeps the tunnel open though the upstream is silent, and an upstream that keeps talking
keeps it open though it reads nothing. A write to the client that waits is bounded by the client connection's own
send timer (send_timeout_s, gateway.http.net.Conn.sendall), which ends the connection; the events re-arm it too.
"""

from __future__ import annotations

import math
from typing import Protocol

import trio

from gateway.http.net import Conn
from gateway.http.timers import Phase

# How a tunnel ended (relay's answer, for the log)
CLIENT_CLOSED = "the client closed"
UPSTREAM_CLOSED = "the upstream closed"
UPSTREAM_SILENT = "the upstream was silent for read_timeout"
UPSTREAM_STUCK = "a write to the upstream waited write_timeout"
# A side that broke: BrokenPipeError and the like. BusyResourceError: a TLS connection (either side) whose read has
# a record of its own to send (a KeyUpdate answer, gateway.http.tls.TlsConn.recv) while the other direction's write
# to it waits for the socket; the tunnel ends then instead of failing the request. (That read and that write are the
# one place two tasks write one socket; TLS 1.3 peers seldom ask for a KeyUpdate answer.)
_BROKEN = (OSError, trio.BusyResourceError)


class Counted(Protocol):
    """What counts the bytes sent to the client (an Exchange: nginx's $bytes_sent, however the request ends)."""

    sent: int


class _Tunnel:
    __slots__ = ("ended", "scope", "to_client", "to_upstream", "client", "read_timeout", "write_timeout", "reading",
                 "writing", "counted")

    def __init__(self, scope: trio.CancelScope, client: Conn, read_timeout: float, write_timeout: float,
                 counted: Counted) -> None:
        self.ended = ""
        self.scope = scope
        self.counted = counted
        self.to_client = 0  # bytes relayed each way
        self.to_upstream = 0
        self.client = client
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        # the waits for the upstream under way (their deadlines move with each event), else scopes that never expire
        self.reading = self.writing = trio.CancelScope()

    def end(self, why: str) -> None:
        if not self.ended:
            self.ended = why
        self.scope.cancel()

    def event(self) -> None:
        """Something went through: re-arm the timers of the waits under way (ngx_http_upstream_process_upgraded)."""
        now = trio.current_time()
        reading, writing = self.reading, self.writing
        if reading.deadline != math.inf:
            reading.deadline = now + self.read_timeout
        if writing.deadline != math.inf:
            writing.deadline = now + self.write_timeout
        timer = self.client.send_timer
        if timer is not None and timer.phase is Phase.CLIENT_WRITE:  # a write to the client waits: send_timeout
            timer.set(self.client.send_timeout, Phase.CLIENT_WRITE)


async def relay(client: Conn, upstream: Conn, to_upstream: bytes, to_client: bytes, read_timeout: float,
                write_timeout: float, counted: Counted) -> tuple[str, int, int]:
    """Relay both ways until either side closes or a timeout ends it: (why it ended, bytes sent to the client, bytes
    sent to the upstream). `to_upstream` and `to_client` are what the codecs read past the two heads already: they
    go first; each write to the client is added to `counted.sent` as it goes (a tunnel cut from outside is
counted too). Raises only what cancels it from outside (a timer of the client connection, the worker stopping)."""
    async with trio.open_nursery() as nursery:
        tunnel = _Tunnel(nursery.cancel_scope, client, read_timeout, write_timeout, counted)
        nursery.start_soon(_downstream, tunnel, client, upstream, to_client)
        nursery.start_soon(_upstream, tunnel, client, upstream, to_upstream)
    return tunnel.ended, tunnel.to_client, tunnel.to_upstream


async def _downstream(tunnel: _Tunnel, client: Conn, upstream: Conn, data: bytes) -> None:
    """Upstream to client; read_timeout bounds each wait for the upstream, re-armed by every event."""
    idle = tunnel.reading
    while True:
        if data:
            try:
                await client.sendall(data)
            except _BROKEN:  # BrokenPipeError: the client went away (a reset, say)
                tunnel.end(CLIENT_CLOSED)
                return
            tunnel.to_client += len(data)
            tunnel.counted.sent += len(data)
            tunnel.event()
        with trio.CancelScope(deadline=trio.current_time() + tunnel.read_timeout) as waited:
            tunnel.reading = waited
            try:
                data = await upstream.recv()
            except _BROKEN:
                data = b""
        tunnel.reading = idle
        if waited.cancelled_caught:
            tunnel.end(UPSTREAM_SILENT)
            return
        if not data:
            tunnel.end(UPSTREAM_CLOSED)
            return
        tunnel.event()


async def _upstream(tunnel: _Tunnel, client: Conn, upstream: Conn, data: bytes) -> None:
    """Client to upstream; write_timeout bounds each write that has to wait for the upstream to read, re-armed by
    every event."""
    idle = tunnel.writing
    while True:
        if data:
            with trio.CancelScope(deadline=trio.current_time() + tunnel.write_timeout) as waited:
                tunnel.writing = waited
                try:
                    await upstream.sendall(data)
                except _BROKEN:  # BrokenPipeError: the upstream went away
                    tunnel.end(UPSTREAM_CLOSED)
                    return
            tunnel.writing = idle
            if waited.cancelled_caught:
                tunnel.end(UPSTREAM_STUCK)
                return
            tunnel.to_upstream += len(data)
            tunnel.event()
        try:
            data = await client.recv()
        except _BROKEN:
            data = b""
        if not data:
            tunnel.end(CLIENT_CLOSED)
            return
        tunnel.event()
