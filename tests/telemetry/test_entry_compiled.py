"""The log entry made cheaper (gateway/telemetry/entry.py: memoised header names and url starts, the header tables
in one pass, the JSON made once per Entry) against the serializer as it was: `ReferenceEntry` below is a frozen copy of
the code before that change, and both must give the same JSON bytes (key order included) for every exchange the
strategies make: headers (repeated names, odd bytes, credentials, more than 100 lines), query strings (repeated, bare,
percent-encoded, over the argument limit), tries (none, failed, several), consumers and credentials, TLS, MCP,
correlation-id, traces, routes with and without a service. Three behaviours were added to the reference since: the
JSON writes "/" as "\\/" and DEL as "\\u007f", as lua-cjson does (`_cjson`), the consumer has its created_at /
updated_at, and a try's IPv6 ip is Kong's balancer_data.ip (`_kong_ip`)."""

from __future__ import annotations

import ipaddress
from itertools import chain
from types import SimpleNamespace
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config.kong_forms import loaded_at
from gateway.http.codec import Request
from gateway.http.server import REFUSED, REQUEST_METHOD, REQUEST_URI, ROUTER_PATH, Exchange
from gateway.http.uri_args import MAX_URI_ARGS, add_arg, uri_args
from gateway.metrics import wall_offset
from gateway.pipeline.headers import set_consumer
from gateway.policies.consumers import Consumer
from gateway.telemetry.entry import ORIGINAL_REQUEST, Entry, _raw_bytes_json

_REDACTED = frozenset({b"authorization", b"proxy-authorization"})
MAX_HEADERS = 100
_CONSUMER_SET = frozenset({b"x-consumer-id", b"x-consumer-custom-id", b"x-consumer-username",
                           b"x-credential-identifier", b"x-anonymous-consumer"})
_WORKSPACE_ID = "0dc6f45b-8f8d-40d2-a504-473544ee190b"
_WORKSPACE = "default"
_encode = msgspec.json.Encoder().encode


def _json(doc: Any) -> bytes:
    """msgspec's JSON; with bytes that are not UTF-8 (surrogate-escaped), written raw as lua-cjson copies them (the
    entry's own writer: tests/telemetry/test_entry_non_utf8.py checks it against msgspec's)."""
    try:
        return _encode(doc)
    except UnicodeEncodeError:
        return _raw_bytes_json(doc)


def _cjson(encoded: bytes) -> bytes:
    """JSON as lua-cjson writes it: "/" escaped (encode_escape_forward_slash, on by default), and DEL (its
    char2escape table's entry 127: "\\u007f")."""
    return encoded.replace(b"/", b"\\/").replace(b"\x7f", b"\\u007f")
FUZZ = settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


# --- the reference: the serializer before it was made cheaper --------------------------------------------------------


def request_size(ex: Exchange) -> int:
    """Bytes of the request as sent (nginx's $request_length): the request line as the client wrote it, the header
    lines ("name: value\\r\\n" each), the blank line that ends them, the body."""
    req = ex.request
    headers = req.headers
    return (len(ex.request_line_method()) + len(ex.request_uri()) + len(req.http_version) + 11
            + sum(map(len, chain.from_iterable(headers))) + 4 * len(headers) + ex.body_received)


class ReferenceEntry:
    """The Entry of gateway/telemetry/entry.py before it was made cheaper (frozen here)."""

    __slots__ = ("ex", "started", "ended", "status", "wall", "trace", "_latencies")

    def __init__(self, ex: Exchange, started: float, ended: float, status: int, wall: float = 0.0) -> None:
        self.ex = ex
        self.started = started
        self.ended = ended
        self.status = status
        self.wall = wall  # time.time() - trio.current_time(): Trio clock -> Unix time (0.0: read when needed)
        self.trace: Any = None  # the opentelemetry plugin's Trace, when not in ex.state (Kong's serialized trace_id)
        self._latencies: tuple[float, float, float, float] | None = None

    @property
    def route(self) -> Any:
        return self.ex.route

    def latencies(self) -> tuple[float, float, float, float]:
        """(kong, proxy, request, receive) in ms; proxy is -1 when no target answered."""
        lat = self._latencies
        if lat is None:
            started, ended = self.started, self.ended
            request = (ended - started) * 1000.0
            tries = self.ex.tries
            if tries:  # changed since the freeze (2026-12-05): a failed last try's wait is proxy, as Kong's
                last = tries[-1]
                waited = last.head_at or last.ended or ended
                lat = ((last.started - started) * 1000.0, (waited - last.started) * 1000.0, request,
                       (ended - waited) * 1000.0)
            else:
                lat = (request, -1.0, request, 0.0)
            self._latencies = lat
        return lat

    @property
    def source(self) -> str:
        """Kong's kong.response.get_source(): service (the upstream answered), error (the gateway failed to get
        an answer: 5xx of its own; nginx's page for a request it could not read), exit (a plugin or the router
        answered)."""
        ex = self.ex
        tries = ex.tries
        if tries and tries[-1].head_at:
            return "service"
        return "error" if self.status >= 500 or (ex.state and REFUSED in ex.state) else "exit"

    @property
    def consumer_username(self) -> str:
        consumer = self.ex.consumer
        return (consumer.username or "") if consumer is not None else ""

    def request_size(self) -> int:
        return request_size(self.ex)

    def serialize(self) -> dict[str, Any]:
        """Kong's serializer: the table its log plugins encode as JSON, from what the gateway knows."""
        ex = self.ex
        req = ex.request
        if not self.wall:
            self.wall = wall_offset()
        kong, proxy, request, receive = self.latencies()
        target = _text(ex.request_uri())  # Kong's uri and url: $request_uri, as the client sent it
        query = req.target.partition(b"?")[2]  # its querystring: the arguments as rewritten
        raw_host = b""
        for name, value in req.headers:
            if name == b"host":
                raw_host = value
                break
        host = _text(raw_host)
        conn = ex.conn
        scheme = conn.scheme.decode()
        port = conn.listen_port.decode() or "-"
        # nginx's $host: the Host's name, lowercased, up to its first ":" (an IP literal's "]"), without one final
        # dot (changed since the freeze, 2026-12-05: ngx_http_validate_host); with none, Kong's `server_name kong`
        # (lower-cased as bytes: ASCII letters only, as nginx's ngx_strlow; changed since the freeze, too); an
        # unclosed `[` is all name, and the dot dropped is the value's last (nginx's dot_pos; 2026-12-07)
        literal = raw_host.startswith(b"[") and b"]" in raw_host
        bare = raw_host[:raw_host.find(b"]") + 1] if literal else \
            raw_host if raw_host.startswith(b"[") else raw_host.partition(b":")[0]
        hostname = _text(bare.lower())
        last_dot = raw_host.rfind(b".") == len(bare) - 1
        hostname = (hostname[:-1] if hostname.endswith(".") and last_dot else hostname) if host else "kong"
        doc: dict[str, Any] = {
            "request": {
                "id": ex.request_id.decode("latin-1"),
                "uri": target,
                "url": f"{scheme}://{hostname}:{port}{target}",
                "querystring": _querystring(query),
                "method": req.method.decode("latin-1"),
                "headers": _headers(_request_headers(ex), _REDACTED),
                "size": self.request_size(),
            },
            "upstream_uri": "",
            "upstream_status": "",
            "response": {"status": self.status, "headers": self._response_headers(), "size": ex.sent},
            "latencies": {"kong": round(kong), "proxy": round(proxy), "request": round(request),
                          "receive": round(receive)},
            "client_ip": ex.client_ip,
            "started_at": round((self.started + self.wall) * 1000),
            "source": "upstream" if self.source == "service" else "kong",  # Kong's RESPONSE_SOURCE.NAMES
            "workspace": _WORKSPACE_ID,
            "workspace_name": _WORKSPACE,
        }
        tls = getattr(conn, "tls", None)
        if tls is not None:  # Kong's request.tls: the connection's protocol, cipher and $ssl_client_verify
            doc["request"]["tls"] = _tls(tls)
        tries = ex.tries
        if tries:
            doc["tries"] = _tries(tries, self.wall, self.status, ex.route)
            last = tries[-1]
            doc["upstream_uri"] = _text(last.uri)
            # changed since the freeze (2026-12-05): a try whose head came says the head's status; (2026-12-06) a
            # try followed by another without a code says 502, the last one without a head or a code `-`
            doc["upstream_status"] = ", ".join(
                [str(self.status if t.head_at else _status_of(t.code) if t.code else 502) for t in tries[:-1]]
                + [str(self.status if last.head_at else _status_of(last.code)) if last.head_at or last.code else "-"])
        elif ex.state and (path := ex.state.get(ROUTER_PATH)):  # a plugin answered: the router's, and the serializer
            query = req.target.partition(b"?")[2]  # adds the "?" of the client's empty query, or the arguments
            doc["upstream_uri"] = _text(path + b"?" + query if query or ex.request_uri()[-1:] == b"?" else path)
        route = ex.route
        if route is not None:
            doc.setdefault("tries", [])  # Kong's balancer_data exists once a route matched, even with no try
            facts = route.facts
            doc["route"] = facts.route_json
            if facts.service_json is not None:
                doc["service"] = facts.service_json
        consumer = ex.consumer
        if consumer is not None:
            if consumer.id is not None:  # (none: ldap-auth's credential, Kong's kong.client.authenticate(nil, cred))
                doc["consumer"] = _consumer(consumer)
            if consumer.credential_id is not None:  # Kong's {id = credential.id, consumer_id = credential.consumer_id}
                entity = {"id": consumer.credential_id}
                owner = getattr(consumer, "entity_consumer_id", None)  # only a session's credential table has one
                if owner is not None:
                    entity["consumer_id"] = owner
                doc["authenticated_entity"] = entity
        trace = self.trace
        state = ex.state
        if state:
            if trace is None:  # the tracing plugin's Trace of this request
                trace = state.get("opentelemetry") or state.get("zipkin")
            correlation_id = state.get("correlation-id")  # the correlation-id plugin's set_serialize_value
            if correlation_id:
                doc["correlation_id"] = _text(correlation_id)  # its bytes, as cjson writes them
            original = state.get(ORIGINAL_REQUEST)  # ai-prompt-template's log_original_request
            if original is not None:
                doc["ai"] = {"payload": {"original_request": _text(original)}}
        if trace is not None:
            trace_id = trace.serialized()
            if trace_id:
                doc["trace_id"] = trace_id
        mcp = _mcp(ex)
        if mcp:
            doc["mcp"] = mcp
        return doc

    def json_line(self) -> bytes:
        """The serializer's table as one JSON line (what file-log and the access log write)."""
        return self.json() + b"\n"

    def json(self) -> bytes:
        """The serializer's table as JSON, no newline (what udp-log sends as a datagram)."""
        return _cjson(_json(self.serialize()))

    def _response_headers(self) -> dict[str, Any]:
        ex = self.ex
        headers = list(ex.response_headers or ())
        lines = ex.response_lines
        if lines:  # header lines policies added (rate limits), pre-formatted
            for line in lines.split(b"\r\n"):
                name, sep, value = line.partition(b":")
                if sep and name.strip().lower() != b"date":  # (changed since the freeze, 2026-12-06: nginx's Date
                    headers.append((name.strip(), value.strip()))  # is never in r->headers_out)
        return _headers(headers[:MAX_HEADERS], frozenset())  # ngx.resp.get_headers(): its first 100


def _text(raw: bytes) -> str:
    """Bytes as lua-cjson writes them into the JSON line: as they are (changed since the freeze, 2026-12-07: bytes
    that are not UTF-8 are kept, surrogate-escaped, where they became U+FFFD)."""
    return raw.decode("utf-8", "surrogateescape")


def _request_headers(ex: Exchange) -> Any:
    """The request headers as Kong's kong.request.get_headers() reads them in the log phase: the client's as the
    plugins left them (kong.service.request.set_header and clear_header change them), so with the consumer's
    (X-Consumer-ID, -Username, -Custom-ID, X-Credential-Identifier, X-Anonymous-Consumer, acl's X-Consumer-Groups, ...)
    in place of the client's copies once an authentication plugin set a consumer; the first 100 lines."""
    headers = ex.request.headers
    consumer = ex.consumer
    if consumer is not None:
        own = consumer.upstream_headers
        names = _CONSUMER_SET.union([hv[0] for hv in own])
        headers = [hv for hv in headers if hv[0] not in names] + own
    return headers[:MAX_HEADERS]


def _headers(headers: Any, redacted: frozenset[bytes]) -> dict[str, Any]:
    """Kong's header table: lower-case names, a list for a repeated header; a credential header is the one string
    REDACTED however many lines it had (the serializer replaces the table's entry)."""
    out: dict[str, Any] = {}
    for name, value in headers:
        if name in redacted:
            out[name.decode("latin-1")] = "REDACTED"
        else:
            add_arg(out, name.decode("latin-1").lower(), _text(value))
    return out


def _querystring(query: bytes) -> dict[str, Any]:
    """Kong's kong.request.get_query(): ngx.req.get_uri_args(100): an argument without a value is true, repeated ones
    are lists, one without a name is dropped, the first 100 only."""
    if not query:
        return {}
    out: dict[str, Any] = {}
    for name, value in uri_args(query, MAX_URI_ARGS).items():
        out[_text(name)] = [_arg(v) for v in value] if isinstance(value, list) else _arg(value)
    return out


def _arg(value: bytes | bool) -> str | bool:
    return _text(value) if isinstance(value, bytes) else value


def _tries(tries: list[Any], wall: float, status: int, route: Any) -> list[dict[str, Any]]:
    """Kong's balancer tries: where, when; a try followed by another has the state and code of its failure (Kong's
    balancer records get_last_failure() when it retries); the last one has them only when the response is a 5xx and
    no retry was left (Kong's header filter: try_count > retries), its code then the response's status."""
    out = [_try(t, wall) for t in tries]
    for attempt, entry in zip(tries[:-1], out[:-1], strict=True):
        entry["state"] = "failed"
        entry["code"] = _status_of(attempt.code) if attempt.code else 502
    service = route.service if route is not None else None
    retries = service.retries if service is not None else 5
    if status > 499 and len(tries) > retries:
        out[-1]["state"] = "failed"
        out[-1]["code"] = status
    return out


def _kong_ip(attempt: Any, host: str) -> str:
    """Kong's balancer_data.ip of an IPv6 address: a service's own host as given, an upstream's literal target
    bracketed and expanded (its targets DAO's form), a name's address bracketed."""
    if ":" not in host:
        return host
    if attempt.target.target != host:
        return f"[{host}]"
    return host if attempt.group.direct else f"[{ipaddress.IPv6Address(host).exploded}]"


def _try(attempt: Any, wall: float) -> dict[str, Any]:
    """Kong's balancer try: where and when."""
    host, port = attempt.target.key
    host = _kong_ip(attempt, host)
    start = (attempt.started + wall) * 1000
    return {"ip": host, "port": port, "balancer_start": round(start), "balancer_start_ns": round(start * 1e6),
            "balancer_latency": 0, "balancer_latency_ns": 0}


def _tls(tls: Any) -> dict[str, Any]:
    """Kong's request.tls: the TLS version and cipher as nginx names them (OpenSSL's names), and $ssl_client_verify
    (NONE: the gateway's listeners ask for no client certificate)."""
    cipher = tls.cipher()
    return {"version": tls.version(), "cipher": cipher[0] if cipher else None, "client_verify": "NONE"}


def _consumer(consumer: Any) -> dict[str, Any]:
    """Kong's consumer entity as the serializer copies it: id, username, custom_id, tags (those set), created_at,
    updated_at."""
    out = {k: v for k, v in (("id", consumer.id), ("username", consumer.username),
                             ("custom_id", consumer.custom_id)) if v is not None}
    tags = getattr(getattr(consumer, "consumer", None), "tags", None)
    if tags:
        out["tags"] = list(tags)
    created = getattr(getattr(consumer, "consumer", None), "created_at", None)
    out["created_at"], out["updated_at"] = created or loaded_at(), loaded_at()
    return out


def _status_of(code: int) -> int:
    """A try's outcome as nginx's $upstream_status says it: the status, 502 for a TCP failure, 504 a timeout."""
    return 504 if code == -2 else 502 if code < 0 else code


def _mcp(ex: Exchange) -> dict[str, Any] | None:
    """The MCP method and tool, from what the MCP step read or the 2026-07-28 headers."""
    mcp = ex.mcp
    info = mcp.info if mcp is not None else None
    method = tool = None
    if info is not None and info.method is not None:
        method, tool = info.method, info.tool
    else:
        for name, value in ex.request.headers:
            if name == b"mcp-method":
                method = _text(value)
            elif name == b"mcp-name":
                tool = _text(value)
        if method != "tools/call":
            tool = None
    if method is None:
        return None
    out = {"method": method}
    if tool is not None:
        out["tool"] = tool
    return out


# --- exchanges -------------------------------------------------------------------------------------------------------

_ODD = st.sampled_from([b"", b"\xff", b"\xc3\xa9", b"\xe2\x82", b"%", b"%41", b"%zz", b"%FF", b"+", b" ", b"\t", b"=",
                        b"&", b"?", b":", b"\x00", b"a", b"b", b"xyz", b"\xc3", b"\r"])
_TEXT = st.one_of(st.binary(max_size=12), st.lists(_ODD, max_size=6).map(b"".join))
_KNOWN_NAMES = st.sampled_from([b"host", b"Host", b"authorization", b"Authorization", b"proxy-authorization",
                          b"PROXY-Authorization", b"mcp-method", b"mcp-name", b"MCP-Method", b"x-consumer-id",
                          b"x-consumer-username", b"x-credential-identifier", b"x-anonymous-consumer",
                          b"x-consumer-groups", b"content-type", b"accept", b"x-a", b"X-A", b"", b"\xe9t\xe9",
                          b"user-agent", b"cookie"])
_ANY_NAME = st.one_of(_KNOWN_NAMES, _KNOWN_NAMES, st.binary(min_size=1, max_size=6))
_HOSTS = st.sampled_from([b"example.test", b"Example.TEST:8080", b"[::1]:80", b"[::1]", b"", b"\xff\xfe:1", b"h:1:2",
                          b"127.0.0.1:8000"])
_MCP_METHODS = st.sampled_from([b"tools/call", b"initialize", b"tools/list", b"\xe9"])


@st.composite
def header_lists(draw: Any) -> list[tuple[bytes, bytes]]:
    headers = draw(st.lists(st.one_of(
        st.tuples(_ANY_NAME, _TEXT),
        st.tuples(st.just(b"host"), _HOSTS),
        st.tuples(st.sampled_from([b"mcp-method", b"mcp-name"]), _MCP_METHODS),
        st.tuples(st.just(b"authorization"), _TEXT)), max_size=8))
    pad = draw(st.sampled_from([0, 0, 0, 0, 95, 101]))  # more than 100 lines: get_headers() reads the first 100
    if pad:
        headers[draw(st.integers(0, len(headers))):0] = [(b"x-pad-%d" % (i % 7), b"%d" % i) for i in range(pad)]
    return headers


@st.composite
def queries(draw: Any) -> bytes:
    names = st.sampled_from([b"a", b"b", b"A", b"%61", b"a+b", b"", b"%", b"%zz", b"%FF", b"\xff", b"x%20y", b"c"])
    pieces = draw(st.lists(st.one_of(
        names,  # bare: true
        st.tuples(names, st.sampled_from([b"", b"1", b"%41", b"a+b", b"%FF", b"\xc3\xa9", b"%", b"=", b"%2B"])).map(
            lambda nv: nv[0] + b"=" + nv[1])), max_size=8))
    if draw(st.booleans()) and draw(st.booleans()):  # over the argument limit
        pieces += [b"k%d=v" % (i % 13) for i in range(draw(st.sampled_from([95, 99, 100, 105])))]
    return b"&".join(pieces)


@st.composite
def response_lines(draw: Any) -> bytes:
    lines = draw(st.lists(st.one_of(
        st.sampled_from([b"X-Kong-Upstream-Latency: 1", b"X-Kong-Proxy-Latency: 0", b"Via: 1.1 kong/3.9.1",
                         b"Server: kong/3.9.1", b"X-RateLimit-Limit-Minute: 5", b"  Spaced-Name :  value  ",
                         b"no colon here", b"", b"content-type: text/x", b"Set-Cookie: a=1", b"Set-Cookie: b=2",
                         b"x-kong-request-id: \xff\xfe", b":empty name", b"X-A:"]),
        st.tuples(_ANY_NAME, _TEXT).map(lambda nv: nv[0] + b": " + nv[1])), max_size=7))
    if draw(st.booleans()):
        lines.append(b"X-Kong-Request-Id: %d" % draw(st.integers(0, 10**6)))
    text = b"\r\n".join(lines)
    return text + b"\r\n" if text and draw(st.booleans()) else text


_ATTEMPT = st.builds(
    lambda ip, named, direct, port, started, head, ended, code, uri: SimpleNamespace(
        target=SimpleNamespace(key=(ip, port), target="up.example" if named else ip),
        group=SimpleNamespace(direct=direct), started=started, head_at=head, ended=ended, code=code, uri=uri),
    st.sampled_from(["127.0.0.1", "::1", "10.0.0.7", "2001:db8::7"]), st.booleans(), st.booleans(),
    st.integers(1, 65535), st.floats(9.0, 11.0),
    st.one_of(st.just(0.0), st.floats(10.0, 11.0)), st.one_of(st.just(0.0), st.floats(10.0, 11.5)),
    st.sampled_from([0, 200, 204, 404, 502, 503, -1, -2]),
    st.one_of(st.sampled_from([b"/", b"/up?x=1", b"/\xff"]), _TEXT))

_ROUTE = st.one_of(st.none(), st.builds(
    lambda service_json, service: SimpleNamespace(
        facts=SimpleNamespace(route_json=msgspec.Raw(b'{"id":"r","name":"api"}'), service_json=service_json),
        service=service),
    st.sampled_from([None, msgspec.Raw(b'{"id":"s","host":"h"}')]),
    st.one_of(st.none(), st.builds(lambda n: SimpleNamespace(retries=n), st.integers(0, 5)))))


@st.composite
def consumers(draw: Any) -> Any:
    if draw(st.booleans()):
        return None
    maybe = st.one_of(st.none(), st.sampled_from(["bob", "", "é", "6c5e2d2a-0000-4000-8000-000000000001"]))
    consumer = SimpleNamespace(id=draw(maybe), username=draw(maybe), custom_id=draw(maybe), credential_id=draw(maybe),
                               upstream_headers=draw(st.lists(st.tuples(_KNOWN_NAMES, _TEXT), max_size=5)))
    # the config's consumer the identity is of (gateway.policies.consumers.Identity.consumer)
    consumer.consumer = Consumer(consumer.id, consumer.username, consumer.custom_id,
                                 tuple(draw(st.lists(st.sampled_from(["t1", "t2"])))))
    if draw(st.booleans()):
        consumer.entity_consumer_id = draw(maybe)
    return consumer


def trace_of(draw: Any) -> Any:
    trace_id = draw(st.sampled_from([None, "", {"w3c": "0af7651916cd43dd8448eb211c80319c"}, "abc"]))
    return SimpleNamespace(serialized=lambda: trace_id)


@st.composite
def states(draw: Any) -> dict[str, Any] | None:
    if draw(st.booleans()):
        return None
    state: dict[str, Any] = {}
    if draw(st.booleans()):
        state["correlation-id"] = draw(st.sampled_from([b"", b"id-1", b"\xe9"]))
    if draw(st.booleans()):
        state[ORIGINAL_REQUEST] = draw(_TEXT)
    if draw(st.booleans()):
        state[draw(st.sampled_from(["opentelemetry", "zipkin"]))] = trace_of(draw)
    if draw(st.booleans()):
        state[ROUTER_PATH] = draw(st.sampled_from([b"", b"/base/items", b"/\xff"]))
    if draw(st.booleans()):
        state[REFUSED] = True
    if draw(st.booleans()):
        state[REQUEST_URI] = draw(st.sampled_from([b"/orig", b"/orig?", b"/orig?q=1", b"/\xff?x"]))
    if draw(st.booleans()):
        state[REQUEST_METHOD] = draw(st.sampled_from([b"GET", b"PATCH"]))
    return state


@st.composite
def exchanges(draw: Any) -> tuple[Exchange, float, float, int, float, Any]:
    """An exchange as the log phase finds it, and what an Entry is made of: started, ended, status, wall, trace."""
    path = draw(st.sampled_from([b"/", b"/api/items", b"/\xff\xfe", b"/a%20b"]))
    query = draw(queries())
    target = path + (b"?" + query if query or draw(st.booleans()) else b"")
    tls = None
    if draw(st.booleans()):
        cipher = draw(st.sampled_from([None, ("TLS_AES_128_GCM_SHA256", "TLSv1.3", 128)]))
        version = draw(st.sampled_from(["TLSv1.2", "TLSv1.3"]))
        tls = SimpleNamespace(version=lambda: version, cipher=lambda: cipher)
    conn = SimpleNamespace(peer=("127.0.0.1", 50000), scheme=draw(st.sampled_from([b"http", b"https"])),
                           listen_port=draw(st.sampled_from([b"8000", b"8443", b""])))
    if tls is not None:
        conn.tls = tls
    req = Request(draw(st.sampled_from([b"GET", b"POST", b"HEAD", b"M\xe9"])), target, draw(header_lists()),
                  draw(st.sampled_from([b"1.1", b"1.0"])), True)
    ex = Exchange(req, conn, None, None, None)  # type: ignore[arg-type]
    ex.request_id = draw(st.sampled_from([b"", b"6f1d2b0c4a9e4e7f8c3b2a1d0e9f8a7b", b"\xe9"]))
    ex.client_ip = draw(st.sampled_from(["127.0.0.1", "::1", ""]))
    ex.body_received = draw(st.integers(0, 2048))
    ex.sent = draw(st.integers(0, 4096))
    ex.route = draw(_ROUTE)
    ex.tries = draw(st.one_of(st.none(), st.lists(_ATTEMPT, max_size=4)))
    if (consumer := draw(consumers())) is not None:
        set_consumer(ex, consumer)  # as the authentication policy wrote its headers into the request
    else:
        ex.consumer = None
    ex.response_headers = draw(st.one_of(st.none(), header_lists()))
    ex.response_lines = draw(response_lines())
    ex.state = draw(states())
    if draw(st.booleans()):
        info = draw(st.one_of(st.none(), st.builds(SimpleNamespace, method=st.sampled_from([None, "tools/call",
                                                                                              "initialize"]),
                                                   tool=st.sampled_from([None, "echo"]))))
        ex.mcp = SimpleNamespace(info=info)
    trace = trace_of(draw) if draw(st.booleans()) else None
    started = draw(st.floats(9.0, 10.5))
    return (ex, started, started + draw(st.floats(0.0, 2.0)), draw(st.sampled_from([200, 204, 404, 499, 500, 502, 503,
                                                                                      504])),
            draw(st.sampled_from([1_700_000_000.0, 1_700_000_000.123456789])), trace)


def _both(ex: Exchange, started: float, ended: float, status: int, wall: float, trace: Any) -> tuple[bytes, bytes]:
    """(the reference's JSON, the Entry's JSON) of the same exchange."""
    old = ReferenceEntry(ex, started, ended, status, wall=wall)
    new = Entry(ex, started, ended, status, wall=wall)
    old.trace = new.trace = trace
    return old.json(), new.json()


# --- the tests -------------------------------------------------------------------------------------------------------


@FUZZ
@given(exchanges())
def test_the_entry_is_the_references_json_byte_for_byte(case: Any) -> None:
    old, new = _both(*case)
    assert new == old


@FUZZ
@given(exchanges())
def test_serialize_json_line_and_a_second_json_agree_with_the_reference(case: Any) -> None:
    """serialize() is still the table; json() a second time (another logger of the request) gives the same bytes."""
    ex, started, ended, status, wall, trace = case
    entry = Entry(ex, started, ended, status, wall=wall)
    entry.trace = trace
    reference = ReferenceEntry(ex, started, ended, status, wall=wall)
    reference.trace = trace
    expected = _json(reference.serialize())
    assert _json(entry.serialize()) == expected
    assert entry.json_line() == _cjson(expected) + b"\n" and entry.json() == _cjson(expected)


def test_the_bench_request() -> None:
    """scripts/bench's request (a 1 KB POST through a route with a service, one try) and its Kong headers."""
    conn = SimpleNamespace(peer=("127.0.0.1", 50000), scheme=b"http", listen_port=b"8000")
    req = Request(b"POST", b"/", [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json"),
                                  (b"content-length", b"1024")], b"1.1", True)
    ex = Exchange(req, conn, None, None, None)  # type: ignore[arg-type]
    ex.request_id, ex.body_received, ex.sent = b"6f1d2b0c4a9e4e7f8c3b2a1d0e9f8a7b", 1024, 300
    ex.route = SimpleNamespace(facts=SimpleNamespace(route_json=msgspec.Raw(b'{"id":"r"}'),
                                                     service_json=msgspec.Raw(b'{"id":"s"}')),
                               service=SimpleNamespace(retries=5))
    ex.tries = [SimpleNamespace(target=SimpleNamespace(key=("127.0.0.1", 9000)), started=10.1, head_at=10.2,
                                ended=10.3, code=200, uri=b"/")]
    ex.response_headers = [(b"content-type", b"application/json"), (b"content-length", b"86")]
    ex.response_lines = (b"X-Kong-Upstream-Latency: 1\r\nX-Kong-Proxy-Latency: 0\r\nX-Kong-Request-Id: "
                         b"6f1d2b0c4a9e4e7f8c3b2a1d0e9f8a7b\r\nVia: 1.1 kong/3.9.1\r\nServer: kong/3.9.1\r\n")
    old, new = _both(ex, 10.0, 10.3, 200, 1_700_000_000.0, None)
    assert new == old
    assert b'"url":"http:\\/\\/127.0.0.1:8000\\/"' in new and b'"via":"1.1 kong\\/3.9.1"' in new


def test_the_memos_stay_bounded_and_right_past_their_size() -> None:
    """Header names and Hosts come from clients: past _MEMO_MAX distinct ones the oldest leave the memos, and the entry
    is the same."""
    from gateway.telemetry import entry as module

    for i in range(module._MEMO_MAX + 50):
        conn = SimpleNamespace(peer=("127.0.0.1", 1), scheme=b"http", listen_port=b"8000")
        req = Request(b"GET", b"/", [(b"host", b"h%d.test" % i), (b"x-name-%d" % i, b"v"), (b"X-Name-%d" % i, b"w")],
                      b"1.1", True)
        ex = Exchange(req, conn, None, None, None)  # type: ignore[arg-type]
        ex.response_lines = b"X-Line-%d: %d\r\n" % (i, i)
        old, new = _both(ex, 10.0, 10.1, 404, 1_700_000_000.0, None)
        assert new == old
    assert len(module._NAMES) <= module._MEMO_MAX and len(module._ORIGINS) <= module._MEMO_MAX
    assert len(module._LINES) <= module._MEMO_MAX
