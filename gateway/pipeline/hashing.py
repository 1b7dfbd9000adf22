"""The hash key a consistent-hashing or ip-hash balancer needs, taken from the request as `hash_on` says: Kong's
get_value_to_hash (kong/runloop/balancer/init.lua).

As in Kong, a value that is present but empty is a key (hash_fallback is for a value that is absent), and
`hash_on: cookie` always yields one: without the cookie a new UUID is the key, and the response (whichever target,
or the gateway itself after failed tries, answers) carries `Set-Cookie: <name>=<uuid>; Path=<hash_on_cookie_path>;
Same-Site=Lax; HttpOnly`, so the client's next requests go where this one went. The line waits in the lines added to
the head (Exchange.response_lines); a request whose plugins filter the headers has it set in the headers before they
run, as Kong's header_filter.before does (`set_new_cookie`, from gateway.pipeline.phases).
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from gateway.http.codec import Headers
from gateway.http.cookies import cookie_value
from gateway.http.server import Exchange
from gateway.http.uri_args import uri_args
from gateway.routing import Match
from gateway.routing.normalize import nginx_uri

if TYPE_CHECKING:  # (gateway.runtime imports gateway.pipeline.phases, which imports this module)
    from gateway.runtime import UpstreamGroup

_HASHING = frozenset({"consistent-hashing", "ip-hash"})
# The $http_ variables nginx defines itself (ngx_http_variables.c): they read the headers_in list that only a field
# spelled with dashes joins (ngx_http_headers_in), so an X_Forwarded_For field is not $http_x_forwarded_for.
_NGINX_OWN = frozenset({b"host", b"user-agent", b"referer", b"via", b"x-forwarded-for", b"cookie"})
_LINE = b"Set-Cookie: "  # the start of _new_cookie's line: no other policy adds a Set-Cookie to response_lines
NEW_COOKIE = "hash_cookie"  # ex.state: the header value of _new_cookie's line, once set_new_cookie took it


def balancer_key(group: UpstreamGroup, ex: Exchange, match: Match) -> bytes | None:
    """Kong's hash_on, then hash_fallback when the first yields nothing, and "" when neither does (Kong's
    `get_value_to_hash(...) or ""`: such requests all go to one target); ip-hash always hashes the client address.
    None (another algorithm): nothing to hash."""
    if group.algorithm not in _HASHING:
        return None
    if group.algorithm == "ip-hash":
        return ex.client_ip.encode()
    key = _key(group.hash_on, group, ex, match)
    if key is None:
        key = _key(group.hash_fallback, group, ex, match)
    return b"" if key is None else key


def _key(spec: tuple[str, bytes], group: UpstreamGroup, ex: Exchange, match: Match) -> bytes | None:
    kind, name = spec
    if kind == "ip":
        return ex.client_ip.encode()
    if kind == "consumer":  # the consumer's id, else the credential's; none: hash_fallback, as in Kong
        who = ex.consumer
        if who is None:
            return None
        ident = who.id if who.id is not None else who.credential_id
        return ident.encode() if ident else None
    if kind == "path":  # nginx's $uri (Kong's var.uri): the request's path decoded (not the upstream path)
        return nginx_uri(ex.request.target.partition(b"?")[0])
    if kind == "header":
        return _header(ex.request.headers, name)
    if kind == "cookie":
        value = cookie_value(ex.request.headers, name)
        return _new_cookie(group, ex, name) if value is None else value
    if kind == "query_arg":
        return _query_arg(match.query, name) if match.query else None
    if kind == "uri_capture":  # a named group of the matched route's regex path (Kong's router_matches.uri_captures)
        captures = match.captures
        return captures.get(name.decode()) if captures is not None else None
    return None


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """nginx's $http_<name> (Kong reads var["http_" .. replace_dashes_lower(name)]; nginx 1.23 and later, so Kong
    3.x): every field of that name, joined with ", " ("; " for Cookie). A name is compared ignoring case and with "-"
    and "_" the same (ngx_http_variable_unknown_header; Kong has underscores_in_headers on), except for the headers
    nginx has its own variable for, whose fields only their dashed spelling reaches."""
    wanted = name.replace(b"_", b"-")  # the same object when the name has no "_": no copy
    loose = wanted not in _NGINX_OWN
    found: bytes | None = None
    for hname, value in headers:
        if hname == wanted or (loose and b"_" in hname and hname.replace(b"_", b"-") == wanted):
            found = value if found is None else found + (b"; " if wanted == b"cookie" else b", ") + value
    return found


def _new_cookie(group: UpstreamGroup, ex: Exchange, name: bytes) -> bytes:
    """No cookie: a new UUID is the key, and the response sets it (Kong's balancer.set_cookie, its attributes)."""
    value = str(uuid.uuid4()).encode()
    ex.add_response_lines(_LINE + b"%s=%s; Path=%s; Same-Site=Lax; HttpOnly\r\n"
                          % (_safe(name), value, _safe(group.cookie_path.encode())))
    return value


def set_new_cookie(ex: Exchange, headers: Headers) -> Headers:
    """`headers` (not changed: a new list, or itself) with the cookie _new_cookie made, for a proxied response whose
    plugins filter the headers: Kong's balancer.set_cookie in header_filter.before (kong/runloop/balancer/init.lua),
    which replaces the first Set-Cookie of that cookie's name (its value starting with "<name>=", case-sensitive) or
    adds one, the others left as they are. The line leaves response_lines for ex.state, where an answer given in the
    response's place (a 502 after its body broke off) finds it again."""
    lines = ex.response_lines
    value: bytes | None
    if lines and _LINE in lines:
        value = _take_line(ex, lines)
    elif (state := ex.state) is None or (value := state.get(NEW_COOKIE)) is None:
        return headers
    prefix = value[:value.index(b"=") + 1]
    for i, (name, old) in enumerate(headers):
        if name == b"set-cookie" and old.startswith(prefix):
            return headers[:i] + [(name, value)] + headers[i + 1:]
    return [*headers, (b"set-cookie", value)]


def _take_line(ex: Exchange, lines: bytes) -> bytes:
    """The value of _new_cookie's line, taken out of response_lines (`lines`, which have it) and kept in ex.state."""
    value = b""
    kept = []
    for line in lines.splitlines(keepends=True):
        if line.startswith(_LINE):
            value = line[len(_LINE):].rstrip(b"\r\n")
        else:
            kept.append(line)
    ex.response_lines = b"".join(kept)
    if ex.state is None:
        ex.state = {}
    ex.state[NEW_COOKIE] = value
    return value


def drop_new_cookie(group: UpstreamGroup, ex: Exchange) -> None:
    """No target could be picked: the 503 goes without the cookie _new_cookie set (in Kong the balancer fails before
    the request counts as proxied, and only a proxied request's response gets it), be it hash_on's or
    hash_fallback's."""
    if group.hash_on[0] == "cookie":
        name = group.hash_on[1]
    elif group.hash_fallback[0] == "cookie":
        name = group.hash_fallback[1]
    else:
        return
    if ex.response_lines:
        start = b"Set-Cookie: %s=" % _safe(name)
        ex.response_lines = b"".join(line for line in ex.response_lines.splitlines(keepends=True)
                                     if not line.startswith(start))


def _safe(text: bytes) -> bytes:
    """What a header line may carry: printable ASCII (the name and path come from the config, not the client, but
    a line break must never split the header)."""
    return bytes(c for c in text if 32 <= c < 127)


def _query_arg(query: bytes, name: bytes) -> bytes | None:
    """Kong's get_query_arg: the argument in ngx.req.get_uri_args(100) (uri_args: the first 100 named arguments),
    true (a bare name) as "true", several values sorted and joined with ","."""
    value = uri_args(query).get(name)
    if isinstance(value, list):
        return b",".join(sorted(v if isinstance(v, bytes) else b"true" for v in value))
    if value is True:
        return b"true"
    return value if isinstance(value, bytes) else None
