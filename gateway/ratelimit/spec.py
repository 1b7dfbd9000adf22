"""What one rate-limiting plugin instance enforces, as a small hashable value sent with every lease request, and the
lease keys that name it: `<spec tag>/<counter>`, the counter being what Kong counts on (its scope and identifier).

Kong keys a counter by the plugin's route, service and identifier, never by its limits (rate-limiting
policies/init.lua:50-72), so instances with different limits may count on one counter, each checking its own
limits against it. Tokens are granted against one spec's limits and charged to its periods, so each spec has its
own lease (at a worker) and state (at the keeper) of the counter: the key's tag says which.
"""

from __future__ import annotations

from hashlib import sha256
from math import ceil
from typing import TYPE_CHECKING
from weakref import WeakValueDictionary

import msgspec

from gateway.ratelimit.windows import PERIODS

if TYPE_CHECKING:  # type-only: importing gateway.policies at run time would pull the HTTP layer into the keeper
    from gateway.policies.rate_limiting.schema import RateLimitingConfig

TAG_CHARS = 12  # hex digits of a spec's digest in a lease key
TAG_END = "/"
FIXED_WINDOW = "fixed-window"
TOKEN_BUCKET = "token-bucket"
LIMIT_REQ = "limit-req"
ALGORITHMS = (FIXED_WINDOW, TOKEN_BUCKET, LIMIT_REQ)


class Window(msgspec.Struct, frozen=True, array_like=True):
    """At most `limit` requests per calendar-aligned `period` (second .. year)."""

    period: str
    limit: int


class LimitSpec(msgspec.Struct, frozen=True, array_like=True, weakref=True):
    """Every window must have room, and with a bucket algorithm the bucket must hold a token, for a request to pass.

    token-bucket: the guide's bucket of `capacity` = max(burst, 1) tokens refilled at `rate` per second, starting full.
    limit-req: nginx's leaky bucket (`excess` may grow to `burst`), i.e. a token bucket of burst + 1 tokens; without
    `nodelay` a request admitted into the excess waits excess / rate seconds, as nginx delays it.
    """

    windows: tuple[Window, ...] = ()
    algorithm: str = FIXED_WINDOW
    rate: float = 0.0
    burst: int = 0
    nodelay: bool = True
    fault_tolerant: bool = True
    store: str = ""  # policy redis: the plugin whose Redis holds the counters shared by every host ("": this host)

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {self.algorithm!r}; expected one of {', '.join(ALGORITHMS)}")
        if self.bucketed and self.rate <= 0:
            raise ValueError(f"algorithm {self.algorithm} needs a rate above 0")
        if not self.bucketed and not self.windows:
            raise ValueError("fixed-window needs at least one window")

    @property
    def bucketed(self) -> bool:
        """True when a token bucket (token-bucket or limit-req) applies on top of the windows."""
        return self.algorithm != FIXED_WINDOW

    @property
    def capacity(self) -> float:
        """Tokens the bucket holds when full."""
        return float(self.burst + 1) if self.algorithm == LIMIT_REQ else float(max(self.burst, 1))

    @property
    def paced(self) -> bool:
        """True for limit-req without nodelay: admitted excess requests are delayed, not sent at once."""
        return self.algorithm == LIMIT_REQ and not self.nodelay

    @property
    def remote(self) -> bool:
        """True when the counters are shared by every gateway host (policy redis)."""
        return bool(self.store)

    @classmethod
    def from_plugin(cls, cfg: RateLimitingConfig, plugin_id: str = "") -> LimitSpec:
        """Spec of a validated plugin config; a limit of 2.5 admits 3, as Kong admits while usage < limit."""
        windows = tuple(Window(period, ceil(getattr(cfg, period))) for period in PERIODS if getattr(cfg, period))
        spec = cls(windows=windows, algorithm=cfg.algorithm, rate=float(cfg.rate or 0.0), burst=cfg.burst,
                   nodelay=cfg.nodelay, fault_tolerant=cfg.fault_tolerant,
                   store=plugin_id if cfg.policy == "redis" else "")
        # one object for equal specs: instances with them share a lease (one tag), which is spent on the identity
        return _SPECS.setdefault(msgspec.msgpack.encode(spec), spec)


_SPECS: WeakValueDictionary[bytes, LimitSpec] = WeakValueDictionary()  # the plugins' specs in use, by encoding


def spec_tag(spec: LimitSpec) -> str:
    """What a lease key of `spec` starts with: a digest of it and TAG_END (the same in every process and run)."""
    return sha256(msgspec.msgpack.encode(spec)).hexdigest()[:TAG_CHARS] + TAG_END


def counter_of(key: str) -> str:
    """The counter a lease key counts on: the key past its spec's tag (a key without one is its own counter)."""
    return key[TAG_CHARS + 1:] if len(key) > TAG_CHARS and key[TAG_CHARS] == TAG_END else key


def tag_of(key: str) -> str:
    """The spec tag a lease key starts with, TAG_END included ("": a key without one)."""
    return key[:TAG_CHARS + 1] if len(key) > TAG_CHARS and key[TAG_CHARS] == TAG_END else ""
