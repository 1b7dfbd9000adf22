"""Kong's ip-restriction and the client address it sees (the socket peer, or a trusted balancer's header), through
the in-process gateway over IPv4 and IPv6 loopback; the same address feeds rate limiting by ip and the upstream's
X-Forwarded-For / X-Real-IP."""

from __future__ import annotations

import json
import socket

import pytest
import trio
from auth_helpers import (
    TIMEOUT,
    call,
    http_codec,  # noqa: F401 - the fixture: one codec
    message,
    start,
    upstream,
)
from backends import EchoBackend, service

from gateway.config import ConfigError, parse_config
from gateway.http.net import bind_listener
from gateway.runtime import compile_config
from gateway.worker import serve_worker


def restricted(**config):  # noqa: ANN003,ANN201
    return [{"paths": ["/"], "plugins": [{"name": "ip-restriction", "config": config}]}]


async def test_a_denied_address_gets_403_with_kongs_message(nursery, gateway):
    _, port = await start(nursery, gateway, restricted(deny=["127.0.0.1"]))
    reply = await call(port)
    assert (reply.status, message(reply)) == (403, {"message": "IP address not allowed: 127.0.0.1"})
    assert reply.header("content-type") == "application/json; charset=utf-8"


async def test_status_and_message_are_configurable(nursery, gateway):
    _, port = await start(nursery, gateway, restricted(deny=["127.0.0.0/8"], status=401, message="Forbidden"))
    reply = await call(port)
    assert (reply.status, message(reply)) == (401, {"message": "Forbidden"})


@pytest.mark.parametrize(("config", "status"), [
    ({"allow": ["127.0.0.1"]}, 200),
    ({"allow": ["127.0.0.2"]}, 403),
    ({"allow": ["127.0.0.0/24"]}, 200),
    ({"allow": ["127.0.0.1/8"]}, 200),  # host bits set: Kong takes it as 127.0.0.0/8
    ({"allow": ["10.0.0.0/8"]}, 403),
    ({"allow": ["::1"]}, 403),
    ({"allow": ["127.0.0.1"], "deny": ["127.0.0.1"]}, 403),  # deny is checked first
    ({"allow": ["127.0.0.0/8"], "deny": ["127.0.0.1/32"]}, 403),
    ({"deny": ["10.0.0.0/8"]}, 200),
])
async def test_allow_and_deny_over_ipv4(nursery, gateway, config, status):
    _, port = await start(nursery, gateway, restricted(**config))
    assert (await call(port)).status == status


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


async def _serve(doc: dict, listener: socket.socket, task_status=trio.TASK_STATUS_IGNORED) -> None:  # noqa: ANN001
    config = parse_config(json.dumps({**doc, "gateway": {"http_codec": "llhttp"}}), "<test config>")
    try:
        await serve_worker(config, [listener], ready=task_status.started)
    finally:
        listener.close()


async def call6(port: int, target: str = "/", headers: list[tuple[str, str]] | None = None):  # noqa: ANN201
    import h11
    from backends import Client
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("::1", port)
        client = Client(stream)
        client.conn = h11.Connection(h11.CLIENT)
        async with client:
            return await client.request("GET", target, headers=headers)


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
@pytest.mark.parametrize(("config", "status"), [
    ({"allow": ["::1"]}, 200),
    ({"allow": ["::1/128"]}, 200),
    ({"allow": ["::/0"]}, 200),
    ({"allow": ["127.0.0.1"]}, 403),
    ({"deny": ["::1"]}, 403),
    ({"deny": ["2001:db8::/32"]}, 200),
    ({"deny": ["[::1]"]}, 403),  # lua-resty-ipmatcher's parse_ipv6 takes an address in brackets
    ({"allow": ["[::1]/128"]}, 200),
])
async def test_allow_and_deny_over_ipv6(nursery, config, status):
    backend = EchoBackend()
    await nursery.start(backend.serve)
    listener = bind_listener("::1", 0, reuse_port=False)
    port = listener.getsockname()[1]
    doc = {"services": [service("svc", f"http://127.0.0.1:{backend.port}", restricted(**config))]}
    await nursery.start(_serve, doc, listener)
    reply = await call6(port)
    assert reply.status == status
    if status == 403:
        assert message(reply) == {"message": "IP address not allowed: ::1"}
    else:
        seen = upstream(reply)
        assert (seen["x-real-ip"], seen["x-forwarded-for"]) == ("::1", "::1")


# --- the client address behind a trusted balancer ------------------------------------------------------------------


TRUSTED = {"trusted_ips": ["127.0.0.1"], "real_ip_header": "X-Forwarded-For", "real_ip_recursive": True}


async def test_a_trusted_peers_x_forwarded_for_is_the_client_address(nursery, gateway):
    _, port = await start(nursery, gateway, restricted(allow=["10.0.0.0/8"]), settings=TRUSTED)
    seen = upstream(await call(port, headers=[("x-forwarded-for", "10.1.2.3")]))
    assert seen["x-real-ip"] == "10.1.2.3"
    assert seen["x-forwarded-for"] == "10.1.2.3, 127.0.0.1"  # Kong appends the peer it got the request from
    seen = upstream(await call(port, headers=[("x-forwarded-for", "192.0.2.1, 10.1.2.3")]))
    assert seen["x-real-ip"] == "10.1.2.3"  # the walk stops at the first address that is not trusted
    reply = await call(port, headers=[("x-forwarded-for", "8.8.8.8")])
    assert (reply.status, message(reply)) == (403, {"message": "IP address not allowed: 8.8.8.8"})


async def test_a_spoofed_header_from_an_untrusted_peer_changes_nothing(nursery, gateway):
    untrusted = {**TRUSTED, "trusted_ips": ["10.9.9.9"]}
    _, port = await start(nursery, gateway, restricted(allow=["10.0.0.0/8"]), settings=untrusted)
    reply = await call(port, headers=[("x-forwarded-for", "10.1.2.3")])
    assert (reply.status, message(reply)) == (403, {"message": "IP address not allowed: 127.0.0.1"})


async def test_untrusted_forwarded_headers_are_replaced_upstream(nursery, gateway):
    _, port = await start(nursery, gateway, settings={**TRUSTED, "trusted_ips": ["10.9.9.9"]})
    seen = upstream(await call(port, headers=[("x-forwarded-for", "10.1.2.3"), ("x-real-ip", "10.1.2.3"),
                                              ("x-forwarded-proto", "https")]))
    # X-Forwarded-For is kept with the peer appended (Kong's); the client address and scheme are the gateway's own
    assert (seen["x-forwarded-for"], seen["x-real-ip"], seen["x-forwarded-proto"]) == (
        "10.1.2.3, 127.0.0.1", "127.0.0.1", "http")


async def test_rate_limiting_by_ip_counts_the_client_address(nursery, gateway):
    routes = [{"paths": ["/"], "plugins": [{"name": "rate-limiting",
                                            "config": {"day": 1, "limit_by": "ip"}}]}]
    _, port = await start(nursery, gateway, routes, settings=TRUSTED)
    assert (await call(port, headers=[("x-forwarded-for", "10.0.0.1")])).status == 200
    assert (await call(port, headers=[("x-forwarded-for", "10.0.0.2")])).status == 200
    assert (await call(port, headers=[("x-forwarded-for", "10.0.0.1")])).status == 429


@pytest.mark.parametrize(("entry", "expected"), [
    ("hello", "config.allow[0]: invalid ip or cidr range: 'hello'"),
    ("0.0.0.0/33", "config.allow[0]: invalid ip or cidr range: '0.0.0.0/33'"),
    ("::1/129", "config.allow[0]: invalid ip or cidr range: '::1/129'"),
])
def test_bad_addresses_are_config_errors(entry, expected):
    config = parse_config("services: [{name: s, url: 'http://127.0.0.1:1', routes: [{paths: [/]}]}]\n"
                          f"plugins: [{{name: ip-restriction, config: {{allow: ['{entry}']}}}}]")
    with pytest.raises(ConfigError) as info:
        compile_config(config)
    assert info.value.messages == [f"<config>: plugins[0].{expected}"]


def _allow(entry: str) -> list[str]:
    """The config errors of an ip-restriction allowing `entry` (written as a JSON string: any character goes)."""
    config = parse_config("services: [{name: s, url: 'http://127.0.0.1:1', routes: [{paths: [/]}]}]\n"
                          f"plugins: [{{name: ip-restriction, config: {{allow: [{json.dumps(entry)}]}}}}]")
    try:
        compile_config(config)
    except ConfigError as e:
        return e.messages
    return []


@pytest.mark.parametrize("entry", ["10.0.0.0/255.0.0.0", "10.0.0.0/0.0.0.255", "10.0.0.0/08", "10.0.0.0/+8",
                                   "10.0.0.0/ 8", "::/0128", "fe80::1%eth0", "fe80::1%eth0/64", "10.0.0.0/8/8",
                                   "it's", "[10.0.0.1]", "[::1"])
def test_entries_kong_refuses_are_refused_with_its_message(entry):
    """Kong's typedefs.ip_or_cidr (kong/tools/ip.lua is_valid_ip_or_cidr): a prefix length is one of the strings
    "0".."32" ("0".."128" for IPv6), so never a netmask, a hostmask or a padded number, and the address is what
    inet_pton reads, so no IPv6 zone; Python's ip_network takes all of those. The entry is quoted as Kong quotes it."""
    assert _allow(entry) == [f"<config>: plugins[0].config.allow[0]: invalid ip or cidr range: '{entry}'"]


@pytest.mark.parametrize("entry", ["10.0.0.1/8", "10.0.0.0/32", "0.0.0.0/0", "::/0", "::1/128", "2001:db8::1/32",
                                   "::ffff:10.0.0.0/104", "fe80::1", "[::1]", "[2001:db8::]/32"])
def test_entries_kong_takes_load(entry):
    """What Kong takes still loads, host bits included (lua-resty-ipmatcher shifts them out: 10.0.0.1/8 is 10/8)."""
    assert _allow(entry) == []


def test_ip_restriction_needs_a_list():
    config = parse_config("services: [{name: s, url: 'http://127.0.0.1:1', routes: [{paths: [/]}]}]\n"
                          "plugins: [{name: ip-restriction, config: {allow: [], deny: []}}]")
    with pytest.raises(ConfigError) as info:
        compile_config(config)
    assert "at least one of allow and deny must be non-empty" in str(info.value)
