"""A switched connection relayed byte for byte: after an upstream's 101 to an upgrade request (a WebSocket), as nginx
relays an upgraded connection (ngx_http_upstream_upgrade), which Kong's http and https routes use.

Two tasks in a nursery owned by `relay`, one per direction, each reading what is ready and writing it on; the first
side to close (EOF or a reset, after what it sent before was passed on) ends both directions, and the caller closes
both connections, neither ever reused. As nginx applies proxy_read_timeout and proxy_send_timeout to an upgraded
connection (Kong sets them from the service's read_timeout and write_timeout): the upstream silent for read_timeout,
or a write to it that waits write_timeout, ends the tunnel. A write to the client that waits is bounded by the
client connection's own send timer (send_timeout_s, gateway.http.net.Conn.sendall), which ends the connection.
"""

from __future__ import annotations

import trio

from gateway.http.net import Conn

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


class _Tunnel:
    __slots__ = ("ended", "scope", "to_client", "to_upstream")

    def __init__(self, scope: trio.CancelScope) -> None:
        self.ended = ""
        self.scope = scope
        self.to_client = 0  # bytes relayed each way
        self.to_upstream = 0

    def end(self, why: str) -> None:
        if not self.ended:
            self.ended = why
        self.scope.cancel()


async def relay(client: Conn, upstream: Conn, to_upstream: bytes, to_client: bytes, read_timeout: float,
                write_timeout: float) -> tuple[str, int, int]:
    """Relay both ways until either side closes or a timeout ends it: (why it ended, bytes sent to the client, bytes
    sent to the upstream). `to_upstream` and `to_client` are what the codecs read past the two heads already: they
    go first. Raises only what cancels it from outside (a timer of the client connection, the worker stopping)."""
    async with trio.open_nursery() as nursery:
        tunnel = _Tunnel(nursery.cancel_scope)
        nursery.start_soon(_downstream, tunnel, client, upstream, to_client, read_timeout)
        nursery.start_soon(_upstream, tunnel, client, upstream, to_upstream, write_timeout)
    return tunnel.ended, tunnel.to_client, tunnel.to_upstream


async def _downstream(tunnel: _Tunnel, client: Conn, upstream: Conn, data: bytes, read_timeout: float) -> None:
    """Upstream to client; read_timeout bounds each wait for the upstream."""
    while True:
        if data:
            try:
                await client.sendall(data)
            except _BROKEN:  # BrokenPipeError: the client went away (a reset, say)
                tunnel.end(CLIENT_CLOSED)
                return
            tunnel.to_client += len(data)
        with trio.move_on_after(read_timeout) as waited:
            try:
                data = await upstream.recv()
            except _BROKEN:
                data = b""
        if waited.cancelled_caught:
            tunnel.end(UPSTREAM_SILENT)
            return
        if not data:
            tunnel.end(UPSTREAM_CLOSED)
            return


async def _upstream(tunnel: _Tunnel, client: Conn, upstream: Conn, data: bytes, write_timeout: float) -> None:
    """Client to upstream; write_timeout bounds each write that has to wait for the upstream to read."""
    while True:
        if data:
            with trio.move_on_after(write_timeout) as waited:
                try:
                    await upstream.sendall(data)
                except _BROKEN:  # BrokenPipeError: the upstream went away
                    tunnel.end(UPSTREAM_CLOSED)
                    return
            if waited.cancelled_caught:
                tunnel.end(UPSTREAM_STUCK)
                return
            tunnel.to_upstream += len(data)
        try:
            data = await client.recv()
        except _BROKEN:
            data = b""
        if not data:
            tunnel.end(CLIENT_CLOSED)
            return
