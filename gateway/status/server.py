"""Serving the status app with hypercorn's Trio worker on `gateway.status_listen`."""

from __future__ import annotations

import errno
import logging
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from gateway.config.tls import NGX_LISTEN_BACKLOG
from gateway.http.net import unbound_listener

log = logging.getLogger("gateway.status")


def hypercorn_config(host: str, port: int, backlog: int = NGX_LISTEN_BACKLOG) -> HypercornConfig:
    cfg = HypercornConfig()
    cfg.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    cfg.accesslog = None
    cfg.errorlog = log  # hypercorn's own messages go through our logging
    cfg.include_server_header = False
    cfg.graceful_timeout = 1.0  # on stop, open probe connections get this long
    cfg.keep_alive_timeout = 5.0
    cfg.backlog = backlog  # nginx's listen backlog=N (kong.conf's status_listen)
    return cfg


class StatusListenError(OSError):
    """The status server cannot bind gateway.status_listen; its text (also its repr, which a supervisor's start
    error shows) names the setting and what to do."""

    def __repr__(self) -> str:
        return str(self.strerror)


def _listen_socket(host: str, port: int, reuseport: bool) -> int:
    """A TCP socket bound to host:port (SO_REUSEPORT with nginx's listen reuseport; IPv6-only for an IPv6 address,
    as nginx's ipv6only=on), detached for hypercorn's fd:// bind; a bind failure raises StatusListenError here."""
    sock = unbound_listener(host, reuseport)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        todo = "stop what listens there (`ss -ltnp` names it), or " if e.errno == errno.EADDRINUSE else ""
        raise StatusListenError(e.errno, f"gateway.status_listen: cannot listen on {shown}: {e.strerror or e}; "
                                         f"{todo}change gateway.status_listen") from None
    return sock.detach()


async def serve_status(app: Any, host: str, port: int, *, backlog: int = NGX_LISTEN_BACKLOG, reuseport: bool = False,
                       task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve `app` on host:port until cancelled; task_status.started((host, bound port)) once listening.

    Port 0 picks a free port (tests). A bind failure (port in use) raises StatusListenError before started().
    `backlog` and `reuseport`: kong.conf's status_listen options, as nginx's listen takes them.
    """
    cfg = hypercorn_config(host, port, backlog)
    cfg.bind = [f"fd://{_listen_socket(host, port, reuseport)}"]

    started = False

    class _Status:
        def started(self, binds: list[str] | None = None) -> None:
            nonlocal started
            bound = (binds or [""])[0]
            hostport = bound.split("://", 1)[-1]
            h, _, p = hostport.rpartition(":")
            started = True
            task_status.started((h.strip("[]") or host, int(p) if p.isdigit() else port))

    try:
        await serve(app, cfg, task_status=_Status())  # type: ignore[arg-type]
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        if not started and len(leaves) == 1 and isinstance(leaves[0], OSError):
            raise leaves[0] from None  # hypercorn nests a bind error in two nurseries: give the caller the OSError
        raise


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out += _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return out
