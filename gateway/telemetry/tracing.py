"""The trace context formats Kong's propagation module names w3c, b3, b3-single and jaeger (their headers; read and
written by gateway.telemetry.propagation), trace and span ids, Kong's sampler, and a span's record.

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
from typing import Any

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
