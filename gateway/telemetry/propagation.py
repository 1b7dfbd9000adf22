"""Kong's trace context propagation (kong/observability/tracing/propagation/: its extractors, injectors and
get_plugin_params) as the zipkin and opentelemetry plugins apply it, for all of Kong 3.9.3's formats: w3c, b3 (with
b3-single), jaeger, ot, datadog, aws and gcp (instana is Kong master's, in no release). Sans-I/O: request headers in,
a `Context` out; a context in, header lines out.

    ot         ot-tracer-traceid (16 or 32 hex), ot-tracer-spanid (16 hex), ot-tracer-sampled (1/0/true/false),
               ot-baggage-<key>
    datadog    x-datadog-trace-id, x-datadog-parent-id (decimal), x-datadog-sampling-priority (2/1 yes, 0/-1 no)
    aws        x-amzn-trace-id: Root=1-<8 hex>-<24 hex>;Parent=<16 hex>;Sampled=<1|0> (any order, other keys)
    gcp        x-cloud-trace-context: <32 hex>/<span id, decimal>[;o=<digit; 1 = sampled>]

These are Kong's rules:
- b3 is found whenever one of its headers, or `tracestate`, is there, even without ids: `x-b3-sampled: 1` or
  `b3: 1` alone decides sampling, a trace id without a span id continues the trace, and the formats after b3 in
  `extract` are not tried then (so with the default order a traceparent next to a tracestate is not read).
- ids keep their size where the injector allows it (Kong's trace_id_allowed_sizes, the first the default): b3,
  b3-single and jaeger 16 or 8 bytes (16), ot 8 or 16 (8: a trace the gateway started goes out 64-bit),
  datadog 8 (the low 64 bits, in decimal), w3c, aws and gcp 16. An id's size as it came is its bytes as Kong's
  from_hex / bn.to_binary make them: a datadog id below 2^56 is shorter than 8 bytes, so b3 carries it in 16.
  x-b3-flags (debug) is passed on as it came.
- the formats that share no span with the caller (all but b3 and jaeger) give the caller's span as `span_id`; an
  ot, datadog or aws context without a trace id still counts (Kong: any field read is a context), so the
  formats after it are not tried.
- traceparent must be version 00 with exactly four fields; jaeger's ids may be shorter than 16 or 32 hex digits.
- jaeger's baggage (`uberctx-*`) and ot's (`ot-baggage-*`) are read and written again (URI-unescaped, then
  escaped), each format's injector writing whichever was read.
- a header an extractor cannot read is ignored with Kong's warning (its words); a traceparent, uber-trace-id or b3
  given more than once is passed over silently (a table in Kong), an X-B3 header given more than once is invalid.
Ids are integers; None where a header did not give one (an id of 0 is an id here, as a string of zeros is in Kong).
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import quote_from_bytes, unquote_to_bytes

from gateway.http.codec import Headers
from gateway.telemetry.tracing import B3, B3_SINGLE, FORMATS, HEADERS, JAEGER, W3C, formats_out

OT, DATADOG, AWS, GCP = "ot", "datadog", "aws", "gcp"
KONG_FORMATS = FORMATS + (OT, DATADOG, AWS, GCP)  # Kong 3.9.3's utils.FORMATS: what inject and default_format take
PRESERVE = "preserve"
# Kong's extraction order for the deprecated header_type (all but ignore)
LEGACY_EXTRACT = (B3, W3C, JAEGER, OT, DATADOG, AWS, GCP)
_OT_HEADERS = (b"ot-tracer-traceid", b"ot-tracer-spanid", b"ot-tracer-sampled")
_DATADOG_HEADERS = (b"x-datadog-trace-id", b"x-datadog-parent-id", b"x-datadog-sampling-priority")
# What a request is scanned for: every name the extractors read (baggage is looked for once jaeger or ot is found).
TRACE_HEADERS = (frozenset(name for names in HEADERS.values() for name in names)
                 | {b"tracestate", b"x-amzn-trace-id", b"x-cloud-trace-context"}
                 | frozenset(_OT_HEADERS + _DATADOG_HEADERS))
MAX_SPAN = (1 << 64) - 1
MAX_TRACE = (1 << 128) - 1
# Kong's trace_id_allowed_sizes of each injector: the sizes an incoming trace id keeps, the first the default
_SIZES: dict[str, tuple[int, ...]] = {W3C: (16,), B3: (16, 8), B3_SINGLE: (16, 8), JAEGER: (16, 8), OT: (8, 16),
                                      DATADOG: (8,), AWS: (16,), GCP: (16,)}
_HEX = frozenset(b"0123456789abcdefABCDEF")
_HEX_PAIR = re.compile(rb"[0-9a-fA-F]{2}")
_DECIMAL = re.compile(rb"\s*([0-9]+)\s*")  # Lua's ^%s*(%d+)%s*$
_EXACT_DIGITS = 39  # 10^38 < 2^128 < 10^39: a datadog id of up to 39 digits is converted whole
_AWS_ROOT = re.compile(rb"1-([0-9a-fA-F]{8})-([0-9a-fA-F]{24})")
# PCRE's $ (Python's too) also matches before a final newline
_GCP = re.compile(rb"([0-9a-f]{32})/([0-9]{1,20})(?:;o=([0-9]))?$")
_OT_BAGGAGE = b"ot-baggage-"
_B3_NAMES = (b"b3", b"tracestate", b"x-b3-traceid", b"x-b3-spanid", b"x-b3-parentspanid", b"x-b3-sampled",
             b"x-b3-flags")
_B3_SINGLE = re.compile(rb"([0-9a-fA-F]+)-([0-9a-fA-F]{16})-?([01d]?)-?([0-9a-fA-F]*)")
_TRACESTATE_B3 = re.compile(rb"b3=(.+)", re.DOTALL)
_W3C = re.compile(rb"([0-9a-fA-F]+)-([0-9a-fA-F]+)-([0-9a-fA-F]+)-([0-9a-fA-F]+)")
_JAEGER = re.compile(rb"([0-9a-fA-F]+):([0-9a-fA-F]+):([0-9a-fA-F]+):([0-9a-fA-F]+)")
_BAGGAGE = b"uberctx-"
_MANY = b"\0several"  # a header given more than once: a table in Kong, which no extractor takes as a value

Values = dict[bytes, list[bytes]]
log = logging.getLogger("gateway.telemetry")


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
    came (Kong's trace_id_original_size; 0: no trace id); `reuse`: the format shares the caller's span (b3, jaeger),
    so `span_id` is the request's own span and `parent_id` its parent, where for the other formats `span_id` is the
    caller's span; `single`: b3 came as the single header; `flags`: X-B3-Flags as it came ("1": debug); `baggage`:
    jaeger's or ot's, unescaped."""

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


def _fields(values: Values, name: bytes, pattern: re.Pattern[bytes], warning: str) -> tuple[bytes, ...] | None:
    """The four fields of a header that is there once, not empty, and matches `pattern` (else, warned, None)."""
    value = _single(values, name)
    if not value or value is _MANY:  # Kong: not a string, or empty: passed over without a word
        return None
    m = pattern.fullmatch(value)
    if m is None:
        log.warning(warning)
        return None
    return m.groups()


def _w3c(values: Values, headers: Headers) -> Context | None:
    fields = _fields(values, b"traceparent", _W3C, "invalid W3C traceparent header; ignoring.")
    if fields is None:
        return None
    version, trace, parent, flags = fields
    if version != b"00":
        log.warning("invalid W3C Trace Context version; ignoring.")
        return None
    trace_id = int(trace, 16) if len(trace) == 32 else 0
    if not trace_id:
        log.warning("invalid W3C trace context trace ID; ignoring.")
        return None
    span_id = int(parent, 16) if len(parent) == 16 else 0
    if not span_id:
        log.warning("invalid W3C trace context parent ID; ignoring.")
        return None
    if len(flags) != 2:
        log.warning("invalid W3C trace context flags; ignoring.")
        return None
    return Context(W3C, trace_id, 16, span_id, None, bool(int(flags, 16) & 1))


def _jaeger(values: Values, headers: Headers) -> Context | None:
    fields = _fields(values, b"uber-trace-id", _JAEGER, "invalid jaeger uber-trace-id header; ignoring.")
    if fields is None:
        return None
    trace, span, parent, flags = fields
    trace_id = int(trace, 16) if len(trace) <= 32 else 0
    if not trace_id:
        log.warning("invalid jaeger trace ID; ignoring.")
        return None
    parent_id = int(parent, 16)
    if len(parent) != 16 and parent_id:  # Kong only warns: a parent can be ignored
        log.warning("invalid jaeger parent ID; ignoring.")
    span_id = int(span, 16) if len(span) <= 16 else 0
    if not span_id:
        log.warning("invalid jaeger span ID; ignoring.")
        return None
    if len(flags) > 2:
        log.warning("invalid jaeger flags; ignoring.")
        return None
    return Context(JAEGER, trace_id, (len(trace) + 1) // 2, span_id, parent_id & MAX_SPAN,
                   bool(int(flags, 16) & 1), reuse=True, baggage=_baggage(headers, _BAGGAGE))


def _baggage(headers: Headers, prefix: bytes) -> list[tuple[bytes, bytes]] | None:
    """jaeger's uberctx-<key> or ot's ot-baggage-<key> headers: (key, value unescaped as ngx.unescape_uri does, "+"
    as a space)."""
    found = {name[len(prefix):]: unquote_to_bytes(value.replace(b"+", b" "))
             for name, value in headers if name.startswith(prefix)}
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
        log.warning("b3 single header invalid; ignoring.")
        return None, None, None
    flag = m[3]
    sampled = True if flag in (b"1", b"d") else False if flag == b"0" else None
    return sampled, (b"1" if flag == b"d" else None), (m[1], m[2], m[4] or None)


def _read_multi(values: Values) -> tuple[bool | None, bytes | None, tuple[bytes | None, ...] | None]:
    """(sampled, flags, (trace, span, parent) in hex, or None when one of them is invalid) of the X-B3 headers."""
    sampled_header = _single(values, b"x-b3-sampled")
    sampled = True if sampled_header in (b"1", b"true") else False if sampled_header in (b"0", b"false") else None
    if sampled is None and sampled_header is not None:
        log.warning("x-b3-sampled header invalid; ignoring.")
    flags = _single(values, b"x-b3-flags")
    if flags == b"1":
        sampled = True
    elif flags is not None:
        log.warning("x-b3-flags header invalid; ignoring.")  # passed on as it came all the same
        if flags is _MANY:
            flags = None
    ids: list[bytes | None] = []
    valid = True
    for name, lengths in ((b"x-b3-traceid", (16, 32)), (b"x-b3-spanid", (16,)), (b"x-b3-parentspanid", (16,))):
        value = _single(values, name)
        if value is not None and (value is _MANY or len(value) not in lengths or not _HEX.issuperset(value)):
            log.warning("%s header invalid; ignoring.", name.decode())
            valid = False
        ids.append(value)
    return sampled, flags, tuple(ids) if valid else None


def _ot(values: Values, headers: Headers) -> Context | None:
    """Kong's ot extractor: a trace id (16 or 32 hex) and a span id (16 hex) go together, one invalid drops both."""
    if not any(name in values for name in _OT_HEADERS):
        return None
    sampled_header = _single(values, b"ot-tracer-sampled")
    sampled = True if sampled_header in (b"1", b"true") else False if sampled_header in (b"0", b"false") else None
    if sampled is None and sampled_header is not None:
        log.warning("ot-tracer-sampled header invalid; ignoring.")
    trace = _single(values, b"ot-tracer-traceid")
    span = _single(values, b"ot-tracer-spanid")
    valid = True
    if trace is not None and (len(trace) not in (16, 32) or not _HEX.issuperset(trace)):
        log.warning("ot-tracer-traceid header invalid; ignoring.")
        valid = False
    if span is not None and (len(span) != 16 or not _HEX.issuperset(span)):
        log.warning("ot-tracer-spanid header invalid; ignoring.")
        valid = False
    if trace is None or not valid:
        trace = span = None
    baggage = _baggage(headers, _OT_BAGGAGE)
    if trace is None and sampled is None and baggage is None:
        return None  # an empty context: Kong tries the next format
    return Context(OT, int(trace, 16) if trace else None, len(trace) // 2 if trace else 0,
                   int(span, 16) if span else None, None, sampled, baggage=baggage)


def _datadog(values: Values, headers: Headers) -> Context | None:
    """Kong's datadog extractor: decimal ids (any size: a trace id keeps its low 128 bits, its size the bytes of its
    value), x-datadog-parent-id the caller's span, read only with a trace id."""
    if not any(name in values for name in _DATADOG_HEADERS):
        return None
    priority = _single(values, b"x-datadog-sampling-priority")
    sampled = True if priority in (b"1", b"2") else False if priority in (b"0", b"-1") else None
    if sampled is None and priority is not None:
        log.warning("x-datadog-sampling-priority header invalid; ignoring.")
        return None
    trace = _decimal(values, b"x-datadog-trace-id")
    parent = _decimal(values, b"x-datadog-parent-id")
    if trace is None:
        if sampled is None:
            return None
        return Context(DATADOG, None, 0, None, None, sampled)
    trace_id, size = _low_bits(trace)
    return Context(DATADOG, trace_id, size, None if parent is None else _low_bits(parent)[0] & MAX_SPAN, None,
                   sampled)


def _decimal(values: Values, name: bytes) -> bytes | None:
    """The digits of a decimal header, without its leading zeros (None: absent or, warned, invalid)."""
    value = _single(values, name)
    if value is None:
        return None
    m = _DECIMAL.fullmatch(value)
    if m is None:
        log.warning("%s header invalid; ignoring.", name.decode())
        return None
    return m[1].lstrip(b"0")


def _low_bits(digits: bytes) -> tuple[int, int]:
    """(the low 128 bits, the size in bytes as Kong's bn to_binary gives it) of a decimal number of any length,
    without int() on all of it (refused past 4300 digits, and quadratic)."""
    if len(digits) > _EXACT_DIGITS:
        # 10^128 is a multiple of 2^128: the last 128 digits hold the low 128 bits. The number is over 16 bytes,
        # a size no injector keeps, so its exact size does not matter: 17 stands for all of them.
        return int(digits[-128:]) & MAX_TRACE, 17
    value = int(digits or b"0")
    return value & MAX_TRACE, (value.bit_length() + 7) // 8


def _aws(values: Values, headers: Headers) -> Context | None:
    """Kong's aws extractor: x-amzn-trace-id's `key=value` pairs (split at ";", trimmed, other keys ignored); Root's
    timestamp and unique id make the trace id, Parent is the caller's span; any invalid one drops the header."""
    header = _single(values, b"x-amzn-trace-id")
    if header is None or header is _MANY:
        return None
    trace_id = parent_id = sampled = None
    for pair in header.split(b";"):
        key, _, value = pair.partition(b"=")
        key, value = key.strip(), value.strip()
        if key == b"Root":
            m = _AWS_ROOT.fullmatch(value)
            if m is None:
                log.warning("invalid aws header trace id; ignoring.")
                return None
            trace_id = int(m[1] + m[2], 16)
        elif key == b"Parent":
            if len(value) != 16:
                log.warning("invalid aws header parent id; ignoring.")
                return None
            parent_id = int.from_bytes(_lua_from_hex(value)[-8:], "big")  # Kong checks its length only
        elif key == b"Sampled":
            if value not in (b"0", b"1"):
                log.warning("invalid aws header sampled flag; ignoring.")
                return None
            sampled = value == b"1"
    if trace_id is None and parent_id is None and sampled is None:
        return None
    return Context(AWS, trace_id, 0 if trace_id is None else 16, parent_id, None, sampled)


def _lua_from_hex(text: bytes) -> bytes:
    """Kong's utils.from_hex: a "0" before an odd length, then each pair of hex digits as a byte, any other
    character kept as it is."""
    if len(text) % 2:
        text = b"0" + text
    return _HEX_PAIR.sub(lambda m: bytes.fromhex(m[0].decode()), text)


def _gcp(values: Values, headers: Headers) -> Context | None:
    """Kong's gcp extractor: TRACE_ID/SPAN_ID[;o=FLAG], the span id decimal (its low 64 bits kept); sampled only
    with o=1 (without it: not sampled)."""
    header = _single(values, b"x-cloud-trace-context")
    if header is None or header is _MANY:
        return None
    m = _GCP.match(header)
    if m is None:
        log.warning("invalid GCP header; ignoring.")
        return None
    return Context(GCP, int(m[1], 16), 16, int(m[2]) & MAX_SPAN, None, m[3] == b"1")


_EXTRACTORS = {W3C: _w3c, B3: _b3, JAEGER: _jaeger, OT: _ot, DATADOG: _datadog, AWS: _aws, GCP: _gcp}


def formats_for(params: Params, found: Context | None) -> tuple[str, ...]:
    """The formats a request's context goes out in (gateway.telemetry.tracing.formats_out)."""
    return formats_out(params.inject or (), params.default_format, found)


def injected_size(fmt: str, trace_size: int) -> int:
    """The bytes of the trace id `fmt` carries (Kong's trace_id_allowed_sizes): the incoming id's size where the
    format allows it, else the format's default (ot's 8, datadog's 8, the others' 16)."""
    sizes = _SIZES[fmt]
    return trace_size if trace_size in sizes else sizes[0]


def formatted_trace_id(fmt: str, trace_id: int, trace_size: int) -> tuple[str, str]:
    """Kong's get_formatted_trace_id (the serialized log's trace_id entry): b3-single's under b3, datadog's in
    decimal, the others in hex, each in the size its injector writes."""
    width = injected_size(fmt, trace_size)
    value = trace_id & ((1 << (width * 8)) - 1)
    if fmt == DATADOG:
        return fmt, str(value)
    return "b3" if fmt == B3_SINGLE else fmt, f"{value:0{width * 2}x}"


def inject(fmt: str, trace_id: int, trace_size: int, span_id: int, parent_id: int | None, sampled: bool | None,
           flags: bytes | None = None, baggage: list[tuple[bytes, bytes]] | None = None) -> Headers:
    """Kong's injector for `fmt`: the headers that carry (trace_id, span_id) upstream. The trace id goes out in
    `trace_size` bytes where the format allows it, else in the format's default size (injected_size); `sampled`
    None leaves out b3-single's flag and ot's and datadog's sampling headers (aws and gcp say 0)."""
    width = injected_size(fmt, trace_size)
    if fmt == W3C:
        return [(b"traceparent", b"00-%032x-%016x-%s" % (trace_id & MAX_TRACE, span_id, b"01" if sampled else b"00"))]
    if fmt == DATADOG:
        out = [(b"x-datadog-trace-id", b"%d" % (trace_id & MAX_SPAN)), (b"x-datadog-parent-id", b"%d" % span_id)]
        if sampled is not None:
            out.append((b"x-datadog-sampling-priority", b"1" if sampled else b"0"))
        return out
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
        return _with_baggage(out, _BAGGAGE, baggage)
    if fmt == OT:
        out = [(b"ot-tracer-traceid", trace), (b"ot-tracer-spanid", b"%016x" % span_id)]
        if sampled is not None:
            out.append((b"ot-tracer-sampled", b"1" if sampled else b"0"))
        return _with_baggage(out, _OT_BAGGAGE, baggage)
    if fmt == AWS:
        return [(b"x-amzn-trace-id", b"Root=1-%s-%s;Parent=%016x;Sampled=%s" % (trace[:8], trace[8:], span_id,
                                                                               b"1" if sampled else b"0"))]
    if fmt == GCP:
        return [(b"x-cloud-trace-context", b"%s/%d;o=%s" % (trace, span_id, b"1" if sampled else b"0"))]
    raise ValueError(f"unknown trace header format {fmt!r}")


def _with_baggage(out: Headers, prefix: bytes, baggage: list[tuple[bytes, bytes]] | None) -> Headers:
    """`out` with a `prefix`<key> header per baggage item, its value escaped as ngx.escape_uri does."""
    for key, value in baggage or ():
        out.append((prefix + key, quote_from_bytes(value, safe="-._~").encode()))
    return out
