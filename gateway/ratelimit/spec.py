"""What one rate-limiting plugin instance enforces, as a small hashable value sent with every lease request."""

from __future__ import annotations

from math import ceil
from typing import TYPE_CHECKING

import msgspec

from gateway.ratelimit.windows import PERIODS

if TYPE_CHECKING:  # type-only: importing gateway.policies at run time would pull the HTTP layer into the keeper
    from gateway.policies.rate_limiting.schema import RateLimitingConfig

FIXED_WINDOW = "fixed-window"
TOKEN_BUCKET = "token-bucket"
LIMIT_REQ = "limit-req"
ALGORITHMS = (FIXED_WINDOW, TOKEN_BUCKET, LIMIT_REQ)


class Window(msgspec.Struct, frozen=True, array_like=True):
    """At most `limit` requests per calendar-aligned `period` (second .. year)."""

    period: str
    limit: int


class LimitSpec(msgspec.Struct, frozen=True, array_like=True):
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
        return cls(windows=windows, algorithm=cfg.algorithm, rate=float(cfg.rate or 0.0), burst=cfg.burst,
                   nodelay=cfg.nodelay, fault_tolerant=cfg.fault_tolerant,
                   store=plugin_id if cfg.policy == "redis" else "")
