"""Kong's cors (kong/plugins/cors/handler.lua): a preflight (OPTIONS with Origin and Access-Control-Request-Method)
is answered 200 with the Access-Control-Allow-* headers unless preflight_continue; every other response of the
request, proxied or the gateway's own, gets Access-Control-Allow-Origin (and -Credentials, -Expose-Headers) in the
header_filter phase.

Origins: none or "*" allow all; a single plain origin is always sent as is; otherwise the request's Origin is
normalised (scheme://host[:port], default ports dropped) and compared with each plain entry, or matched by each
regex entry (anchored at both ends; against the host alone when the entry has no ":"), as Kong's ngx.re.find "ajo"
runs it, on PCRE2 (gateway.policies.pcre2): over the bytes, without UTF, under Kong's match limit; a regex that
fails (the match limit reached) is logged and allows nothing, as in Kong.

Compiled once: what Kong's configure_origin and configure_credentials do to the response headers (set, add and clear
calls, in order) depends only on the config and the request's Origin, never on the response. So it is worked out
once per config (`Plan`), or once per distinct Origin when the config makes it depend on one (a bounded memo), as
the names whose headers go and the (escaped) headers appended at the end; a response then costs one look for those
names and one extend. The result is the header list the calls one by one would have left.

A header Kong sets to "" (a preflight's Access-Control-Allow-Methods for `methods: []`, its Access-Control-Allow-
Headers for an empty Access-Control-Request-Headers) is not sent: lua-nginx-module's ngx_http_set_header_helper
gives an empty value hash 0, which nginx's header filter skips.
"""

from __future__ import annotations

import logging
import re
from operator import itemgetter

from gateway.http.codec import Headers
from gateway.http.server import Exchange
from gateway.memo import Memo
from gateway.policies.cors.schema import METHODS, PLAIN, CorsConfig
from gateway.policies.header_list import escape_value, get_header
from gateway.policies.pcre2 import ANCHORED, PcreMatchError, Regex

log = logging.getLogger("gateway.policies")
# LuaSocket 3.0-rc1's url.parse patterns (src/url.lua:135-164, the version kong-3.9.3-0.rockspec:17 pins): the
# fragment "#(.*)$" first, "^([%w][%w%+%-%.]*)%:", the authority "^//([^/]*)" (a "?" in it is its own) and the
# port's ":([^:%]]*)$"
_SCHEME = re.compile(r"([A-Za-z0-9][A-Za-z0-9+\-.]*):")
_AUTHORITY_END = re.compile(r"[/#]")
_PORT = re.compile(r":([^:\]]*)\Z")
_CACHE_SIZE = 10000  # plans kept per distinct request Origin (Kong keeps an lrucache of 10e3 normalised origins)
_ACAO, _ACAC, _VARY = b"access-control-allow-origin", b"access-control-allow-credentials", b"vary"
_ACEH, _ACAH = b"access-control-expose-headers", b"access-control-allow-headers"
_ACAM, _ACMA = b"access-control-allow-methods", b"access-control-max-age"
_ACAPN = b"access-control-allow-private-network"
_SKIP = "cors:preflight"  # ex.state key: the preflight was answered by access, header_filter adds nothing
_NAME = itemgetter(0)

# What configure_origin / configure_credentials (and the expose header) do to a response's headers: the names
# whose headers are removed from the response's (set or cleared), and the headers then appended, in order.
Plan = tuple[frozenset[bytes], Headers]


class _Origin:
    __slots__ = ("domain", "host")

    def __init__(self, domain: str, host: str) -> None:
        self.domain = domain
        self.host = host


def normalize_origin(text: str) -> _Origin:
    """Kong's normalize_origin over LuaSocket's url.parse: scheme://host[:port] as written, but for a port of exactly
    "80" (http) or "443" (https), which is dropped; (text, text) when it names no host."""
    rest, scheme = text, ""
    found = _SCHEME.match(rest)
    if found is not None:
        scheme, rest = found[1], rest[found.end():]
    if not rest.startswith("//"):
        return _Origin(text, text)
    authority = _AUTHORITY_END.split(rest[2:], maxsplit=1)[0]
    authority = authority.partition("@")[2] if "@" in authority else authority
    port = None
    found = _PORT.search(authority)
    if found is not None:
        port, authority = found[1], authority[:found.start()]
    if not authority:
        return _Origin(text, text)
    host = authority[1:-1] if len(authority) > 2 and authority[0] == "[" and authority[-1] == "]" else authority
    if (scheme == "http" and port == "80") or (scheme == "https" and port == "443"):
        port = None
    domain = (f"{scheme}://" if scheme else "") + host + (f":{port}" if port is not None else "")
    return _Origin(domain, host)


class _Calls:
    """kong.response.set_header / add_header / clear_header recorded against headers not yet seen: a set or clear
    removes every header of its name, those of the response and those appended before it; an add or set appends."""

    __slots__ = ("gone", "tail")

    def __init__(self) -> None:
        self.gone: set[bytes] = set()
        self.tail: Headers = []

    def set(self, name: bytes, value: bytes) -> None:
        self.clear(name)
        self.add(name, value)

    def add(self, name: bytes, value: bytes) -> None:
        self.tail.append((name, escape_value(value)))

    def clear(self, name: bytes) -> None:
        self.gone.add(name)
        self.tail = [hv for hv in self.tail if hv[0] != name]

    def plan(self) -> Plan:
        return frozenset(self.gone), self.tail


def apply_plan(headers: Headers, plan: Plan) -> Headers:
    """The headers as the plan's calls leave them (in place, as kong.response's setters change them)."""
    gone, tail = plan
    if not gone.isdisjoint(map(_NAME, headers)):
        headers[:] = [hv for hv in headers if hv[0] not in gone]
    headers.extend(tail)
    return headers


class Cors:
    name = "cors"
    priority = 2000  # Kong's

    def __init__(self, config: CorsConfig) -> None:
        origins = config.origins or []
        self.allow_all = not origins or origins == ["*"]
        self.single = origins[0].encode() if len(origins) == 1 and PLAIN.match(origins[0]) else None
        self.star_listed = "*" in origins
        # Kong's cached_domains, order aside (any entry matching sends the same normalised Origin): the plain
        # entries' normalised domains, and the regexes with whether they match the host alone (no attribute here may
        # be named `entries`, which marks a logger: gateway.runtime)
        self.plain_domains = frozenset(normalize_origin(entry).domain for entry in origins
                                       if entry != "*" and PLAIN.match(entry))
        self.regexes: list[tuple[Regex, bool]] = []
        for entry in origins:
            if entry != "*" and not PLAIN.match(entry):
                pattern = entry if entry.endswith("$") else entry + "$"
                self.regexes.append((Regex(pattern.removeprefix("^"), ANCHORED), ":" not in entry))
        self.credentials = config.credentials
        self.allow_headers = escape_value(",".join(config.headers).encode()) if config.headers else None
        self.methods = ",".join(config.methods).encode() if config.methods is not None else ",".join(METHODS).encode()
        self.max_age = None if config.max_age is None else b"%.14g" % config.max_age  # Lua's tostring
        self.expose = ",".join(config.exposed_headers).encode() if config.exposed_headers else None
        self.private_network = config.private_network
        self.preflight_continue = config.preflight_continue
        self.allow_origin_absent = config.allow_origin_absent
        # The plans: for a response to a request without an Origin; for every Origin when the config looks at none
        # (a single plain origin; every origin allowed without credentials); else one per Origin, kept as met.
        self.absent_plan = self.plan(None, True)
        origin_free = self.single is not None or (self.allow_all and not self.credentials)
        self.fixed_plan = self.absent_plan if origin_free else None
        self.fixed_preflight = self.plan(None, False) if origin_free else None
        self._plans: Memo[bytes, Plan] = Memo(_CACHE_SIZE)
        self._preflights: Memo[bytes, Plan] = Memo(_CACHE_SIZE)

    async def access(self, ex: Exchange) -> bool:
        request = ex.request
        if request.method != b"OPTIONS":
            return False
        headers = request.headers
        origin = get_header(headers, b"origin")
        if not origin or get_header(headers, b"access-control-request-method") is None:
            return False
        if ex.state is None:
            ex.state = {}
        ex.state[_SKIP] = True
        if self.preflight_continue:
            return False
        plan = self.fixed_preflight
        if plan is None:
            plan = self._preflights.get(origin) or self._preflights.keep(origin, self.plan(origin, False))
        out = list(plan[1])  # (what the plan removes, the new answer has not)
        if self.allow_headers is not None:
            out.append((_ACAH, self.allow_headers))
        else:
            requested = get_header(headers, b"access-control-request-headers")
            if requested:  # (an empty value set is no header line: ngx_http_set_header_helper gives it hash 0)
                out.append((_ACAH, escape_value(requested)))
        if self.methods:  # (`methods: []`: Kong sets "", so none)
            out.append((_ACAM, self.methods))
        if self.max_age is not None:
            out.append((_ACMA, self.max_age))
        if self.private_network and get_header(headers, b"access-control-request-private-network") == b"true":
            out.append((_ACAPN, b"true"))
        out.append((b"content-length", b"0"))
        await ex.send_head(200, out, end=True)
        return True

    def header_filter(self, ex: Exchange, status: int, headers: Headers) -> Headers:
        state = ex.state
        if state is not None and state.get(_SKIP):
            return headers
        origin = get_header(ex.request.headers, b"origin")
        if not origin:
            return apply_plan(headers, self.absent_plan) if self.allow_origin_absent else headers
        plan = self.fixed_plan
        if plan is None:
            plan = self._plans.get(origin) or self._plans.keep(origin, self.plan(origin, True))
        return apply_plan(headers, plan)

    def plan(self, origin: bytes | None, in_filter: bool) -> Plan:
        """What Kong's handler does to the response headers for a request with this Origin (None: without one): in
        header_filter (`in_filter`), configure_origin, configure_credentials and Access-Control-Expose-Headers; in a
        preflight's access, the first two."""
        calls = _Calls()
        allow_all = self._origin(calls, in_filter, origin)
        self._credentials(calls, allow_all, in_filter, origin)
        if in_filter and self.expose is not None:
            calls.set(_ACEH, self.expose)
        return calls.plan()

    def _vary(self, calls: _Calls, in_filter: bool) -> None:
        (calls.add if in_filter else calls.set)(_VARY, b"Origin")

    def _origin(self, calls: _Calls, in_filter: bool, origin: bytes | None) -> bool:
        """Kong's configure_origin: sets Access-Control-Allow-Origin; True when every origin is allowed."""
        if self.allow_all:
            calls.set(_ACAO, b"*")
            return True
        self._vary(calls, in_filter)
        if self.single is not None:
            calls.set(_ACAO, self.single)
            return False
        if origin:
            if self.star_listed:  # "*" among other origins: Kong allows every origin that sends one
                calls.set(_ACAO, b"*")
                return True
            allowed = self._allowed(origin)
            if allowed is not None:
                calls.set(_ACAO, allowed)
                return False
        calls.clear(_ACAO)
        return False

    def _allowed(self, origin: bytes) -> bytes | None:
        """The normalised request Origin when an entry allows it (equal to a plain entry's, or matched by a regex)."""
        req = normalize_origin(origin.decode("latin-1"))
        if req.domain in self.plain_domains:
            return req.domain.encode("latin-1")
        for regex, by_host in self.regexes:
            try:
                if regex.search((req.host if by_host else req.domain).encode("latin-1")):
                    return req.domain.encode("latin-1")
            except PcreMatchError as e:
                log.error("cors: could not search for domain: %s (regex '%s')", e, e.pattern)
        return None

    def _credentials(self, calls: _Calls, allow_all: bool, in_filter: bool, origin: bytes | None) -> None:
        """Kong's configure_credentials."""
        if not self.credentials:
            return
        if not allow_all:
            calls.set(_ACAC, b"true")
        elif origin:
            self._vary(calls, in_filter)
            calls.set(_ACAO, origin)
            calls.set(_ACAC, b"true")
