"""Where a round-robin balancer starts, as Kong's does.

kong/runloop/balancer/round_robin.lua: `afterHostUpdate` fills the wheel with each address weight / gcd times and
shuffles it (`wheel_shuffle`, Fisher-Yates with math.random); `new` sets `pointer = 1` and `getPeer` moves it on before
reading, so a worker's first pick is the wheel's second entry, a uniformly drawn entry of a uniform shuffle: a target
drawn by weight. math.random is seeded per worker from RAND_bytes (kong/globalpatches.lua, math.randomseed, called in
init_worker by kong/init.lua), so the workers draw independently: with 2 workers and 2 targets of equal weight, their
first requests land on the same target half the time and on both targets the other half.
"""

from __future__ import annotations

import random
from collections import Counter

from gateway.balancing import RoundRobin, make_balancer
from gateway.balancing.round_robin import smooth_schedule

SEEDS = range(2000)


def first_picks(weights: list[int]) -> Counter[int | None]:
    """The first pick of a balancer per seed: a worker's first request, over 2,000 workers."""
    return Counter(RoundRobin(weights, rng=random.Random(seed)).pick() for seed in SEEDS)


def test_without_an_rng_the_wheel_starts_at_its_first_entry():
    assert [RoundRobin([5, 1, 1]).pick() for _ in range(3)] == [0, 0, 0]


def rotations(schedule: list[int]) -> set[tuple[int, ...]]:
    return {tuple(schedule[i:] + schedule[:i]) for i in range(len(schedule))}


def test_with_an_rng_the_order_is_the_smooth_schedule_from_any_of_its_entries():
    """Every entry of the period can be the start, and from it the schedule goes on in its order."""
    balancers = [RoundRobin([5, 1, 1], rng=random.Random(seed)) for seed in SEEDS]
    passes = {tuple(balancer.pick() for _ in range(7)) for balancer in balancers}
    assert passes == rotations(smooth_schedule([5, 1, 1]))


def test_with_an_rng_the_first_pick_is_a_target_drawn_by_weight():
    """As the second entry of Kong's shuffled wheel: 5/7, 1/7, 1/7 of the workers start on each."""
    firsts = first_picks([5, 1, 1])
    assert 0.68 < firsts[0] / len(SEEDS) < 0.75
    assert 0.12 < firsts[1] / len(SEEDS) < 0.16 and 0.12 < firsts[2] / len(SEEDS) < 0.16


def test_two_workers_with_two_equal_targets_start_on_the_same_target_half_the_time():
    """Kong: P(same first target) = 1/2. A shared fixed start (ours before) put both on target 0 every time."""
    same = sum(RoundRobin([1, 1], rng=random.Random(2 * seed)).pick()
               == RoundRobin([1, 1], rng=random.Random(2 * seed + 1)).pick() for seed in SEEDS)
    assert 0.45 < same / len(SEEDS) < 0.55
    assert RoundRobin([1, 1]).pick() == RoundRobin([1, 1]).pick() == 0


def test_from_any_start_each_pass_of_the_wheel_gives_every_target_its_weight():
    for seed in range(50):
        balancer = RoundRobin([5, 1, 1], rng=random.Random(seed))
        assert Counter(balancer.pick() for _ in range(21)) == {0: 15, 1: 3, 2: 3}


def test_an_rng_with_no_usable_target_changes_nothing():
    assert RoundRobin([0, 0], rng=random.Random(1)).pick() is None
    assert RoundRobin([], rng=random.Random(1)).pick() is None


def test_a_reweighting_keeps_the_place_in_the_wheel():
    """Kong's afterHostUpdate rebuilds the wheel and keeps its pointer; so does set_weight (within the new period)."""
    balancer = RoundRobin([1, 1, 1, 1], rng=random.Random(3))
    first = balancer.pick()
    balancer.set_weight(0, 1)  # the same wheel again
    assert balancer.pick() == (first + 1) % 4  # type: ignore[operator]


def test_make_balancer_starts_each_round_robin_at_a_drawn_place():
    """What each worker process builds (gateway/runtime.py calls make_balancer with a fresh random.Random())."""
    firsts = Counter(make_balancer("round-robin", [1, 1], rng=random.Random(seed)).pick() for seed in range(200))
    assert firsts[0] > 50 and firsts[1] > 50
