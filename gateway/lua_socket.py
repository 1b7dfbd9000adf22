"""How an OpenResty cosocket takes a timeout, for the clients that stand in for Kong's (health probes, log senders)."""

from __future__ import annotations

LUA_SOCKET_TIMEOUT_S = 60.0  # ngx_lua's lua_socket_connect/send/read_timeout default (Kong's template sets none)


def socket_timeout(seconds: float) -> float:
    """The bound a cosocket's settimeout(s) gives for `seconds`: whole milliseconds, and 0 of them (a timeout under
    1 ms) is ngx_lua's default, 60 s, not a deadline already past (lua-nginx-module ngx_http_lua_socket_tcp.c
    settimeouts: `if (connect_timeout > 0) ... else u->connect_timeout = u->conf->connect_timeout`)."""
    ms = int(seconds * 1000)
    return ms / 1000 if ms > 0 else LUA_SOCKET_TIMEOUT_S
