"""One finished request as the log phase sees it, and Kong's log serializer (kong/pdk/log.lua `serialize`).

An `Entry` is made only when something logs the request (the access log, a log plugin, the prometheus plugin);
everything in it is computed when first asked for. The JSON line is built by the line writer's task, off the
request path: an Entry holds the finished Exchange until then (what it reads is final once the response is sent).

Kong's latencies, in ms, from the Trio clock readings the pipeline and the forwarder took:
    request  from the request head to the end of the response ($request_time)
    kong     the gateway's own time: until the request went to the target that answered (Kong's proxy latency),
             or until the gateway answered itself (Kong's response latency)
    proxy    from sending the request to that target to its response head (Kong's waiting time); -1 if none
    receive  from the response head to the end of the response
"""

from __future__ import annotations

import re
import secrets
from itertools import chain
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from gateway.balancing.continuum import kong_address
from gateway.config.kong_forms import loaded_at
from gateway.http.codec import NGINX_HOSTS
from gateway.http.kong_headers import PROXIED
from gateway.http.server import REFUSED, ROUTER_PATH, Exchange
from gateway.http.uri_args import MAX_URI_ARGS, add_arg, uri_args
from gateway.memo import Derived
from gateway.metrics import wall_offset
from gateway.telemetry.entities import WORKSPACE_ID, WORKSPACE_NAME

_REDACTED = frozenset({b"authorization", b"proxy-authorization"})
MAX_HEADERS = 100  # Kong's lua_max_req_headers / lua_max_resp_headers: what get_headers() reads by default
ORIGINAL_REQUEST = "ai.payload.original_request"  # ex.state: a body ai-prompt-template logs (Kong's serialize key)
_encode = msgspec.json.Encoder().encode
_ENTITY = msgspec.json.Decoder(dict[str, Any])


def request_size(ex: Exchange) -> int:
    """nginx's $request_length: the bytes read of the request, its head as the client sent it (whatever policies
    changed since), the body's data as read, a chunked body's framing (Request.size); not a body discarded after
    the answer (Exchange.discard_body). A head the connection loop refused is what nginx had counted of it (the
    connection loop's estimate of a head that timed out, gateway.http.server.refused_length); where the codec could
    not tell, its request line and header lines as they would be sent ("name: value\\r\\n"), or nothing when it
    had no whole request line (no target), which nginx never counts."""
    req = ex.request
    size = req.size
    if not size:
        uri = ex.request_uri()
        if not uri:
            return 0
        headers = req.headers
        size = (len(ex.request_line_method()) + len(uri) + len(req.http_version) + 11
                + sum(map(len, chain.from_iterable(headers))) + 4 * len(headers))
    return size + ex.body_received


class _Request(msgspec.Struct, gc=False):
    """Kong's serialized request."""

    id: str
    uri: str
    url: str
    querystring: dict[str, Any]
    method: str
    headers: dict[str, Any]
    size: int
    tls: dict[str, Any] | UnsetType = UNSET


class _Response(msgspec.Struct, gc=False):
    status: int
    headers: dict[str, Any]
    size: int


class _Latencies(msgspec.Struct, gc=False):
    kong: int
    proxy: int
    request: int
    receive: int


class _Try(msgspec.Struct, gc=False):
    """A balancer try; state and code for a failed one."""

    ip: str
    port: int
    balancer_start: int
    balancer_start_ns: int
    balancer_latency: int = 0
    balancer_latency_ns: int = 0
    state: str | UnsetType = UNSET
    code: int | UnsetType = UNSET


class LogEntry(msgspec.Struct, gc=False):
    """Kong's serializer table (kong/pdk/log.lua `serialize`) as the JSON has it: the fields in the order of its
    keys, an UNSET one absent. (Structs: cheaper to make and to encode than dicts, their keys encoded once; no
    cycles, so not tracked by the garbage collector.)"""

    request: _Request
    upstream_uri: str
    upstream_status: str
    response: _Response
    latencies: _Latencies
    client_ip: str
    started_at: int
    source: str
    workspace: str = WORKSPACE_ID
    workspace_name: str = WORKSPACE_NAME
    tries: list[_Try] | UnsetType = UNSET
    route: msgspec.Raw | UnsetType = UNSET
    service: msgspec.Raw | UnsetType = UNSET
    consumer: msgspec.Raw | UnsetType = UNSET
    authenticated_entity: dict[str, str] | UnsetType = UNSET
    correlation_id: str | UnsetType = UNSET
    ai: dict[str, Any] | UnsetType = UNSET
    trace_id: Any = UNSET
    mcp: dict[str, str] | UnsetType = UNSET


class Entry:
    """A finished request: the Exchange, when it started and ended (Trio clock), its final status."""

    __slots__ = ("ex", "started", "ended", "status", "wall", "trace", "_latencies", "_json")

    def __init__(self, ex: Exchange, started: float, ended: float, status: int, wall: float = 0.0) -> None:
        self.ex = ex
        self.started = started
        self.ended = ended
        self.status = status
        self.wall = wall  # time.time() - trio.current_time(): Trio clock -> Unix time (0.0: read when needed)
        self.trace: Any = None  # the opentelemetry plugin's Trace, when not in ex.state (Kong's serialized trace_id)
        self._latencies: tuple[float, float, float, float] | None = None
        self._json: bytes | None = None

    @property
    def route(self) -> Any:
        return self.ex.route

    def latencies(self) -> tuple[float, float, float, float]:
        """(kong, proxy, request, receive) in ms, as Kong's: kong until the last try went out, proxy from then until
        its head came, or the try failed (a 502, a 504: Kong's waiting time ends at its error page), or the client
        left; -1 when nothing was proxied (a plugin or the router answered: kong then ends as the answer's head
        goes, Kong's KONG_RESPONSE_LATENCY, however long the client reads; a proxy-cache hit, KONG_PROXIED, has a
        proxy latency of 0 and the rest of the answer as receive)."""
        lat = self._latencies
        if lat is None:
            started, ended = self.started, self.ended
            request = (ended - started) * 1000.0
            tries = self.ex.tries
            if tries:
                last = tries[-1]
                waited = last.head_at or last.ended or ended
                lat = ((last.started - started) * 1000.0, (waited - last.started) * 1000.0, request,
                       (ended - waited) * 1000.0)
            else:
                ex = self.ex
                at = ex.answered_at or ended  # (none: no head went, a 499, or the connection loop's error page)
                if ex.state and PROXIED in ex.state:
                    lat = ((at - started) * 1000.0, 0.0, request, (ended - at) * 1000.0)
                else:
                    lat = ((at - started) * 1000.0, -1.0, request, 0.0)
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

    def serialize(self) -> LogEntry:
        """Kong's serializer: the table its log plugins encode as JSON, from what the gateway knows."""
        ex = self.ex
        req = ex.request
        wall = self.wall
        if not wall:
            wall = self.wall = wall_offset()
        kong, proxy, request, receive = self.latencies()
        uri = ex.request_uri()
        target = _text(uri)  # Kong's uri and url: $request_uri, as the client sent it
        query = req.target.partition(b"?")[2]  # its querystring: the arguments as rewritten
        raw = req.headers
        host = None
        for name, value in raw:
            if name == b"host":
                host = value
                break
        conn = ex.conn
        headers = _request_headers(ex)
        table = _headers(headers, True)
        tries = ex.tries
        state = ex.state
        upstream_uri = upstream_status = ""
        if tries:
            upstream_uri = _text(tries[-1].uri)
            upstream_status = _upstream_status(tries, self.status)
        elif state and (path := state.get(ROUTER_PATH)):  # a plugin answered: the router's, and the serializer
            # adds the "?" of the client's empty query, or the arguments
            upstream_uri = _text(path + b"?" + query if query or uri[-1:] == b"?" else path)
        doc = LogEntry(
            _Request(ex.request_id.decode("latin-1"), target, _ORIGINS[host, conn.scheme, conn.listen_port] + target,
                     _querystring(query) if query else {}, req.method.decode("latin-1"), table, request_size(ex)),
            upstream_uri, upstream_status, _Response(self.status, _response_headers(ex), ex.sent),
            _Latencies(round(kong), round(proxy), round(request), round(receive)), ex.client_ip,
            round((self.started + wall) * 1000),
            # Kong's RESPONSE_SOURCE.NAMES: its source "service" is "upstream", "error" and "exit" are "kong"
            "upstream" if tries and tries[-1].head_at else "kong")
        tls = getattr(conn, "tls", None)
        if tls is not None:  # Kong's request.tls: the connection's protocol, cipher and $ssl_client_verify
            doc.request.tls = _tls(tls)
        route = ex.route
        if tries:
            doc.tries = _tries(tries, wall, self.status, route)
        if route is not None:
            if not tries:
                doc.tries = []  # Kong's balancer_data exists once a route matched, even with no try
            facts = route.facts
            doc.route = facts.route_json
            if facts.service_json is not None:
                doc.service = facts.service_json
        consumer = ex.consumer
        if consumer is not None:
            if consumer.id is not None:  # (none: ldap-auth's credential, Kong's kong.client.authenticate(nil, cred))
                doc.consumer = _CONSUMERS[consumer.consumer]
            if consumer.credential_id is not None:  # Kong's {id = credential.id, consumer_id = credential.consumer_id}
                entity = {"id": consumer.credential_id}
                owner = getattr(consumer, "entity_consumer_id", None)  # only a session's credential table has one
                if owner is not None:
                    entity["consumer_id"] = owner
                doc.authenticated_entity = entity
        trace = self.trace
        trace_id = trace.serialized() if trace is not None else None
        if state:
            if trace is None:  # the tracing plugins' Traces of this request: each adds the formats it injected to
                # one table, zipkin's first (Kong's propagation.propagate into tracing_context, by plugin priority)
                zipkin, otel = state.get("zipkin"), state.get("opentelemetry")
                trace_id = zipkin.serialized() if zipkin is not None else None
                if otel is not None and (more := otel.serialized()):
                    trace_id = {**trace_id, **more} if trace_id else more
            correlation_id = state.get("correlation-id")  # the correlation-id plugin's set_serialize_value
            if correlation_id:
                doc.correlation_id = _text(correlation_id)
            original = state.get(ORIGINAL_REQUEST)  # ai-prompt-template's log_original_request
            if original is not None:
                doc.ai = {"payload": {"original_request": _text(original)}}
        if trace_id:
            doc.trace_id = trace_id
        # _mcp reads the request's header lines: when the table holds all of them, no "mcp-method" key says none
        if ex.mcp is not None or headers is not raw or "mcp-method" in table:
            mcp = _mcp(ex)
            if mcp:
                doc.mcp = mcp
        return doc

    def json_line(self) -> bytes:
        """The serializer's table as one JSON line (what file-log and the access log write)."""
        return self.json() + b"\n"

    def json(self) -> bytes:
        """The serializer's table as JSON, no newline (what udp-log sends as a datagram), as lua-cjson writes it
        (file-log, syslog, http-log, tcp-log, udp-log and loggly encode with OpenResty's cjson, whose
        encode_escape_forward_slash is on): every "/" as "\\/" and DEL as "\\u007f" (its char2escape table's entry
        127; both bytes are only ever in a string, so replacing them is exact), and bytes that are not UTF-8 as
        they came (_text). Made once, for all the loggers of the request (everything it reads is final once the
        response is sent)."""
        encoded = self._json
        if encoded is None:
            doc = self.serialize()
            try:
                encoded = _encode(doc)
            except UnicodeEncodeError:  # a string holds bytes that are not UTF-8 (surrogate-escaped by _text)
                encoded = _raw_bytes_json(doc)
            encoded = self._json = encoded.replace(b"/", b"\\/").replace(b"\x7f", b"\\u007f")
        return encoded


_SURROGATE = re.compile("[\ud800-\udfff]")
_MARK = secrets.token_hex(8)  # stands for a byte in _raw_bytes_json's text: random, so no client can send it
_MARKED = re.compile(_MARK.encode() + rb"([0-9a-f]{2})")


def _raw_bytes_json(doc: LogEntry) -> bytes:
    """`doc` as _encode writes it, but each byte that is not UTF-8 (a str's surrogate escape) written as it is, as
    lua-cjson copies bytes 0x80-0xFF (lua_cjson.c json_append_string: their char2escape entries are NULL), where
    msgspec refuses such a str: each is written as _MARK and its hex digits, which are then replaced by the byte."""
    encoded = _encode(_marked(msgspec.to_builtins(doc, builtin_types=(msgspec.Raw,))))
    return _MARKED.sub(lambda m: bytes((int(m[1], 16),)), encoded)


def _marked(value: Any) -> Any:
    """`value` (builtins) with each surrogate escape in its strings, keys too, as _MARK and the byte's hex digits
    (a surrogate that escapes no byte, which no _text makes, as U+FFFD)."""
    if isinstance(value, str):
        return value if value.isascii() else _SURROGATE.sub(_escaped, value)
    if isinstance(value, dict):
        return {_marked(k): _marked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_marked(v) for v in value]
    return value


def _escaped(surrogate: re.Match[str]) -> str:
    code = ord(surrogate[0]) - 0xDC00
    return f"{_MARK}{code:02x}" if 0x80 <= code <= 0xFF else "\ufffd"


def _origin(key: tuple[bytes | None, bytes, bytes]) -> str:
    """The url's start: scheme, nginx's $host (the Host's name, lowercased, without its port and one final dot; with
    no Host, Kong's `server_name kong`) and the port the request came in on."""
    raw, scheme, port = key
    hostname = _text(NGINX_HOSTS[raw]) if raw else "kong"
    return f"{scheme.decode()}://{hostname}:{port.decode() or '-'}"


_MEMO_MAX = 1000
# a header line's name -> its key; (Host, scheme, port) -> the url's start
_NAMES: Derived[bytes, str] = Derived(lambda raw: raw.decode("latin-1").lower(), _MEMO_MAX)
_ORIGINS: Derived[tuple[bytes | None, bytes, bytes], str] = Derived(_origin, _MEMO_MAX)


def _text(raw: bytes) -> str:
    """Client bytes as lua-cjson writes them into the JSON line: as they are; bytes that are not UTF-8 are kept
    surrogate-escaped, which Entry.json writes back as the bytes (two clients sending 0xFE and 0xFF differ)."""
    return raw.decode("utf-8", "surrogateescape")


def _request_headers(ex: Exchange) -> Any:
    """The request headers as Kong's kong.request.get_headers() reads them in the log phase: the client's as the
    plugins left them (kong.service.request.set_header and clear_header change them), so with the consumer's
    (X-Consumer-ID, -Username, -Custom-ID, X-Credential-Identifier, X-Anonymous-Consumer, acl's X-Consumer-Groups, ...)
    in place of the client's copies once an authentication plugin set a consumer (gateway.pipeline.headers.
    set_consumer writes them into the request); the first 100 lines (the request's own list when that is all of
    them)."""
    headers = ex.request.headers
    return headers[:MAX_HEADERS] if len(headers) > MAX_HEADERS else headers


def _headers(headers: Any, redact: bool) -> dict[str, Any]:
    """Kong's header table: lower-case names, a list for a repeated header; with `redact`, a credential header is
    the one string REDACTED however many lines it had (the serializer replaces the table's entry)."""
    names = _NAMES
    try:  # the common case in one pass: no name twice, no credential, UTF-8 values
        out = {names[name]: value.decode() for name, value in headers}
    except UnicodeDecodeError:
        return _header_table(headers, redact)
    if len(out) < len(headers) or redact and ("authorization" in out or "proxy-authorization" in out):
        return _header_table(headers, redact)
    return out


def _header_table(headers: Any, redact: bool) -> dict[str, Any]:
    """_headers, line by line."""
    out: dict[str, Any] = {}
    names = _NAMES
    for name, value in headers:
        key = names[name]
        if redact and name in _REDACTED:
            out[key] = "REDACTED"
        elif key in out:
            add_arg(out, key, _text(value))
        else:
            out[key] = _text(value)
    return out


def _response_headers(ex: Exchange) -> dict[str, Any]:
    """ngx.resp.get_headers(): the response's header table, its first 100 lines: the response's headers, then the
    lines policies added (rate limits, Kong's own), pre-formatted; but the Date line the gateway adds to a response
    without one: nginx's header filter writes its Date into the output alone, never into r->headers_out
    (ngx_http_header_filter_module.c:472-477), so Kong's entry has a date only when the upstream (or a plugin) set
    one."""
    headers = ex.response_headers or ()
    out = _headers(headers[:MAX_HEADERS] if len(headers) > MAX_HEADERS else headers, False)
    room = MAX_HEADERS - len(headers)
    lines = ex.response_lines
    if lines and room > 0:
        parsed = _LINES
        for line in lines.split(b"\r\n"):
            header = parsed[line]
            if header is not None:
                key, value = header
                if key in out:
                    add_arg(out, key, value)
                else:
                    out[key] = value
                room -= 1
                if not room:
                    break
    return out


def _line(line: bytes) -> tuple[str, str] | None:
    """A header line's key and value in the header table (None: not a header line, or nginx's Date)."""
    name, sep, value = line.partition(b":")
    if not sep:
        return None
    key = name.strip().decode("latin-1").lower()
    return None if key == "date" else (key, _text(value.strip()))


# the lines policies add: the same few on every response, but for Kong's latencies and request id
_LINES: Derived[bytes, tuple[str, str] | None] = Derived(_line, _MEMO_MAX)


def _querystring(query: bytes) -> dict[str, Any]:
    """Kong's kong.request.get_query(): ngx.req.get_uri_args(100): an argument without a value is true, repeated ones
    are lists, one without a name is dropped, the first 100 only."""
    return {_text(name): [_arg(v) for v in value] if isinstance(value, list) else _arg(value)
            for name, value in uri_args(query, MAX_URI_ARGS).items()}


def _arg(value: bytes | bool) -> str | bool:
    return _text(value) if isinstance(value, bytes) else value


def _tries(tries: list[Any], wall: float, status: int, route: Any) -> list[_Try]:
    """Kong's balancer tries: where, when; a try followed by another has the state and code of its failure (Kong's
    balancer records get_last_failure() when it retries); the last one has them only when the response is a 5xx and
    no retry was left (Kong's header filter: try_count > retries), its code then the response's status."""
    out = []
    for attempt in tries:
        # the address it connected to (Kong's balancer_data.ip, kong/init.lua:1411): a named target's, the one its
        # look-up gave (pipeline.forward.Attempt.peer); else the target's own
        target = attempt.target
        peer = getattr(attempt, "peer", None) or target.key
        host, port = peer[0], peer[1]
        if ":" in host:  # an IPv6 address, as Kong writes it
            host = _KONG_IPS[host, target.target, attempt.group.direct]
        start = (attempt.started + wall) * 1000
        out.append(_Try(host, port, round(start), round(start * 1e6)))
    if len(out) > 1:
        for attempt, entry in zip(tries[:-1], out[:-1], strict=True):
            entry.state = "failed"
            entry.code = _status_of(attempt.code) if attempt.code else 502
    if status > 499:
        service = route.service if route is not None else None
        if len(tries) > (service.retries if service is not None else 5):
            out[-1].state = "failed"
            out[-1].code = status
    return out


def _kong_ip(key: tuple[str, str, bool]) -> str:
    """An IPv6 address as Kong's balancer_data.ip: a service's own host as the service gives it (kong/runloop/
    balancer/init.lua:291-293; as the loader keeps it, without brackets), an upstream's literal target in the DAO's
    form, bracketed and expanded (dao/targets.lua:31-36; its DNS client answers with the name it was asked,
    kong/resty/dns/client.lua:1003), a name's address bracketed (client.lua:210-212)."""
    address, target, direct = key
    return address if direct and target == address else kong_address(target, address)


# (address, target name, a service's own host) -> the try's ip in the log
_KONG_IPS: Derived[tuple[str, str, bool], str] = Derived(_kong_ip, _MEMO_MAX)


def _upstream_status(tries: list[Any], status: int) -> str:
    """nginx's $upstream_status: each try's outcome, ", "-separated. A try whose head came says the head's status
    (the one relayed), also when its body was then cut; one that failed, its failure's (502, 504); one followed by
    another 502 whatever ended it (ngx_http_upstream_next sets every such try's status, ngx_http_upstream.c:4413);
    the last one, ended with no head and no failure of the target's (the client left, 499), `-`: nginx's state
    without a status (ngx_http_upstream_status_variable, :5723-5727)."""
    if len(tries) == 1:
        last = tries[0]
        code = status if last.head_at else last.code
        return str(_status_of(code)) if code else "-"
    last = tries[-1]
    return ", ".join([*[str(status if t.head_at else _status_of(t.code) if t.code else 502) for t in tries[:-1]],
                      str(status if last.head_at else _status_of(last.code)) if last.head_at or last.code else "-"])

def _tls(tls: Any) -> dict[str, Any]:
    """Kong's request.tls: the TLS version and cipher as nginx names them (OpenSSL's names), and $ssl_client_verify
    (NONE: the gateway's listeners ask for no client certificate)."""
    cipher = tls.cipher()
    return {"version": tls.version(), "cipher": cipher[0] if cipher else None, "client_verify": "NONE"}


def _consumer(consumer: Any) -> msgspec.Raw:
    """Kong's consumer entity (gateway.policies.consumers.Consumer) as the serializer copies it: id, username,
    custom_id, tags (those set) and its created_at / updated_at (kong/db/schema/entities/consumers.lua:10-11, as the
    declarative loader gave them: the file's created_at, else the load time); no ws_id (key-auth's kong.client.
    load_consumer selects it without show_ws_id). Its JSON, made on the consumer's first log entry."""
    out: dict[str, Any] = {k: v for k, v in (("id", consumer.id), ("username", consumer.username),
                                             ("custom_id", consumer.custom_id)) if v is not None}
    if consumer.tags:
        out["tags"] = list(consumer.tags)
    loaded = loaded_at()
    out["created_at"], out["updated_at"] = consumer.created_at or loaded, loaded
    return msgspec.Raw(_encode(out))


# a consumer of the config -> its entity's JSON (a Consumer is made once per config load, so is its entry here)
_CONSUMERS: Derived[Any, msgspec.Raw] = Derived(_consumer, 10_000)


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


def summary(entry: Entry) -> dict[str, Any]:
    """The part of Kong's serializer table that its metrics plugins (statsd, datadog) read, without the rest
    (headers, query, tries) that they would make for nothing:

        {"service": {"id", "name", "host", ...}, "route": {"id", "name", ...}, "consumer": {"id", "username",
         "custom_id"}, "request": {"size"}, "response": {"status", "size"}, "latencies": {"request", "proxy",
         "kong"}, "workspace", "workspace_name"}

    (service, route and consumer absent when the request had none)."""
    ex = entry.ex
    kong, proxy, request, _ = entry.latencies()
    message: dict[str, Any] = {
        "request": {"size": entry.request_size()},
        "response": {"status": entry.status, "size": ex.sent},
        "latencies": {"kong": round(kong), "proxy": round(proxy), "request": round(request)},
        "workspace": WORKSPACE_ID,
        "workspace_name": WORKSPACE_NAME,
    }
    route = ex.route
    if route is not None:
        facts = route.facts  # the entities as the serializer writes them (JSON made once per config load)
        message["route"] = _ENTITY.decode(facts.route_json)
        if facts.service_json is not None:
            message["service"] = _ENTITY.decode(facts.service_json)
    consumer = ex.consumer
    if consumer is not None:
        message["consumer"] = {"id": consumer.id, "username": consumer.username, "custom_id": consumer.custom_id}
    return message
