"""Kong's sampler, span ids, the opentelemetry plugin's propagation resolution (header_type vs propagation) and its
schema's empty strings. The formats themselves are read and written by gateway.telemetry.propagation
(tests/telemetry/test_tel_zipkin.py and test_kong_spec_tracing_plugins.py)."""

from __future__ import annotations

import os

import msgspec
import pytest
import trio
from backends import EchoBackend, request, service
from plugins.plugin_helpers import plugin, refused

from gateway.policies.opentelemetry.handler import resolve_propagation
from gateway.policies.opentelemetry.schema import OpenTelemetryConfig
from gateway.telemetry.tracing import B3, JAEGER, W3C, new_span_id, sample

TID = 0x0AF7651916CD43DD8448EB211C80319C
SID = 0xB7AD6B7169203331
ENDPOINT = "http://127.0.0.1:4318/v1/traces"
ALL = (B3, W3C, JAEGER, "ot", "datadog", "aws", "gcp")  # Kong 3.9.3's get_plugin_params order for header_type


def test_sampler_is_kongs_trace_id_ratio():
    assert sample(TID, 1.0) and not sample(TID, 0.0)
    # Kong reads the id's first 8 bytes as a little-endian uint64 (an FFI cast on x86)
    low_first_byte = int("01" + "ff" * 7 + "00" * 8, 16)  # as little-endian: 0xff..ff01, near 2^64
    high_first_byte = int("ff" + "00" * 7 + "00" * 8, 16)  # as little-endian: 0xff, near 0
    assert not sample(low_first_byte, 0.5) and sample(high_first_byte, 0.001)
    hits = sum(sample(int.from_bytes(i.to_bytes(2, "big") * 8, "big"), 0.25) for i in range(0, 65536, 16))
    assert 0.2 < hits / 4096 < 0.3


def _otel(**config) -> OpenTelemetryConfig:  # noqa: ANN003
    return msgspec.convert({"traces_endpoint": ENDPOINT, **config}, OpenTelemetryConfig)


def test_propagation_defaults_preserve_the_incoming_format():
    assert resolve_propagation(_otel())[:2] == (ALL, ("preserve",))


def test_header_type_ignore_starts_a_new_trace_in_the_default_format():
    assert resolve_propagation(_otel(header_type="ignore"))[:2] == ((), ("w3c",))


def test_header_type_names_an_extra_format_to_inject():
    assert resolve_propagation(_otel(header_type="jaeger"))[:2] == (ALL, ("preserve", "jaeger"))


def test_an_explicit_propagation_block_wins_over_header_type():
    config = _otel(header_type="b3", propagation={"extract": ["w3c"], "inject": ["b3-single"],
                                                  "clear": ["X-Trace-Secret"], "default_format": "w3c"})
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


@pytest.mark.parametrize(("field", "config"), [
    ("traces_endpoint", {"traces_endpoint": ""}),
    ("endpoint", {"endpoint": ""}),
    ("logs_endpoint", {"traces_endpoint": ENDPOINT, "logs_endpoint": ""}),
    ("http_response_header_for_traceid", {"traces_endpoint": ENDPOINT, "http_response_header_for_traceid": ""}),
    ("headers", {"traces_endpoint": ENDPOINT, "headers": {"": "token"}}),
    ("headers: Authorization", {"traces_endpoint": ENDPOINT, "headers": {"Authorization": ""}}),
])
def test_an_empty_string_is_refused_as_kongs_len_min(field, config):
    """kong/db/schema/init.lua: a string field without its own len_min (the headers' names and values too) has
    len_min 1, so "" is refused."""
    assert f"plugins[0].config.{field}: length must be at least 1" in refused(plugin("opentelemetry", **config))


@pytest.fixture
def http_codec() -> str:
    """One codec: what these tests check is above HTTP framing."""
    return "llhttp"


async def test_a_datadog_trace_id_of_any_length_is_proxied(nursery, gateway):
    """datadog.lua takes any number of digits (bn.from_dec): a trace id longer than Python's int() takes is
    proxied, and goes on in its low 64 bits."""
    huge = "9" * 5000
    backend = EchoBackend()
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}")],
                          "plugins": [plugin("opentelemetry", traces_endpoint=ENDPOINT)]})
    with trio.fail_after(10):
        reply = await request(port, "GET", "/", headers=[("x-datadog-trace-id", huge)])
    assert reply.status == 200
    assert backend.requests[0].header("x-datadog-trace-id") == str(2**64 - 1)  # 10^5000 - 1 is -1 mod 2^64
