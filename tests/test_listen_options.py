"""nginx's listen options on gateway.listen (Kong's proxy_listen), as kong/conf_loader/listeners.lua (3.9.3) passes
them (its http flags: ssl, http2, proxy_protocol, deferred, bind, reuseport, backlog=%d+, ipv6only=on|off,
so_keepalive=on|off|%w*:%w*:%d*) and nginx 1.27.1 reads them (src/http/ngx_http_core_module.c ngx_http_core_listen)
and sets them on the listening socket (src/core/ngx_connection.c ngx_open_listening_sockets,
ngx_configure_listening_sockets). Kong's default line, `0.0.0.0:8000 reuseport backlog=16384, 0.0.0.0:8443 http2
ssl reuseport backlog=16384` (kong/templates/kong_defaults.lua:27), was refused for its first word after the address."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from e2e_helpers import (
    GatewayNode,
    answering_itself,
    blocking_get,
    node_factory,
    request,
)

from gateway.config import ConfigError, parse_config
from gateway.config.kong_conf import KONG_CONF
from gateway.config.listen import DATA_BACKLOG, ListenAddress, listen_options
from gateway.http.net import bind_listener
from gateway.node.slots import ListenerSlots, OptionKept
from gateway.worker import bind_all, listen_addresses

KONG_DEFAULT = "0.0.0.0:8000 reuseport backlog=16384, 0.0.0.0:8443 http2 ssl reuseport backlog=16384"


def _errors(listen: Any) -> list[str]:
    try:
        parse_config(json.dumps({"gateway": {"listen": listen, "status_listen": None}}), "c.yml")
    except ConfigError as e:
        return e.messages
    return []


def _addresses(listen: Any) -> list[ListenAddress]:
    return listen_addresses(parse_config(json.dumps({"gateway": {"listen": listen, "status_listen": None}}), "c.yml"))


@pytest.mark.parametrize("value", ["4294967296::", "::4294967296", "4294967295::", "::4294967295", ":4294967295:"])
def test_a_so_keepalive_time_whose_c_int_is_0_or_minus_1_is_invalid(value: str):
    """nginx stores each time in an int (ngx_http_core_module.h:98-100) and then tests the int: -1 is NGX_ERROR
    (ngx_http_core_module.c:4237, 4253, 4264), all three 0 invalid (4269-4272): "invalid so_keepalive value"."""
    assert _errors(f"127.0.0.1:8000 so_keepalive={value}") == [
        f'c.yml: gateway.listen: invalid so_keepalive value "{value}": give on, off or '
        "[keepidle]:[keepintvl]:[keepcnt] (both colons, as Kong's listeners.lua reads it; times as nginx's 30m or "
        "75s, not all 0: e.g. so_keepalive=30m::10)"]


def test_ipv6only_on_and_off_in_one_entry_is_dual_stack_as_kongs_listen_line_has_off_last():
    """Kong's listeners.lua writes the flags in its list's order (ipv6only=on before ipv6only=off, :17-19;
    parse_option_flags :51-70) and nginx keeps the last value (ngx_http_core_module.c:4129-4135)."""
    [addr] = _addresses("[::]:8000 ipv6only=off ipv6only=on")
    assert addr.options.ipv6only is False


def test_so_keepalive_off_and_times_in_one_entry_keeps_the_times_as_kongs_listen_line_has_them_last():
    """Kong's order: so_keepalive=on, so_keepalive=off, then the times (listeners.lua:19-20); nginx keeps the last
    (ngx_http_core_module.c:4211-4275)."""
    [addr] = _addresses("127.0.0.1:8000 so_keepalive=30m::10 so_keepalive=off")
    assert (addr.options.keepalive, addr.options.keepidle, addr.options.keepcnt) == (1, 1800, 10)


def _free_port() -> int:
    """A port free for IPv4 and IPv6 both."""
    with socket.socket(socket.AF_INET6) as v6, socket.socket() as v4:
        v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        v4.bind(("0.0.0.0", 0))
        port = v4.getsockname()[1]
        v6.bind(("::", port))
        return int(port)


def _send_q(port: int) -> int:
    """The Send-Q `ss -ltn` shows for the one socket listening on 127.0.0.1:`port`: its listen() backlog."""
    out = subprocess.run(["ss", "-Hltn", f"src 127.0.0.1:{port}"], capture_output=True, text=True, timeout=10)
    [line] = out.stdout.splitlines()
    return int(line.split()[2])


def _somaxconn() -> int:
    return int(Path("/proc/sys/net/core/somaxconn").read_text())


@pytest.fixture
def slots() -> Iterator[ListenerSlots]:
    held = ListenerSlots()
    yield held
    held.close()


# --- check-config ---------------------------------------------------------------------------------------------------


def test_kongs_default_proxy_listen_without_http2_loads():
    """kong_defaults.lua:27 with `http2` taken out: `reuseport` and `backlog=16384` are nginx listen options
    (ngx_http_core_module.c:4052-4066, 4156-4167) and were refused as "not supported (only ssl and proxy_protocol)"."""
    assert _errors(KONG_DEFAULT.replace(" http2", "")) == []


def test_http2_is_refused_saying_it_is_not_built_and_to_remove_the_word():
    """Kong 3.9 turns `http2` into nginx's `http2 on` for the server (listeners.lua:66-69, nginx_kong.lua:94-95):
    the gateway would serve HTTP/1.1 only, so it refuses the word, telling a Kong user of the default line what to
    write."""
    assert _errors(KONG_DEFAULT) == [
        'c.yml: gateway.listen[1]: the listen option "http2" is not supported: HTTP/2 is not built (this listener '
        "would serve HTTP/1.1 only); remove the word (Kong's default proxy_listen has it: write \"0.0.0.0:8443 ssl "
        'reuseport backlog=16384" for its "0.0.0.0:8443 http2 ssl reuseport backlog=16384")']


@pytest.mark.parametrize("flag", ["backlog=0", "backlog=4294967295", "backlog=-5", "backlog=1k"])
def test_a_backlog_nginx_refuses_is_nginxs_invalid_backlog(flag: str):
    """ngx_http_core_module.c:4055-4060: ngx_atoi (digits only) stored in an int, 0 and NGX_ERROR (-1, which
    4294967295 is in a C int) are "invalid backlog"."""
    assert _errors(f"127.0.0.1:8000 {flag}") == [
        f'c.yml: gateway.listen: invalid backlog "{flag}": give a number from 1 to 2147483647 (e.g. backlog=511; the '
        "kernel caps it at net.core.somaxconn)"]


@pytest.mark.parametrize(("value", "options"), [
    ("on", (1, 0, 0, 0)), ("off", (2, 0, 0, 0)), ("30m::10", (1, 1800, 0, 10)), ("1h30m:75s:", (1, 5400, 75, 0)),
    ("::3", (1, 0, 0, 3)), ("1d:1:1", (1, 86400, 1, 1)), ("4294967297::", (1, 1, 0, 0))])
def test_so_keepalive_reads_nginxs_times_and_count(value: str, options: tuple[int, int, int, int]):
    """ngx_http_core_module.c:4211-4292: on is 1, off 2, else keepidle and keepintvl by ngx_parse_time(s, 1)
    (src/core/ngx_parse.c: y M w d h m s, a bare number seconds) and keepcnt by ngx_atoi, each in a C int."""
    got, refused = listen_options({f"so_keepalive={value}"}, False)
    assert refused == []
    assert (got.keepalive, got.keepidle, got.keepintvl, got.keepcnt) == options


@pytest.mark.parametrize("value", ["30m", "0::", "::", "1ms::", "1s1m::", "5x::", "1:2:3x", "1:2", "yes"])
def test_a_so_keepalive_nginx_or_kong_refuses_is_nginxs_invalid_so_keepalive_value(value: str):
    """nginx's `invalid so_keepalive value` (ngx_http_core_module.c:4293-4297): a time ngx_parse_time refuses (ms
    in seconds, a unit after a smaller one, an unknown one), all three 0 or absent; Kong's pattern
    `so_keepalive=%w*:%w*:%d*` (listeners.lua:19) wants both colons and a count of digits."""
    assert _errors(f"127.0.0.1:8000 so_keepalive={value}") == [
        f'c.yml: gateway.listen: invalid so_keepalive value "{value}": give on, off or [keepidle]:[keepintvl]:'
        "[keepcnt] (both colons, as Kong's listeners.lua reads it; times as nginx's 30m or 75s, not all 0: e.g. "
        "so_keepalive=30m::10)"]


def test_ipv6only_on_an_ipv4_address_is_taken_and_ignored_as_nginx_does():
    """nginx sets IPV6_V6ONLY on AF_INET6 sockets only (ngx_connection.c:566-580) and says nothing of an IPv4 one's;
    the entry's options are the plain ones, so a reload adding the word keeps its socket."""
    assert _errors("127.0.0.1:8000 ipv6only=off") == []
    assert _addresses("127.0.0.1:8000 ipv6only=off")[0].options == _addresses("127.0.0.1:8000")[0].options


def test_a_bad_ipv6only_is_nginxs_invalid_ipv6only_flags():
    """ngx_http_core_module.c:4130-4141."""
    assert _errors("[::]:8000 ipv6only=yes") == [
        'c.yml: gateway.listen: invalid ipv6only flags "ipv6only=yes": give ipv6only=on or ipv6only=off']


@pytest.mark.parametrize("listen", [["[::]:8000 ipv6only=off", "127.0.0.1:8000"],
                                    ["0.0.0.0:8000", "[::]:8000 ipv6only=off"]])
def test_ipv6only_off_beside_an_ipv4_entry_of_its_port_is_refused(listen: list[str]):
    """A dual-stack `[::]:P` takes IPv4 clients of every address of P: nginx binds both sockets and fails with
    "Address already in use"; the gateway's one socket per entry could not have both either."""
    [message] = _errors(listen)
    assert 'with ipv6only=off takes the IPv4 clients of port 8000 too' in message
    assert message.startswith("c.yml: gateway.listen[1]: ")


def test_ipv6only_off_on_another_port_than_the_ipv4_entries_loads():
    assert _errors(["[::]:8001 ipv6only=off", "0.0.0.0:8000", "[::]:8000"]) == []


def test_a_word_nginx_does_not_know_stays_refused_naming_the_options_taken():
    assert _errors("127.0.0.1:8000 fastopen=3") == [
        'c.yml: gateway.listen: the listen option "fastopen=3" is not supported (ssl, proxy_protocol, reuseport, '
        "backlog=N, deferred, bind, ipv6only=on|off and so_keepalive=on|off|[keepidle]:[keepintvl]:[keepcnt] are)"]


def test_kong_confs_proxy_listen_names_the_options_taken():
    """The refusal of kong.conf's name said deferred, bind, reuseport, backlog=, ipv6only= and so_keepalive= were
    not supported."""
    assert "`reuseport`, `backlog=N`, `deferred`, `bind`, `ipv6only=` and `so_keepalive=` are taken, `http2` is not" \
        in KONG_CONF["proxy_listen"]


# --- the sockets ----------------------------------------------------------------------------------------------------


def test_backlog_n_is_the_listen_backlog_of_the_entrys_sockets(slots: ListenerSlots):
    """nginx's listen(s, ls[i].backlog) (ngx_connection.c:657): a LISTEN socket's Send-Q in `ss -ltn`; an entry
    without backlog=N keeps the gateway's default (capped at net.core.somaxconn)."""
    port, plain = _free_port(), _free_port()
    slots.ensure(_addresses([f"127.0.0.1:{port} reuseport backlog=77", f"127.0.0.1:{plain}"]), 1)
    assert _send_q(port) == 77
    assert _send_q(plain) == min(DATA_BACKLOG, _somaxconn())


def test_deferred_sets_tcp_defer_accept_of_one_second(slots: ListenerSlots):
    """ngx_connection.c:921-944: add_deferred sets TCP_DEFER_ACCEPT to `value = 1` (a 1 s timeout)."""
    port = _free_port()
    addresses = _addresses(f"127.0.0.1:{port} deferred")
    slots.ensure(addresses, 1)
    [fd] = slots.fds_for(addresses, 0, 1)
    with socket.socket(fileno=socket.dup(fd)) as sock:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT) == 1


def test_so_keepalive_is_set_on_the_listening_socket_and_inherited_by_its_connections():
    """ngx_connection.c:753-811: SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT on the listening socket;
    Linux copies them to each connection accepted from it."""
    options, _ = listen_options({"so_keepalive=30m:75s:7"}, False)
    with bind_listener("127.0.0.1", 0, options=options) as listener:
        assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        with socket.create_connection(listener.getsockname()[:2], timeout=2):
            listener.setblocking(True)
            accepted, _ = listener.accept()
        with accepted:
            assert [accepted.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                    accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                    accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                    accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT)] == [1, 1800, 75, 7]


def test_a_keepalive_time_linux_refuses_is_logged_and_ignored_as_nginx_does(caplog: pytest.LogCaptureFixture):
    """ngx_connection.c:775-782: "setsockopt(TCP_KEEPIDLE, %d) %V failed, ignored" (Linux takes 1 to 32767 s)."""
    options, _ = listen_options({"so_keepalive=99999::"}, False)
    with caplog.at_level(logging.WARNING, "gateway.listen"), bind_listener("127.0.0.1", 0, options=options) as sock:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert "setsockopt(TCP_KEEPIDLE, 99999) for 127.0.0.1:" in caplog.text and "ignored" in caplog.text


def test_gateway_runs_one_process_binding_takes_the_options():
    """`gateway run` binds each entry itself (worker.bind_all)."""
    port = _free_port()
    socks = bind_all(parse_config(json.dumps({"gateway": {"listen": f"127.0.0.1:{port} deferred",
                                                          "status_listen": None}}), "c.yml"))
    try:
        assert socks[0].getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT) == 1
    finally:
        for sock in socks:
            sock.close()


# --- a reload changing an entry's options: nginx's master keeps the socket of an address it already listens on and
# sets the new options on it (release-1.27.1 src/core/ngx_cycle.c:527-574 marks `listen`, `add_deferred`,
# `delete_deferred`; src/core/ngx_connection.c:753-952 ngx_configure_listening_sockets applies them) -----------------


def _options_of(fd: int) -> dict[str, int]:
    """What the listening socket `fd` has: TCP_DEFER_ACCEPT, SO_KEEPALIVE, TCP_KEEPIDLE/KEEPINTVL/KEEPCNT."""
    with socket.socket(fileno=socket.dup(fd)) as sock:
        return {"deferred": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT),
                "keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                "keepidle": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                "keepintvl": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                "keepcnt": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT)}


def _kernel_keepalive() -> list[int]:
    return [int(Path(f"/proc/sys/net/ipv4/{name}").read_text())
            for name in ("tcp_keepalive_time", "tcp_keepalive_intvl", "tcp_keepalive_probes")]


def test_a_reload_changing_backlog_deferred_and_so_keepalive_sets_them_on_the_kept_socket(slots: ListenerSlots):
    """ngx_cycle.c:536-538 (`nls[n].listen = 1` for a new backlog) and 565-574 (add_deferred), then
    ngx_connection.c:753-811 (SO_KEEPALIVE, TCP_KEEP*), 856-865 (listen() again) and 921-944 (TCP_DEFER_ACCEPT 1) on
    the socket kept (`nls[n].fd = ls[i].fd`): the same socket (fd and inode), the new options read back. It got a new
    socket beside the old one, which the old generation's end closed with its queued connections."""
    port = _free_port()
    before = _addresses(f"127.0.0.1:{port}")
    slots.ensure(before, 1)
    [fd] = slots.fds_for(before, 0, 1)
    inode = os.fstat(fd).st_ino
    after = _addresses(f"127.0.0.1:{port} backlog=77 deferred so_keepalive=30m:75s:7")
    opened = slots.ensure(after, 1)
    assert opened.sockets == [] and opened.claims == []
    slots.release(after)
    assert slots.fds_for(after, 0, 1) == [fd] and os.fstat(fd).st_ino == inode
    assert _send_q(port) == 77
    assert _options_of(fd) == {"deferred": 1, "keepalive": 1, "keepidle": 1800, "keepintvl": 75, "keepcnt": 7}


def test_a_reload_dropping_the_options_gives_the_kept_socket_a_new_sockets_values(slots: ListenerSlots):
    """ngx_cycle.c:567-568: deferred gone is `delete_deferred` (TCP_DEFER_ACCEPT 0, ngx_connection.c:921-944);
    backlog=N gone is listen() with the default again. so_keepalive gone is SO_KEEPALIVE off and the kernel's
    keepalive times, as a socket the gateway starts with (nginx sets nothing when so_keepalive is gone, leaving the
    old one's on until a restart)."""
    port = _free_port()
    slots.ensure(_addresses(f"127.0.0.1:{port} backlog=77 deferred so_keepalive=30m:75s:7"), 1)
    plain = _addresses(f"127.0.0.1:{port}")
    assert slots.ensure(plain, 1).sockets == []
    [fd] = slots.fds_for(plain, 0, 1)
    assert _send_q(port) == min(DATA_BACKLOG, _somaxconn())
    assert list(_options_of(fd).values()) == [0, 0, *_kernel_keepalive()]


def test_a_connection_queued_during_a_reload_changing_options_is_answered_not_reset(slots: ListenerSlots):
    """A reload stays hitless for an entry whose options change: a connection waiting in the accept queue when the
    reload runs (and the old generation is released) is accepted from the kept socket afterwards. With a new socket
    per options the old one was closed at the release, resetting it (Linux resets a closed listener's queue)."""
    port = _free_port()
    before = _addresses(f"127.0.0.1:{port}")
    slots.ensure(before, 1)
    with socket.create_connection(("127.0.0.1", port), timeout=2) as client:
        client.sendall(b"ping")
        after = _addresses(f"127.0.0.1:{port} backlog=100 so_keepalive=on")
        slots.ensure(after, 1)
        slots.release(after)
        [fd] = slots.fds_for(after, 0, 1)
        with socket.socket(fileno=socket.dup(fd)) as listener:
            listener.settimeout(2)
            accepted, _ = listener.accept()
        with accepted:
            assert accepted.recv(4) == b"ping"
            accepted.sendall(b"pong")
        assert client.recv(4) == b"pong"


def test_a_reload_whose_workers_fail_to_start_gives_the_kept_socket_its_options_back(slots: ListenerSlots):
    """nginx's failed cycle leaves the old cycle's sockets to the old workers (ngx_cycle.c:924-935 closes only what
    the new cycle opened); the options `ensure` set on the kept socket for the generation that did not start are
    undone, for the generation that goes on serving on it."""
    port = _free_port()
    before = _addresses(f"127.0.0.1:{port} so_keepalive=1m::")
    slots.ensure(before, 1)
    [fd] = slots.fds_for(before, 0, 1)
    slots.undo(slots.ensure(_addresses(f"127.0.0.1:{port} backlog=77 deferred so_keepalive=::3"), 1))
    assert slots.fds_for(before, 0, 1) == [fd]
    assert _send_q(port) == min(DATA_BACKLOG, _somaxconn())
    assert _options_of(fd) == {"deferred": 0, "keepalive": 1, "keepidle": 60, "keepintvl": _kernel_keepalive()[1],
                               "keepcnt": _kernel_keepalive()[2]}


def test_an_unchanged_reload_keeps_the_entrys_sockets(slots: ListenerSlots):
    port = _free_port()
    slots.ensure(_addresses(f"127.0.0.1:{port} backlog=50 so_keepalive=on"), 2)
    opened = slots.ensure(_addresses(f"127.0.0.1:{port} so_keepalive=on backlog=50 reuseport bind"), 2)
    assert opened.sockets == []


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 on this host")
def test_a_reload_changing_ipv6only_is_refused_and_the_socket_kept(slots: ListenerSlots):
    """A bound socket keeps its IPV6_V6ONLY (nginx sets it before bind(), ngx_connection.c:566-580, and its reload
    keeps the old socket's silently, ngx_cycle.c:527-534), and a new socket cannot be bound beside it: the reload is
    refused naming the entry, the running one untouched."""
    port = _free_port()
    before = _addresses(f"[::1]:{port}")
    slots.ensure(before, 1)
    [fd] = slots.fds_for(before, 0, 1)
    with pytest.raises(OptionKept) as refused:
        slots.ensure(_addresses([f"127.0.0.1:{port}", f"[::1]:{port} ipv6only=off backlog=9"]), 1)
    assert refused.value.strerror == (
        f"[::1]:{port} ipv6only=off: its listening socket is bound with ipv6only=on, which a reload cannot change; the "
        "gateway goes on serving on its previous config: stop and start the gateway to change it, or keep "
        "ipv6only=on")
    assert slots.fds_for(before, 0, 1) == [fd] and _claims_of(port) == [f"[::1]:{port}"]


def _claims_of(port: int) -> list[str]:
    """The gateway's listen claims (abstract Unix sockets) of `port` this process holds."""
    out = subprocess.run(["ss", "-Hxlp"], capture_output=True, text=True, timeout=10).stdout
    return sorted(f[len("@mcp-gateway/listen/"):].replace("::1", "[::1]") for line in out.splitlines()
                  for f in line.split() if f.startswith("@mcp-gateway/listen/") and f.endswith(f":{port}")
                  and f"pid={os.getpid()}," in line)


@pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 on this host")
async def test_ipv6only_off_takes_ipv4_clients_through_gateway_start(tmp_path: Path):
    """nginx's ipv6only=off (ngx_connection.c:568-575: IPV6_V6ONLY 0): `[::]:P` takes the IPv4 client of
    127.0.0.1:P too (it was refused: "the listen option ipv6only=off is not supported")."""
    port = _free_port()
    doc = {"routes": [{"name": "r", "paths": ["/"]}],
           "plugins": [{"name": "request-termination", "route": "r", "config": {"status_code": 204}}]}
    with node_factory(tmp_path) as make:
        gw = make(doc, listen=f"[::]:{port} ipv6only=off")
        with trio.fail_after(60):
            await gw.start(workers=1)
            reply = await request(port, "GET", "/")
    assert reply.status == 204


# --- through `gateway start` and `gateway reload` (one gateway for these tests: each leaves it as it started) --------


@pytest.fixture(scope="module")
def dual(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayNode]:
    """A one-worker gateway on 127.0.0.1:P and [::1]:P; it answers 204 itself."""
    if not _has_ipv6():
        pytest.skip("no IPv6 on this host")
    yield from answering_itself(tmp_path_factory.mktemp("options"), lambda p: [f"127.0.0.1:{p}", f"[::1]:{p}"], 204,
                                status_listen=None)


def _reload_with(gw: GatewayNode, listen: list[str]) -> subprocess.CompletedProcess[str]:
    """`gateway reload` of gw's config file with this gateway.listen."""
    gw.doc["gateway"]["listen"] = listen
    gw.config.write_text(json.dumps(gw.doc, indent=1))
    return gw.cli("reload", "--config", str(gw.config), timeout=40)


def _listener_inode(port: int) -> str:
    """The inode of the one socket listening on 127.0.0.1:`port` (ss -e)."""
    out = subprocess.run(["ss", "-Hltne", f"src 127.0.0.1:{port}"], capture_output=True, text=True, timeout=10)
    [inode] = [f for line in out.stdout.splitlines() for f in line.split() if f.startswith("ino:")]
    return inode


def test_gateway_reload_changing_an_entrys_backlog_keeps_its_listening_socket(dual: GatewayNode):
    """nginx's master keeps the socket and listen()s it again with the new backlog (ngx_cycle.c:527-538,
    ngx_connection.c:856-865): the one listening socket of 127.0.0.1:P is the same (its inode), with Send-Q 77."""
    gw, started = dual, dual.doc["gateway"]["listen"]
    inode = _listener_inode(gw.port)
    try:
        out = _reload_with(gw, [f"{started[0]} backlog=77 deferred", started[1]])
        assert out.returncode == 0, out.stderr
        assert _listener_inode(gw.port) == inode and _send_q(gw.port) == 77
        assert blocking_get(gw.port) == 204
    finally:
        assert _reload_with(gw, started).returncode == 0


def test_gateway_reload_changing_ipv6only_is_refused_saying_to_stop_and_start(dual: GatewayNode):
    """A bound socket keeps IPV6_V6ONLY (nginx's reload keeps the old one's silently, ngx_cycle.c:527-534): `gateway
    reload` says the config is refused, naming the entry and the way to change it, and the gateway serves on."""
    gw, started = dual, dual.doc["gateway"]["listen"]
    try:
        out = _reload_with(gw, [started[0], f"{started[1]} ipv6only=off"])
        assert out.returncode != 0
        assert (f"config rejected, still serving the previous one:\n{gw.config}: gateway.listen: [::1]:{gw.port} "
                "ipv6only=off: its listening socket is bound with ipv6only=on, which a reload cannot change; the "
                "gateway goes on serving on its previous config: stop and start the gateway to change it, or keep "
                "ipv6only=on") in out.stderr, out.stderr
        assert blocking_get(gw.port) == 204
    finally:
        gw.doc["gateway"]["listen"] = started
        gw.config.write_text(json.dumps(gw.doc, indent=1))
