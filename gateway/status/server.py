"""Serving the status app on `gateway.status_listen`: connections accepted here, each spoken to by hypercorn's Trio
HTTP server, so that on a `proxy_protocol` status listener the PROXY protocol header is read first, as nginx reads
it on Kong's status server (`status_listen = ... proxy_protocol`), and with nginx's http-level client settings (the
`gateway:` settings of the same names), which apply to Kong's status `server {}` as to the proxy's."""

from __future__ import annotations

import errno
import logging
import math
import socket
from collections.abc import Callable
from typing import Any

import h11
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Event, Updated
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper
from hypercorn.utils import wrap_app

from gateway.config.listen import NGX_LISTEN_BACKLOG
from gateway.config.schema import GatewaySettings
from gateway.http.codec import HeadBuffers, ProtocolError
from gateway.http.net import Conn, unbound_listener
from gateway.http.proxy_protocol import header_or_none
from gateway.status.collect import ConnectionCounts

log = logging.getLogger("gateway.status")

_ACCEPT_RETRY = 0.1  # out of descriptors or memory: the next accept this much later (trio's serve_listeners)
_OUT_OF_RESOURCES = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS))
_CLIENT_GONE = frozenset((errno.ECONNABORTED, errno.EPROTO, errno.EPERM))  # accept's errors for one client only


_DEFAULTS = GatewaySettings()  # nginx's (and Kong's) client settings, for a status server started without any
# nginx's answer to a request line longer than a large header buffer (src/http/ngx_http_request.c:1228-1235)
_URI_TOO_LONG = b"HTTP/1.1 414 Request-URI Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
# a status connection's state as ConnectionCounts counts it: its attribute, "" for waiting (counted as the rest)
_WAITING, _READING, _WRITING = "", "reading", "writing"


def hypercorn_config(backlog: int = NGX_LISTEN_BACKLOG, settings: GatewaySettings = _DEFAULTS) -> HypercornConfig:
    """hypercorn's Config for status connections under `settings`' client limits. Its idle timer (keep_alive_timeout,
    which runs from a connection's start to a whole request head) is off: _ClientStream times reads as nginx does,
    header_timeout_s for a head and keepalive_timeout_s between requests."""
    cfg = HypercornConfig()
    cfg.accesslog = None
    cfg.errorlog = log  # hypercorn's own messages go through our logging
    cfg.include_server_header = False
    cfg.keep_alive_timeout = math.inf
    cfg.keep_alive_max_requests = settings.keepalive_requests  # the Nth answer says Connection: close, as nginx's
    cfg.h11_max_incomplete_size = settings.max_header_bytes  # (h11 answers a longer head 431, nginx 400)
    cfg.backlog = backlog  # nginx's listen backlog=N (kong.conf's status_listen)
    return cfg


class StatusListenError(OSError):
    """The status server cannot bind gateway.status_listen; its text (also its repr, which a supervisor's start
    error shows) names the setting and what to do."""

    def __repr__(self) -> str:
        return str(self.strerror)


def _listen_socket(host: str, port: int, reuseport: bool, backlog: int) -> socket.socket:
    """A non-blocking TCP socket listening on host:port (SO_REUSEPORT with nginx's listen reuseport; IPv6-only for an
    IPv6 address, as nginx's ipv6only=on); a bind failure raises StatusListenError."""
    sock = unbound_listener(host, reuseport)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        todo = "stop what listens there (`ss -ltnp` names it), or " if e.errno == errno.EADDRINUSE else ""
        raise StatusListenError(e.errno, f"gateway.status_listen: cannot listen on {shown}: {e.strerror or e}; "
                                         f"{todo}change gateway.status_listen") from None
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


async def serve_status(app: Any, host: str, port: int, *, backlog: int = NGX_LISTEN_BACKLOG, reuseport: bool = False,
                       proxy_protocol: bool = False, settings: Callable[[], GatewaySettings] = lambda: _DEFAULTS,
                       task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve `app` on host:port until cancelled; task_status.started((host, bound port)) once listening.

    Port 0 picks a free port (tests). A bind failure (port in use) raises StatusListenError before started().
    `backlog`, `reuseport` and `proxy_protocol`: kong.conf's status_listen options, as nginx's listen takes them;
    `settings`: the current `gateway:` settings (read at each accept, so a reload applies to new connections), whose
    client timeouts and limits a connection gets. Cancelled, it closes every connection at once: a send hypercorn
    shields from the cancel ends too. The app's lifespan is not run: StatusApp has nothing to start or stop.
    Connections and requests are counted in the app's `counts` (StatusApp's), as nginx's stub_status counts them.
    """
    listener = _listen_socket(host, port, reuseport, backlog)
    counts = getattr(app, "counts", None) or ConnectionCounts()
    wrapped = wrap_app(app, HypercornConfig.wsgi_max_body_size, "asgi")
    context = WorkerContext(None)
    open_streams: set[_ClientStream] = set()
    try:
        async with trio.open_nursery() as connections:
            bound = listener.getsockname()
            task_status.started((bound[0], bound[1]))
            try:
                await _accept(listener, settings, backlog, proxy_protocol, wrapped, context, connections,
                              open_streams, counts)
            finally:  # cancelled (or failed): every connection ends now, its shielded sends too
                for stream in list(open_streams):
                    stream.abort()
    finally:
        listener.close()


async def _accept(listener: socket.socket, settings: Callable[[], GatewaySettings], backlog: int, proxy_protocol: bool,
                  app: AppWrapper, context: WorkerContext, connections: trio.Nursery,
                  open_streams: set[_ClientStream], counts: ConnectionCounts) -> None:
    """Accept status connections for ever, each served in `connections` with the settings current at its accept."""
    made: tuple[GatewaySettings, HypercornConfig] | None = None  # hypercorn's Config for the settings: one a reload
    while True:
        await trio.lowlevel.wait_readable(listener)
        try:
            sock, peer = listener.accept()
        except BlockingIOError:
            continue
        except OSError as e:
            if e.errno in _OUT_OF_RESOURCES:
                log.error("gateway.status_listen: cannot accept a connection (%s): trying again in %g s",
                          e.strerror, _ACCEPT_RETRY)
                await trio.sleep(_ACCEPT_RETRY)
            elif e.errno not in _CLIENT_GONE:
                raise
            continue
        current = settings()
        if made is None or made[0] is not current:
            made = (current, hypercorn_config(backlog, current))
        counts.accepted += 1  # (nginx's accepted and active, from the accept: ngx_event_accept.c)
        counts.active += 1
        connections.start_soon(_serve_connection, sock, peer, app, made[1], context, current,
                               proxy_protocol, open_streams, counts)


async def _serve_connection(sock: socket.socket, peer: Any, app: AppWrapper, cfg: HypercornConfig,
                            context: WorkerContext, settings: GatewaySettings, proxy_protocol: bool,
                            open_streams: set[_ClientStream], counts: ConnectionCounts) -> None:
    """One status connection, counted active in `counts` until it ends."""
    try:
        await _speak(sock, peer, app, cfg, context, settings, proxy_protocol, open_streams, counts)
    finally:
        counts.active -= 1


async def _speak(sock: socket.socket, peer: Any, app: AppWrapper, cfg: HypercornConfig, context: WorkerContext,
                 settings: GatewaySettings, proxy_protocol: bool, open_streams: set[_ClientStream],
                 counts: ConnectionCounts) -> None:
    """One status connection: its PROXY protocol header first with `proxy_protocol`, then HTTP."""
    if proxy_protocol:
        conn, whole = Conn(sock, peer), False
        try:
            whole = await _proxy_header(conn, settings.header_timeout_s)
        finally:
            if not whole:  # (a cancelled read too: the status server is stopping)
                conn.close()
        if not whole:
            return
    stream = _ClientStream(trio.SocketStream(trio.socket.from_stdlib_socket(sock)), settings, peer, counts)
    open_streams.add(stream)
    try:
        server = _StatusTCPServer(app, cfg, context, {}, stream)  # type: ignore[arg-type]  # a plain stream too
        stream.server = server
        await server
    finally:
        open_streams.discard(stream)
        stream.abort()
        stream.enter(_WAITING)


class _StatusTCPServer(TCPServer):
    """hypercorn's TCPServer, telling its _ClientStream when a connection turns idle or busy; the stream's reads
    time the connection out, so hypercorn's idle timer (which would otherwise outlive the reads) ends with them."""

    stream: _ClientStream  # type: ignore[assignment]  # (TCPServer's annotation: a TLS stream, though it takes both)

    async def _read_data(self) -> None:
        try:
            await super()._read_data()
        finally:
            await self.idle_task.stop()

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, Updated):  # (before any await: the next request may be parsed meanwhile)
            self.stream.counted(busy=not event.idle)
        await super().protocol_send(event)
        if isinstance(event, Updated):
            self.stream.rearm()


class _ClientStream(trio.abc.HalfCloseableStream):
    """A status connection's socket as hypercorn's TCPServer uses it, timed as nginx times a client: a write that
    sends nothing for send_timeout_s aborts the connection (src/http/ngx_http_request.c:2846, 2874-2879 at
    release-1.27.1), as a read does that waits past header_timeout_s for a head (whole within it from the accept
    or, kept alive, from its first byte), keepalive_timeout_s for a next request, or client_body_timeout_s for the
    next bytes of a body. A request line longer than max_header_line_bytes is answered 414 and closed. Its request
    is counted in `counts` as nginx counts one: begun and reading from its first bytes, writing once its head is
    whole (hypercorn has parsed it) until its answer is sent."""

    def __init__(self, inner: trio.SocketStream, settings: GatewaySettings, peer: Any,
                 counts: ConnectionCounts | None = None) -> None:
        self.inner = inner
        self.counts = counts or ConnectionCounts()
        self._phase = _WAITING  # the connection's state in `counts`
        self.socket = inner.socket  # (TCPServer reads the addresses off it)
        self.settings = settings
        self.peer = peer
        self.server: _StatusTCPServer | None = None
        self._head_by: float | None = None  # when the head being read must be whole
        self._awaiting_byte = False  # kept alive: no byte of the next head yet (keepalive_timeout_s runs)
        self._served = False  # a request was read whole: the next waits keepalive_timeout_s for its first byte
        self._line: HeadBuffers | None = None  # the request line being read, until it ends
        self._reading: trio.CancelScope | None = None  # the read under way (or the last)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with trio.move_on_after(self.settings.send_timeout_s):
            await self.inner.send_all(data)
            return
        log.info("gateway.status_listen: client %s timed out reading its answer (send_timeout_s %gs): connection "
                 "closed", self.peer, self.settings.send_timeout_s)
        self.abort()
        raise trio.BrokenResourceError("send_timeout_s")

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        with trio.CancelScope() as self._reading:
            self.rearm()
            data = await self.inner.receive_some(max_bytes)
            if self._their_state() is h11.IDLE and data:
                self._begin(_READING)
                if not self._head_arriving(data):
                    await self._refuse_line()
            return data
        log.info("gateway.status_listen: client %s sent nothing in time (%s): connection closed", self.peer,
                 "keepalive_timeout_s" if self._awaiting_byte else
                 "header_timeout_s" if self._head_by is not None else "client_body_timeout_s")
        raise trio.TooSlowError

    def rearm(self) -> None:
        """Time the read under way for the client's state now (hypercorn reads on while it answers a request, and
        the connection is idle, kept alive, once the answer is sent)."""
        if self._reading is not None:
            self._reading.deadline = trio.current_time() + self._wait(self._their_state())

    def counted(self, busy: bool) -> None:
        """hypercorn has a request's whole head (`busy`: writing until it is answered; begun now if no bytes of it
        were read since the last, as a pipelined one's), or has answered it (waiting)."""
        if busy:
            self._begin(_WRITING)
        else:
            self.enter(_WAITING)

    def _begin(self, phase: str) -> None:
        """A request is under way, in `phase`: counted as begun when it was not yet (as nginx's, at its first bytes)."""
        if self._phase == _WAITING:
            self.counts.requests += 1
        if self._phase != phase and self._phase != _WRITING:
            self.enter(phase)

    def enter(self, phase: str) -> None:
        """Count the connection in `phase` (reading, writing, or waiting: neither) rather than the one it was in."""
        counts = self.counts
        if self._phase:
            setattr(counts, self._phase, getattr(counts, self._phase) - 1)
        if phase:
            setattr(counts, phase, getattr(counts, phase) + 1)
        self._phase = phase

    def _their_state(self) -> object:
        """The client's h11 state on this connection (None once it speaks HTTP/2, after an h2c upgrade)."""
        protocol = getattr(getattr(self.server, "protocol", None), "protocol", None)  # hypercorn's H11Protocol
        return getattr(getattr(protocol, "connection", None), "their_state", None)

    def _wait(self, state: object) -> float:
        """How long the next read may wait for its first byte, in `state`."""
        now = trio.current_time()
        if state is h11.IDLE:
            if self._head_by is None:
                self._awaiting_byte = self._served
                wait = self.settings.keepalive_timeout_s if self._served else self.settings.header_timeout_s
                self._head_by = now + wait
                self._line = HeadBuffers(None, self.settings.max_header_line_bytes, 1 << 30)
            return max(0.0, self._head_by - now)
        self._head_by = None
        if state is h11.SEND_BODY:
            self._served = True
            return self.settings.client_body_timeout_s
        if state is None:
            return self.settings.keepalive_timeout_s
        self._served = True
        return math.inf

    def _head_arriving(self, data: bytes | bytearray) -> bool:
        """The next bytes of a head: the first of a kept-alive connection's next head start header_timeout_s, and the
        request line is measured as nginx's buffers take it; False when it is too long."""
        if self._awaiting_byte:
            self._awaiting_byte = False
            self._head_by = trio.current_time() + self.settings.header_timeout_s
        if self._line is not None:
            end = data.find(b"\n")
            try:
                self._line.feed(data if end < 0 else data[:end + 1])
            except ProtocolError:
                return False
            if end >= 0:
                self._line = None
        return True

    async def _refuse_line(self) -> None:
        """Answer 414 (nginx's "client sent too long URI") and close; hypercorn sees the connection closed."""
        log.info("gateway.status_listen: client %s sent a request line longer than max_header_line_bytes (%d): 414",
                 self.peer, self.settings.max_header_line_bytes)
        with trio.move_on_after(self.settings.send_timeout_s):
            try:
                await self.inner.send_all(_URI_TOO_LONG)
            except (trio.BrokenResourceError, trio.BusyResourceError):
                pass
        self.abort()
        raise trio.BrokenResourceError("request line too long")

    def abort(self) -> None:
        """Close the socket now: a send or receive waiting on it (shielded or not) ends with ClosedResourceError."""
        self.socket.close()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _proxy_header(conn: Conn, timeout: float) -> bool:
    """Read the PROXY protocol header off a new status connection within client_header_timeout (nginx's
    ngx_http_wait_request_handler, src/http/ngx_http_request.c:355,468-471 at release-1.27.1); False when it is to be
    closed unanswered: the header is broken, late or missing. The address it names is dropped: Kong's status server
    has no realip (kong/templates/nginx_kong.lua's `set_real_ip_from` is the proxy server's), and the status
    server uses no client address."""
    with trio.move_on_after(timeout):
        return await header_or_none(conn, "gateway.status_listen") is not None
    log.info("gateway.status_listen: client %s sent no whole PROXY protocol header within header_timeout_s (%gs): "
             "connection closed", conn.peer, timeout)
    return False
