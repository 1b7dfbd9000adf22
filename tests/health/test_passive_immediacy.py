"""Passive health checks take a failing target out at once: Kong reports every try as it ends (kong/init.lua:1325-1337
report_http_status / report_tcp_failure / report_timeout, kong/runloop/balancer/healthcheckers.lua:164-190, into
lua-resty-healthcheck's shm counter), and spec/02-integration/05-proxy/10-balancer/01-healthchecks_spec.lua:1140-1208
("perform passive health checks") asserts that exactly `nfails` sequential requests reach the failing target.

A worker sends a passive result that can count towards unhealthy (UpstreamGroup.passive_failures) with its next
scheduler turn's flush, not after FLUSH_S (gateway.state.shared): all such results of one turn in one message.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing
from backends import EchoBackend, service, upstream
from conftest import build_config
from e2e_helpers import Backend, GatewayNode, request

from gateway.bus import protocol as p
from gateway.runtime import compile_config
from gateway.state.shared import SharedState

REQUESTS = 20  # bu.SLOTS * 2: round the balancer twice, one request at a time


def passive_upstream(ports: list[int], nfails: int) -> dict:  # type: ignore[type-arg]
    """Kong's spec upstream: two targets of equal weight, passive http_failures = nfails on 500."""
    checks = {"passive": {"unhealthy": {"http_statuses": [500], "http_failures": nfails}}}
    return upstream("up", ports, [10, 10], slots=10, healthchecks=checks)


@pytest.mark.parametrize("nfails", [1, 2])
async def test_exactly_nfails_sequential_requests_reach_a_failing_target(gateway, nursery: trio.Nursery,  # noqa: ANN001
                                                                         nfails: int) -> None:
    """Kong's "perform passive health checks" (01-healthchecks_spec.lua:1198-1206: count2.fail == nfails,
    client_fails == nfails): with the in-process keeper the verdict lands before the next request picks a target.
    Before, the results waited for the 20 ms flush and the failing target got every other request meanwhile."""
    good = EchoBackend("good")
    await nursery.start(good.serve)
    bad = Backend("bad")
    bad.status = 500  # Kong's server2 after "/unhealthy"
    await nursery.start(bad.serve)
    port = await gateway({"services": [service("s", "http://up")],
                          "upstreams": [passive_upstream([good.port, bad.port], nfails)]})
    statuses = [(await request(port, "GET", "/")).status for _ in range(REQUESTS)]
    assert bad.hits == nfails, statuses
    assert statuses.count(500) == nfails and statuses.count(200) == REQUESTS - nfails, statuses


def test_only_results_that_can_trip_the_target_are_urgent() -> None:
    """healthcheckers.lua's counters, as the keeper's PassivePolicy.classify reads them: a listed status counts only
    while http_failures > 0 (and not when healthy.http_statuses lists it too), 504 and a timeout (-2) only while
    timeouts > 0, a TCP failure (-1) only while tcp_failures > 0. Decided at config load (UpstreamGroup)."""
    def failures(passive: dict) -> frozenset[int]:  # type: ignore[type-arg]
        doc = {"services": [service("s", "http://up")],
               "upstreams": [upstream("up", [1], healthchecks={"passive": passive})]}
        return next(g for g in compile_config(build_config(doc, "h11")).all_groups() if g.name == "up").passive_failures

    assert failures({"unhealthy": {"http_failures": 1, "http_statuses": [500, 503]}}) == {500, 503}
    assert failures({"unhealthy": {"tcp_failures": 1, "timeouts": 1}}) == {-1, -2, 504}
    assert failures({"unhealthy": {"http_failures": 1, "http_statuses": [500, 504]},
                     "healthy": {"http_statuses": [200, 500]}}) == frozenset()
    assert failures({"healthy": {"successes": 3}}) == frozenset()


async def test_failures_within_one_scheduler_turn_go_to_the_keeper_as_one_message(
        mock_clock: trio.testing.MockClock) -> None:
    """A burst of passive failures (requests ending together) is one PassiveOutcomes, sent on the next scheduler
    turn: with the clock stopped, the FLUSH_S sleep never ends, so only the wake-up can have sent it."""
    shared = SharedState("w1", 2)
    sent: list[p.Msg] = []
    shared._send = lambda msg: sent.append(msg) is None  # the bus: a message per call
    shared.on_message(p.Heartbeat(incarnation="k1"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(shared._periodic)
        await trio.testing.wait_all_tasks_blocked()
        sent.clear()
        shared.passive("up|10.0.0.1:80", 200, False)  # (not urgent: it goes with this flush all the same)
        for code in (500, 500, -1):
            shared.passive("up|10.0.0.2:80", code, True)
        await trio.testing.wait_all_tasks_blocked()
        passive = [m for m in sent if isinstance(m, p.PassiveOutcomes)]
        assert [m.items for m in passive] == [[("up", "10.0.0.1:80", 200), ("up", "10.0.0.2:80", 500),
                                               ("up", "10.0.0.2:80", 500), ("up", "10.0.0.2:80", -1)]]
        nursery.cancel_scope.cancel()


async def test_a_result_that_cannot_trip_the_target_waits_for_the_flush(mock_clock: trio.testing.MockClock) -> None:
    """A success or a status that counts for nothing has no hurry (Kong's spec needs only the failures at once): it
    goes with the next FLUSH_S batch, with no wake-up of its own for a busy worker."""
    shared = SharedState("w1", 2)
    sent: list[p.Msg] = []
    shared._send = lambda msg: sent.append(msg) is None
    shared.on_message(p.Heartbeat(incarnation="k1"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(shared._periodic)
        await trio.testing.wait_all_tasks_blocked()
        shared.passive("up|10.0.0.1:80", 200, False)
        await trio.testing.wait_all_tasks_blocked()
        assert not [m for m in sent if isinstance(m, p.PassiveOutcomes)]
        mock_clock.jump(0.021)
        await trio.testing.wait_all_tasks_blocked()
        assert [m.items for m in sent if isinstance(m, p.PassiveOutcomes)] == [[("up", "10.0.0.1:80", 200)]]
        nursery.cancel_scope.cancel()


async def test_over_the_bus_a_failing_target_gets_at_most_one_more_request_per_worker(
        tmp_path: Path, nursery: trio.Nursery) -> None:
    """The same scenario under `gateway start --workers 2` (nfails 2: both workers' failures count together): the
    keeper's verdict reaches each worker one bus round trip after the failure that tripped it, so each worker may pick
    the target once more meanwhile (as Kong's worker events reach its other workers later): at most nfails + 1 per
    worker. Before, a busy worker held its results for up to FLUSH_S, and the target got about every other request."""
    nfails = 2
    good, bad = Backend("good"), Backend("bad")
    bad.status = 500
    await nursery.start(good.serve)
    await nursery.start(bad.serve)
    # Busy workers: a circuit breaker that never opens holds their successes for every 10th flush, so their flushers
    # sleep FLUSH_S at a time (what the failures waited out) once /warm has had traffic on each
    breaker = {"name": "circuit-breaker", "config": {"error_threshold": 1000, "volume_threshold": 1000}}
    gw = GatewayNode(tmp_path / "gw", {
        "services": [service("s", "http://up", retries=0),
                     service("w", f"http://127.0.0.1:{good.port}", [{"paths": ["/warm"]}])],
        "plugins": [breaker], "upstreams": [passive_upstream([good.port, bad.port], nfails)]})
    try:
        with trio.fail_after(30):
            await gw.start(workers=2)
            for _ in range(REQUESTS):
                assert (await request(gw.port, "GET", "/warm")).status == 200
            statuses = [(await request(gw.port, "GET", "/")).status for _ in range(REQUESTS)]
        assert nfails <= bad.hits <= nfails + 2, statuses
        assert statuses.count(500) == bad.hits, statuses
    finally:
        gw.cleanup()
