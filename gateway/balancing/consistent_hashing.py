"""Consistent hashing over a ring of slots that are assigned to targets by weighted rendezvous hashing."""

from __future__ import annotations

import random
from collections.abc import Container, Sequence
from math import inf, log

from .base import IgnoresLoad, check_weight, check_weights, stable_hash
from .round_robin import RoundRobin

MIN_SLOTS = 10
MAX_SLOTS = 65536


class ConsistentHashing(IgnoresLoad):
    """Key -> slot -> target; a skipped target's keys walk on to the next slot whose target is usable.

    Every slot goes to the target with the smallest E / weight, where E is an Exp(1) variate fixed per
    (target, slot) by a generator seeded with the target index. So each target holds slots in proportion
    to its weight, and adding, removing or re-weighting one target only moves the slots it wins or loses:
    the keys of the others stay put. The table is stable across processes (Mersenne Twister sequences for
    an int seed and blake2b are both fixed). Without a key, picks fall back to round-robin.

    It knows the targets by their index only, so their order matters, and it is not Kong's: make_balancer gives Kong's
    continuum (gateway.balancing.continuum) when it is told the targets' addresses.
    """

    retry_skips_tried = False  # as Kong's consistent-hashing: a retry goes to the key's target again


    def __init__(self, weights: Sequence[int], *, slots: int = 10000) -> None:
        if not MIN_SLOTS <= slots <= MAX_SLOTS:
            raise ValueError(f"slots must be between {MIN_SLOTS} and {MAX_SLOTS}, got {slots}")
        self._weights = check_weights(weights)
        self._slots = slots
        self._round_robin = RoundRobin(self._weights)
        self._rebuild()

    def _rebuild(self) -> None:
        """Assign every slot to its weighted rendezvous winner (O(slots * n), on construction and re-weighting)."""
        best = [inf] * self._slots
        table = [-1] * self._slots
        for index, weight in enumerate(self._weights):
            if not weight:
                continue
            draw = random.Random(index).random
            scale = 1.0 / weight
            for slot in range(self._slots):
                cost = -log(1.0 - draw()) * scale
                if cost < best[slot]:
                    best[slot] = cost
                    table[slot] = index
        self._table = table
        self._live = [index for index, weight in enumerate(self._weights) if weight]

    def pick(self, hash_key: bytes | None = None, skip: Container[int] = ()) -> int | None:
        """Owner of the key's slot, or of the next slot on the ring whose owner is not skipped."""
        if hash_key is None:
            return self._round_robin.pick(None, skip)
        if not self._live:
            return None
        table = self._table
        slot = stable_hash(hash_key) % len(table)
        index = table[slot]
        if index in skip:
            if all(live in skip for live in self._live):
                return None
            while index in skip:
                slot = (slot + 1) % len(table)
                index = table[slot]
        return index

    def start_over(self, hash_key: bytes | None = None, skip: Container[int] = ()) -> int | None:
        """Not reached (a retry goes to the key's target again, whatever was tried); the key's target."""
        return self.pick(hash_key, skip)

    def set_weight(self, index: int, weight: int) -> None:
        """Re-weight one target; only the slots it gains or loses change owner."""
        self._weights[index] = check_weight(weight)
        self._round_robin.set_weight(index, weight)
        self._rebuild()
