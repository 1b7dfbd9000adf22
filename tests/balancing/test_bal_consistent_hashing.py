"""Consistent hashing: stable key -> target, minimal movement when targets change."""

import pytest

from gateway.balancing import ConsistentHashing

KEYS = [f"user-{n}".encode() for n in range(6000)]


def mapping(balancer, skip=()):
    return [balancer.pick(key, skip) for key in KEYS]


def test_same_key_always_gets_the_same_target():
    balancer = ConsistentHashing([1, 1, 1, 1])
    assert {balancer.pick(b"session-abc") for _ in range(20)} == {balancer.pick(b"session-abc")}


def test_two_balancers_with_the_same_weights_agree():
    assert mapping(ConsistentHashing([3, 1, 2])) == mapping(ConsistentHashing([3, 1, 2]))


def test_ring_is_stable_across_processes():
    balancer = ConsistentHashing([1, 1, 1, 1])
    assert [balancer.pick(f"user-{n}".encode()) for n in range(10)] == [3, 3, 1, 1, 1, 2, 2, 2, 0, 2]


def test_skipping_a_target_moves_only_its_keys():
    balancer = ConsistentHashing([1] * 5)
    before = mapping(balancer)
    after = mapping(balancer, skip={2})
    moved = [(old, new) for old, new in zip(before, after, strict=True) if old != new]
    assert all(old == 2 and new != 2 for old, new in moved)
    assert len(moved) == before.count(2)
    assert len(moved) / len(KEYS) < 1.5 / 5


def test_keys_of_a_skipped_target_spread_over_the_rest():
    balancer = ConsistentHashing([1] * 5)
    moved_to = {new for old, new in zip(mapping(balancer), mapping(balancer, skip={2}), strict=True) if old == 2}
    assert moved_to == {0, 1, 3, 4}


def test_adding_a_target_moves_only_keys_to_it():
    before = mapping(ConsistentHashing([1] * 5))
    after = mapping(ConsistentHashing([1] * 6))
    moved = [new for old, new in zip(before, after, strict=True) if old != new]
    assert set(moved) == {5}
    assert len(moved) / len(KEYS) < 1.5 / 6


def test_removing_a_target_with_weight_zero_moves_only_its_keys():
    balancer = ConsistentHashing([1] * 5)
    before = mapping(balancer)
    balancer.set_weight(3, 0)
    after = mapping(balancer)
    moved = [old for old, new in zip(before, after, strict=True) if old != new]
    assert set(moved) == {3}
    assert len(moved) / len(KEYS) < 1.5 / 5


def test_raising_a_weight_only_moves_keys_to_that_target():
    balancer = ConsistentHashing([1, 1, 1])
    before = mapping(balancer)
    balancer.set_weight(0, 2)
    after = mapping(balancer)
    assert {new for old, new in zip(before, after, strict=True) if old != new} == {0}
    assert after.count(0) / len(KEYS) == pytest.approx(0.5, abs=0.03)


def test_without_a_key_picks_round_robin():
    balancer = ConsistentHashing([1, 1, 1])
    assert [balancer.pick(None) for _ in range(6)] == [0, 1, 2, 0, 1, 2]


def test_smallest_slot_count_still_serves_every_target():
    small = ConsistentHashing([1, 1], slots=10)
    assert {small.pick(key) for key in KEYS} == {0, 1}


@pytest.mark.parametrize("slots", [9, 65537])
def test_slots_outside_kong_range_are_rejected(slots):
    with pytest.raises(ValueError, match=f"slots must be between 10 and 65536, got {slots}"):
        ConsistentHashing([1], slots=slots)
