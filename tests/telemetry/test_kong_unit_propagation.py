"""Kong's propagation module as its unit specs test it: spec/01-unit/26-observability/02-propagation_strategies_spec.lua
(each extractor's error cases: the header is ignored with Kong's warning) and 03-propagation_module_spec.lua (which
configured extractor wins, what "preserve" writes next to other formats), on kong/observability/tracing/propagation/
extractors/{w3c,b3,jaeger}.lua; and propagation/schema.lua's `clear` names. Kong's other formats (ot, datadog, aws,
gcp) are tested in test_kong_propagation_formats.py (Kong 3.9.3 has no instana: test_propagation_3_9_3.py)."""

from __future__ import annotations

import json
import logging

import pytest
from plugins.plugin_helpers import plugin, refused

from gateway.config import ConfigError, parse_config
from gateway.runtime import compile_config
from gateway.telemetry import propagation
from gateway.telemetry.propagation import (
    B3,
    B3_SINGLE,
    JAEGER,
    W3C,
    Context,
    Params,
    extract,
    formats_for,
    inject,
    scan,
)

TID16 = "0af7651916cd43dd8448eb211c80319c"
TID8 = "8448eb211c80319c"
SID1 = "b7ad6b7169203331"
SID2 = "b7ad6b7169203332"
TOO_LONG = "1234567890123456789012345678901234567890"
LOGGER = "gateway.telemetry"


def _extract(headers: list[tuple[str, str]], formats: tuple[str, ...]) -> Context | None:
    raw = [(k.encode(), v.encode()) for k, v in headers]
    values = scan(raw, propagation.TRACE_HEADERS)
    return extract(values, raw, formats) if values is not None else None


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


W3C_ERRORS = [
    (f"vv-{TID16}-{SID1}-00", "invalid W3C traceparent header; ignoring."),
    (f"00-{'v' * 32}-{SID1}-00", "invalid W3C traceparent header; ignoring."),
    (f"00-{TID16}-{'v' * 16}-00", "invalid W3C traceparent header; ignoring."),
    (f"00-{TID16}-{SID1}-vv", "invalid W3C traceparent header; ignoring."),
    (f"00-123-{SID1}-00", "invalid W3C trace context trace ID; ignoring."),
    (f"00-{'0' * 32}-{SID1}-00", "invalid W3C trace context trace ID; ignoring."),
    (f"00-{TOO_LONG}-{SID1}-00", "invalid W3C trace context trace ID; ignoring."),
    (f"00-{TID16}-123-00", "invalid W3C trace context parent ID; ignoring."),
    (f"00-{TID16}-{TOO_LONG}-00", "invalid W3C trace context parent ID; ignoring."),
    (f"00-{TID16}-{'0' * 16}-00", "invalid W3C trace context parent ID; ignoring."),
    (f"01-{TID16}-{SID1}-00", "invalid W3C Trace Context version; ignoring."),
    (f"00-{TID16}-{SID1}-000", "invalid W3C trace context flags; ignoring."),
    (f"00-{TID16}-{SID1}-0", "invalid W3C trace context flags; ignoring."),
]
JAEGER_ERRORS = [
    (f"vv:{SID1}:{SID2}:00", "invalid jaeger uber-trace-id header; ignoring."),
    (f"{TID8}:vv:{SID2}:00", "invalid jaeger uber-trace-id header; ignoring."),
    (f"{TID8}:{SID1}:vv:00", "invalid jaeger uber-trace-id header; ignoring."),
    (f"{TID8}:{SID1}:{SID2}:vv", "invalid jaeger uber-trace-id header; ignoring."),
    (f"{TOO_LONG}:{SID1}:{SID2}:00", "invalid jaeger trace ID; ignoring."),
    (f"{'0' * 32}:{SID1}:{SID2}:00", "invalid jaeger trace ID; ignoring."),
    (f"{TID16}:{TOO_LONG}:{SID1}:00", "invalid jaeger span ID; ignoring."),
    (f"{TID16}:{'0' * 32}:{SID1}:00", "invalid jaeger span ID; ignoring."),
    (f"{TID16}:{SID1}:{SID2}:123", "invalid jaeger flags; ignoring."),
]


@pytest.mark.parametrize(("value", "warning"), W3C_ERRORS)
def test_an_invalid_traceparent_is_ignored_with_kongs_warning(value, warning, caplog):
    """w3c's extraction error cases: "invalid header 1-4", ids too short, too long or all zero, version, flags."""
    assert _extract([("traceparent", value)], (W3C,)) is None
    assert _warnings(caplog) == [warning]


@pytest.mark.parametrize(("value", "warning"), JAEGER_ERRORS)
def test_an_invalid_uber_trace_id_is_ignored_with_kongs_warning(value, warning, caplog):
    """jaeger's extraction error cases: "invalid header 1-4", trace and span ids too long or all zero, flags."""
    assert _extract([("uber-trace-id", value)], (JAEGER,)) is None
    assert _warnings(caplog) == [warning]


@pytest.mark.parametrize("value", [
    f"xxx-{SID1}-1-{SID2}", f"{TOO_LONG}-{SID1}-1-{SID2}", f"123-{SID1}-1-{SID2}", "", f"{TID16}-", f"{TID16}-xxx",
    f"{TID16}-{TOO_LONG}-1-{SID2}", f"{TID16}-123-1-{SID2}", f"{TID16}-{SID1}-x", f"{TID16}-{SID1}-d-xxx",
    f"{TID16}-{SID1}-d-{TOO_LONG}", f"{TID16}-{SID1}-d-123",
])
def test_an_invalid_b3_single_header_is_ignored_with_kongs_warning(value, caplog):
    """b3-single's extraction error cases: b3 is still the format found (Kong's b3 extractor answers whenever one of
    its headers is there), without ids."""
    found = _extract([("b3", value)], (B3, W3C))
    assert found is not None and (found.format, found.trace_id, found.single) == (B3, None, True)
    assert _warnings(caplog) == ["b3 single header invalid; ignoring."]


def test_each_invalid_x_b3_id_is_warned_about_and_none_is_kept(caplog):
    """b3 "invalid trace id": Kong checks the three id headers one after the other, warning about each it cannot
    read; the sampling decision stays."""
    found = _extract([("x-b3-traceid", "x"), ("x-b3-spanid", "123"), ("x-b3-parentspanid", TOO_LONG),
                      ("x-b3-sampled", "0")], (B3,))
    assert found is not None and (found.trace_id, found.span_id, found.parent_id, found.sampled) == (
        None, None, None, False)
    assert _warnings(caplog) == ["x-b3-traceid header invalid; ignoring.", "x-b3-spanid header invalid; ignoring.",
                                 "x-b3-parentspanid header invalid; ignoring."]


def test_an_invalid_x_b3_sampled_or_flags_is_warned_about_and_the_flags_still_go_on(caplog):
    """read_multi_header: an X-B3-Sampled other than 1, 0, true or false is no decision; an X-B3-Flags other than 1
    decides nothing but is passed on as it came (the b3 injector writes it in place of X-B3-Sampled)."""
    found = _extract([("x-b3-traceid", TID16), ("x-b3-spanid", SID1), ("x-b3-sampled", "yes"), ("x-b3-flags", "0")],
                     (B3,))
    assert found is not None and (found.trace_id, found.sampled, found.flags) == (int(TID16, 16), None, b"0")
    assert _warnings(caplog) == ["x-b3-sampled header invalid; ignoring.", "x-b3-flags header invalid; ignoring."]
    assert inject(B3, found.trace_id, 16, 1, 2, None, found.flags)[-1] == (b"x-b3-flags", b"0")


@pytest.mark.parametrize(("parent", "expected"), [("ff", 0xFF), (TOO_LONG, int(TOO_LONG[-16:], 16))])
def test_an_invalid_jaeger_parent_id_is_warned_about_but_the_context_is_kept(parent, expected, caplog):
    """jaeger "invalid parent id (too short)" / "(too long)": Kong only warns (a parent can be ignored), the id is
    padded or cut to its last 8 bytes."""
    found = _extract([("uber-trace-id", f"{TID16}:{SID1}:{parent}:01")], (JAEGER,))
    assert found is not None and (found.trace_id, found.span_id, found.parent_id, found.sampled) == (
        int(TID16, 16), int(SID1, 16), expected, True)
    assert _warnings(caplog) == ["invalid jaeger parent ID; ignoring."]


@pytest.mark.parametrize(("name", "value", "formats", "warning"), [
    ("traceparent", f"00-{TID16}-{SID1}-01", (W3C,), None),
    ("uber-trace-id", f"{TID16}:{SID1}:0:01", (JAEGER,), None),
    ("b3", f"{TID16}-{SID1}-1", (B3,), None),
    ("x-b3-traceid", TID16, (B3,), "x-b3-traceid header invalid; ignoring."),
    ("x-b3-sampled", "1", (B3,), "x-b3-sampled header invalid; ignoring."),
])
def test_a_header_given_twice_is_passed_over_silently_but_x_b3_headers_are_warned_about(name, value, formats,
                                                                                         warning, caplog):
    """Kong's extractors read ngx.req.get_headers(), where a repeated header is a table: w3c, jaeger and b3-single
    skip a value that is not a string without a word; the X-B3 checks see an invalid value and warn."""
    found = _extract([(name, value), (name, value)], formats)
    assert found is None or found.trace_id is None
    assert _warnings(caplog) == ([warning] if warning else [])


# --- 03-propagation_module_spec: several formats in one request ------------------------------------------------------

REQUEST_HEADERS_1 = [
    ("traceparent", f"00-{TID16}-{SID1}-01"),
    ("x-b3-traceid", "dc9d1b0ccedf0ecaf4f26ffab84d4f5e"), ("x-b3-spanid", "b7ad6b7169203332"), ("x-b3-sampled", "1"),
    ("x-b3-parentspanid", "f4f26ffab84d4f5f"),
    ("uber-trace-id", "f744b23fe9aa64f08255043ba51848db:f4f26ffab84d4f60:f4f26ffab84d4f61:01"),
]


@pytest.mark.parametrize(("formats", "fmt", "trace_id"), [
    ((B3, W3C, JAEGER), B3, "dc9d1b0ccedf0ecaf4f26ffab84d4f5e"),
    ((W3C, B3, JAEGER), W3C, TID16),
    (("datadog", JAEGER, B3), JAEGER, "f744b23fe9aa64f08255043ba51848db"),
])
def test_the_first_configured_extractor_that_finds_its_headers_wins(formats, fmt, trace_id, caplog):
    """"extract configured with header formats, b3 first" / "w3c first" / "missing first header" (datadog first,
    without its headers: jaeger is the first found)."""
    found = _extract(REQUEST_HEADERS_1, formats)
    assert found is not None and (found.format, found.trace_id) == (fmt, int(trace_id, 16))
    assert _warnings(caplog) == []


def test_preserve_between_other_formats_writes_the_found_one_in_its_place():
    """"extract configured with header found in request, inject = preserve + other formats": b3 (multi) found,
    inject w3c, preserve, b3-single."""
    found = _extract(REQUEST_HEADERS_1, (B3, W3C, JAEGER))
    params = Params((B3, W3C, JAEGER), (W3C, "preserve", B3_SINGLE), frozenset(), W3C)
    assert formats_for(params, found) == (W3C, B3, B3_SINGLE)


# --- propagation/schema.lua: clear ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("plugin_name", "config"), [
    ("zipkin", {}), ("opentelemetry", {"traces_endpoint": "http://127.0.0.1:4318/v1/traces"})])
@pytest.mark.parametrize(("name", "message"), [
    ("x.trace", "bad header name 'x.trace', allowed characters are A-Z, a-z, 0-9, '_', and '-'"),
    ("x@trace", "bad header name 'x@trace', allowed characters are A-Z, a-z, 0-9, '_', and '-'"),
    ("", "length must be at least 1"),
])
def test_a_header_name_to_clear_is_checked_as_kongs_validate_header_name(plugin_name, config, name, message):
    """The schema's clear elements: a string (at least 1 long) with kong.tools.http.validate_header_name (letters
    of either case, digits, "_" and "-": the first name passes)."""
    doc = plugin(plugin_name, **config, propagation={"clear": ["X_Trace-Secret", name], "default_format": "w3c"})
    assert f"plugins[0].config.propagation.clear[1]: {message}" in refused(doc)


@pytest.mark.parametrize("plugin", ["zipkin", "opentelemetry"])
def test_a_propagation_block_without_default_format_is_refused(plugin):
    """kong/observability/tracing/propagation/schema.lua: default_format is required; the plugin's default
    (typedefs.propagation's record default) applies only when no propagation block is given at all."""
    with pytest.raises(ConfigError) as info:
        compile_config(parse_config(json.dumps({"plugins": [{"name": plugin, "config": {
            "propagation": {"extract": ["w3c"], "inject": ["preserve"]}}}]}), "t.yml"), "t.yml")
    assert info.value.messages == ["t.yml: plugins[0].config.propagation.default_format: required field missing"]


# --- extractors/datadog.lua: ids of any length ----------------------------------------------------------------------

HUGE_DEC = "9" * 5000  # fits in a header line, more digits than Python's int() takes (4300)
HUGE = 10**5000 - 1


@pytest.mark.parametrize(("digits", "value"), [
    (HUGE_DEC, HUGE),
    (" " + "0" * 5000 + "12345 ", 12345),
    (str(2**128 + 5), 2**128 + 5),
    (str(2**64), 2**64),
], ids=["5000 digits", "leading zeros and spaces", "39 digits", "2^64"])  # (str() refuses HUGE too)
def test_a_datadog_id_of_any_length_keeps_its_low_bytes_as_kongs_bn(digits, value):
    """datadog.lua reads ^%s*(%d+)%s*$ of any length (bn.from_dec, to_binary); _base.lua keeps the trace id's low 16
    bytes and the span id's low 8, and the trace id's size as it came (one over 16 bytes, which no injector keeps,
    is not told apart)."""
    found = _extract([("x-datadog-trace-id", digits), ("x-datadog-parent-id", digits)], (propagation.DATADOG,))
    assert found is not None and found.format == propagation.DATADOG
    assert (found.trace_id, found.span_id) == (value & propagation.MAX_TRACE, value & propagation.MAX_SPAN)
    assert min(found.trace_size, 17) == min((value.bit_length() + 7) // 8, 17)
