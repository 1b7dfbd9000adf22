"""Least-connections: active requests relative to weight, ties shared."""

import random

from gateway.balancing import LeastConnections


def test_prefers_the_idle_target():
    balancer = LeastConnections([1, 1, 1])
    balancer.started(0)
    balancer.started(1)
    assert balancer.pick() == 2


def test_equal_targets_share_ties_round_robin():
    balancer = LeastConnections([1, 1, 1])
    assert [balancer.pick() for _ in range(6)] == [0, 1, 2, 0, 1, 2]


def test_with_nothing_in_flight_the_heaviest_target_is_picked():
    """Kong's (active + 1) / weight: "even on a balancer with 0 connections the highest weighted entry is picked
    first", so requests that never overlap all go to it."""
    balancer = LeastConnections([3, 1])
    picks = [balancer.pick() for _ in range(8)]
    assert picks == [0] * 8


def test_ties_between_equal_weights_take_turns():
    balancer = LeastConnections([2, 2, 2])
    assert sorted(balancer.pick() for _ in range(6)) == [0, 0, 1, 1, 2, 2]


def test_load_is_measured_per_unit_of_weight():
    balancer = LeastConnections([4, 1])
    balancer.started(0)
    balancer.started(0)
    balancer.started(1)
    assert balancer.pick() == 0  # 2/4 beats 1/1 although target 0 has more requests


def test_concurrent_requests_split_by_weight():
    balancer = LeastConnections([3, 1])
    picks = []
    for _ in range(8):
        picks.append(balancer.pick())
        balancer.started(picks[-1])
    assert picks.count(0) == 6
    assert picks.count(1) == 2


def test_finished_request_frees_the_target():
    balancer = LeastConnections([1, 1])
    balancer.started(0)
    balancer.started(0)
    balancer.started(1)
    assert balancer.pick() == 1
    balancer.finished(0, 0.1)
    balancer.finished(0, 0.1)
    assert balancer.pick() == 0


def test_unmatched_finished_does_not_make_a_target_look_idler_than_idle():
    balancer = LeastConnections([1, 1])
    balancer.finished(0, 0.1)
    balancer.started(0)
    assert balancer.pick() == 1  # had the count gone to -1, both would tie and index 0 would win


def test_skip_picks_the_least_loaded_of_the_rest():
    balancer = LeastConnections([1, 1, 1])
    for index, load in enumerate([0, 1, 2]):
        for _ in range(load):
            balancer.started(index)
    assert balancer.pick(None, {0}) == 1
    assert balancer.pick(None, {0, 1}) == 2


def test_pick_always_matches_a_full_scan_under_random_operations():
    rng = random.Random(11)
    weights = [rng.randint(0, 5) for _ in range(40)]
    balancer = LeastConnections(weights)
    active = [0] * len(weights)
    for _ in range(3000):
        operation = rng.random()
        index = rng.randrange(len(weights))
        if operation < 0.4:
            balancer.started(index)
            active[index] += 1
        elif operation < 0.7:
            balancer.finished(index, 0.01)
            active[index] = max(active[index] - 1, 0)
        elif operation < 0.75:
            weights[index] = rng.randint(0, 5)
            balancer.set_weight(index, weights[index])
        else:
            skip = set(rng.sample(range(len(weights)), rng.randint(0, len(weights))))
            chosen = balancer.pick(None, skip)
            loads = [(active[i] + 1) / weights[i] for i in range(len(weights)) if weights[i] and i not in skip]
            if not loads:
                assert chosen is None
            else:
                assert chosen not in skip and weights[chosen]
                assert (active[chosen] + 1) / weights[chosen] == min(loads)
