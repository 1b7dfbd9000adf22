"""Host names of services and targets: every address of a name takes its turn, connection by connection (Kong's DNS
client rotates a name's records), and a name without an address is Kong's 503 "name resolution failed". Names are
resolved here by a Trio custom resolver, so the test decides what a name's addresses are."""

from __future__ import annotations

import socket
from collections import Counter

import trio
from backends import EchoBackend, Names, request, serve_on_addresses, service, upstream

TIMEOUT = 10


async def _backends(nursery: trio.Nursery, addresses: list[str]) -> tuple[int, list[EchoBackend]]:
    return await serve_on_addresses(nursery, addresses, EchoBackend)


async def test_a_service_hosts_addresses_take_turns_connection_by_connection(nursery, gateway):
    addresses = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    trio.socket.set_custom_hostname_resolver(Names({"mcp.test": addresses}))
    port, backends = await _backends(nursery, addresses)
    gw = await gateway({"services": [service("svc", f"http://mcp.test:{port}")]})
    with trio.fail_after(TIMEOUT):  # (framing=close: the backend ends each connection, so each request opens one)
        replies = [await request(gw, "GET", "/x?framing=close") for _ in range(6)]
    assert [r.status for r in replies] == [200] * 6
    assert Counter(r.header("x-backend") for r in replies) == {a: 2 for a in addresses}


async def test_ipv4_addresses_are_used_when_a_name_has_both(nursery, gateway):
    """Kong asks for A records before AAAA."""
    trio.socket.set_custom_hostname_resolver(Names({"mcp.test": ["::1", "127.0.0.2"]}))
    port, _ = await _backends(nursery, ["127.0.0.2"])
    gw = await gateway({"services": [service("svc", f"http://mcp.test:{port}")]})
    with trio.fail_after(TIMEOUT):
        replies = [await request(gw, "GET", "/x?framing=close") for _ in range(3)]
    assert [r.header("x-backend") for r in replies] == ["127.0.0.2"] * 3


async def test_an_upstream_targets_name_spreads_over_its_addresses_too(nursery, gateway):
    addresses = ["127.0.0.2", "127.0.0.3"]
    trio.socket.set_custom_hostname_resolver(Names({"mcp.test": addresses}))
    port, _ = await _backends(nursery, addresses)
    up = upstream("up", [port])
    up["targets"][0]["target"] = f"mcp.test:{port}"
    gw = await gateway({"upstreams": [up], "services": [service("svc", "http://up")]})
    with trio.fail_after(TIMEOUT):
        replies = [await request(gw, "GET", "/x?framing=close") for _ in range(4)]
    assert Counter(r.header("x-backend") for r in replies) == {a: 2 for a in addresses}


async def test_a_name_without_an_address_is_kongs_503_name_resolution_failed(nursery, gateway):
    trio.socket.set_custom_hostname_resolver(Names({}))
    gw = await gateway({"services": [service("svc", "http://nowhere.test:8080", retries=1)]})
    with trio.fail_after(TIMEOUT):
        reply = await request(gw, "GET", "/x")
    assert reply.status == 503
    assert reply.header("content-type") == "application/json; charset=utf-8"
    assert reply.json() == {"message": "name resolution failed", "request_id": reply.header("x-request-id")}


async def test_the_names_whose_turns_are_kept_are_bounded(monkeypatch):
    from gateway.http import net

    monkeypatch.setattr(net, "_MAX_TURNS", 3)
    monkeypatch.setattr(net, "_turns", {})
    trio.socket.set_custom_hostname_resolver(Names({f"n{i}.test": ["127.0.0.2", "127.0.0.3"] for i in range(5)}))
    for i in range(5):
        await net.resolve(f"n{i}.test", 80)
    assert len(net._turns) <= 3
    assert [await net.resolve("n4.test", 80) for _ in range(2)] == [(socket.AF_INET, "127.0.0.3"),
                                                                     (socket.AF_INET, "127.0.0.2")]
