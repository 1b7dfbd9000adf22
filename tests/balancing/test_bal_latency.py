"""Kong's latency balancer (kong/runloop/balancer/latency.lua) with an injected clock."""

import math

import pytest

from gateway.balancing import KongLatency
from gateway.breaker.messages import BreakerUpdate
from gateway.breaker.state import State
from gateway.bus import protocol as p
from gateway.config import parse_config
from gateway.runtime import compile_config
from gateway.state.shared import SharedState


class FakeClock:
    """Settable clock in seconds."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def latency(weights, clock=None):
    return KongLatency(weights, clock=clock or FakeClock())


def observe(balancer, index, rtt):
    balancer.started(index)
    balancer.finished(index, rtt)


def test_targets_start_at_zero_and_ties_go_to_the_first():
    """At creation every target's slow-start EWMA is the average of none (0): the first is picked until a request
    to it ends."""
    balancer = latency([1, 1, 1])
    assert [balancer.pick() for _ in range(3)] == [0, 0, 0]
    assert balancer.estimate(1) == 0.0


def test_an_observation_moves_the_ewma_by_the_time_since_the_last():
    """ewma * w + rtt * (1 - w), w = exp(-dt / 10): right after the last touch an observation barely counts."""
    clock = FakeClock()
    balancer = latency([1, 1], clock)
    clock.now = 10.0
    observe(balancer, 0, 0.5)
    assert balancer.estimate(0) == pytest.approx(0.5 * (1 - math.exp(-1)))
    observe(balancer, 0, 0.5)  # dt 0: weight 1, no change
    assert balancer.estimate(0) == pytest.approx(0.5 * (1 - math.exp(-1)))


def test_the_estimate_decays_towards_zero_while_left_alone():
    clock = FakeClock()
    balancer = latency([1, 1], clock)
    clock.now = 100.0
    observe(balancer, 0, 1.0)
    before = balancer.estimate(0)
    clock.now = 110.0
    assert balancer.estimate(0) == pytest.approx(before * math.exp(-1))


def test_the_faster_target_takes_the_requests():
    clock = FakeClock()
    balancer = latency([1, 1], clock)
    clock.now = 100.0
    observe(balancer, 0, 0.4)
    observe(balancer, 1, 0.2)
    assert {balancer.pick() for _ in range(10)} == {1}


def test_requests_in_flight_are_not_counted():
    """Kong's getPeer scores EWMA / weight only: overlapping requests all go to the same target."""
    clock = FakeClock()
    balancer = latency([1, 1], clock)
    clock.now = 100.0
    observe(balancer, 0, 0.2)
    observe(balancer, 1, 0.4)
    for _ in range(50):
        balancer.started(balancer.pick())
    assert balancer.pick() == 0


def test_the_score_is_divided_by_the_weight():
    clock = FakeClock()
    balancer = latency([3, 1], clock)
    clock.now = 100.0
    observe(balancer, 0, 0.3)  # 0.3 / 3 = 0.1 a unit of weight
    observe(balancer, 1, 0.2)  # 0.2 / 1
    assert balancer.pick() == 0


def test_a_retry_skips_the_tried_targets_until_none_is_left():
    balancer = latency([1, 1, 1])
    tried = set()
    for _ in range(3):
        index = balancer.pick(None, tried)
        assert index is not None and index not in tried
        tried.add(index)
    assert balancer.pick(None, tried) is None


def test_once_every_target_failed_the_request_the_retries_end():
    """latency.lua getPeer: with no address left that has not failed, "all endpoints have been retried" and
    ERR_NO_PEERS_AVAILABLE (balancer/init.lua's 503): no starting over, unlike least-connections."""
    assert latency([1, 1, 1]).start_over(None, ()) is None


def test_with_one_target_in_service_a_retry_gets_it_again():
    """Kong's address_count 1 (the addresses in service, the unavailable ones not counted): getPeer does not filter
    handle.failedAddresses, so the only address gets every try, failed or not."""
    assert latency([1, 0]).pick(None, {0}) is None  # (skipped: the request's failed target)
    assert latency([1, 0]).start_over(None, ()) == 0
    assert latency([1, 1]).start_over(None, {1}) == 0  # the other one out of service (unhealthy, say)


def test_a_sole_target_out_of_service_is_not_picked():
    """latency.lua afterHostUpdate keeps only available addresses in its EWMA table: an unhealthy sole target
    leaves getPeer "No peers are available" (a 503), never the target itself."""
    assert latency([1]).pick(None, {0}) is None
    assert latency([1]).start_over(None, {0}) is None


def test_a_joining_target_starts_at_the_average_and_a_leaving_one_forgets():
    """calculate_slow_start_ewma: the average over the targets in service, the newcomer counting as 0."""
    clock = FakeClock()
    balancer = latency([1, 1, 0], clock)
    clock.now = 100.0
    observe(balancer, 0, 0.3)
    observe(balancer, 1, 0.6)
    balancer.set_weight(2, 1)
    assert balancer.estimate(2) == pytest.approx(0.9 * (1 - math.exp(-10)) / 3)
    balancer.set_weight(0, 0)
    assert balancer.estimate(0) is None
    assert balancer.pick(None, {1, 2}) is None


def test_decay_time_must_be_positive():
    with pytest.raises(ValueError):
        KongLatency([1], decay_s=0)


def test_an_unavailable_target_forgets_its_ewma_and_returns_at_the_slow_start_ewma():
    """latency.lua afterHostUpdate (run on every health change, balancers.lua setAddressStatus): `ewma[address] =
    nil` for an address no longer available, then `ewma[address] = slow_start_ewma` for one available without an
    EWMA (calculate_slow_start_ewma: the average over the available addresses, itself counted as 0)."""
    clock = FakeClock()
    balancer = latency([1, 1, 1], clock)
    clock.now = 100.0
    observe(balancer, 0, 3.0)
    observe(balancer, 1, 0.3)
    observe(balancer, 2, 0.6)
    balancer.set_unavailable(frozenset({0}))
    assert balancer.estimate(0) is None
    assert balancer.pick(None, {1, 2}) is None, "an unavailable target is not in service"
    balancer.set_unavailable(frozenset())
    assert balancer.estimate(0) == pytest.approx(0.9 * (1 - math.exp(-10)) / 3)


def test_a_target_reweighted_while_unavailable_stays_out_until_available():
    """Kong's slow start counts only available addresses (calculate_slow_start_ewma `if address.available`): a
    weight given to an unhealthy target does not put it back in service; its return does."""
    balancer = latency([1, 0])
    balancer.set_unavailable(frozenset({1}))
    balancer.set_weight(1, 5)
    assert balancer.estimate(1) is None
    balancer.set_unavailable(frozenset())
    assert balancer.estimate(1) == 0.0


def test_ties_go_to_the_lowest_index_after_a_target_returns():
    """A returning target joins at the slow-start EWMA; ties (here all 0) still go to the lowest index, not to the
    order the targets joined in."""
    balancer = latency([1, 1, 1])
    balancer.set_unavailable(frozenset({0}))
    balancer.set_unavailable(frozenset())
    assert balancer.pick() == 0


LATENCY_UPSTREAM = """
_format_version: '3.0'
upstreams:
  - name: lat
    algorithm: latency
    panic_mode: {panic}
    healthchecks: {{threshold: {threshold}}}
    targets: [{{target: '127.0.0.1:9001'}}, {{target: '127.0.0.1:9002'}}]
services:
  - {{name: s, host: lat}}
routes:
  - {{name: r, service: s, paths: ['/']}}
"""
SLOW, FAST = 0, 1


def latency_worker(clock, threshold=0, panic=False):
    """A worker's state over a two-target latency upstream, its balancer on `clock`: the slow target's EWMA is
    2 * (1 - e^-1) = 1.26 s, the fast one's 0.01 * (1 - e^-1) at 10 s."""
    runtime = compile_config(parse_config(LATENCY_UPSTREAM.format(threshold=threshold, panic=str(panic).lower())))
    shared = SharedState("w1", 1)
    shared.attach(runtime)
    group = runtime.groups["lat"]
    group.balancer = balancer = KongLatency([t.weight for t in group.targets], clock=clock)
    clock.now = 10.0
    balancer.finished(SLOW, 2.0)
    balancer.finished(FAST, 0.01)
    return shared, group, balancer


def target_state(group, index, **fields):
    return p.TargetsChanged(targets=[p.TargetState(group.keys[index], **fields)])


async def test_a_target_back_from_unhealthy_takes_the_next_request():
    """A target slow before health checks marked it unhealthy comes back at the slow-start EWMA, (fast + 0) / 2,
    and takes the very next request, as in Kong (healthchecks.lua:144 setAddressStatus on every healthy and
    unhealthy event, then latency.lua afterHostUpdate), rather than waiting for its old EWMA to decay under the
    other's (about 40 s more here)."""
    clock = FakeClock()
    shared, group, balancer = latency_worker(clock)
    shared.on_message(target_state(group, SLOW, healthy=False))
    assert group.unusable == frozenset({SLOW})
    for _ in range(10):  # the fast target serves alone for 10 s
        clock.now += 1.0
        assert balancer.pick(None, group.unusable) == FAST
        balancer.finished(FAST, 0.01)
    shared.on_message(target_state(group, SLOW, healthy=True))
    assert group.unusable == frozenset()
    fast_ewma = balancer.estimate(FAST)
    assert fast_ewma is not None
    assert balancer.estimate(SLOW) == pytest.approx(fast_ewma / 2, rel=0.01)
    assert balancer.pick(None, group.unusable) == SLOW


async def test_a_drained_target_forgets_its_ewma():
    """A drain is our counterpart of Kong's weight 0 (gateway.health.threshold), whose address latency.lua
    afterHostUpdate drops as well: it comes back at the slow-start EWMA."""
    clock = FakeClock()
    shared, group, balancer = latency_worker(clock)
    shared.on_message(target_state(group, SLOW, drained=True))
    assert balancer.estimate(SLOW) is None
    shared.on_message(target_state(group, SLOW, drained=False))
    assert balancer.estimate(SLOW) == pytest.approx(balancer.estimate(FAST) / 2)


async def test_a_circuit_open_target_keeps_its_ewma():
    """Kong has no circuit breaker; an open circuit skips the target only for the requests the plugin runs for
    (the others may still go to it through the same balancer: gateway.runtime._Unbroken), so it stays in service
    with its EWMA."""
    clock = FakeClock()
    shared, group, balancer = latency_worker(clock)
    before = balancer.estimate(SLOW)
    shared.on_message(p.BreakersChanged(updates=[BreakerUpdate(group.keys[SLOW], State.OPEN)]))
    assert group.unusable == frozenset({SLOW})
    assert balancer.estimate(SLOW) == before


async def test_an_upstream_below_its_threshold_keeps_its_healthy_targets_ewmas():
    """Kong's unhealthy balancer (updateStatus: healthy weight not above healthchecks.threshold) gives no peer but
    leaves its healthy addresses available, so afterHostUpdate keeps their EWMAs; only the unhealthy one's goes."""
    clock = FakeClock()
    shared, group, balancer = latency_worker(clock, threshold=60)
    before = balancer.estimate(FAST)
    shared.on_message(target_state(group, SLOW, healthy=False))
    assert group.unusable == frozenset({SLOW, FAST})
    assert balancer.estimate(FAST) == before
    assert balancer.estimate(SLOW) is None


async def test_panic_mode_keeps_the_unhealthy_targets_it_sends_to_in_service():
    """Our panic_mode (Envoy's) sends an unhealthy upstream's requests to its unhealthy targets: they stay in the
    latency balancer's service, EWMA and all, or it could pick none of them."""
    clock = FakeClock()
    shared, group, balancer = latency_worker(clock, threshold=60, panic=True)
    before = balancer.estimate(SLOW)
    shared.on_message(target_state(group, SLOW, healthy=False))
    assert group.unusable == frozenset()
    assert balancer.estimate(SLOW) == before
