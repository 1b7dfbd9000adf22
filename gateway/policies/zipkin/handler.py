"""Kong's zipkin plugin (priority 100000: its access step runs before every other plugin's).

access: read the caller's context with Kong's propagation rules (gateway.telemetry.propagation), decide
sampling (the caller's decision, else a random draw against sample_ratio, as Kong's math.random), start the trace
(the caller's id, else one of traceid_byte_count bytes), then clear the configured headers and inject the context
upstream in the configured formats: the proxy span's id, with the request span as its parent.

header_filter (only with http_response_header_for_traceid): the trace id on every response the request gets.

log: for a sampled request, when there is an http_endpoint, one queue entry per span (a span per balancer try, the
proxy span, the request span: Kong's batch sizes count spans); the queue's task reads the finished request, builds
and encodes the spans (gateway.policies.zipkin.spans) and POSTs them as JSON arrays. An unsampled request costs its
ids and headers only. A request answered before the access step ran (no route matched) gets its trace where Kong's
header_filter or log step would start it: from the request's headers.
"""

from __future__ import annotations

import ipaddress
import logging
import random
from functools import lru_cache
from typing import Any

import msgspec

from gateway.http.codec import NGINX_HOSTS, Headers
from gateway.http.realip import ClientAddress
from gateway.http.server import Exchange
from gateway.memo import Derived
from gateway.metrics import wall_offset
from gateway.policies.zipkin import spans
from gateway.policies.zipkin.schema import ZipkinConfig
from gateway.routing.normalize import normalize_path
from gateway.telemetry import propagation
from gateway.telemetry.batch import QUEUES, BatchQueue, Queues, public_url
from gateway.telemetry.entities import RouteFacts
from gateway.telemetry.propagation import (
    TRACE_HEADERS,
    Context,
    extract,
    formats_for,
    formatted_trace_id,
    inject,
    scan,
)
from gateway.telemetry.sender import HttpSender, Wording, request_uri_endpoint
from gateway.telemetry.tracing import SpanReport, balancer_hostname, new_span_id, new_trace_id, text_of

log = logging.getLogger("gateway.telemetry")

STATE_KEY = "zipkin"
CONTENT_TYPE = b"application/json"
SERVER_NAME = "kong"  # Kong's nginx server_name: the host of a request that names none
_TIMEOUT = -2  # a try's code when it timed out (gateway.pipeline.forward)


class ZipkinWording(Wording):
    """Kong's zipkin reporter's messages of a failed send (reporter.lua:42, 44); the queue's name says where."""

    def failed(self, err: str) -> str:
        return f"zipkin request failed: {err}"

    def answered(self, status: int, reason: str, body: str) -> str:
        return f"zipkin server responded unexpectedly: {status} {reason}"


class _Named(msgspec.Struct):
    name: str | None = None
    port: int | None = None


_NAMED = msgspec.json.Decoder(_Named)


class Trace:
    """One request's trace: the trace id (`size` bytes: Kong's own are traceid_byte_count, a caller's 16), the
    request span and its parent, the proxy span, the sampling decision, and what Kong reads of the request when the
    trace starts (the method, the tags header's values). `accessed`: started by the access step."""

    __slots__ = ("trace_id", "size", "span_id", "parent_id", "proxy_id", "sampled", "accessed", "method",
                 "tag_values", "formats", "inject_size")

    def __init__(self, trace_id: int, size: int, span_id: int, parent_id: int | None, sampled: bool, method: bytes,
                 tag_values: list[bytes] | None) -> None:
        self.trace_id = trace_id
        self.size = size
        self.span_id = span_id
        self.parent_id = parent_id
        self.proxy_id = new_span_id()
        self.sampled = sampled
        self.accessed = False
        self.method = method
        self.tag_values = tag_values
        self.formats: tuple[str, ...] = ()  # the formats the access step injected, and the incoming id's size
        self.inject_size = 0

    def hex_id(self) -> str:
        return f"{self.trace_id:0{self.size * 2}x}"

    def serialized(self) -> dict[str, str] | None:
        """Kong's serialized trace_id (propagation.propagate): the trace id as each injected format carried it."""
        return dict(formatted_trace_id(fmt, self.trace_id, self.inject_size) for fmt in self.formats) or None


class Zipkin:
    name = "zipkin"
    priority = 100000  # Kong's: first, so its timestamps are taken at the start of each phase
    entries = False  # its log step takes the raw facts (gateway.telemetry.phase)

    def __init__(self, config: ZipkinConfig, plugin_id: str, node_id: str = "", queues: Queues = QUEUES,
                 client: ClientAddress | None = None) -> None:
        self.client = client  # gateway.trusted_ips' realip, for the client's forwarded port
        self.params = propagation.plugin_params(config.propagation, config.header_type, config.default_header_type)
        self.new_formats = formats_for(self.params, None)  # what a request without a context gets: decided once
        self.ratio = config.sample_ratio
        self.trace_bytes = config.traceid_byte_count
        # Kong reads `req_headers[conf.tags_header]` (get_headers()' table, whose keys are the lower-case names as
        # sent): lua-resty-core's metatable looks the name up lower-cased, then (a miss) with "_" as "-"
        self.tags_header = config.tags_header.lower().encode()
        self.tags_dashed = self.tags_header.replace(b"_", b"-")  # (the same name when it has no "_")
        self.tag_names = frozenset((self.tags_header, self.tags_dashed))
        self.scanned = TRACE_HEADERS | self.tag_names
        self.settings = spans.Settings(config)
        self.node_id = node_id
        header = config.http_response_header_for_traceid
        # kong.response.add_header: lua-nginx-module writes a "_" of a response header name as "-"
        self.response_header = header.lower().replace("_", "-").encode() if header else b""
        self.sender: HttpSender | None = None
        self.queue: BatchQueue | None = None
        if config.http_endpoint is not None:  # null: Kong's reporter sends nothing, so nothing is built
            # Kong's reporter.lua: lua-resty-http's request_uri without ssl_verify, so an https collector is verified
            self.sender = HttpSender(request_uri_endpoint(config.http_endpoint),
                                     connect_timeout=config.connect_timeout / 1000,
                                     send_timeout=config.send_timeout / 1000, read_timeout=config.read_timeout / 1000,
                                     verify=True, wording=ZipkinWording())
            # Kong names the queue after the plugin instance; ours also after where it sends (its label without the
            # endpoint's credentials and query)
            self.queue = queues.queue_for(f"zipkin:{plugin_id}:{config.http_endpoint}", config.queue, self.send,
                                          self.format, settings=config, sized=False,  # Kong queues tables
                                          label=f"zipkin:{plugin_id}:{public_url(config.http_endpoint)}")

    # ---- access: propagation ------------------------------------------------------------------------------------

    async def access(self, ex: Exchange) -> bool:
        req = ex.request
        headers = req.headers
        values = scan(headers, self.scanned)
        found = None
        present = False  # a trace header is there: what injection writes may have to replace it
        if values is not None:
            present = not self.tag_names.issuperset(values)
            if present and self.params.extract:
                found = extract(values, headers, self.params.extract)
        trace = self._start(req.method, found, values)
        trace.accessed = True
        formats = self.new_formats if found is None else formats_for(self.params, found)
        clear = self.params.clear
        if formats:
            sampled = True if trace.sampled else None  # Kong: the proxy span's decision, or the caller's if truthy
            size, flags, baggage = 0, None, None
            if found is not None:  # what Kong's inject context keeps of the extracted one
                size, flags, baggage = found.trace_size, found.flags, found.baggage
            out: Headers = []
            for fmt in formats:
                out += inject(fmt, trace.trace_id, size, trace.proxy_id, trace.span_id, sampled, flags, baggage)
            trace.formats, trace.inject_size = formats, size
            if present or clear:  # Kong clears, then sets (replaces) each header it writes
                drop = clear.union(name for name, _ in out)
                headers = req.headers = [hv for hv in headers if hv[0] not in drop]
            headers += out
        elif clear:
            req.headers = [hv for hv in headers if hv[0] not in clear]
        _keep(ex, trace)
        return False

    def _start(self, method: bytes, found: Context | None, values: propagation.Values | None) -> Trace:
        """Kong's initialize_request: the caller's ids and decision where it gave them, new ones otherwise."""
        trace_id = parent_id = span_id = sampled = None
        if found is not None:
            trace_id, sampled = found.trace_id, found.sampled
            if found.reuse:  # b3, jaeger: the caller's span is the request's own
                span_id, parent_id = found.span_id, found.parent_id
            else:
                parent_id = found.span_id
        if sampled is None:
            sampled = random.random() < self.ratio
        size = 16
        if trace_id is None:
            size = self.trace_bytes
            trace_id = new_trace_id() if size == 16 else new_span_id()
        return Trace(trace_id, size, span_id if span_id is not None else new_span_id(), parent_id, sampled, method,
                     self._tag_values(values) if values is not None else None)

    def _tag_values(self, values: propagation.Values) -> list[bytes] | None:
        """The tags header's lines as Kong's `req_headers[conf.tags_header]` finds them: the lower-cased name's, else
        those of the name with "_" as "-"."""
        found = values.get(self.tags_header)
        return found if found is not None else values.get(self.tags_dashed)

    def current(self, ex: Exchange) -> Trace:
        """The request's trace; started from its headers when the access step did not run."""
        state = ex.state
        trace = state.get(STATE_KEY) if state is not None else None
        if trace is None:
            req = ex.request
            values = scan(req.headers, self.scanned)
            extractors = self.params.extract
            found = extract(values, req.headers, extractors) if values is not None and extractors else None
            trace = self._start(req.method, found, values)
            _keep(ex, trace)
        return trace

    # ---- log: spans ---------------------------------------------------------------------------------------------

    def log(self, ex: Exchange, started: float, ended: float, status: int) -> None:
        queue = self.queue
        if queue is None:
            return
        trace = self.current(ex)
        if not trace.sampled:
            return
        report = _Report(self, trace, ex, started, ended, status)
        for i in range(report.count):
            queue.put((report, i))

    def format(self, item: tuple[_Report, int]) -> bytes:
        """One span as JSON (the queue's formatter: runs in the queue's task, off the request path)."""
        report, i = item
        return report.span(i)

    def facts(self, trace: Trace, ex: Exchange, started: float, ended: float, status: int) -> spans.Facts:
        """What Kong's log step reads of the finished request, its times as µs since the epoch."""
        wall = wall_offset()

        def us(t: float) -> int:
            return int((t + wall) * 1e6)

        req = ex.request
        path = _PATHS[ex.request_uri().partition(b"?")[0]]
        tries = ex.tries or []
        end = us(ended)
        header_start = None
        if ex.response_started:  # right after the upstream's head came, or when the gateway answered
            last_head = tries[-1].head_at if tries else 0.0
            header_start = us(last_head) if last_head else end
        facts = spans.Facts(method=_METHODS[trace.method], path=path, host=_HOSTS[req.host], status=status,
                            start=us(started), end=end, protocol=_PROTOCOLS[req.http_version],
                            client_ip=ex.client_ip or None, client_port=self._client_port(ex),
                            node_id=self.node_id, header_start=header_start)
        if trace.accessed:  # Kong's access phase starts before routing, as the gateway's pipeline does
            facts.access_start = us(started)
            facts.access_end = us(tries[0].started) if tries else header_start if header_start is not None else end
        if trace.tag_values:
            tags, errors = spans.parse_tags([v.decode("utf-8", "replace") for v in trace.tag_values])
            if errors:
                log.warning("Could not parse the following Zipkin tags: %s", ", ".join(errors))
            facts.request_tags = tags
        consumer = ex.consumer
        if consumer is not None:
            facts.consumer_id, facts.credential_id = consumer.id, consumer.credential_id
        route = ex.route
        if route is not None:
            facts.routed = route.service is not None  # Kong's balancer_data: the count of spans (_Report)
            rf = route.facts
            if rf is not None:
                route_name, service = _NAMES[rf]
                facts.route_id, facts.route_name = rf.route_id, route_name
                if service is not None:
                    facts.service_id, facts.service_name, facts.peer_port = rf.service_id, service.name, service.port
        for i, attempt in enumerate(tries):
            # the address the try connected to (Kong's try.ip): a named target's, the one its look-up gave
            # (pipeline.forward.Attempt.peer); else the target's own
            peer = getattr(attempt, "peer", None) or attempt.target.key
            host, port = peer[0], peer[1]
            failed = i < len(tries) - 1
            code = attempt.code
            facts.tries.append(spans.Try(_ip(host), port, us(attempt.started), "failed" if failed else None,
                                         (504 if code == _TIMEOUT else code if code > 0 else 502) if failed else None))
            facts.peer_hostname, facts.peer_ip, facts.peer_port = balancer_hostname(attempt), _ip(host), port
        return facts

    async def send(self, batch: list[bytes]) -> None:
        """One batch of encoded spans as Zipkin's JSON array (POST, Content-Type application/json)."""
        assert self.sender is not None
        log.debug("zipkin batch size: %d", len(batch))
        await self.sender.send(spans.batch(batch), CONTENT_TYPE)

    def _client_port(self, ex: Exchange) -> int | None:
        """kong.client.get_forwarded_port(): the socket's, or the port a trusted peer's real_ip_header (or PROXY
        protocol header) gave."""
        port = ex.conn.peer[1] if ex.conn.peer else None
        if ex.peer_trusted and self.client is not None:
            return self.client.forwarded_port(ex.peer_ip, port, ex.request.headers, ex.conn.proxied)
        return port


class ZipkinWithHeader(Zipkin):
    """The plugin with http_response_header_for_traceid: a response phase only then (a route's plugins without one
    pay nothing per response)."""

    def header_filter(self, ex: Exchange, status: int, headers: Headers) -> Headers:
        trace = self.current(ex)
        headers.append((self.response_header, trace.hex_id().encode()))  # Kong's kong.response.add_header
        return headers


class _Report(SpanReport):
    """The spans of a sampled request: the request span, the proxy span, a span per balancer try."""

    __slots__ = ("plugin",)

    def __init__(self, plugin: Zipkin, trace: Trace, ex: Exchange, started: float, ended: float, status: int) -> None:
        super().__init__(trace, ex, started, ended, status)
        self.plugin = plugin
        route = ex.route
        self.count = 2 + (len(ex.tries or ()) if route is not None and route.service is not None else 0)

    def encode(self, ex: Exchange) -> list[Any]:
        plugin, trace = self.plugin, self.trace
        facts = plugin.facts(trace, ex, self.started, self.ended, self.status)
        settings = plugin.settings
        built = spans.build(settings, facts, trace.hex_id(), trace.span_id, trace.parent_id, trace.proxy_id)
        return [spans.encode(span, settings) for span in built]


def _keep(ex: Exchange, trace: Trace) -> None:
    state = ex.state
    if state is None:
        ex.state = {STATE_KEY: trace}
    else:
        state[STATE_KEY] = trace


def _names(rf: RouteFacts) -> tuple[str | None, _Named | None]:
    """A route's name and its service's name and port, as its entity JSON has them."""
    return _NAMED.decode(rf.route_json).name, None if rf.service_json is None else _NAMED.decode(rf.service_json)


def _host(host: bytes | None) -> str:
    """nginx's $host: the request's host without its port, in lower case; the server name when it has none."""
    return text_of(NGINX_HOSTS[host]) if host else SERVER_NAME


def _protocol(version: bytes) -> str | None:
    """Kong's "HTTP/" .. kong.request.get_http_version(), a Lua number: HTTP/1.1, HTTP/1 (for 1.0), HTTP/2."""
    try:
        return f"HTTP/{float(version):.14g}"
    except ValueError:
        return None


# What the same few values of every request give, made once each (bounded: the keys come from clients)
_NAMES: Derived[RouteFacts, tuple[str | None, _Named | None]] = Derived(_names, 1024)
_HOSTS: Derived[bytes | None, str] = Derived(_host, 1024)
_PROTOCOLS: Derived[bytes, str | None] = Derived(_protocol, 64)
_METHODS: Derived[bytes, str] = Derived(lambda method: method.decode("latin-1"), 64)
_PATHS: Derived[bytes, str] = Derived(lambda raw: normalize_path(raw).decode("utf-8", "replace"), 1024)


@lru_cache(maxsize=1024)
def _ip(host: str) -> str | None:
    """A try's address for the span's remote end; None for a host name (a try whose name was never resolved)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None
