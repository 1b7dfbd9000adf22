"""A token bucket's level, refilled lazily: shared by the keeper's buckets and a worker's local fallback share."""

from __future__ import annotations


class Bucket:
    """`level` tokens at monotonic time `stamp`; refilling is computed on demand, so an idle bucket costs nothing."""

    __slots__ = ("level", "stamp")

    def __init__(self, level: float, stamp: float) -> None:
        self.level = level
        self.stamp = stamp

    def refill(self, now: float, rate: float, ceiling: float) -> float:
        """Add `rate` tokens per second since the last refill, up to `ceiling`; return the level."""
        if now > self.stamp:
            if self.level < ceiling:
                self.level = min(ceiling, self.level + (now - self.stamp) * rate)
            self.stamp = now
        return self.level
