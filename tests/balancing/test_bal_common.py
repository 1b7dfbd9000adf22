"""Behaviour every algorithm shares: weights, weight 0, skip, set_weight."""

import random
from collections import Counter

import pytest

from gateway.balancing import KongLatency, LeastConnections, make_balancer

ALGORITHM_NAMES = ["round-robin", "least-connections", "consistent-hashing", "random", "latency", "ip-hash"]
# Those that spread requests by weight; Kong's latency sends them to the lowest EWMA / weight (tests/balancing/
# test_bal_latency.py), which with equal latencies is always the same target.
SPREADING = [name for name in ALGORITHM_NAMES if name != "latency"]
PICKS = 10_000
# Share tolerance: the random algorithms' standard error at 10k picks is <= 0.005, so 0.03 is 6 sigma.
TOLERANCE = 0.03


def build(name, weights):
    """Seeded balancer; latency gets a frozen clock (its EWMAs then never move from their start)."""
    if name == "latency":
        return KongLatency(weights, clock=lambda: 0.0)
    return make_balancer(name, weights, rng=random.Random(7))


def run(balancer, picks=PICKS, skip=()):
    """Sequential requests with distinct keys and equal latency; counts picks per target. Least-connections' are
    held open until the run ends: Kong's spreads by weight the requests in flight, and sends sequential ones to the
    heaviest target."""
    counts = Counter()
    held = isinstance(balancer, LeastConnections)
    for n in range(picks):
        index = balancer.pick(f"client-{n}".encode(), skip)
        balancer.started(index)
        if not held:
            balancer.finished(index, 0.01)
        counts[index] += 1
    if held:  # the batch ends: the next run starts with nothing in flight
        for index, count in counts.items():
            for _ in range(count):
                balancer.finished(index, 0.01)
    return counts


def shares(counts):
    total = sum(counts.values())
    return {index: count / total for index, count in counts.items()}


@pytest.mark.parametrize("name", SPREADING)
def test_distribution_is_proportional_to_weights(name):
    got = shares(run(build(name, [5, 3, 2])))
    assert got.keys() == {0, 1, 2}
    for index, expected in enumerate([0.5, 0.3, 0.2]):
        assert got[index] == pytest.approx(expected, abs=TOLERANCE)


@pytest.mark.parametrize("name", ALGORITHM_NAMES)
def test_weight_zero_target_is_never_picked(name):
    counts = run(build(name, [2, 0, 1]), picks=3000)
    assert counts[1] == 0
    if name in SPREADING:
        assert counts[0] > counts[2] > 0


@pytest.mark.parametrize("name", SPREADING)
def test_skip_keeps_weight_ratios_among_the_rest(name):
    got = shares(run(build(name, [4, 1, 3]), skip={0}))
    assert 0 not in got
    assert got[1] == pytest.approx(0.25, abs=TOLERANCE)
    assert got[2] == pytest.approx(0.75, abs=TOLERANCE)


@pytest.mark.parametrize("name", ALGORITHM_NAMES)
@pytest.mark.parametrize("key", [b"10.0.0.1", None])
def test_pick_is_none_when_every_target_is_skipped(name, key):
    balancer = build(name, [1, 2, 3])
    assert balancer.pick(key, {0, 1, 2}) is None
    assert balancer.pick(key, {0, 2}) == 1


@pytest.mark.parametrize("name", ALGORITHM_NAMES)
@pytest.mark.parametrize("weights", [[0, 0], []])
def test_pick_is_none_without_any_weight(name, weights):
    balancer = build(name, weights)
    assert balancer.pick(b"10.0.0.1") is None
    assert balancer.pick(None) is None


@pytest.mark.parametrize("name", SPREADING)
def test_set_weight_changes_the_distribution(name):
    balancer = build(name, [1, 1])
    balancer.set_weight(0, 3)
    got = shares(run(balancer))
    assert got[0] == pytest.approx(0.75, abs=TOLERANCE)
    assert got[1] == pytest.approx(0.25, abs=TOLERANCE)


@pytest.mark.parametrize("name", SPREADING)
def test_set_weight_zero_drains_a_target_and_a_weight_brings_it_back(name):
    balancer = build(name, [1, 1, 1])
    balancer.set_weight(1, 0)
    assert run(balancer, picks=1000)[1] == 0
    balancer.set_weight(1, 1)
    assert shares(run(balancer, picks=3000))[1] == pytest.approx(1 / 3, abs=TOLERANCE)


@pytest.mark.parametrize("name", ALGORITHM_NAMES)
def test_set_weight_rejects_a_negative_weight(name):
    balancer = build(name, [1, 1])
    with pytest.raises(ValueError, match="non-negative integers"):
        balancer.set_weight(0, -5)


@pytest.mark.parametrize("name", SPREADING)
def test_balancer_keeps_its_own_copy_of_the_weights(name):
    weights = [1, 1]
    balancer = build(name, weights)
    weights[0] = 0
    assert shares(run(balancer, picks=2000))[0] == pytest.approx(0.5, abs=0.1)
