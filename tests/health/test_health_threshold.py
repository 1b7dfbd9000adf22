"""Kong's healthchecks.threshold: when the weight of an upstream's healthy targets, as a percentage of the weight of
all of them, is not above the threshold, the upstream is unhealthy and its requests get 503 "failure to get a peer
from the ring-balancer" (kong/runloop/balancer/balancers.lua updateStatus and getPeer, balancer/init.lua execute).

The rules on gateway.health.threshold, then through a worker's SharedState (what sets each group's `unusable`),
then end to end through `gateway start` with active checks on real backends.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import trio
from e2e_helpers import Backend, GatewayNode, counts, delta, request, wait_for

from gateway.breaker.messages import BreakerUpdate
from gateway.breaker.state import State
from gateway.bus import protocol as p
from gateway.config import parse_config
from gateway.health.threshold import unusable_targets, upstream_healthy
from gateway.http.kong_errors import NO_PEER
from gateway.runtime import UpstreamGroup, compile_config
from gateway.state.shared import SharedState

ALL4 = frozenset(range(4))

# ---- the rule: healthy weight share > threshold ---------------------------------------------------------------------

# Kong's spec (02-integration/05-proxy/10-balancer/01-healthchecks_spec.lua "threshold for health checks"): four
# addresses of weight 25, thresholds 0, 25, 75, 99, 100, taken down one by one.
KONG_SPEC = [(threshold, healthy_count, healthy_count * 25 > threshold)
             for threshold in (0, 25, 75, 99, 100) for healthy_count in (4, 3, 2, 1, 0)]


@pytest.mark.parametrize(("threshold", "healthy_count", "expected"), KONG_SPEC)
def test_kongs_spec_table_four_targets_of_weight_25(threshold: float, healthy_count: int, expected: bool) -> None:
    unhealthy = set(range(4 - healthy_count))
    assert upstream_healthy([25] * 4, unhealthy, set(), threshold) is expected


# (weights, unhealthy, excluded, threshold, healthy?)
TABLE = [
    ([100, 100], set(), set(), 0, True),
    ([100, 100], {0}, set(), 0, True),
    ([100, 100], {0, 1}, set(), 0, False),  # threshold 0: unhealthy only with no healthy weight at all
    ([100, 100], set(), set(), 50, True),
    ([100, 100], {0}, set(), 50, False),  # exactly at the threshold is not above it (Kong's strict >)
    ([100, 100], {0}, set(), 49.5, True),
    ([100, 100], set(), set(), 100, False),  # 100: never healthy, even with every target healthy (Kong's spec)
    ([100, 100], set(), set(), 99.9, True),
    ([300, 100], {1}, set(), 60, True),  # weights, not counts: 75 % healthy
    ([300, 100], {0}, set(), 20, True),  # 25 %
    ([300, 100], {0}, set(), 25, False),
    ([100, 0], set(), set(), 100, False),
    ([100, 0], {1}, set(), 50, True),  # a weight-0 target adds nothing to either sum, unhealthy or not
    ([100, 0], {0}, set(), 0, False),
    ([0, 0], set(), set(), 0, False),  # total weight 0: unhealthy (Kong)
    ([], set(), set(), 0, False),
    ([100, 100, 100], {1}, {0}, 60, False),  # drained / circuit open: out of both sums
    ([100, 100, 100], set(), {0}, 60, True),  # draining one target leaves the rest 100 % healthy
    ([100, 100, 100], {2}, {0, 1}, 0, False),
    ([100, 100], set(), {0, 1}, 0, False),
]


@pytest.mark.parametrize(("weights", "unhealthy", "excluded", "threshold", "expected"), TABLE)
def test_healthy_weight_share_above_threshold_table(weights: list[int], unhealthy: set[int], excluded: set[int],
                                                     threshold: float, expected: bool) -> None:
    assert upstream_healthy(weights, unhealthy, excluded, threshold) is expected


def test_the_comparison_is_kongs_float_expression_at_a_third() -> None:
    # Kong computes (total - unavailable) / total * 100 in doubles: 1/3*100 is 33.33333333333333, a little below
    # 100/3, so a threshold of exactly that double is not exceeded (an exact comparison would say healthy).
    share = 1 / 3 * 100
    assert share == 33.33333333333333
    assert not upstream_healthy([1, 1, 1], {0, 1}, set(), share)
    assert upstream_healthy([1, 1, 1], {0, 1}, set(), 33.3333333333333)


# ---- which targets the balancer skips -------------------------------------------------------------------------------


def test_healthy_upstream_skips_only_blocked_and_unhealthy_targets() -> None:
    assert unusable_targets([100] * 4, {1}, {3}, threshold=50) == {1, 3}


def test_unhealthy_upstream_skips_every_target_even_the_healthy_ones() -> None:
    assert unusable_targets([100] * 4, {0, 1}, set(), threshold=50) == ALL4


def test_threshold_100_skips_every_target_with_all_healthy() -> None:
    assert unusable_targets([100] * 4, set(), set(), threshold=100) == ALL4


def test_threshold_0_all_unhealthy_skips_all_as_before() -> None:
    assert unusable_targets([100] * 4, ALL4, set(), threshold=0) == ALL4


def test_panic_mode_sends_an_unhealthy_upstream_to_all_its_unblocked_targets() -> None:
    assert unusable_targets([100] * 4, {0, 1}, {3}, threshold=60, panic=True) == {3}
    assert unusable_targets([100] * 4, {0, 1, 2}, {3}, threshold=0, panic=True) == {3}
    assert unusable_targets([100] * 4, {0}, {3}, threshold=0, panic=True) == {0, 3}, "healthy: panic changes nothing"


def test_recovery_makes_the_healthy_targets_usable_again() -> None:
    assert unusable_targets([100, 100], {0}, set(), threshold=60) == {0, 1}
    assert unusable_targets([100, 100], set(), set(), threshold=60) == set()


# ---- in a worker: SharedState keeps group.unusable from the keeper's messages ----------------------------------------


def worker_with(threshold: float, weights: list[int], panic: bool = False) -> tuple[SharedState, UpstreamGroup]:
    doc = {"_format_version": "3.0",
           "upstreams": [{"name": "u", "panic_mode": panic, "healthchecks": {"threshold": threshold},
                          "targets": [{"target": f"10.0.0.{i}:80", "weight": w} for i, w in enumerate(weights)]}],
           "services": [{"name": "s", "url": "http://u", "routes": [{"name": "r", "paths": ["/"]}]}]}
    runtime = compile_config(parse_config(json.dumps(doc)))
    shared = SharedState("1", 1)
    shared.attach(runtime)
    return shared, runtime.groups["u"]


def states(*changes: tuple[int, dict[str, Any]]) -> p.TargetsChanged:
    return p.TargetsChanged(targets=[p.TargetState(f"u|10.0.0.{i}:80", **fields) for i, fields in changes])


async def test_worker_threshold_60_two_equal_targets_one_down_skips_both() -> None:
    shared, group = worker_with(60, [100, 100])
    assert group.unusable == set()
    shared.on_message(states((0, {"healthy": False})))
    assert group.unusable == {0, 1}
    assert group.balancer.pick(None, set(group.unusable)) is None, "no peer: forward.py answers 503 NO_PEER"


async def test_worker_threshold_recovers_when_the_target_is_healthy_again() -> None:
    shared, group = worker_with(60, [100, 100])
    shared.on_message(states((0, {"healthy": False})))
    shared.on_message(states((0, {"healthy": True})))
    assert group.unusable == set()


async def test_worker_threshold_100_is_unhealthy_from_the_start() -> None:
    _, group = worker_with(100, [100, 100])
    assert group.unusable == {0, 1}


async def test_worker_threshold_0_keeps_the_healthy_target() -> None:
    shared, group = worker_with(0, [100, 100])
    shared.on_message(states((0, {"healthy": False})))
    assert group.unusable == {0}


async def test_worker_drained_target_is_out_of_the_share() -> None:
    shared, group = worker_with(60, [100, 100, 100])
    shared.on_message(states((0, {"drained": True})))
    assert group.unusable == {0}, "the two left are 100 % healthy"
    shared.on_message(states((1, {"healthy": False})))
    assert group.unusable == {0, 1, 2}, "then 50 % of what is left"


async def test_worker_admin_weight_counts_in_the_share() -> None:
    shared, group = worker_with(60, [100, 100])
    shared.on_message(states((1, {"weight": 300})))
    shared.on_message(states((0, {"weight": None, "healthy": False})))
    assert group.unusable == {0}, "target 1 now holds 75 % of the weight"
    shared.on_message(states((1, {"weight": None})))
    assert group.unusable == {0, 1}, "back to its configured 100: 50 %"


async def test_worker_admin_weight_0_is_out_of_the_share() -> None:
    shared, group = worker_with(60, [100, 100, 100])
    shared.on_message(states((2, {"weight": 0}), (0, {"weight": None, "healthy": False})))
    assert group.unusable == {0, 1, 2}, "50 % of the weight that is left"
    shared.on_message(states((2, {"weight": None})))
    assert group.unusable == {0}, "66.7 %"


async def test_worker_circuit_open_target_is_out_of_the_share() -> None:
    shared, group = worker_with(60, [100, 100, 100])
    shared.on_message(p.BreakersChanged(updates=[BreakerUpdate("u|10.0.0.0:80", State.OPEN)]))
    assert group.unusable == {0}


async def test_worker_panic_mode_uses_the_unhealthy_targets_of_an_unhealthy_upstream() -> None:
    shared, group = worker_with(60, [100, 100], panic=True)
    shared.on_message(states((0, {"healthy": False})))
    assert group.unusable == set()


# ---- end to end: gateway start, active checks, real backends ---------------------------------------------------------


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="needs Linux /proc")
async def test_e2e_threshold_60_one_of_two_down_503_no_peer_then_traffic_again(tmp_path: Path,
                                                                                 nursery: trio.Nursery) -> None:
    a, b = Backend("a"), Backend("b")
    for backend in (a, b):
        await nursery.start(backend.serve)
    checks = {"threshold": 60,
              "active": {"type": "http", "http_path": "/health", "timeout": 1,
                         "healthy": {"interval": 0.2, "successes": 1},
                         "unhealthy": {"interval": 0.2, "http_failures": 1}}}
    gw = GatewayNode(tmp_path / "gw", {
        "upstreams": [{"name": "u", "healthchecks": checks,
                       "targets": [{"target": a.target, "weight": 100}, {"target": b.target, "weight": 100}]}],
        "services": [{"name": "s", "url": "http://u", "routes": [{"name": "r", "paths": ["/"]}]}]})
    try:
        with trio.fail_after(30):
            await gw.start(workers=1)
            ok = [await request(gw.port, "GET", "/x") for _ in range(4)]
            assert [r.status for r in ok] == [200] * 4

            a.health_status = 503  # a fails its checks; its real answers stay 200: only the threshold gives a 503
            await wait_for(lambda: _healthy(gw, a, False), 10, interval=0.1, what="a unhealthy")
            mark = counts([a, b])
            down = [await request(gw.port, "GET", "/x") for _ in range(4)]
            for reply in down:
                assert reply.status == 503
                assert reply.headers.get("content-type") == "application/json; charset=utf-8"
                assert reply.json()["message"] == NO_PEER == "failure to get a peer from the ring-balancer"
            assert delta(counts([a, b]), mark) == {"a": 0, "b": 0}, "b is healthy, yet the upstream is not"

            a.health_status = 200
            await wait_for(lambda: _healthy(gw, a, True), 10, interval=0.1, what="a healthy again")
            mark = counts([a, b])
            back = [await request(gw.port, "GET", "/x") for _ in range(6)]
            assert [r.status for r in back] == [200] * 6
            assert all(n > 0 for n in delta(counts([a, b]), mark).values()), "round-robin over both again"
    finally:
        gw.cleanup()


async def _healthy(gw: GatewayNode, backend: Backend, healthy: bool) -> bool:
    return (await gw.targets())[f"u|{backend.target}"]["healthy"] is healthy
