"""Kong's cors (kong/plugins/cors/handler.lua): a preflight (OPTIONS with Origin and Access-Control-Request-Method)
is answered 200 with the Access-Control-Allow-* headers unless preflight_continue; every other response of the
request, proxied or the gateway's own, gets Access-Control-Allow-Origin (and -Credentials, -Expose-Headers) in the
header_filter phase.

Origins: none or "*" allow all; a single plain origin is always sent as is; otherwise the request's Origin is
normalised (scheme://host[:port], default ports dropped) and compared with each plain entry, or matched by each
regex entry (anchored at both ends; against the host alone when the entry has no ":").
"""

from __future__ import annotations

import re

from gateway.http.codec import Headers
from gateway.http.server import Exchange
from gateway.memo import Memo
from gateway.policies.cors.schema import METHODS, CorsConfig
from gateway.policies.header_list import add_header, clear_header, get_header, set_header

_PLAIN = re.compile(r"^[A-Za-z0-9.:/-]+$")
# LuaSocket's url.parse patterns: "^([%w][%w%+%-%.]*)%:", "^//([^/%?#]*)" and the port's ":([^:%]]*)$"
_SCHEME = re.compile(r"([A-Za-z0-9][A-Za-z0-9+\-.]*):")
_AUTHORITY_END = re.compile(r"[/?#]")
_PORT = re.compile(r":([^:\]]*)\Z")
_CACHE_SIZE = 10000  # normalised request origins kept (Kong's lrucache of 10e3)
_ACAO, _ACAC, _VARY = b"access-control-allow-origin", b"access-control-allow-credentials", b"vary"
_SKIP = "cors:preflight"  # ex.state key: the preflight was answered by access, header_filter adds nothing


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


class Cors:
    name = "cors"
    priority = 2000  # Kong's

    def __init__(self, config: CorsConfig) -> None:
        origins = config.origins or []
        self.allow_all = not origins or origins == ["*"]
        self.single = origins[0].encode() if len(origins) == 1 and _PLAIN.match(origins[0]) else None
        self.star_listed = "*" in origins
        # (regex, "", by host) or (None, normalised domain, by host); not named `entries`, which marks a logger
        # (gateway.runtime)
        self.matchers: list[tuple[re.Pattern[str] | None, str, bool]] = []
        for entry in origins:
            if entry == "*":
                continue
            by_host = ":" not in entry
            if not _PLAIN.match(entry):
                pattern = entry if entry.endswith("$") else entry + "$"
                self.matchers.append((re.compile(pattern.removeprefix("^")), "", by_host))
            else:
                self.matchers.append((None, normalize_origin(entry).domain, by_host))
        self.credentials = config.credentials
        self.allow_headers = ",".join(config.headers).encode() if config.headers else None
        self.methods = ",".join(config.methods).encode() if config.methods is not None else ",".join(METHODS).encode()
        self.max_age = None if config.max_age is None else b"%.14g" % config.max_age  # Lua's tostring
        self.expose = ",".join(config.exposed_headers).encode() if config.exposed_headers else None
        self.private_network = config.private_network
        self.preflight_continue = config.preflight_continue
        self.allow_origin_absent = config.allow_origin_absent
        self._normalized: Memo[str, _Origin] = Memo(_CACHE_SIZE)

    async def access(self, ex: Exchange) -> bool:
        headers = ex.request.headers
        origin = get_header(headers, b"origin")
        if ex.request.method != b"OPTIONS" or not origin or \
                get_header(headers, b"access-control-request-method") is None:
            return False
        if ex.state is None:
            ex.state = {}
        ex.state[_SKIP] = True
        if self.preflight_continue:
            return False
        out: Headers = []
        allow_all = self._origin(out, False, origin)
        self._credentials(out, allow_all, False, origin)
        if self.allow_headers is not None:
            set_header(out, b"access-control-allow-headers", self.allow_headers)
        else:
            requested = get_header(headers, b"access-control-request-headers")
            if requested is not None:
                set_header(out, b"access-control-allow-headers", requested)
        set_header(out, b"access-control-allow-methods", self.methods)
        if self.max_age is not None:
            set_header(out, b"access-control-max-age", self.max_age)
        if self.private_network and get_header(headers, b"access-control-request-private-network") == b"true":
            set_header(out, b"access-control-allow-private-network", b"true")
        out.append((b"content-length", b"0"))
        await ex.send_head(200, out, end=True)
        return True

    def header_filter(self, ex: Exchange, status: int, headers: Headers) -> Headers:
        if ex.state is not None and ex.state.get(_SKIP):
            return headers
        origin = get_header(ex.request.headers, b"origin")
        if not origin and not self.allow_origin_absent:
            return headers
        allow_all = self._origin(headers, True, origin)
        self._credentials(headers, allow_all, True, origin)
        if self.expose is not None:
            set_header(headers, b"access-control-expose-headers", self.expose)
        return headers

    def _vary(self, headers: Headers, in_filter: bool) -> None:
        (add_header if in_filter else set_header)(headers, _VARY, b"Origin")

    def _origin(self, headers: Headers, in_filter: bool, origin: bytes | None) -> bool:
        """Kong's configure_origin: sets Access-Control-Allow-Origin; True when every origin is allowed."""
        if self.allow_all:
            set_header(headers, _ACAO, b"*")
            return True
        self._vary(headers, in_filter)
        if self.single is not None:
            set_header(headers, _ACAO, self.single)
            return False
        if origin:
            if self.star_listed:  # "*" among other origins: Kong allows every origin that sends one
                set_header(headers, _ACAO, b"*")
                return True
            req = self._normalize(origin.decode("latin-1"))
            for regex, domain, by_host in self.matchers:
                if regex is not None:
                    found = regex.match(req.host if by_host else req.domain) is not None
                else:
                    found = req.domain == domain
                if found:
                    set_header(headers, _ACAO, req.domain.encode("latin-1"))
                    return False
        clear_header(headers, _ACAO)
        return False

    def _credentials(self, headers: Headers, allow_all: bool, in_filter: bool, origin: bytes | None) -> None:
        if not self.credentials:
            return
        if not allow_all:
            set_header(headers, _ACAC, b"true")
        elif origin:
            self._vary(headers, in_filter)
            set_header(headers, _ACAO, origin)
            set_header(headers, _ACAC, b"true")

    def _normalize(self, origin: str) -> _Origin:
        cache = self._normalized
        found = cache.get(origin)
        if found is None:
            found = cache.keep(origin, normalize_origin(origin))
        return found
