"""An upstream's target names resolved into one target per address (an SRV record, or a name answered with TTL 0:
one target, resolved at each connection), as Kong's balancer resolves them (gateway.discovery.dns), and what the
keeper, the workers and the metrics make of those addresses. Names are resolved by the gateway's DNS client from a
DNS server of the test (tests/dns_server.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from dns_server import Names, ScriptedDns, serve_names

from gateway.bus import protocol as p
from gateway.config import parse_config
from gateway.config.schema import GatewaySettings
from gateway.discovery import dns
from gateway.discovery.dns import resolve_targets, run_dns
from gateway.discovery.service import discovered_upstreams
from gateway.discovery.types import TargetInfo
from gateway.dns.client import Record, Resolver
from gateway.dns.process import serving
from gateway.health import ActivePolicy, Event, HealthChecker, Thresholds
from gateway.health.checker import UpstreamChecks
from gateway.keeper.state import Keeper
from gateway.metrics import KONG_TARGET_HEALTH
from gateway.node.tree import needs_discovery
from gateway.runtime import compile_config
from gateway.state.shared import SharedState


def config(targets: str, upstream_extra: str = "", plugins: str = ""):  # noqa: ANN201
    return parse_config(
        "_format_version: '3.0'\n"
        "upstreams:\n"
        f"  - name: up\n    targets: {targets}\n{upstream_extra}"
        "services:\n"
        "  - {name: s, host: up}\n"
        "routes:\n"
        "  - {name: r, service: s, paths: ['/']}\n" + plugins)


@asynccontextmanager
async def resolving(names: Names, **settings: Any) -> AsyncIterator[Resolver]:
    """This process's DNS client asking the test's server (as a worker's or the discovery process's would)."""
    async with serving(GatewaySettings(**names.settings, **settings)) as client:
        yield client


async def resolved(targets: list[TargetInfo], use_srv_name: bool = False) -> list[TargetInfo]:
    return (await resolve_targets(targets, use_srv_name))[0]


def addr(ip: str, port: int, weight: int, name: str) -> TargetInfo:
    """An address of the configured target `name:port`, from its A records."""
    return TargetInfo(ip, port, weight, name, f"{name}:{port}", "A")


def srv(host: str, port: int, weight: int, hostname: str) -> TargetInfo:
    """An SRV record of the configured target svc.test:80."""
    return TargetInfo(host, port, weight, hostname, "svc.test:80", "SRV")


def virtual_srv(name: str, port: int, weight: int) -> TargetInfo:
    """A name answered with TTL 0: Kong's virtual SRV entry of the configured target `name:port`."""
    return TargetInfo(name, port, weight, name, f"{name}:{port}", dns.TTL0_SOURCE)


async def test_a_name_becomes_one_target_per_address_with_its_weight_and_its_name_as_hostname(nursery):
    names = await serve_names(nursery, {"mcp.test": ["127.0.0.2", "127.0.0.3"]})
    async with resolving(names):
        got = await resolved([TargetInfo("mcp.test", 9000, 7), TargetInfo("127.0.0.9", 9000)])
    assert got == [addr("127.0.0.2", 9000, 7, "mcp.test"), addr("127.0.0.3", 9000, 7, "mcp.test"),
                   TargetInfo("127.0.0.9", 9000)]


async def test_ipv4_addresses_are_the_targets_when_a_name_has_both(nursery):
    names = await serve_names(nursery, {"mcp.test": ["::1", "127.0.0.2"]})
    async with resolving(names):
        assert await resolved([TargetInfo("mcp.test", 80)]) == [addr("127.0.0.2", 80, 100, "mcp.test")]


async def test_srv_records_of_the_lowest_priority_are_targets_with_their_own_port_and_weight(nursery):
    """targets.lua update_dns_result: only the top priority's records; balancers.lua addAddress: one address per
    record, at the record's target (`entry_ip = entry.address or entry.target`, resolved at each request), with the
    record's weight (0 as SRV_0_WEIGHT, 1) and port (0: the target's), the target's name as Host header."""
    names = await serve_names(nursery, {"a.node": ["127.0.0.2"], "b.node": ["127.0.0.3"], "c.node": ["127.0.0.4"]})
    names.srv["svc.test"] = [(10, 30, 9001, "a.node"), (10, 0, 0, "b.node"), (20, 50, 9003, "c.node")]
    async with resolving(names):
        got = await resolved([TargetInfo("svc.test", 80, 100)])
    assert got == [srv("a.node", 9001, 30, "svc.test"), srv("b.node", 80, 1, "svc.test")]


async def test_srv_record_whose_target_has_several_addresses_keeps_its_own_weight_share(nursery):
    """Kong balancers.lua:351-387 (addAddress): one address per SRV record, `ip = entry.target` (the target name),
    `weight = entry.weight`, the name resolved at each request by toip (targets.lua:556 getAddressPeer), which takes
    its addresses in turn. Two SRV records of weight 10 thus get half the traffic each, even when one's target has
    two A records (spec/01-unit/09-balancer/04-round_robin_spec.lua:502-528)."""
    names = await serve_names(nursery, {"a.node": ["127.0.0.2", "127.0.0.3"], "b.node": ["127.0.0.4"]})
    names.srv["svc.test"] = [(10, 10, 9001, "a.node"), (10, 10, 9002, "b.node")]
    async with resolving(names):
        got = await resolved([TargetInfo("svc.test", 80, 100)])
    assert got == [srv("a.node", 9001, 10, "svc.test"), srv("b.node", 9002, 10, "svc.test")]


async def test_an_srv_record_whose_target_is_an_address_is_that_address(nursery):
    """balancers.lua addAddress: `ip = entry.target`, an IP literal, connected to as it is; setHostHeader: an IP
    address's Host header is the target's name, even with use_srv_name."""
    names = await serve_names(nursery, {})
    names.srv["svc.test"] = [(10, 10, 9001, "127.0.0.2")]
    async with resolving(names):
        assert await resolved([TargetInfo("svc.test", 80)], use_srv_name=True) == [
            srv("127.0.0.2", 9001, 10, "svc.test")]


async def test_use_srv_name_makes_each_records_target_its_host_header(nursery):
    names = await serve_names(nursery, {"a.node": ["127.0.0.2"]})
    names.srv["svc.test"] = [(10, 30, 9001, "a.node")]
    async with resolving(names):
        assert await resolved([TargetInfo("svc.test", 80)], use_srv_name=True) == [
            srv("a.node", 9001, 30, "a.node")]


async def test_a_ttl_0_name_is_one_target_of_its_weight_resolved_at_each_connection(nursery):
    """Kong targets.lua:369-403 (update_dns_result): an answer of TTL 0 is replaced by one virtual SRV entry
    {target = name, port = target.port, weight = target.weight}, resolved at each request (getAddressPeer -> toip,
    the name's A records in turn). A TTL-0 name of weight 100 beside an IP target of weight 100 takes half the
    traffic, however many addresses it has (spec/01-unit/09-balancer/04-round_robin_spec.lua:972-1027)."""
    names = await serve_names(nursery, {"zero.test": ["127.0.0.2", "127.0.0.3"]}, ttl=0)
    async with resolving(names):
        got = await resolved([TargetInfo("zero.test", 80, 100), TargetInfo("127.0.0.9", 80, 100)])
    assert got == [TargetInfo("127.0.0.9", 80, 100), virtual_srv("zero.test", 80, 100)]


async def test_a_ttl_0_name_is_asked_again_after_kongs_ttl0_interval(nursery, autojump_clock):
    """Kong balancers.lua:26 TTL_0_RETRY = 60 (ttl0Interval): the virtual SRV entry's record lives 60 s, when the
    name is asked again to see whether its TTL is still 0 (spec/01-unit/09-balancer/01-generic_spec.lua:1762)."""
    names = await serve_names(nursery, {"zero.test": ["127.0.0.2"]}, ttl=0)
    async with resolving(names):
        _, renew = await resolve_targets([TargetInfo("zero.test", 80)])
    assert renew == dns.TTL0_RETRY_S == 60


async def test_a_first_ttl_0_after_a_ttl_is_taken_as_records_and_the_second_as_ttl_0(nursery, autojump_clock):
    """Kong targets.lua:364-368: TTL 0 counts when the answer before it had TTL 0 too (or there was none), so that a
    cache counting a TTL down to 0 (lua-resty-dns-client issue 51) does not switch the name to per-request look-ups."""
    names = await serve_names(nursery, {"zero.test": ["127.0.0.2"]}, ttl=0)
    ttl0 = {"zero.test": False}  # its answer before had a TTL
    async with resolving(names):
        first, _ = await resolve_targets([TargetInfo("zero.test", 80)], ttl0=ttl0)
        await trio.sleep(1)
        second, _ = await resolve_targets([TargetInfo("zero.test", 80)], ttl0=ttl0)
    assert first == [addr("127.0.0.2", 80, 100, "zero.test")]
    assert second == [virtual_srv("zero.test", 80, 100)]


async def test_two_target_names_resolving_to_one_address_are_two_targets(nursery):
    """Kong targets.lua:504-530 (queryDns, per target) and balancers.lua:351-387 (addAddress appends to that target's
    addresses with its weight, and its Host header, setHostHeader balancers.lua:329-348): `one.test:80` and
    `two.test:80` both at 127.0.0.2 are two addresses, each with its own weight and Host header."""
    names = await serve_names(nursery, {"one.test": ["127.0.0.2"], "two.test": ["127.0.0.2"]})
    async with resolving(names):
        got = await resolved([TargetInfo("one.test", 80, 100), TargetInfo("two.test", 80, 50)])
    assert sorted((t.name, t.weight) for t in got) == [("one.test/127.0.0.2:80", 100), ("two.test/127.0.0.2:80", 50)]


async def test_two_ports_of_one_name_are_two_targets_each_with_its_own_weight(nursery):
    """Kong targets.lua:83-101 (each target entry keeps its name and its own port) and :109-116 (its DNS renewal is
    keyed by `name:port`): `mcp.test:9000` and `mcp.test:9001`, two servers on one host, are two addresses, each
    with its weight; the name is asked once."""
    names = await serve_names(nursery, {"mcp.test": ["127.0.0.2"]})
    async with resolving(names):
        got = await resolved([TargetInfo("mcp.test", 9000, 7), TargetInfo("mcp.test", 9001, 50)])
    assert got == [addr("127.0.0.2", 9000, 7, "mcp.test"), addr("127.0.0.2", 9001, 50, "mcp.test")]


async def test_two_ports_of_one_ttl_0_name_are_two_virtual_entries(nursery):
    """Kong targets.lua:375-390: a TTL-0 answer makes each target of the name its own virtual SRV entry, of its
    own port and weight."""
    names = await serve_names(nursery, {"zero.test": ["127.0.0.2"]}, ttl=0)
    async with resolving(names):
        got = await resolved([TargetInfo("zero.test", 80, 10), TargetInfo("zero.test", 81, 20)])
    assert got == [virtual_srv("zero.test", 80, 10), virtual_srv("zero.test", 81, 20)]


async def test_a_name_whose_server_fails_keeps_its_addresses_for_kongs_stale_ttl(nursery, autojump_clock):
    """kong/resty/dns/client.lua: a stale record is answered while it is asked again, and a server failure does not
    replace it; past dns_stale_ttl it is gone, and the name is a target by its name without weight."""
    names = await serve_names(nursery, {"mcp.test": ["127.0.0.2"]}, ttl=10)
    async with resolving(names, dns_stale_ttl_s=100):
        first = await resolved([TargetInfo("mcp.test", 80)])
        names.failing.add("mcp.test")
        for _ in range(9):
            await trio.sleep(10)
            assert await resolved([TargetInfo("mcp.test", 80)]) == first
        await trio.sleep(30)
        await resolved([TargetInfo("mcp.test", 80)])
        await trio.sleep(1)
        assert await resolved([TargetInfo("mcp.test", 80)]) == [TargetInfo("mcp.test", 80, 0, "mcp.test")]


async def test_a_name_that_no_longer_exists_loses_its_addresses_once_asked_again(nursery, autojump_clock):
    """client.lua cacheinsert: a "3 name error" replaces the stale record; a name that comes back gets its new
    addresses."""
    names = await serve_names(nursery, {"mcp.test": ["127.0.0.2"]}, ttl=10)
    async with resolving(names):
        assert await resolved([TargetInfo("mcp.test", 80)]) == [addr("127.0.0.2", 80, 100, "mcp.test")]
        del names.names["mcp.test"]
        await trio.sleep(11)
        await resolved([TargetInfo("mcp.test", 80)])  # the stale answer, while the name is asked again
        await trio.sleep(1)
        assert await resolved([TargetInfo("mcp.test", 80)]) == [TargetInfo("mcp.test", 80, 0, "mcp.test")]
        names.names["mcp.test"] = ["127.0.0.3"]
        await trio.sleep(31)  # Kong's dns_not_found_ttl
        await resolved([TargetInfo("mcp.test", 80)])  # the name error, stale, while the name is asked again
        await trio.sleep(1)
        assert await resolved([TargetInfo("mcp.test", 80)]) == [addr("127.0.0.3", 80, 100, "mcp.test")]


async def test_a_name_that_never_resolved_stays_a_target_by_its_name_without_weight(nursery):
    names = await serve_names(nursery)
    async with resolving(names):
        assert await resolved([TargetInfo("gone.test", 80, 5)]) == [TargetInfo("gone.test", 80, 0, "gone.test")]


async def test_names_are_asked_again_when_their_records_expire(nursery, autojump_clock):
    names = await serve_names(nursery, {"mcp.test": ["127.0.0.2"]}, ttl=7)
    async with resolving(names):
        assert (await resolve_targets([TargetInfo("mcp.test", 80)]))[1] == 7.5
    async with resolving(names, dns_valid_ttl_s=30):
        assert (await resolve_targets([TargetInfo("mcp.test", 80)]))[1] == 30.5


async def test_a_name_is_asked_again_when_its_cached_records_expire_not_a_whole_ttl_later(nursery, autojump_clock):
    """targets.lua schedule_dns_renewal: at `max(now, the cache entry's expire) + 0.5`, so records answered from the
    cache are asked again when the entry expires, and a stale answer (its expiry past) half a second later, by when
    the client's background refresh is done, not after the stale record's TTL all over again."""
    names = await serve_names(nursery, {"mcp.test": ["127.0.0.2"]}, ttl=60)
    async with resolving(names):
        await resolve_targets([TargetInfo("mcp.test", 80)])
        await trio.sleep(20)
        assert (await resolve_targets([TargetInfo("mcp.test", 80)]))[1] == 40.5  # from the cache
        await trio.sleep(41)
        assert (await resolve_targets([TargetInfo("mcp.test", 80)]))[1] == dns.MIN_RENEW_S  # stale, refreshed
        await trio.sleep(1)
        assert (await resolve_targets([TargetInfo("mcp.test", 80)]))[1] == 59.5  # refreshed a second ago


async def test_a_changed_address_is_applied_two_seconds_after_the_old_records_expire(nursery, autojump_clock):
    """Kong applies a change in DNS about TTL + 2 s after the last answer (the stale answer at TTL + 0.5, the
    refreshed one at the next tick of its once-a-second timer), not two TTLs later."""
    names = await serve_names(nursery, {"mcp.test": ["127.0.0.2"]}, ttl=60)
    reports: list[tuple[float, list[TargetInfo]]] = []
    async with resolving(names), trio.open_nursery() as inner:
        await inner.start(run_dns, "up", [TargetInfo("mcp.test", 80)],
                          lambda _, targets: reports.append((trio.current_time(), targets)))
        started = reports[0][0]
        names.names["mcp.test"] = ["127.0.0.3"]
        await trio.sleep(64)
        inner.cancel_scope.cancel()
    assert [(at - started, targets) for at, targets in reports] == [
        (0, [addr("127.0.0.2", 80, 100, "mcp.test")]), (61.5, [addr("127.0.0.3", 80, 100, "mcp.test")])]


async def test_run_dns_reports_the_first_list_and_then_only_changes(nursery, autojump_clock):
    names = await serve_names(nursery, {"mcp.test": ["127.0.0.2"]}, ttl=5)
    reports: list[list[TargetInfo]] = []
    async with resolving(names), trio.open_nursery() as inner:
        await inner.start(run_dns, "up", [TargetInfo("mcp.test", 80)], lambda _, targets: reports.append(targets))
        await trio.sleep(12)  # asked again, same answer
        names.names["mcp.test"] = ["127.0.0.2", "127.0.0.3"]
        await trio.sleep(12)  # the stale answer, then the new one
        inner.cancel_scope.cancel()
    assert reports == [[addr("127.0.0.2", 80, 100, "mcp.test")],
                       [addr("127.0.0.2", 80, 100, "mcp.test"), addr("127.0.0.3", 80, 100, "mcp.test")]]


def test_an_upstream_with_target_names_is_discovered_and_one_of_addresses_is_not():
    assert [up.name for up in discovered_upstreams(config("[{target: 'mcp.test:80'}]"))] == ["up"]
    assert needs_discovery(config("[{target: 'mcp.test:80'}]"))
    assert discovered_upstreams(config("[{target: '127.0.0.1:80'}, {target: '[::1]:80'}]")) == []
    assert not needs_discovery(config("[{target: '127.0.0.1:80'}]"))


def test_the_keeper_keeps_one_state_per_address_and_forgets_the_name():
    keeper = Keeper(config("[{target: 'mcp.test:80'}]"), workers=1)
    assert set(keeper.targets) == {"up|mcp.test:80"}
    keeper.discover("up", [TargetInfo("127.0.0.2", 80, 100, "mcp.test"), TargetInfo("127.0.0.3", 80, 100, "mcp.test")])
    assert set(keeper.targets) == {"up|mcp.test/127.0.0.2:80", "up|mcp.test/127.0.0.3:80"}
    keeper.configure(config("[{target: 'mcp.test:80'}]"))  # a reload: the resolved list stays, the name does not
    assert set(keeper.targets) == {"up|mcp.test/127.0.0.2:80", "up|mcp.test/127.0.0.3:80"}
    keeper.configure(config("[{target: '127.0.0.4:80'}]"))  # no name any more: the config's targets again
    assert set(keeper.targets) == {"up|127.0.0.4:80"}


async def test_a_circuit_breaker_covers_each_address_of_a_name_and_no_address_gone():
    breaker = "plugins:\n  - {name: circuit-breaker, service: s}\n"
    keeper = Keeper(config("[{target: 'mcp.test:80'}]", plugins=breaker), workers=1)
    keeper.discover("up", [TargetInfo("127.0.0.2", 80, 100, "mcp.test"), TargetInfo("127.0.0.3", 80, 100, "mcp.test")])
    assert set(keeper.breakers.describe(0.0)) == {"up|mcp.test/127.0.0.2:80", "up|mcp.test/127.0.0.3:80"}
    keeper.breakers.force_open("up|mcp.test/127.0.0.2:80", 0.0)
    keeper.discover("up", [TargetInfo("127.0.0.2", 80, 100, "mcp.test"), TargetInfo("127.0.0.4", 80, 100, "mcp.test")])
    described = keeper.breakers.describe(0.0)
    assert set(described) == {"up|mcp.test/127.0.0.2:80", "up|mcp.test/127.0.0.4:80"}
    assert described["up|mcp.test/127.0.0.2:80"]["state"] == "forced_open"  # an address that stays keeps its breaker
    keeper.configure(config("[{target: 'mcp.test:80'}]", plugins=breaker))  # a reload keeps them too
    assert keeper.breakers.describe(0.0)["up|mcp.test/127.0.0.2:80"]["state"] == "forced_open"


def test_the_keepers_target_list_names_the_name_of_each_address():
    keeper = Keeper(config("[{target: 'mcp.test:80'}, {target: '127.0.0.9:80'}]"), workers=1)
    keeper.discover("up", [TargetInfo("127.0.0.2", 80, 100, "mcp.test"), TargetInfo("127.0.0.9", 80)])
    listed, _ = keeper.admin("targets", {}, 0.0, 0.0)
    assert {t["key"]: t.get("name") for t in listed} == {"up|mcp.test/127.0.0.2:80": "mcp.test:80",
                                                         "up|127.0.0.9:80": None}


def test_the_keeper_keeps_two_names_at_one_address_apart():
    """Kong's checker keys a target by (ip, port, hostname) (healthcheckers.lua:47-55 add_target(ipaddr, port,
    target.name)): two names at one ip:port are two targets with their own state, and an IP target keeps its
    `ip:port` spelling."""
    keeper = Keeper(config("[{target: 'one.test:80'}, {target: 'two.test:80'}]"), workers=1)
    keeper.discover("up", [TargetInfo("127.0.0.2", 80, 100, "one.test"), TargetInfo("127.0.0.2", 80, 50, "two.test")])
    assert set(keeper.targets) == {"up|one.test/127.0.0.2:80", "up|two.test/127.0.0.2:80"}


async def test_a_worker_sends_a_names_address_its_name_as_host_and_tls_name():
    shared = SharedState("w1", 1)
    runtime = compile_config(config("[{target: 'mcp.test:8080'}]"))
    shared.attach(runtime)
    shared.on_message(p.UpstreamTargets(upstream="up", targets=[TargetInfo("127.0.0.2", 8080, 100, "mcp.test")]))
    (target,) = runtime.services["s"].group.targets
    assert (target.host, target.name, target.host_header, target.server_name) == (
        "127.0.0.2", "mcp.test/127.0.0.2:8080", b"mcp.test:8080", "mcp.test")
    assert not target.named  # an address: sessions are sealed to it as it is


async def test_a_worker_resolves_an_srv_records_target_name_at_each_connection():
    """Kong balancers.lua addAddress: the address of an SRV record whose target is a name has that name as its `ip`
    and the configured name as Host (setHostHeader); getAddressPeer resolves it per request (toip). The worker's
    target is that name, resolved connection by connection (gateway.http.net)."""
    shared = SharedState("w1", 1)
    runtime = compile_config(config("[{target: 'svc.test:80'}]"))
    shared.attach(runtime)
    shared.on_message(p.UpstreamTargets(upstream="up", targets=[TargetInfo("a.node", 9001, 10, "svc.test")]))
    (target,) = runtime.services["s"].group.targets
    assert (target.host, target.name, target.host_header, target.weight) == (
        "a.node", "svc.test/a.node:9001", b"svc.test:9001", 10)
    assert target.named  # resolved at each connection, its addresses in turn


async def test_an_srv_records_target_name_is_probed_as_one_target_through_the_dns_client(nursery):
    """Kong healthcheckers.lua:47-55 adds the address with `ip` = the record's target name and hostname = the
    target's name; lua-resty-healthcheck connects to that `ip`, which Kong's patched cosocket resolves (toip): one
    health state for the record, probed at one of its target's addresses, with the target's name as Host."""
    hosts: list[str] = []

    async def handler(stream: trio.SocketStream) -> None:
        async with stream:
            head = b""
            with trio.move_on_after(1):
                while b"\r\n\r\n" not in head:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        return
                    head += chunk
            hosts.extend(line[5:].strip().decode() for line in head.split(b"\r\n") if line.lower().startswith(b"host:"))
            try:
                await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            except trio.BrokenResourceError:
                pass

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    nursery.start_soon(trio.serve_listeners, handler, listeners)
    names = await serve_names(nursery, {"a.node": ["127.0.0.1"]})
    policy = ActivePolicy(type="http", timeout_s=1.0, healthy_interval_s=0.1, unhealthy_interval_s=0.1,
                          thresholds=Thresholds(successes=1, http_failures=1))
    probes: list[tuple[str, str, Event]] = []
    async with resolving(names):
        checker = HealthChecker([UpstreamChecks("up", policy, [TargetInfo("a.node", port, 10, "svc.test")])],
                                lambda *probe: probes.append(probe))
        await nursery.start(checker.run)
        with trio.fail_after(5):
            while not probes:
                await trio.sleep(0.01)
    assert probes[0] == ("up", f"svc.test/a.node:{port}", Event.SUCCESS)
    assert hosts[0] == "svc.test"


def test_target_health_metrics_label_an_address_with_its_name_and_a_name_without_one_dns_error():
    prometheus = "plugins:\n  - {name: prometheus, config: {upstream_health_metrics: true}}\n"
    keeper = Keeper(config("[{target: 'mcp.test:80'}, {target: 'gone.test:80'}]", plugins=prometheus), workers=1)
    keeper.discover("up", [TargetInfo("127.0.0.2", 80, 100, "mcp.test"), TargetInfo("gone.test", 80, 0, "gone.test")])
    keeper.sample_metrics()
    states = {(labels[1], labels[2], labels[3]): metric._value.get()
              for labels, metric in KONG_TARGET_HEALTH._metrics.items() if labels[0] == "up"}
    assert states[("mcp.test:80", "127.0.0.2:80", "healthchecks_off")] == 1
    assert states[("gone.test:80", "", "dns_error")] == 1  # Kong's exporter: an empty address
    assert states[("gone.test:80", "", "healthchecks_off")] == 0


async def test_a_nameserver_that_does_not_answer_holds_up_no_report_past_the_clients_timeout(nursery,
                                                                                              autojump_clock):
    """The names are asked at once; a silent nameserver holds the look-up up for the DNS client's tries (timeout x
    attempts), after which the client gives up: the name is a target without weight."""
    names = await serve_names(nursery, {"mcp.test": ["127.0.0.2"]})
    names.silent.add("slow.test")
    async with resolving(names) as client:
        started = trio.current_time()
        got = await resolved([TargetInfo("slow.test", 80), TargetInfo("mcp.test", 80)])
        assert trio.current_time() - started == client.timeout * client.attempts
    assert got == [addr("127.0.0.2", 80, 100, "mcp.test"), TargetInfo("slow.test", 80, 0, "slow.test")]


async def test_a_target_name_resolves_through_the_second_nameserver_when_the_first_is_down(nursery, autojump_clock):
    """targets.lua queryDns sets no limit of its own on dns_client.resolve, which asks the nameservers in turn
    (`timeout` each): with dns_resolver = [dead, good] the name resolves, its SRV and then its A query each answered
    by the second after a timeout on the first, instead of being cut off with the first try."""
    dead = ScriptedDns(lambda q: [])
    await nursery.start(dead.serve)
    names = await serve_names(nursery, {"mcp.test": ["127.0.0.2"]})
    settings = GatewaySettings(dns_resolver=[f"127.0.0.1:{dead.port}", f"127.0.0.1:{names.port}"])
    async with serving(settings) as client:
        started = trio.current_time()
        got = await resolved([TargetInfo("mcp.test", 80, 100)])
        assert trio.current_time() - started == 2 * client.timeout
    assert got == [addr("127.0.0.2", 80, 100, "mcp.test")]


async def test_a_look_up_the_client_does_not_end_is_cut_off_at_the_clients_own_bound(nursery, autojump_clock,
                                                                                      monkeypatch):
    """A net under the client's timeouts: a name it has not resolved within its resolve_max_wait for each query it
    makes in turn is a target without weight for now, and the other names are reported."""
    names = await serve_names(nursery, {"mcp.test": ["127.0.0.2"]})
    async with resolving(names) as client:
        resolve = client.resolve

        async def hangs(name: str, qtype: int | None = None) -> list[Record]:
            if name == "slow.test":
                await trio.sleep_forever()
            return await resolve(name, qtype)

        monkeypatch.setattr(client, "resolve", hangs)
        started = trio.current_time()
        got = await resolved([TargetInfo("slow.test", 80), TargetInfo("mcp.test", 80)])
        assert trio.current_time() - started == dns.lookup_bound_s(client) == (2 * 5 + 1) * 3
    assert got == [addr("127.0.0.2", 80, 100, "mcp.test"), TargetInfo("slow.test", 80, 0, "slow.test")]
