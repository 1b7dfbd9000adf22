"""Kong's ot, datadog, aws and gcp trace context formats (kong/observability/tracing/propagation/
extractors/ and injectors/ {ot,datadog,aws,gcp}.lua, utils.lua, _base.lua) as
spec/01-unit/26-observability/02-propagation_strategies_spec.lua tests them (each format's valid and invalid headers,
with Kong's warnings, and its injection), 03-propagation_module_spec.lua (default_format, multiple injection, the
first extractor found), and spec/03-plugins/34-zipkin/zipkin_spec.lua's and 37-opentelemetry's header_type cases:
through the gateway, a request with only one of these formats' headers has its trace continued upstream. The spec's
instana cases are master's (in no release): Kong 3.9.3 reads no instana header and has no instana injector."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
import pytest
from backends import EchoBackend, service
from test_kong_spec_tracing_plugins import _get as _otel_get
from test_tel_zipkin import _get, _received, _start, _upstream, _zipkin

from gateway.policies.opentelemetry.handler import Trace as OtelTrace
from gateway.policies.zipkin.handler import Trace as ZipkinTrace
from gateway.policies.zipkin.schema import ZipkinConfig
from gateway.telemetry import propagation
from gateway.telemetry.propagation import (
    AWS,
    B3,
    DATADOG,
    GCP,
    JAEGER,
    LEGACY_EXTRACT,
    OT,
    W3C,
    Context,
    Params,
    extract,
    formats_for,
    formatted_trace_id,
    inject,
    plugin_params,
    scan,
)

TID16 = "0af7651916cd43dd8448eb211c80319c"
TID8 = "8448eb211c80319c"
TID8_DEC = "9532127138774266268"  # TID8 in decimal
SID1 = "b7ad6b7169203331"
SID1_DEC = "13235353014750950193"  # SID1 in decimal
BIG_TID = "fffffffffffffff1"
BIG_TID16 = "fffffffffffffffffffffffffffffff1"
BIG_SID = "fffffffffffffff3"
TOO_LONG = "1234567890123456789012345678901234567890"
LOGGER = "gateway.telemetry"


@pytest.fixture
def http_codec() -> str:
    """One codec: what these tests check is above HTTP framing."""
    return "llhttp"


def _aws(trace: str = TID16, parent: str = SID1, sampled: str = "1") -> str:
    return f"Root=1-{trace[:8]}-{trace[8:]};Parent={parent};Sampled={sampled}"


def _extract(headers: list[tuple[str, str]], formats: tuple[str, ...] = LEGACY_EXTRACT) -> Context | None:
    raw = [(k.encode(), v.encode()) for k, v in headers]
    values = scan(raw, propagation.TRACE_HEADERS)
    return extract(values, raw, formats) if values is not None else None


def _read(found: Context | None) -> tuple[Any, ...] | None:
    """(format, trace id in hex, its size as it came, span id in hex, sampled, baggage) of a context."""
    if found is None:
        return None
    return (found.format, None if found.trace_id is None else f"{found.trace_id:032x}", found.trace_size,
            None if found.span_id is None else f"{found.span_id:016x}", found.sampled, found.baggage)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


def _text(headers: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(k.decode(), v.decode()) for k, v in headers]


def _pad(hex_id: str) -> str:
    return hex_id.rjust(32, "0")


# --- extraction: 02-propagation_strategies_spec's valid headers ----------------------------------------------------


VALID = [
    ("ot base case", [("ot-tracer-traceid", TID16), ("ot-tracer-spanid", SID1), ("ot-tracer-sampled", "1"),
                      ("ot-baggage-foo", "bar")],
     (OT, TID16, 16, SID1, True, [(b"foo", b"bar")])),
    ("ot sampled = false", [("ot-tracer-traceid", TID16), ("ot-tracer-spanid", SID1), ("ot-tracer-sampled", "0")],
     (OT, TID16, 16, SID1, False, None)),
    ("ot missing sampled flag", [("ot-tracer-traceid", TID16), ("ot-tracer-spanid", SID1)],
     (OT, TID16, 16, SID1, None, None)),
    ("ot large trace and span ids", [("ot-tracer-traceid", BIG_TID16), ("ot-tracer-spanid", BIG_SID),
                                     ("ot-baggage-foo", "bar")],
     (OT, BIG_TID16, 16, BIG_SID, None, [(b"foo", b"bar")])),
    ("ot 8B trace id", [("ot-tracer-traceid", TID8), ("ot-tracer-spanid", SID1), ("ot-tracer-sampled", "0")],
     (OT, _pad(TID8), 8, SID1, False, None)),
    ("ot invalid baggage", [("ot-tracer-traceid", TID16), ("ot-tracer-spanid", SID1), ("ot-tracer-sampled", "1"),
                            ("otttttbaggage-foo", "bar")],
     (OT, TID16, 16, SID1, True, None)),
    ("datadog base case", [("x-datadog-trace-id", TID8_DEC), ("x-datadog-parent-id", SID1_DEC),
                           ("x-datadog-sampling-priority", "1")],
     (DATADOG, _pad(TID8), 8, SID1, True, None)),
    ("datadog sampled = false", [("x-datadog-trace-id", TID8_DEC), ("x-datadog-parent-id", SID1_DEC),
                                 ("x-datadog-sampling-priority", "0")],
     (DATADOG, _pad(TID8), 8, SID1, False, None)),
    ("datadog missing trace id ignores parent id", [("x-datadog-parent-id", SID1_DEC),
                                                    ("x-datadog-sampling-priority", "1")],
     (DATADOG, None, 0, None, True, None)),
    ("datadog missing parent id", [("x-datadog-trace-id", TID8_DEC), ("x-datadog-sampling-priority", "1")],
     (DATADOG, _pad(TID8), 8, None, True, None)),
    ("datadog missing sampled", [("x-datadog-trace-id", TID8_DEC), ("x-datadog-parent-id", SID1_DEC)],
     (DATADOG, _pad(TID8), 8, SID1, None, None)),
    ("datadog big dec trace id", [("x-datadog-trace-id", str(int(BIG_TID, 16))), ("x-datadog-parent-id", SID1_DEC)],
     (DATADOG, _pad(BIG_TID), 8, SID1, None, None)),
    ("datadog big dec span id", [("x-datadog-trace-id", TID8_DEC), ("x-datadog-parent-id", str(int(BIG_SID, 16)))],
     (DATADOG, _pad(TID8), 8, BIG_SID, None, None)),
    ("datadog (can extract invalid) big dec trace id 16", [("x-datadog-trace-id", str(int(BIG_TID16, 16))),
                                                           ("x-datadog-parent-id", SID1_DEC)],
     (DATADOG, BIG_TID16, 16, SID1, None, None)),
    ("aws base case", [("x-amzn-trace-id", _aws())], (AWS, TID16, 16, SID1, True, None)),
    ("aws with spaces", [("x-amzn-trace-id", f"  Root =   1-{TID16[:8]}-{TID16[8:]}  ;  Parent= {SID1};  "
                                             "Sampled   =1")],
     (AWS, TID16, 16, SID1, True, None)),
    ("aws parent first", [("x-amzn-trace-id", f"Parent={SID1};Root=1-{TID16[:8]}-{TID16[8:]};Sampled=1")],
     (AWS, TID16, 16, SID1, True, None)),
    ("aws extra fields", [("x-amzn-trace-id", "Foo=bar;" + _aws())], (AWS, TID16, 16, SID1, True, None)),
    ("aws large id", [("x-amzn-trace-id", _aws(BIG_TID16))], (AWS, BIG_TID16, 16, SID1, True, None)),
    ("aws sampled = false", [("x-amzn-trace-id", _aws(sampled="0"))], (AWS, TID16, 16, SID1, False, None)),
    ("gcp base case", [("x-cloud-trace-context", f"{TID16}/{SID1_DEC};o=1")], (GCP, TID16, 16, SID1, True, None)),
    ("gcp sampled = false", [("x-cloud-trace-context", f"{TID16}/{SID1_DEC};o=0")],
     (GCP, TID16, 16, SID1, False, None)),
    ("gcp no flag", [("x-cloud-trace-context", f"{TID16}/{SID1_DEC}")], (GCP, TID16, 16, SID1, False, None)),
]


@pytest.mark.parametrize(("headers", "context"), [case[1:] for case in VALID], ids=[case[0] for case in VALID])
def test_valid_headers_are_extracted_as_kong_extracts_them(headers, context, caplog):
    """Each format's "extracts tracing context" cases: ids, the trace id's size as it came, sampling, baggage."""
    assert _read(_extract(headers, (context[0],))) == context
    assert _warnings(caplog) == []


@pytest.mark.parametrize("fmt", [OT, DATADOG, AWS, GCP])
def test_no_incoming_headers_extract_nothing_and_warn_nothing(fmt, caplog):
    """"handles no incoming headers correctly"."""
    assert _extract([("traceparent", f"00-{TID16}-{SID1}-01")], (fmt,)) is None
    assert _warnings(caplog) == []


# --- extraction: 02-propagation_strategies_spec's error cases -------------------------------------------------------


ERRORS = [
    ("ot invalid header", [("ot-tracer-traceid", "xx")], "ot-tracer-traceid header invalid; ignoring."),
    ("datadog invalid trace id", [("x-datadog-trace-id", TID16), ("x-datadog-parent-id", SID1_DEC),
                                  ("x-datadog-sampling-priority", "1")],
     "x-datadog-trace-id header invalid; ignoring."),
    ("datadog invalid parent id", [("x-datadog-trace-id", TID8_DEC), ("x-datadog-parent-id", SID1),
                                   ("x-datadog-sampling-priority", "1")],
     "x-datadog-parent-id header invalid; ignoring."),
    ("datadog empty string trace id", [("x-datadog-trace-id", ""), ("x-datadog-parent-id", SID1_DEC),
                                       ("x-datadog-sampling-priority", "1")],
     "x-datadog-trace-id header invalid; ignoring."),
    ("datadog empty string parent id", [("x-datadog-trace-id", TID8_DEC), ("x-datadog-parent-id", ""),
                                        ("x-datadog-sampling-priority", "1")],
     "x-datadog-parent-id header invalid; ignoring."),
    ("aws invalid trace id 1", [("x-amzn-trace-id", f"Root=0-{TID8[:8]}-{TID8[8:]};Parent={SID1};Sampled=0")],
     "invalid aws header trace id; ignoring."),
    ("aws invalid trace id 2", [("x-amzn-trace-id", f"Root=1-vv-{TID8[8:]};Parent={SID1};Sampled=0")],
     "invalid aws header trace id; ignoring."),
    ("aws invalid trace id 3", [("x-amzn-trace-id", f"Root=1-{TID8[:8]}-vv;Parent={SID1};Sampled=0")],
     "invalid aws header trace id; ignoring."),
    ("aws invalid trace id (too short)", [("x-amzn-trace-id", _aws(TID8, sampled="0"))],
     "invalid aws header trace id; ignoring."),
    ("aws invalid trace id (too long)", [("x-amzn-trace-id", _aws(TOO_LONG, sampled="0"))],
     "invalid aws header trace id; ignoring."),
    ("aws missing trace id", [("x-amzn-trace-id", f"Root=;Parent={SID1};Sampled=0")],
     "invalid aws header trace id; ignoring."),
    ("aws invalid parent id 1", [("x-amzn-trace-id", _aws(parent="vv", sampled="0"))],
     "invalid aws header parent id; ignoring."),
    ("aws invalid parent id (too long)", [("x-amzn-trace-id", _aws(parent=TOO_LONG, sampled="0"))],
     "invalid aws header parent id; ignoring."),
    ("aws invalid parent id (too short)", [("x-amzn-trace-id", _aws(parent="123", sampled="0"))],
     "invalid aws header parent id; ignoring."),
    ("aws missing parent id", [("x-amzn-trace-id", _aws(parent="", sampled="0"))],
     "invalid aws header parent id; ignoring."),
    ("aws invalid sampled flag", [("x-amzn-trace-id", _aws(sampled="2"))],
     "invalid aws header sampled flag; ignoring."),
    ("aws missing sampled flag", [("x-amzn-trace-id", _aws(sampled=""))],
     "invalid aws header sampled flag; ignoring."),
    ("gcp invalid trace id (too short)", [("x-cloud-trace-context", f"123/{SID1_DEC};o=0")],
     "invalid GCP header; ignoring."),
    ("gcp invalid trace id (too long)", [("x-cloud-trace-context", f"{TOO_LONG}/{SID1_DEC};o=0")],
     "invalid GCP header; ignoring."),
    ("gcp invalid trace id (no hex)", [("x-cloud-trace-context", f"vvv/{SID1_DEC};o=0")],
     "invalid GCP header; ignoring."),
    ("gcp missing span id", [("x-cloud-trace-context", f"{TID16}/;o=0")], "invalid GCP header; ignoring."),
    ("gcp invalid span id (non digit)", [("x-cloud-trace-context", f"{TID16}/{SID1};o=0")],
     "invalid GCP header; ignoring."),
    ("gcp invalid span id (too large)", [("x-cloud-trace-context", f"{TID16}/{SID1_DEC}0;o=0")],
     "invalid GCP header; ignoring."),
    ("gcp invalid sampling value (01)", [("x-cloud-trace-context", f"{TID16}/{SID1_DEC};o=01")],
     "invalid GCP header; ignoring."),
    ("gcp invalid sampling value (missing)", [("x-cloud-trace-context", f"{TID16}/{SID1_DEC};o=")],
     "invalid GCP header; ignoring."),
    ("gcp invalid sampling value (non digit)", [("x-cloud-trace-context", f"{TID16}/{SID1_DEC};o=v")],
     "invalid GCP header; ignoring."),
]


@pytest.mark.parametrize(("headers", "warning"), [case[1:] for case in ERRORS], ids=[case[0] for case in ERRORS])
def test_an_invalid_header_is_ignored_with_kongs_warning(headers, warning, caplog):
    """Each format's "fails" cases: the header is ignored, with Kong's warning (kong.log.warn's words)."""
    _extract(headers, (OT, DATADOG, AWS, GCP))
    assert warning in _warnings(caplog)


def test_datadogs_invalid_sampling_priority_drops_the_whole_context(caplog):
    """datadog.lua: any priority but 2, 1, 0 or -1 ends the extraction (nil), so the next format is read."""
    headers = [("x-datadog-trace-id", TID8_DEC), ("x-datadog-sampling-priority", "3"),
               ("traceparent", f"00-{TID16}-{SID1}-01")]
    assert _read(_extract(headers, (DATADOG, W3C))) == (W3C, TID16, 16, SID1, True, None)
    assert _warnings(caplog) == ["x-datadog-sampling-priority header invalid; ignoring."]


@pytest.mark.parametrize(("priority", "sampled"), [("2", True), ("-1", False)])
def test_datadogs_user_priorities_decide_sampling_too(priority, sampled):
    """datadog.lua: USER_KEEP (2) samples, USER_REJECT (-1) does not."""
    found = _extract([("x-datadog-trace-id", TID8_DEC), ("x-datadog-sampling-priority", priority)], (DATADOG,))
    assert found is not None and found.sampled is sampled


def test_a_datadog_id_keeps_the_bytes_of_its_value_as_its_size():
    """bn.from_dec(id):to_binary(): a trace id below 2^56 is shorter than 8 bytes (Kong's trace_id_original_size),
    so an injector allowing 8 or 16 writes it in its default size."""
    found = _extract([("x-datadog-trace-id", "1234"), ("x-datadog-parent-id", "5")], (DATADOG,))
    assert found is not None and (found.trace_id, found.trace_size, found.span_id) == (1234, 2, 5)
    assert _text(inject(B3, 1234, found.trace_size, 5, None, None))[0] == ("x-b3-traceid", f"{1234:032x}")


def test_ot_drops_both_ids_when_either_is_invalid(caplog):
    """ot.lua: an invalid span id voids the trace id too; the sampling flag still makes a context."""
    found = _extract([("ot-tracer-traceid", TID16), ("ot-tracer-spanid", "xyz"), ("ot-tracer-sampled", "1")], (OT,))
    assert _read(found) == (OT, None, 0, None, True, None)
    assert _warnings(caplog) == ["ot-tracer-spanid header invalid; ignoring."]


# master's 02-propagation_strategies_spec instana cases, valid and invalid alike
INSTANA_HEADERS = [
    ("instana base case", [("x-instana-t", TID16), ("x-instana-s", SID1), ("x-instana-l", "1")]),
    ("instana 8B trace id", [("x-instana-t", TID8), ("x-instana-s", SID1), ("x-instana-l", "0")]),
    ("instana invalid trace ID (non hex)", [("x-instana-t", "abcdefghijklmnop"), ("x-instana-s", SID1)]),
    ("instana invalid trace ID (too short)", [("x-instana-t", "abc")]),
    ("instana odd length", [("x-instana-t", "abc-x"), ("x-instana-s", "12;q"),
                            ("x-instana-l", "1,correlationType=web")]),
]


@pytest.mark.parametrize("headers", [case[1] for case in INSTANA_HEADERS], ids=[case[0] for case in INSTANA_HEADERS])
def test_instana_headers_are_no_context_and_warn_nothing(headers, caplog):
    """Kong 3.9.3 has no instana extractor (utils.lua:12-21 FORMATS, init.lua:40-50 the "preserve" order): the
    headers are not read, valid or not, so they are passed on as they came."""
    assert _extract(headers) is None
    assert _warnings(caplog) == []


def test_a_gcp_span_id_above_64_bits_keeps_its_low_64_bits():
    """to_kong_span_id keeps the last 8 bytes of bn.from_dec(span_id):to_binary() (20 digits reach 2^66)."""
    found = _extract([("x-cloud-trace-context", f"{TID16}/99999999999999999999;o=1")], (GCP,))
    assert found is not None and found.span_id == 99999999999999999999 & ((1 << 64) - 1)


@pytest.mark.parametrize("name", ["x-amzn-trace-id", "x-cloud-trace-context"])
def test_a_header_given_twice_is_passed_over_silently(name, caplog):
    """aws.lua, gcp.lua: a header given twice is a table, not a string: nothing is read."""
    values = {"x-amzn-trace-id": _aws(), "x-cloud-trace-context": f"{TID16}/{SID1_DEC};o=1"}
    headers = [(name, values[name]), (name, values[name])]
    assert _extract(headers, (AWS, GCP)) is None
    assert _warnings(caplog) == []


# --- injection: 02-propagation_strategies_spec's "injects tracing context" ------------------------------------------


INJECTED = [
    ("ot base case", (OT, TID16, 16, SID1, True, [(b"foo", b"bar")]),
     [("ot-tracer-traceid", TID16), ("ot-tracer-spanid", SID1), ("ot-tracer-sampled", "1"),
      ("ot-baggage-foo", "bar")], TID16),
    ("ot sampled = false", (OT, TID16, 16, SID1, False, None),
     [("ot-tracer-traceid", TID16), ("ot-tracer-spanid", SID1), ("ot-tracer-sampled", "0")], TID16),
    ("ot missing sampled flag", (OT, TID16, 16, SID1, None, None),
     [("ot-tracer-traceid", TID16), ("ot-tracer-spanid", SID1)], TID16),
    ("ot 8B trace id", (OT, TID8, 8, SID1, False, None),
     [("ot-tracer-traceid", TID8), ("ot-tracer-spanid", SID1), ("ot-tracer-sampled", "0")], TID8),
    ("ot default injection size is 8B", (OT, TID16, 0, SID1, True, [(b"foo", b"bar")]),
     [("ot-tracer-traceid", TID8), ("ot-tracer-spanid", SID1), ("ot-tracer-sampled", "1"),
      ("ot-baggage-foo", "bar")], TID8),
    ("datadog base case", (DATADOG, TID8, 8, SID1, True, None),
     [("x-datadog-trace-id", TID8_DEC), ("x-datadog-parent-id", SID1_DEC), ("x-datadog-sampling-priority", "1")],
     TID8_DEC),
    ("datadog sampled = false", (DATADOG, TID8, 8, SID1, False, None),
     [("x-datadog-trace-id", TID8_DEC), ("x-datadog-parent-id", SID1_DEC), ("x-datadog-sampling-priority", "0")],
     TID8_DEC),
    ("datadog missing sampled", (DATADOG, TID8, 8, SID1, None, None),
     [("x-datadog-trace-id", TID8_DEC), ("x-datadog-parent-id", SID1_DEC)], TID8_DEC),
    ("datadog default injection size is 8B", (DATADOG, TID16, 0, SID1, True, None),
     [("x-datadog-trace-id", TID8_DEC), ("x-datadog-parent-id", SID1_DEC), ("x-datadog-sampling-priority", "1")],
     TID8_DEC),
    ("aws base case", (AWS, TID16, 16, SID1, True, None), [("x-amzn-trace-id", _aws())], TID16),
    ("aws sampled = false", (AWS, TID16, 16, SID1, False, None), [("x-amzn-trace-id", _aws(sampled="0"))], TID16),
    ("aws default injection size is 16B", (AWS, TID8, 8, SID1, True, None),
     [("x-amzn-trace-id", _aws(_pad(TID8)))], _pad(TID8)),
    ("gcp base case", (GCP, TID16, 16, SID1, True, None),
     [("x-cloud-trace-context", f"{TID16}/{SID1_DEC};o=1")], TID16),
    ("gcp sampled = false", (GCP, TID16, 16, SID1, False, None),
     [("x-cloud-trace-context", f"{TID16}/{SID1_DEC};o=0")], TID16),
    ("gcp default injection size is 16B", (GCP, TID8, 8, SID1, True, None),
     [("x-cloud-trace-context", f"{_pad(TID8)}/{SID1_DEC};o=1")], _pad(TID8)),
]


@pytest.mark.parametrize(("ctx", "headers", "formatted"), [case[1:] for case in INJECTED],
                         ids=[case[0] for case in INJECTED])
def test_a_context_is_injected_as_kong_injects_it(ctx, headers, formatted):
    """Each format's "injects tracing context" cases: the headers, and the formatted trace id Kong's log
    serializes under the format's name (datadog's in decimal)."""
    fmt, trace, size, span, sampled, baggage = ctx
    assert _text(inject(fmt, int(trace, 16), size, int(span, 16), None, sampled, None, baggage)) == headers
    assert formatted_trace_id(fmt, int(trace, 16), size) == (fmt, formatted)


def test_a_128_bit_trace_id_goes_out_in_datadog_as_its_low_64_bits():
    """03-propagation_module_spec "extract configured with header formats, multiple injection": w3c read, datadog
    and w3c written."""
    found = _extract([("traceparent", f"00-{TID16}-{SID1}-01")], (W3C,))
    params = Params((W3C,), (DATADOG, W3C), frozenset(), W3C)
    assert found is not None and formats_for(params, found) == (DATADOG, W3C)
    assert _text(inject(DATADOG, found.trace_id, found.trace_size, found.span_id, None, True)) == [
        ("x-datadog-trace-id", TID8_DEC), ("x-datadog-parent-id", SID1_DEC), ("x-datadog-sampling-priority", "1")]


def test_a_64_bit_trace_id_stays_64_bit_in_ot_and_grows_to_128_in_aws_and_gcp():
    """trace_id_allowed_sizes: ot {8, 16} keeps a 64-bit id; aws and gcp {16} pad it."""
    found = _extract([("ot-tracer-traceid", TID8), ("ot-tracer-spanid", SID1)], (OT,))
    assert found is not None
    carried = {fmt: formatted_trace_id(fmt, found.trace_id, found.trace_size)[1]
               for fmt in (OT, AWS, GCP, B3, W3C)}
    assert carried == {OT: TID8, AWS: _pad(TID8), GCP: _pad(TID8), B3: TID8, W3C: _pad(TID8)}


def test_jaegers_baggage_goes_out_as_ots_and_ots_as_jaegers():
    """The inject context's baggage is the extracted one, whichever format read it; values are escaped again."""
    jaeger = _extract([("uber-trace-id", f"{TID16}:{SID1}:0:01"), ("uberctx-user", "a%20b")], (JAEGER,))
    assert jaeger is not None and jaeger.baggage == [(b"user", b"a b")]
    assert _text(inject(OT, jaeger.trace_id, 16, 1, None, True, None, jaeger.baggage))[-1] == ("ot-baggage-user",
                                                                                             "a%20b")
    ot = _extract([("ot-tracer-traceid", TID16), ("ot-tracer-spanid", SID1), ("ot-baggage-k", "v")], (OT,))
    assert ot is not None
    assert _text(inject(JAEGER, ot.trace_id, 16, 1, None, True, None, ot.baggage))[-1] == ("uberctx-k", "v")


# --- the plugins' parameters: header_type, default_header_type, default_format --------------------------------------


def test_header_type_preserve_extracts_in_kongs_order():
    """get_plugin_params (init.lua:40-50, 3.9.3): b3, w3c, jaeger, ot, datadog, aws, gcp."""
    config = msgspec.convert({}, ZipkinConfig)
    params = plugin_params(config.propagation, config.header_type, config.default_header_type)
    assert params.extract == (B3, W3C, JAEGER, OT, DATADOG, AWS, GCP)


ONLY = {
    OT: [("ot-tracer-traceid", TID16), ("ot-tracer-spanid", SID1), ("ot-tracer-sampled", "1")],
    DATADOG: [("x-datadog-trace-id", TID8_DEC), ("x-datadog-parent-id", SID1_DEC),
              ("x-datadog-sampling-priority", "1")],
    AWS: [("x-amzn-trace-id", _aws())],
    GCP: [("x-cloud-trace-context", f"{TID16}/{SID1_DEC};o=1")],
}
CARRIED = {OT: TID16, DATADOG: _pad(TID8), AWS: TID16, GCP: TID16}


@pytest.mark.parametrize("fmt", list(ONLY))
def test_header_type_preserve_continues_each_format_in_itself(fmt):
    """The deprecated default: a request with only this format's headers is read, and "preserve" writes it back."""
    params = plugin_params(ZipkinConfig().propagation, "preserve", "b3")
    found = _extract(ONLY[fmt], params.extract or ())
    assert found is not None and (found.format, f"{found.trace_id:032x}") == (fmt, CARRIED[fmt])
    assert formats_for(params, found) == (fmt,)


def test_b3_before_datadog_wins_with_header_type_preserve():
    """Kong's order: b3 (then w3c and jaeger) are read before datadog."""
    found = _extract(ONLY[DATADOG] + [("x-b3-traceid", TID16), ("x-b3-spanid", SID1)])
    assert found is not None and found.format == B3


@pytest.mark.parametrize("fmt", list(ONLY))
def test_default_header_type_is_what_a_request_without_a_context_gets(fmt):
    """zipkin's default_header_type (get_plugin_params: propagation.default_format) with header_type preserve."""
    config = msgspec.convert({"default_header_type": fmt}, ZipkinConfig)
    params = plugin_params(config.propagation, config.header_type, config.default_header_type)
    assert formats_for(params, None) == (fmt,)


@pytest.mark.parametrize("fmt", list(ONLY))
def test_default_format_is_what_preserve_writes_when_nothing_was_read(fmt):
    """03-propagation_module_spec "extract = ignore, inject = preserve, uses default format" (datadog) and "extract
    configured with header not found in request ... uses default format" (ot)."""
    config = msgspec.convert({"propagation": {"extract": [DATADOG], "inject": ["preserve"], "default_format": fmt}},
                             ZipkinConfig)
    params = plugin_params(config.propagation, config.header_type, config.default_header_type)
    found = _extract([("traceparent", f"00-{TID16}-{SID1}-01")], params.extract or ())
    assert found is None and formats_for(params, found) == (fmt,)


def test_an_unknown_format_is_refused_naming_kongs_formats():
    message = "expected one of preserve, w3c, b3, b3-single, jaeger, ot, datadog, aws, gcp, got 'xray'"
    with pytest.raises(msgspec.ValidationError, match=message):
        msgspec.convert({"propagation": {"inject": ["xray"]}}, ZipkinConfig)


def test_the_serialized_trace_id_is_datadogs_decimal():
    """propagation.propagate's set_serialize_value("trace_id", ...): each injected format's formatted id."""
    trace = ZipkinTrace(int(TID16, 16), 16, 1, None, True, b"GET", None)
    trace.formats, trace.inject_size = (DATADOG, OT, W3C), 0
    assert trace.serialized() == {DATADOG: TID8_DEC, OT: TID8, W3C: TID16}
    otel = OtelTrace(int(TID8, 16), 8, 0, False)
    otel.formats = (DATADOG, OT, AWS)
    assert otel.serialized() == {DATADOG: TID8_DEC, OT: TID8, AWS: _pad(TID8)}


# --- through the gateway --------------------------------------------------------------------------------------------


async def test_zipkin_continues_a_datadog_only_requests_trace_upstream(nursery, gateway):
    """zipkin_spec's header_type "datadog" / preserve: a request with only datadog headers is the same trace
    upstream (its trace id, the proxy span as the parent, the caller's decision), and in the spans (the request span
    the child of the caller's)."""
    port, backend, collector = await _start(nursery, gateway, lambda c: _zipkin(c, sample_ratio=0))
    reply = await _get(port, x_datadog_trace_id=TID8_DEC, x_datadog_parent_id=SID1_DEC,
                       x_datadog_sampling_priority="1")
    assert reply.status == 200
    got = await _received(collector, 3)
    req, proxy = got["GET"], got["GET (proxy)"]
    assert (req["traceId"], req["parentId"]) == (_pad(TID8), SID1)
    seen = _upstream(backend)
    assert (seen.header("x-datadog-trace-id"), seen.header("x-datadog-parent-id"),
            seen.header("x-datadog-sampling-priority")) == (TID8_DEC, str(int(proxy["id"], 16)), "1")
    assert seen.header("x-b3-traceid") is None


@pytest.mark.parametrize("fmt", list(ONLY))
async def test_zipkin_preserve_writes_each_format_back_upstream(fmt, nursery, gateway):
    """header_type preserve (the default): the format that came is the one that goes, with the caller's trace id."""
    port, backend, _ = await _start(nursery, gateway, lambda c: _zipkin(None, sample_ratio=1), collector=False)
    assert (await _get(port, **{k.replace("-", "_"): v for k, v in ONLY[fmt]})).status == 200
    seen = _upstream(backend)
    raw = [(k.encode(), v.encode()) for k, v in seen.headers]
    found = extract(scan(raw, propagation.TRACE_HEADERS) or {}, raw, (fmt,))
    assert found is not None and f"{found.trace_id:032x}" == CARRIED[fmt] and found.span_id != int(SID1, 16)


async def test_zipkin_default_header_type_ot_starts_a_64_bit_ot_trace(nursery, gateway):
    """03-propagation_module_spec "uses default format" (ot): a new 16-byte trace goes out in ot's default 8."""
    port, backend, _ = await _start(nursery, gateway, lambda c: _zipkin(None, default_header_type="ot"),
                                    collector=False)
    assert (await _get(port)).status == 200
    seen = _upstream(backend)
    assert len(seen.header("ot-tracer-traceid")) == 16 and len(seen.header("ot-tracer-spanid")) == 16
    assert seen.header("x-b3-traceid") is None


async def test_zipkin_clears_datadogs_headers_after_reading_them(nursery, gateway):
    """propagation.clear: the datadog headers are read, then removed; the context goes on as w3c."""
    names = ["x-datadog-trace-id", "x-datadog-parent-id", "x-datadog-sampling-priority"]
    config = {"propagation": {"extract": ["datadog"], "inject": ["w3c"], "clear": names, "default_format": "w3c"}}
    port, backend, _ = await _start(nursery, gateway, lambda c: _zipkin(None, **config), collector=False)
    assert (await _get(port, **{k.replace("-", "_"): v for k, v in ONLY[DATADOG]})).status == 200
    seen = _upstream(backend)
    assert [seen.header(name) for name in names] == [None, None, None]
    assert seen.header("traceparent").startswith(f"00-{_pad(TID8)}-") and seen.header("traceparent").endswith("-01")


async def test_opentelemetry_continues_a_datadog_only_requests_trace_upstream(nursery, gateway):
    """37-opentelemetry's header_type preserve (tracing off: propagation only, never sampled): datadog in,
    datadog out with the caller's trace id and a span of the gateway's."""
    backend = EchoBackend()
    await nursery.start(backend.serve)
    plugin = {"name": "opentelemetry", "config": {"traces_endpoint": "http://127.0.0.1:9/v1/traces"}}
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}",
                                               [{"name": "r", "paths": ["/api"]}])], "plugins": [plugin]})
    reply = await _otel_get(port, x_datadog_trace_id=TID8_DEC, x_datadog_parent_id=SID1_DEC,
                            x_datadog_sampling_priority="1")
    assert reply.status == 200
    seen = backend.requests[-1]
    assert seen.header("x-datadog-trace-id") == TID8_DEC
    assert seen.header("x-datadog-parent-id") not in (None, SID1_DEC)
    assert seen.header("x-datadog-sampling-priority") == "0" and seen.header("traceparent") is None
