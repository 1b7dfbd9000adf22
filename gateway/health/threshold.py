"""An upstream's health as a whole: Kong's `healthchecks.threshold`, and which targets a worker's balancer skips.

Kong (kong/runloop/balancer/balancers.lua, `balancer_mt:updateStatus`) keeps the total weight of an upstream's
addresses and the weight of those health checks marked unavailable; the balancer is healthy when the total is not 0
and `(total - unavailable) / total * 100 > threshold`, a strict comparison, so a threshold of 100 keeps it unhealthy
even with every target healthy, and a threshold of 0 makes it unhealthy only when no weight is healthy. An unhealthy
balancer gives no peer ("Balancer is unhealthy"), which the proxy answers 503 "failure to get a peer from the
ring-balancer"; it is healthy again as soon as the share rises above the threshold (no hysteresis).

A target with weight 0 adds nothing to either sum (Kong's address weight). A drained target (the admin channel's
drain, our counterpart of Kong's weight 0) and a circuit-open one (the circuit-breaker plugin, which is not a health
check) are skipped by the balancer and left out of both sums as well: draining a target, or a breaker opening, does
not make the rest of the upstream unhealthy by itself.
"""

from __future__ import annotations

from collections.abc import Sequence, Set


def upstream_healthy(weights: Sequence[int], unhealthy: Set[int], excluded: Set[int], threshold: float) -> bool:
    """Kong's balancer health: the weight of the healthy targets, as a percentage of the weight of all, above
    `threshold`. `unhealthy`: indexes health checks marked unhealthy; `excluded`: indexes in neither sum."""
    total = available = 0
    for index, weight in enumerate(weights):
        if index in excluded:
            continue
        total += weight
        if index not in unhealthy:
            available += weight
    # Kong's expression as written (LuaJIT numbers are doubles, as Python floats): the same answer at the boundary.
    return total != 0 and available / total * 100 > threshold


def unusable_targets(weights: Sequence[int], unhealthy: Set[int], blocked: Set[int], threshold: float = 0,
                     panic: bool = False) -> frozenset[int]:
    """The indexes a worker's balancer skips: `blocked` ones (drained, circuit open), unhealthy ones, and, when the
    upstream is unhealthy as a whole (`upstream_healthy`), every one: its requests get 503 as in Kong. With `panic`
    (Envoy's panic mode) an unhealthy upstream sends to all its targets that are not blocked instead."""
    if upstream_healthy(weights, unhealthy, blocked, threshold):
        return frozenset(blocked | unhealthy)
    if panic:
        return frozenset(blocked)
    return frozenset(range(len(weights)))
