"""The admin endpoint's socket: a ZeroMQ ROUTER bound for the root (gateway.node.admin serves it).

ipc endpoints are created with 0600 permissions (only the gateway's user may talk to it); a tcp endpoint needs
CURVE keys, which this gateway does not configure yet, so the config check refuses it (gateway.config.loader, as
check-config and start run it) rather than leave it open; bind_admin refuses it too.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Awaitable, Callable
from typing import Any

import zmq

from gateway.bus.admin_protocol import AdminRequest
from gateway.bus.ipc import in_use, listener_pid

log = logging.getLogger("gateway.admin")

AdminHandler = Callable[[AdminRequest], Awaitable[Any]]


class AdminCommandError(Exception):
    """Raised by a handler for a request it understood but cannot carry out; the message is the reply's error."""


def not_a_socket(path: str) -> str | None:
    """Why an ipc endpoint must not be bound at `path`: it names something other than a socket (a file, a directory,
    a symlink), which ZeroMQ's bind would unlink; None if nothing or a socket is there. As nginx, which never removes
    what a listen path names at start (bind() fails: src/core/ngx_connection.c, ngx_open_listening_sockets)."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return None  # (nothing there; a path that cannot be reached fails the bind itself)
    return None if stat.S_ISSOCK(mode) else f"{path} exists and is not a socket; choose another path"


def bind_admin(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    """Bind the ROUTER socket; raises ValueError with a readable reason for an endpoint we refuse (one in use, or a
    path naming what is not a socket)."""
    if endpoint.startswith("tcp://"):
        raise ValueError(f"gateway.admin: {endpoint} is a tcp endpoint, which needs CURVE keys; use an ipc:// path")
    if not endpoint.startswith("ipc://"):
        raise ValueError(f"gateway.admin: expected ipc://PATH, got {endpoint!r}")
    path = endpoint[len("ipc://"):]
    os.makedirs(os.path.dirname(path) or ".", mode=0o750, exist_ok=True)
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, 1 << 20)
    old = os.umask(0o177)
    try:
        if (problem := not_a_socket(path)) is not None:
            raise ValueError(problem)
        if os.path.exists(path):
            holder = listener_pid(path)
            if holder is not None:  # (binding would take the endpoint from a running gateway)
                raise ValueError(in_use(endpoint, holder, "gateway.admin"))
            os.unlink(path)  # a stale socket file from a previous run
        sock.bind(endpoint)
        os.chmod(path, 0o600)
    except BaseException:
        sock.close()  # (an open socket would hold ctx.term() for ever)
        raise
    finally:
        os.umask(old)
    return sock

