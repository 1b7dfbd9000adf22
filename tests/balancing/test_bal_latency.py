"""Kong's latency balancer (kong/runloop/balancer/latency.lua) with an injected clock."""

import math

import pytest

from gateway.balancing import KongLatency


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
