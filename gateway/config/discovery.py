"""Config Structs for service discovery, self-registration and the nginx/HAProxy health-check aliases.

Imported by gateway/config/schema.py (never the other way round), so this module only depends on msgspec.

    upstreams:
      - name: mcp
        discovery: {type: etcd, endpoints: ["127.0.0.1:2379"], prefix: /gateway/upstreams/mcp/}
        healthchecks:
          check: {type: http, path: /health, interval: 3000, rise: 2, fall: 3, timeout: 1000}
    gateway:
      registration: {backend: consul, address: "127.0.0.1:8500", service: mcp-gateway}

Cross-field rules are checked in `__post_init__`; msgspec reports those at the Struct's path, so a message reads
`upstreams[0].discovery: endpoints[1]: expected "host:port" or "http://host:port", got "x"`.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

import msgspec

from gateway.config.errors import show
from gateway.config.units import Seconds

PosInt = Annotated[int, msgspec.Meta(ge=1)]
Weight = Annotated[int, msgspec.Meta(ge=0, le=65535)]

DEFAULT_ENDPOINTS = {"etcd": "127.0.0.1:2379", "consul": "127.0.0.1:8500"}
DEFAULT_ETCD_PREFIX = "/gateway/upstreams/{name}/"
# What an unset field stands for where it is read. The Structs default to None instead, so that a field the chosen
# backend does not read can be refused when it is set.
DEFAULT_WEIGHT = 100
DEFAULT_TIMEOUT_S = 5.0
DEFAULT_RETRY_INITIAL_S = 0.5
DEFAULT_RETRY_MAX_S = 30.0
DEFAULT_CHECK_INTERVAL = "10s"
DEFAULT_CHECK_TIMEOUT = "5s"
DEFAULT_LEASE_TTL_S = 10
DEFAULT_REFRESH_S = 30.0

# (whole-value patterns, applied with fullmatch: Python's `$` also matches before a final "\n")
_ENDPOINT = re.compile(r"(?:http://)?(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|[A-Za-z0-9_.-]+):(?P<port>\d{1,5})/?")
_ADVERTISE = re.compile(r"(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|[^:\[\]/]+):(?P<port>\d{1,5})")
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_STATUS_CLASS = re.compile(r"([1-5])xx")


class _Base(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Same rules as the rest of the schema: unknown keys are errors."""


# --- helpers (also used by the services) --------------------------------------------------------------------------


def is_ipv6(text: str) -> bool:
    """Whether `text` is an IPv6 address (what may stand in brackets), not merely made of its characters."""
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _host_port_ok(m: re.Match[str] | None) -> bool:
    return (m is not None and 0 < int(m.group("port")) < 65536
            and (m.group("v6") is None or is_ipv6(m.group("v6"))))


def valid_endpoint(text: str) -> bool:
    """'host:port', 'http://host:port' or 'http://[v6]:port' with a port in 1..65535."""
    return _host_port_ok(_ENDPOINT.fullmatch(text.strip()))


def parse_duration(value: int | float | str, number_unit: float = 1.0) -> float:
    """Seconds from 10, 2.5, "10s", "500ms", "5m", "1h"; bare numbers are in `number_unit` seconds.

    Raises ValueError with a readable reason.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 10, \"10s\" or \"500ms\", got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value) * number_unit
    else:
        m = _DURATION.fullmatch(value)
        if not m:
            raise ValueError(f'expected a duration like "10s", "500ms" or "5m", got {show(value)}')
        unit = m.group(2)
        seconds = float(m.group(1)) * (_DURATION_UNITS[unit] if unit else number_unit)
    if seconds <= 0:
        raise ValueError(f"expected a duration > 0, got {value!r}")
    return seconds


def consul_duration(seconds: float) -> str:
    """A duration in Consul's Go syntax ("10s", "1500ms")."""
    ms = round(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def go_duration(text: str) -> str:
    """A duration parse_duration accepts, spelt as Go's time.ParseDuration wants it ("10" and "10 s" -> "10s";
    "1m" stays "1m"): Consul refuses a registration whose check durations it cannot parse."""
    m = _DURATION.fullmatch(text)
    if m is None or m.group(2) is None:
        return consul_duration(parse_duration(text))
    return f"{m.group(1)}{m.group(2)}"


def _check_endpoints(endpoints: list[str], field: str) -> None:
    if not endpoints:
        raise ValueError(f"{field}: expected at least one endpoint")
    for i, ep in enumerate(endpoints):
        if not valid_endpoint(ep):
            raise ValueError(f'{field}[{i}]: expected "host:port" or "http://host:port", got {show(ep)}')


def _check_retry(initial: float, maximum: float) -> None:
    if maximum < initial:
        raise ValueError(f"retry_max_s ({maximum:g}) must be >= retry_initial_s ({initial:g})")


# --- per-upstream discovery -----------------------------------------------------------------------------------------

_ETCD_ONLY = ("prefix",)
_CONSUL_ONLY = ("service", "tag", "datacenter", "passing_only", "wait_s", "token")
_REGISTRY_ONLY = ("default_weight", "timeout_s", "retry_initial_s", "retry_max_s")  # how a registry is read


class DiscoverySettings(_Base):
    """Where an upstream's targets come from. `static`: the config's targets (the default without this block).

    etcd: every key under `prefix` is one target, its value `{"target": "host:port", "weight": 100}` or "host:port".
    consul: the passing instances of `service` (Consul's /v1/health/service/<service>?passing, blocking queries).
    Targets listed in the config seed the upstream until the registry first answers.
    """

    type: Literal["etcd", "consul", "static"]
    endpoints: list[str] | None = None  # default: 127.0.0.1:2379 (etcd) / 127.0.0.1:8500 (consul)
    prefix: str | None = None  # etcd; default /gateway/upstreams/<upstream name>/
    service: str | None = None  # consul; default: the upstream's name
    tag: str | None = None  # consul: only instances with this tag
    datacenter: str | None = None  # consul: ?dc=
    passing_only: bool | None = None  # consul: ?passing (default true)
    wait_s: Annotated[float, msgspec.Meta(gt=0, le=600)] | None = None  # consul: blocking query wait (default 60)
    token: str | None = None  # consul: X-Consul-Token
    # etcd and consul (type static refuses them: its targets carry their own weights, and no registry is asked)
    default_weight: Weight | None = None  # for entries that carry no weight (default 100)
    timeout_s: Seconds | None = None  # per request (default 5; a consul blocking query gets wait_s on top)
    retry_initial_s: Seconds | None = None  # first retry delay after the registry is lost (default 0.5); doubles
    retry_max_s: Seconds | None = None  # up to this (default 30)

    def __post_init__(self) -> None:
        if self.type == "static":
            extra = [f for f in ("endpoints",) + _ETCD_ONLY + _CONSUL_ONLY + _REGISTRY_ONLY
                     if getattr(self, f) is not None]
            if extra:
                raise ValueError(f"{extra[0]}: not used with type static (targets come from the config)")
            return
        other = _CONSUL_ONLY if self.type == "etcd" else _ETCD_ONLY
        for f in other:
            if getattr(self, f) is not None:
                raise ValueError(f"{f}: not used with type {self.type}")
        if self.endpoints is not None:
            _check_endpoints(self.endpoints, "endpoints")
        if self.prefix is not None and not self.prefix:
            raise ValueError("prefix: must not be empty")
        if self.service is not None and not self.service.strip():
            raise ValueError("service: must not be empty")
        _check_retry(self.registry_retry_initial_s, self.registry_retry_max_s)

    # -- resolved values -----------------------------------------------------------------------------------------

    @property
    def registry_default_weight(self) -> int:
        return self.default_weight if self.default_weight is not None else DEFAULT_WEIGHT

    @property
    def registry_timeout_s(self) -> float:
        return self.timeout_s if self.timeout_s is not None else DEFAULT_TIMEOUT_S

    @property
    def registry_retry_initial_s(self) -> float:
        return self.retry_initial_s if self.retry_initial_s is not None else DEFAULT_RETRY_INITIAL_S

    @property
    def registry_retry_max_s(self) -> float:
        return self.retry_max_s if self.retry_max_s is not None else DEFAULT_RETRY_MAX_S

    def endpoint_list(self) -> list[str]:
        return list(self.endpoints) if self.endpoints else [DEFAULT_ENDPOINTS.get(self.type, "")]

    def etcd_prefix(self, upstream: str) -> str:
        return self.prefix if self.prefix is not None else DEFAULT_ETCD_PREFIX.format(name=upstream)

    def consul_service(self, upstream: str) -> str:
        return self.service or upstream

    @property
    def consul_wait_s(self) -> float:
        return self.wait_s if self.wait_s is not None else 60.0

    @property
    def consul_passing_only(self) -> bool:
        return True if self.passing_only is None else self.passing_only


# --- gateway.registration --------------------------------------------------------------------------------------------


class RegistrationSettings(_Base):
    """The gateway registers itself on start and removes itself on stop (the guide's register_service).

    consul: PUT /v1/agent/service/register with an HTTP check (default: the status server's /status/ready; without
    a status server, a TTL check the gateway passes); etcd: a key `<prefix><id>` = {"target": advertise, "weight":
    weight, ...} on a lease of `ttl_s`, kept alive. A field the backend (or `check: ""`) leaves unread is refused.
    """

    backend: Literal["consul", "etcd"]
    address: str | list[str] | None = None  # the registry: 127.0.0.1:8500 (consul) / 127.0.0.1:2379 (etcd)
    service: str = "mcp-gateway"
    id: str | None = None  # default: <service>-<hostname>-<port>
    advertise: str | None = None  # "host:port" others should use; default: the first gateway.listen address
    check: str | None = None  # HTTP check URL; default http://<status_listen>/status/ready; "" for none (consul)
    check_interval: str | None = None  # consul: the HTTP check's Interval (default 10s)
    check_timeout: str | None = None  # consul: its Timeout (default 5s); a TTL check's TTL is interval + timeout
    deregister_critical_after: str | None = None  # consul DeregisterCriticalServiceAfter
    tags: list[str] = []
    meta: dict[str, str] = {}
    weight: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 100
    prefix: str | None = None  # etcd; default /gateway/upstreams/<service>/
    ttl_s: Annotated[int, msgspec.Meta(ge=2, le=3600)] | None = None  # etcd: the lease (default 10)
    refresh_s: Seconds | None = None  # consul: how often the registration is verified, re-made if gone (default 30)
    token: str | None = None  # consul X-Consul-Token
    timeout_s: Seconds = 5.0
    retry_initial_s: Seconds = 0.5
    retry_max_s: Seconds = 30.0

    def __post_init__(self) -> None:
        if self.address is not None:
            _check_endpoints([self.address] if isinstance(self.address, str) else self.address, "address")
        if not self.service.strip():
            raise ValueError("service: must not be empty")
        if self.id is not None and not self.id.strip():
            raise ValueError("id: must not be empty")
        if self.advertise is not None and not _host_port_ok(_ADVERTISE.fullmatch(self.advertise)):
            raise ValueError(f'advertise: expected "host:port", got {show(self.advertise)}')
        if self.check and not self.check.startswith(("http://", "https://")):
            raise ValueError(f'check: expected an http:// or https:// URL, got {show(self.check)}')
        for field in ("check_interval", "check_timeout", "deregister_critical_after"):
            value = getattr(self, field)
            if value is not None:
                try:
                    parse_duration(value)
                except ValueError as e:
                    raise ValueError(f"{field}: {e}") from None
        if self.backend == "consul" and self.prefix is not None:
            raise ValueError("prefix: not used with backend consul")
        if self.backend == "consul" and self.ttl_s is not None:
            raise ValueError("ttl_s: not used with backend consul (it is the etcd lease; Consul's check is set "
                             "by check, check_interval and check_timeout)")
        if self.backend == "consul" and self.check == "":
            for field in ("check_interval", "check_timeout", "deregister_critical_after"):
                if getattr(self, field) is not None:
                    raise ValueError(f'{field}: not used with check: "" (it registers no check; remove the '
                                     f'field, or leave check unset)')
        if self.backend == "etcd":
            for field in ("deregister_critical_after", "token", "check_interval", "check_timeout", "refresh_s"):
                if getattr(self, field) is not None:
                    raise ValueError(f"{field}: not used with backend etcd" + (
                        "" if field in ("deregister_critical_after", "token") else
                        " (the lease of ttl_s seconds is kept alive every ttl_s/3, and etcd runs no check)"))
        if self.prefix is not None and not self.prefix:
            raise ValueError("prefix: must not be empty")
        _check_retry(self.retry_initial_s, self.retry_max_s)

    def address_list(self) -> list[str]:
        if self.address is None:
            return [DEFAULT_ENDPOINTS[self.backend]]
        return [self.address] if isinstance(self.address, str) else list(self.address)

    def etcd_prefix(self) -> str:
        return self.prefix if self.prefix is not None else DEFAULT_ETCD_PREFIX.format(name=self.service)


# --- healthchecks.check: the guide's nginx / HAProxy terms -----------------------------------------------------------


class HealthcheckAliases(_Base):
    """nginx's `check interval=3000 rise=2 fall=3 timeout=1000` and HAProxy's `http-check expect status 200`.

    Each field set here overrides the Kong `healthchecks.active` field it stands for: interval -> both
    healthy.interval and unhealthy.interval, rise -> healthy.successes, timeout -> timeout, path -> http_path,
    expect_status -> healthy.http_statuses (then every other status is a failure, as in nginx and HAProxy),
    fall -> consecutive failures of any kind (nginx counts them together; Kong's counters stay as configured).
    Bare numbers for interval and timeout are milliseconds, as in nginx; "2s" / "500ms" are accepted too.
    The block turns active checks on: an unset interval, rise or fall takes nginx's default (30000 ms, 2, 5) when
    the Kong settings leave that part off, and an unset type is nginx's tcp (a connect is a success), or http when
    the block has a path or expect_status (HAProxy's httpchk).
    """

    type: Literal["http", "https", "tcp"] | None = None
    path: str | None = None
    interval: int | float | str | None = None
    timeout: int | float | str | None = None
    rise: PosInt | None = None
    fall: PosInt | None = None
    expect_status: int | str | list[int | str] | None = None

    def __post_init__(self) -> None:
        for field in ("interval", "timeout"):
            value = getattr(self, field)
            if value is not None:
                try:
                    parse_duration(value, 0.001)
                except ValueError as e:
                    raise ValueError(f"{field}: {e}") from None
        if self.path is not None and not self.path.startswith("/"):
            raise ValueError(f'path: expected a path starting with "/", got {show(self.path)}')
        if self.expect_status is not None:
            self.expected_statuses()  # raises on a bad entry

    @property
    def interval_s(self) -> float | None:
        return None if self.interval is None else parse_duration(self.interval, 0.001)

    @property
    def timeout_s(self) -> float | None:
        return None if self.timeout is None else parse_duration(self.timeout, 0.001)

    def expected_statuses(self) -> list[int] | None:
        """expect_status as a list of codes ("2xx" expands to 200..299)."""
        if self.expect_status is None:
            return None
        items = self.expect_status if isinstance(self.expect_status, list) else [self.expect_status]
        if not items:
            raise ValueError("expect_status: expected at least one status")
        out: list[int] = []
        for i, item in enumerate(items):
            where = "expect_status" if not isinstance(self.expect_status, list) else f"expect_status[{i}]"
            if isinstance(item, int) and not isinstance(item, bool) and 100 <= item <= 999:
                out.append(item)
            elif isinstance(item, str) and item.isdigit() and 100 <= int(item) <= 999:
                out.append(int(item))
            elif isinstance(item, str) and (m := _STATUS_CLASS.fullmatch(item)):
                base = int(m.group(1)) * 100
                out.extend(range(base, base + 100))
            else:
                raise ValueError(f'{where}: expected a status code (200) or class ("2xx"), got {item!r}')
        return sorted(set(out))
