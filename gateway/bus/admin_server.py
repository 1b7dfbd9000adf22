"""The admin endpoint's socket: a ZeroMQ ROUTER bound for the root (gateway.node.admin serves it).

ipc endpoints are created with 0600 permissions (only the gateway's user may talk to it); a tcp endpoint is a CURVE
server (gateway.admin_curve's key pair), whose clients the root's ZAP handler lets in (gateway.bus.curve): the config
check refuses a tcp endpoint without admin_curve (gateway.config.loader, as check-config and start run it), and
bind_admin refuses it too, or with no ZAP handler bound.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Awaitable, Callable
from typing import Any

import zmq

from gateway.bus.admin_protocol import AdminRequest
from gateway.bus.curve import ZAP_ENDPOINT, KeyPair
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


def _router(ctx: zmq.Context) -> zmq.Socket:
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, 1 << 20)
    return sock


def zap_bound(ctx: zmq.Context) -> bool:
    """Whether a ZAP handler is bound on `ctx` (its inproc endpoint is taken)."""
    probe = ctx.socket(zmq.PAIR)
    try:
        probe.bind(ZAP_ENDPOINT)
    except zmq.ZMQError as e:
        return e.errno == zmq.EADDRINUSE
    finally:
        probe.close(linger=0)
    return False


def bind_curve(ctx: zmq.Context, endpoint: str, keys: KeyPair | None) -> zmq.Socket:
    """Bind a tcp endpoint as a CURVE server with `keys`; ValueError without keys, or without a ZAP handler on `ctx`
    (gateway.bus.curve.ZapHandler): libzmq would let every CURVE client in."""
    if keys is None:
        raise ValueError(f"gateway.admin: {endpoint} is a tcp endpoint, which needs CURVE keys: set "
                         "gateway.admin_curve, or use an ipc:// path")
    if not zap_bound(ctx):
        raise ValueError(f"gateway.admin: {endpoint}: no ZAP handler is bound to let CURVE clients in")
    sock = _router(ctx)
    try:
        sock.curve_server = True
        sock.curve_publickey, sock.curve_secretkey = keys.public, keys.secret
        sock.zap_domain = b"gateway.admin"
        sock.ipv6 = endpoint.startswith("tcp://[")
        sock.bind(endpoint)
    except BaseException:
        sock.close()
        raise
    return sock


def bind_admin(ctx: zmq.Context, endpoint: str, keys: KeyPair | None = None) -> zmq.Socket:
    """Bind the ROUTER socket (a tcp endpoint as a CURVE server with `keys`: bind_curve); raises ValueError with a
    readable reason for an endpoint we refuse (one in use, or a path naming what is not a socket)."""
    if endpoint.startswith("tcp://"):
        return bind_curve(ctx, endpoint, keys)
    if not endpoint.startswith("ipc://"):
        raise ValueError(f"gateway.admin: expected ipc://PATH or tcp://HOST:PORT, got {endpoint!r}")
    path = endpoint[len("ipc://"):]
    os.makedirs(os.path.dirname(path) or ".", mode=0o750, exist_ok=True)
    sock = _router(ctx)
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

