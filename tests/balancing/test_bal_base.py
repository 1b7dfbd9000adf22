"""Shared helpers: stable hash, weight checks, weighted draws."""

import random
from collections import Counter

import pytest

from gateway.balancing.base import WeightTable, check_weights, stable_hash


def test_stable_hash_is_the_same_in_every_process():
    assert stable_hash(b"10.0.0.1") == 16574176683607101011


def test_stable_hash_is_64_bits():
    assert all(0 <= stable_hash(f"k{n}".encode()) < 2**64 for n in range(100))


@pytest.mark.parametrize("bad", [-1, 1.0, True, "3", None])
def test_check_weights_rejects_anything_but_non_negative_ints(bad):
    with pytest.raises(ValueError, match="non-negative integers"):
        check_weights([1, bad])


def test_check_weights_returns_a_copy():
    weights = [1, 0, 65535]
    copy = check_weights(weights)
    assert copy == weights and copy is not weights


def test_draw_never_returns_the_excluded_or_skipped_target():
    table = WeightTable([1, 1, 1], random.Random(1))
    assert {table.draw({1}, exclude=0) for _ in range(100)} == {2}
    assert table.draw({1, 2}, exclude=0) is None


def test_draw_stays_weighted_when_rejection_sampling_gives_up():
    table = WeightTable([100_000, 1, 3], random.Random(1))  # the exact fallback does nearly every draw
    counts = Counter(table.draw({0}) for _ in range(4000))
    assert counts[2] / 4000 == pytest.approx(0.75, abs=0.03)
    assert counts[0] == 0


def test_set_weight_is_validated():
    table = WeightTable([1], random.Random(1))
    with pytest.raises(ValueError, match="non-negative integers"):
        table.set_weight(0, -1)
