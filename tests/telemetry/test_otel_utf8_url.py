"""OpenTelemetry's request span carries a client's UTF-8 target and Host as sent (Kong's spans carry Lua's bytes)."""

from __future__ import annotations

from backends import EchoBackend, raw_exchange, service, wait_until
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


async def test_trace_http_url_and_host_carry_a_utf8_target_and_host_as_sent(
        gateway, nursery) -> None:  # noqa: ANN001
    """570d5c5 puts the target as sent (raw bytes 0x80-0xFF) into request_uri() and serves `Host: café.example`.
    Kong 3.9.3 (kong/observability/tracing/instrumentation.lua:230-249): http.url = scheme .. "://" .. var.host ..
    var.request_uri, http.host = var.host, Lua byte strings that lua-protobuf's pb.encode
    (kong/observability/otlp/init.lua:203) writes as they are: a collector reads `http://café.example/api/café`.
    (The gateway decoded them as latin-1: `cafÃ©`.)"""
    backend, collector = EchoBackend(), EchoBackend("collector")
    await nursery.start(backend.serve)
    await nursery.start(collector.serve)
    otel = {"name": "opentelemetry", "config": {"traces_endpoint": f"http://127.0.0.1:{collector.port}/v1/traces",
                                                "queue": {"max_coalescing_delay": 0.02}}}
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}",
                                               [{"name": "r", "paths": ["/api"]}])], "plugins": [otel]},
                         tracing_instrumentations="request", tracing_sampling_rate=1)
    data, _ = await raw_exchange(port, b"GET /api/caf\xc3\xa9 HTTP/1.1\r\nHost: caf\xc3\xa9.example\r\n"
                                       b"Connection: close\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200"), data[:200]

    def spans() -> list:
        return [s for seen in collector.requests
                for rs in ExportTraceServiceRequest.FromString(seen.body).resource_spans
                for ss in rs.scope_spans for s in ss.spans]

    await wait_until(lambda: spans(), "a span")
    attrs = {kv.key: kv.value.string_value for kv in spans()[0].attributes}
    assert (attrs["http.host"], attrs["http.url"]) == ("café.example", "http://café.example/api/café"), attrs

