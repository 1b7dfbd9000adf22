"""Host names of services and targets, resolved by the gateway's DNS client (Kong's) from the nameserver
`dns_resolver` names: every address of a name takes its turn, try by try (Kong's toip rotates a
name's records), an SRV record's port is the one connected to, and a name without an address is Kong's 503 "name
resolution failed" (a server failure Kong's 500). The names come from a DNS server of the test (tests/dns_server.py)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import trio
from backends import EchoBackend, request, serve_on_addresses, service, upstream
from dns_server import serve_names

from gateway.config import ConfigError, parse_config
from gateway.dns.client import TYPE_A, TYPE_SRV
from gateway.dns.process import from_settings
from gateway.runtime import compile_config

TIMEOUT = 10


async def _backends(nursery: trio.Nursery, addresses: list[str]) -> tuple[int, list[EchoBackend]]:
    return await serve_on_addresses(nursery, addresses, EchoBackend)


async def test_a_service_hosts_addresses_take_turns_connection_by_connection(nursery, gateway):
    addresses = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    names = await serve_names(nursery, {"mcp.test": addresses})
    port, backends = await _backends(nursery, addresses)
    gw = await gateway({"services": [service("svc", f"http://mcp.test:{port}")]}, **names.settings)
    with trio.fail_after(TIMEOUT):  # (framing=close: the backend ends each connection, so each request opens one)
        replies = [await request(gw, "GET", "/x?framing=close") for _ in range(6)]
    assert [r.status for r in replies] == [200] * 6
    assert Counter(r.header("x-backend") for r in replies) == {a: 2 for a in addresses}
    assert names.asked("mcp.test") <= 2  # the answer is cached for its TTL (an SRV query, then the A one)


async def test_ipv4_addresses_are_used_when_a_name_has_both(nursery, gateway):
    """Kong's dns_order (LAST, SRV, A, CNAME) does not ask for AAAA records."""
    names = await serve_names(nursery, {"mcp.test": ["::1", "127.0.0.2"]})
    port, _ = await _backends(nursery, ["127.0.0.2"])
    gw = await gateway({"services": [service("svc", f"http://mcp.test:{port}")]}, **names.settings)
    with trio.fail_after(TIMEOUT):
        replies = [await request(gw, "GET", "/x?framing=close") for _ in range(3)]
    assert [r.header("x-backend") for r in replies] == ["127.0.0.2"] * 3


async def test_dns_order_aaaa_first_connects_to_the_ipv6_address(nursery, gateway):
    names = await serve_names(nursery, {"mcp.test": ["::1", "127.0.0.2"]})
    port, _ = await _backends(nursery, ["::1"])
    gw = await gateway({"services": [service("svc", f"http://mcp.test:{port}")]}, dns_order=["AAAA", "A"],
                       **names.settings)
    with trio.fail_after(TIMEOUT):
        reply = await request(gw, "GET", "/x")
    assert (reply.status, reply.header("x-backend")) == (200, "::1")


async def test_a_service_host_with_an_srv_record_is_reached_at_the_records_port(nursery, gateway):
    """Kong's toip: an SRV record's target and port replace the service's host and port."""
    names = await serve_names(nursery, {"node1.test": ["127.0.0.2"]})
    port, _ = await _backends(nursery, ["127.0.0.2"])
    names.srv["api.test"] = [(10, 5, port, "node1.test")]
    gw = await gateway({"services": [service("svc", "http://api.test:1")]}, **names.settings)
    with trio.fail_after(TIMEOUT):
        reply = await request(gw, "GET", "/x")
    assert (reply.status, reply.header("x-backend")) == (200, "127.0.0.2")


async def test_a_name_in_dns_hostsfile_needs_no_nameserver(nursery, gateway, tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.3 backend.internal\n")
    port, _ = await _backends(nursery, ["127.0.0.3"])
    names = await serve_names(nursery)
    gw = await gateway({"services": [service("svc", f"http://backend.internal:{port}")]},
                       dns_hostsfile=str(hosts), **names.settings)
    with trio.fail_after(TIMEOUT):
        reply = await request(gw, "GET", "/x")
    assert (reply.status, reply.header("x-backend")) == (200, "127.0.0.3")
    assert names.asked("backend.internal") == 0


async def test_an_upstream_targets_name_spreads_over_its_addresses_too(nursery, gateway):
    addresses = ["127.0.0.2", "127.0.0.3"]
    names = await serve_names(nursery, {"mcp.test": addresses})
    port, _ = await _backends(nursery, addresses)
    up = upstream("up", [port])
    up["targets"][0]["target"] = f"mcp.test:{port}"
    gw = await gateway({"upstreams": [up], "services": [service("svc", "http://up")]}, **names.settings)
    with trio.fail_after(TIMEOUT):
        replies = [await request(gw, "GET", "/x?framing=close") for _ in range(4)]
    assert Counter(r.header("x-backend") for r in replies) == {a: 2 for a in addresses}


async def test_a_name_without_an_address_is_kongs_503_name_resolution_failed(nursery, gateway):
    names = await serve_names(nursery)
    gw = await gateway({"services": [service("svc", "http://nowhere.test:8080", retries=1)]}, **names.settings)
    with trio.fail_after(TIMEOUT):
        reply = await request(gw, "GET", "/x")
    assert reply.status == 503
    assert reply.header("content-type") == "application/json; charset=utf-8"
    assert reply.json() == {"message": "name resolution failed", "request_id": reply.header("x-request-id")}


async def test_a_nameserver_failure_is_kongs_500_naming_the_dns_error(nursery, gateway):
    names = await serve_names(nursery)
    names.failing.add("broken.test")
    gw = await gateway({"services": [service("svc", "http://broken.test:8080", retries=1)]}, **names.settings)
    with trio.fail_after(TIMEOUT):
        reply = await request(gw, "GET", "/x")
    assert reply.status == 500
    assert reply.json()["message"] == ("failed the initial dns/balancer resolve for 'broken.test' with: dns server "
                                       "error: 2 server failure")


# --- kong.conf's dns_* keys ------------------------------------------------------------------------------------------


def _refusals(gw: dict[str, object]) -> list[str]:
    try:
        compile_config(parse_config(json.dumps({"gateway": gw}), "f"), "f")
    except ConfigError as e:
        return [m.removeprefix("f: ") for m in e.messages]
    return []


def test_kong_conf_dns_keys_load_in_kongs_forms():
    """kong.conf's text forms: comma-separated arrays, numbers and booleans as text; the TTLs under Kong's names."""
    gw = parse_config(json.dumps({"gateway": {
        "dns_resolver": "127.0.0.1:8600, [::1]:53", "dns_order": "LAST,A,SRV", "dns_valid_ttl": "30",
        "dns_stale_ttl": 0, "dns_not_found_ttl": 5, "dns_error_ttl": 0.5, "dns_no_sync": "on",
        "dns_cache_size": "500", "new_dns_client": "off"}})).gateway
    assert (gw.dns_resolver, gw.dns_order) == (["127.0.0.1:8600", "[::1]:53"], ["LAST", "A", "SRV"])
    assert (gw.dns_valid_ttl_s, gw.dns_stale_ttl_s, gw.dns_not_found_ttl_s, gw.dns_error_ttl_s) == (30, 0, 5, 0.5)
    assert (gw.dns_no_sync, gw.dns_cache_size) == (True, 500)


def test_the_dns_client_takes_the_settings():
    gw = parse_config(json.dumps({"gateway": {"dns_resolver": ["127.0.0.1:8600"], "dns_order": ["a", "srv"],
                                              "dns_valid_ttl": 30, "dns_no_sync": True}})).gateway
    resolver = from_settings(gw)
    assert resolver.nameservers == [("127.0.0.1", 8600)]
    assert (resolver.order, resolver.valid_ttl, resolver.no_sync) == ([TYPE_A, TYPE_SRV], 30, True)


@pytest.mark.parametrize(("gw", "message"), [
    ({"dns_resolver": "example.com"}, "gateway: dns_resolver must be a comma separated list in the form of IPv4/6 or "
                                      "IPv4/6:port, got 'example.com'"),
    ({"dns_order": "LAST,MX"}, "gateway: dns_order: invalid entry 'MX'"),
    ({"dns_hostsfile": "/nonexistent/hosts"}, "gateway: dns_hostsfile: file does not exist: /nonexistent/hosts"),
])
def test_kong_conf_dns_values_kong_refuses_are_refused_in_its_words(gw, message):
    """kong/conf_loader/parse.lua's checks of dns_resolver, dns_hostsfile and dns_order."""
    assert _refusals(gw) == [message]


def test_dns_valid_ttl_0_is_accepted_as_kong_accepts_it():
    """Kong: dns_valid_ttl is `typ = "number"` with no range (kong/conf_loader/constants.lua:371), and
    kong/resty/dns/client.lua:200 (cacheinsert) applies a validTtl of 0 as every record's TTL (0 is truthy in Lua:
    `ttl = validTtl or math_huge`), i.e. answers are refreshed on each use."""
    assert _refusals({"dns_valid_ttl": 0}) == []
    assert parse_config(json.dumps({"gateway": {"dns_valid_ttl": 0}})).gateway.dns_valid_ttl_s == 0


@pytest.mark.parametrize("key", ["dns_stale_ttl", "dns_not_found_ttl", "dns_error_ttl", "dns_valid_ttl"])
def test_dns_ttls_of_thirty_days_are_accepted_as_kong_accepts_them(key):
    """Kong: the dns TTLs are `typ = "number"` without an upper bound (kong/conf_loader/constants.lua:371-375); the
    client keeps a record `ttl + staleTtl` in its LRU (kong/resty/dns/client.lua:255), which no timer holds."""
    assert _refusals({key: 30 * 86400}) == []


def test_a_negative_dns_ttl_is_refused():
    """A lifetime below 0 is no lifetime (Kong's client would expire the entry before it is used)."""
    assert _refusals({"dns_stale_ttl": -1}) != []


def test_the_new_dns_client_is_refused_saying_which_client_the_gateway_has():
    [message] = _refusals({"new_dns_client": "on"})
    assert "the gateway's DNS client is Kong's default one, set by the dns_* keys" in message


async def test_a_slow_nameserver_is_not_bounded_by_connect_timeout(nursery, gateway):
    """Kong resolves a service's host in its access phase, bounded by its DNS client's timeouts; connect_timeout
    bounds the connect to the address found. An answer after 0.6 s with connect_timeout 300 ms was a 504, and as the
    query was cancelled nothing was cached: every request failed the same way."""
    names = await serve_names(nursery, {"slow.test": ["127.0.0.2"]})
    names.server.delay = 0.6
    port, _ = await serve_on_addresses(nursery, ["127.0.0.2"], EchoBackend)
    gw = await gateway({"services": [service("svc", f"http://slow.test:{port}", connect_timeout=300, retries=0)]},
                       **names.settings)
    with trio.fail_after(10):
        first = await request(gw, "GET", "/x")
        second = await request(gw, "GET", "/x")
    assert (first.status, first.header("x-backend")) == (200, "127.0.0.2")
    assert (second.status, second.header("x-backend")) == (200, "127.0.0.2")
