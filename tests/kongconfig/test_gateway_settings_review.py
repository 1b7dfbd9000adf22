"""Gateway-level settings as Kong (kong.conf, kong_defaults.lua) and nginx (for the directives Kong leaves at their
default) take them: `*:PORT` listeners, an unquoted `off`, the defaults of header_timeout_s and upstream_keepalive,
keepalive_requests 0, and Kong's own nginx_http_lua_regex_match_limit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
from backends import EchoBackend, free_port, request, service

from gateway.cli import EXIT_CONFIG, EXIT_OK, check_config
from gateway.config import ConfigError, parse_config
from gateway.config.schema import GatewaySettings
from gateway.http.kong_headers import enabled
from gateway.worker import bind_all


def gateway_of(settings: dict[str, object]) -> GatewaySettings:
    return parse_config(json.dumps({"gateway": settings})).gateway


def refusal(settings: dict[str, object]) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_config(json.dumps({"gateway": settings}))
    return e.value.messages


# --- listen `*:PORT` ------------------------------------------------------------------------------------------------


def test_listen_star_port_binds_every_ipv4_address():
    """kong.conf's `proxy_listen = *:8000` (listeners.lua takes `*` as a name) is nginx's `listen *:8000`, INADDR_ANY
    (src/core/ngx_inet.c): it loads as 0.0.0.0 and `gateway run` binds it, where it used to fail at start with "Name
    or service not known" after check-config had said OK."""
    port = free_port()
    config = parse_config(f'gateway:\n  listen: "*:{port}"\n')
    assert config.gateway.listen == f"0.0.0.0:{port}"
    socks = bind_all(config)
    try:
        assert [s.getsockname() for s in socks] == [("0.0.0.0", port)]
    finally:
        for s in socks:
            s.close()


def test_star_is_any_ipv4_address_in_every_listen_form():
    """The list, kong.conf's comma-separated string (with flags) and status_listen read `*` the same way."""
    assert gateway_of({"listen": ["*:8000", "127.0.0.1:8001"]}).listen == ["0.0.0.0:8000", "127.0.0.1:8001"]
    assert gateway_of({"listen": "*:8000, *:8443 ssl"}).listen == ["0.0.0.0:8000", "0.0.0.0:8443 ssl"]
    assert gateway_of({"status_listen": "*:8100 reuseport backlog=16"}).status_listen == \
        "0.0.0.0:8100 reuseport backlog=16"


@pytest.mark.parametrize(("entry", "why"), [
    ("300.1.1.1:8000", "invalid ipv4 address: 300.1.1.1"),
    ("[1:2]:8000", "invalid ipv6 address: 1:2"),
    ("foo/bar:8000", "invalid hostname: foo/bar"),
    ("**:8000", "invalid hostname: **"),
])
def test_a_listen_host_no_socket_can_bind_is_refused_at_load(entry: str, why: str):
    """check-config refuses what start could not bind for its syntax (Kong's normalize_ip refuses the same)."""
    assert refusal({"listen": entry}) == [
        f'<config>: gateway.listen: expected "host:port" or "host:port ssl" (e.g. "127.0.0.1:8443 ssl"), got "{entry}" '
        f"({why})"]
    assert refusal({"status_listen": entry}) == [
        f'<config>: gateway.status_listen: expected "host:port" (or off), got "{entry}" ({why})']


def test_check_config_and_start_agree_on_star(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """`gateway check-config` passes `*:PORT` (which start binds) and refuses a host start could not bind."""
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(f'gateway:\n  listen: "*:{free_port()}"\n  status_listen: off\n')
    bad.write_text('gateway:\n  listen: "300.1.1.1:8000"\n  status_listen: off\n')
    assert check_config(str(good)) == EXIT_OK
    assert check_config(str(bad)) == EXIT_CONFIG
    assert "invalid ipv4 address: 300.1.1.1" in capsys.readouterr().err


def test_listen_off_is_refused_saying_why():
    """kong.conf's `proxy_listen = off` (no proxy listener) has no meaning for a gateway that only proxies; an
    unquoted off, YAML's false, gets the same message."""
    for value in ("off", False, [False]):
        (message,) = refusal({"listen": value})
        assert "kong.conf's off (no proxy listener) is not supported" in message, value


# --- an unquoted `off` -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["headers", "headers_upstream"])
@pytest.mark.parametrize("value", ["off", False, [False], [False, "X-Kong-Request-Id"]])
def test_unquoted_off_turns_the_headers_off(key: str, value: object):
    """kong.conf's `headers = off` (a list whose first entry is off enables none: conf_loader), written unquoted in
    YAML, is read as false: it is off, as README's `headers: off` says, not "expected a list or string"."""
    assert enabled(getattr(gateway_of({key: value}), key)) == set()


def test_unquoted_off_in_status_listens_list_form_is_off():
    assert gateway_of({"status_listen": [False]}).status_listen is None
    assert gateway_of({"status_listen": False}).status_listen is None


# --- defaults --------------------------------------------------------------------------------------------------------


def test_header_timeout_default_is_nginx_client_header_timeout():
    """Kong sets no client_header_timeout (nginx_kong.lua, kong_defaults.lua), so nginx's 60 s applies: a head that
    takes 10 to 60 s to arrive is served, not cut off with a 408."""
    assert parse_config("{}").gateway.header_timeout_s == 60.0


def test_upstream_keepalive_default_is_kongs_pool_size():
    """Kong's upstream_keepalive_pool_size defaults to 512 (kong_defaults.lua), whichever name sets it."""
    assert parse_config("{}").gateway.upstream_keepalive == 512
    assert gateway_of({"upstream_keepalive_pool_size": "512"}).upstream_keepalive == 512


# --- keepalive_requests 0 --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["nginx_http_keepalive_requests", "keepalive_requests"])
def test_keepalive_requests_zero_is_taken(key: str):
    """nginx takes keepalive_requests 0 (ngx_conf_set_num_slot) as no keep-alive; Kong injects it as written."""
    assert gateway_of({key: 0}).keepalive_requests == 0
    assert refusal({key: -1}) == [f"<config>: gateway.{key}: expected int >= 0, got -1"]


async def test_keepalive_requests_zero_closes_after_every_response(nursery: trio.Nursery, gateway):  # noqa: ANN001
    """nginx's `r->connection->requests >= clcf->keepalive_requests` (requests counted from 1): with 0 the first
    response already says `Connection: close`."""
    backend = EchoBackend()
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}", [{"paths": ["/"]}])]},
                         keepalive_requests=0)
    with trio.fail_after(10):
        reply = await request(port, "GET", "/x")
    assert reply.status == 200
    assert reply.header("connection") == "close"


# --- nginx_http_lua_regex_match_limit --------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [100000, "100000"])
def test_kongs_default_regex_match_limit_passes(value: object):
    """kong_defaults.lua's `nginx_http_lua_regex_match_limit = 100000` is the limit the gateway's PCRE runs use:
    it says what the gateway does anyway, so it passes, as `database: off` does."""
    assert parse_config(json.dumps({"gateway": {"nginx_http_lua_regex_match_limit": value}})) is not None


def test_another_regex_match_limit_is_refused_naming_the_accepted_value():
    (message,) = refusal({"nginx_http_lua_regex_match_limit": 200000})
    assert message.endswith("`nginx_http_lua_regex_match_limit: 100000` is accepted (it is what the gateway does)")


# --- gateway.bus: check-config refuses what start cannot use ----------------------------------------------------------


@pytest.mark.parametrize(("bus", "says"), [
    ("foo", "expected ipc://PATH or tcp://HOST:PORT"),
    ("ipc://", "expected ipc://PATH or tcp://HOST:PORT"),
    ("tcp://127.0.0.1:x", "a port from 1 to 65534"),
    ("tcp://127.0.0.1:65535", "a port from 1 to 65534"),  # (its PUB socket takes the next port)
    ("tcp://*:5555", "can be bound but not connected to"),
    ("tcp://0.0.0.0:5555", "can be bound but not connected to"),
])
def test_a_bus_that_start_could_not_use_is_refused_by_check_config(bus: str, says: str) -> None:
    [message] = refusal({"bus": bus})
    assert message.startswith("<config>: gateway.bus: ") and says in message, message


@pytest.mark.parametrize("bus", ["ipc://run/bus.sock", "ipc:///tmp/gw/bus.sock", "tcp://127.0.0.1:5555"])
def test_a_bus_the_processes_can_bind_and_reach_loads(bus: str) -> None:
    assert gateway_of({"bus": bus}).bus == bus
