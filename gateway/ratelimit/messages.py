"""Rate-limit payloads between the workers and the keeper (the bus wraps them in versioned messages)."""

from __future__ import annotations

import msgspec

from gateway.ratelimit.spec import LimitSpec


class LeaseRequest(msgspec.Struct, frozen=True, array_like=True):
    """Worker -> keeper: `want` more tokens of `key`; `used` counts tokens spent since the last request; `unused`
    tokens of a grant made at `unused_wall` expired unspent here, given back first (as a ReturnedLease would).
    `keeper`, in FallbackUsage too: the keeper incarnation it is meant for, or "" for any keeper (lease.py rule 5).
    `waiting`: how many requests wait for it (0: asked ahead of need): the keeper may hold it for a recall (ledger.py
    rule 12), and an exact key grants a token to each of them (rule 13)."""

    key: str
    spec: LimitSpec
    worker: str
    want: int
    used: int = 0
    unused: int = 0
    unused_wall: float = 0.0
    keeper: str = ""
    waiting: int = 0


class Grant(msgspec.Struct, frozen=True, array_like=True):
    """Keeper -> worker: `granted` tokens (maybe 0) and the keeper's view of every window after granting them.

    remaining/resets are per window of the spec (wall-clock ends); `wall` is the keeper's clock at the grant and
    names the windows the tokens belong to; the tokens are void from `expires` (wall) on. `retry` > 0 means a limit
    is exhausted: asking again sooner than `retry` seconds is pointless (the window's end, or sooner while tokens
    charged to it may come back unspent: ledger.py rule 9); 0 with a window exhausted: other workers hold what is
    left, and the next request for it is held while they are recalled (ledger.py rule 12). `delay` (limit-req without
    nodelay) is how long after the grant the first token may be used; the next ones follow 1 / rate apart. `hosts`
    is how many gateway hosts share the limit (policy redis), so a worker's local share is limit / (workers x hosts);
    `unavailable`: the shared store is unreachable and fault_tolerant is off (Kong answers 500). `exact`: another
    spec with other limits counts on the key's counter, so tokens come one per waiting request, none ahead of need
    (ledger.py rule 13): ask for a request when it needs one.
    """

    key: str
    granted: int
    remaining: tuple[int, ...]
    resets: tuple[float, ...]
    wall: float
    expires: float
    retry: float = 0.0
    delay: float = 0.0
    hosts: int = 1
    unavailable: bool = False
    exact: bool = False


class ReturnedLease(msgspec.Struct, frozen=True, array_like=True):
    """Worker -> keeper: `unused` tokens of a grant made at `wall` that expired unspent, and `used` since last told."""

    key: str
    worker: str
    unused: int
    used: int
    wall: float


class FallbackUsage(msgspec.Struct, frozen=True, array_like=True):
    """Worker -> keeper after an outage: requests it admitted on its local share, per window current at `wall`; to a
    restarted keeper, all it admitted in those windows (lease.py rule 5). `total`: the local-share use (for buckets)."""

    key: str
    worker: str
    spec: LimitSpec
    windows: tuple[int, ...]
    total: int
    wall: float
    keeper: str = ""
