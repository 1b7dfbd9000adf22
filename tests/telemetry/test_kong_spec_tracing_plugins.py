"""The opentelemetry and zipkin plugins against Kong's own source and spec: the opentelemetry plugin propagates with
Kong's propagation module (kong/observability/tracing/propagation/, the same extractors and injectors as zipkin's),
its config is checked as Kong's schema checks it, and a request its access step did not see gets the trace Kong's
request instrumentation started for it. Docstrings cite the Kong spec (spec/03-plugins/37-opentelemetry/,
spec/03-plugins/34-zipkin/) or source file each behaviour comes from."""

from __future__ import annotations

import re
from typing import Any

import msgspec
import pytest
import trio
from backends import EchoBackend, Seen, request, service, wait_until
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from plugins.plugin_helpers import plugin, refused

from gateway.policies.opentelemetry.schema import OpenTelemetryConfig

TIMEOUT = 10
TID16 = "0af7651916cd43dd8448eb211c80319c"
TID8 = "8448eb211c80319c"
SID1 = "b7ad6b7169203331"
SID2 = "b7ad6b7169203332"
HEX16 = "[0-9a-f]{16}"


@pytest.fixture
def http_codec() -> str:
    """One codec: what these tests check is above HTTP framing."""
    return "llhttp"


# --- opentelemetry through the gateway ------------------------------------------------------------------------------


def _otel(collector: EchoBackend, **config: Any) -> dict[str, Any]:
    return {"name": "opentelemetry", "config": {"traces_endpoint": f"http://127.0.0.1:{collector.port}/v1/traces",
                                                "queue": {"max_coalescing_delay": 0.02}, **config}}


async def _start(nursery: trio.Nursery, gateway: Any, **config: Any) -> tuple[int, EchoBackend, EchoBackend]:
    """An echo backend behind service `svc` (route `r`, path /api) and the gateway, with tracing on
    (tracing_instrumentations all, as Kong's specs run it), with a global opentelemetry plugin: (port, backend,
    collector)."""
    backend, collector = EchoBackend(), EchoBackend("collector")
    await nursery.start(backend.serve)
    await nursery.start(collector.serve)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}",
                                               [{"name": "r", "paths": ["/api"]}])],
                          "plugins": [_otel(collector, **config)]}, tracing_instrumentations="all")
    return port, backend, collector


async def _get(port: int, target: str = "/api", **headers: str) -> Any:
    with trio.fail_after(TIMEOUT):
        return await request(port, "GET", target, headers=[(k.replace("_", "-"), v) for k, v in headers.items()])


def _upstream(backend: EchoBackend) -> Seen:
    return backend.requests[-1]


def _exports(collector: EchoBackend) -> list[ExportTraceServiceRequest]:
    return [ExportTraceServiceRequest.FromString(seen.body) for seen in collector.requests]


def _spans(collector: EchoBackend) -> list[Span]:
    return [span for export in _exports(collector) for rs in export.resource_spans for ss in rs.scope_spans
            for span in ss.spans]


async def test_otel_b3_trace_id_without_a_span_id_is_continued(nursery, gateway):
    """03-propagation_spec "propagates tracing headers (b3 request)": x-b3-sampled and x-b3-traceid alone; the
    trace id goes on upstream in b3 (preserve), with Kong's span and the request span as its parent."""
    port, backend, _ = await _start(nursery, gateway, sampling_rate=1)
    assert (await _get(port, x_b3_sampled="1", x_b3_traceid=TID16)).status == 200
    seen = _upstream(backend)
    assert seen.header("x-b3-traceid") == TID16 and seen.header("x-b3-sampled") == "1"
    assert re.fullmatch(HEX16, seen.header("x-b3-spanid") or "")
    assert re.fullmatch(HEX16, seen.header("x-b3-parentspanid") or "")
    assert seen.header("traceparent") is None


async def test_otel_a_lone_b3_sampled_flag_keeps_b3_as_the_format(nursery, gateway):
    """Kong's b3 extractor (extractors/b3.lua) returns a context for `x-b3-sampled: 1` alone, so preserve injects b3
    (a new trace), not default_format's traceparent."""
    port, backend, _ = await _start(nursery, gateway, sampling_rate=1)
    assert (await _get(port, x_b3_sampled="1")).status == 200
    seen = _upstream(backend)
    assert re.fullmatch("[0-9a-f]{32}", seen.header("x-b3-traceid") or "") and seen.header("x-b3-sampled") == "1"
    assert seen.header("traceparent") is None


async def test_otel_a_64_bit_b3_trace_id_stays_64_bit_upstream_and_is_padded_in_spans(nursery, gateway):
    """Kong's injectors keep the incoming trace id's size where the format allows it (injectors/_base.lua,
    trace_id_allowed_sizes), and its spans carry the id padded to 16 bytes (extractors/_base.lua)."""
    port, backend, collector = await _start(nursery, gateway, sampling_rate=1, http_response_header_for_traceid="x-t",
                                            header_type="w3c")
    reply = await _get(port, x_b3_traceid=TID8, x_b3_spanid=SID1, x_b3_sampled="1")
    assert reply.header("x-t") == "0" * 16 + TID8
    seen = _upstream(backend)
    assert seen.header("x-b3-traceid") == TID8
    assert re.fullmatch(f"00-{'0' * 16}{TID8}-{HEX16}-01", seen.header("traceparent") or "")
    spans = await wait_until(lambda: _spans(collector), "spans")
    assert {s.trace_id.hex() for s in spans} == {"0" * 16 + TID8}


async def test_otel_b3_debug_flag_is_passed_on(nursery, gateway):
    """Kong's opentelemetry keeps the extracted b3 flags in the injected context (traces.lua get_inject_ctx): b3 is
    written with x-b3-flags: 1 in place of x-b3-sampled, b3-single with the `d` flag."""
    port, backend, _ = await _start(nursery, gateway, sampling_rate=1, header_type="b3-single")
    assert (await _get(port, x_b3_traceid=TID16, x_b3_spanid=SID1, x_b3_flags="1")).status == 200
    seen = _upstream(backend)
    assert seen.header("x-b3-traceid") == TID16 and seen.header("x-b3-flags") == "1"
    assert seen.header("x-b3-sampled") is None
    assert re.fullmatch(f"{TID16}-{HEX16}-d-{HEX16}", seen.header("b3") or "")


async def test_otel_b3_from_tracestate_is_read(nursery, gateway):
    """Kong's b3 extractor reads a `b3=` member of tracestate when there is no b3 header."""
    port, backend, _ = await _start(nursery, gateway, sampling_rate=1)
    assert (await _get(port, tracestate=f"b3={TID16}-{SID1}-1")).status == 200
    assert re.fullmatch(f"{TID16}-{HEX16}-1-{HEX16}", _upstream(backend).header("b3") or "")


async def test_otel_jaeger_baggage_and_parent_are_passed_on(nursery, gateway):
    """03-propagation_spec "propagates jaeger tracing headers" (a 16-hex parent), with Kong's jaeger injector
    writing the extracted uberctx- baggage again."""
    port, backend, _ = await _start(nursery, gateway, sampling_rate=1)
    reply = await _get(port, uber_trace_id=f"{TID16}:{SID1}:{SID2}:1", uberctx_user="a%20b")
    assert reply.status == 200
    seen = _upstream(backend)
    assert re.fullmatch(f"{TID16}:{HEX16}:{HEX16}:01", seen.header("uber-trace-id") or "")
    assert seen.header("uberctx-user") == "a%20b"


async def test_otel_only_the_headers_it_writes_are_replaced(nursery, gateway):
    """Kong's propagation sets the headers its injectors write and clears only `clear`'s: a traceparent read (b3,
    w3c, jaeger: w3c is the first found) goes out again, the uber-trace-id next to it is left as it came."""
    port, backend, _ = await _start(nursery, gateway, sampling_rate=1)
    jaeger = f"{TID16}:{SID2}:0:1"
    assert (await _get(port, traceparent=f"00-{TID16}-{SID1}-01", uber_trace_id=jaeger)).status == 200
    seen = _upstream(backend)
    assert re.fullmatch(f"00-{TID16}-{HEX16}-01", seen.header("traceparent") or "")
    assert seen.header("traceparent") != f"00-{TID16}-{SID1}-01"
    assert seen.header("uber-trace-id") == jaeger


async def test_otel_clear_removes_headers_after_extraction(nursery, gateway):
    """03-propagation_spec "clears non-propagated headers when configured to do so" (with jaeger's header for the
    ot ones, which the gateway does not read)."""
    port, backend, _ = await _start(nursery, gateway, sampling_rate=1, propagation={
        "extract": ["w3c", "jaeger"], "inject": ["preserve"], "clear": ["uber-trace-id", "uberctx-user"],
        "default_format": "b3"})
    reply = await _get(port, traceparent=f"00-{TID16}-{SID1}-01", uber_trace_id=f"{TID16}:{SID1}:0:1",
                       uberctx_user="x")
    assert reply.status == 200
    seen = _upstream(backend)
    assert re.fullmatch(f"00-{TID16}-{HEX16}-01", seen.header("traceparent") or "")
    assert seen.header("uber-trace-id") is None and seen.header("uberctx-user") is None


async def test_otel_without_preserve_the_incoming_header_is_left_as_it_came(nursery, gateway):
    """03-propagation_spec "does not preserve incoming header type if preserve is not specified"."""
    port, backend, _ = await _start(nursery, gateway, sampling_rate=1, header_type="preserve",
                                    propagation={"extract": ["b3"], "inject": ["w3c"], "default_format": "w3c"})
    b3 = f"{TID16}-{SID1}-1-{SID2}"
    assert (await _get(port, b3=b3)).status == 200
    seen = _upstream(backend)
    assert seen.header("b3") == b3
    assert re.fullmatch(f"00-{TID16}-{HEX16}-01", seen.header("traceparent") or "")


async def test_otel_a_traceparent_of_another_version_is_not_read(nursery, gateway):
    """Kong's w3c extractor: "Only support version 00 of the W3C Trace Context spec"."""
    port, backend, _ = await _start(nursery, gateway, sampling_rate=1)
    assert (await _get(port, traceparent=f"01-{TID16}-{SID1}-01-extra")).status == 200
    traceparent = _upstream(backend).header("traceparent") or ""
    assert re.fullmatch(f"00-[0-9a-f]{{32}}-{HEX16}-01", traceparent) and TID16 not in traceparent


async def test_otel_a_request_its_access_step_did_not_see_has_a_trace_of_its_own(nursery, gateway):
    """The trace id header comes from Kong's header_filter (traces.lua) also on a 404 no route matched; the trace
    is the root span's that Kong's request instrumentation started, so a caller's traceparent is not continued."""
    port, _, _ = await _start(nursery, gateway, sampling_rate=1, http_response_header_for_traceid="x-trace")
    reply = await _get(port, "/nowhere", traceparent=f"00-{TID16}-{SID1}-01")
    assert reply.status == 404
    trace_id = reply.header("x-trace") or ""
    assert re.fullmatch("[0-9a-f]{32}", trace_id) and trace_id != TID16


async def test_otel_the_trace_id_header_is_the_one_sent_upstream(nursery, gateway):
    """03-propagation_spec / traces.lua header_filter: http_response_header_for_traceid is the trace id, once."""
    port, backend, _ = await _start(nursery, gateway, sampling_rate=0, http_response_header_for_traceid="x-trace")
    reply = await _get(port, traceparent=f"00-{TID16}-{SID1}-01")
    assert [v for k, v in reply.headers if k.lower() == "x-trace"] == [TID16]
    assert re.fullmatch(f"00-{TID16}-{HEX16}-00", _upstream(backend).header("traceparent") or "")


async def test_otel_an_underscore_in_the_trace_id_header_name_is_sent_as_a_dash(nursery, gateway):
    """traces.lua:117 kong.response.add_header(conf.http_response_header_for_traceid, ...): lua-nginx-module writes a
    "_" of a response header name as "-" (transform_underscores_in_response_headers, on by default)."""
    port, _, _ = await _start(nursery, gateway, sampling_rate=0, http_response_header_for_traceid="X_Trace_Id")
    reply = await _get(port, traceparent=f"00-{TID16}-{SID1}-01")
    assert [v for k, v in reply.headers if k.lower() == "x-trace-id"] == [TID16]
    assert not [k for k, _ in reply.headers if k.lower() == "x_trace_id"]


async def test_otel_resource_service_instance_id_is_the_node_id(nursery, gateway):
    """Kong's otlp encoder (kong/observability/otlp/init.lua): service.instance.id is kong.node.get_id()."""
    port, _, collector = await _start(nursery, gateway, sampling_rate=1)
    assert (await _get(port)).status == 200
    exports = await wait_until(lambda: _exports(collector), "an export")
    attrs = {kv.key: kv.value.string_value for kv in exports[0].resource_spans[0].resource.attributes}
    assert attrs["service.name"] == "kong"
    assert re.fullmatch("[0-9a-f-]{36}", attrs["service.instance.id"])


async def test_otel_sampling_rate_decides_by_the_trace_id(nursery, gateway):
    """04-exporter_spec "With config.sampling_rate set": at 0.5, 92a54b3e1a7c4f2da9e44b8a6f3e1dab is always sampled
    and 4bf92f3577b34da6a3ce929d0e0e4736 never (the caller's sampled flag does not force it)."""
    port, backend, collector = await _start(nursery, gateway, sampling_rate=0.5)
    for trace_id in ("4bf92f3577b34da6a3ce929d0e0e4736", "92a54b3e1a7c4f2da9e44b8a6f3e1dab"):
        assert (await _get(port, traceparent=f"00-{trace_id}-0123456789abcdef-01")).status == 200
    assert (_upstream(backend).header("traceparent") or "").endswith("-01")
    assert backend.requests[0].header("traceparent").endswith("-00")
    spans = await wait_until(lambda: _spans(collector), "spans")
    await trio.sleep(0.1)
    assert {s.trace_id.hex() for s in _spans(collector)} == {"92a54b3e1a7c4f2da9e44b8a6f3e1dab"} and spans


async def test_otel_exports_carry_the_configured_headers(nursery, gateway):
    """04-exporter_spec "exports valid traces": Content-Type application/x-protobuf and the custom headers."""
    port, _, collector = await _start(nursery, gateway, sampling_rate=1, headers={"X-Access-Token": "token"})
    assert (await _get(port)).status == 200
    seen = await wait_until(lambda: collector.requests and collector.requests[0], "an export")
    assert (seen.header("content-type"), seen.header("x-access-token")) == ("application/x-protobuf", "token")


async def test_otel_a_configured_content_type_is_sent_in_place_of_protobufs(nursery, gateway):
    """Kong's get_headers (opentelemetry/utils.lua): a Content-Type in `headers` is sent as it is."""
    port, _, collector = await _start(nursery, gateway, sampling_rate=1,
                                      headers={"Content-Type": "application/x-protobuf; charset=binary"})
    assert (await _get(port)).status == 200
    seen = await wait_until(lambda: collector.requests and collector.requests[0], "an export")
    assert [v for k, v in seen.headers if k == "content-type"] == ["application/x-protobuf; charset=binary"]


# --- opentelemetry config -------------------------------------------------------------------------------------------


def _config(**config: Any) -> OpenTelemetryConfig:
    return msgspec.convert({"traces_endpoint": "http://127.0.0.1:4318/v1/traces", **config}, OpenTelemetryConfig)


def _refused(**config: Any) -> str:
    return refused(plugin("opentelemetry", traces_endpoint="http://127.0.0.1:4318/v1/traces", **config))


def test_otel_an_empty_resource_attribute_is_refused_with_kongs_message():
    """02-schema_spec "rejects invalid attribute values"."""
    assert "plugins[0].config.resource_attributes: length must be at least 1" in _refused(
        resource_attributes={"foo": ""})


def test_otel_resource_attribute_templates_are_refused():
    """02-schema_spec "accepts variable values" ($(headers.host), rendered per request by Kong's sandbox): the
    gateway renders no resource attribute templates, so it says so rather than send the template as text."""
    message = _refused(resource_attributes={"foo": "$(headers.host)"})
    assert "plugins[0].config.resource_attributes: foo: templates ($(...)) are not rendered by the gateway" in message


@pytest.mark.parametrize(("config", "field"), [
    ({"header_type": "instana"}, "header_type"),
    ({"propagation": {"extract": ["w3c", "instana"], "default_format": "w3c"}}, "propagation.extract[1]"),
    ({"propagation": {"inject": ["instana"], "default_format": "w3c"}}, "propagation.inject[0]"),
    ({"propagation": {"extract": [], "default_format": "instana"}}, "propagation.default_format")])
def test_otel_instana_is_refused_wherever_a_format_is_named(config, field):
    """Kong 3.9.3's opentelemetry schema (header_type one_of) and typedefs.propagation (utils.lua FORMATS) have no
    instana: 03-propagation_spec's instana routes are master's, in no release."""
    assert f"plugins[0].config.{field}: expected one of " in _refused(**config)


def test_otel_batch_span_count_other_than_200_wins_over_the_queue():
    """Kong's Queue.get_plugin_params (kong/tools/queue.lua): a batch_span_count other than its old default 200
    sets queue.max_batch_size, whatever the queue says."""
    assert _config(batch_span_count=10, queue={"max_batch_size": 50}).queue.max_batch_size == 10
    assert _config(batch_span_count=200, queue={"max_batch_size": 50}).queue.max_batch_size == 50


def test_otel_batch_flush_delay_3_is_its_old_default_and_ignored():
    """Kong's Queue.get_plugin_params: batch_flush_delay sets queue.max_coalescing_delay unless it is 3."""
    assert _config(batch_flush_delay=3).queue.max_coalescing_delay == 1
    assert _config(batch_flush_delay=5, queue={"max_coalescing_delay": 2}).queue.max_coalescing_delay == 5
