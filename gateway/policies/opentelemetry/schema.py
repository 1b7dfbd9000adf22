"""Kong's opentelemetry plugin config (kong/plugins/opentelemetry/schema.lua, kong/observability/tracing/
propagation/schema.lua), with all of Kong's trace header formats (gateway.telemetry.propagation)."""

import re
from typing import Annotated, Literal

import msgspec

from gateway.config.errors import inline
from gateway.config.service_url import url_problem
from gateway.config.typedefs import header_name_problem
from gateway.telemetry.batch import QueueConfig, apply_legacy_queue
from gateway.telemetry.propagation import KONG_FORMATS
from gateway.telemetry.sender import request_uri_endpoint

_TEMPLATE = re.compile(r"\$\(.*\)", re.DOTALL)  # what Kong's param_value (opentelemetry/utils.lua) renders as Lua
Format = str  # checked in __post_init__, so the message can say which formats exist
TimeoutMs = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 2)]
_EXTRACT_FORMATS = tuple(fmt for fmt in KONG_FORMATS if fmt != "b3-single")  # Kong's extractors: b3 reads both forms


def refuse_empty(owner: msgspec.Struct, fields: tuple[str, ...]) -> None:
    """Kong's default len_min of 1 for a string field (kong/db/schema/init.lua): "" is refused, naming the field."""
    for field in fields:
        if getattr(owner, field) == "":
            raise ValueError(f"{field}: length must be at least 1")


def _check_format(field: str, value: str, extra: tuple[str, ...] = (), formats: tuple[str, ...] = KONG_FORMATS) -> None:
    if value in formats or value in extra:
        return
    raise ValueError(f"{field}: expected one of {', '.join(extra + formats)}, got {value!r}")


class Propagation(msgspec.Struct, forbid_unknown_fields=True):
    extract: list[str] | None = None  # formats read from requests, the first found wins ([] : none)
    clear: list[str] | None = None  # header names removed from the upstream request after extraction
    inject: list[str] | None = None  # formats written upstream; "preserve": the one extracted (or default_format)
    default_format: str = ""  # required in a propagation given (Kong's schema); the plugin's own without one

    def __post_init__(self) -> None:
        for i, fmt in enumerate(self.extract or ()):
            if fmt == "b3-single":
                raise ValueError(f"extract[{i}]: b3 reads both b3 forms; b3-single is for inject")
            _check_format(f"extract[{i}]", fmt, formats=_EXTRACT_FORMATS)
        for i, fmt in enumerate(self.inject or ()):
            _check_format(f"inject[{i}]", fmt, ("preserve",))
        for i, name in enumerate(self.clear or ()):  # typedefs' string, with kong.tools.http.validate_header_name
            if not name:
                raise ValueError(f"clear[{i}]: length must be at least 1")
            if problem := header_name_problem(name):
                raise ValueError(f"clear[{i}]: {problem}")
        if not self.default_format:
            raise ValueError("default_format: required field missing")
        _check_format("default_format", self.default_format)


def check_collector_url(field: str, url: str) -> None:
    """A collector's url as Kong takes it: typedefs.url's check (socket.url finds a host and a scheme), then
    lua-resty-http's own reading, which its senders' request_uri sends with (ValueError naming `field`)."""
    try:
        if problem := url_problem(url):
            raise ValueError(problem)
        request_uri_endpoint(url)
    except ValueError as e:
        raise ValueError(f"{field}: {e}") from None


# The plain string fields (no one_of), which Kong's schema refuses empty
_TEXT_FIELDS = ("traces_endpoint", "endpoint", "logs_endpoint", "http_response_header_for_traceid")


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
                         "datadog"] = "preserve"
    sampling_rate: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None  # unset: gateway.tracing_sampling_rate
    propagation: Propagation = msgspec.field(default_factory=lambda: Propagation(default_format="w3c"))

    def __post_init__(self) -> None:
        refuse_empty(self, _TEXT_FIELDS)
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
        check_collector_url("endpoint" if self.endpoint is not None else "traces_endpoint", self.traces_endpoint)
        for name, value in (self.headers or {}).items():
            if not name:
                raise ValueError("headers: length must be at least 1")
            if not value:
                raise ValueError(f"headers: {inline(name)}: length must be at least 1")
            if problem := header_name_problem(name):  # (the map's keys are Kong's typedefs.header_name)
                raise ValueError(f"headers: {problem}")
            if any(c in value for c in "\r\n\0"):
                raise ValueError(f"headers: invalid header {name!r}")
        for name, value in (self.resource_attributes or {}).items():
            if not name or value == "":
                raise ValueError("resource_attributes: length must be at least 1")  # Kong's string check
            if _TEMPLATE.search(value):
                raise ValueError(f"resource_attributes: {inline(name)}: templates ($(...)) are not rendered by the "
                                 "gateway; give the value itself")
        header = self.http_response_header_for_traceid
        if header is not None and any(c in header for c in " :\r\n\t"):
            raise ValueError(f"http_response_header_for_traceid: invalid header name {header!r}")
        # Kong's Queue.get_plugin_params: a deprecated value other than its old default wins over the queue's
        apply_legacy_queue(self.queue, None, None, self.batch_span_count, self.batch_flush_delay)
