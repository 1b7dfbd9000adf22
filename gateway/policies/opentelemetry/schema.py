"""Kong's opentelemetry plugin config (kong/plugins/opentelemetry/schema.lua, kong/observability/tracing/
propagation/schema.lua), with the formats the gateway reads and writes: w3c, b3, b3-single and jaeger."""

import re
from typing import Annotated, Literal

import msgspec

from gateway.telemetry.batch import QueueConfig, apply_legacy_queue
from gateway.telemetry.sender import Endpoint
from gateway.telemetry.tracing import FORMATS

_UNSUPPORTED = ("ot", "aws", "gcp", "datadog", "instana")
_TEMPLATE = re.compile(r"\$\(.*\)", re.DOTALL)  # what Kong's param_value (opentelemetry/utils.lua) renders as Lua
Format = str  # checked in __post_init__, so the message can say which formats exist
TimeoutMs = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 2)]


def _check_format(field: str, value: str, extra: tuple[str, ...] = ()) -> None:
    if value in FORMATS or value in extra:
        return
    if value in _UNSUPPORTED:
        raise ValueError(f"{field}: the {value} trace header format is not supported by the gateway; use one of "
                         f"{', '.join(FORMATS)}")
    raise ValueError(f"{field}: expected one of {', '.join(extra + FORMATS)}, got {value!r}")


class Propagation(msgspec.Struct, forbid_unknown_fields=True):
    extract: list[str] | None = None  # formats read from requests, the first found wins ([] : none)
    clear: list[str] | None = None  # header names removed from the upstream request after extraction
    inject: list[str] | None = None  # formats written upstream; "preserve": the one extracted (or default_format)
    default_format: str = "w3c"

    def __post_init__(self) -> None:
        for i, fmt in enumerate(self.extract or ()):
            if fmt == "b3-single":
                raise ValueError(f"propagation.extract[{i}]: b3 reads both b3 forms; b3-single is for inject")
            _check_format(f"propagation.extract[{i}]", fmt)
        for i, fmt in enumerate(self.inject or ()):
            _check_format(f"propagation.inject[{i}]", fmt, ("preserve",))
        _check_format("propagation.default_format", self.default_format)
        for i, name in enumerate(self.clear or ()):
            if not name or any(c in name for c in " :\r\n\t"):
                raise ValueError(f"propagation.clear[{i}]: invalid header name {name!r}")


class OpenTelemetryConfig(msgspec.Struct, forbid_unknown_fields=True):
    traces_endpoint: str | None = None  # OTLP/HTTP, e.g. http://collector:4318/v1/traces
    endpoint: str | None = None  # Kong's deprecated name for traces_endpoint
    logs_endpoint: str | None = None
    headers: dict[str, str] | None = None  # sent with every export (an APM's token)
    resource_attributes: dict[str, str] | None = None
    queue: QueueConfig = msgspec.field(default_factory=lambda: QueueConfig(max_batch_size=200))
    batch_span_count: Annotated[int, msgspec.Meta(ge=1)] | None = None  # deprecated: queue.max_batch_size
    batch_flush_delay: Annotated[int, msgspec.Meta(ge=0)] | None = None  # deprecated: queue.max_coalescing_delay
    connect_timeout: TimeoutMs = 1000
    send_timeout: TimeoutMs = 5000
    read_timeout: TimeoutMs = 5000
    http_response_header_for_traceid: str | None = None
    header_type: Literal["preserve", "ignore", "b3", "b3-single", "w3c", "jaeger", "ot", "aws", "gcp",
                         "datadog", "instana"] = "preserve"
    sampling_rate: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None  # unset: gateway.tracing_sampling_rate
    propagation: Propagation = msgspec.field(default_factory=Propagation)

    def __post_init__(self) -> None:
        if self.endpoint is not None:
            if self.traces_endpoint is not None and self.traces_endpoint != self.endpoint:
                raise ValueError("endpoint and traces_endpoint: endpoint is the deprecated name of traces_endpoint; "
                                 "set only one")
            self.traces_endpoint = self.endpoint
        if self.logs_endpoint is not None:
            raise ValueError("logs_endpoint: exporting logs over OTLP is not supported by the gateway (use file-log "
                             "or http-log); remove it")
        if self.traces_endpoint is None:
            raise ValueError("traces_endpoint: required (at least one of traces_endpoint and logs_endpoint, and the "
                             "gateway exports traces only)")
        try:
            Endpoint(self.traces_endpoint)
        except ValueError as e:
            raise ValueError(f"traces_endpoint: {e}") from None
        if self.header_type in _UNSUPPORTED:
            raise ValueError(f"header_type: the {self.header_type} trace header format is not supported by the "
                             f"gateway; use one of preserve, ignore, {', '.join(FORMATS)}")
        for name, value in (self.headers or {}).items():
            if not name or any(c in name for c in " :\r\n\t") or any(c in value for c in "\r\n\0"):
                raise ValueError(f"headers: invalid header {name!r}")
        for name, value in (self.resource_attributes or {}).items():
            if not name or value == "":
                raise ValueError("resource_attributes: length must be at least 1")  # Kong's string check
            if _TEMPLATE.search(value):
                raise ValueError(f"resource_attributes: {name}: templates ($(...)) are not rendered by the "
                                 "gateway; give the value itself")
        header = self.http_response_header_for_traceid
        if header is not None and (not header or any(c in header for c in " :\r\n\t")):
            raise ValueError(f"http_response_header_for_traceid: invalid header name {header!r}")
        # Kong's Queue.get_plugin_params: a deprecated value other than its old default wins over the queue's
        apply_legacy_queue(self.queue, None, None, self.batch_span_count, self.batch_flush_delay)
