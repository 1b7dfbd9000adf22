"""How an OpenResty cosocket takes a timeout and words a failure, for the clients that stand in for Kong's (health
probes, log senders, the DNS client)."""

from __future__ import annotations

import errno
import os
import ssl

import trio

LUA_SOCKET_TIMEOUT_S = 60.0  # ngx_lua's lua_socket_connect/send/read_timeout default (Kong's template sets none)


def socket_timeout(seconds: float) -> float:
    """The bound a cosocket's settimeout(s) gives for `seconds`: whole milliseconds, and 0 of them (a timeout under
    1 ms) is ngx_lua's default, 60 s, not a deadline already past (lua-nginx-module ngx_http_lua_socket_tcp.c
    settimeouts: `if (connect_timeout > 0) ... else u->connect_timeout = u->conf->connect_timeout`)."""
    ms = int(seconds * 1000)
    return ms / 1000 if ms > 0 else LUA_SOCKET_TIMEOUT_S


def socket_error(error: BaseException) -> str:
    """ngx_lua's text for a failed socket call: the errno's strerror in lower case ("for compatibility with
    LuaSocket": "connection refused", "connection reset by peer"), "closed" for a connection already closed, and
    "error" with what Python said when there is no errno."""
    if isinstance(error, trio.ClosedResourceError):
        return "closed"
    cause = error.__cause__
    if isinstance(cause, BaseExceptionGroup):  # trio.open_tcp_stream's "all attempts to connect ... failed"
        cause = cause.exceptions[-1]
    for e in (error, cause):
        if isinstance(e, ssl.SSLError):
            return f"error (TLS: {e.reason or e})"
        if isinstance(e, OSError) and e.errno is not None and e.errno in errno.errorcode:
            return os.strerror(e.errno).lower()
    return f"error ({error})"
