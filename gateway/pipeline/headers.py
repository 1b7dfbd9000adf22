"""Header rewriting at the proxy boundary: hop-by-hop removal, X-Forwarded-*, request ids, Host, consumer headers."""

from __future__ import annotations

from typing import Any

from gateway.http.codec import CHUNKED, LENGTH, NGINX_HOSTS, NO_BODY, SERVER_NAME, Headers, Request
from gateway.http.ids import new_request_id, valid_request_id
from gateway.http.kong_headers import SERVER_TOKEN
from gateway.http.server import Exchange
from gateway.memo import Derived, Memo
from gateway.routing.router import MAX_REQ_HEADERS  # lua_max_req_headers, the lines get_headers() reads

# RFC 9110 7.6.1 connection-specific fields, and the legacy Proxy-Connection. Proxy-Authorization and
# Proxy-Authenticate pass, as nginx and Kong pass them (a gateway is the origin to its clients): an authentication
# plugin's hide_credentials is what takes a credential away.
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
                        b"upgrade"})
# ... of a response: Proxy-Connection and TE pass to the client, as nginx's upstream module ignores only Connection,
# Keep-Alive and Transfer-Encoding (ngx_http_upstream_headers_in) and Kong's header_filter.before removes neither.
HOP_BY_HOP_RESPONSE = HOP_BY_HOP - {b"proxy-connection", b"te"}
# Kept from a peer in gateway.trusted_ips, replaced by the gateway's own otherwise (Kong's rule), so a client cannot
# spoof them; X-Real-IP is always the client address.
_FORWARDED = frozenset({b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port", b"x-forwarded-path",
                        b"x-forwarded-prefix"})
# Kong's upstream headers about the consumer: only the gateway's authentication policies say who the client is.
CONSUMER_HEADERS = frozenset({b"x-consumer-id", b"x-consumer-custom-id", b"x-consumer-username",
                              b"x-credential-identifier", b"x-consumer-groups", b"x-authenticated-groups",
                              b"x-anonymous-consumer"})
# ... also spelled with underscores, which Kong passes on (underscores_in_headers on) and a CGI or WSGI upstream
# reads as the same HTTP_X_CONSUMER_* variable.
_SPOOFED_CONSUMER = frozenset(name.replace(b"-", b"_") for name in CONSUMER_HEADERS)
_CONSUMER_NAMES = CONSUMER_HEADERS | _SPOOFED_CONSUMER  # what set_consumer takes out of the request
# Proxy is dropped as Kong drops it (httpoxy: a CGI upstream would read it as its HTTP_PROXY); Via is replaced by
# Kong's, the client's first one extended.
# A request's Trailer passes, as nginx's proxy passes it (ngx_http_proxy_module's headers dropped: Host, Connection,
# Keep-Alive, Expect, Upgrade, TE, Content-Length, Transfer-Encoding), and Kong's spec leaves it.
_DROP_IN = (HOP_BY_HOP - {b"trailer"}) | CONSUMER_HEADERS | _SPOOFED_CONSUMER | {b"host", b"expect", b"x-forwarded-for",
                                                                               b"x-request-id", b"x-real-ip",
                                                                               b"proxy", b"via"}
# Kong reads the forwarding headers with get_header("x_forwarded_for", ctx), ngx.req.get_headers()["x_forwarded_for"]:
# the table's keys are the lower-cased names as sent (underscores_in_headers on), lua-resty-core's metatable trying
# `x-forwarded-for` only for a missing key, so a line spelled with underscores is the one read, before any dashed
# one (kong/tools/http.lua:545-565). Such a line passes on as any header (proxy_set_header replaces the dashed name).
# The underscore spelling -> the dashed name.
_UNDERSCORED = {name.replace(b"-", b"_"): name for name in _FORWARDED | {b"x-forwarded-for"}}
# One set lookup per header sorts out the rest; content-length is looked at (the body's framing), and passed on.
_SPECIAL_IN = _DROP_IN | _FORWARDED | _UNDERSCORED.keys() | {b"mcp-session-id", b"content-length",
                                                           b"x-kong-request-id"}
# ... for a request with a consumer, whose consumer headers are the gateway's (set_consumer), as the plugins after
# authentication left them: they pass (the underscore spellings are still dropped).
_SPECIAL_IN_AUTHENTICATED = _SPECIAL_IN - CONSUMER_HEADERS
# What an untrusted peer's requests all get: X-Forwarded-For/-Proto/-Port, X-Real-IP, Via and X-Forwarded-Host, built
# once per client address, scheme, listener port and Host (a few, in practice) instead of six tuples per request.
_OWN_FORWARDED: Memo[tuple[str, bytes, bytes, bytes], Headers] = Memo(4096)
_NOTHING_SEEN: set[bytes] = set()  # the X-Forwarded-* names an untrusted peer sent that are kept: none (never added to)
# upstream_request_headers' framing for a request that asks to switch protocols (a WebSocket handshake): no body,
# sent with Kong's `Upgrade: websocket` and `Connection: keep-alive, Upgrade` (the forwarder's upgrade path; never
# given to a codec, which reads such headers itself).
UPGRADE = 3
_UPGRADE_HEADERS = [(b"upgrade", b"websocket"), (b"connection", b"keep-alive, Upgrade")]
# Kong's Via upstream (kong/runloop/handler.lua upstream_via), after the client's own first Via when it sent one.
# Kong's version is the request's as Lua prints ngx.req.http_version() (1.0 is "1"); here always 1.1, the version
# the gateway speaks upstream.
INBOUND_VIA = b"1.1 " + SERVER_TOKEN
_INBOUND_VIA = (b"via", INBOUND_VIA)
_TE_TRAILERS = (b"te", b"trailers")
_KEEP_ALIVE = (b"connection", b"keep-alive")  # Kong's upstream_connection, on every request but an upgrade


def set_consumer(ex: Exchange, who: Any) -> None:
    """Make `who` (a gateway.policies.consumers Identity, or one like it) the request's consumer, as Kong's
    set_consumer does (kong/plugins/key-auth/handler.lua: kong.client.authenticate, then kong.service.request.
    set_header / clear_header of the consumer headers): the request's own headers change, so the plugins after it
    (request-transformer, rate-limiting by header, the log) read the consumer's, and a client's copy is gone. Every
    consumer header (and its underscore spelling) is taken out, then `who.upstream_headers` appended, each replacing
    a header of its name (set_header: ai-mcp-oauth2's claim headers, written again when acl adds X-Consumer-Groups):
    they must be final when this is called."""
    ex.consumer = who
    own = who.upstream_headers
    names = _CONSUMER_NAMES
    for hv in own:
        if hv[0] not in names:
            names = names | {hv[0]}
    request = ex.request
    request.headers = [hv for hv in request.headers if hv[0] not in names] + own


def inbound_via(http_version: bytes) -> bytes:
    """Kong's `ngx.req.http_version() .. " " .. server tokens`: the version is a Lua number, so HTTP/1.0 prints as 1."""
    return INBOUND_VIA if http_version == b"1.1" else b"1 " + SERVER_TOKEN if http_version == b"1.0" else \
        http_version + b" " + SERVER_TOKEN


def asks_trailers(headers: Headers) -> bool:
    """Whether a request's (first) TE header lists `trailers`, Kong's test (kong/runloop/handler.lua: its csv of
    the value in lower case, tokens trimmed) for sending `TE: trailers` upstream and keeping an answer's Trailer."""
    for name, value in headers:
        if name == b"te":
            return any(token.strip() == b"trailers" for token in value.lower().split(b","))
    return False


# Never dropped because a Connection header names them: removing a framing header would change where the message
# ends (a body sent on without its Content-Length is lost, or worse, read as the next request), so they are not
# connection options whatever the peer says; nginx forwards the body too.
_NOT_OPTIONS = frozenset({b"close", b"keep-alive", b"", b"content-length", b"transfer-encoding", b"host"})


def _options(value: bytes) -> frozenset[bytes]:
    """The header names one Connection value lists as connection options (none for `keep-alive` or `close`)."""
    return frozenset({t.strip().lower() for t in value.split(b",")} - _NOT_OPTIONS)


# A Connection value -> the options it names, worked out once per value: an upstream sends the same one with every
# response (`CONNECTION_OPTIONS[value]`: a hit costs no Python call).
CONNECTION_OPTIONS: Derived[bytes, frozenset[bytes]] = Derived(_options, 256)


def connection_options(value: bytes) -> frozenset[bytes]:
    """CONNECTION_OPTIONS[value], for a caller that wants a function."""
    return CONNECTION_OPTIONS[value]


def connection_tokens(headers: Headers) -> frozenset[bytes] | None:
    """The header names the first Connection line lists as connection options (to drop at the hop), or None: Kong
    reads that line only (kong/runloop/handler.lua:1435, get_header taking value[1] of a repeated header:
    kong/tools/http.lua:563-564), so an option a later line names goes upstream."""
    for name, value in headers:
        if name == b"connection":
            return CONNECTION_OPTIONS[value] or None
    return None


def upgrade_asked(request: Request) -> bool:
    """Whether a request asks to switch to WebSocket, as Kong reads it (kong/runloop/handler.lua:1330-1333: its first
    Upgrade line is `websocket` in any case, whatever its method, HTTP version, body or Connection; only a WebSocket
    upgrade is passed on, and nginx tunnels a 101 to it). Otherwise it is an ordinary request, Upgrade dropped as
    hop-by-hop. (A body goes first, framed by its Content-Length; upstream_request_headers never asks for a chunked
    one.)"""
    for name, value in request.headers:
        if name == b"upgrade":
            return value.strip().lower() == b"websocket"
    return False


def framed_by_length(headers: Headers, size: int) -> Headers:
    """Upstream `headers` for a body of `size` bytes a plugin set (Exchange.replace_body): one Content-Length, that
    size, and no Transfer-Encoding, whatever the plugins left in the request's headers. As ngx.req.set_body_data
    (lua-nginx-module ngx_http_lua_req_body.c: content_length_n = body.len, the header rewritten), but also against
    a length a plugin set after the body: framing that disagrees with the bytes sent desynchronises the upstream."""
    out = [hv for hv in headers if hv[0] != b"content-length" and hv[0] != b"transfer-encoding"]
    out.append((b"content-length", b"%d" % size))
    return out


def kong_forwarded_reads(headers: Headers) -> dict[bytes, bytes]:
    """The values Kong's get_header("x_forwarded_*", ctx) finds, by dashed name: the first line spelled with
    underscores, else the first dashed one, among the first MAX_REQ_HEADERS lines (ngx.req.get_headers(), capped at
    lua_max_req_headers by kong/globalpatches.lua:131-156); a name Kong finds no line of is absent."""
    dashed: dict[bytes, bytes] = {}
    underscored: dict[bytes, bytes] = {}
    for name, value in headers[:MAX_REQ_HEADERS]:
        if name in _UNDERSCORED:
            underscored.setdefault(_UNDERSCORED[name], value)
        elif name in _FORWARDED or name == b"x-forwarded-for":
            dashed.setdefault(name, value)
    return dashed | underscored


def upstream_request_headers(ex: Exchange, affinity: bool = False,
                             prefix: bytes = b"") -> tuple[Headers, bytes, bytes, bytes | None, int]:
    """(headers for upstream without Host, the client's Host value, the X-Request-Id (the client's when sane, else
    the request's own id, which this sets as ex.request_id: Kong's, for X-Kong-Request-Id), the client's Mcp-Session-Id,
    how the headers frame the body: codec.NO_BODY, LENGTH or CHUNKED, a chunked body being re-framed chunked; or
    UPGRADE for a request that asks to switch protocols, with Kong's Upgrade and Connection headers added).

    Kong's X-Forwarded-*: from a trusted peer, its X-Forwarded-Proto/Host/Port/Path/Prefix are kept (the first of
    each, as Kong reads them: one line upstream; Kong reads a line spelled with underscores first, and none after the
    100th: kong_forwarded_reads); otherwise they are the gateway's own (X-Forwarded-Host nginx's
    $host: the Host without its port, in lower case; -Path the request's path; -Prefix `prefix`, the part a
    strip_path route matched, unless empty or "/"). An X-Forwarded-For the request has gets the peer appended, from
    any peer as Kong does (the last hop is the one to believe); without one it is the client address. X-Real-IP is
    the client address. Via is Kong's, `1.1 <token>` after the client's first Via if any; a Proxy header is dropped;
    `Connection: keep-alive` goes with every request but an upgrade (Kong's upstream_connection); `TE: trailers`
    goes when the client's TE lists trailers.
    Consumer headers come only from the request's consumer: without one (ex.consumer None) the client's copies are
    dropped; with one, set_consumer already wrote the consumer's into the request, and they pass as the plugins left
    them (an underscore spelling is dropped either way). With `affinity` the client's
    Mcp-Session-Id is taken out (the caller puts the upstream's own id back); otherwise it passes through like any
    header and None is returned for it."""
    request = ex.request
    headers = request.headers
    trusted = ex.peer_trusted
    # 1: a Connection header (the headers it names are dropped too), 2: an Upgrade (after the loop), 4: an
    # X-Forwarded-For or a Via (the client's first line of each kept, an empty one too, as Kong reads them), 8: a
    # forwarding header spelled with underscores, 16: a trusted peer's X-Forwarded-Proto/Host/Port/Path/Prefix
    connection = 0
    framing = NO_BODY
    out: Headers = []
    host = b""
    xff: bytes | None = None
    via: bytes | None = None
    request_id = b""
    session_id = None
    te = False
    seen_forwarded = set() if trusted else _NOTHING_SEEN
    special = _SPECIAL_IN if ex.consumer is None else _SPECIAL_IN_AUTHENTICATED
    for hv in headers:
        name = hv[0]
        if name in special:
            if name == b"host":
                host = hv[1]
                continue
            if name == b"content-length":  # (the usual ones first)
                framing = LENGTH
                if hv[1][0] == 48 and len(hv[1]) > 1:  # `003`: nginx sends the number ($proxy_internal_body_length)
                    hv = (name, hv[1].lstrip(b"0") or b"0")
            elif name == b"x-forwarded-for":  # kept, the peer appended (Kong: a client's too, the last hop being ours)
                if xff is None:  # (Kong's get_header reads the first line of a repeated one)
                    xff = hv[1]
                    connection |= 4
                continue
            elif name == b"x-request-id":
                if not request_id and valid_request_id(hv[1]):
                    request_id = hv[1]
                continue
            elif name == b"mcp-session-id":
                if affinity:
                    session_id = hv[1]
                    continue
            elif name == b"x-kong-request-id":
                if ex.settings.request_id_upstream:
                    continue  # replaced by ours (headers_upstream)
            elif name in _FORWARDED:
                if not trusted or name in seen_forwarded:
                    continue
                seen_forwarded.add(name)
                connection |= 16
                if not hv[1]:  # Kong keeps the empty value, and nginx's proxy_set_header sends no empty header
                    continue
            else:
                if name == b"connection":
                    connection |= 1
                elif name == b"transfer-encoding":
                    framing = CHUNKED  # chunked, and nothing else: gateway.http.codec.check_request_head
                elif name == b"via" and via is None:
                    via = hv[1]
                    connection |= 4
                elif name == b"te":
                    te = True
                elif name == b"upgrade":
                    connection |= 2
                elif name in _UNDERSCORED:  # passed on; read after the loop
                    connection |= 12
                    out.append(hv)
                continue  # hop-by-hop, consumer headers, expect, x-real-ip, proxy, via
        out.append(hv)
    if connection:
        if connection & 8 or (connection & 20 and len(headers) > MAX_REQ_HEADERS):  # the lines Kong reads differ
            reads = kong_forwarded_reads(headers)
            xff = reads.pop(b"x-forwarded-for", None)
            if trusted:  # the values Kong read replace the lines kept
                out = [hv for hv in out if hv[0] not in _FORWARDED]
                out += [(name, value) for name, value in reads.items() if value]
                seen_forwarded = set(reads)
        if connection & 1 and (named := connection_tokens(headers)):  # (a trusted peer's X-Forwarded-* Kong read
            out = [hv for hv in out if hv[0] not in named or hv[0] in seen_forwarded]  # before it dropped these)
        if connection & 2 and framing != CHUNKED and upgrade_asked(request):  # (a chunked body: no upgrade)
            framing = UPGRADE  # Kong's upstream_upgrade and upstream_connection: added last
    kong_id = ex.request_id = new_request_id()  # Kong's id of the request, whatever X-Request-Id the client sent
    if not request_id:
        request_id = kong_id
    if trusted:
        client_ip = ex.client_ip.encode()
        out.append((b"x-forwarded-for", xff + b", " + ex.peer_ip.encode() if xff is not None else client_ip))
        if b"x-forwarded-proto" not in seen_forwarded:
            out.append((b"x-forwarded-proto", ex.conn.scheme))
        if b"x-forwarded-host" not in seen_forwarded:
            out.append((b"x-forwarded-host", NGINX_HOSTS[host] if host else SERVER_NAME))
        if b"x-forwarded-port" not in seen_forwarded:
            out.append((b"x-forwarded-port", ex.conn.listen_port))
        if b"x-forwarded-path" not in seen_forwarded:
            out.append((b"x-forwarded-path", request.target.partition(b"?")[0]))
        if b"x-forwarded-prefix" not in seen_forwarded and prefix and prefix != b"/":
            out.append((b"x-forwarded-prefix", prefix))
        out.append((b"x-real-ip", client_ip))
        out.append(_KEEP_ALIVE)
        inbound = inbound_via(request.http_version)
        out.append((b"via", via + b", " + inbound if via is not None else inbound))
    else:
        conn = ex.conn
        key = (ex.client_ip, conn.scheme, conn.listen_port, host)
        own = _OWN_FORWARDED.get(key)
        if own is None:
            ip = key[0].encode()
            own = _OWN_FORWARDED.keep(key, [(b"x-forwarded-for", ip), (b"x-forwarded-proto", key[1]),
                                            (b"x-forwarded-port", key[2]), (b"x-real-ip", ip), _KEEP_ALIVE,
                                            _INBOUND_VIA,
                                            (b"x-forwarded-host", NGINX_HOSTS[host] if host else SERVER_NAME)])
        if connection & 4 or request.http_version != b"1.1":  # rare: a client (or a balancer not trusted) sent one
            out.append((b"x-forwarded-for", xff + b", " + ex.peer_ip.encode()) if xff is not None else own[0])
            out += own[1:5]
            inbound = inbound_via(request.http_version)
            out.append((b"via", via + b", " + inbound if via is not None else inbound))
            out.append(own[6])  # X-Forwarded-Host
        else:
            out += own
        out.append((b"x-forwarded-path", request.target.partition(b"?")[0]))
        if prefix and prefix != b"/":
            out.append((b"x-forwarded-prefix", prefix))
    out.append((b"x-request-id", request_id))
    if ex.settings.request_id_upstream:  # kong.conf's headers_upstream
        out.append((b"x-kong-request-id", kong_id))
    if te and asks_trailers(headers):  # Kong's upstream_te (the gateway drops trailers, as nginx's proxy does)
        out.append(_TE_TRAILERS)
    if framing > LENGTH:  # (one test for the two rare cases)
        if framing == CHUNKED:
            out.append((b"transfer-encoding", b"chunked"))
        else:  # UPGRADE
            out.remove(_KEEP_ALIVE)
            out += _UPGRADE_HEADERS
    return out, host, request_id, session_id, framing
