"""Kong's rate-limiting config, plus the reference guide's token bucket and nginx's limit_req as algorithms.

Redis settings: Kong 3.6+'s nested `redis: {host, port, ...}` record, or the older `redis_host`, `redis_port`, ...
shorthands (still accepted by Kong 3.x); both forms fill `redis`. Kong's `cluster` policy keeps counters in Kong's
database, which this gateway does not have: it is refused with a pointer to `redis`.
"""

import logging
import re
from typing import Annotated, Any, ClassVar, Literal

import msgspec

from gateway.config.errors import inline
from gateway.config.typedefs import header_name_problem, kong_host_problem, sni_problem

log = logging.getLogger("gateway.policies.rate_limiting")

# Up to 2**53, the largest count a double (Kong's number) holds exactly; the state keeper's counters carry it whole
MAX_COUNT = 2**53
Limit = Annotated[float, msgspec.Meta(gt=0, le=MAX_COUNT)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]  # Kong's typedefs.port (0 included)
WINDOWS = ("second", "minute", "hour", "day", "month", "year")
SYNC_RATE_REALTIME = -1.0
# Kong's schema strings are non-empty unless the field says len_min = 0 (redis.password does)
Text = Annotated[str, msgspec.Meta(min_length=1)]
# Kong's typedefs.path (validate_path): RFC 3986 unreserved and reserved characters, "%" only in %XX escapes
_PATH_CHARS = re.compile(r"/[A-Za-z0-9.\-_~/%:@!$&'()*+,;=]*")
_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
# the algorithms that read each of the gateway's bucket keys, and why the others do not
BUCKET_KEYS = {"rate": ("token-bucket", "limit-req"), "burst": ("token-bucket", "limit-req"), "nodelay": ("limit-req",)}
NEVER_READS = {"fixed-window": "(the default) counts calendar windows and has no bucket",
               "token-bucket": "never delays a request"}
SHORTHAND_FIELDS = ("host", "port", "timeout", "username", "password", "database", "ssl", "ssl_verify",
                    "server_name")


class RedisConfig(msgspec.Struct, forbid_unknown_fields=True):
    """Kong's `redis` record (kong/tools/redis/schema.lua): where the counters shared by every gateway host live."""

    # null: nil, which the policies hand lua-resty-redis's connect as its ssl options: off (policies/init.lua:110-111)
    NULL_AS: ClassVar[dict[str, Any]] = {"ssl": False, "ssl_verify": False}
    host: Text | None = None
    port: Port = 6379
    timeout: Annotated[int, msgspec.Meta(ge=0, le=2**31 - 2)] = 2000  # ms, for connecting and for each command
    username: Text | None = None  # Redis 6+ ACL user; without it AUTH sends the password alone
    password: str | None = None
    database: int = 0  # (Kong's has no bounds: a Redis refuses a SELECT of one it has not, a failure as any other)
    ssl: bool = False
    ssl_verify: bool = False  # against the system's CAs (or SSL_CERT_FILE; Kong: lua_ssl_trusted_certificate)
    # with ssl: SNI, and the name the certificate must carry when ssl_verify is on; without ssl, unused (as in Kong,
    # whose lua-resty-redis reads it only for the TLS handshake)
    server_name: Text | None = None

    def __post_init__(self) -> None:
        if problem := self.problem():
            raise ValueError(problem)

    def problem(self) -> str | None:
        """Kong's typedefs.host (host) and typedefs.sni (server_name) checks, with their messages."""
        if self.host is not None and (problem := kong_host_problem(self.host)):
            return f"host: {problem}"
        if self.server_name is not None and (problem := sni_problem(self.server_name)):
            return f"server_name: {problem}"
        return None


class RedisShorthands(msgspec.Struct, kw_only=True):
    """Kong's deprecated `redis_<field>` settings, still accepted beside `redis` (merge_redis_shorthands)."""

    # each one's `deprecation.replaced_with` path, read by gateway.config.decode.kong_shorthands
    SHORTHANDS: ClassVar[dict[str, tuple[str, ...]]] = {f"redis_{field}": ("redis", field)
                                                        for field in SHORTHAND_FIELDS}
    redis_host: Text | None = None
    redis_port: Port | None = None
    redis_password: str | None = None
    redis_username: Text | None = None
    redis_database: int | None = None
    redis_timeout: Annotated[int, msgspec.Meta(ge=0, le=2**31 - 2)] | None = None
    redis_ssl: bool | None = None
    redis_ssl_verify: bool | None = None
    redis_server_name: Text | None = None


class RateLimitingConfig(RedisShorthands, forbid_unknown_fields=True):
    # null: nil, which get_identifier matches with no limit_by and so keys by the client address (handler.lua:60-85)
    NULL_AS: ClassVar[dict[str, Any]] = {"limit_by": "ip"}

    second: Limit | None = None
    minute: Limit | None = None
    hour: Limit | None = None
    day: Limit | None = None
    month: Limit | None = None
    year: Limit | None = None
    limit_by: Literal["consumer", "credential", "ip", "service", "header", "path", "mcp-method", "mcp-tool"] = \
        "consumer"
    header_name: Text | None = None
    path: str | None = None
    policy: Literal["local", "cluster", "redis"] = "local"
    fault_tolerant: bool = True
    hide_client_headers: bool = False
    error_code: Annotated[int, msgspec.Meta(ge=400, le=599)] = 429
    error_message: Text = "API rate limit exceeded"
    algorithm: Literal["fixed-window", "token-bucket", "limit-req"] = "fixed-window"
    rate: Limit | None = None  # token-bucket / limit-req: tokens per second
    # `burst` and `nodelay` as the config gave them (None: absent), so that one given to an algorithm that does not
    # read it is refused; the properties below are their values
    burst_given: Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNT)] | None = msgspec.field(default=None, name="burst")
    # limit-req: nginx's limit_req delays the excess unless told nodelay
    nodelay_given: bool | None = msgspec.field(default=None, name="nodelay")
    sync_rate: float = SYNC_RATE_REALTIME
    redis: RedisConfig = msgspec.field(default_factory=RedisConfig)

    @property
    def burst(self) -> int:
        return self.burst_given or 0

    @property
    def nodelay(self) -> bool:
        return bool(self.nodelay_given)

    def __post_init__(self) -> None:
        if self.algorithm == "fixed-window" and not any(getattr(self, w) for w in WINDOWS):
            raise ValueError("set at least one of second, minute, hour, day, month, year")
        check_periods_order(self)
        if self.algorithm != "fixed-window" and self.rate is None:
            raise ValueError(f"algorithm {self.algorithm} needs rate (requests per second)")
        check_bucket_keys(self)
        if self.limit_by == "header" and not self.header_name:
            raise ValueError("limit_by is header: set header_name")
        if self.limit_by == "path" and not self.path:
            raise ValueError("limit_by is path: set path")
        if self.header_name is not None and (problem := header_name_problem(self.header_name)):
            raise ValueError(f"header_name: {problem}")
        if self.path is not None:
            check_path(self.path)
        merge_redis_shorthands(self, "rate-limiting")
        if problem := self.redis.problem():  # what the redis_<field> shorthands brought
            raise ValueError(f"redis.{problem}")
        if self.policy == "cluster":
            raise ValueError("policy cluster keeps counters in Kong's database, which this gateway does not have; "
                             "use policy redis (exact across gateway hosts) or local (exact across this host's "
                             "workers)")
        if self.policy != "redis" and self.sync_rate != SYNC_RATE_REALTIME:
            raise ValueError("sync_rate can only be used with the redis policy")
        if self.policy == "redis":
            if not self.redis.host:
                raise ValueError("policy is redis: set redis.host (or redis_host)")
            if self.sync_rate != SYNC_RATE_REALTIME and self.sync_rate < 0.02:
                raise ValueError("sync_rate must be greater than 0.02, or -1 to disable")
            if self.algorithm == "limit-req" and not self.nodelay:
                raise ValueError("algorithm limit-req without nodelay delays requests by the host's own bucket; "
                                 "with policy redis set nodelay: true (or use policy local)")


def check_bucket_keys(config: RateLimitingConfig) -> None:
    """`rate`, `burst` and `nodelay` (the gateway's own, not Kong's) only with an algorithm that reads them: accepted
    elsewhere they would be ignored (`rate: 1` beside `minute: 100` letting 100 a second through)."""
    given = (("rate", config.rate), ("burst", config.burst_given), ("nodelay", config.nodelay_given))
    for key, value in given:
        readers = BUCKET_KEYS[key]
        if value is not None and config.algorithm not in readers:
            what = NEVER_READS[config.algorithm]
            raise ValueError(f"{key}: only algorithm {' or '.join(readers)} uses it; {config.algorithm} {what}, so it "
                             f"would be ignored: remove {key}, or set algorithm to {' or '.join(readers)}")


def check_periods_order(config: RateLimitingConfig) -> None:
    """Kong's validate_periods_order: a longer period's limit may not be below a shorter one's (its message)."""
    for i, lower in enumerate(WINDOWS):
        low = getattr(config, lower)
        if low is None:
            continue
        for upper in WINDOWS[i + 1:]:
            high = getattr(config, upper)
            if high is not None and high < low:
                raise ValueError(f"The limit for {upper}({high:.1f}) cannot be lower than the limit for "
                                 f"{lower}({low:.1f})")


def check_path(path: str) -> None:
    """Kong's typedefs.path, with its messages: what `path` may be (matched with the request's normalized path)."""
    if not path:
        raise ValueError("path: length must be at least 1")
    if not path.startswith("/"):
        raise ValueError("path: should start with: /")
    if "//" in path:
        raise ValueError("path: must not have empty segments")
    if _PATH_CHARS.fullmatch(path) is None:
        raise ValueError(f"path: invalid path: '{inline(path)}' (characters outside of the reserved list of RFC 3986 "
                         "found)")
    raw = _ESCAPE.sub("___", path)
    if "%" in raw:
        at = raw.index("%")
        raise ValueError(f"path: invalid url-encoded value: '{inline(raw[at:at + 3])}'")


def merge_redis_shorthands(config: Any, plugin: str) -> None:
    """Kong's deprecated `redis_<field>` shorthands fill `redis.<field>`, each one set logging Kong's deprecation line
    (kong.deprecation, removal in 4.0). From a file, gateway.config.decode.kong_shorthands has already settled each
    pair as Kong does, seeing which `redis` fields the file gave (a disagreement refused even with `redis.port` at
    its default 6379), and left both holding the result; a config built in code, where that cannot be seen, is
    refused only when `redis.<field>` is not its default. `config`: a plugin config with `redis` (RedisConfig) and a
    `redis_<field>` for each of SHORTHAND_FIELDS; `plugin`: its name (rate-limiting's, response-ratelimiting's)."""
    for field in SHORTHAND_FIELDS:
        value = getattr(config, "redis_" + field)
        if value is None:
            continue
        log.warning("%s: config.redis_%s is deprecated, please use config.redis.%s instead (deprecated after 4.0)",
                    plugin, field, field)
        nested = getattr(config.redis, field)
        default = getattr(RedisConfig(), field)
        if nested != default and nested != value:
            raise ValueError(f"redis_{field} ({value!r}) and redis.{field} ({nested!r}) disagree; set one of "
                             f"them (redis.{field} is Kong 3.6's form)")
        setattr(config.redis, field, value)
