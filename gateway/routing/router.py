"""Kong's route matching: hosts, methods, headers, query arguments, TLS server names (snis) and paths (prefix or `~`
regex).

Precedence among routes that all match a request is Kong 3.x's (its default router, traditional_compatible:
kong/router/transform.lua get_priority; documented in the README):
1. the route that constrains more categories (hosts, methods, headers, query, snis, paths) wins;
2. then one whose hosts are all plain (no wildcard), `hosts: []` given too (an empty list is a Lua table there);
3. then the one with more headers;
4. then by path: any regex above any prefix, regexes by `regex_priority`, prefixes by length;
5. then, as the ATC router walks matchers of equal priority (atc-router src/router.rs: a BTreeMap of (priority,
   UUID), iterated in reverse), the greater route id, byte-wise: the route's own, Kong's of its name, or its piece's
   when Kong splits it by path (see `_matcher_id`); routes of neither id nor name (Kong makes theirs random) after
   those, in the order they are defined.
Candidates are sorted in that order once, so the first that matches is the answer.
Everything is compiled at config load; matching does no parsing beyond splitting off the query string. As Kong's
router does (kong/router/atc.lua:462-487), recent answers are remembered (MATCH_CACHE of them, for targets and Hosts
of bounded length), keyed by what they depend on: method, target (its query arguments too), Host and SNI; and, only
when some route looks at them, the request's lines of the header names routes use (Kong's key holds those headers'
values, kong/router/fields.lua visit_for_cache_key; lines of other names are not in it), the listener port and the
MCP (method, tool) (a new config builds a new router, and a new memory).

A route's hosts are compared with the Host header as the client sent it, as Kong 3.x's router does (atc.lua `exec`
reads the Host header, not nginx's lower-cased $host; transform.lua writes `http.host == "..."`, `=^` and `^=`): in the
case given on both sides, so `Host: EXAMPLE.test` is not the route host `example.test`, nor `example.test.` (a final
dot is kept). Either side is split at its first `:` (Kong's split_host_port), the rest a port when it is digits:
`[::1]:8000` has no port there, so it is a host of its own, `[::1]` does not match it, and a route host `[::1]:8000`
matches it on any listener.

Kong 3.x's router takes the path (when a route has paths) as UTF-8 text: a request whose normalized path is not gets
no route (Kong logs the router's error and answers 404). A route's header name is read as ngx.req.get_headers()
reads names (in the first MAX_REQ_HEADERS lines): X-Version and x_version are the lines named x_version when the
request has one, else those named x-version; a route's
header value is lower-cased as Lua lower-cases it (ASCII letters only), the request's as Rust does (all of Unicode),
and a `~*` header value is a regex lower-cased whole (escapes too), searched in the lower-cased request value.

A `~` path (and a `~*` header value) is Kong's regex, which Kong's router runs with Rust's regex crate;
gateway.routing.kong_regex compiles it on PCRE2 as that crate reads it, bounded by a match limit. A `~` path is
Kong's `^` glued to the regex and searched: only its first top-level alternative is anchored, and strip_path strips
as many bytes as the match has, from the path's start. When the winning route's regexes have groups, the Match is a
CaptureMatch whose `captures` are their values, Kong's `router_matches.uri_captures` (what `hash_on: uri_capture`
hashes, request-transformer's templates read, and request-termination's echo shows): by number (0 the whole match)
and by name, the path's, then each `~*` header value's over them; other matches cost nothing more.

A route's `snis` constrain https requests only, as Kong's `(net.protocol != "https" || tls.sni == ...)`: a request
over TLS matches when its connection's SNI is one of them (`*.domain` and `name.*` as for hosts, and case-sensitively
as hosts: Kong compares ngx.ssl.server_name() as sent; no SNI matches none), and a plain HTTP request is not asked.

MCP routes may also match the JSON-RPC method (`mcp_methods`) and the tool of a tools/call (`mcp_tools`), each one
more category (a tool implies the method tools/call, so it counts for both). Those need the request's method and
tool name: when a route constraining them could match and the caller passed no `mcp` key, `match` returns
NEEDS_MCP, and the caller looks (headers, or a bounded read of the body) and matches again with
`mcp=(method, tool)`. Requests that no such route could match never pay for that look.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from itertools import chain, compress, islice
from operator import itemgetter
from typing import TYPE_CHECKING, Generic, TypeVar
from urllib.parse import parse_qsl

from gateway.memo import Memo
from gateway.routing.kong_regex import Captures, captures, compile_header, compile_path, took_part
from gateway.routing.normalize import escape_path, header_safe, needs_escape, normalize_path
from gateway.routing.paths import SLASH, sanitize_postfix, upstream_path

if TYPE_CHECKING:
    from gateway.policies.pcre2 import CaptureRegex

T = TypeVar("T")
MATCH_CACHE = 4096  # answers remembered per router (Kong's MATCH_LRUCACHE_SIZE is 5,000)
MAX_CACHED_TARGET = 512  # longer request targets are matched every time, not remembered
MAX_CACHED_HOST = 300  # nor longer Host values (a DNS name is at most 253 bytes)
# nor requests with more lines of the header names routes use, or longer ones (names and values), or a longer MCP
# method and tool name: each answer's key holds them. With every key at its longest the memory holds 6.2 MiB, 7.2
# with routes on headers (measured)
MAX_CACHED_FIELDS = 4
MAX_CACHED_FIELD_BYTES = 256
MAX_CACHED_MCP = 256
# Kong's lua_max_req_headers: its router reads the headers with ngx.req.get_headers(), which stops after that many
# lines (kong/router/fields.lua); the same number as gateway.policies.header_list's, for the plugins
MAX_REQ_HEADERS = 100
# ... and lua_max_resp_headers: what ngx.resp.get_headers() (kong.response.get_headers(), kong.service.response
# .get_header()) reads of a response. It adds Connection, so a response of fewer lines is read whole
# (`resp_get_headers`)
MAX_RESP_HEADERS = 100
_OUTSIDE_LIST = frozenset({b"content-type", b"content-length"})  # nginx's headers_out fields, not list entries
_NAME = itemgetter(0)  # of a header line
_FLAT = chain.from_iterable

_REGEX, _PREFIX, _NO_PATH = 2, 1, 0
# the namespace of the ids Kong gives the pieces of a route it splits by path (kong/router/transform.lua:674)
_SPLIT_NAMESPACE = uuid.UUID("7f145bf9-0dce-4f91-98eb-debbce4b9f6b")


def resp_get_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """A response's lines as Kong's plugins read them (ngx.resp.get_headers() at MAX_RESP_HEADERS): Content-Type and
    Content-Length always (nginx keeps them out of its header list and adds them first), then the other lines up to
    the limit less those and Connection (lua-nginx-module ngx_http_lua_ngx_resp_get_headers: `count = max - extra`)."""
    outside = [hv for hv in headers if hv[0] in _OUTSIDE_LIST]
    room = MAX_RESP_HEADERS - 1 - len({name for name, _ in outside})
    listed = [hv for hv in headers if hv[0] not in _OUTSIDE_LIST]
    return headers if len(listed) <= room else outside + listed[:room]


class RouteSpec(Generic[T]):
    """What a route matches on, plus the payload handed back on a match (the compiled route)."""

    def __init__(self, payload: T, *, paths: Sequence[str] = (), methods: Sequence[str] = (),
                 hosts: Sequence[str] = (), snis: Sequence[str] = (), headers: dict[str, list[str]] | None = None,
                 query: dict[str, list[str]] | None = None, regex_priority: int = 0, strip_path: bool = True,
                 mcp_methods: Sequence[str] = (), mcp_tools: Sequence[str] = (),
                 service_path: str | None = None, hosts_given: bool = False, route_id: str | None = None) -> None:
        self.payload = payload
        self.paths = list(paths)
        self.methods = frozenset(m.encode() for m in methods)
        self.hosts = list(hosts)  # as given: Kong compares them with the Host header in the case of both
        # the config gave hosts, maybe as []: Kong's get_priority sets its plain-host bit for any list (a Lua table)
        self.hosts_given = hosts_given or bool(hosts)
        # Kong's id of the route (given, or its declarative one of the name), which breaks ties; None: Kong's is random
        self.route_id = route_id
        # Kong: a final dot of a name is not used for routing; the case is kept, as for hosts
        self.snis = [s if s.endswith(".*") else s.removesuffix(".") for s in snis]
        self.headers = {k.lower(): v for k, v in (headers or {}).items()}
        self.query = query or {}
        self.regex_priority = regex_priority
        self.strip_path = strip_path
        self.mcp_methods = frozenset(mcp_methods)
        self.mcp_tools = frozenset(mcp_tools)
        # Kong's join of service path, route path and request path (gateway.routing.paths); None: the common case
        # (no service path), where the upstream path is the request path less a stripped prefix
        base = (service_path or "/").encode()
        self.join: bytes | None = None if base == b"/" else base


class Match(Generic[T]):
    """The chosen route and the path to send upstream: Kong's join of the service path and the request path (the
    matched part stripped when strip_path)."""

    __slots__ = ("payload", "path", "query", "prefix")
    captures: Captures | None = None  # a regex path's groups (CaptureMatch)

    def __init__(self, payload: T, path: bytes, query: bytes, prefix: bytes = b"") -> None:
        self.payload = payload
        self.path = path
        self.query = query
        self.prefix = prefix  # the part of the request path a strip_path route matched (Kong's match_t.prefix)

    def rewritten(self, path: bytes | None, query: bytes) -> Match[T]:
        """The same match sending `path` (None: its own) and `query` upstream, as policies changed them."""
        return Match(self.payload, self.path if path is None else path, query, self.prefix)


class CaptureMatch(Match[T]):
    """A match of a regex path with groups: also their values, Kong's `router_matches.uri_captures` (by number, 0 the
    whole match, and by name; a group that took no part: None). Only such routes make one; for the others
    `captures` is Match's class-level None."""

    __slots__ = ("captures",)

    def __init__(self, payload: T, path: bytes, query: bytes, prefix: bytes, captures: Captures) -> None:
        super().__init__(payload, path, query, prefix)
        self.captures = captures

    def rewritten(self, path: bytes | None, query: bytes) -> Match[T]:
        captures: Captures = self.captures  # type: ignore[assignment]  # never None here
        return CaptureMatch(self.payload, self.path if path is None else path, query, self.prefix, captures)


NEEDS_MCP: Match = Match(None, b"", b"")  # returned by Router.match: call again with mcp=(method, tool)
_NO_ROUTE: Match = Match(None, b"", b"")  # a remembered None


class _Candidate(Generic[T]):
    __slots__ = ("spec", "kind", "prefix", "regex", "rank", "exact_hosts", "wild_hosts", "port_hosts", "any_hosts",
                 "exact_snis", "wild_snis", "headers", "header_regex", "capturing", "query", "order", "mcp", "priority")

    def __init__(self, spec: RouteSpec[T], path: str | None, order: int, matcher_id: bytes | None) -> None:
        self.spec = spec
        self.order = order
        self.prefix = b""
        self.regex: CaptureRegex | None = None
        if path is None:
            self.kind = _NO_PATH
        elif path.startswith("~"):
            self.kind = _REGEX
            self.regex = compile_path(path[1:])
        else:
            self.kind = _PREFIX
            self.prefix = normalize_path(path.encode())  # as Kong: compared with normalized request paths
        # mcp_tools implies the method tools/call: it counts as the method category too, so it beats mcp_methods
        categories = sum(map(bool, (spec.paths, spec.methods, spec.hosts, spec.headers, spec.query, spec.snis,
                                    spec.mcp_methods or spec.mcp_tools, spec.mcp_tools)))
        self.mcp = bool(spec.mcp_methods or spec.mcp_tools)
        self.rank = categories
        plain = [split_host_port(h) for h in spec.hosts]
        self.exact_hosts = frozenset(h.encode() for h, p in plain if not _is_wildcard(h) and p is None)
        self.wild_hosts = [_wildcard(h) for h, p in plain if _is_wildcard(h) and p is None]
        # Kong: a host with a port matches that host on a request to that port (the Host header's, else the listener's);
        # "[::1]:8000" has none (split at its first ':'), so it is compared whole
        self.port_hosts = [(h.encode(), _wildcard(h) if _is_wildcard(h) else None, p) for h, p in plain
                           if p is not None]
        self.any_hosts = bool(spec.hosts)
        self.exact_snis = frozenset(s.encode() for s in spec.snis if "*" not in s) if spec.snis else None
        self.wild_snis = [_wildcard(s) for s in spec.snis if "*" in s]
        # Kong looks a route's header up as ngx.req.get_headers() does (see _header_values): X-Version and
        # x_version are the field x_version, read from lines named x_version, else from lines named x-version
        self.headers = [(_HeaderField(k), [_value_matcher(v) for v in vals]) for k, vals in spec.headers.items()]
        self.header_regex = any(not isinstance(m, bytes) for _, ms in self.headers for m in ms)
        self.capturing = self.header_regex or (self.regex is not None and self.regex.groups > 0)
        self.query = list(spec.query.items())
        # Kong 3.x's route priority (kong/router/transform.lua get_priority), highest first: the categories; hosts
        # given and all plain (no wildcard); the number of headers; a regex path above any prefix, by regex_priority;
        # a longer prefix; then the ATC router's tie-break, the greater matcher id; routes without one last, in the
        # order they are defined
        plain_hosts = spec.hosts_given and not any("*" in h for h in spec.hosts)
        self.priority = (categories, plain_hosts, min(len(spec.headers), 255), self.kind == _REGEX,
                         spec.regex_priority if self.kind == _REGEX else 0,
                         len(path) if self.kind == _PREFIX else 0,  # type: ignore[arg-type]
                         matcher_id is not None, matcher_id or b"", -order)


def _matcher_id(spec: RouteSpec[T], path: str | None) -> bytes | None:
    """The id Kong's ATC router files the route's matcher of `path` under (kong/router/atc.lua add_matcher), as bytes:
    the route's own, or, when Kong splits the route by path, its piece's (transform.lua:704-755: a route of more than
    one group of paths, all its regexes one group and the prefixes of each byte length another, numbered from 1 in
    order of first appearance; piece n's id is uuid5 of "<route id>#<n>"). None for a route of random id."""
    if spec.route_id is None:
        return None
    groups = list(dict.fromkeys(map(_path_group, spec.paths)))
    if len(groups) < 2:
        return uuid.UUID(spec.route_id).bytes
    piece = groups.index(_path_group(path)) + 1  # type: ignore[arg-type]  # (a route of paths has no None path)
    return uuid.uuid5(_SPLIT_NAMESPACE, f"{spec.route_id}#{piece}").bytes


def _path_group(path: str) -> int:
    """Kong's group_by_regex_or_length key (transform.lua:687): 0 for a regex, else the prefix's length in bytes."""
    return 0 if path.startswith("~") else len(path.encode())


def _is_wildcard(host: str) -> bool:
    """Kong's host_op_transform: a `*` first or last makes a suffix or prefix match; anywhere else it is a literal
    character (such a host matches only itself)."""
    return host[:1] == "*" or host[-1:] == "*"


def _wildcard(host: str) -> re.Pattern[bytes]:
    """Kong's postfix and prefix matches: "*.example.com" matches any host ending in ".example.com", "example.*"
    any starting "example.", "*foo.test" (an SNI) foo.test itself too."""
    if host[:1] == "*":
        return re.compile(rb".*" + re.escape(host[1:].encode()) + rb"\Z")
    return re.compile(re.escape(host[:-1].encode()) + rb".*\Z")


def split_host_port(host: str) -> tuple[str, int | None]:
    """Kong's split_host_port (kong/router/transform.lua), which splits route hosts and the Host header alike: at the
    first ':', the rest a port when it is a number. "example.test:8000" -> ("example.test", 8000); "[::1]:8000" ->
    ("[::1]:8000", None), the rest after its first ':' being no number; "example.test:" -> itself, no port."""
    name, sep, port = host.partition(":")
    if sep and port.isascii() and port.isdigit():
        return name, int(port)
    if sep and (number := lua_number(port.encode())) is not None:
        return name, _port_of(number)
    return host, None


# What LuaJIT's tonumber() reads as a number (lj_strscan): a sign, then decimal digits with a fraction and an
# exponent, or 0x and hex digits with a fraction and a binary exponent
_LUA_DECIMAL = re.compile(rb"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_LUA_SPECIAL = {b"inf": float("inf"), b"infinity": float("inf"), b"nan": float("nan")}  # lj_strscan.c:381-399, any case
_LUA_HEX = re.compile(rb"[+-]?0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)(?:[pP][+-]?\d+)?")


def lua_number(text: bytes) -> float | None:
    """The number Lua's tonumber() reads in `text` (a Host header's port that is not plain digits: `0x50`, `1e2`,
    `+80`, `80.0`, `inf`, `nan`), or None."""
    special = _LUA_SPECIAL.get((text[1:] if text[:1] in (b"+", b"-") else text).lower())
    if special is not None:
        return -special if text[:1] == b"-" else special
    if _LUA_DECIMAL.fullmatch(text) is not None:
        return float(text)
    if _LUA_HEX.fullmatch(text) is not None:
        sign, digits = (text[:1], text[1:]) if text[:1] in (b"+", b"-") else (b"", text)
        value = float.fromhex(digits.decode() if b"p" in digits.lower() or b"." in digits else digits.decode() + "p0")
        return -value if sign == b"-" else value
    return None


def _port_of(number: float) -> int | None:
    """A port read by tonumber as atc-router takes it into net.dst.port (an integer: truncated); None if infinite."""
    return int(number) if number == number and abs(number) != float("inf") else None


def _value_matcher(value: str) -> CaptureRegex | bytes:
    """Kong (kong/router/transform.lua:438): a route's header value is lower-cased by Lua's `value:lower()` (ASCII
    letters only: `MÜNCHEN` is `mÜnchen`), and compared with the request's lower-cased value; one starting with `~*`
    is a regex, lower-cased whole (escapes too: `\\D` is `\\d` there), searched in it."""
    if value.startswith("~*"):
        return compile_header(value[2:])
    return value.encode().lower()


class Router(Generic[T]):
    """Matches requests against compiled routes."""

    def __init__(self, specs: Sequence[RouteSpec[T]]) -> None:
        cands: list[_Candidate[T]] = []
        for order, spec in enumerate(specs):
            paths: Sequence[str | None] = spec.paths or [None]
            for path in paths:
                cands.append(_Candidate(spec, path, order, _matcher_id(spec, path)))
        # Kong's priority order: the first candidate that matches is the answer.
        cands.sort(key=lambda c: c.priority, reverse=True)
        self._candidates = cands
        # The headers routes name: their values go into Kong's ATC context as text, and one that is not UTF-8 makes
        # the match an error (a 404 whatever the routes, kong/router/fields.lua)
        self._header_fields = {field.under: field for c in cands for field, _ in c.headers}
        self._header_names = frozenset(n for f in self._header_fields.values() for n in (f.under, f.dash))
        # Kong's router takes the request path (when a route has paths) as UTF-8 text: a path that is not is an
        # error, and a 404 whatever the routes (kong/router/atc.lua)
        self._text_path = any(c.kind != _NO_PATH for c in cands)
        self.needs_port = any(c.port_hosts for c in cands)  # the caller passes the listener port only then
        self.needs_sni = any(c.exact_snis is not None for c in cands)  # and the connection's SNI only then
        self.needs_conn = self.needs_port or self.needs_sni
        # the request's key -> the answer (_NO_ROUTE for None): (method, target, Host, SNI), and with routes on
        # headers, the listener port or the MCP call also (port, mcp, the lines of the header names routes use)
        self._answers: Memo[tuple[object, ...], Match[T]] = Memo(MATCH_CACHE)
        self._named = self._header_names.__contains__
        if self._header_names or self.needs_port or any(c.mcp for c in cands):
            # chosen once here, so that configs without such routes pay nothing for them on each request
            self.match = self._match_keyed  # type: ignore[method-assign]

    def match(self, method: bytes, target: bytes, host: bytes | None, headers: list[tuple[bytes, bytes]],
              mcp: tuple[str | None, str | None] | None = None, port: int | None = None,
              sni: bytes | None = None) -> Match[T] | None:
        """The best route for this request, or None (the caller answers 404), or NEEDS_MCP (see the module doc).
        `port` is the listener's (with needs_port), `sni` the TLS server name as sent (b"": none; None: not TLS;
        with needs_sni). The Match may be shared with other requests: read it, do not change it."""
        key = (method, target, host, sni)
        answers = self._answers
        found = answers.get(key)
        if found is None:
            found = self._match(method, target, host, headers, mcp, port, sni) or _NO_ROUTE
            if len(target) <= MAX_CACHED_TARGET and (host is None or len(host) <= MAX_CACHED_HOST):
                answers.keep(key, found)
        return None if found is _NO_ROUTE else found

    def _match_keyed(self, method: bytes, target: bytes, host: bytes | None, headers: list[tuple[bytes, bytes]],
                     mcp: tuple[str | None, str | None] | None = None, port: int | None = None,
                     sni: bytes | None = None) -> Match[T] | None:
        """`match` when routes look at headers, the listener port or the MCP call: the key holds those too, the
        headers as the lines of the names routes use among the first MAX_REQ_HEADERS, in order (all that _match
        reads of them)."""
        fields = tuple(compress(islice(headers, MAX_REQ_HEADERS), map(self._named, map(_NAME, headers))))
        key = (method, target, host, sni, port, mcp, fields)
        answers = self._answers
        found = answers.get(key)
        if found is None:
            found = self._match(method, target, host, headers, mcp, port, sni) or _NO_ROUTE
            if (len(target) <= MAX_CACHED_TARGET and (host is None or len(host) <= MAX_CACHED_HOST)
                    and len(fields) <= MAX_CACHED_FIELDS and sum(map(len, _FLAT(fields))) <= MAX_CACHED_FIELD_BYTES
                    and (mcp is None or len(mcp[0] or "") + len(mcp[1] or "") <= MAX_CACHED_MCP)):
                answers.keep(key, found)
        return None if found is _NO_ROUTE else found

    def _match(self, method: bytes, target: bytes, host: bytes | None, headers: list[tuple[bytes, bytes]],
               mcp: tuple[str | None, str | None] | None = None, port: int | None = None,
               sni: bytes | None = None) -> Match[T] | None:
        raw, sep, query = target.partition(b"?")
        path = normalize_path(raw)  # Kong routes (and strips) the normalized path
        escape = path is not raw or needs_escape(raw)  # (the router remembers its answers: once per target)
        if not path.isascii() and self._text_path:
            try:
                path.decode()
            except UnicodeDecodeError:
                return None
        if self._header_names:
            if len(headers) > MAX_REQ_HEADERS:
                headers = headers[:MAX_REQ_HEADERS]
            if not _texts(headers, self._header_names, self._header_fields):
                return None
        hostname = _host_name(host) if host else b""
        qargs: dict[bytes, list[bytes]] | None = None
        for c in self._candidates:  # in Kong's priority order: the first that matches wins
            spec = c.spec
            if spec.methods and method not in spec.methods:
                continue
            if c.any_hosts and not (
                    hostname in c.exact_hosts or any(w.match(hostname) for w in c.wild_hosts)
                    or (c.port_hosts and _port_host_match(c.port_hosts, hostname, _dst_port(host, port)))):
                continue
            if c.headers and not _headers_match(c.headers, headers):
                continue
            if c.exact_snis is not None and sni is not None and not (  # (b"": a client that sent no SNI)
                    sni in c.exact_snis or (sni and any(w.match(sni) for w in c.wild_snis))):
                continue
            if c.query:
                if qargs is None:
                    qargs = _parse_query(query)
                if not _query_match(c.query, qargs):
                    continue
            kind = c.kind
            spans = None
            if kind == _PREFIX:
                if not path.startswith(c.prefix):
                    continue
                matched = c.prefix
            elif kind == _REGEX:
                spans = c.regex.find(path)  # type: ignore[union-attr]
                if spans is None:
                    continue
                matched = path[spans[0]:spans[1]]  # (found anywhere when the regex's `^` is not on its alternative)
            else:
                matched = b""
            if c.mcp:
                if mcp is None:
                    return NEEDS_MCP
                if not _mcp_match(spec, mcp):
                    continue
            break
        else:
            return None
        spec = c.spec
        found = _captures(c, path, spans, headers) if c.capturing else None
        # Kong strips as many bytes as the match has, counted from the path's start (kong/router/atc.lua:339)
        strip = len(matched)
        prefix = matched if strip and spec.strip_path else b""
        if spec.join is not None:
            path = upstream_path(spec.join, path, strip, spec.strip_path)
        elif strip and spec.strip_path:
            path = path[strip:]
            if not path:
                path = b"/"
            elif path[0] != SLASH:
                path = b"/" + sanitize_postfix(path)  # Kong drops a leading "./" or "../" of what follows
        if escape:  # what normalizing decoded, and what the client sent unescaped, is escaped, as Kong sends it
            path = escape_path(path)
            if prefix:  # (X-Forwarded-Prefix: a regex's match is the client's; a decoded CR LF would add a line)
                prefix = header_safe(prefix)
        if found is not None:
            return CaptureMatch(spec.payload, path, query if sep else b"", prefix, found)
        return Match(spec.payload, path, query if sep else b"", prefix)


def _texts(headers: list[tuple[bytes, bytes]], names: frozenset[bytes], fields: dict[bytes, _HeaderField]) -> bool:
    """Whether the values Kong reads of the header fields routes name (`names`: their spellings) are UTF-8 text. Only
    when a line of such a name has a value that is not ASCII are the fields read one by one (_header_values): a line
    its field does not read (x-version beside an x_version) does not count."""
    if all(value.isascii() for name, value in headers if name in names):
        return True
    for field in fields.values():
        for value in _header_values(headers, field):
            if not value.isascii():
                try:
                    value.decode()
                except UnicodeDecodeError:
                    return False
    return True


def _dst_port(host: bytes | None, listener: int | None) -> int | None:
    """Kong's net.dst.port (kong/router/fields.lua): the Host header's port, split at its first ':' as Kong's
    split_host_port splits it (so an IPv6 literal has none), else the port the request arrived on."""
    if host:
        _, sep, port = host.partition(b":")
        if sep:
            if port.isdigit():
                return int(port)
            if (number := lua_number(port)) is not None:
                return _port_of(number)
    return listener


def _port_host_match(hosts: list[tuple[bytes, re.Pattern[bytes] | None, int]], hostname: bytes,
                     port: int | None) -> bool:
    return any(p == port and (hostname == h if w is None else w.match(hostname) is not None) for h, w, p in hosts)


def _mcp_match(spec: RouteSpec[T], mcp: tuple[str | None, str | None]) -> bool:
    method, tool = mcp
    if spec.mcp_methods and method not in spec.mcp_methods:
        return False
    return not spec.mcp_tools or (method == "tools/call" and tool in spec.mcp_tools)


def _host_name(host: bytes) -> bytes:
    """Kong's http.host of a Host header (atc.lua `matching`, split_host_port): its case kept, the part before the
    first ':' when a number follows, else the whole value ("[::1]:8000" whole, as "example.test:")."""
    name, sep, port = host.partition(b":")
    return name if sep and (port.isdigit() or lua_number(port) is not None) else host


def _lower(value: bytes) -> bytes:
    """A request header value lower-cased as atc-router's `lower()` does (Rust's `to_lowercase`: all of Unicode;
    the router has checked that the values of the headers routes name are UTF-8)."""
    return value.lower() if value.isascii() else value.decode().lower().encode()


class _HeaderField:
    """A route header as Kong's router reads it (kong/router/transform.lua: the field
    http.headers.<name lower-cased, `-` as `_`>, looked up in ngx.req.get_headers()'s table): `under`, its name with
    `_`, and `dash`, with `-`."""

    __slots__ = ("under", "dash")

    def __init__(self, name: str) -> None:
        self.under = name.lower().replace("-", "_").encode()
        self.dash = self.under.replace(b"_", b"-")


def _header_values(headers: list[tuple[bytes, bytes]], field: _HeaderField) -> list[bytes]:
    """The values Kong's router reads for `field` (kong/router/fields.lua:280 `params.headers[name]`): those of the
    lines named `field.under` when the request has one, else of those named `field.dash`, as lua-resty-core's
    req_headers_mt (lib/resty/core/request.lua) tries the key itself before its `_` -> `-` spelling."""
    under = field.under
    values = [value for name, value in headers if name == under]
    if values or under == field.dash:
        return values
    dash = field.dash
    return [value for name, value in headers if name == dash]


def _headers_match(wanted: list[tuple[_HeaderField, list[CaptureRegex | bytes]]],
                   headers: list[tuple[bytes, bytes]]) -> bool:
    for field, matchers in wanted:
        for hvalue in _header_values(headers, field):
            value = _lower(hvalue)
            if any(m == value if isinstance(m, bytes) else m.find(value) is not None for m in matchers):
                break
        else:
            return False
    return True


def _captures(c: _Candidate[T], path: bytes, spans: list[int] | None,
              headers: list[tuple[bytes, bytes]]) -> Captures | None:
    """Kong's uri_captures of the chosen route: atc-router gathers the groups of every regex the route's expression
    matched into one map, in the expression's order (the path, then each header; src/interpreter.rs:76-93), a group
    that took no part left out; kong/router/atc.lua:352-358 keeps it when it holds more than the whole match."""
    if not c.header_regex:  # (a regex path with groups: the common case)
        return captures(c.regex, path, spans) if took_part(spans) > 1 else None  # type: ignore[arg-type]
    found: Captures = {} if spans is None else captures(c.regex, path, spans)  # type: ignore[arg-type]
    for field, matchers in c.headers:
        values = [_lower(hvalue) for hvalue in _header_values(headers, field)]
        for m in matchers:  # the first that matches (`||`), at its first value that does (`any`)
            if isinstance(m, bytes):
                if m in values:
                    break
                continue
            hit = next(((v, s) for v in values if (s := m.find(v)) is not None), None)
            if hit is not None:
                found.update((k, v) for k, v in captures(m, *hit).items() if v is not None)
                break
    return found if sum(v is not None for v in found.values()) > 1 else None


def _parse_query(query: bytes) -> dict[bytes, list[bytes]]:
    """The query's arguments, %XX decoded to the bytes they stand for (latin-1 both ways: byte for byte)."""
    out: dict[bytes, list[bytes]] = {}
    for k, v in parse_qsl(query.decode("latin-1"), keep_blank_values=True, encoding="latin-1"):
        out.setdefault(k.encode("latin-1"), []).append(v.encode("latin-1"))
    return out


def _query_match(wanted: list[tuple[str, list[str]]], args: dict[bytes, list[bytes]]) -> bool:
    for name, values in wanted:
        got = args.get(name.encode())
        if got is None:
            return False
        if values and not any(v.encode() in got for v in values):
            return False
    return True
