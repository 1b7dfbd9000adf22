"""nginx's smooth weighted round-robin, precomputed over one period so that a pick is O(1).

Where a balancer starts: Kong's round-robin (kong/runloop/balancer/round_robin.lua) shuffles its wheel with the
worker's own math.random (seeded per worker from RAND_bytes, kong/globalpatches.lua) and starts its pointer at 1, so
each worker's first pick is a target drawn by weight, independently of the other workers. Given an `rng` (a
worker's own), ours starts at an entry of its period drawn with it: the first pick is a target drawn by weight, as
Kong's. Without one it starts at the period's first entry (a fixed order, for tests), which every worker would share:
with n workers each taking one request, all n would go to the same target.
"""

from __future__ import annotations

import random
from collections.abc import Container, Sequence
from math import gcd

from .base import IgnoresLoad, check_weight, check_weights


def smooth_schedule(weights: Sequence[int]) -> list[int]:
    """One period of nginx's smooth WRR (add each weight, take the max, subtract the total), weights cut by gcd."""
    divisor = gcd(*weights)
    if not divisor:
        return []
    effective = [weight // divisor for weight in weights]
    live = [index for index, weight in enumerate(effective) if weight]
    total = sum(effective)
    if total == len(live):  # equal weights (each 1 once cut): the period is the targets in order, built in O(n)
        return live
    current = [0] * len(effective)
    schedule = []
    for _ in range(total):
        for index in live:
            current[index] += effective[index]
        best = max(live, key=current.__getitem__)  # first maximum wins, as nginx's strict '>' does
        current[best] -= total
        schedule.append(best)
    return schedule


class RoundRobin(IgnoresLoad):
    """Smooth weighted round-robin; skipped turns are passed over, so the rest keep their weight ratios."""

    retry_skips_tried = False  # Kong's round_robin.lua: a retry takes the wheel's next entry, whatever was tried

    def __init__(self, weights: Sequence[int], rng: random.Random | None = None) -> None:
        self._weights = check_weights(weights)
        self._cursor = 0
        self._rebuild()
        if rng is not None and self._schedule:  # Kong's start: a random place in the wheel (see the module doc)
            self._cursor = rng.randrange(len(self._schedule))

    def _rebuild(self) -> None:
        """Precompute the schedule (O(period * n), paid only on construction and re-weighting)."""
        self._schedule = smooth_schedule(self._weights)
        self._live = [index for index, weight in enumerate(self._weights) if weight]
        self._cursor %= len(self._schedule) or 1

    def pick(self, hash_key: bytes | None = None, skip: Container[int] = ()) -> int | None:
        """Next target of the schedule that is not skipped; the key is ignored."""
        schedule = self._schedule
        if not schedule:
            return None
        cursor = self._cursor
        index = schedule[cursor]
        if index in skip:
            if all(live in skip for live in self._live):
                return None
            while index in skip:
                cursor = (cursor + 1) % len(schedule)
                index = schedule[cursor]
        self._cursor = (cursor + 1) % len(schedule)
        return index

    def start_over(self, hash_key: bytes | None = None, skip: Container[int] = ()) -> int | None:
        """Not reached (a retry does not skip the targets tried: the wheel's next entry, whatever was
        tried, round_robin.lua); the next pick."""
        return self.pick(hash_key, skip)

    def set_weight(self, index: int, weight: int) -> None:
        """Re-weight one target and recompute the schedule."""
        self._weights[index] = check_weight(weight)
        self._rebuild()
