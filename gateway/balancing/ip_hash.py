"""IP hash (nginx ip_hash, HAProxy balance source): client address hash modulo the weighted target list."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Container, Sequence
from itertools import accumulate

from .base import IgnoresLoad, check_weight, check_weights, stable_hash
from .round_robin import RoundRobin

# nginx gives up rehashing after 20 tries and falls back to round-robin.
MAX_REHASHES = 20


class IpHash(IgnoresLoad):
    """The same address always lands on the same target while the weights stay the same.

    Unlike consistent hashing, changing the target list remaps most addresses (as nginx does). When the
    target is skipped the hash is rehashed deterministically, so a retry from one address always tries the
    same sequence of targets; after MAX_REHASHES misses, or without a key, it falls back to round-robin.
    """

    retry_skips_tried = True  # nginx's ip_hash rehashes past the peers it tried


    def __init__(self, weights: Sequence[int]) -> None:
        self._weights = check_weights(weights)
        self._round_robin = RoundRobin(self._weights)
        self._rebuild()

    def _rebuild(self) -> None:
        """Cumulative weights, so `hash % total` maps to a target by binary search."""
        self._cumulative = list(accumulate(self._weights))
        self._total = self._cumulative[-1] if self._cumulative else 0

    def pick(self, hash_key: bytes | None = None, skip: Container[int] = ()) -> int | None:
        """Target for the client address in `hash_key`, rehashing past skipped targets."""
        if hash_key is None or not self._total:
            return self._round_robin.pick(None, skip)
        digest = stable_hash(hash_key)
        for _ in range(MAX_REHASHES + 1):
            index = bisect_right(self._cumulative, digest % self._total)
            if index not in skip:
                return index
            digest = stable_hash(digest.to_bytes(8, "little"))
        return self._round_robin.pick(None, skip)

    def start_over(self, hash_key: bytes | None = None, skip: Container[int] = ()) -> int | None:
        """Every target not in `skip` failed this request: the address's own sequence again (not Kong's
        algorithm; as its least-connections starts over)."""
        return self.pick(hash_key, skip)

    def set_weight(self, index: int, weight: int) -> None:
        """Re-weight one target (most addresses remap, as with nginx)."""
        self._weights[index] = check_weight(weight)
        self._round_robin.set_weight(index, weight)
        self._rebuild()
