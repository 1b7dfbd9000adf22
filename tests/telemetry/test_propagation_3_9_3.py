"""Kong 3.9.3's trace context formats, no more: instana came to Kong's master (2b600a3735, Feb 2025) after 3.9.3 and
is in no release, so the gateway neither reads nor writes it and the zipkin and opentelemetry schemas refuse it
wherever a format is named (kong/observability/tracing/propagation/utils.lua:12-21 FORMATS, propagation/init.lua:40-50
the header_type "preserve" extractors, propagation/schema.lua, zipkin/schema.lua:58-64, opentelemetry/schema.lua:81)."""

from __future__ import annotations

import re
from typing import Any

import pytest
import trio
from backends import EchoBackend, request, service
from plugins.plugin_helpers import plugin, refused

from gateway.telemetry import propagation

TIMEOUT = 10
INSTANA_T = "0af7651916cd43dd8448eb211c80319c"
INSTANA_S = "b7ad6b7169203331"
INSTANA = [("x-instana-t", INSTANA_T), ("x-instana-s", INSTANA_S), ("x-instana-l", "1")]
# kong/observability/tracing/propagation/utils.lua:12-21 (3.9.3)
FORMATS_3_9_3 = {"w3c", "b3", "b3-single", "jaeger", "ot", "datadog", "aws", "gcp"}
# zipkin/schema.lua:58-64 and opentelemetry/schema.lua:81 (3.9.3): header_type and default_header_type's one_of
HEADER_TYPES_3_9_3 = {"preserve", "ignore"} | FORMATS_3_9_3
DEFAULT_HEADER_TYPES_3_9_3 = FORMATS_3_9_3
OTEL_ENDPOINT = "http://127.0.0.1:4318/v1/traces"


@pytest.fixture
def http_codec() -> str:
    """One codec: what these tests check is above HTTP framing."""
    return "llhttp"


def test_the_formats_are_kong_3_9_3s():
    """utils.lua:12-21 (3.9.3) FORMATS: what inject and default_format take; init.lua:40-50: header_type "preserve"
    extracts b3, w3c, jaeger, ot, datadog, aws, gcp, in that order."""
    assert set(propagation.KONG_FORMATS) == FORMATS_3_9_3
    assert propagation.LEGACY_EXTRACT == ("b3", "w3c", "jaeger", "ot", "datadog", "aws", "gcp")


def test_instana_headers_alone_are_no_trace_context():
    """init.lua:40-50 (3.9.3): no extractor reads x-instana-*, so a request with only those has no context."""
    raw = [(name.encode(), value.encode()) for name, value in INSTANA]
    values = propagation.scan(raw, propagation.TRACE_HEADERS)
    assert values is None or propagation.extract(values, raw, propagation.LEGACY_EXTRACT) is None


async def test_zipkin_starts_a_new_trace_and_passes_instana_headers_on_untouched(nursery, gateway):
    """init.lua:40-50 (3.9.3) and zipkin/schema.lua:62 (default_header_type b3): a request carrying only instana
    headers has no context, so Kong starts a new trace, injects b3 and leaves the x-instana-* headers as they came."""
    backend = EchoBackend()
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}", [{"paths": ["/"]}])],
                          "plugins": [{"name": "zipkin", "config": {}}]})
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/", headers=INSTANA)
    assert reply.status == 200
    seen = backend.requests[-1]
    assert [(name, seen.header(name)) for name, _ in INSTANA] == INSTANA
    assert seen.header("x-b3-traceid") not in (None, INSTANA_T)


def _allowed(message: str, field: str) -> set[str]:
    """The values the error for `field` says are allowed (the one_of list), quotes removed."""
    m = re.search(re.escape(f"config.{field}: expected one of ") + r"(.*), got ", message)
    assert m is not None, message
    return {value.strip("\"'") for value in m[1].split(", ")}


ZIPKIN_FIELDS = [
    ({"header_type": "instana"}, "header_type", HEADER_TYPES_3_9_3),
    ({"default_header_type": "instana"}, "default_header_type", DEFAULT_HEADER_TYPES_3_9_3),
    ({"propagation": {"extract": ["instana"], "default_format": "b3"}}, "propagation.extract[0]",
     FORMATS_3_9_3 - {"b3-single"}),
    ({"propagation": {"inject": ["instana"], "default_format": "b3"}}, "propagation.inject[0]",
     {"preserve"} | FORMATS_3_9_3),
    ({"propagation": {"default_format": "instana"}}, "propagation.default_format", FORMATS_3_9_3),
]


@pytest.mark.parametrize(("config", "field", "allowed"), ZIPKIN_FIELDS, ids=[case[1] for case in ZIPKIN_FIELDS])
def test_zipkin_refuses_instana_naming_kong_3_9_3s_values(config, field, allowed):
    """zipkin/schema.lua:58-64 (3.9.3) one_of for header_type and default_header_type; propagation/schema.lua builds
    extract (all but b3-single), inject ("preserve" and all) and default_format from FORMATS: none has instana."""
    assert _allowed(refused(plugin("zipkin", **config)), field) == allowed


OTEL_FIELDS = [
    ({"header_type": "instana"}, "header_type", HEADER_TYPES_3_9_3),
    ({"propagation": {"extract": ["w3c", "instana"], "default_format": "w3c"}}, "propagation.extract[1]",
     FORMATS_3_9_3 - {"b3-single"}),
    ({"propagation": {"inject": ["instana"], "default_format": "w3c"}}, "propagation.inject[0]",
     {"preserve"} | FORMATS_3_9_3),
    ({"propagation": {"extract": [], "default_format": "instana"}}, "propagation.default_format", FORMATS_3_9_3),
]


@pytest.mark.parametrize(("config", "field", "allowed"), OTEL_FIELDS, ids=[case[1] for case in OTEL_FIELDS])
def test_opentelemetry_refuses_instana_naming_kong_3_9_3s_values(config: dict[str, Any], field, allowed):
    """opentelemetry/schema.lua:81 (3.9.3) header_type one_of and typedefs.propagation (propagation/schema.lua):
    no instana."""
    message = refused(plugin("opentelemetry", traces_endpoint=OTEL_ENDPOINT, **config))
    assert _allowed(message, field) == allowed
