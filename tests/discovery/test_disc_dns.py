"""An upstream's target names resolved into one target per address, as Kong's balancer resolves them
(gateway.discovery.dns), and what the keeper, the workers and the metrics make of those addresses. Names are resolved
by the gateway's DNS client from a DNS server of the test (tests/dns_server.py)."""

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


async def test_a_name_becomes_one_target_per_address_with_its_weight_and_its_name_as_hostname(nursery):
    names = await serve_names(nursery, {"mcp.test": ["127.0.0.2", "127.0.0.3"]})
    async with resolving(names):
        got = await resolved([TargetInfo("mcp.test", 9000, 7), TargetInfo("127.0.0.9", 9000)])
    assert got == [TargetInfo("127.0.0.2", 9000, 7, "mcp.test"), TargetInfo("127.0.0.3", 9000, 7, "mcp.test"),
                   TargetInfo("127.0.0.9", 9000)]


async def test_ipv4_addresses_are_the_targets_when_a_name_has_both(nursery):
    names = await serve_names(nursery, {"mcp.test": ["::1", "127.0.0.2"]})
    async with resolving(names):
        assert await resolved([TargetInfo("mcp.test", 80)]) == [TargetInfo("127.0.0.2", 80, 100, "mcp.test")]


async def test_srv_records_of_the_lowest_priority_are_targets_with_their_own_port_and_weight(nursery):
    """targets.lua update_dns_result: only the top priority's records; balancers.lua addAddress: the record's weight
    (0 as SRV_0_WEIGHT, 1) and port (0: the target's), the target's name as Host header."""
    names = await serve_names(nursery, {"a.node": ["127.0.0.2"], "b.node": ["127.0.0.3"], "c.node": ["127.0.0.4"]})
    names.srv["svc.test"] = [(10, 30, 9001, "a.node"), (10, 0, 0, "b.node"), (20, 50, 9003, "c.node")]
    async with resolving(names):
        got = await resolved([TargetInfo("svc.test", 80, 100)])
    assert got == [TargetInfo("127.0.0.2", 9001, 30, "svc.test"), TargetInfo("127.0.0.3", 80, 1, "svc.test")]


async def test_use_srv_name_makes_each_records_target_its_host_header(nursery):
    names = await serve_names(nursery, {"a.node": ["127.0.0.2"]})
    names.srv["svc.test"] = [(10, 30, 9001, "a.node")]
    async with resolving(names):
        assert await resolved([TargetInfo("svc.test", 80)], use_srv_name=True) == [
            TargetInfo("127.0.0.2", 9001, 30, "a.node")]


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
        assert await resolved([TargetInfo("mcp.test", 80)]) == [TargetInfo("127.0.0.2", 80, 100, "mcp.test")]
        del names.names["mcp.test"]
        await trio.sleep(11)
        await resolved([TargetInfo("mcp.test", 80)])  # the stale answer, while the name is asked again
        await trio.sleep(1)
        assert await resolved([TargetInfo("mcp.test", 80)]) == [TargetInfo("mcp.test", 80, 0, "mcp.test")]
        names.names["mcp.test"] = ["127.0.0.3"]
        await trio.sleep(31)  # Kong's dns_not_found_ttl
        await resolved([TargetInfo("mcp.test", 80)])  # the name error, stale, while the name is asked again
        await trio.sleep(1)
        assert await resolved([TargetInfo("mcp.test", 80)]) == [TargetInfo("127.0.0.3", 80, 100, "mcp.test")]


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
        (0, [TargetInfo("127.0.0.2", 80, 100, "mcp.test")]), (61.5, [TargetInfo("127.0.0.3", 80, 100, "mcp.test")])]


async def test_run_dns_reports_the_first_list_and_then_only_changes(nursery, autojump_clock):
    names = await serve_names(nursery, {"mcp.test": ["127.0.0.2"]}, ttl=5)
    reports: list[list[TargetInfo]] = []
    async with resolving(names), trio.open_nursery() as inner:
        await inner.start(run_dns, "up", [TargetInfo("mcp.test", 80)], lambda _, targets: reports.append(targets))
        await trio.sleep(12)  # asked again, same answer
        names.names["mcp.test"] = ["127.0.0.2", "127.0.0.3"]
        await trio.sleep(12)  # the stale answer, then the new one
        inner.cancel_scope.cancel()
    assert reports == [[TargetInfo("127.0.0.2", 80, 100, "mcp.test")],
                       [TargetInfo("127.0.0.2", 80, 100, "mcp.test"), TargetInfo("127.0.0.3", 80, 100, "mcp.test")]]


def test_an_upstream_with_target_names_is_discovered_and_one_of_addresses_is_not():
    assert [up.name for up in discovered_upstreams(config("[{target: 'mcp.test:80'}]"))] == ["up"]
    assert needs_discovery(config("[{target: 'mcp.test:80'}]"))
    assert discovered_upstreams(config("[{target: '127.0.0.1:80'}, {target: '[::1]:80'}]")) == []
    assert not needs_discovery(config("[{target: '127.0.0.1:80'}]"))


def test_the_keeper_keeps_one_state_per_address_and_forgets_the_name():
    keeper = Keeper(config("[{target: 'mcp.test:80'}]"), workers=1)
    assert set(keeper.targets) == {"up|mcp.test:80"}
    keeper.discover("up", [TargetInfo("127.0.0.2", 80, 100, "mcp.test"), TargetInfo("127.0.0.3", 80, 100, "mcp.test")])
    assert set(keeper.targets) == {"up|127.0.0.2:80", "up|127.0.0.3:80"}
    keeper.configure(config("[{target: 'mcp.test:80'}]"))  # a reload: the resolved list stays, the name does not
    assert set(keeper.targets) == {"up|127.0.0.2:80", "up|127.0.0.3:80"}
    keeper.configure(config("[{target: '127.0.0.4:80'}]"))  # no name any more: the config's targets again
    assert set(keeper.targets) == {"up|127.0.0.4:80"}


async def test_a_circuit_breaker_covers_each_address_of_a_name_and_no_address_gone():
    breaker = "plugins:\n  - {name: circuit-breaker, service: s}\n"
    keeper = Keeper(config("[{target: 'mcp.test:80'}]", plugins=breaker), workers=1)
    keeper.discover("up", [TargetInfo("127.0.0.2", 80, 100, "mcp.test"), TargetInfo("127.0.0.3", 80, 100, "mcp.test")])
    assert set(keeper.breakers.describe(0.0)) == {"up|127.0.0.2:80", "up|127.0.0.3:80"}
    keeper.breakers.force_open("up|127.0.0.2:80", 0.0)
    keeper.discover("up", [TargetInfo("127.0.0.2", 80, 100, "mcp.test"), TargetInfo("127.0.0.4", 80, 100, "mcp.test")])
    described = keeper.breakers.describe(0.0)
    assert set(described) == {"up|127.0.0.2:80", "up|127.0.0.4:80"}
    assert described["up|127.0.0.2:80"]["state"] == "forced_open"  # an address that stays keeps its breaker
    keeper.configure(config("[{target: 'mcp.test:80'}]", plugins=breaker))  # a reload keeps them too
    assert keeper.breakers.describe(0.0)["up|127.0.0.2:80"]["state"] == "forced_open"


def test_the_keepers_target_list_names_the_name_of_each_address():
    keeper = Keeper(config("[{target: 'mcp.test:80'}, {target: '127.0.0.9:80'}]"), workers=1)
    keeper.discover("up", [TargetInfo("127.0.0.2", 80, 100, "mcp.test"), TargetInfo("127.0.0.9", 80)])
    listed, _ = keeper.admin("targets", {}, 0.0, 0.0)
    assert {t["key"]: t.get("name") for t in listed} == {"up|127.0.0.2:80": "mcp.test:80", "up|127.0.0.9:80": None}


async def test_a_worker_sends_a_names_address_its_name_as_host_and_tls_name():
    shared = SharedState("w1", 1)
    runtime = compile_config(config("[{target: 'mcp.test:8080'}]"))
    shared.attach(runtime)
    shared.on_message(p.UpstreamTargets(upstream="up", targets=[TargetInfo("127.0.0.2", 8080, 100, "mcp.test")]))
    (target,) = runtime.services["s"].group.targets
    assert (target.host, target.name, target.host_header, target.server_name) == (
        "127.0.0.2", "127.0.0.2:8080", b"mcp.test:8080", "mcp.test")
    assert not target.named  # an address: sessions are sealed to it as it is


def test_target_health_metrics_label_an_address_with_its_name_and_a_name_without_one_dns_error():
    prometheus = "plugins:\n  - {name: prometheus, config: {upstream_health_metrics: true}}\n"
    keeper = Keeper(config("[{target: 'mcp.test:80'}, {target: 'gone.test:80'}]", plugins=prometheus), workers=1)
    keeper.discover("up", [TargetInfo("127.0.0.2", 80, 100, "mcp.test"), TargetInfo("gone.test", 80, 100, "gone.test")])
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
    assert got == [TargetInfo("127.0.0.2", 80, 100, "mcp.test"), TargetInfo("slow.test", 80, 0, "slow.test")]


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
    assert got == [TargetInfo("127.0.0.2", 80, 100, "mcp.test")]


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
    assert got == [TargetInfo("127.0.0.2", 80, 100, "mcp.test"), TargetInfo("slow.test", 80, 0, "slow.test")]
