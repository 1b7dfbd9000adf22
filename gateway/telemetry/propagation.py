"""Kong's trace context propagation (kong/observability/tracing/propagation/: its extractors, injectors and
get_plugin_params) as the zipkin and opentelemetry plugins apply it, for the formats the gateway reads and writes:
w3c, b3 (with b3-single) and jaeger. Sans-I/O: request headers in, a `Context` out; a context in, header lines out.

These are Kong's rules:
- b3 is found whenever one of its headers, or `tracestate`, is there, even without ids: `x-b3-sampled: 1` or
  `b3: 1` alone decides sampling, a trace id without a span id continues the trace, and the formats after b3 in
  `extract` are not tried then (so with the default order a traceparent next to a tracestate is not read).
- ids keep their size: a 64-bit b3 or jaeger trace id goes out 64-bit; x-b3-flags (debug) is passed on as it came.
- traceparent must be version 00 with exactly four fields; jaeger's ids may be shorter than 16 or 32 hex digits.
- jaeger's baggage (`uberctx-*`) is read and written again (URI-unescaped, then escaped).
Ids are integers; None where a header did not give one (an id of 0 is an id here, as a string of zeros is in Kong).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote_from_bytes, unquote_to_bytes

from gateway.http.codec import Headers
from gateway.telemetry.tracing import B3, B3_SINGLE, HEADERS, JAEGER, W3C, formats_out

PRESERVE = "preserve"
# Kong's extraction order for the deprecated header_type (all but ignore): b3, w3c, jaeger, then ot, datadog, aws,
# gcp and instana, which the gateway does not read.
LEGACY_EXTRACT = (B3, W3C, JAEGER)
# What a request is scanned for: every name the extractors read (jaeger's baggage is looked for once it is found).
TRACE_HEADERS = frozenset(name for names in HEADERS.values() for name in names) | {b"tracestate"}
MAX_SPAN = (1 << 64) - 1
MAX_TRACE = (1 << 128) - 1
_SIZED = (B3, B3_SINGLE, JAEGER)  # injectors that may keep an incoming 8-byte trace id (w3c's are 16 bytes)
_HEX = frozenset(b"0123456789abcdefABCDEF")
_B3_NAMES = (b"b3", b"tracestate", b"x-b3-traceid", b"x-b3-spanid", b"x-b3-parentspanid", b"x-b3-sampled",
             b"x-b3-flags")
_B3_SINGLE = re.compile(rb"([0-9a-fA-F]+)-([0-9a-fA-F]{16})-?([01d]?)-?([0-9a-fA-F]*)")
_TRACESTATE_B3 = re.compile(rb"b3=(.+)", re.DOTALL)
_W3C = re.compile(rb"([0-9a-fA-F]+)-([0-9a-fA-F]+)-([0-9a-fA-F]+)-([0-9a-fA-F]+)")
_JAEGER = re.compile(rb"([0-9a-fA-F]+):([0-9a-fA-F]+):([0-9a-fA-F]+):([0-9a-fA-F]+)")
_BAGGAGE = b"uberctx-"
_MANY = b"\0several"  # a header given more than once: a table in Kong, which no extractor takes as a value

Values = dict[bytes, list[bytes]]


class Params:
    """Kong's propagation parameters of one plugin instance: formats to read (None: none), to write (None: none),
    header names to clear, the format "preserve" means when nothing was read."""

    __slots__ = ("extract", "inject", "clear", "default_format")

    def __init__(self, extract: tuple[str, ...] | None, inject: tuple[str, ...] | None, clear: frozenset[bytes],
                 default_format: str) -> None:
        self.extract = extract or None
        self.inject = inject or None
        self.clear = clear
        self.default_format = default_format


def plugin_params(propagation: Any, header_type: str, default_header_type: str) -> Params:
    """Kong's get_plugin_params: a propagation block with extract, clear or inject set (an empty list counts) is
    used as it is; otherwise the deprecated header_type and default_header_type decide."""
    if propagation.extract is not None or propagation.clear is not None or propagation.inject is not None:
        clear = frozenset(name.lower().encode() for name in propagation.clear or ())
        return Params(_tuple(propagation.extract), _tuple(propagation.inject), clear, propagation.default_format)
    if header_type == PRESERVE:
        return Params(LEGACY_EXTRACT, (PRESERVE,), frozenset(), default_header_type)
    if header_type == "ignore":
        return Params(None, (default_header_type,), frozenset(), default_header_type)
    return Params(LEGACY_EXTRACT, (PRESERVE, header_type), frozenset(), default_header_type)


def _tuple(formats: list[str] | None) -> tuple[str, ...] | None:
    return None if formats is None else tuple(formats)


class Context:
    """What an extractor read (Kong's extracted tracing context). `trace_size`: the trace id's size in bytes as it
    came (0: no trace id); `reuse`: the format shares the caller's span (b3, jaeger), so `span_id` is the request's
    own span and `parent_id` its parent, where for w3c `span_id` is the caller's span; `single`: b3 came as the
    single header; `flags`: X-B3-Flags as it came ("1": debug); `baggage`: jaeger's, unescaped."""

    __slots__ = ("format", "trace_id", "trace_size", "span_id", "parent_id", "sampled", "flags", "single", "reuse",
                 "baggage")

    def __init__(self, fmt: str, trace_id: int | None, trace_size: int, span_id: int | None, parent_id: int | None,
                 sampled: bool | None, *, flags: bytes | None = None, single: bool = False, reuse: bool = False,
                 baggage: list[tuple[bytes, bytes]] | None = None) -> None:
        self.format = fmt
        self.trace_id = trace_id
        self.trace_size = trace_size
        self.span_id = span_id
        self.parent_id = parent_id
        self.sampled = sampled  # None: the caller did not decide
        self.flags = flags
        self.single = single
        self.reuse = reuse
        self.baggage = baggage


def scan(headers: Headers, names: frozenset[bytes]) -> Values | None:
    """The values of the headers named in `names` (lower case), in order; None when there is none (one pass)."""
    values: Values | None = None
    for name, value in headers:
        if name in names:
            if values is None:
                values = {name: [value]}
            else:
                values.setdefault(name, []).append(value)
    return values


def extract(values: Values, headers: Headers, formats: tuple[str, ...]) -> Context | None:
    """The context of the first of `formats` whose extractor finds one (Kong: the first that returns anything)."""
    for fmt in formats:
        found = _EXTRACTORS[fmt](values, headers)
        if found is not None:
            return found
    return None


def _single(values: Values, name: bytes) -> bytes | None:
    found = values.get(name)
    if found is None:
        return None
    return found[0] if len(found) == 1 else _MANY


def _fields(values: Values, name: bytes, pattern: re.Pattern[bytes]) -> tuple[bytes, ...] | None:
    """The four fields of a header that must be there once, not empty, and match `pattern`."""
    value = _single(values, name)
    m = pattern.fullmatch(value) if value else None
    return m.groups() if m is not None else None


def _w3c(values: Values, headers: Headers) -> Context | None:
    fields = _fields(values, b"traceparent", _W3C)
    if fields is None:
        return None
    version, trace, parent, flags = fields
    if version != b"00" or len(trace) != 32 or len(parent) != 16 or len(flags) != 2:
        return None
    trace_id, span_id = int(trace, 16), int(parent, 16)
    if not trace_id or not span_id:
        return None
    return Context(W3C, trace_id, 16, span_id, None, bool(int(flags, 16) & 1))


def _jaeger(values: Values, headers: Headers) -> Context | None:
    fields = _fields(values, b"uber-trace-id", _JAEGER)
    if fields is None:
        return None
    trace, span, parent, flags = fields
    if len(trace) > 32 or len(span) > 16 or len(flags) > 2:
        return None
    trace_id, span_id = int(trace, 16), int(span, 16)
    if not trace_id or not span_id:
        return None
    return Context(JAEGER, trace_id, (len(trace) + 1) // 2, span_id, int(parent, 16) & MAX_SPAN,
                   bool(int(flags, 16) & 1), reuse=True, baggage=_baggage(headers))


def _baggage(headers: Headers) -> list[tuple[bytes, bytes]] | None:
    """jaeger's uberctx-<key> headers: (key, value unescaped as ngx.unescape_uri does, "+" as a space)."""
    found = {name[len(_BAGGAGE):]: unquote_to_bytes(value.replace(b"+", b" "))
             for name, value in headers if name.startswith(_BAGGAGE)}
    return list(found.items()) or None


def _b3(values: Values, headers: Headers) -> Context | None:
    if not any(name in values for name in _B3_NAMES):
        return None
    trace = span = parent = None
    sampled = flags = None
    single = False
    header = _b3_single_header(values)
    if header is not None:
        single = True
        sampled, flags, ids = _read_single(header)
        if ids is not None:
            trace, span, parent = ids
    multi_sampled, multi_flags, multi_ids = _read_multi(values)
    if sampled is None:
        sampled = multi_sampled
    flags = flags or multi_flags
    if multi_ids is not None:
        trace, span, parent = (trace or multi_ids[0]), (span or multi_ids[1]), (parent or multi_ids[2])
    if trace is None:
        return Context(B3, None, 0, None, None, sampled, flags=flags, single=single, reuse=True)
    return Context(B3, int(trace, 16), len(trace) // 2, int(span, 16) if span else None,
                   int(parent, 16) if parent else None, sampled, flags=flags, single=single, reuse=True)


def _b3_single_header(values: Values) -> bytes | None:
    """The b3 header's value, else a `b3=` member of tracestate; None when neither (or b3 came twice)."""
    value = _single(values, b"b3")
    if value is None:
        for state in values.get(b"tracestate", ()):
            m = _TRACESTATE_B3.fullmatch(state)
            if m is not None:
                return m.group(1)
        return None
    return None if value is _MANY else value


def _read_single(value: bytes) -> tuple[bool | None, bytes | None, tuple[bytes, bytes, bytes | None] | None]:
    """(sampled, flags, (trace, span, parent) in hex or None) of a b3 single header."""
    if value in (b"1", b"d"):
        return True, (b"1" if value == b"d" else None), None
    if value == b"0":
        return False, None, None
    m = _B3_SINGLE.fullmatch(value)
    if m is None or len(m[1]) not in (16, 32) or len(m[4]) not in (0, 16):
        return None, None, None  # Kong: "b3 single header invalid; ignoring."
    flag = m[3]
    sampled = True if flag in (b"1", b"d") else False if flag == b"0" else None
    return sampled, (b"1" if flag == b"d" else None), (m[1], m[2], m[4] or None)


def _read_multi(values: Values) -> tuple[bool | None, bytes | None, tuple[bytes | None, ...] | None]:
    """(sampled, flags, (trace, span, parent) in hex, or None when one of them is invalid) of the X-B3 headers."""
    sampled_header = _single(values, b"x-b3-sampled")
    sampled = True if sampled_header in (b"1", b"true") else False if sampled_header in (b"0", b"false") else None
    flags = _single(values, b"x-b3-flags")
    if flags == b"1":
        sampled = True
    if flags is _MANY:
        flags = None
    ids = []
    for name, lengths in ((b"x-b3-traceid", (16, 32)), (b"x-b3-spanid", (16,)), (b"x-b3-parentspanid", (16,))):
        value = _single(values, name)
        if value is not None and (value is _MANY or len(value) not in lengths or not _HEX.issuperset(value)):
            return sampled, flags, None  # Kong: "x-b3-... header invalid; ignoring."
        ids.append(value)
    return sampled, flags, tuple(ids)


_EXTRACTORS = {W3C: _w3c, B3: _b3, JAEGER: _jaeger}


def formats_for(params: Params, found: Context | None) -> tuple[str, ...]:
    """The formats a request's context goes out in (gateway.telemetry.tracing.formats_out)."""
    return formats_out(params.inject or (), params.default_format, found)


def injected_size(fmt: str, trace_size: int) -> int:
    """The bytes of the trace id `fmt` carries: the incoming id's 8 where the format allows them, else 16."""
    return trace_size if trace_size == 8 and fmt in _SIZED else 16


def inject(fmt: str, trace_id: int, trace_size: int, span_id: int, parent_id: int | None, sampled: bool | None,
           flags: bytes | None = None, baggage: list[tuple[bytes, bytes]] | None = None) -> Headers:
    """Kong's injector for `fmt`: the headers that carry (trace_id, span_id) upstream. The trace id goes out in
    `trace_size` bytes where the format allows 8 (b3, b3-single, jaeger), else in 16 (as Kong's
    trace_id_allowed_sizes); `sampled` None leaves b3-single's flag out."""
    width = injected_size(fmt, trace_size)
    if fmt == W3C:
        return [(b"traceparent", b"00-%032x-%016x-%s" % (trace_id & MAX_TRACE, span_id, b"01" if sampled else b"00"))]
    trace = b"%0*x" % (width * 2, trace_id & ((1 << (width * 8)) - 1))
    if fmt == B3:
        out = [(b"x-b3-traceid", trace), (b"x-b3-spanid", b"%016x" % span_id)]
        if parent_id is not None:
            out.append((b"x-b3-parentspanid", b"%016x" % parent_id))
        out.append((b"x-b3-flags", flags) if flags is not None else (b"x-b3-sampled", b"1" if sampled else b"0"))
        return out
    if fmt == B3_SINGLE:
        flag = b"-d" if flags == b"1" else b"-1" if sampled else b"-0" if sampled is False else b""
        parent = b"-%016x" % parent_id if parent_id is not None else b""
        return [(b"b3", b"%s-%016x%s%s" % (trace, span_id, flag, parent))]
    if fmt == JAEGER:
        parent = b"%016x" % parent_id if parent_id is not None else b"0"
        out = [(b"uber-trace-id", b"%s:%016x:%s:%s" % (trace, span_id, parent, b"01" if sampled else b"00"))]
        for key, value in baggage or ():
            out.append((_BAGGAGE + key, quote_from_bytes(value, safe="-._~").encode()))
        return out
    raise ValueError(f"unknown trace header format {fmt!r}")
