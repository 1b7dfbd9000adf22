"""The trace context formats Kong's propagation module names w3c, b3, b3-single and jaeger (their headers; read and
written by gateway.telemetry.propagation), trace and span ids, Kong's sampler, a span's record, and kong.conf's
tracing settings (tracing_instrumentations, tracing_sampling_rate).

    w3c        traceparent: 00-<trace id, 32 hex>-<parent span id, 16 hex>-<flags, 2 hex; 01 = sampled>
    b3         X-B3-TraceId (16 or 32 hex), X-B3-SpanId, X-B3-ParentSpanId, X-B3-Sampled (1/0), X-B3-Flags (1)
    b3-single  b3: <trace id>-<span id>[-<1|0|d>[-<parent span id>]], or b3: <1|0|d> alone
    jaeger     uber-trace-id: <trace id>:<span id>:<parent span id>:<flags, hex; bit 1 = sampled>

Ids are integers (0 = absent).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from gateway.kong_array import kong_array

if TYPE_CHECKING:
    from gateway.pipeline.forward import Attempt

W3C, B3, B3_SINGLE, JAEGER = "w3c", "b3", "b3-single", "jaeger"
INTERNAL, SERVER, CLIENT = 1, 2, 3  # OTLP's SpanKind values
ERROR = 2  # OTLP's (and Kong's span:set_status) STATUS_CODE_ERROR
FORMATS = (W3C, B3, B3_SINGLE, JAEGER)
# The header names each format reads and writes (lower case, as the codecs give them).
HEADERS = {
    W3C: (b"traceparent",),
    B3: (b"x-b3-traceid", b"x-b3-spanid", b"x-b3-parentspanid", b"x-b3-sampled", b"x-b3-flags"),
    B3_SINGLE: (b"b3",),
    JAEGER: (b"uber-trace-id",),
}
TRACE_HEADERS = frozenset(name for names in HEADERS.values() for name in names)
_MAX_TRACE = (1 << 128) - 1
_MAX_SPAN = (1 << 64) - 1
_HEX = frozenset(b"0123456789abcdefABCDEF")
_random = random.Random()  # ids need to be unique, not secret (the OpenTelemetry SDK draws them the same way)
os.register_at_fork(after_in_child=_random.seed)  # a forked worker (the zygote's) must not repeat its siblings' ids


def new_trace_id() -> int:
    return _random.getrandbits(128) or 1


def new_span_id() -> int:
    return _random.getrandbits(64) or 1


def sample(trace_id: int, rate: float) -> bool:
    """Kong's probability sampler: the trace id's first 8 bytes, read as a little-endian uint64 (an FFI cast on
    x86), below rate x 2^64; so gateways and Kong nodes with the same rate decide alike for a trace."""
    if rate >= 1:
        return True
    if rate <= 0:
        return False
    head = int.from_bytes((trace_id >> 64).to_bytes(8, "big"), "little")
    return head < rate * 18446744073709551616.0


class SpanRecord:
    """One finished span: ids (parent 0: none), name, kind, times (ns since the epoch), attributes, and Kong's status
    (span:set_status: 0 unset, 2 error)."""

    __slots__ = ("trace_id", "span_id", "parent_id", "name", "kind", "start_ns", "end_ns", "attributes", "status")

    def __init__(self, trace_id: int, span_id: int, parent_id: int, name: str, kind: int, start_ns: int,
                 end_ns: int, attributes: list[tuple[str, Any]], status: int = 0) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id
        self.name = name
        self.kind = kind
        self.start_ns = start_ns
        self.end_ns = end_ns
        self.attributes = attributes
        self.status = status


def formats_out(inject: Iterable[str], default_format: str, found: Any) -> tuple[str, ...]:
    """The formats a request's context goes upstream in (Kong's propagation.inject): "preserve" is the one it came
    in (b3 as it came: single or multi), or `default_format` when none was read (`found`: the context read, with
    its .format and .single)."""
    out: list[str] = []
    for fmt in inject:
        if fmt == "preserve":
            fmt = found.format if found is not None else default_format
            if fmt == B3 and found is not None and found.single:
                fmt = B3_SINGLE
        if fmt not in out:
            out.append(fmt)
    return tuple(out)


def balancer_hostname(attempt: Attempt) -> str:
    """Kong's balancer_data.hostname of a try (zipkin's peer.hostname, opentelemetry's net.peer.name): the
    upstream's host_header when it has one, else the target's name (not the address it resolved to)."""
    return attempt.group.host_header or attempt.target.target


def text_of(raw: bytes) -> str:
    """A client's bytes (a target, a Host) as a span's text: UTF-8 as it came, as Kong's spans carry Lua's bytes
    (lua-protobuf, cjson); bytes that are not UTF-8 one character each (latin-1), so the text stays valid UTF-8."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw.decode("latin-1")


# kong.conf's tracing_instrumentations (kong.conf.default, kong/conf_loader/parse.lua, kong/observability/tracing/
# instrumentation.lua). The gateway makes Kong's request span ("kong": on with any value but off), "kong.router" and
# "kong.balancer"; `all` is those three. Kong's other instrumentations are refused by name, saying why.
MADE = ("request", "router", "balancer")
NOT_MADE = {
    "db_query": "kong.database.query spans: the gateway has no database",
    "dns_query": "kong.dns spans: the gateway does not trace its name resolution",
    "http_client": "kong.internal.request spans: the gateway does not trace its plugins' own HTTP calls",
    "plugin_rewrite": "kong.rewrite.plugin.<name> spans: the gateway has no rewrite phase and does not time each "
                      "plugin",
    "plugin_access": "kong.access.plugin.<name> spans: the gateway does not time each plugin",
    "plugin_header_filter": "kong.header_filter.plugin.<name> spans: the gateway does not time each plugin",
}
DEFAULT_SAMPLING_RATE = 0.01  # kong.conf's tracing_sampling_rate


def instrumentation_names(value: list[str] | str | bool) -> list[str]:
    """A list, or kong.conf's comma-separated string, as Kong's conf_loader reads an array (items trimmed); YAML's
    unquoted `off` (false) is off."""
    if isinstance(value, bool):
        return [] if value else ["off"]
    return kong_array(value)


def tracing_problems(instrumentations: list[str] | str | bool, sampling_rate: float) -> list[str]:
    """kong.conf's checks of the two settings (conf_loader/parse.lua, its messages), and the instrumentations the
    gateway does not make, refused by name."""
    names = instrumentation_names(instrumentations)
    problems = []
    if not names:
        problems.append("tracing_instrumentations: expected off, all, or some of " + ", ".join(MADE))
    for name in names:
        if name in NOT_MADE:
            problems.append(f"tracing_instrumentations: {name} is not supported by the gateway ({NOT_MADE[name]}); "
                            f"it makes {', '.join(MADE)} (all)")
        elif name not in MADE and name not in ("off", "all"):
            problems.append(f"tracing_instrumentations: invalid tracing type: {name}")
    if len(names) > 1 and "off" in names:
        problems.append("tracing_instrumentations: invalid tracing types: off, other types are mutually exclusive")
    if not 0 <= sampling_rate <= 1:
        problems.append("tracing_sampling_rate must be between 0 and 1")
    return problems


class TracingSettings:
    """What the two kong.conf settings turn on (instrumentation.lua's init): `enabled` (any value but off: Kong's
    request span, and spans are sampled and exported), `router` and `balancer` (named, or all: Kong looks for
    `all` first in the list only), and the tracer's sampling rate."""

    __slots__ = ("enabled", "router", "balancer", "sampling_rate")

    def __init__(self, instrumentations: list[str] | str | bool = "off",
                 sampling_rate: float = DEFAULT_SAMPLING_RATE) -> None:
        names = instrumentation_names(instrumentations) or ["off"]
        self.enabled = names[0] != "off"
        every = names[0] == "all"
        self.router = self.enabled and (every or "router" in names)
        self.balancer = self.enabled and (every or "balancer" in names)
        self.sampling_rate = sampling_rate

    @classmethod
    def of(cls, gateway: Any) -> TracingSettings:
        """The settings of a `gateway:` section (GatewaySettings); None: Kong's defaults (off, 0.01)."""
        if gateway is None:
            return cls()
        return cls(gateway.tracing_instrumentations, gateway.tracing_sampling_rate)


class SpanReport:
    """A sampled request's spans, queued one entry each and built and encoded together when the queue's task
    formats the first of them (`span`), off the request path; the finished Exchange is held until then (what it
    reads is final once the response is sent). Subclasses say how many (`count`) and build them (`encode`)."""

    __slots__ = ("trace", "ex", "started", "ended", "status", "count", "encoded")

    def __init__(self, trace: Any, ex: Any, started: float, ended: float, status: int) -> None:
        self.trace = trace
        self.ex: Any = ex
        self.started = started
        self.ended = ended
        self.status = status
        self.count = 0
        self.encoded: list[Any] | None = None

    def span(self, i: int) -> Any:
        """The `i`th span, encoded (all of them are, on the first call)."""
        encoded = self.encoded
        if encoded is None:
            ex, self.ex = self.ex, None
            encoded = self.encoded = self.encode(ex)
        return encoded[i]

    def encode(self, ex: Any) -> list[Any]:
        raise NotImplementedError
