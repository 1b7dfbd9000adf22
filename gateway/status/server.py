"""Serving the status app on `gateway.status_listen`: connections accepted here, each spoken to by hypercorn's Trio
HTTP server, so that on a `proxy_protocol` status listener the PROXY protocol header is read first, as nginx reads
it on Kong's status server (`status_listen = ... proxy_protocol`)."""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper
from hypercorn.utils import wrap_app

from gateway.config.tls import NGX_LISTEN_BACKLOG
from gateway.http.net import Conn, unbound_listener
from gateway.http.proxy_protocol import BrokenHeader, read_header

log = logging.getLogger("gateway.status")

NGINX_HEADER_TIMEOUT = 60.0  # nginx's client_header_timeout, which Kong keeps (gateway.header_timeout_s)
_ACCEPT_RETRY = 0.1  # out of descriptors or memory: the next accept this much later (trio's serve_listeners)
_OUT_OF_RESOURCES = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS))
_CLIENT_GONE = frozenset((errno.ECONNABORTED, errno.EPROTO, errno.EPERM))  # accept's errors for one client only


def hypercorn_config(backlog: int = NGX_LISTEN_BACKLOG) -> HypercornConfig:
    cfg = HypercornConfig()
    cfg.accesslog = None
    cfg.errorlog = log  # hypercorn's own messages go through our logging
    cfg.include_server_header = False
    cfg.keep_alive_timeout = 5.0
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
                       proxy_protocol: bool = False, header_timeout: Callable[[], float] = lambda: NGINX_HEADER_TIMEOUT,
                       task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve `app` on host:port until cancelled; task_status.started((host, bound port)) once listening.

    Port 0 picks a free port (tests). A bind failure (port in use) raises StatusListenError before started().
    `backlog`, `reuseport` and `proxy_protocol`: kong.conf's status_listen options, as nginx's listen takes them;
    `header_timeout`: the current client_header_timeout, within which a PROXY protocol header must be whole.
    The app's lifespan is not run: StatusApp has nothing to start or stop.
    """
    cfg = hypercorn_config(backlog)
    listener = _listen_socket(host, port, reuseport, backlog)
    wrapped = wrap_app(app, cfg.wsgi_max_body_size, "asgi")
    context = WorkerContext(None)
    try:
        async with trio.open_nursery() as connections:
            bound = listener.getsockname()
            task_status.started((bound[0], bound[1]))
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
                connections.start_soon(_serve_connection, sock, peer, wrapped, cfg, context,
                                       header_timeout() if proxy_protocol else None)
    finally:
        listener.close()


async def _serve_connection(sock: socket.socket, peer: Any, app: AppWrapper, cfg: HypercornConfig,
                            context: WorkerContext, header_timeout: float | None) -> None:
    """One status connection: its PROXY protocol header first when `header_timeout` is set, then HTTP."""
    if header_timeout is not None:
        conn, whole = Conn(sock, peer), False
        try:
            whole = await _proxy_header(conn, header_timeout)
        finally:
            if not whole:  # (a cancelled read too: the status server is stopping)
                conn.close()
        if not whole:
            return
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
    await TCPServer(app, cfg, context, {}, stream)  # type: ignore[arg-type]  # a plain stream too, as hypercorn's own


async def _proxy_header(conn: Conn, timeout: float) -> bool:
    """Read the PROXY protocol header off a new status connection within client_header_timeout (nginx's
    ngx_http_wait_request_handler, src/http/ngx_http_request.c:355,468-471 at release-1.27.1); False when it is to be
    closed unanswered: the header is broken, late or missing. The address it names is dropped: Kong's status server
    has no realip (kong/templates/nginx_kong.lua's `set_real_ip_from` is the proxy server's), and the status
    server uses no client address."""
    with trio.move_on_after(timeout):
        try:
            await read_header(conn)
            return True
        except BrokenHeader as e:
            log.error("gateway.status_listen: %s from %s: connection closed (is the balancer in front sending the "
                      "PROXY protocol, e.g. HAProxy's send-proxy-v2?)", e, conn.peer)
        except (EOFError, OSError) as e:
            log.info("gateway.status_listen: client %s %s", conn.peer, e)
        return False
    log.info("gateway.status_listen: client %s sent no whole PROXY protocol header within header_timeout_s (%gs): "
             "connection closed", conn.peer, timeout)
    return False
