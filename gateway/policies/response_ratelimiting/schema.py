"""Kong's response-ratelimiting config (kong/plugins/response-ratelimiting/schema.lua).

`limits` maps a limit name (what the upstream's `header_name` header counts against, and part of the X-RateLimit
header names) to its limits per period. Redis settings: the nested `redis` record or the deprecated `redis_<field>`
shorthands Kong 3.x still accepts (each one set logs Kong's deprecation line), as for rate-limiting (whose pieces
are reused). Kong's `cluster` policy keeps counters in Kong's database, which this gateway does not have: it is
refused with a pointer to `redis`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

import msgspec

from gateway.config.errors import key_part
from gateway.policies.rate_limiting.schema import Limit, RedisConfig, RedisShorthands, merge_redis_shorthands

PERIODS = ("second", "minute", "hour", "day", "month", "year")
# an HTTP header name (RFC 9110 token): Kong takes any non-empty name, and the name goes into header names
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class PeriodLimits(msgspec.Struct, forbid_unknown_fields=True):
    """One limit's counts per period; a longer period may not allow less than a shorter one (checked by the config,
    which knows the limit's name)."""

    second: Limit | None = None
    minute: Limit | None = None
    hour: Limit | None = None
    day: Limit | None = None
    month: Limit | None = None
    year: Limit | None = None

    def check(self) -> str | None:
        """Kong's checks of a limit, with its messages: at least one period, and validate_periods_order."""
        set_periods = self.periods()
        if not set_periods:
            return "at least one of these fields must be non-empty: " + ", ".join(f"'{p}'" for p in PERIODS)
        for i, (lower, v1) in enumerate(set_periods):
            for upper, v2 in set_periods[i + 1:]:
                if v2 < v1:
                    return f"the limit for {upper}({v2:.1f}) cannot be lower than the limit for {lower}({v1:.1f})"
        return None

    def periods(self) -> list[tuple[str, float]]:
        """(period, limit) of the periods set, shortest first."""
        return [(p, v) for p in PERIODS if (v := getattr(self, p)) is not None]


class ResponseRateLimitingConfig(RedisShorthands, forbid_unknown_fields=True):
    # null: nil, which get_identifier matches with no limit_by and so keys by the client address (access.lua:17-30)
    NULL_AS: ClassVar[dict[str, Any]] = {"limit_by": "ip"}

    limits: dict[str, PeriodLimits]
    header_name: Annotated[str, msgspec.Meta(min_length=1)] = "x-kong-limit"  # Kong's strings are not empty
    limit_by: Literal["consumer", "credential", "ip"] = "consumer"
    policy: Literal["local", "cluster", "redis"] = "local"
    fault_tolerant: bool = True
    block_on_first_violation: bool = False
    hide_client_headers: bool = False
    redis: RedisConfig = msgspec.field(default_factory=RedisConfig)

    def __post_init__(self) -> None:
        if not self.limits:
            raise ValueError("limits: length must be at least 1")
        for name, limit in self.limits.items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"limits: {name!r} cannot name a limit here: the name goes into header names "
                                 "(X-RateLimit-Remaining-<name>), which take letters, digits and !#$%&'*+-.^_`|~")
            problem = limit.check()
            if problem is not None:
                raise ValueError(f"limits.{key_part(name)}: {problem}")
        merge_redis_shorthands(self, "response-ratelimiting")
        if self.policy == "cluster":
            raise ValueError("policy cluster keeps counters in Kong's database, which this gateway does not have; "
                             "use policy redis (counters shared by every gateway host) or local (counters shared "
                             "by this host's workers)")
        if self.policy == "redis" and not self.redis.host:
            raise ValueError("policy is redis: set redis.host (or redis_host)")
