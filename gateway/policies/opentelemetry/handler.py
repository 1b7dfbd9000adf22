"""Kong's opentelemetry plugin (kong/plugins/opentelemetry/traces.lua) with Kong's tracing instrumentations
(kong/observability/tracing/instrumentation.lua), as kong.conf's tracing_instrumentations and tracing_sampling_rate
(the gateway's settings of those names) turn them on.

access: Kong's propagation (the zipkin plugin's module, gateway.telemetry.propagation: the same extractors
and injectors): extract the caller's context (the configured formats, the first found), decide sampling as Kong's
get_inject_ctx does, clear the configured headers and set the ones the injectors write. With tracing off (Kong's
default) the plugin only propagates: the context carries a span of its own (Kong's propagation-only root span, never
exported) and is never sampled. Otherwise the request's trace is sampled as Kong's tracer decides (a caller that said
"not sampled" is not; otherwise the trace id against sampling_rate, else tracing_sampling_rate), and the span sent
upstream is the last balancer try's with the balancer instrumentation, else the request span; so the upstream's
spans are its children. The extracted trace id's size (e.g. 64-bit b3), b3's debug flag and jaeger's or ot's baggage go
on as Kong's injectors write them.

A request answered before this step ran (401 from an authentication plugin, 404 no route) has the trace Kong's
request instrumentation started for it (with tracing on): a new trace id, no parent, sampled at
tracing_sampling_rate; with tracing off it has none (no trace id header, no spans).

log: for a sampled request, Kong's spans: "kong" (SERVER, the request), "kong.router" (INTERNAL) and a "kong.balancer"
span (CLIENT) per upstream try, as the instrumentations turned on make them, with Kong's attributes. One queue entry
per span (Kong's batches count spans); the queue's task builds and encodes them (opentelemetry-proto) from the
finished request and exports batches over OTLP/HTTP. Nothing is built for an unsampled request beyond its ids and
headers.
"""

from __future__ import annotations

import ipaddress
import logging
from functools import lru_cache
from typing import Any

from gateway import __version__
from gateway.http.codec import Headers, nginx_host
from gateway.http.server import REFUSED, Exchange
from gateway.memo import Derived
from gateway.metrics import wall_offset
from gateway.policies.opentelemetry.schema import OpenTelemetryConfig
from gateway.telemetry import otlp
from gateway.telemetry.batch import QUEUES, BatchQueue, Queues, public_url
from gateway.telemetry.otlp import SpanBytes
from gateway.telemetry.propagation import (
    TRACE_HEADERS,
    Context,
    Params,
    extract,
    formats_for,
    formatted_trace_id,
    inject,
    plugin_params,
    scan,
)
from gateway.telemetry.sender import HttpSender, SendError, Wording, request_uri_endpoint
from gateway.telemetry.tracing import (
    CLIENT,
    ERROR,
    INTERNAL,
    SERVER,
    W3C,
    SpanReport,
    TracingSettings,
    balancer_hostname,
    new_span_id,
    new_trace_id,
    sample,
    text_of,
)

log = logging.getLogger("gateway.telemetry")

STATE_KEY = "opentelemetry"
SERVER_NAME = "kong"  # Kong's nginx server_name: nginx's $host for a request without a Host
CLIENT_CLOSED = 499  # nginx's: the client left before the response head went (Kong's header_filter never ran)
_TIMEOUT = -2  # a try's code when it timed out (gateway.pipeline.forward)


class OtelWording(Wording):
    """Kong's opentelemetry's messages of a failed export (utils.lua:25-30); the queue's name says where."""

    def failed(self, err: str) -> str:
        return f"failed to send request: {err}"

    def answered(self, status: int, reason: str, body: str) -> str:
        return f"response error: {status}, body: {body}"


class Trace:
    """One request's trace: its ids (the trace id's size as it came: 8 or 16 bytes, 0 when the plugin started it),
    whether it is sampled, and the formats its context went upstream in (none: not propagated). `root_id`: the
    request span's id (with tracing off, Kong's propagation-only root span's; drawn when first needed if the balancer
    span is the one sent upstream); `balancer_id`: the balancer span Kong creates ahead of the proxying (the last
    try's; 0 without the balancer instrumentation)."""

    __slots__ = ("trace_id", "size", "parent_id", "root_id", "balancer_id", "sampled", "formats")

    def __init__(self, trace_id: int, size: int, parent_id: int, sampled: bool, balancer: bool = False) -> None:
        self.trace_id = trace_id
        self.size = size
        self.parent_id = parent_id  # the caller's span (0: this request starts the trace)
        if balancer:  # the span sent upstream is the balancer's: the request span's id is drawn when needed
            self.balancer_id, self.root_id = new_span_id(), 0
        else:
            self.balancer_id, self.root_id = 0, new_span_id()
        self.sampled = sampled
        self.formats: tuple[str, ...] = ()

    def root(self) -> int:
        if not self.root_id:
            self.root_id = new_span_id()
        return self.root_id

    def serialized(self) -> dict[str, str] | None:
        """Kong's serialized trace_id (propagation.propagate): the trace id as each injected format carried it."""
        return dict(formatted_trace_id(fmt, self.trace_id, self.size) for fmt in self.formats) or None


def resolve_propagation(config: OpenTelemetryConfig) -> tuple[tuple[str, ...], tuple[str, ...], frozenset[bytes],
                                                               str]:
    """(extract, inject, clear, default_format) as Kong's propagation.get_plugin_params resolves them: an explicit
    propagation block wins; otherwise the deprecated header_type (default preserve) decides."""
    params = _params(config)
    return params.extract or (), params.inject or (), params.clear, params.default_format


def _params(config: OpenTelemetryConfig) -> Params:
    prop = config.propagation
    return plugin_params(prop, config.header_type, prop.default_format)


class OpenTelemetry:
    name = "opentelemetry"
    priority = 14  # Kong's
    entries = False  # its log step takes the raw facts (gateway.telemetry.phase)

    def __init__(self, config: OpenTelemetryConfig, plugin_id: str, node_id: str = "",
                 queues: Queues = QUEUES, tracing: TracingSettings | None = None) -> None:
        tracing = tracing if tracing is not None else TracingSettings()
        self.enabled = tracing.enabled  # kong.conf's tracing_instrumentations is not off
        self.router = tracing.router
        self.balancer = tracing.balancer
        self.global_rate = tracing.sampling_rate  # Kong's tracer: a request the access step did not see
        self.params = _params(config)
        self.extract = self.params.extract
        self.clear = self.params.clear
        # Kong's get_sampling_decision: the plugin's rate, else tracing_sampling_rate
        self.rate = config.sampling_rate if config.sampling_rate is not None else tracing.sampling_rate
        self.every = self.enabled and self.rate >= 1  # every trace sampled (a caller's "not sampled" aside)
        self.new_formats = formats_for(self.params, None)  # what a request without a trace context gets: decided once
        self.w3c_only = self.new_formats == (W3C,) and not self.clear
        header = config.http_response_header_for_traceid
        # kong.response.add_header: lua-nginx-module writes a "_" of a response header name as "-"
        self.response_header = header.lower().replace("_", "-").encode() if header else b""
        headers = [(k.encode(), v.encode()) for k, v in (config.headers or {}).items()]
        # Kong's get_headers: a "Content-Type" in `headers` is sent as it is, else protobuf's
        content_type = (config.headers or {}).get("Content-Type")
        self.content_type = content_type.encode() if content_type is not None else otlp.CONTENT_TYPE
        # Kong's utils.lua http_export_request: lua-resty-http's request_uri, which verifies an https collector
        self.sender = HttpSender(request_uri_endpoint(config.traces_endpoint or ""), headers,
                                 connect_timeout=config.connect_timeout / 1000,
                                 send_timeout=config.send_timeout / 1000, read_timeout=config.read_timeout / 1000,
                                 verify=True, configured_host=True, only_200=True, wording=OtelWording())
        attributes: dict[str, Any] = {"service.name": "kong", "service.version": __version__,
                                      "service.instance.id": node_id}  # Kong's: kong.node.get_id()
        attributes.update(config.resource_attributes or {})
        self.resource = otlp.resource(attributes)
        # Kong names the queue after the plugin instance; ours also after where it sends (an instance without an
        # id is named after its scope, which two configs may share); its label without the endpoint's credentials
        # and query
        self.queue: BatchQueue = queues.queue_for(
            f"opentelemetry:{plugin_id}:{config.traces_endpoint}:traces", config.queue, self.send, self.format,
            settings=config, label=f"opentelemetry:{plugin_id}:{public_url(config.traces_endpoint or '')}:traces")

    # ---- access: propagation ------------------------------------------------------------------------------------

    async def access(self, ex: Exchange) -> bool:
        req = ex.request
        headers = req.headers
        values = scan(headers, TRACE_HEADERS)
        if values is None and self.w3c_only:  # the common case, without a call per header format
            trace_id = new_trace_id()
            trace = Trace(trace_id, 0, 0, self.every or self.enabled and sample(trace_id, self.rate), self.balancer)
            trace.formats = self.new_formats
            headers.append((b"traceparent", b"00-%032x-%016x-%s" % (trace_id, trace.balancer_id or trace.root_id,
                                                                    b"01" if trace.sampled else b"00")))
        else:
            found = extract(values, headers, self.extract) if values is not None and self.extract else None
            trace = self._trace(found)
            self._propagate(ex, trace, found, values is not None)
        state = ex.state
        if state is None:
            ex.state = {STATE_KEY: trace}
        else:
            state[STATE_KEY] = trace
        return False

    def _trace(self, found: Context | None) -> Trace:
        """Kong's get_inject_ctx: the caller's trace id (else a new one), the caller's span as the request span's
        parent, and the sampling decision: never with tracing off (the propagation-only root span), else the
        tracer's get_sampling_decision with the plugin's rate."""
        if found is None or found.trace_id is None:
            trace_id, size = new_trace_id(), 0
        else:
            trace_id, size = found.trace_id, found.trace_size
        parent = 0
        if found is not None:
            parent = found.span_id if found.span_id is not None else found.parent_id or 0
        sampled = self.enabled and not (found is not None and found.sampled is False) and sample(trace_id, self.rate)
        return Trace(trace_id, size, parent, sampled, self.balancer)

    def _propagate(self, ex: Exchange, trace: Trace, found: Context | None, present: bool) -> None:
        """Kong's propagation.propagate after extraction: clear the configured headers, then set each header the
        injectors write (a tracing header of a format not written is left as it came). The span sent is the
        pre-created balancer span (its parent the request span), else the request (or root) span, whose parent is
        the caller's span."""
        formats = self.new_formats if found is None else formats_for(self.params, found)
        trace.formats = formats
        out: Headers = []
        flags = baggage = None
        if found is not None:  # what Kong's inject context keeps of the extracted one
            flags, baggage = found.flags, found.baggage
        span_id = trace.balancer_id or trace.root_id
        parent_id: int | None = trace.root() if trace.balancer_id else trace.parent_id or None
        for fmt in formats:
            out += inject(fmt, trace.trace_id, trace.size, span_id, None if fmt == W3C else parent_id, trace.sampled,
                          flags, baggage)
        req = ex.request
        if present or self.clear:
            drop = self.clear.union(name for name, _ in out)
            req.headers = [hv for hv in req.headers if hv[0] not in drop]
        req.headers += out

    def current(self, ex: Exchange) -> Trace | None:
        """The request's trace; for a request the access step did not see, with tracing on, the one Kong's request
        instrumentation started for it: a new trace id, no parent (its headers are not read), sampled at
        tracing_sampling_rate. With tracing off such a request has none."""
        state = ex.state
        trace = state.get(STATE_KEY) if state is not None else None
        if trace is None and self.enabled:
            trace = self._started(ex)
        return trace

    def _started(self, ex: Exchange) -> Trace:
        """The trace Kong's request instrumentation starts (tracing on), kept for the request."""
        trace_id = new_trace_id()
        trace = Trace(trace_id, 0, 0, sample(trace_id, self.global_rate))
        state = ex.state
        if state is None:
            ex.state = {STATE_KEY: trace}
        else:
            state[STATE_KEY] = trace
        return trace

    # ---- log: spans ---------------------------------------------------------------------------------------------

    def log(self, ex: Exchange, started: float, ended: float, status: int) -> None:
        state = ex.state
        trace = state.get(STATE_KEY) if state is not None else None
        if trace is None:
            # tracing off: no trace (Kong's plugin only propagates); nginx's own error page: Kong's rewrite phase,
            # where the request span starts, never ran
            if not self.enabled or (state is not None and REFUSED in state):
                return
            trace = self._started(ex)
        if not trace.sampled:  # with tracing off, never
            return
        report = _Report(self, trace, ex, started, ended, status)
        put = self.queue.put
        for i in range(report.count):
            put((report, i))

    def format(self, item: tuple[_Report, int]) -> Any:
        """One span as a protobuf Span (the queue's formatter: runs in the queue's task, off the request path)."""
        report, i = item
        return report.span(i)

    async def send(self, batch: list[Any]) -> None:
        """One batch of encoded spans as an OTLP/HTTP export; a failed one is logged as an error, as Kong's
        http_export_traces does (traces.lua:139), before its queue's warning."""
        try:
            await self.sender.send(otlp.export_request(batch, self.resource), self.content_type)
        except SendError as e:
            log.error("[otel] %s", e)
            raise


class OpenTelemetryWithHeader(OpenTelemetry):
    """The plugin with http_response_header_for_traceid: Kong's header_filter adds the trace id to every response
    the request gets, also one answered before the access step when tracing is on, but not nginx's page for a
    request it refused before Kong's rewrite phase (a route's plugins without it pay nothing)."""

    def header_filter(self, ex: Exchange, status: int, headers: Headers) -> Headers:
        state = ex.state
        if state is not None and REFUSED in state:  # nginx's own error page: no rewrite phase, so no trace id
            return headers
        trace = self.current(ex)
        if trace is not None:
            headers.append((self.response_header, b"%032x" % trace.trace_id))
        return headers


class _Report(SpanReport):
    """The spans of a sampled request, in Kong's order: the request span, the router span, a balancer span per
    try."""

    __slots__ = ("plugin", "tries")

    def __init__(self, plugin: OpenTelemetry, trace: Trace, ex: Exchange, started: float, ended: float,
                 status: int) -> None:
        super().__init__(trace, ex, started, ended, status)
        self.plugin = plugin
        route = ex.route
        # Kong's balancer spans: a try each, for a request that reached the balancer (its balancer_data)
        self.tries = len(ex.tries or ()) if plugin.balancer and route is not None and route.service is not None \
            else 0
        self.count = 1 + plugin.router + self.tries

    def encode(self, ex: Exchange) -> list[Any]:
        return self.spans(ex, wall_offset())

    def spans(self, ex: Exchange, wall: float) -> list[SpanBytes]:
        """The spans, encoded (`wall`: what turns the Trio clock into Unix time)."""
        trace, status = self.trace, self.status
        start = round((self.started + wall) * 1e9)
        end = round((self.ended + wall) * 1e9)
        tid = otlp.trace_field(trace.trace_id)
        root = trace.root()
        out = [request_span(ex, tid, root, trace.parent_id, start, end, status)]
        if self.plugin.router:
            # Kong's kong.router: the router's run, an error when no route matched. The gateway routes first thing
            # and does not time its router apart: the span starts and ends with the request's start.
            out.append(otlp.span(tid, new_span_id(), root, _ROUTER, start, start, b"",
                                 ERROR if ex.route is None and status == 404 else 0))
        if self.tries:
            out += balancer_spans(ex, tid, root, trace.balancer_id, end, status, wall)
        return out


_REQUEST = otlp.named("kong", SERVER)
_ROUTER = otlp.named("kong.router", INTERNAL)
_BALANCER = otlp.named("kong.balancer", CLIENT)


def _connection_attributes(key: tuple[bytes, bytes | None, bytes, bytes, str, str]) -> tuple[bytes, bytes, bytes]:
    """What a request span's attributes take from (method, Host, scheme, HTTP version, client ip, peer ip): the
    http.method field, http.url's start (scheme://host, UTF-8) and the fields from http.host to net.peer.ip."""
    method, host_header, scheme_b, version_b, client_ip, peer_ip = key
    scheme = scheme_b.decode()
    host = text_of(nginx_host(host_header)) if host_header else SERVER_NAME  # nginx's $host
    version = version_b.decode()
    fields = (otlp.key_value("http.host", host) + otlp.key_value("http.scheme", scheme)
              + otlp.key_value("http.flavor", version if "." in version else f"{version}.0")  # Kong's "%.1f"
              + otlp.key_value("http.client_ip", client_ip) + otlp.key_value("net.peer.ip", peer_ip))
    return otlp.key_value("http.method", method.decode("latin-1")), f"{scheme}://{host}".encode(), fields


def _response_attributes(key: tuple[int, str]) -> bytes:
    """A request span's http.status_code and http.route fields (set in Kong's header_filter)."""
    status, route = key
    return otlp.key_value("http.status_code", status) + otlp.key_value("http.route", route)


def _try_attributes(key: tuple[int, str, int, int | None, Any]) -> bytes:
    """A balancer span's fields: try_count, net.peer.ip, net.peer.port, http.status_code (a failed try's) and
    net.peer.name."""
    i, host, port, code, hostname = key
    return (otlp.key_value("try_count", i) + otlp.key_value("net.peer.ip", _ip(host))
            + otlp.key_value("net.peer.port", port) + otlp.key_value("http.status_code", code)
            + otlp.key_value("net.peer.name", hostname))


# What repeats from request to request, encoded once: a client's connection and request line, a route's response
# attributes, a target's try (bounded: distinct Host values or clients cannot grow them)
_CONNECTIONS: Derived[tuple[bytes, bytes | None, bytes, bytes, str, str], tuple[bytes, bytes, bytes]] = \
    Derived(_connection_attributes, 1024)
_RESPONSES: Derived[tuple[int, str], bytes] = Derived(_response_attributes, 1024)
_TRIES: Derived[tuple[int, str, int, int | None, Any], bytes] = Derived(_try_attributes, 1024)


def request_span(ex: Exchange, tid: bytes, span_id: int, parent_id: int, start: int, end: int,
                 status: int) -> SpanBytes:
    """Kong's request span (instrumentation.lua _M.request, and what runloop_before_header_filter adds): http.method,
    http.url, http.host, http.scheme, http.flavor, http.client_ip, net.peer.ip, kong.request.id, then
    http.status_code and http.route. `tid`: the trace's trace_id field; `parent_id`: the caller's span (0: none)."""
    req = ex.request
    method, url, fields = _CONNECTIONS[ex.request_line_method(), req.host, ex.conn.scheme, req.http_version,
                                       ex.client_ip, ex.peer_ip]
    uri = ex.request_uri()
    request_id = ex.request_id
    attributes = (method + otlp.string_key_value("http.url", url + (uri if uri.isascii() else
                                                                    text_of(uri).encode()))
                  + fields + otlp.string_key_value("kong.request.id", request_id if request_id.isascii() else
                                                   request_id.decode("latin-1").encode()))
    if ex.response_started or status != CLIENT_CLOSED:  # set in Kong's header_filter, which a request whose
        # client left before its head went never reaches (an upstream's or a plugin's own 499 does)
        route = ex.route
        attributes += _RESPONSES[status, route.facts.http_route if route is not None else ""]  # paths[1] or ""
    return otlp.span(tid, span_id, parent_id, _REQUEST, start, end, attributes)


def balancer_spans(ex: Exchange, tid: bytes, root: int, balancer_id: int, end: int, status: int,
                   wall: float) -> list[SpanBytes]:
    """Kong's kong.balancer spans (instrumentation.lua _M.balancer), children of the request span: a try that
    failed has its status code and the error status (every try but the last; the last when all the retries were
    used and the response is a 5xx, as Kong's header_filter marks it); the last try's is the span propagated
    upstream, ending with the response (`balancer_id`: its id drawn ahead, 0: none). net.peer.name is Kong's
    balancer_data.hostname (the last try's)."""
    tries = ex.tries or []
    route = ex.route
    retries = route.service.retries if route is not None and route.service is not None else 0
    last = len(tries)
    final = tries[-1]
    hostname = balancer_hostname(final)
    out = []
    for i, attempt in enumerate(tries, 1):
        # the address the try connected to (Kong's try.ip, kong/init.lua:1411): a named target's, the one its
        # look-up gave (pipeline.forward.Attempt.peer); else the target's own
        peer = getattr(attempt, "peer", None) or attempt.target.key
        host, port = peer[0], peer[1]
        failed = i < last or (status > 499 and last > retries)
        code = None
        if failed:
            code = attempt.code
            code = status if i == last else 504 if code == _TIMEOUT else code if code > 0 else 502
        started = round((attempt.started + wall) * 1e9)
        if i == last and not failed:
            span_id, finished = balancer_id or new_span_id(), end
        else:  # Kong's: the balancer's latency and the connect time; the gateway's: until the try ended
            span_id, finished = new_span_id(), round((attempt.ended + wall) * 1e9) if attempt.ended else end
        out.append(otlp.span(tid, span_id, root, _BALANCER, started, max(finished, started),
                             _TRIES[i, host, port, code, hostname], ERROR if failed else 0))
    return out


@lru_cache(maxsize=1024)
def _ip(host: str) -> str | None:
    """A try's address as net.peer.ip; None for a host name (a try whose name was never resolved)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None
