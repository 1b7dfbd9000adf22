"""Kong's opentelemetry plugin: trace context propagation in its access step, spans in its log step.

access: extract the caller's context (the configured formats, the first found), decide sampling as Kong does (a
caller that said "not sampled" is not sampled; otherwise the trace id against sampling_rate), and inject the
context upstream with the span id of the client span that will carry the request, so the upstream's spans are its
children. A request answered before this step ran (401, 404 no route, 429) gets a trace in the log step.

log: for a sampled request, one SERVER span for the request and one CLIENT span per upstream try (the last one
is the span that was propagated), with OpenTelemetry's HTTP semantic conventions; the records go to the plugin's
queue, whose task encodes them (opentelemetry-proto) and exports batches over OTLP/HTTP. Nothing is built for an
unsampled request beyond its ids and headers.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from gateway import __version__
from gateway.http.server import Exchange
from gateway.metrics import wall_offset
from gateway.policies.opentelemetry.schema import OpenTelemetryConfig
from gateway.telemetry.batch import QUEUES, BatchQueue, Queues
from gateway.telemetry.sender import Endpoint, HttpSender
from gateway.telemetry.tracing import (
    B3,
    B3_SINGLE,
    CLIENT,
    HEADERS,
    JAEGER,
    SERVER,
    W3C,
    SpanRecord,
    extract,
    formats_out,
    inject,
    new_span_id,
    new_trace_id,
    sample,
)

log = logging.getLogger("gateway.telemetry")

DEFAULT_SAMPLING_RATE = 0.01  # kong.conf's tracing_sampling_rate, which applies when the plugin sets none
STATE_KEY = "opentelemetry"
_ALL = (B3, W3C, JAEGER)  # what header_type's extraction reads here (Kong's list adds ot, datadog, aws, gcp)
_OUTCOMES = {-1: "connect_failure", -2: "timeout", 0: "error"}


class Trace:
    """One request's trace: its ids, whether it is sampled, and the formats its context went upstream in."""

    __slots__ = ("trace_id", "parent_id", "server_id", "client_id", "sampled", "formats")

    def __init__(self, trace_id: int, parent_id: int, sampled: bool, formats: tuple[str, ...]) -> None:
        self.trace_id = trace_id
        self.parent_id = parent_id  # the caller's span (0: this request starts the trace)
        self.server_id = 0  # the request's own span: drawn when something needs it (a sampled trace, b3, jaeger)
        self.client_id = new_span_id()  # the last upstream try's span: the one propagated upstream
        self.sampled = sampled
        self.formats = formats

    def server(self) -> int:
        if not self.server_id:
            self.server_id = new_span_id()
        return self.server_id

    def serialized(self) -> dict[str, str]:
        """Kong's serialized trace_id: the trace id per injected format."""
        value = f"{self.trace_id:032x}"
        return {("b3" if f == B3_SINGLE else f): value for f in self.formats} or {"w3c": value}


def resolve_propagation(config: OpenTelemetryConfig) -> tuple[tuple[str, ...], tuple[str, ...], frozenset[bytes],
                                                               str]:
    """(extract, inject, clear, default_format) as Kong's propagation.get_plugin_params resolves them: an explicit
    propagation block wins; otherwise the deprecated header_type (default preserve) decides."""
    prop = config.propagation
    clear = frozenset(name.lower().encode() for name in prop.clear or ())
    if prop.extract is not None or prop.clear is not None or prop.inject is not None:
        return tuple(prop.extract or ()), tuple(prop.inject or ()), clear, prop.default_format
    header_type = config.header_type
    if header_type == "preserve":
        return _ALL, ("preserve",), clear, prop.default_format
    if header_type == "ignore":
        return (), (prop.default_format,), clear, prop.default_format
    return _ALL, ("preserve", header_type), clear, prop.default_format


class OpenTelemetry:
    name = "opentelemetry"
    priority = 14  # Kong's
    entries = False  # its log step takes the raw facts (gateway.telemetry.phase)

    def __init__(self, config: OpenTelemetryConfig, plugin_id: str, queues: Queues = QUEUES) -> None:
        from gateway.telemetry import otlp  # protobuf: only where the plugin is configured

        self.otlp = otlp
        self.extract, self.inject, self.clear, self.default_format = resolve_propagation(config)
        self.rate = config.sampling_rate if config.sampling_rate is not None else DEFAULT_SAMPLING_RATE
        # What injection may replace: every format it can write (with preserve, any it can read), both b3 forms
        formats = {f for f in self.inject if f != "preserve"}
        if "preserve" in self.inject:
            formats |= set(self.extract) | {self.default_format}
        if formats & {B3, B3_SINGLE}:
            formats |= {B3, B3_SINGLE}
        self.replaced = frozenset(name for f in formats for name in HEADERS[f]) | self.clear
        self.new_formats = self._formats(None)  # what a request without a trace context gets: decided once
        self.w3c_only = self.new_formats == (W3C,)
        header = config.http_response_header_for_traceid
        self.response_header = header.encode() if header else None
        headers = [(k.encode(), v.encode()) for k, v in (config.headers or {}).items()]
        self.sender = HttpSender(Endpoint(config.traces_endpoint or ""), headers,
                                 connect_timeout=config.connect_timeout / 1000,
                                 send_timeout=config.send_timeout / 1000, read_timeout=config.read_timeout / 1000)
        attributes: dict[str, Any] = {"service.name": "kong", "service.version": __version__,
                                      "service.instance.id": f"{socket.gethostname()}:{os.getpid()}"}
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
        found, present = extract(headers, self.extract) if self.extract else (None, True)
        trace = self._trace(found)
        if (present and self.replaced) or self.clear:
            replaced = self.replaced
            headers = req.headers = [hv for hv in headers if hv[0] not in replaced]
        if found is None and self.w3c_only:  # the common case, without a call per header format
            headers.append((b"traceparent", b"00-%032x-%016x-%s" % (trace.trace_id, trace.client_id,
                                                                    b"01" if trace.sampled else b"00")))
        else:
            for fmt in trace.formats:
                headers += inject(fmt, trace.trace_id, trace.client_id, 0 if fmt == W3C else trace.server(),
                                  trace.sampled)
        state = ex.state
        if state is None:
            ex.state = {STATE_KEY: trace}
        else:
            state[STATE_KEY] = trace
        if self.response_header is not None:
            ex.add_response_lines(b"%s: %032x\r\n" % (self.response_header, trace.trace_id))
        return False

    def _trace(self, found: Any) -> Trace:
        if found is None:
            trace_id = new_trace_id()
            return Trace(trace_id, 0, sample(trace_id, self.rate), self.new_formats)
        trace_id = found.trace_id
        sampled = False if found.sampled is False else sample(trace_id, self.rate)
        return Trace(trace_id, found.span_id, sampled, self._formats(found))

    def _formats(self, found: Any) -> tuple[str, ...]:
        """The formats a request's context goes upstream in: "preserve" is the one it came in (or the default)."""
        return formats_out(self.inject, self.default_format, found)

    # ---- log: spans ---------------------------------------------------------------------------------------------

    def log(self, ex: Exchange, started: float, ended: float, status: int) -> None:
        state = ex.state
        trace = state.get(STATE_KEY) if state is not None else None
        if trace is None:  # answered before the access step: the trace starts (and ends) here
            found = extract(ex.request.headers, self.extract)[0] if self.extract else None
            trace = self._trace(found)
            if state is None:
                ex.state = {STATE_KEY: trace}
            else:
                state[STATE_KEY] = trace
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
        await self.sender.send(otlp.export_request(batch, self.resource, __version__), otlp.CONTENT_TYPE)
