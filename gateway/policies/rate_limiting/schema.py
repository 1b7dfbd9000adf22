"""Kong's rate-limiting config, plus the reference guide's token bucket and nginx's limit_req as algorithms."""

from typing import Annotated, Literal

import msgspec

Limit = Annotated[float, msgspec.Meta(gt=0)]
WINDOWS = ("second", "minute", "hour", "day", "month", "year")


class RateLimitingConfig(msgspec.Struct, forbid_unknown_fields=True):
    second: Limit | None = None
    minute: Limit | None = None
    hour: Limit | None = None
    day: Limit | None = None
    month: Limit | None = None
    year: Limit | None = None
    limit_by: Literal["consumer", "credential", "ip", "service", "header", "path", "mcp-method", "mcp-tool"] = \
        "consumer"
    header_name: str | None = None
    path: str | None = None
    policy: Literal["local", "cluster", "redis"] = "local"
    fault_tolerant: bool = True
    hide_client_headers: bool = False
    error_code: Annotated[int, msgspec.Meta(ge=400, le=599)] = 429
    error_message: str = "Rate limit exceeded"
    algorithm: Literal["fixed-window", "token-bucket", "limit-req"] = "fixed-window"
    rate: Limit | None = None  # token-bucket / limit-req: tokens per second
    burst: Annotated[int, msgspec.Meta(ge=0)] = 0
    nodelay: bool = True
    sync_rate: float = -1
    redis_host: str | None = None
    redis_port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 6379
    redis_password: str | None = None
    redis_username: str | None = None
    redis_database: Annotated[int, msgspec.Meta(ge=0)] = 0
    redis_timeout: Annotated[int, msgspec.Meta(ge=0)] = 2000
    redis_ssl: bool = False
    redis_ssl_verify: bool = False
    redis_server_name: str | None = None

    def __post_init__(self) -> None:
        if self.algorithm == "fixed-window" and not any(getattr(self, w) for w in WINDOWS):
            raise ValueError("set at least one of second, minute, hour, day, month, year")
        if self.algorithm != "fixed-window" and self.rate is None:
            raise ValueError(f"algorithm {self.algorithm} needs rate (requests per second)")
        if self.limit_by == "header" and not self.header_name:
            raise ValueError("limit_by is header: set header_name")
        if self.limit_by == "path" and not self.path:
            raise ValueError("limit_by is path: set path")
        if self.policy == "redis" and not self.redis_host:
            raise ValueError("policy is redis: set redis_host")
