"""Kong's zipkin plugin config (kong/plugins/zipkin/schema.lua), with Kong's queue (typedefs.queue) and propagation
(typedefs.propagation, default_format b3), all of Kong's trace header formats (gateway.telemetry.propagation)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from gateway.config.errors import inline
from gateway.policies.opentelemetry.schema import Propagation, TimeoutMs, check_collector_url, refuse_empty
from gateway.telemetry.batch import QueueConfig

# Tags the plugin sets itself: a static tag may not take their names (Kong's PROTECTED_TAGS)
PROTECTED_TAGS = ("error", "http.method", "http.path", "http.status_code", "kong.balancer.state", "kong.balancer.try",
                  "kong.consumer", "kong.credential", "kong.node.id", "kong.route", "kong.service", "lc",
                  "peer.hostname")
_HEADER_CHARS = frozenset(" :\r\n\t\0")
# The plain string fields (no one_of), which Kong's schema refuses empty
_TEXT_FIELDS = ("local_service_name", "http_endpoint", "default_service_name", "tags_header",
                "http_response_header_for_traceid")


class StaticTag(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    value: str

    def __post_init__(self) -> None:
        if self.name in PROTECTED_TAGS:
            raise ValueError(f"name: must not be one of: {', '.join(PROTECTED_TAGS)}")
        refuse_empty(self, ("name", "value"))


class ZipkinConfig(msgspec.Struct, forbid_unknown_fields=True):
    local_service_name: str = "kong"  # localEndpoint.serviceName of every span
    http_endpoint: str | None = None  # Zipkin's POST /api/v2/spans; null: headers are propagated, nothing is sent
    sample_ratio: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.001  # for requests whose caller did not decide
    default_service_name: str | None = None  # remoteEndpoint.serviceName of spans without a named service
    include_credential: bool = True  # tag kong.credential
    traceid_byte_count: Literal[8, 16] = 16  # the size of the trace ids the plugin starts
    header_type: Literal["preserve", "ignore", "b3", "b3-single", "w3c", "jaeger", "ot", "aws", "datadog",
                         "gcp"] = "preserve"  # deprecated: propagation
    default_header_type: Literal["b3", "b3-single", "w3c", "jaeger", "ot", "aws", "datadog",
                                 "gcp"] = "b3"  # deprecated: propagation.default_format
    tags_header: str = "Zipkin-Tags"  # "name=value; name=value" tags a request brings for its span
    static_tags: list[StaticTag] | None = None
    http_span_name: Literal["method", "method_path"] = "method"
    connect_timeout: TimeoutMs = 2000
    send_timeout: TimeoutMs = 5000
    read_timeout: TimeoutMs = 5000
    http_response_header_for_traceid: str | None = None
    phase_duration_flavor: Literal["annotations", "tags"] = "annotations"
    queue: QueueConfig = msgspec.field(default_factory=QueueConfig)
    propagation: Propagation = msgspec.field(default_factory=lambda: Propagation(default_format="b3"))

    def __post_init__(self) -> None:
        refuse_empty(self, _TEXT_FIELDS)
        if self.http_endpoint is not None:
            check_collector_url("http_endpoint", self.http_endpoint)
        seen: set[str] = set()
        for tag in self.static_tags or ():
            if tag.name in seen:
                raise ValueError(f"static_tags: repeated tags are not allowed: {inline(tag.name)}")
            seen.add(tag.name)
        header = self.http_response_header_for_traceid
        if header is not None and _HEADER_CHARS.intersection(header):
            raise ValueError(f"http_response_header_for_traceid: invalid header name {header!r}")
