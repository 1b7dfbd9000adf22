"""Kong's opentelemetry plugin: trace context propagation in its access step, spans in its log step.

access: Kong's propagation (the zipkin plugin's module, gateway.telemetry.propagation: the same extractors
and injectors): extract the caller's context (the configured formats, the first found), decide sampling as Kong's
tracer does (a caller that said "not sampled" is not sampled; otherwise the trace id against sampling_rate), clear
the configured headers and set the ones the injectors write, with the span id of the client span that will carry
the request, so the upstream's spans are its children. The extracted trace id's size (64-bit b3 and jaeger), b3's
debug flag and jaeger's baggage go on as Kong's injectors write them.

A request answered before this step ran (401 from an authentication plugin, 404 no route) has the trace Kong's
request instrumentation started for it: a new trace id, no parent.

log: for a sampled request, one SERVER span for the request and one CLIENT span per upstream try (the last one
is the span that was propagated), with OpenTelemetry's HTTP semantic conventions; the records go to the plugin's
queue, whose task encodes them (opentelemetry-proto) and exports batches over OTLP/HTTP. Nothing is built for an
unsampled request beyond its ids and headers.
"""

from __future__ import annotations

import logging
from typing import Any

from gateway import __version__
from gateway.http.codec import Headers
from gateway.http.server import Exchange
from gateway.metrics import wall_offset
from gateway.policies.opentelemetry.schema import OpenTelemetryConfig
from gateway.telemetry.batch import QUEUES, BatchQueue, Queues
from gateway.telemetry.propagation import (
    TRACE_HEADERS,
    Context,
    Params,
    extract,
    formats_for,
    inject,
    injected_size,
    plugin_params,
    scan,
)
from gateway.telemetry.sender import Endpoint, HttpSender
from gateway.telemetry.tracing import (
    B3_SINGLE,
    CLIENT,
    SERVER,
    W3C,
    SpanRecord,
    new_span_id,
    new_trace_id,
    sample,
)

log = logging.getLogger("gateway.telemetry")

DEFAULT_SAMPLING_RATE = 0.01  # kong.conf's tracing_sampling_rate, which applies when the plugin sets none
STATE_KEY = "opentelemetry"
_OUTCOMES = {-1: "connect_failure", -2: "timeout", 0: "error"}


class Trace:
    """One request's trace: its ids (the trace id's size as it came: 8 or 16 bytes, 0 when the plugin started it),
    whether it is sampled, and the formats its context went upstream in (none: not propagated)."""

    __slots__ = ("trace_id", "size", "parent_id", "server_id", "client_id", "sampled", "formats")

    def __init__(self, trace_id: int, size: int, parent_id: int, sampled: bool) -> None:
        self.trace_id = trace_id
        self.size = size
        self.parent_id = parent_id  # the caller's span (0: this request starts the trace)
        self.server_id = 0  # the request's own span: drawn when something needs it (a sampled trace, b3, jaeger)
        self.client_id = new_span_id()  # the last upstream try's span: the one propagated upstream
        self.sampled = sampled
        self.formats: tuple[str, ...] = ()

    def server(self) -> int:
        if not self.server_id:
            self.server_id = new_span_id()
        return self.server_id

    def serialized(self) -> dict[str, str] | None:
        """Kong's serialized trace_id (propagation.propagate): the trace id as each injected format carried it."""
        out = {}
        for fmt in self.formats:
            width = injected_size(fmt, self.size)
            out["b3" if fmt == B3_SINGLE else fmt] = f"{self.trace_id & ((1 << (width * 8)) - 1):0{width * 2}x}"
        return out or None


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
                 queues: Queues = QUEUES) -> None:
        from gateway.telemetry import otlp  # protobuf: only where the plugin is configured

        self.otlp = otlp
        self.params = _params(config)
        self.extract = self.params.extract
        self.clear = self.params.clear
        self.rate = config.sampling_rate if config.sampling_rate is not None else DEFAULT_SAMPLING_RATE
        self.new_formats = formats_for(self.params, None)  # what a request without a trace context gets: decided once
        self.w3c_only = self.new_formats == (W3C,) and not self.clear
        header = config.http_response_header_for_traceid
        self.response_header = header.lower().encode() if header else b""
        headers = [(k.encode(), v.encode()) for k, v in (config.headers or {}).items()]
        # Kong's get_headers: a "Content-Type" in `headers` is sent as it is, else protobuf's
        content_type = (config.headers or {}).get("Content-Type")
        self.content_type = content_type.encode() if content_type is not None else otlp.CONTENT_TYPE
        self.sender = HttpSender(Endpoint(config.traces_endpoint or ""), headers,
                                 connect_timeout=config.connect_timeout / 1000,
                                 send_timeout=config.send_timeout / 1000, read_timeout=config.read_timeout / 1000)
        attributes: dict[str, Any] = {"service.name": "kong", "service.version": __version__,
                                      "service.instance.id": node_id}  # Kong's: kong.node.get_id()
        attributes.update(config.resource_attributes or {})
        self.resource = otlp.resource(attributes)
        # Kong names the queue after the plugin instance; ours also after where it sends (an instance without an
        # id is named after its scope, which two configs may share)
        self.queue: BatchQueue = queues.queue_for(f"opentelemetry:{plugin_id}:{config.traces_endpoint}:traces",
                                                  config.queue, self.send, otlp.span_message, settings=config)

    # ---- access: propagation ------------------------------------------------------------------------------------

    async def access(self, ex: Exchange) -> bool:
        req = ex.request
        headers = req.headers
        values = scan(headers, TRACE_HEADERS)
        if values is None and self.w3c_only:  # the common case, without a call per header format
            trace_id = new_trace_id()
            trace = Trace(trace_id, 0, 0, sample(trace_id, self.rate))
            trace.formats = self.new_formats
            headers.append((b"traceparent", b"00-%032x-%016x-%s" % (trace.trace_id, trace.client_id,
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
        parent, and the tracer's sampling decision (get_sampling_decision) with the plugin's rate."""
        if found is None or found.trace_id is None:
            trace_id, size = new_trace_id(), 0
        else:
            trace_id, size = found.trace_id, found.trace_size
        parent = 0
        if found is not None:
            parent = found.span_id if found.span_id is not None else found.parent_id or 0
        sampled = False if found is not None and found.sampled is False else sample(trace_id, self.rate)
        return Trace(trace_id, size, parent, sampled)

    def _propagate(self, ex: Exchange, trace: Trace, found: Context | None, present: bool) -> None:
        """Kong's propagation.propagate after extraction: clear the configured headers, then set each header the
        injectors write (a tracing header of a format not written is left as it came)."""
        formats = self.new_formats if found is None else formats_for(self.params, found)
        trace.formats = formats
        out: Headers = []
        flags = baggage = None
        if found is not None:  # what Kong's inject context keeps of the extracted one
            flags, baggage = found.flags, found.baggage
        for fmt in formats:
            out += inject(fmt, trace.trace_id, trace.size, trace.client_id, None if fmt == W3C else trace.server(),
                          trace.sampled, flags, baggage)
        req = ex.request
        if present or self.clear:
            drop = self.clear.union(name for name, _ in out)
            req.headers = [hv for hv in req.headers if hv[0] not in drop]
        req.headers += out

    def current(self, ex: Exchange) -> Trace:
        """The request's trace; for a request the access step did not see, the one Kong's request instrumentation
        started for it: a new trace id, no parent (its headers are not read). Kong samples it at kong.conf's
        tracing_sampling_rate, which the gateway does not have: the plugin's rate stands for it."""
        state = ex.state
        trace = state.get(STATE_KEY) if state is not None else None
        if trace is None:
            trace_id = new_trace_id()
            trace = Trace(trace_id, 0, 0, sample(trace_id, self.rate))
            if state is None:
                ex.state = {STATE_KEY: trace}
            else:
                state[STATE_KEY] = trace
        return trace

    # ---- log: spans ---------------------------------------------------------------------------------------------

    def log(self, ex: Exchange, started: float, ended: float, status: int) -> None:
        trace = self.current(ex)
        if not trace.sampled:
            return
        wall = wall_offset()
        put = self.queue.put
        put(self._server_span(ex, started, ended, status, trace, wall))
        tries = ex.tries
        if tries:
            last = len(tries) - 1
            for i, attempt in enumerate(tries):
                put(self._client_span(ex, ended, status, trace, attempt, i,
                                      trace.client_id if i == last else new_span_id(), wall))

    def _server_span(self, ex: Exchange, started: float, ended: float, status: int, trace: Trace,
                     wall: float) -> SpanRecord:
        req = ex.request
        method = req.method.decode("latin-1")
        path, _, query = req.target.decode("latin-1").partition("?")
        host = user_agent = None
        for header, value in req.headers:
            if header == b"host":
                host = value.decode("latin-1")
            elif header == b"user-agent":
                user_agent = value.decode("latin-1")
        address, port = host, None
        if host and not host.endswith("]") and ":" in host:
            address, _, p = host.rpartition(":")
            port = int(p) if p.isdigit() else None
        route = ex.route
        http_route = route.facts.http_route if route is not None else ""
        attributes: list[tuple[str, Any]] = [
            ("http.request.method", method), ("url.scheme", ex.conn.scheme.decode()), ("url.path", path),
            ("url.query", query or None), ("server.address", address), ("server.port", port),
            ("client.address", ex.client_ip), ("network.peer.address", ex.peer_ip),
            ("network.protocol.version", req.http_version.decode()), ("user_agent.original", user_agent),
            ("http.route", http_route or None), ("http.response.status_code", status),
            ("gateway.request.id", ex.request_id.decode("latin-1") or None),
        ]
        error = None
        if status >= 500:
            error = str(status)
            attributes.append(("error.type", error))
        name = f"{method} {http_route}" if http_route else method
        return SpanRecord(trace.trace_id, trace.server(), trace.parent_id, name, SERVER,
                          round((started + wall) * 1e9), round((ended + wall) * 1e9), attributes, error)

    def _client_span(self, ex: Exchange, ended: float, status: int, trace: Trace, attempt: Any, index: int,
                     span_id: int, wall: float) -> SpanRecord:
        method = ex.request.method.decode("latin-1")
        host, port = attempt.target.key
        code = attempt.code or (status if attempt.head_at else 0)
        attributes: list[tuple[str, Any]] = [
            ("http.request.method", method), ("server.address", host), ("server.port", port),
            ("network.peer.address", host), ("url.full", f"http://{attempt.target.name}"
                                                         f"{attempt.uri.decode('latin-1')}"),
            ("http.response.status_code", code if code > 0 else None),
            ("http.request.resend_count", index or None),
        ]
        error = None
        if code <= 0:
            error = _OUTCOMES.get(code, "error")
        elif code >= 400:
            error = str(code)
        if error is not None:
            attributes.append(("error.type", error))
        end = attempt.ended or ended
        return SpanRecord(trace.trace_id, span_id, trace.server(), method, CLIENT,
                          round((attempt.started + wall) * 1e9), round((end + wall) * 1e9), attributes, error)

    async def send(self, batch: list[Any]) -> None:
        """One batch of encoded spans as an OTLP/HTTP export."""
        otlp = self.otlp
        await self.sender.send(otlp.export_request(batch, self.resource, __version__), self.content_type)


class OpenTelemetryWithHeader(OpenTelemetry):
    """The plugin with http_response_header_for_traceid: Kong's header_filter adds the trace id to every response
    the request gets, also one answered before the access step (a route's plugins without it pay nothing)."""

    def header_filter(self, ex: Exchange, status: int, headers: Headers) -> Headers:
        headers.append((self.response_header, b"%032x" % self.current(ex).trace_id))
        return headers
