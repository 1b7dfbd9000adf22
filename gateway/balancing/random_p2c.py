"""Weighted random with the power of two choices: draw two targets by weight, keep the less loaded."""

from __future__ import annotations

import random
from collections.abc import Container, Sequence
from typing import Self

from .base import WeightTable, check_weights


class RandomTwoChoices:
    """Two distinct weighted draws among the non-skipped targets; fewer active requests per unit of weight wins.

    A tie goes to the first draw, so an idle pool is split exactly by weight.
    """

    follows_load = True
    retry_skips_tried = True  # (not Kong's: nginx's tried peers)

    def __init__(self, weights: Sequence[int], *, rng: random.Random | None = None) -> None:
        self._table = WeightTable(check_weights(weights), rng or random.Random())
        self._active = [0] * len(self._table.weights)

    def take_over(self, old: Self, moved: Sequence[int]) -> None:
        """The targets that stay keep their requests in flight; a new one starts at 0 (as least-connections').
        `moved[i]`: old target i's index here, -1 for one gone."""
        for before, now in enumerate(moved):
            if now >= 0:
                self._active[now] = old._active[before]

    def pick(self, hash_key: bytes | None = None, skip: Container[int] = ()) -> int | None:
        """Less loaded of two weighted random targets; the key is ignored."""
        first = self._table.draw(skip)
        if first is None:
            return None
        second = self._table.draw(skip, exclude=first)
        if second is None:
            return first
        active, weights = self._active, self._table.weights
        # active[second] / weights[second] < active[first] / weights[first], without division
        return second if active[second] * weights[first] < active[first] * weights[second] else first

    def start_over(self, hash_key: bytes | None = None, skip: Container[int] = ()) -> int | None:
        """Every target not in `skip` failed this request: draw again among them all (not Kong's algorithm;
        as its least-connections does)."""
        return self.pick(hash_key, skip)

    def started(self, index: int) -> None:
        """Count a request in flight on `index`."""
        self._active[index] += 1

    def finished(self, index: int, latency_s: float, ok: bool = True) -> None:
        """Release a request on `index`; latency and outcome do not matter here."""
        self._active[index] = max(self._active[index] - 1, 0)

    def set_weight(self, index: int, weight: int) -> None:
        """Re-weight one target (O(n) rebuild of the cumulative weights)."""
        self._table.set_weight(index, weight)
