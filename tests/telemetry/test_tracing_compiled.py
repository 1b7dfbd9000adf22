"""The tracing plugins' encoders made cheaper against the encoders as they were: gateway/telemetry/otlp.py now writes
the protobuf wire format itself (no message objects), gateway/policies/zipkin/spans.py builds tags as strings and
encodes a msgspec Struct per span, and the opentelemetry plugin encodes a request's spans straight from the finished
request (what repeats from request to request encoded once) instead of making a SpanRecord per span. The references
below are frozen copies of the code before those changes (protobuf messages; dicts for Zipkin's JSON; SpanRecords
encoded by otlp.span_message), and both must give the same bytes for every span record, resource and batch, and for
every request's facts and settings, that the strategies make."""

from __future__ import annotations

import ipaddress
from types import SimpleNamespace
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from gateway.http.codec import nginx_host
from gateway.policies.opentelemetry import handler
from gateway.policies.opentelemetry.schema import OpenTelemetryConfig
from gateway.policies.zipkin import spans
from gateway.policies.zipkin.schema import ZipkinConfig
from gateway.telemetry import otlp, tracing
from gateway.telemetry.batch import Queues, _is_text, _size
from gateway.telemetry.tracing import CLIENT, ERROR, INTERNAL, SERVER, SpanRecord, TracingSettings, new_span_id

FUZZ = settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
_encode = msgspec.json.Encoder().encode


# --- the reference: OTLP with protobuf messages ----------------------------------------------------------------------


def ref_any_value(key: str, value: Any) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, (int, float)):
        return AnyValue(int_value=int(value)) if key == "http.status_code" else AnyValue(double_value=value)
    return AnyValue(string_value=str(value))


def ref_span_message(record: SpanRecord) -> Span:
    span = Span(trace_id=record.trace_id.to_bytes(16, "big"), span_id=record.span_id.to_bytes(8, "big"),
                parent_span_id=record.parent_id.to_bytes(8, "big") if record.parent_id else b"", name=record.name,
                kind=record.kind,  # type: ignore[arg-type]
                start_time_unix_nano=record.start_ns, end_time_unix_nano=record.end_ns,
                attributes=[KeyValue(key=k, value=ref_any_value(k, v)) for k, v in record.attributes if v is not None])
    if record.status:
        span.status.CopyFrom(Status(code=record.status))  # type: ignore[arg-type]
    return span


def ref_resource(attributes: dict[str, Any]) -> Resource:
    return Resource(attributes=[KeyValue(key=k, value=ref_any_value(k, v)) for k, v in attributes.items()])


def ref_export_request(batch: list[Span], res: Resource) -> bytes:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.CopyFrom(res)
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = otlp.SCOPE
    scope_spans.scope.version = otlp.SCOPE_VERSION
    scope_spans.spans.extend(batch)
    return request.SerializeToString()


# --- the reference: the opentelemetry plugin's spans as SpanRecords ------------------------------------------------


def ref_records(report: Any, ex: Any, wall: float) -> list[SpanRecord]:
    trace, status = report.trace, report.status
    start = round((report.started + wall) * 1e9)
    end = round((report.ended + wall) * 1e9)
    out = [ref_request_span(ex, trace, start, end, status)]
    if report.plugin.router:
        out.append(SpanRecord(trace.trace_id, new_span_id(), trace.root(), "kong.router", INTERNAL, start, start,
                              [], ERROR if ex.route is None and status == 404 else 0))
    if report.tries:
        out += ref_balancer_spans(ex, trace, end, status, wall)
    return out


def client_text(raw: bytes) -> str:
    """A client's Host or target in a span: its UTF-8 text as Kong's spans carry the bytes; bytes that are no UTF-8
    one character each."""
    return raw.decode("utf-8") if _is_utf8(raw) else raw.decode("latin-1")


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def ref_request_span(ex: Any, trace: Any, start: int, end: int, status: int) -> SpanRecord:
    req = ex.request
    scheme = ex.conn.scheme.decode()
    host = client_text(nginx_host(req.host)) if req.host else "kong"
    version = req.http_version.decode()
    attributes: list[tuple[str, Any]] = [
        ("http.method", ex.request_line_method().decode("latin-1")),
        ("http.url", f"{scheme}://{host}{client_text(ex.request_uri())}"),
        ("http.host", host), ("http.scheme", scheme),
        ("http.flavor", version if "." in version else f"{version}.0"),
        ("http.client_ip", ex.client_ip), ("net.peer.ip", ex.peer_ip),
        ("kong.request.id", ex.request_id.decode("latin-1")),
    ]
    if ex.response_started or status != 499:  # the client left before the head: no header_filter ran
        route = ex.route
        attributes += [("http.status_code", status),
                       ("http.route", route.facts.http_route if route is not None else "")]
    return SpanRecord(trace.trace_id, trace.root(), trace.parent_id, "kong", SERVER, start, end, attributes)


def ref_balancer_spans(ex: Any, trace: Any, end: int, status: int, wall: float) -> list[SpanRecord]:
    tries = ex.tries or []
    route = ex.route
    retries = route.service.retries if route is not None and route.service is not None else 0
    last = len(tries)
    final = tries[-1]
    hostname = final.group.host_header or final.target.target
    out = []
    for i, attempt in enumerate(tries, 1):
        host, port = (attempt.peer or attempt.target.key)[:2]  # the address the try connected to, Kong's try.ip
        attributes: list[tuple[str, Any]] = [("try_count", i), ("net.peer.ip", ref_ip(host)), ("net.peer.port", port)]
        failed = i < last or (status > 499 and last > retries)
        if failed:
            code = attempt.code
            attributes.append(("http.status_code", status if i == last else 504 if code == -2
                               else code if code > 0 else 502))
        attributes.append(("net.peer.name", hostname))
        started = round((attempt.started + wall) * 1e9)
        if i == last and not failed:
            span_id, finished = trace.balancer_id or new_span_id(), end
        else:
            span_id, finished = new_span_id(), round((attempt.ended + wall) * 1e9) if attempt.ended else end
        out.append(SpanRecord(trace.trace_id, span_id, trace.root(), "kong.balancer", CLIENT, started,
                              max(finished, started), attributes, ERROR if failed else 0))
    return out


def ref_ip(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


# --- the reference: Zipkin's spans as dicts --------------------------------------------------------------------------


class RefSpan:
    def __init__(self, kind: str, name: str, trace_id: str, span_id: int, parent_id: int | None,
                 timestamp: int) -> None:
        self.kind, self.name, self.trace_id, self.span_id, self.parent_id = kind, name, trace_id, span_id, parent_id
        self.timestamp = timestamp
        self.duration = 0
        self.tags: dict[str, Any] = {}
        self.annotations: list[dict[str, Any]] = []
        self.ip: str | None = None
        self.port: int | None = None
        self.service_name: str | None = None

    def child(self, kind: str, name: str, timestamp: int, span_id: int) -> RefSpan:
        return RefSpan(kind, name, self.trace_id, span_id, self.span_id, timestamp)

    def set_tag(self, key: str, value: Any) -> None:
        if value is None:
            self.tags.pop(key, None)
        else:
            self.tags[key] = value

    def annotate(self, value: str, timestamp: int) -> None:
        self.annotations.append({"value": value, "timestamp": timestamp})

    def finish(self, end: int) -> None:
        self.duration = max(end - self.timestamp, 0)


def ref_build(s: spans.Settings, f: spans.Facts, trace_id: str, span_id: int, parent_id: int | None,
              proxy_id: int, new_id: Any) -> list[RefSpan]:
    name = f"{f.method} {f.path}" if s.method_path else f.method
    request = RefSpan("SERVER", name, trace_id, span_id, parent_id, f.start)
    request.ip, request.port = f.client_ip, f.client_port
    for key, value in (("lc", "kong"), ("http.method", f.method), ("http.host", f.host), ("http.path", f.path),
                       ("http.protocol", f.protocol), *s.static_tags, *f.request_tags.items()):
        request.set_tag(key, value)
    started = f.access_start if f.access_start is not None else f.header_start if f.header_start is not None \
        else f.end
    proxy = request.child("CLIENT", f"{name} (proxy)", started, proxy_id)
    head = f.header_start
    responded = head is not None
    if s.annotations:
        if head is not None:
            for value in ("khs", "khf", "kbs"):
                proxy.annotate(value, head)
        request.annotate("krf", f.start)
        request.annotate("krs", f.start)
        proxy.annotate("kas", f.access_start if f.access_start is not None else proxy.timestamp)
        proxy.annotate("kaf", f.access_end if f.access_end is not None else f.end)
        if not responded:
            proxy.annotate("khf", f.end)
        proxy.annotate("kbf", f.end)
    elif s.tags_flavor:
        request.set_tag("kong.rewrite.duration_ms", 0)
        proxy.set_tag("kong.access.duration_ms", ref_ms(f.access_end, f.access_start))
        proxy.set_tag("kong.header_filter.duration_ms", 0 if responded else None)
        proxy.set_tag("kong.body_filter.duration_ms", ref_ms(f.end, f.header_start))
    out = []
    if f.routed:
        last = len(f.tries)
        for i, attempt in enumerate(f.tries, 1):
            span = request.child("CLIENT", f"{name} (balancer try {i})", attempt.start, new_id())
            span.ip, span.port = attempt.ip, attempt.port
            span.set_tag("kong.balancer.try", i)
            if i < last:
                span.set_tag("error", True)
                span.set_tag("kong.balancer.state", attempt.state)
                span.set_tag("http.status_code", attempt.code)
            ref_service_and_route(span, f)
            span.finish(attempt.start)
            out.append(span)
        proxy.set_tag("peer.hostname", f.peer_hostname)
        proxy.ip, proxy.port = f.peer_ip, f.peer_port
    request.set_tag("http.status_code", f.status)
    if f.consumer_id is not None:  # handler.lua: `if ngx_ctx.authenticated_consumer then`
        request.set_tag("kong.consumer", f.consumer_id)
    if s.include_credential and f.credential_id is not None:
        request.set_tag("kong.credential", f.credential_id)
    request.set_tag("kong.node.id", f.node_id)
    ref_service_and_route(proxy, f)
    proxy.finish(f.end)
    request.finish(f.end)
    out += (proxy, request)
    return out


def ref_ms(end: int | None, start: int | None) -> int | None:
    return None if end is None or start is None else round((end - start) / 1000)


def ref_service_and_route(span: RefSpan, f: spans.Facts) -> None:
    if f.service_id is not None:
        span.set_tag("kong.service", f.service_id)
        if f.service_name is not None:
            span.service_name = f.service_name
            span.set_tag("kong.service_name", f.service_name)
    if f.route_id is not None:
        span.set_tag("kong.route", f.route_id)
        if f.route_name is not None:
            span.set_tag("kong.route_name", f.route_name)


def ref_encode(span: RefSpan, s: spans.Settings) -> bytes:
    service = span.service_name if span.service_name is not None else s.default_service_name
    remote: dict[str, Any] | None = None
    if span.port is not None or service is not None:
        remote = {}
        if service is not None:
            remote["serviceName"] = service
        if span.port is not None:
            remote["port"] = span.port
        if span.ip is not None:
            remote["ipv6" if ":" in span.ip else "ipv4"] = span.ip
    out: dict[str, Any] = {"traceId": span.trace_id, "name": span.name}
    if span.parent_id is not None:
        out["parentId"] = f"{span.parent_id:016x}"
    out.update(id=f"{span.span_id:016x}", kind=span.kind, timestamp=span.timestamp, duration=span.duration,
               localEndpoint={"serviceName": s.local_service_name}, remoteEndpoint=remote)
    tags = {key: text for key, value in span.tags.items() if (text := spans.tag_string(value)) != ""}
    if tags:
        out["tags"] = tags
    if span.annotations:
        out["annotations"] = span.annotations
    return _encode(out)


# --- strategies ------------------------------------------------------------------------------------------------------

KEYS = st.sampled_from(["http.status_code", "http.method", "try_count", "net.peer.port", "net.peer.ip", "", "k",
                        "service.name", "é"])
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 63), (1 << 63) - 1),
                   st.floats(-1e15, 1e15), st.text(), st.sampled_from(["", "127.0.0.1", "/"]))
ATTRIBUTES = st.lists(st.tuples(KEYS, VALUES), max_size=12)
RECORDS = st.builds(SpanRecord, st.integers(0, (1 << 128) - 1), st.integers(0, (1 << 64) - 1),
                    st.integers(0, (1 << 64) - 1), st.text(), st.integers(0, 5), st.integers(0, (1 << 64) - 1),
                    st.integers(0, (1 << 64) - 1), ATTRIBUTES, st.sampled_from([0, 1, 2]))
RESOURCES = st.dictionaries(KEYS, st.one_of(VALUES, st.text(min_size=200)), max_size=6)

OPT_TEXT = st.one_of(st.none(), st.text(max_size=8), st.sampled_from(["127.0.0.1", "::1", ""]))
TIMES = st.integers(0, 1 << 52)
TRIES = st.lists(st.builds(spans.Try, OPT_TEXT, st.integers(0, 65535), TIMES,
                           st.one_of(st.none(), st.just("failed")), st.one_of(st.none(), st.integers(0, 599))),
                 max_size=3)
FACTS = st.builds(spans.Facts, method=st.sampled_from(["GET", "POST", "é"]), path=st.text(max_size=6),
                  host=st.text(max_size=6), status=st.integers(0, 599), start=TIMES, end=TIMES, protocol=OPT_TEXT,
                  client_ip=OPT_TEXT, client_port=st.one_of(st.none(), st.integers(0, 65535)),
                  consumer_id=OPT_TEXT, credential_id=OPT_TEXT, node_id=st.text(max_size=4), route_id=OPT_TEXT,
                  route_name=OPT_TEXT, service_id=OPT_TEXT, service_name=OPT_TEXT, routed=st.booleans(),
                  peer_hostname=OPT_TEXT, peer_ip=OPT_TEXT, peer_port=st.one_of(st.none(), st.integers(0, 65535)),
                  request_tags=st.dictionaries(st.sampled_from(["kong.consumer", "http.host", "lc", "x", "error"]),
                                               st.text(max_size=4), max_size=3),
                  access_start=st.one_of(st.none(), TIMES), access_end=st.one_of(st.none(), TIMES),
                  header_start=st.one_of(st.none(), TIMES), tries=TRIES)
STATIC_NAMES = st.sampled_from(["http.host", "http.protocol", "kong.service_name", "static"])
STATIC = st.lists(st.fixed_dictionaries({"name": STATIC_NAMES, "value": st.text(min_size=1, max_size=4)}),
                  max_size=3, unique_by=lambda tag: tag["name"])
CONFIGS = st.fixed_dictionaries({
    "local_service_name": st.text(min_size=1, max_size=6),
    "default_service_name": st.one_of(st.none(), st.text(min_size=1, max_size=8)),
    "include_credential": st.booleans(), "static_tags": st.one_of(st.none(), STATIC),
    "http_span_name": st.sampled_from(["method", "method_path"]),
    "phase_duration_flavor": st.sampled_from(["annotations", "tags"])})


class FakeExchange:
    """What the opentelemetry plugin's log step reads of a finished request."""

    def __init__(self, request: Any, scheme: bytes, client_ip: str, peer_ip: str, request_id: bytes, route: Any,
                 tries: list[Any] | None, response_started: bool) -> None:
        self.request, self.conn = request, SimpleNamespace(scheme=scheme)
        self.client_ip, self.peer_ip, self.request_id = client_ip, peer_ip, request_id
        self.route, self.tries, self.response_started = route, tries, response_started

    def request_line_method(self) -> bytes:
        return self.request.method

    def request_uri(self) -> bytes:
        return self.request.target


def fake_request(method: bytes, target: bytes, host: bytes | None, version: bytes) -> SimpleNamespace:
    return SimpleNamespace(method=method, target=target, host=host, http_version=version)


LATIN1 = st.binary(max_size=12)
CLOCK = st.floats(0, 1e6)
TRY = st.builds(lambda host_header, target, host, port, started, ended, code, peer: SimpleNamespace(
    group=SimpleNamespace(host_header=host_header), target=SimpleNamespace(target=target, key=(host, port)),
    started=started, ended=ended, code=code, peer=peer),
    st.one_of(st.none(), st.sampled_from(["h.test", "é"])), st.sampled_from(["t.test:80", "127.0.0.1:8080"]),
    st.sampled_from(["127.0.0.1", "::1", "0:0::1", "t.test", "é"]), st.integers(0, 65535), CLOCK,
    st.one_of(st.just(0.0), CLOCK), st.sampled_from([-2, -1, 0, 200, 502, 503]),
    st.one_of(st.none(), st.tuples(st.sampled_from(["10.0.0.2", "::2"]), st.integers(1, 65535), st.none())))
ROUTES = st.one_of(st.none(), st.builds(
    lambda path, service: SimpleNamespace(facts=SimpleNamespace(http_route=path), service=service),
    st.one_of(st.text(max_size=6), st.just("/")),
    st.one_of(st.none(), st.builds(lambda n: SimpleNamespace(retries=n), st.integers(0, 3)))))
EXCHANGES = st.builds(
    FakeExchange,
    st.builds(fake_request, st.sampled_from([b"GET", b"POST", b"\xe9T"]), st.one_of(st.just(b"/"), LATIN1),
              st.one_of(st.none(), st.just(b""), st.sampled_from([b"Example.COM:8000", b"h.", b"[::1]:80"]), LATIN1),
              st.sampled_from([b"1.1", b"1.0", b"2", b"0.9"])),
    st.sampled_from([b"http", b"https"]), st.sampled_from(["127.0.0.1", "::1", ""]),
    st.sampled_from(["127.0.0.1", "10.0.0.1"]), st.one_of(st.just(b"0" * 32), LATIN1), ROUTES,
    st.one_of(st.none(), st.lists(TRY, max_size=3)), st.booleans())
STATUSES = st.one_of(st.sampled_from([200, 404, 499, 500, 502, 504]), st.integers(0, 599))
TRACES = st.tuples(st.integers(1, (1 << 128) - 1), st.sampled_from([0, 8, 16]), st.integers(0, (1 << 64) - 1))
_PLUGINS: dict[str, handler.OpenTelemetry] = {}


def otel_plugin(instrumentations: str) -> handler.OpenTelemetry:
    """The plugin with these tracing_instrumentations (made once each)."""
    if instrumentations not in _PLUGINS:
        config = msgspec.convert({"traces_endpoint": "http://127.0.0.1:9/v1/traces"}, OpenTelemetryConfig)
        _PLUGINS[instrumentations] = handler.OpenTelemetry(config, "p", "n", Queues(),
                                                          TracingSettings(instrumentations, 1.0))
    return _PLUGINS[instrumentations]


# --- OTLP ------------------------------------------------------------------------------------------------------------


@FUZZ
@given(RECORDS)
def test_a_span_is_the_protobuf_serializers_bytes(record: SpanRecord) -> None:
    assert otlp.span_message(record) == ref_span_message(record).SerializeToString()


@FUZZ
@given(RESOURCES)
def test_a_resource_is_the_protobuf_serializers_bytes(attributes: dict[str, Any]) -> None:
    assert otlp.resource(attributes) == ref_resource(attributes).SerializeToString()


@FUZZ
@given(st.lists(RECORDS, max_size=5), RESOURCES)
def test_an_export_request_is_the_protobuf_serializers_bytes(records: list[SpanRecord],
                                                             attributes: dict[str, Any]) -> None:
    got = otlp.export_request([otlp.span_message(r) for r in records], otlp.resource(attributes))
    assert got == ref_export_request([ref_span_message(r) for r in records], ref_resource(attributes))


def test_a_long_span_has_a_multi_byte_length() -> None:
    record = SpanRecord(1, 2, 3, "kong", 2, 10, 20, [("http.url", "x" * 20000)])
    got = otlp.export_request([otlp.span_message(record)], otlp.resource({"service.name": "kong"}))
    assert got == ref_export_request([ref_span_message(record)], ref_resource({"service.name": "kong"}))


def test_an_encoded_span_is_not_a_string_to_the_queue() -> None:
    """Kong queues the span as a table: queue.max_bytes neither counts it nor takes it for a string."""
    span = otlp.span_message(SpanRecord(1, 2, 0, "kong", 2, 10, 20, []))
    assert (_size(span), _is_text(span)) == (0, False)


@FUZZ
@given(EXCHANGES, STATUSES, st.sampled_from(["request", "all", "request,router", "request,balancer"]), TRACES,
       CLOCK, CLOCK, st.floats(1.6e9, 1.8e9), st.integers(0, 1 << 32))
def test_a_requests_spans_are_its_span_records_encoded(ex: FakeExchange, status: int, instrumentations: str,
                                                      ids: tuple[int, int, int], started: float, duration: float,
                                                      wall: float, seed: int) -> None:
    """The plugin's spans, encoded from the finished request, are the SpanRecords it made before (span ids drawn in
    the same order) as otlp.span_message encodes them."""
    plugin = otel_plugin(instrumentations)
    trace_id, size, parent = ids

    def report() -> handler._Report:
        tracing._random.seed(seed)
        trace = handler.Trace(trace_id, size, parent, True, plugin.balancer)
        return handler._Report(plugin, trace, ex, started, started + duration, status)  # type: ignore[arg-type]

    got = report().spans(ex, wall)  # type: ignore[arg-type]
    want = [otlp.span_message(record) for record in ref_records(report(), ex, wall)]
    assert got == want


# --- Zipkin ----------------------------------------------------------------------------------------------------------


@FUZZ
@given(CONFIGS, FACTS, st.integers(0, (1 << 64) - 1), st.one_of(st.none(), st.integers(0, (1 << 64) - 1)))
def test_zipkins_spans_are_the_references_json_byte_for_byte(config: dict[str, Any], facts: spans.Facts,
                                                             span_id: int, parent_id: int | None) -> None:
    s = spans.Settings(msgspec.convert(config, ZipkinConfig))
    new_ids, ref_ids = iter(range(100, 200)), iter(range(100, 200))
    got = [spans.encode(span, s) for span in spans.build(s, facts, "ab" * 16, span_id, parent_id, 7,
                                                         lambda: next(new_ids))]
    want = [ref_encode(span, s) for span in ref_build(s, facts, "ab" * 16, span_id, parent_id, 7,
                                                      lambda: next(ref_ids))]
    assert got == want
