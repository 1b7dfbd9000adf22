"""Kong's proxy-cache (kong/plugins/proxy-cache/handler.lua), strategy memory: responses kept in a host-wide cache
dictionary of the state keeper (Kong's shared dict, which all nginx workers of a host share).

access: a request that cannot be cached gets X-Cache-Status: Bypass. Otherwise its key (gateway.policies.proxy_cache
.cache_key) is set as X-Cache-Key and looked up: a fresh entry is the answer (X-Cache-Status: Hit, Age), the upstream
is not contacted and no later plugin's access step runs (their header and body filters do, on the cached response);
no entry: X-Cache-Status: Miss, or nginx's 504 error page for Cache-Control: only-if-cached (with cache_control:
Kong's body-less kong.response.exit(504)); a stale one: Refresh. An entry that cannot be read is left alone (logged;
no X-Cache-Status); one of another format version is purged (Bypass). Miss, Refresh and that Bypass go upstream, and
the response may be stored.

Where Kong's Lua fails (a Cache-Control or query argument it cannot read: see rules and cache_key), LuaError is
raised: in access the pipeline answers Kong's 500 and the upstream is not contacted; in header_filter the request
ends with no answer, as Kong's failed header filter.

header_filter: the response is stored only when cacheable (gateway.policies.proxy_cache.rules), else X-Cache-Status
becomes Bypass. Its headers are kept as they are at this point (the gateway's X-Request-Id apart: Kong adds its
request id after the plugins); its body, read whole for body_filter (up to RESPONSE_BODY_LIMIT; a longer one streams
unchanged and is not stored), is stored with them for storage_ttl, else the Cache-Control TTL (cache_control), else
cache_ttl. As in nginx, a HEAD request's response has no body for body_filter, so is never stored; nor is a 204 or
304 of the gateway's own (request-termination's), which nginx makes header-only (it has no upstream's status line).
A proxied 204 or 304 keeps the upstream's status line, so its empty body reaches body_filter and is stored, as Kong
stores "". An entry over gateway.stores.cache.ENTRY_LIMIT is not stored (logged): the response goes out as the
Miss it said it was, as Kong's does when the shared dict refuses it; so is one whose TTL is infinite
(Cache-Control: max-age=inf with cache_control), which Kong's cjson cannot encode.

On a hit the stored headers are sent without the hop-by-hop ones, Content-Length (the body's own is set) and any
"ratelimit-remaining" header (Kong's rule); Age, X-Cache-Status and X-Cache-Key are set again. Kong sets the stored
headers with ngx.header, so a name's "_" goes out as "-" (`x_foo` as `x-foo`; a miss sends the upstream's name as it
is): the names are so written when the entry is stored (entry.sent_names), and one that becomes a name the hit does
not send (`content_length`, `keep_alive`) is not sent either (Kong would set Content-Length to the stored value, and
pass a Keep-Alive line on). A 204 hit goes without Content-Type, as nginx's header filter drops it from
kong.response.exit's 204 (no upstream status line).
The diagnostic headers follow response_headers (age, X-Cache-Status, X-Cache-Key), or are all sent when the request
has a Kong-Debug header.

Only the response header_filter judged is stored. The header filters run again, with this plugin's decision made,
on an answer the gateway sends in place of one whose head they saw: its 502 or 504 page when an upstream body read
whole for body_filter breaks off or stalls (gateway.pipeline.phases.read_whole_body). That answer is not stored,
whatever its status (X-Cache-Status: Bypass), as Kong stores nothing when the body never reaches its end
(body_filter stores at eof only; nginx ends a cut upstream response without it). A gateway page that is the
request's only answer (an upstream down: 502) is judged as any response.

What access sets for the response (X-Cache-Key, X-Cache-Status) is added when this plugin's header_filter runs:
Kong sets it in access, where the header filters of plugins of higher priority see it too. The answer of a plugin
after this one (request-termination) is a response like any: it may be stored, as in Kong.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from gateway.http.codec import Headers
from gateway.http.ids import new_request_id, x_request_id
from gateway.http.kong_headers import PROXIED
from gateway.http.server import Exchange
from gateway.policies.header_list import set_header
from gateway.policies.llm_request import raw_body
from gateway.policies.proxy_cache import cache_key
from gateway.policies.proxy_cache.entry import VERSION, Entry, decode, encode, sent_names, stored_number
from gateway.policies.proxy_cache.rules import Rules, header_value, parse_directives
from gateway.policies.proxy_cache.schema import ProxyCacheConfig
from gateway.stores.cache import ENTRY_LIMIT

log = logging.getLogger("gateway.policies.proxy_cache")

STATE_KEY = "proxy-cache"  # ex.state: the request's _Pending
# Not served from a stored entry (Kong's hop_by_hop_headers, with content-length), nor the headers the plugin sets
_NOT_SERVED = frozenset({b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
                         b"trailers", b"transfer-encoding", b"upgrade", b"content-length", b"age", b"x-cache-status",
                         b"x-cache-key", b"x-request-id"})
_NO_BODY = frozenset({204, 304})  # header-only without an upstream's status line: no body filter runs for them
_STATUS, _KEY, _AGE = b"x-cache-status", b"x-cache-key", b"age"


def now() -> int:
    """ngx.time(): the wall clock in whole seconds (a module function, so tests can move it)."""
    return int(time.time())


class _Pending:
    """One request's dealings with the plugin, from access to body_filter."""

    __slots__ = ("key", "debug", "req_body", "decided", "cacheable", "res_headers", "res_ttl")

    def __init__(self, debug: bool) -> None:
        self.key: str | None = None  # set when the response may be stored under this key
        self.debug = debug
        self.req_body: bytes | None = None
        self.decided = False  # header_filter ran
        self.cacheable = False
        self.res_headers: Headers = []
        self.res_ttl: float = 0


def _debug(headers: Headers) -> bool:
    """$http_kong_debug is set: a Kong-Debug header, whatever its value."""
    return any(len(n) == 10 and n.replace(b"_", b"-") == b"kong-debug" for n, _ in headers)


def _state(ex: Exchange) -> _Pending | None:
    state = ex.state
    return state.get(STATE_KEY) if state is not None else None


class ProxyCache:
    name = "proxy-cache"
    priority = 100  # Kong's

    def __init__(self, config: ProxyCacheConfig, shared: Any = None) -> None:
        self.entry_limit = ENTRY_LIMIT  # the largest entry the keeper takes
        self.rules = Rules(config)
        self.shared = shared
        self.dictionary = config.memory.dictionary_name
        self.cache_control = config.cache_control
        self.ignore_uri_case = bool(config.ignore_uri_case)  # (null: off)
        self.storage_ttl = float(config.storage_ttl) if config.storage_ttl is not None else None  # Lua's number
        self.vary_query_params = config.vary_query_params
        self.vary_headers = config.vary_headers
        shown = config.response_headers
        self.show_age, self.show_status, self.show_key = \
            bool(shown.age), bool(shown.x_cache_status), bool(shown.x_cache_key)  # (null: off)

    def key_of(self, ex: Exchange) -> str:
        req = ex.request
        consumer = ex.consumer
        route = ex.route
        facts = route.facts if route is not None else None
        # ngx.var.request: the request line as the client sent it, whatever request-transformer made of the method,
        # an absolute-form target as it was (its entry is not the origin form's, which it could otherwise fill)
        uri = cache_key.request_uri(ex.request_line_method(), req.absolute or ex.request_uri(), req.http_version,
                                    self.ignore_uri_case)
        return cache_key.build_cache_key(
            consumer.id if consumer is not None else None, facts.route_id if facts is not None else None,
            req.method, uri, cache_key.uri_args(req.target.partition(b"?")[2]),
            cache_key.header_args(req.headers) if self.vary_headers else {}, self.vary_query_params,
            self.vary_headers)

    async def access(self, ex: Exchange) -> bool:
        req = ex.request
        pending = _Pending(_debug(req.headers))
        if ex.state is None:
            ex.state = {}
        ex.state[STATE_KEY] = pending
        cc = parse_directives(header_value(req.headers, b"cache-control"))
        if not self.rules.cacheable_request(req.method, cc):
            if pending.debug or self.show_status:
                ex.set_response_header(_STATUS, b"Bypass")  # (set in access, as Kong: header filters see it)
            return False
        key = self.key_of(ex)
        if pending.debug or self.show_key:
            ex.set_response_header(_KEY, key.encode())
        raw = await self.shared.cache_fetch(self.dictionary, key) if self.shared is not None else None
        if raw is None:
            if self.cache_control and b"only-if-cached" in cc:
                await ex.respond_error_page(504)  # kong.response.exit(504): no body, so nginx's error page
                return True
            pending.req_body = await raw_body(ex, 0)  # Kong's get_raw_body(): the body nginx kept in memory
            self._signal(ex, pending, key, b"Miss")
            return False
        entry = decode(raw)
        if entry is None:
            log.error("proxy-cache: could not decode request object %s in %s", key, self.dictionary)
            return False
        if entry.version != VERSION:
            log.info("proxy-cache: cache format mismatch, purging %s", key)
            if self.shared is not None:
                self.shared.cache_purge(self.dictionary, key)
            self._signal(ex, pending, key, b"Bypass")
            return False
        t = now()
        if self.rules.freshness(entry.timestamp, entry.ttl, t, cc) == "Refresh":
            self._signal(ex, pending, key, b"Refresh")
            return False
        del ex.state[STATE_KEY]  # the answer carries its own X-Cache-* headers
        await self._answer(ex, entry, key, t, pending.debug)
        return True

    def _signal(self, ex: Exchange, pending: _Pending, key: str, status: bytes) -> None:
        """Kong's signal_cache_req: the response may be stored; X-Cache-Status says why it was fetched."""
        pending.key = key
        if pending.debug or self.show_status:
            ex.set_response_header(_STATUS, status)

    async def _answer(self, ex: Exchange, entry: Entry, key: str, t: int, debug: bool) -> None:
        headers: Headers
        if entry.sent_names is None:
            headers = [hv for hv in entry.headers
                       if hv[0] not in _NOT_SERVED and b"ratelimit-remaining" not in hv[0]
                       and not (entry.status == 204 and hv[0] == b"content-type")]
        else:  # Kong tests the stored name for a rate-limiting header, nginx the name sent
            headers = [(sent, value) for (name, value), sent in zip(entry.headers, entry.sent_names, strict=False)
                       if sent not in _NOT_SERVED and b"ratelimit-remaining" not in name
                       and not (entry.status == 204 and sent == b"content-type")]
        if debug or self.show_age:
            headers.append((_AGE, b"%d" % (t - entry.timestamp)))
        if debug or self.show_status:
            headers.append((_STATUS, b"Hit"))
        if debug or self.show_key:
            headers.append((_KEY, key.encode()))
        headers.append((b"content-length", b"%d" % len(entry.body)))
        if not ex.request_id:
            ex.request_id = new_request_id()
        headers.append((b"x-request-id", x_request_id(ex.request.headers, ex.request_id)))
        # an unread request body is read and dropped after the answer, as nginx discards it when Kong answers from
        # the cache (gateway.http.server's _drain_request): the connection stays kept alive
        ex.state[PROXIED] = True  # type: ignore[index]  # Kong's KONG_PROXIED: a proxied response's headers
        await ex.send_head(entry.status, headers, entry.body, end=True)

    def header_filter(self, ex: Exchange, status: int, headers: Headers) -> Headers:
        pending = _state(ex)
        if pending is None:
            return headers
        if pending.decided:  # a second response: see the module doc (a gateway page in place of the one judged)
            pending.key = None
            pending.cacheable = False
            if pending.debug or self.show_status:
                set_header(headers, _STATUS, b"Bypass")
            return headers
        pending.decided = True
        if pending.key is None:
            return headers
        t = now()
        if self.rules.cacheable_response(status, headers, t):
            pending.cacheable = True
            pending.res_headers = [hv for hv in headers if hv[0] != b"x-request-id"]
            pending.res_ttl = self.rules.response_ttl(headers, t)
        else:
            pending.key = None
            if pending.debug or self.show_status:
                set_header(headers, _STATUS, b"Bypass")
        return headers

    def wants_body(self, ex: Exchange, status: int, headers: Headers) -> bool:
        pending = _state(ex)
        if pending is None or pending.key is None:
            return False
        if pending.decided:
            return pending.cacheable
        # asked before the header filters ran (whether to read an upstream body whole): the upstream's headers say
        return self.rules.cacheable_response(status, headers, now())

    def body_filter(self, ex: Exchange, status: int, headers: Headers, body: bytes) -> bytes:
        pending = _state(ex)
        if pending is None or not pending.cacheable or pending.key is None:
            return body
        key, pending.key = pending.key, None
        if status in _NO_BODY and not ex.tries:  # the gateway's own (nginx's header filter: header-only)
            return body
        if not math.isfinite(pending.res_ttl):  # max-age=inf: cjson refuses the entry, Kong's strategy stores nothing
            log.warning("proxy-cache: could not encode request object %s (its ttl is %s)", key, pending.res_ttl)
            return body
        ttl = self.storage_ttl if self.storage_ttl is not None else \
            pending.res_ttl if self.cache_control else self.rules.cache_ttl
        if ttl < 0:
            log.warning("proxy-cache: storage_ttl %s is negative: %s not stored", ttl, key)
            return body
        raw = encode(Entry(status=status, headers=pending.res_headers, body=body, timestamp=now(),
                           ttl=stored_number(pending.res_ttl), req_body=pending.req_body,
                           sent_names=sent_names(pending.res_headers)))
        if len(raw) > self.entry_limit:
            log.warning("proxy-cache: could not store %s in %s: no memory (an entry of %d bytes, %d at most)", key,
                        self.dictionary, len(raw), self.entry_limit)
            return body
        if self.shared is not None:
            self.shared.cache_store(self.dictionary, key, raw, ttl)
        return body
