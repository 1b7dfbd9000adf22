"""Kong 3.9.3's observability integration specs, `it` by `it`, for what no test of the gateway covered yet:
spec/01-unit/27-queue_spec.lua (the plugins' queue), spec/02-integration/14-observability/ (tracing instrumentations,
sampling, the log entry's trace ids), spec/02-integration/21-request-debug/ (X-Kong-Request-Debug, Kong's default
`request_debug = on`). Each test names the spec file and `it` title it states."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
from backends import EchoBackend, request, service, wait_until
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from gateway.telemetry.batch import BatchQueue, QueueConfig, Queues

TIMEOUT = 10


@pytest.fixture
def http_codec() -> str:
    """One codec: what these tests check is above HTTP framing."""
    return "llhttp"


# --- spec/01-unit/27-queue_spec.lua ---------------------------------------------------------------------------------


class Sink:
    """A queue handler recording batches; `fail(entries)` true: the try fails (Kong's handler returning false)."""

    def __init__(self, fail: Any = None, hold: float = 0.0) -> None:
        self.batches: list[list[Any]] = []
        self.fail = fail
        self.hold = hold

    async def __call__(self, entries: list[Any]) -> None:
        if self.hold:
            await trio.sleep(self.hold)
        if self.fail is not None and self.fail(entries):
            raise RuntimeError("FAIL FAIL FAIL")
        self.batches.append(list(entries))


async def _queue(nursery: trio.Nursery, config: QueueConfig, sink: Sink) -> BatchQueue:
    queue = BatchQueue("test", config, sink)
    await nursery.start(queue.run)
    return queue


async def test_queue_does_not_batch_messages_when_max_batch_size_is_1(nursery, autojump_clock):
    """27-queue_spec.lua, "does not batch messages when `max_batch_size` is 1": two entries, two handler calls."""
    sink = Sink()
    queue = await _queue(nursery, QueueConfig(max_batch_size=1), sink)
    queue.put("One")
    queue.put("Two")
    await trio.sleep(5)
    assert sink.batches == [["One"], ["Two"]]


async def test_queue_does_not_fail_for_max_batch_size_equal_to_max_entries(nursery, autojump_clock):
    """27-queue_spec.lua, "queue does not fail for max batch size = max entries": a batch of max_entries entries
    taken and retrying, then as many entries more: all are sent once the handler succeeds (the batch taken no longer
    counts against max_entries, queue.lua process_once deletes it from the queue before handle())."""
    state = {"fail": True}
    sink = Sink(fail=lambda entries: state["fail"], hold=1)
    queue = await _queue(nursery, QueueConfig(max_batch_size=2, max_entries=2, max_coalescing_delay=0.1), sink)
    queue.put("initial batch: 1")
    queue.put("initial batch: 2")
    await trio.sleep(0.1)
    queue.put("fill up: 1")
    queue.put("fill up: 2")
    state["fail"] = False
    await trio.sleep(20)
    assert sink.batches == [["initial batch: 1", "initial batch: 2"], ["fill up: 1", "fill up: 2"]]


async def test_queue_sends_data_quickly(nursery):
    """27-queue_spec.lua, "sends data quickly": 1000 entries, batches of 10 coalescing 0.1 s, all handled within
    1 s (real time)."""
    sink = Sink()
    queue = await _queue(nursery, QueueConfig(max_batch_size=10, max_coalescing_delay=0.1), sink)
    for i in range(1, 1001):
        queue.put(i)
    await wait_until(lambda: sink.batches and sink.batches[-1][-1] == 1000, "the last entry", timeout=1)


async def test_queue_sends_again_once_it_was_done_sending(nursery, autojump_clock):
    """27-queue_spec.lua, "queue is deleted when it is done sending": an entry queued after the queue emptied is
    handled too."""
    sink = Sink()
    queue = await _queue(nursery, QueueConfig(), sink)
    queue.put("Hello World")
    await trio.sleep(5)
    queue.put("and some more")
    await trio.sleep(5)
    assert sink.batches == [["Hello World"], ["and some more"]]


async def test_queue_configuration_changes_are_observed_for_older_entries(nursery, autojump_clock):
    """27-queue_spec.lua, "configuration changes are observed for older entries": the queue of a name serves both
    enqueues, in one batch, with the configuration seen last (queue.lua get_or_create_queue: handler_conf replaced)."""
    queues = Queues()
    await nursery.start(queues.run)
    first, second = Sink(), Sink()
    config = QueueConfig(max_batch_size=10, max_coalescing_delay=0.1)
    queues.queue_for("handler-configuration-change", config, first).put("ENTRY1")
    queues.queue_for("handler-configuration-change", config, second).put("ENTRY2")
    await trio.sleep(5)
    assert (first.batches, second.batches) == ([], [["ENTRY1", "ENTRY2"]])


# --- spec/02-integration/14-observability/ --------------------------------------------------------------------------


def _otel(collector: EchoBackend, **config: Any) -> dict[str, Any]:
    return {"name": "opentelemetry", "config": {"traces_endpoint": f"http://127.0.0.1:{collector.port}/v1/traces",
                                                "queue": {"max_coalescing_delay": 0.02, "max_batch_size": 200},
                                                **config}}


def _spans(collector: EchoBackend) -> list[Span]:
    return [span for seen in collector.requests
            for rs in ExportTraceServiceRequest.FromString(seen.body).resource_spans
            for ss in rs.scope_spans for span in ss.spans]


def _attrs(span: Span) -> dict[str, Any]:
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in span.attributes}


async def _backends(nursery: trio.Nursery) -> tuple[EchoBackend, EchoBackend]:
    backend, collector = EchoBackend(), EchoBackend("collector")
    await nursery.start(backend.serve)
    await nursery.start(collector.serve)
    return backend, collector


async def _get(port: int, target: str = "/", host: str | None = None, **headers: str) -> Any:
    with trio.fail_after(TIMEOUT):
        hdrs = [(k.replace("_", "-"), v) for k, v in headers.items()]
        return await request(port, "GET", target, headers=hdrs, **({"host": host} if host else {}))


async def test_kong_span_has_the_status_code_when_the_request_is_not_proxied(nursery, gateway):
    """01-instrumentations_spec.lua, "contains the expected kong span with status code when request is not proxied":
    request-termination's 418 on route /noproxy: the kong span has http.status_code 418, http.route "/noproxy",
    http.method, http.flavor, http.url; no balancer span."""
    backend, collector = await _backends(nursery)
    port = await gateway({"services": [service("mock-service", f"http://127.0.0.1:{backend.port}", [
        {"paths": ["/"]},
        {"paths": ["/noproxy"], "strip_path": False, "plugins": [
            {"name": "request-termination",
             "config": {"status_code": 418, "message": "No coffee for you. I'm a teapot."}}]}])],
        "plugins": [_otel(collector)]}, tracing_instrumentations="request", tracing_sampling_rate=1)
    reply = await _get(port, "/noproxy", host="0.0.0.0")
    assert reply.status == 418
    spans = await wait_until(lambda: _spans(collector), "a span")
    await trio.sleep(0.1)
    [kong] = [s for s in _spans(collector) if s.name == "kong"]
    assert [s.name for s in _spans(collector)] == ["kong"]
    attrs = _attrs(kong)
    assert (attrs.get("http.method"), attrs.get("http.flavor"), attrs.get("http.status_code"),
            attrs.get("http.route"), attrs.get("http.url")) == ("GET", "1.1", 418, "/noproxy",
                                                                  "http://0.0.0.0/noproxy"), attrs
    assert backend.requests == [] and spans


async def test_sampling_keeps_all_or_none_of_a_traces_spans(nursery, gateway):
    """03-tracer-pdk_spec.lua, "results in either all or none of the spans in a trace to be sampled"
    (request,router,balancer at tracing_sampling_rate 0.5): per trace, 0 or 3 spans."""
    backend, collector = await _backends(nursery)
    port = await gateway({"services": [service("mock-service", f"http://127.0.0.1:{backend.port}")],
                          "plugins": [_otel(collector)]},
                         tracing_instrumentations="request,router,balancer", tracing_sampling_rate=0.5)
    for _ in range(40):
        assert (await _get(port)).status == 200
    await trio.sleep(0.3)
    by_trace: dict[bytes, list[str]] = {}
    for span in _spans(collector):
        by_trace.setdefault(span.trace_id, []).append(span.name)
    assert 0 < len(by_trace) < 40
    assert all(sorted(names) == ["kong", "kong.balancer", "kong.router"] for names in by_trace.values()), by_trace


async def test_child_spans_live_within_their_parents_lifespan(nursery, gateway):
    """03-tracer-pdk_spec.lua, "sets child lifespan within parent's lifespan" (all, rate 1): every span but the root
    starts at or after its parent and ends at or before it."""
    backend, collector = await _backends(nursery)
    port = await gateway({"services": [service("mock-service", f"http://127.0.0.1:{backend.port}")],
                          "plugins": [_otel(collector)]}, tracing_instrumentations="all", tracing_sampling_rate=1)
    for _ in range(30):
        assert (await _get(port)).status == 200
    spans = await wait_until(lambda: len(_spans(collector)) >= 90 and _spans(collector), "90 spans")
    by_id = {s.span_id: s for s in spans}
    for span in spans:
        if span.name == "kong":
            continue
        parent = by_id[span.parent_span_id]
        assert span.start_time_unix_nano >= parent.start_time_unix_nano, (span.name, parent.name)
        assert span.end_time_unix_nano <= parent.end_time_unix_nano, (span.name, parent.name)


# 04-trace-ids-log_spec.lua: tracing_headers (type, serializer key, header name, value)
TID = "4bf92000000000000000000000000001"
SID = "0000000000000003"
TRACING_HEADERS = [
    ("b3", "b3", "X-B3-TraceId", TID),
    ("b3-single", "b3", "b3", f"{TID}-{SID}-1-{SID}"),
    ("jaeger", "jaeger", "uber-trace-id", f"{TID}:{SID}:{SID}:01"),
    ("w3c", "w3c", "traceparent", f"00-{TID}-{SID}-01"),
    ("gcp", "gcp", "x-cloud-trace-context", f"{TID}/1;o=1"),
    ("aws", "aws", "x-amzn-trace-id", f"Root=1-{TID[:8]}-{TID[8:]};Parent={SID};Sampled=1"),
    ("ot", "ot", "ot-tracer-traceid", TID),
]
KEYS = {key for _, key, _, _ in TRACING_HEADERS}


async def _trace_ids_gateway(nursery: trio.Nursery, gateway: Any, log: Path) -> int:
    """04-trace-ids-log_spec.lua's fixtures: a route per header type with opentelemetry (`otel-<type>`), one with
    zipkin (`zipkin-<type>`), both (`otel_zipkin-<type>`), otel jaeger + zipkin ot (`otel_zipkin_2`), a global
    file-log; tracing all at rate 1."""
    backend, collector = await _backends(nursery)
    otel_cfg = {"traces_endpoint": f"http://127.0.0.1:{collector.port}/v1/traces"}
    zipkin_cfg = {"sample_ratio": 1, "http_endpoint": f"http://127.0.0.1:{collector.port}/api/v2/spans"}
    routes = []
    for kind, _, _, _ in TRACING_HEADERS:
        routes += [
            {"hosts": [f"otel-{kind}"], "plugins": [{"name": "opentelemetry", "config": {**otel_cfg,
                                                                                       "header_type": kind}}]},
            {"hosts": [f"zipkin-{kind}"], "plugins": [{"name": "zipkin", "config": {**zipkin_cfg,
                                                                                  "header_type": kind}}]},
            {"hosts": [f"otel_zipkin-{kind}"], "plugins": [
                {"name": "opentelemetry", "config": {**otel_cfg, "header_type": kind}},
                {"name": "zipkin", "config": {**zipkin_cfg, "header_type": kind}}]},
        ]
    routes.append({"hosts": ["otel_zipkin_2"], "plugins": [
        {"name": "opentelemetry", "config": {**otel_cfg, "header_type": "jaeger"}},
        {"name": "zipkin", "config": {**zipkin_cfg, "header_type": "ot"}}]})
    return await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}", routes)],
                          "plugins": [{"name": "file-log", "config": {"path": str(log)}}]},
                         tracing_instrumentations="all", tracing_sampling_rate=1)


async def _logged_trace_id(port: int, log: Path, host: str, headers: dict[str, str]) -> dict[str, str]:
    before = len(log.read_text().splitlines()) if log.exists() else 0
    reply = await _get(port, "/", host=host, **headers)
    assert reply.status == 200
    lines = await wait_until(lambda: log.exists() and len(log.read_text().splitlines()) > before
                             and log.read_text().splitlines(), "a log line")
    return json.loads(lines[before]).get("trace_id") or {}


def _check(trace_id: dict[str, str], expected: set[str], where: str) -> None:
    assert set(trace_id) == expected, (where, trace_id)
    for key in expected:
        assert trace_id[key] and all(c in "0123456789abcdef" for c in trace_id[key]), (where, trace_id)


@pytest.mark.parametrize(("plugin", "default"), [("otel", "w3c"), ("zipkin", "b3")])
async def test_log_trace_id_holds_the_configured_type_and_the_incoming_or_default(nursery, gateway, tmp_path,
                                                                                   plugin, default):
    """04-trace-ids-log_spec.lua, "with Opentelemetry" / "with Zipkin": "contains only the configured trace ID type:
    <type> + the default (w3c / b3) with no tracing headers in the request" and "contains only the configured trace
    ID type (<type>) + the incoming (<type>)" (the incoming format's id equal to the one it carried), for every
    configured and incoming type."""
    log = tmp_path / "file.log"
    port = await _trace_ids_gateway(nursery, gateway, log)
    for kind, key, _, _ in TRACING_HEADERS:
        trace_id = await _logged_trace_id(port, log, f"{plugin}-{kind}", {})
        _check(trace_id, {key, default}, f"{plugin} {kind}, no header")
        for req_kind, req_key, name, value in TRACING_HEADERS:
            if req_kind == kind:
                continue
            trace_id = await _logged_trace_id(port, log, f"{plugin}-{kind}", {name: value})
            _check(trace_id, {key, req_key}, f"{plugin} {kind}, incoming {req_kind}")
            assert trace_id[req_key] == TID, (plugin, kind, req_kind, trace_id)


async def test_log_trace_id_with_otel_and_zipkin_contains_configured_and_zipkin_types(nursery, gateway, tmp_path):
    """04-trace-ids-log_spec.lua, "with Otel + Zipkin", "contains configured + zipkin types": zipkin, first, injects
    its default b3 (and the configured type), which opentelemetry then finds."""
    log = tmp_path / "file.log"
    port = await _trace_ids_gateway(nursery, gateway, log)
    for kind, key, _, _ in TRACING_HEADERS:
        _check(await _logged_trace_id(port, log, f"otel_zipkin-{kind}", {}), {key, "b3"}, f"otel+zipkin {kind}")


async def test_log_trace_id_with_otel_and_zipkin_contains_both_plugins_types(nursery, gateway, tmp_path):
    """04-trace-ids-log_spec.lua, "with Otel + Zipkin", "contains trace id types from both plugins": traceparent in,
    opentelemetry header_type jaeger, zipkin header_type ot: the entry's trace_id has w3c, jaeger (otel's) and ot
    (zipkin's). Kong's propagation.propagate (kong/observability/tracing/propagation/init.lua:153-155, 214-217) adds
    each plugin's formats to the request's tracing context (tracing_context.lua:63-78 add_trace_id_formats merges),
    so the second plugin's set_serialize_value holds the first's too."""
    log = tmp_path / "file.log"
    port = await _trace_ids_gateway(nursery, gateway, log)
    trace_id = await _logged_trace_id(port, log, "otel_zipkin_2", {"traceparent": f"00-{TID}-{SID}-01"})
    _check(trace_id, {"w3c", "jaeger", "ot"}, "otel_zipkin_2")


# --- spec/02-integration/21-request-debug/01-request-debug_spec.lua -------------------------------------------------


async def test_request_debug_is_not_built_and_the_default_runs_as_kongs_off(nursery, gateway):
    """Kong's default `request_debug = on` (kong_defaults.lua:227; kong/timing/init.lua) is not built (README): the
    gateway runs as Kong with `request_debug = off` ("can be disabled manually"): a loopback client's
    `X-Kong-Request-Debug: *` gets no X-Kong-Request-Debug-Output, and the headers go upstream untouched."""
    backend = EchoBackend()
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}")]})
    reply = await _get(port, "/", x_kong_request_debug="*", x_kong_request_debug_token="t")
    assert reply.status == 200 and reply.header("x-kong-request-debug-output") is None
    assert backend.requests[-1].header("x-kong-request-debug") == "*"
    assert backend.requests[-1].header("x-kong-request-debug-token") == "t"


async def test_request_debug_off_passes_the_headers_on(nursery, gateway):
    """01-request-debug_spec.lua, "can be disabled manually": with `request_debug = off` no output header, and (auth()
    returning at once) the headers go upstream untouched."""
    backend = EchoBackend()
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}")]}, request_debug=False)
    reply = await _get(port, "/", x_kong_request_debug="*")
    assert reply.status == 200 and reply.header("x-kong-request-debug-output") is None
    assert backend.requests[-1].header("x-kong-request-debug") == "*"


async def test_request_debug_do_nothing_if_no_debug_header(nursery, gateway):
    """01-request-debug_spec.lua, "do nothing if no debug header"."""
    backend = EchoBackend()
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}")]})
    reply = await _get(port, "/")
    assert reply.status == 200 and reply.header("x-kong-request-debug-output") is None


def test_request_debug_on_and_its_token_are_refused_with_a_message():
    """The gateway does not build request debugging: `request_debug: on` and `request_debug_token` are refused by
    check-config, saying so (kong_conf.py's table)."""
    from gateway.config import ConfigError, parse_config
    with pytest.raises(ConfigError, match="request_debug.*is not supported by the gateway: the gateway does not "
                                          "answer X-Kong-Request-Debug"):
        parse_config("gateway:\n  request_debug: 'on'\n", "<t>")
    with pytest.raises(ConfigError, match="request_debug_token.*is not supported by the gateway"):
        parse_config("gateway:\n  request_debug_token: abc\n", "<t>")


