"""OTLP/HTTP trace export encoding with opentelemetry-proto (protobuf), as Kong's (kong/observability/otlp/init.lua):
span records (made by the opentelemetry plugin's queue task) become `Span` messages, and a batch one
ExportTraceServiceRequest.

Imported only by a process that has an opentelemetry plugin (protobuf takes ~70 ms to import)."""

from __future__ import annotations

from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from gateway.telemetry.tracing import SpanRecord

CONTENT_TYPE = b"application/x-protobuf"
# Kong's instrumentation scope (kong/observability/otlp/init.lua pb_memo_trace)
SCOPE, SCOPE_VERSION = "kong-internal", "0.1.0"


def any_value(key: str, value: Any) -> AnyValue:
    """Kong's transform_value: http.status_code an int, other numbers doubles (Lua has one number type), booleans,
    strings."""
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, (int, float)):
        return AnyValue(int_value=int(value)) if key == "http.status_code" else AnyValue(double_value=value)
    return AnyValue(string_value=str(value))


def span_message(record: SpanRecord) -> Span:
    """The protobuf Span of a record (Kong's transform_span; made by the queue's task, off the request path)."""
    span = Span(trace_id=record.trace_id.to_bytes(16, "big"), span_id=record.span_id.to_bytes(8, "big"),
                parent_span_id=record.parent_id.to_bytes(8, "big") if record.parent_id else b"", name=record.name,
                kind=record.kind,  # type: ignore[arg-type]  # SpanKind's values are ints at run time
                start_time_unix_nano=record.start_ns, end_time_unix_nano=record.end_ns,
                attributes=[KeyValue(key=k, value=any_value(k, v)) for k, v in record.attributes if v is not None])
    if record.status:
        span.status.CopyFrom(Status(code=record.status))  # type: ignore[arg-type]  # StatusCode: an int
    return span


def resource(attributes: dict[str, Any]) -> Resource:
    return Resource(attributes=[KeyValue(key=k, value=any_value(k, v)) for k, v in attributes.items()])


def export_request(spans: list[Span], res: Resource) -> bytes:
    """One ExportTraceServiceRequest holding `spans` under one resource and Kong's instrumentation scope."""
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.CopyFrom(res)
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = SCOPE
    scope_spans.scope.version = SCOPE_VERSION
    scope_spans.spans.extend(spans)
    return request.SerializeToString()
