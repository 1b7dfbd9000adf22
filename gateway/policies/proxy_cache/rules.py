"""What Kong's proxy-cache caches and serves (kong/plugins/proxy-cache/handler.lua), as pure functions. Sans-I/O.

Requests: cacheable when the method is one of `request_method` and, with `cache_control`, the request's
Cache-Control has neither no-store nor no-cache. (Kong's handler also tests `ngx.var.authorization`, a variable
nginx does not have: an Authorization header never makes a request uncacheable.)

Responses: cacheable when the status is one of `response_code`, the Content-Type matches an entry of
`content_type` (type and subtype equal or "*", and the same parameters, no more, no fewer: values compared as
written, names case-insensitively) and, with `cache_control`, the response's Cache-Control has none of private,
no-store, no-cache and its time to live (s-maxage, else max-age, else Expires - now) is above 0. Vary is not looked
at (Kong's TODO).

A stored entry is served (Hit) unless, without `cache_control`, it is older than `cache_ttl`, or, with it, the
request's Cache-Control says max-age (older than that), max-stale (stale longer than that) or min-fresh (fresh for
less than that): then it is fetched again (Refresh). Times are whole seconds (ngx.time()); numbers and TTLs are
doubles, as Lua's are, so their arithmetic rounds as Kong's does (max-age=99999999999999999999 is 1e20).

Cache-Control is read as Kong's parse_directive_header reads it: split at commas, each `name[=value]` with the name
lower-cased (trailing blanks kept: "max-age =1" names "max-age "), the value a number when Lua's tonumber reads one
(a number past the double range is inf, as LuaJIT reads it: 0x1p99999, or 311 digits). The response's is its lines
named Cache-Control (nginx's $sent_http_cache_control); the request's, and the response's Expires, take a header
named with "_" for "-" too, as nginx's variables for other headers match names.

Where Kong's Lua fails, these raise LuaError (gateway.policies.base): a part starting with "=" before any part was
read (string.lower(nil)); a directive whose value must be a number but is not (max-age="60", a bare max-age) where
Kong compares it with a number (freshness) or takes math.max of it (the response's s-maxage or max-age).
"""

from __future__ import annotations

import re
from typing import Literal

from gateway.http.codec import Headers
from gateway.http.dates import parse_http_time
from gateway.policies.base import LuaError
from gateway.policies.luanumber import tonumber as lua_number
from gateway.policies.proxy_cache.schema import ProxyCacheConfig

Directives = dict[bytes, float | bytes | bool]  # parse_directive_header's table
Freshness = Literal["Hit", "Refresh"]

_PART = re.compile(rb"[^,]+")
_DIRECTIVE = re.compile(rb"[ \t\n\x0b\f\r]*([^=]+)(?:=(.+))?")

# RFC 2045 as kong/tools/mime_type.lua's LPeg grammar has it
_TOKEN = r"[!#$%&'*+\-.0-9A-Z^_`a-z|~]+"
_VALUE = rf'(?:({_TOKEN})|"([^"\x00-\x1f\x7f]*)")'
_PARAMETER = rf"[ \t]*;[ \t]*({_TOKEN})={_VALUE}"
_MEDIA_TYPE = re.compile(rf"(?:({_TOKEN})/({_TOKEN})|\*)((?:{_PARAMETER})*)")
_PARAMETERS = re.compile(_PARAMETER)

MediaType = tuple[str, str, dict[str, str]]


def parse_directives(value: bytes | None) -> Directives:
    """kong.tools.http.parse_directive_header: directive name -> a number, the value as written, or True.
    LuaError for a part starting with "=" (no name) before any other was read: Kong lower-cases the nil capture."""
    out: Directives = {}
    if not value:
        return out
    for part in _PART.findall(value):
        m = _DIRECTIVE.match(part)
        if m is None:
            if not out:
                raise LuaError("bad argument #1 to 'lower' (string expected, got nil)")
            continue  # Kong's match leaves its reused captures as they were: the previous directive, set again
        raw = m.group(2)
        number = lua_number(raw.decode("latin-1")) if raw is not None else None
        out[m.group(1).lower()] = number if number is not None else raw if raw is not None else True
    return out


def _lua_type(value: bytes | bool) -> str:
    return "boolean" if value is True else "string"


def compared(directives: Directives, name: bytes) -> float | None:
    """A directive Kong compares with a number: None when absent; LuaError when it is no number, as Lua's `<` on a
    number and a string or boolean."""
    value = directives.get(name)
    if value is None or isinstance(value, float):
        return value
    raise LuaError(f"attempt to compare number with {_lua_type(value)}")


def parse_mime_type(value: str) -> MediaType | None:
    """kong.tools.mime_type.parse_mime_type: (type, subtype, parameters) lower-cased but for parameter values, or
    None when `value` is not a media type (trailing blanks or a lone ";" are not allowed)."""
    m = _MEDIA_TYPE.fullmatch(value)
    if m is None:
        return None
    params = {p.group(1).lower(): p.group(2) if p.group(2) is not None else p.group(3)
              for p in _PARAMETERS.finditer(m.group(3))}
    if m.group(1) is None:
        return "*", "*", params
    return m.group(1).lower(), m.group(2).lower(), params


def media_type_matches(content_type: str, expected: list[MediaType]) -> bool:
    """Kong's test of a response Content-Type against the configured ones (already parsed)."""
    parsed = parse_mime_type(content_type)
    kind, subtype, params = parsed if parsed is not None else (None, None, {})
    for exp_type, exp_subtype, exp_params in expected:
        if (exp_type == "*" or kind == exp_type) and (exp_subtype == "*" or subtype == exp_subtype) \
                and exp_params == params:
            return True
    return False


def _joined(values: list[bytes]) -> bytes | None:
    if not values:
        return None
    return values[0] if len(values) == 1 else b", ".join(values)


def header_value(headers: Headers, name: bytes) -> bytes | None:
    """nginx's $http_NAME / $sent_http_NAME for a header it has no variable of its own for (the request's
    $http_cache_control, the response's $sent_http_expires): the values of every header of that name (a "_" in a
    header's name counting as "-", as ngx_http_variable_unknown_header matches them), joined by ", "; None when there
    is none."""
    return _joined([v for n, v in headers if n == name or (len(n) == len(name) and n.replace(b"_", b"-") == name)])


def sent_cache_control(headers: Headers) -> bytes | None:
    """$sent_http_cache_control: the response's headers_out.cache_control (ngx_http_variables.c), which holds only
    the lines named Cache-Control (an upstream's `cache_control:` is an unknown header to nginx), joined by ", "."""
    return _joined([v for n, v in headers if n == b"cache-control"])


def last_value(headers: Headers, name: bytes) -> bytes | None:
    """$sent_http_content_type: nginx keeps one Content-Type, the upstream's last."""
    found = None
    for n, v in headers:
        if n == name:
            found = v
    return found


def resource_ttl(cc: Directives, expires: bytes | None, now: int) -> float:
    """kong.tools.http.calculate_resource_ttl: s-maxage, else max-age, else Expires - now; at least 0 (and 0 for
    nan). LuaError when the directive taken is no number, as Kong's math.max of it."""
    directive = cc.get(b"s-maxage")
    if directive is None:
        directive = cc.get(b"max-age")
    max_age: float | None = None
    if isinstance(directive, float):
        max_age = directive
    elif directive is not None:
        raise LuaError(f"bad argument #1 to 'max' (number expected, got {_lua_type(directive)})")
    elif expires is not None:
        at = parse_http_time(expires)
        if at is not None:
            max_age = float(at - now)
    # LuaJIT's math.max(max_age, 0) (maxsd) gives its second operand when the first is nan
    return max_age if max_age is not None and max_age > 0 else 0.0


class Rules:
    """One plugin's config, as its cacheability and freshness decisions need it."""

    __slots__ = ("methods", "statuses", "content_types", "cache_control", "cache_ttl")

    def __init__(self, config: ProxyCacheConfig) -> None:
        self.methods = frozenset(m.encode() for m in config.request_method)
        self.statuses = frozenset(config.response_code)
        # an entry Kong cannot parse (e.g. "application/xml;") matches nothing
        self.content_types = [t for t in map(parse_mime_type, config.content_type) if t is not None]
        self.cache_control = config.cache_control
        self.cache_ttl = float(config.cache_ttl)  # a Lua number (finite: the schema's)

    def cacheable_request(self, method: bytes, cc: Directives) -> bool:
        if method not in self.methods:
            return False
        return not (self.cache_control and (b"no-store" in cc or b"no-cache" in cc))

    def cacheable_response(self, status: int, headers: Headers, now: int) -> bool:
        """Kong's header_filter test (its Cache-Control read first, whatever cache_control says: LuaError as there)."""
        cc = parse_directives(sent_cache_control(headers))
        if status not in self.statuses:
            return False
        content_type = last_value(headers, b"content-type")
        if not content_type or not media_type_matches(content_type.decode("latin-1"), self.content_types):
            return False
        if not self.cache_control:
            return True
        if b"private" in cc or b"no-store" in cc or b"no-cache" in cc:
            return False
        return resource_ttl(cc, header_value(headers, b"expires"), now) > 0

    def response_ttl(self, headers: Headers, now: int) -> float:
        """How long a cacheable response is fresh: its Cache-Control's (with cache_control), else cache_ttl."""
        if not self.cache_control:
            return self.cache_ttl
        return resource_ttl(parse_directives(sent_cache_control(headers)), header_value(headers, b"expires"), now)

    def freshness(self, timestamp: int, ttl: float, now: int, cc: Directives) -> Freshness:
        """Whether an entry stored at `timestamp` (fresh for `ttl`) may answer a request with Cache-Control `cc`
        (LuaError, in Kong's order, for a directive it compares that is no number)."""
        age = now - timestamp
        if not self.cache_control:
            return "Refresh" if age > self.cache_ttl else "Hit"
        max_age = compared(cc, b"max-age")
        if max_age is not None and age > max_age:
            return "Refresh"
        max_stale = compared(cc, b"max-stale")
        if max_stale is not None and age - ttl > max_stale:
            return "Refresh"
        min_fresh = compared(cc, b"min-fresh")
        if min_fresh is not None and ttl - age < min_fresh:
            return "Refresh"
        return "Hit"
