"""OTLP/HTTP trace export encoding, as Kong's (kong/observability/otlp/init.lua): span records (made by the
opentelemetry plugin's queue task) become opentelemetry-proto `Span` messages, and a batch one
ExportTraceServiceRequest. The protobuf wire format is written directly (bytes joined, fields in field-number
order, proto3's defaults left out: what protobuf's serializer writes, byte for byte), so no message objects are
made per span; a key's bytes are made once.

    ExportTraceServiceRequest  1 resource_spans
    ResourceSpans              1 resource, 2 scope_spans
    ScopeSpans                 1 scope (InstrumentationScope: 1 name, 2 version), 2 spans
    Span                       1 trace_id, 2 span_id, 4 parent_span_id, 5 name, 6 kind, 7 start_time_unix_nano
                               (fixed64), 8 end_time_unix_nano (fixed64), 9 attributes, 15 status (Status: 3 code)
    KeyValue                   1 key, 2 value (AnyValue: 1 string, 2 bool, 3 int, 4 double)
"""

from __future__ import annotations

from struct import Struct
from typing import Any

from gateway.memo import Derived
from gateway.telemetry.tracing import SpanRecord

CONTENT_TYPE = b"application/x-protobuf"
# Kong's instrumentation scope (kong/observability/otlp/init.lua pb_memo_trace)
SCOPE, SCOPE_VERSION = "kong-internal", "0.1.0"
_FIXED64 = Struct("<Q").pack
_DOUBLE = Struct("<d").pack
_SPAN_ID = Struct(">Q").pack
_BOOLS = (b"\x10\x00", b"\x10\x01")  # AnyValue.bool_value false, true


def varint(n: int) -> bytes:
    """A protobuf varint; a negative number as its 64-bit two's complement (int64's ten bytes)."""
    if 0 <= n < 0x80:
        return bytes((n,))
    n &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, data: bytes) -> bytes:
    """A length-delimited field: its tag byte, its length, its bytes."""
    n = len(data)
    return tag + (bytes((n,)) if n < 0x80 else varint(n)) + data


def _key(key: str) -> bytes:
    """KeyValue.key's field (none for an empty key, proto3's default)."""
    return _field(b"\x0a", key.encode()) if key else b""


_KEYS: Derived[str, bytes] = Derived(_key, 1024)


def any_value(key: str, value: Any) -> bytes:
    """Kong's transform_value, as AnyValue's bytes: http.status_code an int, other numbers doubles (Lua has one
    number type), booleans, strings."""
    if type(value) is str:
        return _field(b"\x0a", value.encode())
    if isinstance(value, bool):
        return _BOOLS[value]
    if isinstance(value, (int, float)):
        if key == "http.status_code":
            return b"\x18" + varint(int(value))
        return b"\x21" + _DOUBLE(value)
    return _field(b"\x0a", str(value).encode())


def attribute(key: str, value: Any) -> bytes:
    """A KeyValue's field (tag 9 in a Span, 1 in a Resource: the caller's tag) without its tag: length and bytes."""
    data = _KEYS[key] + _field(b"\x12", any_value(key, value))
    n = len(data)
    return (bytes((n,)) if n < 0x80 else varint(n)) + data


class SpanBytes(bytes):
    """An encoded Span as the queue holds it: not a string to the queue (Kong queues the span as a table, which
    queue.max_bytes does not count)."""

    __slots__ = ()


def span_message(record: SpanRecord) -> SpanBytes:
    """A record as an encoded Span (Kong's transform_span; made by the queue's task, off the request path)."""
    parts = [b"\x0a\x10", record.trace_id.to_bytes(16, "big"), b"\x12\x08", _SPAN_ID(record.span_id)]
    if record.parent_id:
        parts += (b"\x22\x08", _SPAN_ID(record.parent_id))
    if record.name:
        parts.append(_field(b"\x2a", record.name.encode()))
    if record.kind:
        parts += (b"\x30", varint(record.kind))
    if record.start_ns:
        parts += (b"\x39", _FIXED64(record.start_ns))
    if record.end_ns:
        parts += (b"\x41", _FIXED64(record.end_ns))
    for key, value in record.attributes:
        if value is not None:
            parts += (b"\x4a", attribute(key, value))
    if record.status:
        parts.append(_field(b"\x7a", b"\x18" + varint(record.status)))
    return SpanBytes(b"".join(parts))


def resource(attributes: dict[str, Any]) -> bytes:
    """An encoded Resource with these attributes."""
    return b"".join(b"\x0a" + attribute(k, v) for k, v in attributes.items())


_SCOPE = _field(b"\x0a", _field(b"\x0a", SCOPE.encode()) + _field(b"\x12", SCOPE_VERSION.encode()))


def export_request(spans: list[bytes], res: bytes) -> bytes:
    """One ExportTraceServiceRequest holding `spans` (encoded) under one resource (encoded) and Kong's
    instrumentation scope."""
    scope_spans = _SCOPE + b"".join([_field(b"\x12", span) for span in spans])
    return _field(b"\x0a", _field(b"\x0a", res) + _field(b"\x12", scope_spans))
