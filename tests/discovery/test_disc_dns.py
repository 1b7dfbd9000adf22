"""An upstream's target names resolved into one target per address, as Kong's balancer resolves them
(gateway.discovery.dns), and what the keeper, the workers and the metrics make of those addresses. Names are resolved
by a Trio custom resolver, so each test decides what a name's addresses are."""

from __future__ import annotations

import socket

import pytest
import trio
from backends import Names

from gateway.bus import protocol as p
from gateway.config import parse_config
from gateway.discovery import dns
from gateway.discovery.dns import resolve_targets, run_dns
from gateway.discovery.service import discovered_upstreams
from gateway.discovery.types import TargetInfo
from gateway.metrics import KONG_TARGET_HEALTH
from gateway.node.keeper import Keeper
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


async def test_a_name_becomes_one_target_per_address_with_its_weight_and_its_name_as_hostname():
    trio.socket.set_custom_hostname_resolver(Names({"mcp.test": ["127.0.0.2", "127.0.0.3"]}))
    got = await resolve_targets([TargetInfo("mcp.test", 9000, 7), TargetInfo("127.0.0.9", 9000)], {})
    assert got == [TargetInfo("127.0.0.2", 9000, 7, "mcp.test"), TargetInfo("127.0.0.3", 9000, 7, "mcp.test"),
                   TargetInfo("127.0.0.9", 9000)]


async def test_ipv4_addresses_are_the_targets_when_a_name_has_both():
    trio.socket.set_custom_hostname_resolver(Names({"mcp.test": ["::1", "127.0.0.2"]}))
    assert await resolve_targets([TargetInfo("mcp.test", 80)], {}) == [TargetInfo("127.0.0.2", 80, 100, "mcp.test")]


class FailingNames(Names):
    """Names whose unknown names fail with getaddrinfo's `failure` (EAI_AGAIN: a server failure or no answer;
    EAI_NODATA: an empty answer) instead of NXDOMAIN."""

    def __init__(self, names: dict[str, list[str]], failure: int) -> None:
        super().__init__(names)
        self.failure = failure

    async def getaddrinfo(self, host, port, family=0, type=0, proto=0, flags=0):  # noqa: ANN001, ANN201, A002
        if (host.decode() if isinstance(host, bytes) else host) not in self.names:
            raise socket.gaierror(self.failure, "Temporary failure in name resolution")
        return await super().getaddrinfo(host, port, family, type, proto, flags)


@pytest.mark.parametrize("failure", [socket.EAI_AGAIN, socket.EAI_NODATA])
async def test_a_name_that_stops_resolving_keeps_its_last_addresses_for_kongs_stale_ttl(autojump_clock, failure):
    """kong/resty/dns/client.lua cacheinsert: a server failure or an empty answer leaves a stale record with data in
    place, for dns_stale_ttl."""
    names = FailingNames({"mcp.test": ["127.0.0.2"]}, failure)
    trio.socket.set_custom_hostname_resolver(names)
    known: dict[str, tuple[list[str], float]] = {}
    first = await resolve_targets([TargetInfo("mcp.test", 80)], known)
    names.names.clear()
    await trio.sleep(dns.STALE_TTL_S - 1)
    assert await resolve_targets([TargetInfo("mcp.test", 80)], known) == first
    await trio.sleep(2)
    assert await resolve_targets([TargetInfo("mcp.test", 80)], known) == [TargetInfo("mcp.test", 80, 100, "mcp.test")]


async def test_a_name_that_no_longer_exists_loses_its_addresses_at_once(autojump_clock):
    """kong/resty/dns/client.lua cacheinsert: a "3 name error" (NXDOMAIN, getaddrinfo's EAI_NONAME) replaces the
    stale record: the name is a target by its name at the next resolution, and one that comes back gets its new
    addresses."""
    names = Names({"mcp.test": ["127.0.0.2"]})
    trio.socket.set_custom_hostname_resolver(names)
    known: dict[str, tuple[list[str], float]] = {}
    assert await resolve_targets([TargetInfo("mcp.test", 80)], known) == [TargetInfo("127.0.0.2", 80, 100, "mcp.test")]
    names.names.clear()
    await trio.sleep(5)
    assert await resolve_targets([TargetInfo("mcp.test", 80)], known) == [TargetInfo("mcp.test", 80, 100, "mcp.test")]
    assert "mcp.test" not in known
    names.names["mcp.test"] = ["127.0.0.3"]
    assert await resolve_targets([TargetInfo("mcp.test", 80)], known) == [TargetInfo("127.0.0.3", 80, 100, "mcp.test")]


async def test_a_name_that_never_resolved_stays_a_target_by_its_name():
    trio.socket.set_custom_hostname_resolver(Names({}))
    assert await resolve_targets([TargetInfo("gone.test", 80, 5)], {}) == [TargetInfo("gone.test", 80, 5, "gone.test")]


async def test_run_dns_reports_the_first_list_and_then_only_changes(autojump_clock):
    names = Names({"mcp.test": ["127.0.0.2"]})
    trio.socket.set_custom_hostname_resolver(names)
    reports: list[list[TargetInfo]] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(run_dns, "up", [TargetInfo("mcp.test", 80)], lambda _, targets: reports.append(targets),
                            5.0)
        await trio.sleep(12)  # two more resolutions, same answer
        names.names["mcp.test"] = ["127.0.0.2", "127.0.0.3"]
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
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


async def test_a_resolver_that_does_not_answer_holds_up_no_report_past_its_timeout(autojump_clock):
    class Silent(Names):
        async def getaddrinfo(self, host, port, family=0, type=0, proto=0, flags=0):  # noqa: ANN001, ANN201, A002
            if host in ("slow.test", b"slow.test"):
                await trio.sleep_forever()
            return await super().getaddrinfo(host, port, family, type, proto, flags)

    trio.socket.set_custom_hostname_resolver(Silent({"mcp.test": ["127.0.0.2"]}))
    started = trio.current_time()
    got = await resolve_targets([TargetInfo("slow.test", 80), TargetInfo("mcp.test", 80)], {})
    assert trio.current_time() - started == dns.RESOLVE_TIMEOUT_S  # both looked up at once, the silent one bounded
    assert got == [TargetInfo("127.0.0.2", 80, 100, "mcp.test"), TargetInfo("slow.test", 80, 100, "slow.test")]
