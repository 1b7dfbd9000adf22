"""Weighted random with two choices."""

import random

from gateway.balancing import RandomTwoChoices


def test_prefers_the_target_with_fewer_active_requests():
    balancer = RandomTwoChoices([1, 1], rng=random.Random(1))
    for _ in range(3):
        balancer.started(0)
    # With two targets both are always drawn (the draws are distinct), so the idle one always wins.
    assert {balancer.pick() for _ in range(200)} == {1}


def test_load_is_compared_per_unit_of_weight():
    balancer = RandomTwoChoices([4, 1], rng=random.Random(1))
    balancer.started(0)
    balancer.started(0)
    balancer.started(1)
    assert {balancer.pick() for _ in range(200)} == {0}  # 2/4 < 1/1


def test_finished_requests_stop_counting():
    balancer = RandomTwoChoices([1, 1], rng=random.Random(1))
    balancer.started(0)
    balancer.finished(0, 0.2)
    balancer.started(1)
    assert {balancer.pick() for _ in range(200)} == {0}


def test_least_loaded_target_is_not_always_chosen_among_many():
    balancer = RandomTwoChoices([1] * 10, rng=random.Random(1))
    for index in range(1, 10):
        balancer.started(index)
    picks = [balancer.pick() for _ in range(1000)]
    assert 0.1 < picks.count(0) / len(picks) < 0.3  # drawn in about 2 of 10 pairs, not a full scan


def test_last_remaining_target_is_returned():
    balancer = RandomTwoChoices([1, 1, 1], rng=random.Random(1))
    assert {balancer.pick(None, {0, 1}) for _ in range(50)} == {2}


def test_same_seed_gives_the_same_picks():
    first = RandomTwoChoices([3, 2, 1], rng=random.Random(5))
    second = RandomTwoChoices([3, 2, 1], rng=random.Random(5))
    assert [first.pick() for _ in range(100)] == [second.pick() for _ in range(100)]
