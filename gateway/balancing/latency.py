"""Peak EWMA latency balancing (Finagle, Linkerd): cost = decaying peak-sensitive latency * (active + 1)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Container, Sequence
from math import exp, inf

from .base import WeightTable, check_weights


class PeakEwma:
    """Best of two weighted random targets by peak-EWMA cost; never-observed targets are probed first.

    The estimate jumps to any observation above it at once; otherwise an observation adds with weight
    1 - exp(-dt / decay_s). Between observations it decays towards 0 (value * exp(-age / decay_s)), as in
    Finagle, so a target that was slow is retried once it has been left alone for a while. A failed request
    counts as at least as slow as the current estimate, so fast errors cannot attract traffic. A target with
    no observation yet gets the next request while it has none in flight; while that probe is pending it
    loses every comparison. Weights steer which two targets are compared and equal costs go to the first
    draw, so equally fast targets split traffic by weight. Time comes from `clock` (e.g. trio.current_time).
    """

    follows_load = True

    def __init__(
        self,
        weights: Sequence[int],
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        decay_s: float = 10.0,
    ) -> None:
        if decay_s <= 0:
            raise ValueError(f"decay_s must be positive, got {decay_s}")
        self._table = WeightTable(check_weights(weights), rng or random.Random())
        self._clock = clock
        self._decay_s = decay_s
        count = len(self._table.weights)
        self._active = [0] * count
        self._ewma = [0.0] * count
        self._stamp: list[float | None] = [None] * count
        self._unobserved = [index for index, weight in enumerate(self._table.weights) if weight]

    def estimate(self, index: int) -> float | None:
        """Current latency estimate of `index` in seconds, None before its first observation."""
        return self._estimate_at(index, self._clock())

    def _estimate_at(self, index: int, now: float) -> float | None:
        """The estimate decayed to `now`."""
        stamp = self._stamp[index]
        if stamp is None:
            return None
        return self._ewma[index] * exp(-max(now - stamp, 0.0) / self._decay_s)

    def pick(self, hash_key: bytes | None = None, skip: Container[int] = ()) -> int | None:
        """An idle unobserved target if any, else the cheaper of two weighted random targets."""
        active = self._active
        for index in self._unobserved:
            if not active[index] and index not in skip:
                return index
        first = self._table.draw(skip)
        if first is None:
            return None
        second = self._table.draw(skip, exclude=first)
        if second is None:
            return first
        now = self._clock()
        return second if self._cost(second, now) < self._cost(first, now) else first

    def _cost(self, index: int, now: float) -> float:
        """Estimate times (active + 1); infinite while an unobserved target's probe is still pending."""
        estimate = self._estimate_at(index, now)
        return inf if estimate is None else estimate * (self._active[index] + 1)

    def started(self, index: int) -> None:
        """Count a request in flight on `index`."""
        self._active[index] += 1

    def finished(self, index: int, latency_s: float, ok: bool = True) -> None:
        """Release a request and fold its latency in; a failure counts as no faster than the estimate."""
        self._active[index] = max(self._active[index] - 1, 0)
        now = self._clock()
        stamp = self._stamp[index]
        if stamp is None:
            self._ewma[index] = latency_s
            if index in self._unobserved:
                self._unobserved.remove(index)
        else:
            weight = exp(-max(now - stamp, 0.0) / self._decay_s)
            current = self._ewma[index] * weight
            if not ok:
                latency_s = max(latency_s, current)
            self._ewma[index] = latency_s if latency_s > current else current + latency_s * (1.0 - weight)
        self._stamp[index] = now

    def set_weight(self, index: int, weight: int) -> None:
        """Re-weight one target; a never-observed target regains its probe when its weight returns."""
        self._table.set_weight(index, weight)
        if not weight and index in self._unobserved:
            self._unobserved.remove(index)
        elif weight and self._stamp[index] is None and index not in self._unobserved:
            self._unobserved.append(index)
