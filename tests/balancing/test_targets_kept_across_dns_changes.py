"""An upstream's targets across discovery's new lists (a DNS change, a keeper's Snapshot), as Kong's balancer keeps
them: an address that stays is the same address object (kong/runloop/balancer/targets.lua:416-440
update_dns_result), with what its algorithm learnt of it; and target names under `gateway run` are a target per
address, as under `gateway start` and in Kong."""

from __future__ import annotations

import math

import pytest
import trio
from backends import EchoBackend, request, serve_on_addresses, service
from dns_server import serve_names

from gateway import runtime
from gateway.balancing import KongConsistentHashing, KongLatency
from gateway.bus import protocol as p
from gateway.config import parse_config
from gateway.runtime import TargetRuntime, UpstreamGroup, compile_config
from gateway.state.shared import SharedState

TIMEOUT = 10
CONFIG = """
_format_version: '3.0'
upstreams:
  - name: up
    algorithm: {algorithm}
    discovery: {{type: consul, endpoints: ['127.0.0.1:8500'], service: svc}}
services:
  - {{name: s, host: up}}
routes:
  - {{name: r, service: s, paths: ['/']}}
"""


@pytest.fixture
def http_codec() -> str:
    """One codec: nothing here depends on how the client's request is parsed."""
    return "h11"


def address(ip: str, weight: int = 100) -> p.TargetInfo:
    """An address DNS made of the configured target mcp.test:8000."""
    return p.TargetInfo(ip, 8000, weight, "mcp.test", "mcp.test:8000", "A")


A, B, C = address("127.0.0.2"), address("127.0.0.3"), address("127.0.0.4")


def worker(algorithm: str) -> tuple[SharedState, UpstreamGroup]:
    """A worker's state over an upstream of `algorithm`, and that upstream's group."""
    shared = SharedState("w1", 1)
    compiled = compile_config(parse_config(CONFIG.format(algorithm=algorithm)))
    shared.attach(compiled)
    return shared, compiled.groups["up"]


def picked(group: UpstreamGroup, count: int) -> list[str]:
    """The addresses of `count` requests started as the proxy starts them (pick, then started), left in flight."""
    hosts = []
    for _ in range(count):
        index = group.balancer.pick()
        assert index is not None
        group.balancer.started(index)
        hosts.append(group.targets[index].host)
    return hosts


async def test_least_connections_keeps_in_flight_counts_of_addresses_that_stay_across_a_dns_change() -> None:
    """Kong keeps each address's connectionCount on the address object (least_connections.lua:22-44), and a DNS
    update only adds and removes the addresses that changed (targets.lua:416-440): with 3 requests in flight on
    127.0.0.2, the name's new address 127.0.0.3 takes the next 3 ((0+1)/w, (1+1)/w, (2+1)/w < (3+1)/w). A fresh
    balancer counted 127.0.0.2 at 0 and gave it two of them."""
    shared, group = worker("least-connections")
    shared.on_message(p.UpstreamTargets(upstream="up", targets=[A]))
    assert picked(group, 3) == [A.host] * 3
    shared.on_message(p.UpstreamTargets(upstream="up", targets=[A, B]))
    assert picked(group, 3) == [B.host] * 3


async def test_a_request_in_flight_across_dns_changes_gives_its_count_back_to_the_current_balancer() -> None:
    """Kong's request releases its address's count (releaseHandleAddress) on the address object the current heap
    holds: the requests started before two changes end on the balancer they started on, and the count they give
    back is the current one's, so the address they held is picked again (not left at 3 in flight for good)."""
    shared, group = worker("least-connections")
    shared.on_message(p.UpstreamTargets(upstream="up", targets=[A]))
    first = group.balancer
    picked(group, 3)
    shared.on_message(p.UpstreamTargets(upstream="up", targets=[A, B]))
    shared.on_message(p.UpstreamTargets(upstream="up", targets=[B, A, C]))  # (another order: indexes move)
    for _ in range(3):
        first.finished(0, 0.01)
    assert sorted(picked(group, 3)) == [A.host, B.host, C.host]


def test_latency_keeps_the_ewma_of_addresses_that_stay_and_starts_a_new_one_at_the_average(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Kong's latency afterHostUpdate drops the EWMA of the addresses gone only (latency.lua:71-101), and a new one
    starts at the average of those in service, itself counting 0 (calculate_slow_start_ewma): a fresh balancer
    forgot every EWMA (all at 0), so the slow target was as likely as the fast one."""
    clock = Clock()
    monkeypatch.setattr(runtime, "make_balancer", lambda algorithm, weights, **_: KongLatency(weights, clock=clock))
    group = latency_group(clock, [A, B])
    clock.now = 10.0
    observe(group, 0, 0.1)
    observe(group, 1, 0.9)
    fast, slow = group.balancer.estimate(0), group.balancer.estimate(1)
    assert fast is not None and slow is not None
    group.replace_targets([TargetRuntime(t.host, t.port, t.weight, None, t.hostname, t.target) for t in (C, B, A)])
    balancer = group.balancer
    assert (balancer.estimate(2), balancer.estimate(1)) == (fast, slow)  # (A and B at their new places)
    assert balancer.estimate(0) == pytest.approx((fast + slow) / 3)


def test_latency_folds_a_request_in_flight_across_a_dns_change_into_the_current_ewma(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Kong's afterBalance folds a request's time into the EWMA of its handle's address, the one the current
    balancer holds (latency.lua get_or_update_ewma): a request started before the change counts after it."""
    clock = Clock()
    monkeypatch.setattr(runtime, "make_balancer", lambda algorithm, weights, **_: KongLatency(weights, clock=clock))
    group = latency_group(clock, [A])
    first = group.balancer
    first.started(0)
    group.replace_targets([TargetRuntime(t.host, t.port, t.weight, None, t.hostname, t.target) for t in (B, A)])
    clock.now = 10.0
    first.finished(0, 2.0)
    assert group.balancer.estimate(1) == pytest.approx(2.0 * (1 - math.exp(-1)))


async def test_a_snapshot_repeating_an_upstreams_targets_keeps_its_balancer() -> None:
    """A keeper's Snapshot lists every discovered upstream again: an unchanged list changes nothing, as Kong's
    update_dns_result runs no afterHostUpdate for an answer that changed nothing (its `dirty`): round-robin's wheel
    goes on where it was, rather than from a new random start."""
    shared, group = worker("round-robin")
    shared.on_message(p.UpstreamTargets(upstream="up", targets=[A, B]))
    balancer = group.balancer
    shared.on_message(p.Snapshot(incarnation="k2", upstreams=[p.UpstreamTargets(upstream="up", targets=[A, B])]))
    assert group.balancer is balancer


async def test_gateway_run_places_a_target_name_on_the_continuum_by_its_address_as_kong(nursery, gateway) -> None:
    """Kong's continuum places each ADDRESS: `tostring(address.ip) .. ":" .. port .. " " .. i`
    (consistent_hashing.lua:89-93), address.ip being the record's IP (targets.lua update_dns_result -> balancers.lua
    addAddress), so `localhost:A` is placed as "127.0.0.1::A n". `gateway run` resolves target names as `gateway
    start` does (its discovery in its own process); it placed the name itself ("localhost::A n")."""
    first, second = EchoBackend("first"), EchoBackend("second")
    for backend in (first, second):
        await nursery.start(backend.serve)
    gw = await gateway({"upstreams": [{"name": "up", "algorithm": "consistent-hashing", "hash_on": "header",
                                       "hash_on_header": "x-key",
                                       "targets": [{"target": f"localhost:{first.port}"},
                                                   {"target": f"localhost:{second.port}"}]}],
                        "services": [service("svc", "http://up")]})
    kong = KongConsistentHashing([100, 100], [(f"localhost:{first.port}", "127.0.0.1", first.port),
                                              (f"localhost:{second.port}", "127.0.0.1", second.port)])
    keys = [f"key-{i}" for i in range(24)]
    expected = {k: ("first", "second")[kong.pick(k.encode())] for k in keys}
    with trio.fail_after(TIMEOUT):
        got = {k: (await request(gw, "GET", "/x", headers=[("x-key", k)])).header("x-backend") for k in keys}
    wrong = sorted(k for k in keys if got[k] != expected[k])
    assert not wrong, f"{len(wrong)} of {len(keys)} keys went to another target than Kong's: {wrong}"


async def test_gateway_run_consistent_hashing_keeps_a_key_on_one_address_of_a_name(nursery, gateway) -> None:
    """Kong's continuum holds each address of a target name (consistent_hashing.lua:84-111: `for _, address in
    ipairs(target.addresses)`), so one key always reaches the same address. `gateway run` had the name as one point
    owner whose addresses took turns per try: one key alternated between the two."""
    port, _ = await serve_on_addresses(nursery, ["127.0.0.2", "127.0.0.3"], EchoBackend)
    names = await serve_names(nursery, {"mcp.test": ["127.0.0.2", "127.0.0.3"]})
    gw = await gateway({"upstreams": [{"name": "up", "algorithm": "consistent-hashing", "hash_on": "header",
                                       "hash_on_header": "x-key", "targets": [{"target": f"mcp.test:{port}"}]}],
                        "services": [service("svc", "http://up")]}, **names.settings)
    with trio.fail_after(TIMEOUT):
        seen = {(await request(gw, "GET", "/x", headers=[("x-key", "one-client")])).header("x-backend")
                for _ in range(4)}
    assert len(seen) == 1, f"one hash key reached {sorted(seen)}"


class Clock:
    """A settable clock in seconds."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def latency_group(clock: Clock, infos: list[p.TargetInfo]) -> UpstreamGroup:
    """An upstream of Kong's latency algorithm over `infos`, on `clock`."""
    targets = [TargetRuntime(t.host, t.port, t.weight, None, t.hostname, t.target) for t in infos]
    return UpstreamGroup("up", targets, "latency", KongLatency([t.weight for t in targets], clock=clock),
                         ("none", b""), ("none", b""))


def observe(group: UpstreamGroup, index: int, seconds: float) -> None:
    """A request to target `index` that took `seconds`."""
    group.balancer.started(index)
    group.balancer.finished(index, seconds)
