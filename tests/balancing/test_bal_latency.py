"""Peak EWMA latency balancing with an injected clock."""

import math
import random

import pytest

from gateway.balancing import PeakEwma


class FakeClock:
    """Settable clock in seconds."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def ewma(weights, clock=None):
    return PeakEwma(weights, rng=random.Random(3), clock=clock or FakeClock())


def observe(balancer, index, latency, ok=True):
    balancer.started(index)
    balancer.finished(index, latency, ok)


def test_unobserved_targets_are_tried_first():
    balancer = ewma([1, 1, 1])
    observe(balancer, 0, 0.001)
    picks = []
    for _ in range(2):
        picks.append(balancer.pick())
        balancer.started(picks[-1])
    assert picks == [1, 2]


def test_unobserved_target_with_a_pending_probe_loses_comparisons():
    balancer = ewma([1, 1])
    observe(balancer, 0, 5.0)
    assert balancer.pick() == 1
    balancer.started(1)
    assert {balancer.pick() for _ in range(50)} == {0}


def test_prefers_the_faster_target_after_observations():
    balancer = ewma([1, 1])
    observe(balancer, 0, 0.5)
    observe(balancer, 1, 0.05)
    assert {balancer.pick() for _ in range(50)} == {1}


def test_active_requests_multiply_the_cost():
    balancer = ewma([1, 1])
    observe(balancer, 0, 0.5)
    observe(balancer, 1, 0.05)
    for _ in range(20):
        balancer.started(1)  # 0.05 * 21 = 1.05 > 0.5 * 1
    assert {balancer.pick() for _ in range(50)} == {0}


def test_estimate_is_none_before_the_first_observation():
    assert ewma([1]).estimate(0) is None


def test_peak_jumps_to_a_higher_observation_at_once():
    balancer = ewma([1])
    observe(balancer, 0, 0.1)
    observe(balancer, 0, 2.0)
    assert balancer.estimate(0) == 2.0


def test_lower_observation_right_after_a_peak_barely_moves_it():
    balancer = ewma([1])
    observe(balancer, 0, 1.0)
    observe(balancer, 0, 0.1)
    assert balancer.estimate(0) == 1.0


def test_lower_observation_blends_in_by_elapsed_time():
    clock = FakeClock()
    balancer = ewma([1], clock)
    observe(balancer, 0, 1.0)
    clock.now = 10.0  # one time constant
    observe(balancer, 0, 0.1)
    assert balancer.estimate(0) == pytest.approx(math.exp(-1) + 0.1 * (1 - math.exp(-1)))


def test_estimate_decays_towards_zero_while_idle():
    clock = FakeClock()
    balancer = ewma([1], clock)
    observe(balancer, 0, 1.0)
    clock.now = 10.0
    assert balancer.estimate(0) == pytest.approx(math.exp(-1))
    clock.now = 50.0
    assert balancer.estimate(0) == pytest.approx(math.exp(-5))


def test_decay_time_constant_is_configurable():
    clock = FakeClock()
    balancer = PeakEwma([1], clock=clock, decay_s=2.0)
    observe(balancer, 0, 1.0)
    clock.now = 2.0
    assert balancer.estimate(0) == pytest.approx(math.exp(-1))


def test_slow_target_is_retried_after_it_has_been_left_alone():
    clock = FakeClock()
    balancer = ewma([1, 1], clock)
    observe(balancer, 0, 1.0)
    observe(balancer, 1, 0.1)
    assert balancer.pick() == 1
    clock.now = 30.0
    observe(balancer, 1, 0.1)  # 1.0 * e^-3 = 0.05 is now below 0.1
    assert {balancer.pick() for _ in range(50)} == {0}


def test_fast_failure_counts_as_no_faster_than_the_current_estimate():
    results = {}
    for ok in (True, False):
        clock = FakeClock()
        balancer = ewma([1], clock)
        observe(balancer, 0, 1.0)
        clock.now = 5.0
        current = balancer.estimate(0)
        observe(balancer, 0, 0.001, ok=ok)
        results[ok] = balancer.estimate(0)
    weight = math.exp(-0.5)
    assert results[True] == pytest.approx(current + 0.001 * (1 - weight))
    assert results[False] == pytest.approx(current + current * (1 - weight))


def test_target_regains_its_probe_when_its_weight_returns():
    balancer = ewma([1, 1])
    balancer.set_weight(1, 0)
    observe(balancer, 0, 0.1)
    assert balancer.pick() == 0
    balancer.set_weight(1, 1)
    assert balancer.pick() == 1


def test_decay_time_must_be_positive():
    with pytest.raises(ValueError, match="decay_s must be positive, got 0"):
        PeakEwma([1], decay_s=0)
