"""Kong's zipkin spans (kong/plugins/zipkin/span.lua, reporter.lua, request_tags.lua and handler.lua's log step) as
Zipkin v2 JSON, sans-I/O: the facts of a finished request in, the spans Kong's reporter would POST out.

A request gives, in Kong's order: one CLIENT span per balancer try ("GET (balancer try 1)"), the proxy span
("GET (proxy)", CLIENT) and the request span ("GET", SERVER, whose id is the caller's with b3 and jaeger). Tags are
Kong's (lc, http.method, http.host, http.path, http.protocol, http.status_code, kong.node.id, kong.consumer,
kong.credential, kong.route, kong.route_name, kong.service, kong.service_name, peer.hostname, kong.balancer.try,
and error, kong.balancer.state, http.status_code on a try that failed), set in Kong's order so that a static or
Zipkin-Tags tag of the same name wins or loses as in Kong; the phases are annotations (krs/krf on the request span,
kas/kaf/khs/khf/kbs/kbf on the proxy span) or `kong.<phase>.duration_ms` tags. Times are integer microseconds.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import msgspec

from gateway.telemetry.tracing import new_span_id

_encode = msgspec.json.Encoder().encode
# request_tags.lua's pattern `^%s*(%S+)%s*=%s*(.*%S)%s*$` on the item with its white space stripped, where it
# matches and captures as on the item itself: the value is then all after the "=" and its white space, which ends
# with non-space. Linear: the pattern as written backtracks `.*\S` at every position of a run of spaces.
_TAG = re.compile(r"(\S+)\s*=\s*(.+)", re.ASCII | re.DOTALL)
_SPACE = " \t\n\v\f\r"  # Lua's %s (C's isspace) and re.ASCII's \s


class Annotation(msgspec.Struct):
    """A phase's annotation as Zipkin's JSON has it."""

    value: str
    timestamp: int


class Endpoint(msgspec.Struct, omit_defaults=True, rename="camel"):
    """localEndpoint / remoteEndpoint: only what is known (one of ipv4 and ipv6)."""

    service_name: str | None = None
    port: int | None = None
    ipv4: str | None = None
    ipv6: str | None = None


class JsonSpan(msgspec.Struct, kw_only=True, omit_defaults=True, rename="camel"):
    """A span as Kong's reporter sends it, its keys in Kong's order: parentId, tags and annotations only when there
    are some, remoteEndpoint null when nothing is known of it."""

    trace_id: str
    name: str
    parent_id: str | None = None
    id: str
    kind: str
    timestamp: int
    duration: int
    local_endpoint: Endpoint
    remote_endpoint: Endpoint | None
    tags: dict[str, str] = {}
    annotations: list[Annotation] = []


class Span:
    """A span as Kong's span.lua holds it: hex trace id, integer span ids, times in µs, tags in the order set (as
    the strings Zipkin's JSON has: tag_string)."""

    __slots__ = ("kind", "name", "trace_id", "span_id", "parent_id", "timestamp", "duration", "tags", "annotations",
                 "ip", "port", "service_name")

    def __init__(self, kind: str, name: str, trace_id: str, span_id: int, parent_id: int | None,
                 timestamp: int) -> None:
        self.kind = kind
        self.name = name
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id
        self.timestamp = timestamp
        self.duration = 0
        self.tags: dict[str, str] = {}
        self.annotations: list[Annotation] = []
        self.ip: str | None = None  # the remote end: the client's address, or the try's target
        self.port: int | None = None
        self.service_name: str | None = None

    def child(self, kind: str, name: str, timestamp: int, span_id: int) -> Span:
        return Span(kind, name, self.trace_id, span_id, self.span_id, timestamp)

    def set_tag(self, key: str, value: Any) -> None:
        """Kong's set_tag: None takes the tag away."""
        if value is None:
            self.tags.pop(key, None)
        else:
            self.tags[key] = value if type(value) is str else tag_string(value)

    def annotate(self, value: str, timestamp: int) -> None:
        self.annotations.append(Annotation(value, timestamp))

    def finish(self, end: int) -> None:
        self.duration = max(end - self.timestamp, 0)


class Settings:
    """What the spans take from the plugin's config (resolved once)."""

    __slots__ = ("method_path", "annotations", "tags_flavor", "include_credential", "static_tags",
                 "local_service_name", "default_service_name", "local_endpoint")

    def __init__(self, config: Any) -> None:
        self.method_path = config.http_span_name == "method_path"
        self.annotations = config.phase_duration_flavor == "annotations"
        self.tags_flavor = config.phase_duration_flavor == "tags"
        self.include_credential = config.include_credential
        self.static_tags = [(tag.name, tag.value) for tag in config.static_tags or ()]
        self.local_service_name = config.local_service_name
        self.default_service_name = config.default_service_name
        self.local_endpoint = Endpoint(config.local_service_name)  # the same on every span


class Try(msgspec.Struct):
    """A balancer try: the address it went to (`ip` None for a name never resolved), when it started, and for a try
    that failed Kong's balancer state and status."""

    ip: str | None
    port: int
    start: int
    state: str | None = None
    code: int | None = None


class Facts(msgspec.Struct, kw_only=True):
    """A finished request as the zipkin log step reads it. Times in µs since the epoch: `start` (the request),
    `access_start` / `access_end` (None: the plugin's access step did not run), `header_start` (the response head
    went out: Kong's header_filter; None: no response), `end` (the log step). `routed`: a route with a service
    matched (Kong's balancer_data), then `peer_*` is where the last try went (or the service's port)."""

    method: str
    path: str
    host: str
    status: int
    start: int
    end: int
    protocol: str | None = None
    client_ip: str | None = None
    client_port: int | None = None
    consumer_id: str | None = None
    credential_id: str | None = None
    node_id: str = ""
    route_id: str | None = None
    route_name: str | None = None
    service_id: str | None = None
    service_name: str | None = None
    routed: bool = False
    peer_hostname: str | None = None
    peer_ip: str | None = None
    peer_port: int | None = None
    request_tags: dict[str, str] = {}
    access_start: int | None = None
    access_end: int | None = None
    header_start: int | None = None
    tries: list[Try] = []


def build(settings: Settings, facts: Facts, trace_id: str, span_id: int, parent_id: int | None, proxy_id: int,
          new_id: Callable[[], int] = new_span_id) -> list[Span]:
    """The request's spans in the order Kong reports them: balancer tries, proxy, request."""
    f = facts
    name = f"{f.method} {f.path}" if settings.method_path else f.method
    request = Span("SERVER", name, trace_id, span_id, parent_id, f.start)
    request.ip, request.port = f.client_ip, f.client_port
    tags = request.tags = {"lc": "kong", "http.method": f.method, "http.host": f.host, "http.path": f.path}
    if f.protocol is not None:
        tags["http.protocol"] = f.protocol
    for key, value in settings.static_tags:  # strings, as are the request's tags
        tags[key] = value
    if f.request_tags:
        tags.update(f.request_tags)
    # the proxy span starts with Kong's access phase, else with the response (a request no route matched)
    started = f.access_start if f.access_start is not None else f.header_start if f.header_start is not None \
        else f.end
    proxy = Span("CLIENT", f"{name} (proxy)", trace_id, proxy_id, span_id, started)
    head = f.header_start
    responded = head is not None
    if settings.annotations:
        kas = Annotation("kas", f.access_start if f.access_start is not None else started)
        kaf = Annotation("kaf", f.access_end if f.access_end is not None else f.end)
        kbf = Annotation("kbf", f.end)
        if head is not None:  # header_filter, then body_filter's first call (the gateway writes head and body at once)
            proxy.annotations = [Annotation("khs", head), Annotation("khf", head), Annotation("kbs", head), kas, kaf,
                                 kbf]
        else:
            proxy.annotations = [kas, kaf, Annotation("khf", f.end), kbf]
        # Kong's rewrite phase: the gateway has none, it starts and ends at once
        request.annotations = [Annotation("krf", f.start), Annotation("krs", f.start)]
    elif settings.tags_flavor:
        request.set_tag("kong.rewrite.duration_ms", 0)
        proxy.set_tag("kong.access.duration_ms", _ms(f.access_end, f.access_start))
        proxy.set_tag("kong.header_filter.duration_ms", 0 if responded else None)
        proxy.set_tag("kong.body_filter.duration_ms", _ms(f.end, f.header_start))
    route_tags = _service_and_route(f)
    service_name = f.service_name if f.service_id is not None else None
    out = []
    if f.routed:
        last = len(f.tries)
        for i, attempt in enumerate(f.tries, 1):
            # Kong: the balancer's latency and the connect time, so it ends as it starts (see the README)
            span = Span("CLIENT", f"{name} (balancer try {i})", trace_id, new_id(), span_id, attempt.start)
            span.ip, span.port, span.service_name = attempt.ip, attempt.port, service_name
            try_tags = span.tags = {"kong.balancer.try": str(i)}
            if i < last:
                try_tags["error"] = "true"
                if attempt.state is not None:
                    try_tags["kong.balancer.state"] = attempt.state
                if attempt.code is not None:
                    try_tags["http.status_code"] = str(attempt.code)
            try_tags.update(route_tags)
            out.append(span)
        proxy.set_tag("peer.hostname", f.peer_hostname)
        proxy.ip, proxy.port = f.peer_ip, f.peer_port
    request.set_tag("http.status_code", f.status)
    if f.consumer_id is not None:  # (none: a kong.consumer tag from the tags header stays, as in Kong)
        request.set_tag("kong.consumer", f.consumer_id)
    if settings.include_credential and f.credential_id is not None:
        request.set_tag("kong.credential", f.credential_id)
    request.set_tag("kong.node.id", f.node_id)
    proxy.tags.update(route_tags)
    proxy.service_name = service_name
    proxy.finish(f.end)
    request.finish(f.end)
    out += (proxy, request)
    return out


def _ms(end: int | None, start: int | None) -> int | None:
    return None if end is None or start is None else round((end - start) / 1000)


def _service_and_route(f: Facts) -> dict[str, str]:
    """Kong's tag_with_service_and_route: the service's and the route's ids and names."""
    tags = {}
    if f.service_id is not None:
        tags["kong.service"] = f.service_id
        if f.service_name is not None:
            tags["kong.service_name"] = f.service_name
    if f.route_id is not None:
        tags["kong.route"] = f.route_id
        if f.route_name is not None:
            tags["kong.route_name"] = f.route_name
    return tags


def to_json(span: Span, settings: Settings) -> JsonSpan:
    """The span as Kong's reporter hands it to the queue: tags as strings (empty ones left out), remoteEndpoint null
    when neither a port nor a service name is known, parentId, tags and annotations only when there are some."""
    service = span.service_name if span.service_name is not None else settings.default_service_name
    remote = None
    port = span.port
    if port is not None or service is not None:
        ip = span.ip
        if ip is not None and ":" in ip:
            remote = Endpoint(service, port, None, ip)
        else:
            remote = Endpoint(service, port, ip)
    tags = span.tags
    if "" in tags.values():
        tags = {key: text for key, text in tags.items() if text != ""}
    parent_id = span.parent_id
    return JsonSpan(trace_id=span.trace_id, name=span.name,
                    parent_id=None if parent_id is None else f"{parent_id:016x}", id=f"{span.span_id:016x}",
                    kind=span.kind, timestamp=span.timestamp, duration=span.duration,
                    local_endpoint=settings.local_endpoint, remote_endpoint=remote, tags=tags,
                    annotations=span.annotations)


def encode(span: Span, settings: Settings) -> bytes:
    """The span's Zipkin v2 JSON (one msgspec pass over a JsonSpan)."""
    return _encode(to_json(span, settings))


def batch(spans: list[bytes]) -> bytes:
    """The body of one POST to Zipkin: a JSON array of encoded spans."""
    return b"[" + b",".join(spans) + b"]"


def tag_string(value: Any) -> str:
    """Lua's tostring of a tag value (Zipkin's tag values are strings): true, 200, 1.5."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.14g}"
    return str(value)


def parse_tags(values: list[str]) -> tuple[dict[str, str], list[str]]:
    """Kong's request_tags.parse over the values of the tags header: `name=value` items separated by ";" (spaces
    around either side dropped, none inside a name); (the tags, the items that did not parse)."""
    tags: dict[str, str] = {}
    errors: list[str] = []
    for header in values:
        for item in header.split(";"):
            if item:
                m = _TAG.fullmatch(item.strip(_SPACE))
                if m is None:
                    errors.append(item)
                else:
                    tags[m[1]] = m[2]
    return tags, errors
