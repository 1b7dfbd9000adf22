"""An address DNS makes of a configured target keeps that target's identity (`name:port`), as Kong 3.9.3's balancer
keeps a target name as ONE entry of balancer.targets whose addresses are its records (kong/runloop/balancer/
targets.lua update_dns_result -> balancers.lua addAddress): consistent hashing's points, the Status API's
/upstreams/{u}/health, kong_upstream_target_health and the warning for a name that fails all follow from it. Names
are resolved by the gateway's DNS client from the test's DNS server (tests/dns_server.py)."""

from __future__ import annotations

import logging
from math import floor
from typing import Any

from dns_server import Names, serve_names

from gateway.balancing import KongConsistentHashing
from gateway.balancing.continuum import continuum_index
from gateway.bus import protocol as p
from gateway.config import parse_config
from gateway.config.schema import GatewaySettings
from gateway.discovery.dns import resolve_targets
from gateway.discovery.types import TargetInfo
from gateway.dns.process import serving
from gateway.keeper.state import Keeper
from gateway.metrics import KONG_TARGET_HEALTH
from gateway.runtime import compile_config
from gateway.state.shared import SharedState
from gateway.status.kong import KongUpstreamRoutes

POINTS = 10000  # the upstream's default slots: Kong's continuum size


def config(upstream_extra: str = "", weight: int = 100, plugins: str = ""):  # noqa: ANN201
    return parse_config(
        "_format_version: '3.0'\n"
        "upstreams:\n"
        f"  - {{name: up{upstream_extra}, targets: [{{target: 'svc.test:80', weight: {weight}}}]}}\n"
        "services:\n"
        "  - {name: s, host: up}\n"
        "routes:\n"
        "  - {name: r, service: s, paths: ['/']}\n" + plugins)


async def discovered(names: Names, use_srv_name: bool = False, weight: int = 100) -> list[TargetInfo]:
    """What the discovery process reports for the configured target svc.test:80."""
    async with serving(GatewaySettings(**names.settings)):
        return (await resolve_targets([TargetInfo("svc.test", 80, weight)], use_srv_name))[0]


def kong_continuum(addresses: list[tuple[str, int, int]]) -> dict[int, tuple[str, int]]:
    """consistent_hashing.lua afterHostUpdate for ONE target whose addresses are (ip, port, weight): each gets
    floor(weight / totalWeight * #balancer.targets * 160) points at xxhash32("<ip>::<port> <n>"), in "ip:port"
    order, a taken point moving it on to its next n."""
    total = sum(w for _, _, w in addresses)
    continuum: dict[int, tuple[str, int]] = {}
    for ip, port, weight in sorted(addresses, key=lambda a: f"{a[0]}:{a[1]}"):
        entries = floor(weight / total * 1 * 160) or 1
        n = 1
        while n <= entries:
            point = continuum_index(f"{ip}::{port} {n}".encode(), POINTS)
            if point in continuum:
                entries += 1
            else:
                continuum[point] = (ip, port)
            n += 1
    return continuum


def worker_continuum(targets: list[TargetInfo], upstream_extra: str) -> dict[int, tuple[str, int]]:
    """The continuum a worker builds from the discovery's report, as (host, port) per point."""
    shared = SharedState("w1", 1)
    runtime = compile_config(config(", algorithm: consistent-hashing, hash_on: header, hash_on_header: x-key"
                                    + upstream_extra))
    shared.attach(runtime)
    shared.on_message(p.UpstreamTargets(upstream="up", targets=targets))
    group = runtime.services["s"].group
    assert isinstance(group.balancer, KongConsistentHashing)
    return {point: (group.targets[i].host, group.targets[i].port) for point, i in group.balancer.points().items()}


async def health_row(targets: list[TargetInfo], weight: int = 100) -> dict[str, Any]:
    """The configured target's row of GET /upstreams/up/health over the keeper's states of `targets`."""
    cfg = config(weight=weight)
    keeper = Keeper(cfg, workers=1)
    keeper.discover("up", targets)

    async def overview() -> Any:
        return keeper.admin("targets", {}, 0.0, 0.0)[0]

    status, doc = await KongUpstreamRoutes(lambda: cfg, overview, lambda: "node").answer("up", "health", None, {})
    assert status == 200
    (row,) = doc["data"]
    return row


# --- consistent hashing: #balancer.targets counts configured targets ------------------------------------------------


async def test_an_srv_names_records_at_two_ports_are_placed_as_one_targets_addresses(nursery):
    """consistent_hashing.lua:95-99: `entries = floor(address.weight / totalWeight * #balancer.targets * 160)`, and
    an SRV name is one target (targets.lua update_dns_result): two records of weight 10 get 80 points each at
    Kong's points. The worker counted each (name, record port) as a target: 160 points each, keys elsewhere."""
    names = await serve_names(nursery, {})
    names.srv["svc.test"] = [(10, 10, 9001, "127.0.0.1"), (10, 10, 9002, "127.0.0.1")]
    targets = await discovered(names)
    assert worker_continuum(targets, "") == kong_continuum([("127.0.0.1", 9001, 10), ("127.0.0.1", 9002, 10)])


async def test_with_use_srv_name_an_srv_names_records_are_still_one_target(nursery):
    """use_srv_name changes only the Host header (balancers.lua setHostHeader `addr.hostHeader = addr.ip`); the
    records stay addresses of the one target svc.test:80 (consistent_hashing.lua:95-99 counts #balancer.targets).
    The worker counted each record's name as a target."""
    names = await serve_names(nursery, {"a.node": ["127.0.0.2"], "b.node": ["127.0.0.3"]})
    names.srv["svc.test"] = [(10, 10, 9001, "a.node"), (10, 10, 9001, "b.node")]
    targets = await discovered(names, use_srv_name=True)
    assert worker_continuum(targets, ", use_srv_name: true") == kong_continuum([("a.node", 9001, 10),
                                                                                 ("b.node", 9001, 10)])


def test_the_continuum_groups_addresses_by_the_target_they_name():
    """sort_hosts_and_addresses groups by target (name, port), not by an address's port: addresses given with their
    target `name:port` share that target's 160 points."""
    balancer = KongConsistentHashing([10, 10], [("svc.test:80", "127.0.0.1", 9001),
                                                ("svc.test:80", "127.0.0.1", 9002)], slots=POINTS)
    counts = [list(balancer.points().values()).count(i) for i in (0, 1)]
    assert counts == [80, 80]


# --- the Status API: /upstreams/{u}/health ---------------------------------------------------------------------------


async def test_status_health_lists_srv_records_at_other_ports_under_the_configured_target(nursery):
    """healthcheckers.lua get_upstream_health keys each target `target.name .. ":" .. target.port` (svc.test:80) with
    its addresses (getTargetStatus). The gateway looked the addresses up by `name:record port`: none found, the
    row was DNS_ERROR without data."""
    names = await serve_names(nursery, {})
    names.srv["svc.test"] = [(10, 10, 9001, "127.0.0.1"), (10, 10, 9002, "127.0.0.1")]
    row = await health_row(await discovered(names))
    assert (row["health"], sorted((a["ip"], a["port"]) for a in row["data"]["addresses"])) == (
        "HEALTHCHECKS_OFF", [("127.0.0.1", 9001), ("127.0.0.1", 9002)])


async def test_status_health_gives_an_srv_address_its_records_weight_and_their_sum_as_total(nursery):
    """balancers.lua addAddress: `weight = entry.weight` (an SRV record's; `or target.weight` for A/AAAA only),
    getTargetStatus: addresses[i].weight and weight.total their sum. The gateway gave each the target's 100."""
    names = await serve_names(nursery, {})
    names.srv["svc.test"] = [(10, 10, 80, "127.0.0.2"), (10, 30, 80, "127.0.0.3")]
    data = (await health_row(await discovered(names)))["data"]
    assert (sorted((a["ip"], a["weight"]) for a in data["addresses"]), data["weight"]["total"],
            data["nodeWeight"]) == ([("127.0.0.2", 10), ("127.0.0.3", 30)], 40, 100)


async def test_status_health_dns_of_an_srv_target_is_srv(nursery):
    """balancers.lua getTargetStatus `dns = get_dns_source(target.lastQuery)`: the record type's name. The gateway
    said "A" for every name."""
    names = await serve_names(nursery, {})
    names.srv["svc.test"] = [(10, 10, 80, "127.0.0.2")]
    assert (await health_row(await discovered(names)))["data"]["dns"] == "SRV"


async def test_status_health_dns_of_a_ttl_0_name_is_kongs_virtual_srv(nursery):
    """balancers.lua get_dns_source: `if dns_record.__ttl0Flag then return "ttl=0, virtual SRV"` (targets.lua
    update_dns_result's virtual SRV entry for an answer of TTL 0). The gateway said "A"."""
    names = await serve_names(nursery, {"svc.test": ["127.0.0.2"]}, ttl=0)
    data = (await health_row(await discovered(names)))["data"]
    assert (data["dns"], [(a["ip"], a["port"], a["weight"]) for a in data["addresses"]]) == (
        "ttl=0, virtual SRV", [("svc.test", 80, 100)])


# --- kong_upstream_target_health -------------------------------------------------------------------------------------


def target_health(names_and_addresses: list[TargetInfo], weight: int = 100, checks: str = "") -> dict[tuple, int]:
    """kong_upstream_target_health of upstream `up` as (target, address, state) -> value."""
    prometheus = "plugins:\n  - {name: prometheus, config: {upstream_health_metrics: true}}\n"
    keeper = Keeper(config(checks, weight, prometheus), workers=1)
    keeper.discover("up", names_and_addresses)
    keeper.sample_metrics()
    return {(labels[1], labels[2], labels[3]): metric._value.get()
            for labels, metric in KONG_TARGET_HEALTH._metrics.items() if labels[0] == "up"}


async def test_target_health_labels_an_srv_records_address_with_the_configured_target(nursery):
    """prometheus/exporter.lua:466-480: the `target` label is get_upstream_health's key, `target.name .. ":" ..
    target.port` (svc.test:80), the address `address.ip .. ":" .. address.port`. The gateway's was svc.test:9001."""
    names = await serve_names(nursery, {})
    names.srv["svc.test"] = [(10, 10, 9001, "127.0.0.1")]
    states = target_health(await discovered(names))
    assert {labels for labels, value in states.items() if value == 1} == {
        ("svc.test:80", "127.0.0.1:9001", "healthchecks_off")}


async def test_target_health_of_an_srv_target_of_weight_0_is_healthchecks_off(nursery):
    """healthcheckers.lua get_upstream_health: `if using_hc and target.weight > 0` (the configured target's weight,
    not its records'), else HEALTHCHECKS_OFF. The gateway took the record's weight 10: "healthy"."""
    names = await serve_names(nursery, {})
    names.srv["svc.test"] = [(10, 10, 9001, "127.0.0.1")]
    checks = ", healthchecks: {passive: {unhealthy: {http_failures: 1}}}"
    states = target_health(await discovered(names, weight=0), weight=0, checks=checks)
    assert {labels for labels, value in states.items() if value == 1} == {
        ("svc.test:80", "127.0.0.1:9001", "healthchecks_off")}


# --- a name that fails ------------------------------------------------------------------------------------------------


async def test_a_target_name_that_fails_to_resolve_is_logged_at_warn_with_kongs_words(nursery, caplog):
    """targets.lua queryDns: `log(WARN, "querying dns for ", target.name, " failed: ", err, ...)` at each requery.
    The gateway logged it at debug: at the default level an operator saw nothing while the target took no
    traffic."""
    names = await serve_names(nursery, {})
    caplog.set_level(logging.DEBUG, logger="gateway.discovery")
    async with serving(GatewaySettings(**names.settings)):
        await resolve_targets([TargetInfo("gone.test", 80, 100)])
    assert [(r.levelno, r.getMessage()) for r in caplog.records if "gone.test" in r.getMessage()] == [
        (logging.WARNING, "querying dns for gone.test failed: dns server error: 3 name error")]
