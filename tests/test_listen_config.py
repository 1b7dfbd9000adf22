"""gateway.listen and gateway.status_listen as nginx 1.27.1 (Kong 3.x's) takes proxy_listen and status_listen, and
what the gateway's own sockets (one per listen entry, the status server's apart) can serve: refused by check-config
where nginx refuses or where the gateway would serve differently, naming the field."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from functools import partial

import pytest
import trio
from backends import free_port
from prometheus_client import CollectorRegistry

from gateway.config import ConfigError, parse_config
from gateway.config.listen import listen_flags, status_options
from gateway.config.loader import check_kept_status_listen
from gateway.node.slots import AddressInUse, ListenerSlots
from gateway.status import BaseStatusSource, StatusApp, serve_status
from supervisor.errors import StartError


def refusals(**gateway: object) -> list[str]:
    """The messages of the ConfigError a `gateway:` block raises at load (check-config's first stage)."""
    with pytest.raises(ConfigError) as info:
        parse_config(json.dumps({"gateway": gateway}), "f.yml")
    return [m.removeprefix("f.yml: ") for m in info.value.messages]


def accepted(**gateway: object) -> None:
    parse_config(json.dumps({"gateway": gateway}), "f.yml")


# --- gateway.listen -------------------------------------------------------------------------------------------------


def test_an_address_listed_twice_is_refused_as_nginxs_duplicate_listen():
    """Kong writes every proxy_listen entry into one server block (kong/templates/nginx_kong.lua:92-94), and nginx
    refuses a server listening twice on one address, `ssl` or not: src/http/ngx_http.c:1467-1470 (release-1.27.1)
    `if (server[i] == cscf) { ... "a duplicate listen %V" ... return NGX_ERROR; }`."""
    for second in ("127.0.0.1:8000", "127.0.0.1:8000 ssl"):
        [message] = refusals(listen=["127.0.0.1:8000", second])
        assert message.startswith('gateway.listen[1]: "127.0.0.1:8000" is the address of gateway.listen[0] '
                                  '"127.0.0.1:8000" again, which nginx refuses ("a duplicate listen")'), message


def test_an_empty_listen_list_is_refused():
    """kong/conf_loader/listeners.lua:97-99 `if #values == 0 then return nil, usage end`: proxy_listen with no entry
    is refused, not a gateway listening on nothing."""
    [message] = refusals(listen=[])
    assert message.startswith('gateway.listen: expected at least one "host:port"'), message


def test_a_specific_address_beside_the_wildcard_of_its_port_is_refused():
    """nginx folds `127.0.0.1:P` into the socket of `0.0.0.0:P` of the same port (src/http/ngx_http.c:1748-1766,
    ngx_http_init_listening: with an `*:port`, an address without `bind` is not bound); the gateway binds a socket
    per entry, and
    the kernel refuses the second, so the start failed with "address in use by gateway pid <its own>". Refused at
    load instead, in either order and for IPv6; an IPv6 listener being IPv6-only, `[::]:P` is no IPv4 wildcard."""
    [message] = refusals(listen=["0.0.0.0:8000", "127.0.0.1:8000 ssl"])
    assert message.startswith('gateway.listen[1]: "127.0.0.1:8000" overlaps gateway.listen[0] "0.0.0.0:8000" '
                              '("0.0.0.0:8000" listens on every IPv4 address of port 8000)'), message
    [message] = refusals(listen=["[::1]:8000", "[::]:8000"])
    assert message.startswith('gateway.listen[1]: "[::]:8000" overlaps gateway.listen[0] "[::1]:8000"'), message
    accepted(listen=["[::]:8000", "127.0.0.1:8000", "0.0.0.0:8001"])


# --- gateway.status_listen ------------------------------------------------------------------------------------------


def test_a_status_listen_on_an_address_of_the_proxy_is_refused():
    """In Kong a status_listen on a proxy_listen address shares nginx's one socket, whose default server is the
    proxy's (src/http/ngx_http.c:1440 `addr->default_server = cscf;`, the `server_name kong` block first in
    kong/templates/nginx_kong.lua): only `Host: kong_status` reaches the status server. The gateway's status server
    has its own socket (SO_REUSEPORT with `reuseport`), and the kernel handed it a share of the proxy's clients."""
    [message] = refusals(listen="127.0.0.1:8000", status_listen="127.0.0.1:8000 reuseport")
    assert message.startswith('gateway.status_listen: "127.0.0.1:8000" is the proxy\'s address (gateway.listen '
                              '"127.0.0.1:8000"): nginx would share one socket'), message
    [message] = refusals(listen=["127.0.0.1:8001", "0.0.0.0:8000"], status_listen="127.0.0.1:8000")
    assert message.startswith('gateway.status_listen: "127.0.0.1:8000" overlaps the proxy\'s gateway.listen[1] '
                              '"0.0.0.0:8000"'), message
    accepted(listen="0.0.0.0:8000", status_listen="[::1]:8000")


@pytest.mark.parametrize("backlog", ["99999999999999999999", "0", "4294967296", "4294967295", "-1", "1e3", "²"])
def test_a_status_listen_backlog_nginx_cannot_read_is_refused(backlog: str):
    """nginx reads backlog=N with ngx_atoi (ASCII digits, at most NGX_MAX_INT_T_VALUE: src/core/ngx_string.c:983-985)
    into an int, and refuses 0 and NGX_ERROR: src/http/ngx_http_core_module.c:4053-4060 (release-1.27.1) `if
    (lsopt.backlog == NGX_ERROR || lsopt.backlog == 0) { ... "invalid backlog \\"%V\\"" ... }`. The first value made
    the start fail with OverflowError; "²" (a Unicode digit) with ValueError."""
    [message] = refusals(status_listen=f"127.0.0.1:8100 backlog={backlog}")
    assert message.startswith(f'gateway.status_listen: invalid backlog "backlog={backlog}"'), message


def _send_q(port: int) -> int:
    """The listening socket's backlog as the kernel holds it (ss: a listener's Send-Q)."""
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, timeout=10)
    [row] = [line.split() for line in out.stdout.splitlines() if line.strip()]
    return int(row[2])


async def _listened_backlog(status_listen: str) -> int:
    """The backlog the status server listens with for this status_listen (as the root starts it)."""
    backlog = status_options(listen_flags(status_listen)[1])[0]
    app = StatusApp(BaseStatusSource(), CollectorRegistry())
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(partial(serve_status, app, "127.0.0.1", 0, backlog=backlog))
        listened = _send_q(port)
        nursery.cancel_scope.cancel()
    return listened


def _somaxconn() -> int:
    with open("/proc/sys/net/core/somaxconn") as f:
        return int(f.read())


async def test_status_listen_without_backlog_listens_with_nginx_default_backlog():
    """nginx's listen without backlog=N: src/http/ngx_http_core_module.c:3989 `lsopt.backlog = NGX_LISTEN_BACKLOG;`,
    511 on Linux (src/os/unix/ngx_linux_config.h:111); the gateway's was 128."""
    assert await _listened_backlog("127.0.0.1:8100") == min(511, _somaxconn())


async def test_a_status_listen_backlog_above_what_listen_takes_is_capped_as_the_kernel_caps_nginxs():
    """nginx hands listen() the int it stored (src/core/ngx_connection.c:657), and Linux caps a backlog read unsigned
    above net.core.somaxconn at it: backlog=3000000000 (a negative int) listens with somaxconn, and 4294967297 (1 in
    an int) with 1, where the start failed with OverflowError."""
    assert await _listened_backlog("127.0.0.1:8100 backlog=3000000000") == _somaxconn()
    assert await _listened_backlog("127.0.0.1:8100 backlog=4294967297") == 1


async def test_a_status_address_in_use_names_gateway_status_listen():
    """The root's start error shows the status child's failure: it said "failed to start child 'status':
    OSError(98, 'Address already in use')", naming neither the setting nor what to do."""
    app = StatusApp(BaseStatusSource(), CollectorRegistry())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError) as info:
            await serve_status(app, "127.0.0.1", port)
    shown = str(StartError("status", info.value))
    assert shown == (f"failed to start child 'status': gateway.status_listen: cannot listen on 127.0.0.1:{port}: "
                     "Address already in use; stop what listens there (`ss -ltnp` names it), or change "
                     "gateway.status_listen"), shown


def test_a_reload_keeping_the_running_status_listen_refuses_it_on_a_proxy_address():
    """A reload keeps the running status_listen (gateway.node.start_only.keep) after the load checked the file's own,
    so a file that moves status_listen and lists the running status address in `listen` passed, and the bind then
    failed against the gateway's own status server as "address in use (by another program)". The root checks the
    kept one again (the status server has its own socket: in Kong nginx would share the proxy's, src/http/ngx_http.c
    :1440 at release-1.27.1, as test_a_status_listen_on_an_address_of_the_proxy_is_refused says)."""
    config = parse_config(json.dumps({"gateway": {"listen": ["127.0.0.1:8000", "localhost:8100"],
                                                  "status_listen": "127.0.0.1:8200"}}), "f.yml")
    config.gateway.status_listen = "127.0.0.1:8100 reuseport"  # the running one, as start_only.keep puts it back
    [message] = check_kept_status_listen(config.gateway)
    assert message.startswith('gateway.status_listen: "127.0.0.1:8100" (the running one: a reload keeps '
                              "status_listen until the next start) is the proxy's address (gateway.listen[1] "
                              '"localhost:8100")'), message
    assert message.endswith("remove it from gateway.listen[1], or stop and start the gateway to move the status "
                            "server"), message
    config.gateway.status_listen = "127.0.0.1:8200"
    assert check_kept_status_listen(config.gateway) == []


# --- claiming addresses on a reload ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("first", "again"), [("localhost", "127.0.0.1"), ("::1", "0::1")])
def test_a_listen_address_spelled_anew_keeps_its_slots(first: str, again: str):
    """nginx's reload keeps every listening socket whose address is the same sockaddr, however the new `listen`
    spells it (the name was resolved at parse): release-1.27.1 src/core/ngx_cycle.c:527-534 `if
    (ngx_cmp_sockaddr(nls[n].sockaddr, ..., ls[i].sockaddr, ..., 1) == NGX_OK) { nls[n].fd = ls[i].fd; ...
    ls[i].remain = 1;`. The slots were kept by the text, so `localhost:P` reloaded as `127.0.0.1:P` probed the
    address against the gateway's own socket and was refused as "address in use (by another program)"."""
    slots = ListenerSlots()
    port = free_port()
    try:
        slots.ensure([(first, port)], 2)
        fds = [slots.fds_for([(first, port)], i, 2) for i in range(2)]
        opened = slots.ensure([(again, port)], 2)
        assert (opened.sockets, opened.claims) == ([], [])
        assert [slots.fds_for([(again, port)], i, 2) for i in range(2)] == fds
        slots.release([(again, port)])  # the old generation retired: its spelling is gone, not its sockets
        assert [slots.fds_for([(again, port)], i, 2) for i in range(2)] == fds
        family = socket.AF_INET6 if ":" in again else socket.AF_INET
        with socket.create_connection((again, port), timeout=2) as conn:
            assert conn.family == family
    finally:
        slots.close()


def test_another_gateway_on_another_spelling_of_an_address_is_named_by_its_pid():
    """A claim is named after the address the socket binds: a second gateway listening on `127.0.0.1:P` while one
    listens on `localhost:P` learns its pid, where the probe's bind said "(by another program)"."""
    first, second = ListenerSlots(), ListenerSlots()
    port = free_port()
    try:
        first.ensure([("localhost", port)], 1)
        with pytest.raises(AddressInUse) as info:
            second.ensure([("127.0.0.1", port)], 1)
    finally:
        second.close()
        first.close()
    assert info.value.strerror == (f"cannot listen on 127.0.0.1:{port}: address in use by gateway pid {os.getpid()}; "
                                   "stop that gateway, or change gateway.listen"), info.value.strerror




def test_a_reload_adding_an_address_this_gateways_wildcard_covers_names_this_gateway():
    """A reload from `0.0.0.0:P` to `127.0.0.1:P` binds the new address while the old one still listens, which the
    kernel refuses (nginx's reload fails alike: its new cycle binds before the old one closes). The claim said
    "address in use by gateway pid <its own>; stop that gateway". (The wildcard's claim is set up without binding
    it: tests listen on loopback only.)"""
    slots = ListenerSlots()
    port = free_port()
    slots._claims[("0.0.0.0", port)] = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with pytest.raises(AddressInUse) as info:
            slots.ensure([("127.0.0.1", port)], 1)
    finally:
        slots.close()
    assert info.value.strerror == (f"cannot listen on 127.0.0.1:{port}: this gateway listens on 0.0.0.0:{port}, and a "
                                   "wildcard address takes every address of its port and family (nginx's reload "
                                   f"fails the same way); keep 0.0.0.0:{port} in gateway.listen, or stop and start "
                                   "the gateway to change it"), info.value.strerror
