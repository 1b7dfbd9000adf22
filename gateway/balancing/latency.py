"""Kong's latency algorithm (kong/runloop/balancer/latency.lua, after Finagle's PeakEwma): the target with the
lowest decayed EWMA of its response times divided by its weight.

- Each target's EWMA decays over DECAY_S: an observation `rtt` after `dt` seconds makes it
  ewma * w + rtt * (1 - w), w = exp(-dt / DECAY_S); a pick scores every target with rtt 0 at the current time
  (the estimate decays towards 0 while a target is left alone, so a slow one is tried again later).
- Requests in flight are not counted (Kong's getPeer does not): requests that overlap all go to the target with the
  lowest score until one of them ends and its time is folded in.
- A target that joins (at start, when its weight becomes positive, or when it is available again) starts at the
  average EWMA of the targets then in service (Kong's slow start: calculate_slow_start_ewma, the newcomers counting
  as 0), touched now; a target whose weight becomes 0, or that becomes unavailable (`set_unavailable`: unhealthy or
  drained), forgets its EWMA (afterHostUpdate, which Kong runs on every health change: balancers.lua
  setAddressStatus). A circuit-open target keeps its EWMA: the requests the circuit-breaker does not run for may
  still go to it, through this balancer.
- A new target list from discovery (a DNS change) keeps the EWMA of the targets that stay, and a request in flight
  across it folds its time into theirs (take_over, base.hand_over): Kong keeps an address that stays.
- Ties go to the lowest index (Kong's: the order of a Lua table). A retry skips the targets tried (`skip`); once
  every one has failed the request, it ends (`start_over` gives None: getPeer's "all endpoints have been retried",
  ERR_NO_PEERS_AVAILABLE), but for a sole target in service, which every retry gets (Kong's address_count 1: the
  targets not skipped as unusable).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Container, Sequence
from math import exp
from typing import Self

from .base import check_weight, check_weights

DECAY_S = 10.0  # latency.lua's DECAY_TIME


class KongLatency:
    """Kong's `latency` balancer; time (seconds) comes from `clock` (e.g. trio.current_time)."""

    follows_load = True  # (told of each request's end, for its latency; not of its start)
    retry_skips_tried = True  # Kong's handle.failedAddresses

    def __init__(self, weights: Sequence[int], *, clock: Callable[[], float] = time.monotonic,
                 decay_s: float = DECAY_S) -> None:
        if decay_s <= 0:
            raise ValueError(f"decay_s must be positive, got {decay_s}")
        self._weights = check_weights(weights)
        self._clock = clock
        self._decay_s = decay_s
        self._ewma: dict[int, float] = {}  # the targets in service (weight > 0, available), in index order
        self._touched: dict[int, float] = {}
        self._unavailable: frozenset[int] = frozenset()
        self._join([index for index, weight in enumerate(self._weights) if weight])

    def take_over(self, old: Self, moved: Sequence[int]) -> None:
        """The targets that stay keep their EWMA and its time, and stay out of service if they were: Kong's
        afterHostUpdate after a DNS update forgets only the addresses gone (latency.lua:71-101); the new ones start
        at the slow-start average. `moved[i]`: old target i's index here, -1 for one gone."""
        weights = self._weights
        ewma: dict[int, float] = {}
        touched: dict[int, float] = {}
        unavailable: set[int] = set()
        for before, now in enumerate(moved):
            if now < 0:
                continue
            if before in old._unavailable:
                unavailable.add(now)
            elif before in old._ewma and weights[now]:
                ewma[now], touched[now] = old._ewma[before], old._touched[before]
        self._ewma = dict(sorted(ewma.items()))  # (a pick's ties go to the lowest index)
        self._touched = touched
        self._unavailable = frozenset(unavailable)
        self._join([index for index, weight in enumerate(weights)
                    if weight and index not in ewma and index not in unavailable])

    def _join(self, indexes: list[int]) -> None:
        """Kong's afterHostUpdate for targets entering service: the average EWMA of all in service, newcomers 0."""
        if not indexes:
            return
        ewma = self._ewma
        start = sum(ewma.values()) / (len(ewma) + len(indexes))
        now = self._clock()
        for index in indexes:
            ewma[index] = start
            self._touched[index] = now
        self._ewma = dict(sorted(ewma.items()))  # a pick's ties go to the lowest index, whoever joined last

    def _leave(self, index: int) -> None:
        """Kong's afterHostUpdate for a target leaving service: its EWMA is forgotten."""
        self._ewma.pop(index, None)
        self._touched.pop(index, None)

    def _decayed(self, index: int, rtt: float, now: float) -> float:
        weight = exp(-max(now - self._touched[index], 0.0) / self._decay_s)
        return self._ewma[index] * weight + rtt * (1.0 - weight)

    def estimate(self, index: int) -> float | None:
        """The EWMA of `index` decayed to now (seconds), None when it is not in service."""
        return self._decayed(index, 0.0, self._clock()) if index in self._ewma else None

    def pick(self, hash_key: bytes | None = None, skip: Container[int] = ()) -> int | None:
        """The target in service with the lowest decayed EWMA / weight, not in `skip`; the key is ignored."""
        ewma = self._ewma
        if len(ewma) <= 1:
            only = next(iter(ewma), None)
            return None if only in skip else only
        now = self._clock()
        weights = self._weights
        best = None
        best_score = 0.0
        for index in ewma:
            if index in skip:
                continue
            score = self._decayed(index, 0.0, now) / weights[index]
            if best is None or score < best_score:
                best, best_score = index, score
        return best

    def start_over(self, hash_key: bytes | None = None, skip: Container[int] = ()) -> int | None:
        """Every target not in `skip` failed this request: the sole one in service if there is one (Kong's
        address_count 1 does not filter handle.failedAddresses), else None (latency.lua getPeer, "all endpoints
        have been retried": ERR_NO_PEERS_AVAILABLE, the request's 503)."""
        serving = [index for index in self._ewma if index not in skip]
        return serving[0] if len(serving) == 1 else None

    def started(self, index: int) -> None:
        """Kong's latency balancer does not count requests in flight."""

    def finished(self, index: int, latency_s: float, ok: bool = True) -> None:
        """Fold a request's time (connect + response, Kong's afterBalance) into the target's EWMA."""
        if index in self._ewma:
            now = self._clock()
            self._ewma[index] = self._decayed(index, latency_s, now)
            self._touched[index] = now

    def set_weight(self, index: int, weight: int) -> None:
        """Re-weight one target: 0 takes it out of service (its EWMA forgotten), a positive weight brings it back
        with the slow-start EWMA."""
        self._weights[index] = check_weight(weight)
        if not weight:
            self._leave(index)
        elif index not in self._ewma and index not in self._unavailable:
            self._join([index])

    def set_unavailable(self, unavailable: frozenset[int]) -> None:
        """The targets out of service for their health (or drained) changed: those that left forget their EWMA,
        those back (with a weight) start at the slow-start EWMA (latency.lua afterHostUpdate, which Kong runs on
        every health event: balancers.lua setAddressStatus). Called only when the group's unusable targets change."""
        before = self._unavailable
        if unavailable == before:
            return
        self._unavailable = unavailable
        for index in unavailable - before:
            self._leave(index)
        weights = self._weights
        self._join(sorted(index for index in before - unavailable if weights[index] and index not in self._ewma))
