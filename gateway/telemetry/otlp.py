"""OTLP/HTTP trace export encoding with opentelemetry-proto (protobuf): span records made on the request path are
turned into `Span` messages by the queue's task, and a batch into one ExportTraceServiceRequest.

Imported only by a process that has an opentelemetry plugin (protobuf takes ~70 ms to import)."""

from __future__ import annotations

from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from gateway.telemetry.tracing import SpanRecord

CONTENT_TYPE = b"application/x-protobuf"
SCOPE = "mcp-gateway"


def any_value(value: Any) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    return AnyValue(string_value=str(value))


def span_message(record: SpanRecord) -> Span:
    """The protobuf Span of a record (the queue's formatter: runs off the request path)."""
    span = Span(trace_id=record.trace_id.to_bytes(16, "big"), span_id=record.span_id.to_bytes(8, "big"),
                parent_span_id=record.parent_id.to_bytes(8, "big") if record.parent_id else b"", name=record.name,
                kind=record.kind,  # type: ignore[arg-type]  # SpanKind's values are ints at run time
                start_time_unix_nano=record.start_ns, end_time_unix_nano=record.end_ns,
                attributes=[KeyValue(key=k, value=any_value(v)) for k, v in record.attributes if v is not None])
    if record.error is not None:
        span.status.CopyFrom(Status(code=Status.STATUS_CODE_ERROR, message=record.error))
    return span


def resource(attributes: dict[str, Any]) -> Resource:
    return Resource(attributes=[KeyValue(key=k, value=any_value(v)) for k, v in attributes.items()])


def export_request(spans: list[Span], res: Resource, version: str = "") -> bytes:
    """One ExportTraceServiceRequest holding `spans` under one resource and the gateway's instrumentation scope."""
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.CopyFrom(res)
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = SCOPE
    scope_spans.scope.version = version
    scope_spans.spans.extend(spans)
    return request.SerializeToString()
