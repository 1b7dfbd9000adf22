"""Shared pieces of the balancers: the protocol, weight checks, a stable hash and weighted draws."""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Container, Sequence
from hashlib import blake2b
from itertools import accumulate
from typing import Any, Protocol, runtime_checkable

# Rejection draws before a weighted draw falls back to an exact O(n) pass over the eligible targets.
_REJECTION_TRIES = 8


@runtime_checkable
class Balancer(Protocol):
    """What the proxy needs from every algorithm; targets are indexes into the weights list."""

    # Whether `started` and `finished` matter to it (they are not called otherwise: two calls a request saved).
    follows_load: bool
    # Whether a retry should skip the targets this request already tried (`skip` holds them): Kong's
    # least-connections and latency keep handle.failedAddresses; its round-robin moves on round the wheel and its
    # consistent-hashing starts again from the key's point, neither looking at what was tried.
    retry_skips_tried: bool

    def pick(self, hash_key: bytes | None = None, skip: Container[int] = ()) -> int | None:
        """Index of the chosen target, or None when every target is skipped or has weight 0."""
        ...

    def start_over(self, hash_key: bytes | None = None, skip: Container[int] = ()) -> int | None:
        """A retry's target once every target not in `skip` has failed this request (`pick` skipping them found
        none; only for a balancer that skips them): Kong's least-connections starts over with them all (getPeer
        drops handle.failedAddresses), its latency ends the request (None: no peer, Kong's 503) but for a sole
        target in service, which every try gets."""
        ...

    def started(self, index: int) -> None:
        """A request began on target `index`."""
        ...

    def finished(self, index: int, latency_s: float, ok: bool = True) -> None:
        """A request on target `index` ended after `latency_s` seconds."""
        ...

    def set_weight(self, index: int, weight: int) -> None:
        """Change a target's weight live (admin channel, discovery); 0 stops its traffic."""
        ...


@runtime_checkable
class FollowsHealth(Protocol):
    """A balancer that forgets what it learnt of a target taken out of service (Kong's latency: its EWMA), as Kong
    calls its algorithm's afterHostUpdate on every change of an address's availability (balancers.lua
    setAddressStatus). The worker's state checks for it (isinstance) when a group's unusable targets change; the
    balancers without it are not told."""

    def set_unavailable(self, unavailable: frozenset[int]) -> None:
        """`unavailable`: every target no request may go to for a reason of its own (unhealthy, drained), whole."""
        ...


@runtime_checkable
class Learns(Protocol):
    """A balancer that learns of each target as requests go (least-connections' requests in flight, latency's EWMA):
    one built over a new target list takes over what the one before it learnt (`hand_over`)."""

    def take_over(self, old: Any, moved: Sequence[int]) -> None:
        """Take over what `old` (a balancer of its own class) learnt of the targets that stay: `moved[i]` is old
        target i's index here, -1 for one gone."""
        ...


def hand_over(old: Balancer, new: Balancer, moved: Sequence[int]) -> None:
    """Discovery replaced `old` by `new` (`moved[i]`: old target i's index in `new`, -1 for one gone): `new` takes
    over what `old` learnt of the targets that stay, and the requests still in flight on `old` report their start
    and end to `new` from now on, as Kong keeps an address that stays across a DNS update (targets.lua
    update_dns_result), with its connectionCount (least_connections.lua:22-44) and EWMA (latency.lua:71-101)."""
    if type(old) is not type(new) or not isinstance(new, Learns):
        return  # (round-robin and the hashes learn nothing: Kong rebuilds its wheel or continuum too)
    new.take_over(old, moved)

    def started(index: int) -> None:
        if (now := moved[index]) >= 0:
            new.started(now)

    def finished(index: int, latency_s: float, ok: bool = True) -> None:
        if (now := moved[index]) >= 0:
            new.finished(now, latency_s, ok)

    # Shadowing the class's methods on the old instance only: the current balancer's calls cost nothing more. A
    # later hand-over of `new` shadows its methods too, so a request spanning two changes still finds the current.
    vars(old).update(started=started, finished=finished)


class IgnoresLoad:
    """For the balancers whose choice does not depend on load (round-robin, the hashes): the proxy does not tell them
    of a request's start and end."""

    follows_load = False

    def started(self, index: int) -> None:
        """Load is not looked at."""

    def finished(self, index: int, latency_s: float, ok: bool = True) -> None:
        """Nor is latency."""


def check_weight(weight: int) -> int:
    """Return `weight` if it is a non-negative int (Kong semantics: 0 means no traffic), else raise."""
    if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
        raise ValueError(f"weights must be non-negative integers, got {weight!r}")
    return weight


def check_weights(weights: Sequence[int]) -> list[int]:
    """Validated private copy of `weights`, so callers mutating their list cannot corrupt a balancer."""
    return [check_weight(weight) for weight in weights]


def stable_hash(key: bytes) -> int:
    """64-bit hash of `key` that is identical in every process (unlike the salted built-in hash())."""
    return int.from_bytes(blake2b(key, digest_size=8).digest(), "little")


class WeightTable:
    """Cumulative weights for O(log n) weighted draws that honour weights among the non-skipped targets."""

    def __init__(self, weights: list[int], rng: random.Random) -> None:
        self.weights = weights
        self._rng = rng
        self._rebuild()

    def _rebuild(self) -> None:
        """Recompute the cumulative sums; only weight changes pay this O(n)."""
        self._cumulative = list(accumulate(self.weights))
        self._total = self._cumulative[-1] if self._cumulative else 0

    def set_weight(self, index: int, weight: int) -> None:
        """Change one weight and rebuild the cumulative sums."""
        self.weights[index] = check_weight(weight)
        self._rebuild()

    def draw(self, skip: Container[int] = (), exclude: int = -1) -> int | None:
        """Weighted draw among targets not in `skip` and not `exclude`; None if there are none."""
        total = self._total
        if not total:
            return None
        cumulative, randrange = self._cumulative, self._rng.randrange
        for _ in range(_REJECTION_TRIES):
            index = bisect_right(cumulative, randrange(total))
            if index != exclude and index not in skip:
                return index
        return self._draw_exact(skip, exclude)

    def _draw_exact(self, skip: Container[int], exclude: int) -> int | None:
        """Exact weighted draw over the eligible targets, for when most of the weight is excluded."""
        weights = self.weights
        eligible = [i for i, weight in enumerate(weights) if weight and i != exclude and i not in skip]
        if not eligible:
            return None
        cumulative = list(accumulate(weights[i] for i in eligible))
        return eligible[bisect_right(cumulative, self._rng.randrange(cumulative[-1]))]
