"""Trace context formats (w3c, b3, b3-single, jaeger), Kong's sampler, and the opentelemetry plugin's propagation
resolution (header_type vs propagation)."""

from __future__ import annotations

import os

import msgspec
import pytest

from gateway.policies.opentelemetry.handler import resolve_propagation
from gateway.policies.opentelemetry.schema import OpenTelemetryConfig
from gateway.telemetry.tracing import B3, B3_SINGLE, JAEGER, W3C, extract, inject, new_span_id, sample

TID = 0x0AF7651916CD43DD8448EB211C80319C
SID = 0xB7AD6B7169203331
ALL = (B3, W3C, JAEGER)


def test_w3c_traceparent_round_trips():
    headers = inject(W3C, TID, SID, 0, True)
    assert headers == [(b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")]
    found, present = extract(headers, ALL)
    assert present and (found.format, found.trace_id, found.span_id, found.sampled) == (W3C, TID, SID, True)


@pytest.mark.parametrize("value", [b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0",  # short flags
                                   b"00-00000000000000000000000000000000-b7ad6b7169203331-01",  # zero trace id
                                   b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # zero span id
                                   b"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # version ff
                                   b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x",  # extra in v00
                                   b"00-zzf7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"])
def test_an_invalid_traceparent_is_ignored(value):
    assert extract([(b"traceparent", value)], ALL) == (None, True)


def test_a_later_version_of_traceparent_may_carry_more_fields():
    found, _ = extract([(b"traceparent", b"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00-more")], ALL)
    assert found.trace_id == TID and found.sampled is False


def test_b3_multi_and_single_headers():
    multi = inject(B3, TID, SID, 0x1234, False)
    assert dict(multi) == {b"x-b3-traceid": b"%032x" % TID, b"x-b3-spanid": b"%016x" % SID,
                           b"x-b3-parentspanid": b"0000000000001234", b"x-b3-sampled": b"0"}
    found, _ = extract(multi, ALL)
    assert (found.format, found.trace_id, found.span_id, found.sampled, found.single) == (B3, TID, SID, False, False)
    single = inject(B3_SINGLE, TID, SID, 0x1234, True)
    assert single == [(b"b3", b"%032x-%016x-1-0000000000001234" % (TID, SID))]
    found, _ = extract(single, ALL)
    assert (found.format, found.trace_id, found.sampled, found.single) == (B3, TID, True, True)


def test_b3_with_a_64_bit_trace_id_and_the_debug_flag():
    found, _ = extract([(b"x-b3-traceid", b"8448eb211c80319c"), (b"x-b3-spanid", b"b7ad6b7169203331"),
                        (b"x-b3-flags", b"1")], ALL)
    assert found.trace_id == 0x8448EB211C80319C and found.sampled is True


def test_b3_single_with_only_a_decision_has_no_context():
    assert extract([(b"b3", b"0")], ALL) == (None, True)


def test_jaeger_uber_trace_id():
    headers = inject(JAEGER, TID, SID, 0x99, True)
    assert headers == [(b"uber-trace-id", b"%032x:%016x:99:01" % (TID, SID))]
    found, _ = extract(headers, ALL)
    assert (found.format, found.trace_id, found.span_id, found.sampled) == (JAEGER, TID, SID, True)
    found, _ = extract([(b"uber-trace-id", b"abc:def:0:0")], ALL)  # jaeger allows ids without leading zeros
    assert (found.trace_id, found.span_id, found.sampled) == (0xABC, 0xDEF, False)


def test_the_first_configured_format_found_wins():
    headers = inject(JAEGER, 1, 2, 0, True) + inject(W3C, 3, 4, 0, True)
    assert extract(headers, (W3C, JAEGER))[0].trace_id == 3
    assert extract(headers, (JAEGER, W3C))[0].trace_id == 1
    assert extract([(b"accept", b"*/*")], ALL) == (None, False)


def test_sampler_is_kongs_trace_id_ratio():
    assert sample(TID, 1.0) and not sample(TID, 0.0)
    # Kong reads the id's first 8 bytes as a little-endian uint64 (an FFI cast on x86)
    low_first_byte = int("01" + "ff" * 7 + "00" * 8, 16)  # as little-endian: 0xff..ff01, near 2^64
    high_first_byte = int("ff" + "00" * 7 + "00" * 8, 16)  # as little-endian: 0xff, near 0
    assert not sample(low_first_byte, 0.5) and sample(high_first_byte, 0.001)
    hits = sum(sample(int.from_bytes(i.to_bytes(2, "big") * 8, "big"), 0.25) for i in range(0, 65536, 16))
    assert 0.2 < hits / 4096 < 0.3


def _otel(**config) -> OpenTelemetryConfig:  # noqa: ANN003
    return msgspec.convert({"traces_endpoint": "http://127.0.0.1:4318/v1/traces", **config}, OpenTelemetryConfig)


def test_propagation_defaults_preserve_the_incoming_format():
    assert resolve_propagation(_otel())[:2] == (ALL, ("preserve",))


def test_header_type_ignore_starts_a_new_trace_in_the_default_format():
    assert resolve_propagation(_otel(header_type="ignore"))[:2] == ((), ("w3c",))


def test_header_type_names_an_extra_format_to_inject():
    assert resolve_propagation(_otel(header_type="jaeger"))[:2] == (ALL, ("preserve", "jaeger"))


def test_an_explicit_propagation_block_wins_over_header_type():
    config = _otel(header_type="b3", propagation={"extract": ["w3c"], "inject": ["b3-single"],
                                                  "clear": ["X-Trace-Secret"]})
    extract_, inject_, clear, default = resolve_propagation(config)
    assert (extract_, inject_, clear, default) == (("w3c",), ("b3-single",), frozenset({b"x-trace-secret"}), "w3c")


def test_forked_processes_draw_different_span_ids():
    """Workers are forked from one template process (the zygote): each must draw its own ids, or their spans collide."""
    ids = []
    for _ in range(2):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.write(write, b"%d" % new_span_id())
            os._exit(0)
        os.close(write)
        ids.append(os.read(read, 64))
        os.close(read)
        os.waitpid(pid, 0)
    assert ids[0] != ids[1]
