"""The opentelemetry plugin's spans as Kong 3.x makes them: kong.conf's tracing_instrumentations and
tracing_sampling_rate (the gateway's settings of those names) decide which spans exist and how requests are sampled;
with `off` (Kong's default) the plugin only propagates. The spans are Kong's request span "kong", "kong.router" and
"kong.balancer", with Kong's attributes, parents and OTLP encoding. Docstrings cite the Kong spec or source each
behaviour comes from (spec/03-plugins/37-opentelemetry/, spec/02-integration/14-observability/,
kong/observability/tracing/instrumentation.lua, kong/plugins/opentelemetry/traces.lua, kong/observability/otlp/)."""

from __future__ import annotations

import re
from typing import Any

import msgspec
import pytest
import trio
from backends import EchoBackend, free_port, raw_exchange, request, service, upstream, wait_until
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from gateway.config import ConfigError, parse_config
from gateway.config.schema import GatewaySettings

TIMEOUT = 10
TID = "0af7651916cd43dd8448eb211c80319c"
CALLER = "b7ad6b7169203331"
HEX16 = "[0-9a-f]{16}"
SAMPLED_AT_HALF = "92a54b3e1a7c4f2da9e44b8a6f3e1dab"  # 04-exporter_spec: always sampled at 0.5
NOT_SAMPLED_AT_HALF = "4bf92f3577b34da6a3ce929d0e0e4736"  # and never


@pytest.fixture
def http_codec() -> str:
    """One codec: what these tests check is above HTTP framing."""
    return "llhttp"


def _otel(collector: EchoBackend, **config: Any) -> dict[str, Any]:
    return {"name": "opentelemetry", "config": {"traces_endpoint": f"http://127.0.0.1:{collector.port}/v1/traces",
                                                "queue": {"max_coalescing_delay": 0.02}, **config}}


async def _start(nursery: trio.Nursery, gateway: Any, settings: dict[str, Any] | None = None,
                 service_fields: dict[str, Any] | None = None, **config: Any) -> tuple[int, EchoBackend, EchoBackend]:
    """An echo backend behind service `svc` (route `r`, path /api) and the gateway with a global opentelemetry
    plugin and the given gateway settings: (port, backend, collector)."""
    backend, collector = EchoBackend(), EchoBackend("collector")
    await nursery.start(backend.serve)
    await nursery.start(collector.serve)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}",
                                               [{"name": "r", "paths": ["/api"]}], **(service_fields or {}))],
                          "plugins": [_otel(collector, **config)]}, **(settings or {}))
    return port, backend, collector


async def _get(port: int, target: str = "/api", **headers: str) -> Any:
    with trio.fail_after(TIMEOUT):
        return await request(port, "GET", target, headers=[(k.replace("_", "-"), v) for k, v in headers.items()])


def _exports(collector: EchoBackend) -> list[ExportTraceServiceRequest]:
    return [ExportTraceServiceRequest.FromString(seen.body) for seen in collector.requests]


def _spans(collector: EchoBackend) -> list[Span]:
    return [span for export in _exports(collector) for rs in export.resource_spans for ss in rs.scope_spans
            for span in ss.spans]


async def _wait_spans(collector: EchoBackend, n: int) -> list[Span]:
    await wait_until(lambda: len(_spans(collector)) >= n, f"{n} spans")
    await trio.sleep(0.1)  # and no more
    return _spans(collector)


def _named(spans: list[Span], name: str) -> list[Span]:
    return [s for s in spans if s.name == name]


def _attrs(span: Span) -> dict[str, Any]:
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in span.attributes}


def _kinds(span: Span) -> dict[str, str | None]:
    return {kv.key: kv.value.WhichOneof("value") for kv in span.attributes}


def _traceparent(backend: EchoBackend) -> list[str]:
    return (backend.requests[-1].header("traceparent") or "").split("-")


# --- kong.conf's settings -------------------------------------------------------------------------------------------


def _gateway(**settings: Any) -> GatewaySettings:
    return msgspec.convert(settings, GatewaySettings)


def test_the_settings_default_to_kongs_off_and_0_01():
    """kong/templates/kong_defaults.lua: tracing_instrumentations = off, tracing_sampling_rate = 0.01."""
    gw = _gateway()
    assert (gw.tracing_instrumentations, gw.tracing_sampling_rate) == ("off", 0.01)


def test_a_comma_separated_list_is_read_as_kong_reads_it():
    """spec/01-unit/03-conf_loader_spec.lua: "request,router" is {"request", "router"}."""
    assert _gateway(tracing_instrumentations="request, router").tracing_instrumentations == "request, router"
    assert _gateway(tracing_instrumentations=["balancer"], tracing_sampling_rate=1).tracing_sampling_rate == 1


def test_yaml_reads_an_unquoted_off_as_false_which_is_off():
    """kong.conf's `tracing_instrumentations = off`, written in the gateway's YAML without quotes (YAML's false)."""
    from gateway.telemetry.tracing import TracingSettings

    config = parse_config("gateway:\n  tracing_instrumentations: off\n", "<test>")
    assert not TracingSettings.of(config.gateway).enabled
    assert TracingSettings.of(parse_config("gateway:\n  tracing_instrumentations: request\n", "<t>").gateway).enabled


@pytest.mark.parametrize(("settings", "message"), [
    ({"tracing_instrumentations": "foo"}, "tracing_instrumentations: invalid tracing type: foo"),
    ({"tracing_instrumentations": ["off", "request"]},
     "tracing_instrumentations: invalid tracing types: off, other types are mutually exclusive"),
    ({"tracing_sampling_rate": 1.5}, "tracing_sampling_rate must be between 0 and 1"),
    ({"tracing_sampling_rate": -0.1}, "tracing_sampling_rate must be between 0 and 1"),
])
def test_kongs_conf_loader_messages(settings, message):
    """kong/conf_loader/parse.lua's checks of the two settings, with its messages."""
    with pytest.raises(msgspec.ValidationError, match=re.escape(message)):
        _gateway(**settings)


@pytest.mark.parametrize("name", ["db_query", "dns_query", "http_client", "plugin_rewrite", "plugin_access",
                                  "plugin_header_filter"])
def test_instrumentations_the_gateway_does_not_make_are_refused_by_name(name):
    """kong.conf.default's other instrumentations: valid in Kong, but the gateway makes none of their spans, so
    check-config refuses them, saying so (`all` is the gateway's three)."""
    doc = f"gateway:\n  tracing_instrumentations: [request, {name}]\n"
    with pytest.raises(ConfigError, match=rf"gateway: tracing_instrumentations: {name} is not supported by the "
                                          rf"gateway \(.+\); it makes request, router, balancer \(all\)"):
        parse_config(doc, "<test>")


# --- off: propagation only ------------------------------------------------------------------------------------------


async def test_off_propagates_unsampled_and_exports_nothing(nursery, gateway):
    """03-propagation_spec (instrumentations "off", sampling_rate 1): the outgoing flag is 00 (traces.lua
    get_inject_ctx: "make propagation work with tracing disabled", should_sample = false), and 01-instrumentations_spec
    "off": no spans, whatever the plugin's sampling_rate."""
    port, backend, collector = await _start(nursery, gateway, sampling_rate=1)
    assert (await _get(port, traceparent=f"00-{TID}-{CALLER}-01")).status == 200
    version, trace_id, parent, flags = _traceparent(backend)
    assert (version, trace_id, flags) == ("00", TID, "00") and parent != CALLER
    assert (await _get(port)).status == 200
    assert _traceparent(backend)[3] == "00"
    await trio.sleep(0.3)
    assert collector.requests == []


async def test_off_the_outgoing_span_is_a_child_of_the_callers(nursery, gateway):
    """03-propagation_spec "propagates w3c tracing headers + incoming format (preserve + w3c)": "if no
    instrumentation is enabled no new spans are created so the incoming span is the parent of the outgoing span"."""
    port, backend, _ = await _start(nursery, gateway, header_type="w3c")
    parent = "a2fb4a1d1a96d312"
    assert (await _get(port, b3=f"{TID}-{CALLER}-1-{parent}")).status == 200
    seen = backend.requests[-1]
    assert re.fullmatch(f"{TID}-{HEX16}-0-{CALLER}", seen.header("b3") or "")
    assert re.fullmatch(f"00-{TID}-{HEX16}-00", seen.header("traceparent") or "")


async def test_off_a_request_the_access_step_did_not_see_has_no_trace_id_header(nursery, gateway):
    """traces.lua header_filter: with tracing off nothing set a trace id for a request the plugin's access did not
    see (404 no route: no raw trace id, no root span), so no header is added."""
    port, _, _ = await _start(nursery, gateway, http_response_header_for_traceid="x-trace")
    assert (await _get(port)).header("x-trace") is not None
    reply = await _get(port, "/nowhere")
    assert reply.status == 404 and reply.header("x-trace") is None


# --- the spans ------------------------------------------------------------------------------------------------------


async def test_request_span_is_kongs_with_kongs_attributes(nursery, gateway):
    """04-exporter_spec "#propagate w3c traceparent" (tracing_instrumentations request): the span is "kong", of the
    caller's trace, its parent the caller's span, with exactly Kong's attributes; 03-propagation_spec "sets the
    outgoing parent span's ID correctly" (request): the upstream's parent is that span."""
    port, backend, collector = await _start(nursery, gateway, {"tracing_instrumentations": "request",
                                                                "tracing_sampling_rate": 1})
    reply = await _get(port, "/api/x?q=1", traceparent=f"00-{TID}-{CALLER}-01")
    assert reply.status == 200
    [span] = await _wait_spans(collector, 1)
    assert span.name == "kong" and span.kind == Span.SPAN_KIND_SERVER
    assert span.trace_id.hex() == TID and span.parent_span_id.hex() == CALLER
    assert _traceparent(backend) == ["00", TID, span.span_id.hex(), "01"]
    assert _attrs(span) == {
        "http.method": "GET", "http.url": "http://gateway.test/api/x?q=1", "http.host": "gateway.test",
        "http.scheme": "http", "http.flavor": "1.1", "http.client_ip": "127.0.0.1", "net.peer.ip": "127.0.0.1",
        "kong.request.id": reply.header("x-kong-request-id"), "http.status_code": 200, "http.route": "/api"}
    assert _kinds(span)["http.status_code"] == "int_value"
    assert span.status.code == Status.STATUS_CODE_UNSET


async def test_balancer_span_is_the_one_sent_upstream(nursery, gateway):
    """03-propagation_spec "sets the outgoing parent span's ID correctly (issue #11294)" (request,balancer): the
    upstream's parent is the kong.balancer span, whose parent is the request span, whose parent is the caller's
    (assert_correct_trace_hierarchy); 01-instrumentations_spec "balancer": one kong and one kong.balancer span, no
    router; its attributes (instrumentation.lua _M.balancer: try_count, net.peer.ip/port/name)."""
    port, backend, collector = await _start(nursery, gateway, {"tracing_instrumentations": "request,balancer",
                                                                "tracing_sampling_rate": 1})
    assert (await _get(port, traceparent=f"00-{TID}-{CALLER}-01")).status == 200
    spans = await _wait_spans(collector, 2)
    assert sorted(s.name for s in spans) == ["kong", "kong.balancer"]
    [root], [try1] = _named(spans, "kong"), _named(spans, "kong.balancer")
    assert _traceparent(backend) == ["00", TID, try1.span_id.hex(), "01"]
    assert try1.parent_span_id == root.span_id and root.parent_span_id.hex() == CALLER
    assert try1.kind == Span.SPAN_KIND_CLIENT and try1.trace_id.hex() == TID
    assert _attrs(try1) == {"try_count": 1, "net.peer.ip": "127.0.0.1", "net.peer.port": backend.port,
                            "net.peer.name": "127.0.0.1"}
    assert root.start_time_unix_nano <= try1.start_time_unix_nano <= try1.end_time_unix_nano \
        <= root.end_time_unix_nano


async def test_balancer_span_net_peer_ip_is_the_address_a_named_target_resolved_to(nursery, gateway):
    """instrumentation.lua:103-105 `["net.peer.ip"] = try.ip, ["net.peer.port"] = try.port`: the try's ip is the
    address the balancer resolved the name to (kong/init.lua:1411 `current_try.ip = balancer_data_ip`), and
    net.peer.name (118-119) the host name: a service at http://localhost:<port> has net.peer.ip 127.0.0.1."""
    backend, collector = EchoBackend(), EchoBackend("collector")
    await nursery.start(backend.serve)
    await nursery.start(collector.serve)
    port = await gateway({"services": [service("svc", f"http://localhost:{backend.port}",
                                               [{"name": "r", "paths": ["/api"]}])],
                          "plugins": [_otel(collector)]},
                         tracing_instrumentations="request,balancer", tracing_sampling_rate=1)
    assert (await _get(port)).status == 200
    [try1] = _named(await _wait_spans(collector, 2), "kong.balancer")
    attrs = _attrs(try1)
    assert (attrs.get("net.peer.ip"), attrs.get("net.peer.port"), attrs.get("net.peer.name")) == \
        ("127.0.0.1", backend.port, "localhost"), attrs


async def test_all_is_the_request_router_and_balancer_spans(nursery, gateway):
    """01-instrumentations_spec "all": one kong, one kong.router and one kong.balancer span (of Kong's others the
    gateway makes none); the router span is the request span's child (instrumentation.lua _M.router)."""
    port, _, collector = await _start(nursery, gateway, {"tracing_instrumentations": "all",
                                                          "tracing_sampling_rate": 1})
    assert (await _get(port)).status == 200
    spans = await _wait_spans(collector, 3)
    assert sorted(s.name for s in spans) == ["kong", "kong.balancer", "kong.router"]
    [root], [router] = _named(spans, "kong"), _named(spans, "kong.router")
    assert router.kind == Span.SPAN_KIND_INTERNAL and router.parent_span_id == root.span_id
    assert list(router.attributes) == [] and router.status.code == Status.STATUS_CODE_UNSET


async def test_router_only(nursery, gateway):
    """01-instrumentations_spec "router": one kong and one kong.router span, no balancer span."""
    port, _, collector = await _start(nursery, gateway, {"tracing_instrumentations": ["router"],
                                                          "tracing_sampling_rate": 1})
    assert (await _get(port)).status == 200
    spans = await _wait_spans(collector, 2)
    assert sorted(s.name for s in spans) == ["kong", "kong.router"]


async def test_no_route_is_an_error_router_span_and_an_empty_http_route(nursery, gateway):
    """kong/runloop/handler.lua access.before: no route matched, the router span gets status 2 (error);
    runloop_before_header_filter: http.status_code 404 and http.route "" (no ctx.route). A global plugin logs it
    (the request span's sampling: the tracer's, at tracing_sampling_rate)."""
    port, _, collector = await _start(nursery, gateway, {"tracing_instrumentations": "all",
                                                          "tracing_sampling_rate": 1}, sampling_rate=0)
    assert (await _get(port, "/nowhere")).status == 404
    spans = await _wait_spans(collector, 2)
    assert sorted(s.name for s in spans) == ["kong", "kong.router"]
    [root], [router] = _named(spans, "kong"), _named(spans, "kong.router")
    assert router.status.code == Status.STATUS_CODE_ERROR and router.status.message == ""
    assert (_attrs(root)["http.status_code"], _attrs(root)["http.route"]) == (404, "")


async def test_a_request_the_access_step_did_not_see_is_sampled_at_the_global_rate(nursery, gateway):
    """kong/pdk/tracing.lua create_span: the request span is sampled by the tracer at tracing_sampling_rate; the
    plugin's sampling_rate applies only in its access step (get_sampling_decision)."""
    port, _, collector = await _start(nursery, gateway, {"tracing_instrumentations": "all",
                                                          "tracing_sampling_rate": 0}, sampling_rate=1)
    assert (await _get(port, "/nowhere")).status == 404
    assert (await _get(port)).status == 200
    spans = await _wait_spans(collector, 3)
    assert {_attrs(s)["http.status_code"] for s in _named(spans, "kong")} == {200}


async def test_an_unsampled_caller_gives_no_spans(nursery, gateway):
    """03-propagation_spec "disables sampling when incoming header has sampled disabled": 0 spans."""
    port, backend, collector = await _start(nursery, gateway, {"tracing_instrumentations": "all",
                                                                "tracing_sampling_rate": 1})
    assert (await _get(port, traceparent=f"00-{TID}-{CALLER}-00")).status == 200
    assert _traceparent(backend)[3] == "00"
    await trio.sleep(0.3)
    assert collector.requests == []


async def test_the_global_rate_applies_when_the_plugin_sets_none(nursery, gateway):
    """04-exporter_spec "With config.sampling_rate unset, using global sampling rate: 0.5"."""
    port, _, collector = await _start(nursery, gateway, {"tracing_instrumentations": "all",
                                                          "tracing_sampling_rate": 0.5})
    for trace_id in (NOT_SAMPLED_AT_HALF, SAMPLED_AT_HALF):
        assert (await _get(port, traceparent=f"00-{trace_id}-0123456789abcdef-01")).status == 200
    spans = await _wait_spans(collector, 3)
    assert {s.trace_id.hex() for s in spans} == {SAMPLED_AT_HALF}


async def test_the_plugins_rate_wins_over_the_global_one(nursery, gateway):
    """04-exporter_spec "With config.sampling_rate set, using global sampling rate: 0": the plugin's 0.5 decides."""
    port, _, collector = await _start(nursery, gateway, {"tracing_instrumentations": "all",
                                                          "tracing_sampling_rate": 0}, sampling_rate=0.5)
    for trace_id in (NOT_SAMPLED_AT_HALF, SAMPLED_AT_HALF):
        assert (await _get(port, traceparent=f"00-{trace_id}-0123456789abcdef-01")).status == 200
    spans = await _wait_spans(collector, 3)
    assert {s.trace_id.hex() for s in spans} == {SAMPLED_AT_HALF}


async def test_a_failed_try_has_its_status_code_and_the_error_status(nursery, gateway):
    """instrumentation.lua _M.balancer: a try with a state (every try before the last) gets http.status_code (502:
    nginx's for a connect failure) and status 2; the last one is the propagated span, ending with the response."""
    backend, collector = EchoBackend(), EchoBackend("collector")
    await nursery.start(backend.serve)
    await nursery.start(collector.serve)
    dead = free_port()
    port = await gateway({"upstreams": [upstream("up", [dead, backend.port], algorithm="round-robin")],
                          "services": [service("svc", "http://up", retries=2)],
                          "plugins": [_otel(collector)]},
                         tracing_instrumentations="all", tracing_sampling_rate=1)
    for _ in range(2):  # round-robin: one of the two requests tries the dead target first
        assert (await _get(port, "/")).status == 200
    spans = await wait_until(lambda: len(_named(_spans(collector), "kong")) == 2 and _spans(collector), "spans")
    await trio.sleep(0.2)
    tries = _named(_spans(collector), "kong.balancer")
    failed = [s for s in tries if s.status.code == Status.STATUS_CODE_ERROR]
    ok = [s for s in tries if s.status.code == Status.STATUS_CODE_UNSET]
    assert failed and len(ok) == 2 and len(tries) == len(failed) + 2  # the dead target once or twice
    for span in failed:
        assert _attrs(span) == {"try_count": 1, "net.peer.ip": "127.0.0.1", "net.peer.port": dead,
                                "http.status_code": 502, "net.peer.name": "127.0.0.1"}
        assert _kinds(span)["try_count"] == _kinds(span)["net.peer.port"] == "double_value"
        assert span.parent_span_id in {s.span_id for s in _named(spans, "kong")}
    parents = {seen.header("traceparent").split("-")[2] for seen in backend.requests}
    assert {s.span_id.hex() for s in ok} == parents
    assert sorted(_attrs(s)["try_count"] for s in ok) == ([1, 2] if len(failed) == 1 else [2, 2])


async def test_the_last_try_is_failed_when_the_retries_are_used_up(nursery, gateway):
    """kong/runloop/handler.lua header_filter.before: "if this is the last try and it failed": a 5xx after the
    last retry marks it (state failed, code the status), so its span has the status code and the error status."""
    dead = free_port()
    collector = EchoBackend("collector")
    await nursery.start(collector.serve)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{dead}", retries=0)],
                          "plugins": [_otel(collector)]},
                         tracing_instrumentations="request,balancer", tracing_sampling_rate=1)
    assert (await _get(port, "/")).status == 502
    spans = await _wait_spans(collector, 2)
    [try1] = _named(spans, "kong.balancer")
    assert try1.status.code == Status.STATUS_CODE_ERROR and _attrs(try1)["http.status_code"] == 502


async def test_an_upstream_499_response_still_has_http_status_code_and_route(nursery, gateway):
    """kong/runloop/handler.lua:1561 `instrumentation.runloop_before_header_filter(status)` runs in the header filter
    of every proxied response, and instrumentation.lua:327-333 sets `http.status_code` (ngx.status) and `http.route`:
    an upstream that answers 499 gets a request span with both. Only a client that left before the head went (no
    header filter ran) leaves them out."""
    port, _, collector = await _start(nursery, gateway, {"tracing_instrumentations": "request",
                                                          "tracing_sampling_rate": 1})
    assert (await _get(port, "/api?status=499")).status == 499
    [span] = await _wait_spans(collector, 1)
    attrs = _attrs(span)
    assert (attrs.get("http.status_code"), attrs.get("http.route")) == (499, "/api"), attrs


async def test_kongs_otlp_scope(nursery, gateway):
    """kong/observability/otlp/init.lua encode_traces: the scope is kong-internal 0.1.0."""
    port, _, collector = await _start(nursery, gateway, {"tracing_instrumentations": "request",
                                                          "tracing_sampling_rate": 1})
    assert (await _get(port)).status == 200
    exports = await wait_until(lambda: _exports(collector), "an export")
    scope = exports[0].resource_spans[0].scope_spans[0].scope
    assert (scope.name, scope.version) == ("kong-internal", "0.1.0")


async def test_http_1_0_without_host(nursery, gateway):
    """instrumentation.lua _M.request: http.flavor is "%.1f" of the version, http.host nginx's $host (the server
    name, Kong's "kong", for a request without a Host) and http.url scheme://host plus the request URI."""
    port, _, collector = await _start(nursery, gateway, {"tracing_instrumentations": "request",
                                                          "tracing_sampling_rate": 1})
    data, _ = await raw_exchange(port, b"GET /api/y HTTP/1.0\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200")
    [span] = await _wait_spans(collector, 1)
    attrs = _attrs(span)
    assert (attrs["http.flavor"], attrs["http.host"], attrs["http.url"]) == ("1.0", "kong", "http://kong/api/y")


async def test_a_request_nginx_refused_has_no_spans(nursery, gateway):
    """Kong's rewrite phase, where the request span starts, does not run for nginx's own error pages (a malformed
    request: Kong's error handler), so a global plugin's log has no span to export."""
    port, _, collector = await _start(nursery, gateway, {"tracing_instrumentations": "all",
                                                          "tracing_sampling_rate": 1})
    data, _ = await raw_exchange(port, b"GET /api HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 400")
    await trio.sleep(0.3)
    assert collector.requests == []


async def test_a_request_nginx_refused_has_no_trace_id_header(nursery, gateway):
    """kong/plugins/opentelemetry/traces.lua:108-118: header_filter adds http_response_header_for_traceid only `if
    trace_id`, the tracing context's or the root span's (`ngx.ctx.KONG_SPANS[1]`), both from the request
    instrumentation, which starts in the rewrite phase (kong/runloop/handler.lua:1178-1181). nginx's page for a
    malformed request (its 400) goes through /kong_error_handler, whose rewrite_by_lua_block is empty
    (kong/templates/nginx_kong.lua:401-411): no trace id, no header. A proxied request has it."""
    port, _, collector = await _start(nursery, gateway, {"tracing_instrumentations": "all",
                                                          "tracing_sampling_rate": 1},
                                      http_response_header_for_traceid="x-trace")
    assert (await _get(port)).header("x-trace") is not None
    data, _ = await raw_exchange(port, b"GET /api HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n")
    head = data.partition(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 400"), head
    assert b"\r\nx-trace:" not in head, head
