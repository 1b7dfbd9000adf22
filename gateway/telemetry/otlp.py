"""OTLP/HTTP trace export encoding, as Kong's (kong/observability/otlp/init.lua): span records (made by the
opentelemetry plugin's queue task) become opentelemetry-proto `Span` messages, and a batch one
ExportTraceServiceRequest. The protobuf wire format is written directly (bytes joined, fields in field-number
order, proto3's defaults left out: what protobuf's serializer writes, byte for byte), so no message objects are
made per span; a key's bytes are made once. A span is joined from parts (`span`): its trace's field, its kind's name
and kind, and attribute fields the caller may keep (the opentelemetry plugin encodes what repeats from request to
request once); `span_message` encodes a whole SpanRecord.

    ExportTraceServiceRequest  1 resource_spans
    ResourceSpans              1 resource, 2 scope_spans
    ScopeSpans                 1 scope (InstrumentationScope: 1 name, 2 version), 2 spans
    Span                       1 trace_id, 2 span_id, 4 parent_span_id, 5 name, 6 kind, 7 start_time_unix_nano
                               (fixed64), 8 end_time_unix_nano (fixed64), 9 attributes, 15 status (Status: 3 code)
    KeyValue                   1 key, 2 value (AnyValue: 1 string, 2 bool, 3 int, 4 double, 5 array (ArrayValue:
                               1 values), 6 kvlist (KeyValueList: 1 values))
"""

from __future__ import annotations

from itertools import chain
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
_IDS = Struct(">HQHQ").pack  # span_id's tag and bytes, parent_span_id's (ids are big-endian bytes)
_TIMES = Struct("<BQBQ").pack  # start_time_unix_nano's tag and fixed64, end_time_unix_nano's
_BOOLS = (b"\x10\x00", b"\x10\x01")  # AnyValue.bool_value false, true


def varint(n: int) -> bytes:
    """A protobuf varint; a negative number as its 64-bit two's complement (int64's ten bytes)."""
    if 0 <= n < 0x80:
        return bytes((n,))
    if 0 < n < 0x4000:  # a span's length, most often
        return bytes((n & 0x7F | 0x80, n >> 7))
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
    number type), booleans, strings; a list an ArrayValue of its items (each without a key), a dict a KeyValueList
    (each entry under its own key, so a nested http.status_code is an int too)."""
    if type(value) is str:
        return _field(b"\x0a", value.encode())
    if isinstance(value, bool):
        return _BOOLS[value]
    if isinstance(value, (int, float)):
        if key == "http.status_code":
            return b"\x18" + varint(int(value))
        return b"\x21" + _DOUBLE(value)
    if isinstance(value, (list, tuple)):  # AnyValue.array_value (5): ArrayValue.values (1)
        return _field(b"\x2a", b"".join([_field(b"\x0a", any_value("", item)) for item in value]))
    if isinstance(value, dict):  # AnyValue.kvlist_value (6): KeyValueList.values (1)
        return _field(b"\x32", b"".join([b"\x0a" + attribute(k, v) for k, v in value.items()]))
    return _field(b"\x0a", str(value).encode())


def attribute(key: str, value: Any) -> bytes:
    """A KeyValue's field (tag 9 in a Span, 1 in a Resource: the caller's tag) without its tag: length and bytes."""
    data = _KEYS[key] + _field(b"\x12", any_value(key, value))
    n = len(data)
    return (bytes((n,)) if n < 0x80 else varint(n)) + data


def key_value(key: str, value: Any) -> bytes:
    """A Span's attribute field (tag 9, length, KeyValue); none for a None value (Kong's span leaves it out)."""
    return b"" if value is None else b"\x4a" + attribute(key, value)


def _length(n: int) -> bytes:
    return bytes((n,)) if n < 0x80 else varint(n)


def _string_head(key: tuple[str, int]) -> bytes:
    """What a string attribute's field holds before the value's `n` bytes: its tag, the lengths, the key."""
    name, n = key
    head = _KEYS[name] + b"\x12" + _length(1 + len(_length(n)) + n) + b"\x0a" + _length(n)
    return b"\x4a" + _length(len(head) + n) + head


_STRING_HEADS: Derived[tuple[str, int], bytes] = Derived(_string_head, 1024)


def string_key_value(key: str, value: bytes) -> bytes:
    """key_value(key, value.decode()) for a string attribute already encoded (UTF-8): a URL, a request id (their
    fields' heads made once per key and length)."""
    return _STRING_HEADS[key, len(value)] + value


class SpanBytes(bytes):
    """An encoded Span as the queue holds it: not a string to the queue (Kong queues the span as a table, which
    queue.max_bytes does not count)."""

    __slots__ = ()


def trace_field(trace_id: int) -> bytes:
    """A Span's trace_id field (the same for every span of a trace: made once)."""
    return b"\x0a\x10" + trace_id.to_bytes(16, "big")


def named(name: str, kind: int) -> bytes:
    """A Span's name and kind fields (the same for every span of a kind: made once)."""
    return (_field(b"\x2a", name.encode()) if name else b"") + (b"\x30" + varint(kind) if kind else b"")


def span(trace: bytes, span_id: int, parent_id: int, name_kind: bytes, start_ns: int, end_ns: int,
         attributes: bytes, status: int = 0) -> SpanBytes:
    """An encoded Span from its parts: `trace` (trace_field), `name_kind` (named) and `attributes` (key_value's
    fields, joined) encoded already, so what a span of a kind shares with the others is made once."""
    ids = _IDS(0x1208, span_id, 0x2208, parent_id) if parent_id else b"\x12\x08" + _SPAN_ID(span_id)
    if start_ns and end_ns:
        times = _TIMES(0x39, start_ns, 0x41, end_ns)
    else:
        times = (b"\x39" + _FIXED64(start_ns) if start_ns else b"") + (b"\x41" + _FIXED64(end_ns) if end_ns else b"")
    if status:
        return SpanBytes(b"".join((trace, ids, name_kind, times, attributes, _status(status))))
    return SpanBytes(b"".join((trace, ids, name_kind, times, attributes)))


def _status(code: int) -> bytes:
    """A Span's status field (Status.code)."""
    return _field(b"\x7a", b"\x18" + varint(code))


def span_message(record: SpanRecord) -> SpanBytes:
    """A record as an encoded Span (Kong's transform_span)."""
    return span(trace_field(record.trace_id), record.span_id, record.parent_id, named(record.name, record.kind),
                record.start_ns, record.end_ns, b"".join([key_value(k, v) for k, v in record.attributes]),
                record.status)


def resource(attributes: dict[str, Any]) -> bytes:
    """An encoded Resource with these attributes."""
    return b"".join(b"\x0a" + attribute(k, v) for k, v in attributes.items())


_SCOPE = _field(b"\x0a", _field(b"\x0a", SCOPE.encode()) + _field(b"\x12", SCOPE_VERSION.encode()))


def _span_head(n: int) -> bytes:
    """ScopeSpans.spans's tag and an `n`-byte span's length."""
    return b"\x12" + varint(n)


_SPAN_HEADS: Derived[int, bytes] = Derived(_span_head, 1024)  # spans of a kind are of a few lengths


def export_request(spans: list[bytes], res: bytes) -> bytes:
    """One ExportTraceServiceRequest holding `spans` (encoded) under one resource (encoded) and Kong's
    instrumentation scope (the spans framed without a Python call each)."""
    heads = map(_SPAN_HEADS.__getitem__, map(len, spans))
    scope_spans = b"".join([_SCOPE, *chain.from_iterable(zip(heads, spans, strict=True))])
    resource_field = _field(b"\x0a", res)
    scope_head = b"\x12" + varint(len(scope_spans))
    return b"".join((b"\x0a", varint(len(resource_field) + len(scope_head) + len(scope_spans)), resource_field,
                     scope_head, scope_spans))
