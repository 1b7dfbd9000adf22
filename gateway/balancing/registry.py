"""Algorithm names (Kong's where Kong has one) with their aliases, and the factory the proxy calls."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from .base import Balancer
from .consistent_hashing import ConsistentHashing
from .continuum import KongConsistentHashing
from .ip_hash import IpHash
from .latency import KongLatency
from .least_connections import LeastConnections
from .random_p2c import RandomTwoChoices
from .round_robin import RoundRobin

_ALIASES: dict[str, tuple[str, ...]] = {
    "round-robin": ("round_robin", "roundRobin", "rr", "wrr", "weighted-round-robin"),
    "least-connections": ("leastConn", "least_conn", "least-conn", "leastconn"),
    "consistent-hashing": ("consistent_hashing", "consistentHashing", "hash", "chash"),
    "random": ("p2c", "random-p2c"),
    "latency": ("ewma", "peak-ewma", "least-latency", "leastLatency"),
    "ip-hash": ("ip_hash", "ipHash", "source"),
}

ALGORITHMS: dict[str, str] = {
    spelling: canonical for canonical, aliases in _ALIASES.items() for spelling in (canonical, *aliases)
}

_FACTORIES: dict[str, Callable[[Sequence[int], int, random.Random], Balancer]] = {
    "round-robin": lambda weights, slots, rng: RoundRobin(weights, rng=rng),
    "least-connections": lambda weights, slots, rng: LeastConnections(weights),
    "consistent-hashing": lambda weights, slots, rng: ConsistentHashing(weights, slots=slots),
    "random": lambda weights, slots, rng: RandomTwoChoices(weights, rng=rng),
    "latency": lambda weights, slots, rng: KongLatency(weights),
    "ip-hash": lambda weights, slots, rng: IpHash(weights),
}


def canonical_algorithm(name: str) -> str:
    """Canonical name for any accepted spelling, so config and metrics use one name per algorithm."""
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}; expected one of: {', '.join(_ALIASES)}") from None


def make_balancer(
    algorithm: str, weights: Sequence[int], *, slots: int = 10000, rng: random.Random | None = None,
    addresses: Sequence[tuple[str, str, int]] | None = None,
) -> Balancer:
    """Build the balancer for `algorithm` over targets 0..len(weights)-1; `slots` only matters for hashing.

    `addresses`: each target as (the name its upstream target gives, its address, its port). With them,
    consistent-hashing is Kong's own continuum (KongConsistentHashing), which sends a key where Kong sends it,
    whatever the targets' order; the other algorithms do not look at them."""
    canonical = canonical_algorithm(algorithm)
    if addresses is not None and canonical == "consistent-hashing":
        return KongConsistentHashing(weights, addresses, slots=slots)
    return _FACTORIES[canonical](weights, slots, rng or random.Random())
