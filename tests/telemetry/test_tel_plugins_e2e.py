"""http-log and opentelemetry through the gateway (in-process, real sockets) to a collector in the test."""

from __future__ import annotations

import json

import trio
from backends import EchoBackend, request, service, upstream, wait_until
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

TIMEOUT = 10


async def _collector(nursery: trio.Nursery) -> EchoBackend:
    backend = EchoBackend("collector")
    await nursery.start(backend.serve)
    return backend


def _spans(collector: EchoBackend) -> list[Span]:
    out = []
    for seen in collector.requests:
        assert seen.header("content-type") == "application/x-protobuf"
        export = ExportTraceServiceRequest.FromString(seen.body)
        for resource_spans in export.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                out += list(scope_spans.spans)
    return out


def _attrs(span: Span) -> dict:
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in span.attributes}


# --- http-log -------------------------------------------------------------------------------------------------------


async def test_http_log_sends_each_entry_as_kong_json(nursery, gateway):
    backend, collector = EchoBackend(), await _collector(nursery)
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}", [
        {"name": "r", "paths": ["/"]}])], "plugins": [{"name": "http-log", "config": {
            "http_endpoint": f"http://user:pw@127.0.0.1:{collector.port}/logs", "headers": {"x-token": "t1"}}}]})
    with trio.fail_after(TIMEOUT):
        for i in range(3):
            assert (await request(port, "GET", f"/item/{i}")).status == 200
    await wait_until(lambda: len(collector.requests) >= 3, "3 log posts")
    first = collector.requests[0]
    assert first.method == "POST" and first.target == "/logs"
    assert first.header("content-type") == "application/json"
    assert first.header("authorization") == "Basic dXNlcjpwdw=="
    assert first.header("x-token") == "t1"
    uris = sorted(json.loads(seen.body)["request"]["uri"] for seen in collector.requests)
    assert uris == ["/item/0", "/item/1", "/item/2"]


async def test_http_log_batches_entries_into_a_json_array(nursery, gateway):
    backend, collector = EchoBackend(), await _collector(nursery)
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}")], "plugins": [
        {"name": "http-log", "config": {"http_endpoint": f"http://127.0.0.1:{collector.port}/bulk",
                                        "queue": {"max_batch_size": 5, "max_coalescing_delay": 30}}}]})
    with trio.fail_after(TIMEOUT):
        for i in range(5):
            assert (await request(port, "GET", f"/{i}")).status == 200
    await wait_until(lambda: collector.requests, "a batch")
    batch = json.loads(collector.requests[0].body)
    assert isinstance(batch, list) and [e["request"]["uri"] for e in batch] == ["/0", "/1", "/2", "/3", "/4"]


async def test_http_log_collector_down_never_slows_requests_and_the_queue_is_bounded(nursery, gateway):
    from backends import free_port

    from gateway.metrics import RECORDER
    from gateway.telemetry.batch import DROPPED

    backend = EchoBackend()
    await nursery.start(backend.serve)
    dead = free_port()  # nothing listens here: every send is refused
    endpoint = f"http://127.0.0.1:{dead}/down"
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}")], "plugins": [
        {"name": "http-log", "config": {"http_endpoint": endpoint, "queue": {"max_entries": 10,
                                                                            "initial_retry_delay": 0.05}}}]})
    from gateway.telemetry.batch import QUEUES

    (name,) = [q.name for q in QUEUES.queues.values() if endpoint in q.name]
    RECORDER.flush()
    before = DROPPED.labels(name, "full")._value.get()
    started = trio.current_time()
    with trio.fail_after(TIMEOUT):
        for _ in range(40):
            assert (await request(port, "GET", "/")).status == 200
    assert trio.current_time() - started < 5  # 40 requests, none waiting on the dead collector
    await trio.sleep(0.3)
    RECORDER.flush()
    assert DROPPED.labels(name, "full")._value.get() - before >= 40 - 10 - 1  # at most max_entries (+1 in flight)


# --- opentelemetry --------------------------------------------------------------------------------------------------


def _otel(collector: EchoBackend, **config) -> dict:  # noqa: ANN003
    return {"name": "opentelemetry", "config": {"traces_endpoint": f"http://127.0.0.1:{collector.port}/v1/traces",
                                                "queue": {"max_coalescing_delay": 0.05}, **config}}


async def test_spans_have_the_callers_trace_and_the_upstream_is_the_balancer_spans_child(nursery, gateway):
    backend, collector = EchoBackend(), await _collector(nursery)
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}", [
        {"name": "api", "paths": ["/api"]}])], "plugins": [_otel(collector, sampling_rate=1)]},
        tracing_instrumentations="all")
    trace_id, caller = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/api/x?q=1", headers=[("traceparent", f"00-{trace_id}-{caller}-01")])
    assert reply.status == 200
    upstream_tp = backend.requests[0].header("traceparent")
    version, tid, parent, flags = upstream_tp.split("-")
    assert (version, tid, flags) == ("00", trace_id, "01")
    spans = await wait_until(lambda: len(_spans(collector)) >= 3 and _spans(collector), "3 spans")
    server = next(s for s in spans if s.kind == Span.SPAN_KIND_SERVER)
    client = next(s for s in spans if s.kind == Span.SPAN_KIND_CLIENT)
    router = next(s for s in spans if s.kind == Span.SPAN_KIND_INTERNAL)
    assert (server.name, client.name, router.name) == ("kong", "kong.balancer", "kong.router")
    assert server.trace_id.hex() == trace_id == client.trace_id.hex() == router.trace_id.hex()
    assert server.parent_span_id.hex() == caller
    assert client.parent_span_id == server.span_id == router.parent_span_id
    assert client.span_id.hex() == parent  # what the upstream saw as its parent
    attrs = _attrs(server)
    assert attrs["http.method"] == "GET" and attrs["http.url"] == "http://gateway.test/api/x?q=1"
    assert attrs["http.route"] == "/api" and attrs["http.status_code"] == 200
    assert _attrs(client)["net.peer.port"] == backend.port and "http.status_code" not in _attrs(client)
    assert server.start_time_unix_nano <= client.start_time_unix_nano <= client.end_time_unix_nano \
        <= server.end_time_unix_nano


async def test_unsampled_requests_propagate_context_but_export_nothing(nursery, gateway):
    backend, collector = EchoBackend(), await _collector(nursery)
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}")],
                          "plugins": [_otel(collector, sampling_rate=0, http_response_header_for_traceid="x-trace")]},
                         tracing_instrumentations="all")
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/")
    tp = backend.requests[0].header("traceparent")
    assert tp.endswith("-00") and tp.split("-")[1] == reply.header("x-trace")
    await trio.sleep(0.3)
    assert collector.requests == []


async def test_b3_in_b3_out_and_a_failed_try_gets_its_own_error_span(nursery, gateway):
    from backends import free_port

    backend, collector = EchoBackend(), await _collector(nursery)
    await nursery.start(backend.serve)
    dead = free_port()
    port = await gateway({"upstreams": [upstream("up", [dead, backend.port], algorithm="round-robin")],
                          "services": [service("svc", "http://up", retries=2)],
                          "plugins": [_otel(collector, sampling_rate=1)]}, tracing_instrumentations="all")
    tid = "463ac35c9f6413ad48485a3953bb6124"
    with trio.fail_after(TIMEOUT):
        for _ in range(2):  # round-robin: one of the two requests tries the dead target first
            reply = await request(port, "GET", "/", headers=[("x-b3-traceid", tid), ("x-b3-spanid", "a2fb4a1d1a96d312"),
                                                              ("x-b3-sampled", "1")])
            assert reply.status == 200
    seen = [(r.target, r.header("x-b3-traceid"), r.header("traceparent")) for r in backend.requests]
    assert seen == [("/", tid, None)] * 2
    spans = await wait_until(lambda: len(_spans(collector)) >= 7 and _spans(collector), "7 spans")
    await trio.sleep(0.2)
    spans = _spans(collector)
    servers = [s for s in spans if s.kind == Span.SPAN_KIND_SERVER]
    clients = [s for s in spans if s.kind == Span.SPAN_KIND_CLIENT]
    failed = [s for s in clients if s.status.code == s.status.STATUS_CODE_ERROR]
    assert len(servers) == 2 and failed and len(clients) == 2 + len(failed)  # one good try per request
    for span in failed:
        assert _attrs(span)["http.status_code"] == 502 and _attrs(span)["net.peer.port"] == dead
        assert span.parent_span_id in {s.span_id for s in servers}
    assert {s.trace_id.hex() for s in spans} == {tid}
