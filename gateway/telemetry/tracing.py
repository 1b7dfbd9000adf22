"""Trace context in HTTP headers: extraction from and injection into requests, in the formats Kong's propagation
module names w3c, b3, b3-single and jaeger, and Kong's sampler.

    w3c        traceparent: 00-<trace id, 32 hex>-<parent span id, 16 hex>-<flags, 2 hex; 01 = sampled>
    b3         X-B3-TraceId (16 or 32 hex), X-B3-SpanId, X-B3-ParentSpanId, X-B3-Sampled (1/0), X-B3-Flags (1)
    b3-single  b3: <trace id>-<span id>[-<1|0|d>[-<parent span id>]], or b3: <1|0|d> alone
    jaeger     uber-trace-id: <trace id>:<span id>:<parent span id>:<flags, hex; bit 1 = sampled>

Ids are integers (0 = absent). A header that does not parse is ignored, as Kong's extractors ignore it, and the
next format is tried.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable
from typing import Any

from gateway.http.codec import Headers

W3C, B3, B3_SINGLE, JAEGER = "w3c", "b3", "b3-single", "jaeger"
SERVER, CLIENT = 2, 3  # OTLP's SpanKind values
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


class Extracted:
    """What a request's tracing headers said."""

    __slots__ = ("format", "trace_id", "span_id", "sampled", "single")

    def __init__(self, fmt: str, trace_id: int, span_id: int, sampled: bool | None, single: bool = False) -> None:
        self.format = fmt
        self.trace_id = trace_id
        self.span_id = span_id  # the caller's span: the parent of ours
        self.sampled = sampled  # None: the caller did not decide
        self.single = single  # b3 came as the single header


def _hex_id(value: bytes, lengths: tuple[int, ...], limit: int) -> int:
    if len(value) not in lengths or not _HEX.issuperset(value):
        return 0
    n = int(value, 16)
    return n if 0 < n <= limit else 0


def _w3c(values: dict[bytes, bytes]) -> Extracted | None:
    value = values.get(b"traceparent")
    if value is None:
        return None
    parts = value.strip().split(b"-")
    if len(parts) < 4 or parts[0] == b"ff" or len(parts[0]) != 2 or (parts[0] == b"00" and len(parts) != 4):
        return None
    trace_id = _hex_id(parts[1], (32,), _MAX_TRACE)
    span_id = _hex_id(parts[2], (16,), _MAX_SPAN)
    if not trace_id or not span_id or len(parts[3]) != 2 or not _HEX.issuperset(parts[3]):
        return None
    return Extracted(W3C, trace_id, span_id, bool(int(parts[3], 16) & 1))


def _b3_sampled(value: bytes | None) -> bool | None:
    if value is None:
        return None
    value = value.strip().lower()
    if value in (b"1", b"true", b"d"):
        return True
    if value in (b"0", b"false"):
        return False
    return None


def _b3(values: dict[bytes, bytes]) -> Extracted | None:
    single = values.get(b"b3")
    if single is not None:
        parts = single.strip().split(b"-")
        if len(parts) == 1:  # only a sampling decision: no context to continue
            return None
        if len(parts) > 4:
            return None
        trace_id = _hex_id(parts[0], (16, 32), _MAX_TRACE)
        span_id = _hex_id(parts[1], (16,), _MAX_SPAN)
        if not trace_id or not span_id:
            return None
        return Extracted(B3, trace_id, span_id, _b3_sampled(parts[2]) if len(parts) > 2 else None, single=True)
    tid = values.get(b"x-b3-traceid")
    sid = values.get(b"x-b3-spanid")
    if tid is None or sid is None:
        return None
    trace_id = _hex_id(tid.strip(), (16, 32), _MAX_TRACE)
    span_id = _hex_id(sid.strip(), (16,), _MAX_SPAN)
    if not trace_id or not span_id:
        return None
    sampled = _b3_sampled(values.get(b"x-b3-sampled"))
    if values.get(b"x-b3-flags", b"").strip() == b"1":
        sampled = True
    return Extracted(B3, trace_id, span_id, sampled)


def _jaeger(values: dict[bytes, bytes]) -> Extracted | None:
    value = values.get(b"uber-trace-id")
    if value is None:
        return None
    parts = value.strip().split(b":")
    if len(parts) != 4:
        return None
    trace_id = _hex_id(parts[0].rjust(16, b"0") if len(parts[0]) < 16 else parts[0], (16, 32), _MAX_TRACE)
    span_id = _hex_id(parts[1].rjust(16, b"0"), (16,), _MAX_SPAN)
    if not trace_id or not span_id or not parts[3] or not _HEX.issuperset(parts[3]):
        return None
    return Extracted(JAEGER, trace_id, span_id, bool(int(parts[3], 16) & 1))


_EXTRACTORS = {W3C: _w3c, B3: _b3, JAEGER: _jaeger}


def extract(headers: Headers, formats: tuple[str, ...]) -> tuple[Extracted | None, bool]:
    """(the first of `formats` found in the headers, whether any tracing header is present at all)."""
    values: dict[bytes, bytes] | None = None
    for name, value in headers:
        if name in TRACE_HEADERS:
            if values is None:
                values = {}
            values.setdefault(name, value)
    if values is None:
        return None, False
    for fmt in formats:
        found = _EXTRACTORS[fmt](values)
        if found is not None:
            return found, True
    return None, True


def inject(fmt: str, trace_id: int, span_id: int, parent_id: int, sampled: bool) -> Headers:
    """The headers that carry (trace_id, span_id) to the next hop in format `fmt`; parent_id is span_id's parent
    (b3 and jaeger say it)."""
    flag = b"1" if sampled else b"0"
    if fmt == W3C:
        return [(b"traceparent", b"00-%032x-%016x-%s" % (trace_id, span_id, b"01" if sampled else b"00"))]
    if fmt == B3:
        out = [(b"x-b3-traceid", b"%032x" % trace_id), (b"x-b3-spanid", b"%016x" % span_id)]
        if parent_id:
            out.append((b"x-b3-parentspanid", b"%016x" % parent_id))
        out.append((b"x-b3-sampled", flag))
        return out
    if fmt == B3_SINGLE:
        value = b"%032x-%016x-%s" % (trace_id, span_id, flag)
        return [(b"b3", value + (b"-%016x" % parent_id if parent_id else b""))]
    if fmt == JAEGER:
        return [(b"uber-trace-id", b"%032x:%016x:%x:%s" % (trace_id, span_id, parent_id, b"01" if sampled else
                                                            b"00"))]
    raise ValueError(f"unknown trace header format {fmt!r}")


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
    """One finished span as the log step records it: ids, name, kind, times (ns since the epoch), attributes."""

    __slots__ = ("trace_id", "span_id", "parent_id", "name", "kind", "start_ns", "end_ns", "attributes", "error")

    def __init__(self, trace_id: int, span_id: int, parent_id: int, name: str, kind: int, start_ns: int,
                 end_ns: int, attributes: list[tuple[str, Any]], error: str | None = None) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id
        self.name = name
        self.kind = kind
        self.start_ns = start_ns
        self.end_ns = end_ns
        self.attributes = attributes
        self.error = error  # a description when the span failed (status ERROR)


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
