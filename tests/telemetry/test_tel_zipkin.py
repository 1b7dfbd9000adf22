"""Kong's zipkin plugin: its propagation rules and its Zipkin v2 JSON spans as sans-I/O units, then through the
gateway (in-process, real sockets) to a Zipkin collector stand-in. Docstrings cite Kong's spec
(spec/03-plugins/34-zipkin/, spec/01-unit/26-observability/02-propagation_strategies_spec.lua) where a case is
one of its `it(...)`."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import msgspec
import pytest
import trio
from backends import EchoBackend, Seen, free_port, request, service, upstream, wait_until
from plugins.plugin_helpers import plugin, refused
from telemetry.test_otel_export_as_kong import TlsCollector, _Collector

from gateway.policies.zipkin import spans
from gateway.policies.zipkin.handler import Zipkin
from gateway.policies.zipkin.schema import ZipkinConfig
from gateway.telemetry import propagation
from gateway.telemetry.batch import Queues
from gateway.telemetry.propagation import B3, B3_SINGLE, JAEGER, W3C, extract, inject, plugin_params, scan
from gateway.telemetry.sender import SendError

TIMEOUT = 10
TID16 = "0af7651916cd43dd8448eb211c80319c"
TID8 = "8448eb211c80319c"
SID1 = "b7ad6b7169203331"
SID2 = "b7ad6b7169203332"
ALL = propagation.LEGACY_EXTRACT


@pytest.fixture
def http_codec() -> str:
    """One codec: what these tests check is above HTTP framing."""
    return "llhttp"


# --- propagation (sans-I/O) -----------------------------------------------------------------------------------------


def _extract(headers: dict[str, str], formats: tuple[str, ...] = ALL) -> propagation.Context | None:
    raw = [(k.encode(), v.encode()) for k, v in headers.items()]
    values = scan(raw, propagation.TRACE_HEADERS)
    return extract(values, raw, formats) if values is not None else None


def _ids(ctx: propagation.Context) -> tuple[Any, ...]:
    return (ctx.format, ctx.trace_id, ctx.trace_size, ctx.span_id, ctx.parent_id, ctx.sampled, ctx.flags, ctx.single)


def test_b3_multi_headers_with_all_ids():
    """propagation_strategies_spec b3 "base case"."""
    ctx = _extract({"x-b3-traceid": TID16, "x-b3-spanid": SID1, "x-b3-parentspanid": SID2, "x-b3-sampled": "1"})
    assert _ids(ctx) == (B3, int(TID16, 16), 16, int(SID1, 16), int(SID2, 16), True, None, False)
    assert ctx.reuse


def test_b3_sampling_decision_alone_is_a_context():
    """b3 "sampling decision only": x-b3-sampled without ids is found (and stops the search)."""
    ctx = _extract({"x-b3-sampled": "0", "traceparent": f"00-{TID16}-{SID1}-01"})
    assert _ids(ctx) == (B3, None, 0, None, None, False, None, False)


def test_b3_debug_flag_samples_and_is_kept():
    """b3 "sampled set via flags"."""
    ctx = _extract({"x-b3-traceid": TID16, "x-b3-spanid": SID1, "x-b3-flags": "1"})
    assert (ctx.sampled, ctx.flags) == (True, b"1")


def test_b3_keeps_an_8_byte_trace_id_size():
    """b3 "8-byte trace ID": padded to 16 bytes inside, its size remembered for injection."""
    ctx = _extract({"x-b3-traceid": TID8, "x-b3-spanid": SID1, "x-b3-sampled": "1"})
    assert (ctx.trace_id, ctx.trace_size) == (int(TID8, 16), 8)


def test_b3_with_an_invalid_id_has_no_ids():
    """b3 "invalid trace id": the sampling decision stays."""
    ctx = _extract({"x-b3-traceid": "x", "x-b3-spanid": SID1, "x-b3-parentspanid": SID2, "x-b3-sampled": "0"})
    assert _ids(ctx) == (B3, None, 0, None, None, False, None, False)


@pytest.mark.parametrize(("value", "expected"), [
    ("1", (None, None, None, True, None)),
    ("0", (None, None, None, False, None)),
    ("d", (None, None, None, True, b"1")),
    (f"{TID16}-{SID1}-1-{SID2}", (int(TID16, 16), int(SID1, 16), int(SID2, 16), True, None)),
    (f"{TID16}-{SID1}-0-{SID2}", (int(TID16, 16), int(SID1, 16), int(SID2, 16), False, None)),
    (f"{TID16}-{SID1}-d-{SID2}", (int(TID16, 16), int(SID1, 16), int(SID2, 16), True, b"1")),
    (f"{TID16}-{SID1}", (int(TID16, 16), int(SID1, 16), None, None, None)),
    (f"{TID16}-{SID1}-{SID2}", (int(TID16, 16), int(SID1, 16), int(SID2, 16), None, None)),
    (f"{TID16}-{SID1}-1{SID2[1:]}", (None, None, None, None, None)),  # the parent's "1" read as the flag: invalid
])
def test_b3_single_header_forms(value, expected):
    """b3-single: "1-char header", "all fields" (sampled, not sampled, debug), "trace id and span id only"."""
    ctx = _extract({"b3": value})
    assert (ctx.trace_id, ctx.span_id, ctx.parent_id, ctx.sampled, ctx.flags) == expected and ctx.single


def test_b3_single_header_from_tracestate():
    """b3-single "extraction from tracestate"; and a tracestate without b3 still makes b3 the format found."""
    ctx = _extract({"tracestate": f"b3={TID16}-{SID1}-d-{SID2}"})
    assert (ctx.trace_id, ctx.flags, ctx.single) == (int(TID16, 16), b"1", True)
    ctx = _extract({"traceparent": f"00-{TID16}-{SID1}-01", "tracestate": "vendor=x"})
    assert ctx.format == B3 and ctx.trace_id is None  # Kong's order: b3 before w3c
    assert _extract({"traceparent": f"00-{TID16}-{SID1}-01", "tracestate": "vendor=x"}, (W3C, B3)).format == W3C


def test_w3c_traceparent():
    """w3c "base case", "extraction with sampling mask (off)"."""
    ctx = _extract({"traceparent": f"00-{TID16}-{SID1}-01"})
    assert _ids(ctx) == (W3C, int(TID16, 16), 16, int(SID1, 16), None, True, None, False) and not ctx.reuse
    assert _extract({"traceparent": f"00-{TID16}-{SID1}-08"}).sampled is False


@pytest.mark.parametrize("value", [f"vv-{TID16}-{SID1}-00", f"00-{TID16}-vvvvvvvvvvvvvvvv-00", f"00-123-{SID1}-00",
                                   f"00-{'0' * 32}-{SID1}-00", f"00-{TID16}-{'0' * 16}-00", f"01-{TID16}-{SID1}-00",
                                   f"00-{TID16}-{SID1}-000", f"00-{TID16}-{SID1}-0", f"00-{TID16}-{SID1}-01-x"])
def test_an_invalid_traceparent_is_no_context(value):
    """w3c's extraction error cases: invalid header, ids, version (only 00), flags."""
    assert _extract({"traceparent": value}) is None


def test_jaeger_uber_trace_id_with_short_ids_and_baggage():
    """jaeger: ids without leading zeros are Kong's (a trace id of 2 bytes goes out in 16); uberctx- baggage is read
    unescaped and written escaped again."""
    raw = [(b"uber-trace-id", b"abc:def:0:1"), (b"uberctx-who", b"a%20b+c")]
    ctx = extract(scan(raw, propagation.TRACE_HEADERS), raw, ALL)
    assert _ids(ctx) == (JAEGER, 0xABC, 2, 0xDEF, 0, True, None, False) and ctx.reuse
    assert ctx.baggage == [(b"who", b"a b c")]
    assert inject(JAEGER, 0xABC, 2, 1, 0xDEF, True, None, ctx.baggage) == [
        (b"uber-trace-id", b"%032x:%016x:%016x:01" % (0xABC, 1, 0xDEF)), (b"uberctx-who", b"a%20b%20c")]


def test_params_resolve_the_deprecated_header_type():
    def params(**config: Any) -> tuple[Any, ...]:
        p = plugin_params(msgspec.convert(config, ZipkinConfig).propagation, config.get("header_type", "preserve"),
                          config.get("default_header_type", "b3"))
        return p.extract, p.inject, p.default_format

    assert params() == (ALL, ("preserve",), "b3")
    assert params(header_type="ignore", default_header_type="w3c") == (None, ("w3c",), "w3c")
    assert params(header_type="jaeger") == (ALL, ("preserve", "jaeger"), "b3")
    assert params(propagation={"extract": [], "inject": ["preserve"], "default_format": "w3c"}) == \
        (None, ("preserve",), "w3c")


def test_inject_keeps_the_incoming_trace_id_size_where_the_format_allows():
    tid = int(TID8, 16)
    assert inject(B3, tid, 8, 1, 2, True) == [(b"x-b3-traceid", TID8.encode()), (b"x-b3-spanid", b"%016x" % 1),
                                             (b"x-b3-parentspanid", b"%016x" % 2), (b"x-b3-sampled", b"1")]
    assert inject(W3C, tid, 8, 1, 2, None) == [(b"traceparent", b"00-%032x-%016x-00" % (tid, 1))]
    assert inject(JAEGER, tid, 0, 1, 2, True)[0] == (b"uber-trace-id", b"%032x:%016x:%016x:01" % (tid, 1, 2))


def test_inject_b3_single_leaves_the_flag_out_when_not_sampled_and_passes_debug():
    """Kong's b3-single injector: an unsampled zipkin request has should_sample nil, so no flag."""
    assert inject(B3_SINGLE, 5, 16, 1, 2, None) == [(b"b3", b"%032x-%016x-%016x" % (5, 1, 2))]
    assert inject(B3_SINGLE, 5, 16, 1, 2, True, b"1") == [(b"b3", b"%032x-%016x-d-%016x" % (5, 1, 2))]
    assert inject(B3, 5, 16, 1, 2, True, b"1")[-1] == (b"x-b3-flags", b"1")


# --- spans (sans-I/O) -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("header", "tags", "errors"), [
    ("foo=bar", {"foo": "bar"}, []),
    ("  foo  =  bar   ", {"foo": "bar"}, []),
    ("foobar;foo=;=bar;keep=true;=", {"keep": "true"}, ["foobar", "foo=", "=bar", "="]),
    ("foo=bar baz", {"foo": "bar baz"}, []),
    ("foo bar=baz", {}, ["foo bar=baz"]),
    ("  foo  =  bar  ;baz  =  qux", {"foo": "bar", "baz": "qux"}, []),
    (";;foo=bar;;;;baz=qux;;", {"foo": "bar", "baz": "qux"}, []),
])
def test_request_tags_parse_as_kongs(header, tags, errors):
    """request_tags_spec: "parses simple case, swallowing spaces", "rejects invalid tags, keeping valid ones", "allows
    spaces on values, but not on keys", "parses multiple tags ...", "swallows empty tags between semicolons"."""
    assert spans.parse_tags([header]) == (tags, errors)


SPACES = " " * 8000


@pytest.mark.parametrize(("header", "tags", "errors"), [
    ("a=" + SPACES, {}, ["a=" + SPACES]),
    ("a" + SPACES + "=" + SPACES, {}, ["a" + SPACES + "=" + SPACES]),
], ids=["a= and spaces", "a, spaces, = and spaces"])
def test_request_tags_parse_a_long_run_of_spaces_in_linear_time(header, tags, errors):
    """request_tags.lua's pattern `^%s*(%S+)%s*=%s*(.*%S)%s*$`, as a backtracking regex, tries `.*%S` from every
    space of a run (quadratic: 0.25 s for 8 KB, which any client can send with x-b3-sampled: 1): the gateway's
    parse gives the pattern's result in a time linear in the value."""
    started = time.thread_time()  # CPU time: another test process (pytest-xdist) may hold the core meanwhile
    assert spans.parse_tags([header]) == (tags, errors)
    assert time.thread_time() - started < 0.05


def test_request_tags_from_several_headers():
    """request_tags_spec "parses multiple tags separated by semicolons, in an array"."""
    assert spans.parse_tags(["foo=bar;baz=qux", "quux=quuz"])[0] == {"foo": "bar", "baz": "qux", "quux": "quuz"}


def _settings(**config: Any) -> spans.Settings:
    return spans.Settings(msgspec.convert(config, ZipkinConfig))


def _facts(**fields: Any) -> spans.Facts:
    base: dict[str, Any] = dict(method="GET", path="/", host="http-route", status=200, start=1_000_000,
                                end=1_050_000, protocol="HTTP/1.1", client_ip="127.0.0.1", client_port=40000,
                                node_id="node", route_id="r-id", route_name="r", service_id="s-id",
                                service_name="svc", routed=True, peer_hostname="127.0.0.1", peer_ip="127.0.0.1",
                                peer_port=15555, access_start=1_000_000, access_end=1_010_000, header_start=1_040_000,
                                tries=[spans.Try("127.0.0.1", 15555, 1_010_000)])
    base.update(fields)
    return spans.Facts(**base)


def _json(settings: spans.Settings, facts: spans.Facts, parent: int | None = None) -> list[dict[str, Any]]:
    ids = iter(range(100, 200))
    built = spans.build(settings, facts, TID16, 1, parent, 2, lambda: next(ids))
    return [json.loads(spans.encode(s, settings)) for s in built]


def test_a_proxied_request_makes_kongs_three_spans():
    """zipkin_spec "generates spans, tags and annotations for regular requests", as the reporter encodes them."""
    balancer, proxy, req = _json(_settings(static_tags=[{"name": "static", "value": "ok"}]),
                                 _facts(request_tags={"foo": "bar"}))
    assert req == {
        "traceId": TID16, "name": "GET", "id": "0000000000000001", "kind": "SERVER", "timestamp": 1_000_000,
        "duration": 50_000, "localEndpoint": {"serviceName": "kong"},
        "remoteEndpoint": {"port": 40000, "ipv4": "127.0.0.1"},
        "tags": {"lc": "kong", "http.method": "GET", "http.host": "http-route", "http.path": "/",
                 "http.protocol": "HTTP/1.1", "static": "ok", "foo": "bar", "http.status_code": "200",
                 "kong.node.id": "node"},
        "annotations": [{"value": "krf", "timestamp": 1_000_000}, {"value": "krs", "timestamp": 1_000_000}]}
    assert proxy["name"] == "GET (proxy)" and proxy["kind"] == "CLIENT" and proxy["parentId"] == req["id"]
    assert proxy["tags"] == {"peer.hostname": "127.0.0.1", "kong.service": "s-id", "kong.service_name": "svc",
                             "kong.route": "r-id", "kong.route_name": "r"}
    assert proxy["remoteEndpoint"] == {"serviceName": "svc", "port": 15555, "ipv4": "127.0.0.1"}
    assert [(a["value"], a["timestamp"]) for a in proxy["annotations"]] == [
        ("khs", 1_040_000), ("khf", 1_040_000), ("kbs", 1_040_000), ("kas", 1_000_000), ("kaf", 1_010_000),
        ("kbf", 1_050_000)]
    assert (proxy["timestamp"], proxy["duration"]) == (1_000_000, 50_000)
    assert balancer == {"traceId": TID16, "name": "GET (balancer try 1)", "parentId": req["id"],
                        "id": "0000000000000064", "kind": "CLIENT", "timestamp": 1_010_000, "duration": 0,
                        "localEndpoint": {"serviceName": "kong"},
                        "remoteEndpoint": {"serviceName": "svc", "port": 15555, "ipv4": "127.0.0.1"},
                        "tags": {"kong.balancer.try": "1", "kong.service": "s-id", "kong.service_name": "svc",
                                 "kong.route": "r-id", "kong.route_name": "r"}}


def test_a_request_no_route_matched_has_two_spans_and_no_remote_service():
    """zipkin_spec "generates spans, tags and annotations for non-matched requests"."""
    facts = _facts(status=404, route_id=None, route_name=None, service_id=None, service_name=None, routed=False,
                   peer_hostname=None, peer_ip=None, peer_port=None, access_start=None, access_end=None, tries=[],
                   request_tags={"error": "true"})
    proxy, req = _json(_settings(), facts)
    assert "tags" not in proxy and proxy["remoteEndpoint"] is None
    assert proxy["timestamp"] == 1_040_000  # the proxy span starts with the response (Kong's header_filter)
    assert len(proxy["annotations"]) == 6 and len(req["annotations"]) == 2
    assert req["tags"]["error"] == "true" and req["tags"]["http.status_code"] == "404"
    proxy, _ = _json(_settings(default_service_name="fallback"), facts)
    assert proxy["remoteEndpoint"] == {"serviceName": "fallback"}


def test_failed_tries_are_tagged_as_errors():
    facts = _facts(tries=[spans.Try("127.0.0.1", 1, 1_001_000, "failed", 502), spans.Try(None, 15555, 1_002_000)])
    first, second, _, _ = _json(_settings(), facts)
    assert first["tags"]["error"] == "true" and first["tags"]["kong.balancer.state"] == "failed"
    assert first["tags"]["http.status_code"] == "502" and first["name"] == "GET (balancer try 1)"
    assert "error" not in second["tags"] and second["remoteEndpoint"] == {"serviceName": "svc", "port": 15555}


def test_phase_durations_as_tags():
    """zipkin_spec "phase_duration_flavor = 'tags' configuration"."""
    _, proxy, req = _json(_settings(phase_duration_flavor="tags"), _facts())
    assert "annotations" not in proxy and "annotations" not in req
    assert req["tags"]["kong.rewrite.duration_ms"] == "0"
    assert (proxy["tags"]["kong.access.duration_ms"], proxy["tags"]["kong.header_filter.duration_ms"],
            proxy["tags"]["kong.body_filter.duration_ms"]) == ("10", "0", "10")


def test_a_tag_set_by_kong_later_wins_over_the_tags_header():
    """The request tags are set when the trace starts, http.status_code and kong.node.id in the log step."""
    _, _, req = _json(_settings(include_credential=False),
                      _facts(request_tags={"http.status_code": "x", "lc": "mine"}, consumer_id="c", credential_id="k"))
    assert (req["tags"]["http.status_code"], req["tags"]["lc"], req["tags"]["kong.consumer"]) == ("200", "mine", "c")
    assert "kong.credential" not in req["tags"]


# --- config ---------------------------------------------------------------------------------------------------------


def test_defaults_are_kongs():
    config = msgspec.convert({}, ZipkinConfig)
    assert (config.local_service_name, config.http_endpoint, config.sample_ratio, config.include_credential,
            config.traceid_byte_count, config.header_type, config.default_header_type, config.tags_header,
            config.http_span_name, config.connect_timeout, config.send_timeout, config.read_timeout,
            config.phase_duration_flavor, config.propagation.default_format, config.queue.max_batch_size) == (
        "kong", None, 0.001, True, 16, "preserve", "b3", "Zipkin-Tags", "method", 2000, 5000, 5000, "annotations",
        "b3", 1)


@pytest.mark.parametrize(("config", "message"), [
    ({"static_tags": [{"name": "foo", "value": "bar"}, {"name": "foo", "value": "baz"}]},
     "config.static_tags: repeated tags are not allowed: foo"),  # schema_spec "rejects repeated tags"
    ({"static_tags": [{"name": "lc", "value": "x"}]}, "config.static_tags[0].name: must not be one of: error, "),
    ({"propagation": {"inject": ["xray"]}}, "config.propagation.inject[0]: expected one of preserve, w3c, b3, "
                                            "b3-single, jaeger, ot, datadog, aws, gcp, got 'xray'"),
    ({"propagation": {"extract": ["b3-single"]}}, "config.propagation.extract[0]: b3 reads both b3 forms"),
    ({"http_endpoint": "udp://127.0.0.1:9411"}, "config.http_endpoint: expected an http:// or https:// URL"),
    ({"traceid_byte_count": 12}, "config.traceid_byte_count: expected one of 8, 16, got 12"),
    ({"sample_ratio": 2}, "config.sample_ratio: expected number >= 0 and <= 1, got 2"),
    ({"http_span_name": "path"}, "config.http_span_name: expected one of"),
    ({"phase_duration_flavor": "logs"}, "config.phase_duration_flavor: expected one of"),
    ({"http_response_header_for_traceid": "x trace"}, "config.http_response_header_for_traceid: invalid header"),
    ({"connect_timeout": -1}, "config.connect_timeout: expected int >= 0"),
    ({"queue": {"max_batch_size": 0}}, "config.queue.max_batch_size: expected int >= 1"),
    ({"http_endpoint": "http://127.0.0.1:9411", "endpoint": "x"}, "config.endpoint is not supported by the gateway's"),
])
def test_config_errors_name_the_field(config, message):
    assert f"plugins[0].{message}" in refused(plugin("zipkin", **config))


@pytest.mark.parametrize(("field", "config"), [
    (name, {name: ""}) for name in ("local_service_name", "http_endpoint", "default_service_name", "tags_header",
                                    "http_response_header_for_traceid")
] + [
    ("static_tags[0].name", {"static_tags": [{"name": "", "value": "x"}]}),
    ("static_tags[0].value", {"static_tags": [{"name": "team", "value": ""}]}),
])
def test_an_empty_string_is_refused_as_kongs_len_min(field, config):
    """kong/db/schema/init.lua: a string field without its own len_min has len_min 1, so "" is refused."""
    assert f"plugins[0].config.{field}: length must be at least 1" in refused(plugin("zipkin", **config))


@pytest.mark.parametrize(("config", "extract_", "inject_", "default"), [
    ({"header_type": "datadog"}, ALL, ("preserve", "datadog"), "b3"),
    ({"default_header_type": "ot"}, ALL, ("preserve",), "ot"),
    ({"propagation": {"extract": ["b3", "ot"], "default_format": "b3"}}, ("b3", "ot"), None, "b3"),
    ({"propagation": {"inject": ["aws"], "default_format": "b3"}}, None, ("aws",), "b3"),
    ({"propagation": {"extract": [], "default_format": "gcp"}}, None, None, "gcp"),
])
def test_kongs_other_formats_are_taken_wherever_a_format_is_named(config, extract_, inject_, default):
    """Kong's zipkin schema (header_type, default_header_type) and typedefs.propagation take ot, datadog, aws and
    gcp as they take w3c, b3 and jaeger (Kong 3.9.3 has no instana: test_propagation_3_9_3.py)."""
    config = msgspec.convert(config, ZipkinConfig)
    params = plugin_params(config.propagation, config.header_type, config.default_header_type)
    assert (params.extract, params.inject, params.default_format) == (extract_, inject_, default)


# --- through the gateway --------------------------------------------------------------------------------------------


def _zipkin(collector: EchoBackend | None, **config: Any) -> dict[str, Any]:
    if collector is not None:
        config.setdefault("http_endpoint", f"http://127.0.0.1:{collector.port}/api/v2/spans")
        config.setdefault("queue", {"max_coalescing_delay": 0.01})
    return {"name": "zipkin", "config": config}


async def _start(nursery: trio.Nursery, gateway: Any, *plugins: dict, routes: list | None = None,
                 collector: bool = True, **doc: Any) -> tuple[int, EchoBackend, EchoBackend]:
    """An echo backend behind service `svc` (route `r`, path /) and the gateway: (port, backend, collector)."""
    backend, zipkin = EchoBackend(), EchoBackend("zipkin")
    await nursery.start(backend.serve)
    if collector:
        await nursery.start(zipkin.serve)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}",
                                               routes or [{"name": "r", "paths": ["/"]}])],
                          "plugins": [p(zipkin) if callable(p) else p for p in plugins], **doc})
    return port, backend, zipkin


def _spans(collector: EchoBackend) -> list[dict[str, Any]]:
    out = []
    for seen in collector.requests:
        assert (seen.method, seen.target, seen.header("content-type")) == ("POST", "/api/v2/spans", "application/json")
        out += json.loads(seen.body)
    return out


async def _received(collector: EchoBackend, count: int) -> dict[str, dict[str, Any]]:
    """The first `count` spans by name, once they all came."""
    found = await wait_until(lambda: len(_spans(collector)) >= count and _spans(collector), f"{count} spans")
    return {span["name"]: span for span in found}


async def _get(port: int, target: str = "/", **headers: str) -> Any:
    with trio.fail_after(TIMEOUT):
        return await request(port, "GET", target, headers=[(k.replace("_", "-"), v) for k, v in headers.items()])


def _upstream(backend: EchoBackend, i: int = -1) -> Seen:
    return backend.requests[i]


async def test_spans_of_a_proxied_request_as_kong_reports_them(nursery, gateway):
    """zipkin_spec "generates spans, tags and annotations for regular requests"."""
    port, backend, collector = await _start(
        nursery, gateway, lambda c: _zipkin(c, sample_ratio=1, static_tags=[{"name": "static", "value": "ok"}]))
    reply = await _get(port, "/", x_b3_sampled="1", zipkin_tags="foo=bar; baz=qux")
    assert reply.status == 200
    got = await _received(collector, 3)
    req, proxy, balancer = got["GET"], got["GET (proxy)"], got["GET (balancer try 1)"]
    assert len(req["traceId"]) == 32 and req["kind"] == "SERVER" and proxy["kind"] == balancer["kind"] == "CLIENT"
    assert proxy["parentId"] == balancer["parentId"] == req["id"] and req["traceId"] == proxy["traceId"]
    tags = dict(req["tags"])
    assert re.fullmatch(r"[0-9a-f-]{36}", tags.pop("kong.node.id"))
    assert tags == {"http.method": "GET", "http.path": "/", "http.status_code": "200", "http.protocol": "HTTP/1.1",
                    "http.host": "gateway.test", "lc": "kong", "static": "ok", "foo": "bar", "baz": "qux"}
    assert req["remoteEndpoint"]["ipv4"] == "127.0.0.1" and isinstance(req["remoteEndpoint"]["port"], int)
    assert req["localEndpoint"] == proxy["localEndpoint"] == {"serviceName": "kong"}
    assert proxy["tags"]["kong.route_name"] == "r" and proxy["tags"]["kong.service_name"] == "svc"
    assert proxy["tags"]["peer.hostname"] == "127.0.0.1"
    assert proxy["remoteEndpoint"] == balancer["remoteEndpoint"] == {"serviceName": "svc", "port": backend.port,
                                                                     "ipv4": "127.0.0.1"}
    assert balancer["tags"] == {"kong.balancer.try": "1", "kong.route": proxy["tags"]["kong.route"],
                                "kong.route_name": "r", "kong.service": proxy["tags"]["kong.service"],
                                "kong.service_name": "svc"}
    assert sorted(a["value"] for a in req["annotations"]) == ["krf", "krs"]
    pann = {a["value"]: a["timestamp"] for a in proxy["annotations"]}
    assert sorted(pann) == ["kaf", "kas", "kbf", "kbs", "khf", "khs"]
    assert pann["kas"] <= pann["kaf"] <= pann["khs"] <= pann["kbs"] <= pann["kbf"]
    assert req["duration"] >= proxy["duration"] >= 0 and req["timestamp"] <= proxy["timestamp"]
    # the upstream is the proxy span's child: Kong injects the proxy span with the request span as its parent
    seen = _upstream(backend)
    assert (seen.header("x-b3-traceid"), seen.header("x-b3-spanid"), seen.header("x-b3-parentspanid"),
            seen.header("x-b3-sampled")) == (req["traceId"], proxy["id"], req["id"], "1")


async def test_sample_ratio_0_sends_nothing_and_propagates_unsampled(nursery, gateway):
    """zipkin_no_endpoint_spec "global plugin doesn't overwrites" (x-b3-sampled: 0 without a decision)."""
    port, backend, collector = await _start(nursery, gateway, lambda c: _zipkin(c, sample_ratio=0))
    assert (await _get(port)).status == 200
    seen = _upstream(backend)
    assert seen.header("x-b3-sampled") == "0" and len(seen.header("x-b3-traceid")) == 32
    await trio.sleep(0.2)
    assert collector.requests == []


async def test_a_callers_sampled_flag_beats_sample_ratio_0(nursery, gateway):
    """zipkin_spec "Integration tests with instrumentations enabled": sample_ratio 0 and x-b3-sampled: 1 alone."""
    port, backend, collector = await _start(nursery, gateway, lambda c: _zipkin(c, sample_ratio=0))
    assert (await _get(port, x_b3_sampled="1")).status == 200
    got = await _received(collector, 3)
    assert set(got) == {"GET", "GET (proxy)", "GET (balancer try 1)"}
    assert _upstream(backend).header("x-b3-sampled") == "1"


async def test_a_callers_unsampled_flag_beats_sample_ratio_1(nursery, gateway):
    port, backend, collector = await _start(nursery, gateway, lambda c: _zipkin(c, sample_ratio=1))
    assert (await _get(port, traceparent=f"00-{TID16}-{SID1}-00")).status == 200
    assert re.fullmatch(f"00-{TID16}-[0-9a-f]{{16}}-00", _upstream(backend).header("traceparent"))
    await trio.sleep(0.2)
    assert collector.requests == []


async def test_b3_single_propagation_keeps_the_callers_span(nursery, gateway):
    """zipkin_spec "b3 single header propagation" "works on regular calls": the request span is the caller's."""
    port, backend, collector = await _start(nursery, gateway, lambda c: _zipkin(c, sample_ratio=1))
    assert (await _get(port, b3=f"{TID16}-{SID1}-1-{SID2}")).status == 200
    b3 = _upstream(backend).header("b3")
    assert re.fullmatch(f"{TID16}-[0-9a-f]{{16}}-1-{SID1}", b3)
    got = await _received(collector, 3)
    req, proxy, balancer = got["GET"], got["GET (proxy)"], got["GET (balancer try 1)"]
    assert (req["traceId"], req["id"], req["parentId"]) == (TID16, SID1, SID2)
    assert proxy["parentId"] == balancer["parentId"] == SID1 and SID1 not in (proxy["id"], balancer["id"])
    assert b3.split("-")[1] == proxy["id"]


async def test_w3c_propagation_continues_the_callers_trace(nursery, gateway):
    """zipkin_spec "w3c traceparent header propagation" "works on regular calls"."""
    port, backend, collector = await _start(nursery, gateway, lambda c: _zipkin(c, sample_ratio=1))
    assert (await _get(port, traceparent=f"00-{TID16}-{SID1}-01")).status == 200
    assert re.fullmatch(f"00-{TID16}-[0-9a-f]{{16}}-01", _upstream(backend).header("traceparent"))
    assert _upstream(backend).header("x-b3-traceid") is None
    got = await _received(collector, 3)
    assert (got["GET"]["traceId"], got["GET"]["parentId"]) == (TID16, SID1) and got["GET"]["id"] != SID1


@pytest.mark.parametrize("size", [8, 16])
async def test_jaeger_propagation_keeps_the_trace_id_size(nursery, gateway, size):
    """zipkin_spec "jaeger uber-trace-id header propagation" "works on regular calls" (traceid_byte_count 8, 16);
    the span's traceId is Kong's 16 bytes (zero-padded, which Zipkin reads as the 8-byte id)."""
    tid = TID16[-2 * size:]
    port, backend, collector = await _start(nursery, gateway,
                                            lambda c: _zipkin(c, sample_ratio=1, traceid_byte_count=size))
    assert (await _get(port, uber_trace_id=f"{tid}:{SID1}:{SID2}:1")).status == 200
    assert re.fullmatch(f"{tid}:[0-9a-f]{{16}}:{SID1}:01", _upstream(backend).header("uber-trace-id"))
    got = await _received(collector, 3)
    assert (got["GET"]["traceId"], got["GET"]["id"], got["GET"]["parentId"]) == (tid.rjust(32, "0"), SID1, SID2)


@pytest.mark.parametrize("size", [8, 16])
async def test_traceid_byte_count_sizes_the_trace_ids_the_plugin_starts(nursery, gateway, size):
    """The spans' traceId and the response header have traceid_byte_count bytes; b3 goes upstream in 16 (Kong's
    injectors default to 16 bytes for an id that did not come in)."""
    port, backend, collector = await _start(nursery, gateway, lambda c: _zipkin(
        c, sample_ratio=1, traceid_byte_count=size, http_response_header_for_traceid="X-Trace-Id"))
    reply = await _get(port)
    trace_id = reply.header("x-trace-id")
    assert re.fullmatch(f"[0-9a-f]{{{2 * size}}}", trace_id)
    assert _upstream(backend).header("x-b3-traceid") == trace_id.rjust(32, "0")
    got = await _received(collector, 3)
    assert {span["traceId"] for span in got.values()} == {trace_id}


async def test_http_response_header_for_traceid_also_on_a_request_no_route_matched(nursery, gateway):
    """zipkin_spec "custom traceid header included in response headers"; a global plugin's header_filter runs on
    Kong's 404 too."""
    port, _, _ = await _start(nursery, gateway, lambda c: _zipkin(c, http_response_header_for_traceid="X-B3-TraceId"),
                              routes=[{"name": "r", "paths": ["/api"]}])
    for target, status in (("/api", 200), ("/nowhere", 404)):
        reply = await _get(port, target)
        assert reply.status == status and re.fullmatch("[0-9a-f]{32}", reply.header("x-b3-traceid"))


async def test_an_underscore_in_the_trace_id_header_name_is_sent_as_a_dash(nursery, gateway):
    """zipkin/handler.lua:239 kong.response.add_header(conf.http_response_header_for_traceid, ...): lua-nginx-module
    writes a "_" of a response header name as "-" (ngx_http_lua_headers.c, transform_underscores_in_response_headers
    on by default)."""
    port, _, _ = await _start(nursery, gateway, lambda c: _zipkin(c, http_response_header_for_traceid="X_Trace_Id"),
                              routes=[{"name": "r", "paths": ["/api"]}])
    reply = await _get(port, "/api")
    names = {k.lower() for k, _ in reply.headers}
    assert "x-trace-id" in names and "x_trace_id" not in names


async def test_a_request_no_route_matched_reports_the_callers_trace(nursery, gateway):
    """zipkin_spec "generates spans, tags and annotations for non-matched requests", "propagates b3 headers for
    non-matched requests": a b3 trace id without a span id, the tags header's error = true."""
    port, _, collector = await _start(nursery, gateway, lambda c: _zipkin(c, sample_ratio=1),
                                      routes=[{"name": "r", "paths": ["/api"]}])
    reply = await _get(port, "/foobar", x_b3_traceid=TID8, x_b3_sampled="1", zipkin_tags="error = true")
    assert reply.status == 404
    got = await _received(collector, 2)
    await trio.sleep(0.1)
    assert len(_spans(collector)) == 2
    req, proxy = got["GET"], got["GET (proxy)"]
    assert req["traceId"] == proxy["traceId"] == TID8.rjust(32, "0")
    assert req["tags"]["error"] == "true" and req["tags"]["http.status_code"] == "404"
    assert req["tags"]["http.path"] == "/foobar"
    assert "tags" not in proxy and proxy["remoteEndpoint"] is None
    assert len(proxy["annotations"]) == 6 and len(req["annotations"]) == 2


async def test_header_type_ignore_starts_a_new_trace_in_the_default_header_type(nursery, gateway):
    """zipkin_spec "propagation configuration" "ignores incoming headers and uses default type"."""
    port, backend, _ = await _start(nursery, gateway, _zipkin(None, header_type="ignore", default_header_type="w3c"))
    assert (await _get(port, x_b3_sampled="1", x_b3_traceid=TID16)).status == 200
    seen = _upstream(backend)
    assert TID16 not in seen.header("traceparent") and seen.header("x-b3-traceid") == TID16  # left as it came


async def test_header_type_adds_its_format_to_the_incoming_one(nursery, gateway):
    """zipkin_spec "propagates w3c tracing headers + incoming format (preserve + w3c)"."""
    port, backend, _ = await _start(nursery, gateway, _zipkin(None, header_type="w3c",
                                                              default_header_type="b3-single"))
    incoming = f"{TID16}-{SID1}-1-{SID2}"
    assert (await _get(port, b3=incoming)).status == 200
    seen = _upstream(backend)
    assert re.fullmatch(f"00-{TID16}-[0-9a-f]{{16}}-01", seen.header("traceparent"))
    assert seen.header("b3") != incoming and re.fullmatch(f"{TID16}-[0-9a-f]{{16}}-1-{SID1}", seen.header("b3"))


@pytest.mark.parametrize(("default", "header"), [("b3", "x-b3-traceid"), ("b3-single", "b3"), ("jaeger",
                                                                                               "uber-trace-id")])
async def test_default_header_type_when_no_tracing_header_came(nursery, gateway, default, header):
    """zipkin_spec "uses whatever is set in the plugin's config.default_header_type property"."""
    port, backend, _ = await _start(nursery, gateway, _zipkin(None, default_header_type=default))
    assert (await _get(port)).status == 200
    seen = _upstream(backend)
    assert seen.header(header) is not None and seen.header("traceparent") is None


async def test_propagation_without_preserve_leaves_the_incoming_header(nursery, gateway):
    """zipkin_spec "does not preserve incoming header type if preserve is not specified"."""
    port, backend, _ = await _start(nursery, gateway, _zipkin(None, propagation={
        "extract": ["b3"], "inject": ["w3c"], "default_format": "w3c"}))
    incoming = f"{TID16}-{SID1}-1-{SID2}"
    assert (await _get(port, b3=incoming)).status == 200
    seen = _upstream(backend)
    assert seen.header("b3") == incoming
    assert re.fullmatch(f"00-{TID16}-[0-9a-f]{{16}}-01", seen.header("traceparent"))


async def test_propagation_clear_removes_the_named_headers(nursery, gateway):
    """zipkin_spec "clears non-propagated headers when configured to do so" (with headers the gateway can name)."""
    port, backend, _ = await _start(nursery, gateway, _zipkin(None, propagation={
        "extract": ["w3c"], "inject": ["preserve"], "clear": ["X-Trace-Secret", "uber-trace-id"],
        "default_format": "b3"}))
    assert (await _get(port, traceparent=f"00-{TID16}-{SID1}-01", x_trace_secret="s",
                        uber_trace_id=f"{TID16}:{SID1}:0:1")).status == 200
    seen = _upstream(backend)
    assert re.fullmatch(f"00-{TID16}-[0-9a-f]{{16}}-01", seen.header("traceparent"))
    assert seen.header("x-trace-secret") is None and seen.header("uber-trace-id") is None


async def test_a_route_or_service_plugin_overrides_the_global_one(nursery, gateway):
    """zipkin_no_endpoint_spec "global plugin doesn't overwrites": "service-specific plugin", "route-specific
    plugin"."""
    backend = EchoBackend()
    await nursery.start(backend.serve)
    url = f"http://127.0.0.1:{backend.port}"
    port = await gateway({"services": [
        service("svc", url, [{"name": "by-route", "paths": ["/route"], "plugins": [
            _zipkin(None, sample_ratio=0, header_type="b3", default_header_type="b3")]},
                             {"name": "by-service", "paths": ["/service"]}],
                plugins=[_zipkin(None, sample_ratio=0, header_type="w3c", default_header_type="w3c")])],
        "plugins": [_zipkin(None, sample_ratio=1, header_type="b3-single", default_header_type="b3-single")]})
    assert (await _get(port, "/service")).status == 200
    seen = _upstream(backend)
    assert seen.header("b3") is None and re.fullmatch("00-[0-9a-f]{32}-[0-9a-f]{16}-00", seen.header("traceparent"))
    assert (await _get(port, "/route")).status == 200
    seen = _upstream(backend)
    assert seen.header("b3") is None and seen.header("x-b3-sampled") == "0" and seen.header("x-b3-traceid")


async def test_http_endpoint_null_propagates_and_sends_nothing(nursery, gateway):
    """zipkin_no_endpoint_spec "propagates tracing headers (b3 request)": no queue, no span, headers as Kong's."""
    from gateway.telemetry.batch import QUEUES

    before = set(QUEUES.queues)
    port, backend, _ = await _start(nursery, gateway, _zipkin(None, sample_ratio=1, header_type="w3c"),
                                    collector=False)
    assert (await _get(port, x_b3_sampled="1", x_b3_traceid=TID8)).status == 200
    seen = _upstream(backend)
    assert seen.header("x-b3-traceid") == TID8
    assert re.fullmatch(f"00-{TID8.rjust(32, '0')}-[0-9a-f]{{16}}-01", seen.header("traceparent"))
    assert not [name for name in set(QUEUES.queues) - before if "zipkin" in name]


async def test_static_tags_and_the_tags_header(nursery, gateway):
    """The tags header's tags (a custom tags_header, named case-insensitively) join the static ones; an item
    that does not parse is dropped (and logged, as Kong warns)."""
    port, _, collector = await _start(nursery, gateway, lambda c: _zipkin(
        c, sample_ratio=1, tags_header="X_Span_Tags", static_tags=[{"name": "env", "value": "test"},
                                                                   {"name": "team", "value": "a"}]))
    assert (await _get(port, x_span_tags="team = b; broken; k=v v")).status == 200
    tags = (await _received(collector, 3))["GET"]["tags"]
    assert (tags["env"], tags["team"], tags["k"]) == ("test", "b", "v v") and "broken" not in tags


@pytest.mark.parametrize("include", [True, False])
async def test_include_credential_tags_the_key_auth_consumer_and_credential(nursery, gateway, include):
    """kong.consumer is the authenticated consumer's id; kong.credential its key's id, with include_credential."""
    consumers = [{"username": "alice", "id": "3f1b9a4e-0000-4000-8000-000000000001",
                  "keyauth_credentials": [{"key": "k1", "id": "3f1b9a4e-0000-4000-8000-0000000000c1"}]}]
    port, _, collector = await _start(nursery, gateway, {"name": "key-auth"}, lambda c: _zipkin(
        c, sample_ratio=1, include_credential=include), consumers=consumers)
    assert (await _get(port, apikey="k1")).status == 200
    tags = (await _received(collector, 3))["GET"]["tags"]
    assert tags["kong.consumer"] == consumers[0]["id"]
    assert tags.get("kong.credential") == ("3f1b9a4e-0000-4000-8000-0000000000c1" if include else None)


async def test_http_span_name_method_path(nursery, gateway):
    """zipkin_spec "http_span_name = 'method_path' includes path to span name" (the path normalized, no query)."""
    port, _, collector = await _start(nursery, gateway, lambda c: _zipkin(c, sample_ratio=1,
                                                                         http_span_name="method_path"))
    assert (await _get(port, "/a/./b//c?q=1")).status == 200
    got = await _received(collector, 3)
    assert set(got) == {"GET /a/b/c", "GET /a/b/c (proxy)", "GET /a/b/c (balancer try 1)"}


async def test_phase_duration_flavor_tags(nursery, gateway):
    """zipkin_spec "phase_duration_flavor = 'tags' configuration"."""
    port, _, collector = await _start(nursery, gateway, lambda c: _zipkin(c, sample_ratio=1,
                                                                         phase_duration_flavor="tags"))
    assert (await _get(port)).status == 200
    got = await _received(collector, 3)
    req, proxy = got["GET"], got["GET (proxy)"]
    assert "annotations" not in req and "annotations" not in proxy
    assert int(req["tags"]["kong.rewrite.duration_ms"]) >= 0
    for phase in ("access", "header_filter", "body_filter"):
        assert int(proxy["tags"][f"kong.{phase}.duration_ms"]) >= 0


async def test_a_failed_try_gets_its_error_span(nursery, gateway):
    backend, collector = EchoBackend(), EchoBackend("zipkin")
    await nursery.start(backend.serve)
    await nursery.start(collector.serve)
    dead = free_port()
    port = await gateway({"upstreams": [upstream("up", [dead, backend.port], algorithm="round-robin")],
                          "services": [service("svc", "http://up", retries=2)],
                          "plugins": [_zipkin(collector, sample_ratio=1)]})
    for _ in range(2):  # round-robin: one of the two requests tries the dead target first
        assert (await _get(port)).status == 200
    spans_ = await wait_until(lambda: len(_spans(collector)) >= 7 and _spans(collector), "7 spans")
    first = next(s for s in spans_ if s["name"] == "GET (balancer try 1)" and s["tags"].get("error"))
    assert first["tags"]["kong.balancer.state"] == "failed" and first["tags"]["http.status_code"] == "502"
    assert first["remoteEndpoint"]["port"] == dead
    second = next(s for s in spans_ if s["name"] == "GET (balancer try 2)")
    assert "error" not in second["tags"] and second["remoteEndpoint"]["port"] == backend.port


async def test_the_queue_batches_spans_as_kong_counts_them(nursery, gateway):
    """zipkin_queue_spec "batches spans from multiple requests": max_batch_size counts spans."""
    port, _, collector = await _start(nursery, gateway, lambda c: _zipkin(
        c, sample_ratio=1, queue={"max_batch_size": 10, "max_coalescing_delay": 10}))
    for _ in range(10):
        assert (await _get(port)).status == 200
    await wait_until(lambda: len(collector.requests) >= 3, "3 batches")
    assert [len(json.loads(seen.body)) for seen in collector.requests[:3]] == [10, 10, 10]


async def test_a_collector_that_is_down_never_slows_a_request(nursery, gateway):
    """zipkin_spec "upstream zipkin failures" "connection refused if upstream zipkin server is not listening": the
    request is answered; the batch is retried and dropped off the request path."""
    endpoint = f"http://127.0.0.1:{free_port()}/api/v2/spans"
    port, _, _ = await _start(nursery, gateway, _zipkin(None, sample_ratio=1, http_endpoint=endpoint, queue={
        "max_entries": 10, "initial_retry_delay": 0.05}), collector=False)
    started = trio.current_time()
    for _ in range(40):
        assert (await _get(port)).status == 200
    assert trio.current_time() - started < 5


async def test_the_log_entry_carries_the_trace_id_each_injected_format_carried(nursery, gateway, tmp_path):
    """Kong's propagation.propagate: kong.log.set_serialize_value("trace_id", ...) with the id per injected format
    (b3-single's under "b3"), so a log line can be joined with the trace."""
    log = tmp_path / "access.log"
    backend = EchoBackend()
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}", [{"paths": ["/"]}])],
                          "plugins": [_zipkin(None, sample_ratio=0, propagation={
                              "extract": ["b3"], "inject": ["b3-single", "w3c"], "default_format": "b3"})]},
                         access_log=str(log))
    assert (await _get(port, "/", x_b3_traceid="0af7651916cd43dd", x_b3_spanid=SID1)).status == 200
    with trio.fail_after(TIMEOUT):
        while not log.exists() or not log.read_text():
            await trio.sleep(0.02)
    line = json.loads(log.read_text().splitlines()[0])
    assert line["trace_id"] == {"b3": "0af7651916cd43dd", "w3c": "0000000000000000" + "0af7651916cd43dd"}
    assert _upstream(backend).header("b3").startswith("0af7651916cd43dd-")


async def test_a_datadog_trace_id_of_any_length_is_proxied(nursery, gateway):
    """datadog.lua takes any number of digits (bn.from_dec): a trace id longer than Python's int() takes is
    proxied, and goes on in its low 64 bits (the datadog injector's size)."""
    huge = "9" * 5000
    port, backend, _ = await _start(nursery, gateway, _zipkin(None), collector=False)
    assert (await _get(port, x_datadog_trace_id=huge, x_datadog_parent_id=huge)).status == 200
    assert _upstream(backend).header("x-datadog-trace-id") == str(2**64 - 1)  # 10^5000 - 1 is -1 mod 2^64


async def test_a_try_to_a_named_target_has_the_address_it_resolved_to(nursery, gateway):
    """kong/plugins/zipkin/handler.lua:381-383 `span.ip = try.ip; span.port = try.port` and 403-404 the proxy span's
    `balancer_data.ip`: the address the balancer resolved the name to (kong/init.lua:1411 `current_try.ip =
    balancer_data_ip`): a service at http://localhost:<port> has remoteEndpoint ipv4 127.0.0.1."""
    backend, collector = EchoBackend(), EchoBackend("zipkin")
    await nursery.start(backend.serve)
    await nursery.start(collector.serve)
    port = await gateway({"services": [service("svc", f"http://localhost:{backend.port}")],
                          "plugins": [_zipkin(collector, sample_ratio=1)]})
    assert (await _get(port)).status == 200
    found = await _received(collector, 3)
    remote = {"serviceName": "svc", "port": backend.port, "ipv4": "127.0.0.1"}
    assert (found["GET (balancer try 1)"]["remoteEndpoint"], found["GET (proxy)"]["remoteEndpoint"]) == \
        (remote, remote)


async def test_peer_hostname_is_kongs_balancer_hostname(nursery, gateway):
    """zipkin/handler.lua tags the proxy span's peer.hostname with balancer_data.hostname: the upstream's
    host_header when it has one (runloop/balancer/init.lua), not the target's address."""
    backend, collector = EchoBackend(), EchoBackend("zipkin")
    await nursery.start(backend.serve)
    await nursery.start(collector.serve)
    port = await gateway({"upstreams": [upstream("up", [backend.port], host_header="backend.internal")],
                          "services": [service("svc", "http://up")],
                          "plugins": [_zipkin(collector, sample_ratio=1)]})
    assert (await _get(port)).status == 200
    assert (await _received(collector, 3))["GET (proxy)"]["tags"]["peer.hostname"] == "backend.internal"


def test_zipkin_a_kong_consumer_tag_from_the_tags_header_stays_without_a_consumer():
    """Kong: kong/plugins/zipkin/handler.lua:168-185 sets the Zipkin-Tags header's tags on the request span when the
    trace starts (request_tags.lua takes any name, kong.consumer too), and the log step only sets kong.consumer
    `if ngx_ctx.authenticated_consumer then` (handler.lua:410-411): with no authenticated consumer a
    `Zipkin-Tags: kong.consumer=from-header` tag is exported as it came (it was taken away)."""
    settings = spans.Settings(msgspec.convert({}, ZipkinConfig))
    facts = spans.Facts(method="GET", path="/", host="example.com", status=200, start=1_000, end=2_000,
                        node_id="node", request_tags={"kong.consumer": "from-header", "foo": "bar"})
    request = spans.build(settings, facts, "ab" * 16, 1, None, 2)[-1]
    assert request.kind == "SERVER"
    assert request.tags.get("foo") == "bar"
    assert request.tags.get("kong.consumer") == "from-header", request.tags


# --- the reporter's sender -------------------------------------------------------------------------------------------


def _reporter(url: str, **config: Any) -> Zipkin:
    return Zipkin(msgspec.convert({"http_endpoint": url, **config}, ZipkinConfig), "p", queues=Queues())


async def test_an_https_collector_whose_certificate_is_not_trusted_gets_no_spans(nursery):
    """kong/plugins/zipkin/reporter.lua:34-40 `httpc:request_uri(conf.http_endpoint, { method = "POST", headers = ...,
    body = ... })` passes no ssl_verify, and lua-resty-http 0.17.2 (kong-latest.rockspec) verifies by default
    (lib/resty/http_connect.lua `ssl_verify = true -- default`): a collector whose certificate no trusted CA signed
    fails the handshake and gets no spans."""
    collector = TlsCollector()
    await nursery.start(collector.serve)
    with trio.fail_after(5), pytest.raises(SendError, match=r"^zipkin request failed: \d+: "):
        await _reporter(f"https://localhost:{collector.port}/api/v2/spans").send([b"{}"])
    assert collector.requests == []


async def test_zero_timeouts_are_the_cosockets_default_not_an_instant_failure(nursery):
    """Kong's schema takes 0 (typedefs.timeout, kong/db/schema/typedefs.lua:352-354) and reporter.lua:33 hands the
    three to `httpc:set_timeouts`, the cosocket's settimeouts, where 0 is ngx_lua's 60 s default
    (lua-nginx-module ngx_http_lua_socket_tcp.c: `if (connect_timeout > 0) ... else u->connect_timeout =
    u->conf->connect_timeout`): a collector that answers at once gets the batch."""
    collector = _Collector(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")
    await nursery.start(collector.serve)
    reporter = _reporter(f"http://127.0.0.1:{collector.port}/api/v2/spans", connect_timeout=0, send_timeout=0,
                         read_timeout=0)
    with trio.fail_after(5):
        await reporter.send([b"{}"])
    assert len(collector.requests) == 1
