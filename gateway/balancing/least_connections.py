"""Least-connections as Kong's (kong/runloop/balancer/least_connections.lua): the lowest (active + 1) / weight,
kept in an indexed min-heap. The + 1 is Kong's: with nothing in flight the heaviest target is picked first."""

from __future__ import annotations

from collections.abc import Container, Sequence
from heapq import heappop, heappush
from typing import Self

from .base import check_weight, check_weights


class LeastConnections:
    """Pick the lowest (active + 1) / weight; ties go by stride scheduling, so equal targets take turns.

    Each target's heap key is ((active + 1) / weight, pass, index). `pass` advances by 1/weight whenever the
    target is picked, so among equally loaded targets the one served least (relative to its weight) wins:
    plain round-robin for equal weights, weighted round-robin otherwise. pick, started, finished and
    set_weight are all O(log n).
    """

    follows_load = True
    retry_skips_tried = True  # Kong's handle.failedAddresses

    def __init__(self, weights: Sequence[int]) -> None:
        self._weights = check_weights(weights)
        count = len(self._weights)
        self._active = [0] * count
        self._pass = [0.0] * count
        self._vtime = 0.0
        self._keys = [(0.0, 0.0, index) for index in range(count)]
        self._heap: list[int] = []
        self._position = [-1] * count
        self._fill()

    def _fill(self) -> None:
        """Put every target with a weight in the heap, keyed by its count and pass."""
        self._heap = []
        self._position = [-1] * len(self._weights)
        for index, weight in enumerate(self._weights):
            if weight:
                self._insert(index)

    def take_over(self, old: Self, moved: Sequence[int]) -> None:
        """The targets that stay keep their requests in flight (Kong's connectionCount lives on the address object,
        least_connections.lua:22-44, which a DNS update keeps: targets.lua update_dns_result) and their turns; a
        new target starts at 0, as Kong's new address. `moved[i]`: old target i's index here, -1 for one gone."""
        for before, now in enumerate(moved):
            if now >= 0:
                self._active[now] = old._active[before]
                self._pass[now] = old._pass[before]
        self._vtime = old._vtime
        self._fill()

    def pick(self, hash_key: bytes | None = None, skip: Container[int] = ()) -> int | None:
        """Least-loaded target not in `skip`; the key is ignored."""
        heap = self._heap
        if not heap:
            return None
        index = heap[0]
        if index in skip:
            best = self._best_not_skipped(skip)
            if best is None:
                return None
            index = best
        # A target that lagged (it was busier or re-joined) restarts from now instead of banking turns.
        start = max(self._pass[index], self._vtime)
        self._vtime = start
        self._pass[index] = start + 1.0 / self._weights[index]
        self._update(index)
        return index

    def start_over(self, hash_key: bytes | None = None, skip: Container[int] = ()) -> int | None:
        """Every target not in `skip` failed this request: Kong's getPeer drops handle.failedAddresses and
        starts over with the best of them all (least_connections.lua: "we failed all addresses")."""
        return self.pick(hash_key, skip)

    def started(self, index: int) -> None:
        """Count a request in flight on `index`."""
        self._active[index] += 1
        if self._position[index] >= 0:
            self._update(index)

    def finished(self, index: int, latency_s: float, ok: bool = True) -> None:
        """Release a request on `index`; latency and outcome do not matter here."""
        self._active[index] = max(self._active[index] - 1, 0)
        if self._position[index] >= 0:
            self._update(index)

    def set_weight(self, index: int, weight: int) -> None:
        """Re-weight one target; weight 0 takes it out of the heap, a positive weight puts it back."""
        self._weights[index] = check_weight(weight)
        in_heap = self._position[index] >= 0
        if not weight:
            if in_heap:
                self._remove(index)
        elif in_heap:
            self._update(index)
        else:
            self._insert(index)

    def _best_not_skipped(self, skip: Container[int]) -> int | None:
        """Best-first walk of the heap tree below skipped nodes; costs only as much as the skipped top."""
        heap, keys = self._heap, self._keys
        frontier = [(keys[heap[0]], 0)]
        while frontier:
            _, position = heappop(frontier)
            index = heap[position]
            if index not in skip:
                return index
            for child in (2 * position + 1, 2 * position + 2):
                if child < len(heap):
                    heappush(frontier, (keys[heap[child]], child))
        return None

    def _set_key(self, index: int) -> None:
        """Recompute the ordering key of a live target."""
        self._keys[index] = ((self._active[index] + 1) / self._weights[index], self._pass[index], index)

    def _insert(self, index: int) -> None:
        """Add a live target to the heap."""
        self._set_key(index)
        self._heap.append(index)
        self._sift_up(len(self._heap) - 1)

    def _remove(self, index: int) -> None:
        """Take a target out of the heap, moving the last entry into its place."""
        position = self._position[index]
        last = self._heap.pop()
        self._position[index] = -1
        if last != index:
            self._heap[position] = last
            self._sift_down(self._sift_up(position))

    def _update(self, index: int) -> None:
        """Refresh the key of a target in the heap and restore heap order around it."""
        self._set_key(index)
        self._sift_down(self._sift_up(self._position[index]))

    def _sift_up(self, position: int) -> int:
        """Move the entry at `position` towards the root while it beats its parent; return where it lands."""
        heap, keys, where = self._heap, self._keys, self._position
        index = heap[position]
        key = keys[index]
        while position:
            parent = (position - 1) >> 1
            above = heap[parent]
            if keys[above] < key:
                break
            heap[position] = above
            where[above] = position
            position = parent
        heap[position] = index
        where[index] = position
        return position

    def _sift_down(self, position: int) -> None:
        """Move the entry at `position` towards the leaves while a child beats it."""
        heap, keys, where = self._heap, self._keys, self._position
        index = heap[position]
        key = keys[index]
        size = len(heap)
        while (child := 2 * position + 1) < size:
            if child + 1 < size and keys[heap[child + 1]] < keys[heap[child]]:
                child += 1
            below = heap[child]
            if key < keys[below]:
                break
            heap[position] = below
            where[below] = position
            position = child
        heap[position] = index
        where[index] = position
