"""Kong's proxy-cache key (kong/plugins/proxy-cache/cache_key.lua), byte for byte, and the request facts it is made
of, read as OpenResty reads them. Sans-I/O.

The key is the hex SHA-256 of `prefix|method|uri|params|headers`:
    prefix   "consumer_id:route_id", "route_id" or "default"
    method   the request's method (kong.request.get_method)
    uri      nginx's $request (the request line as the client sent it: "GET /path?q HTTP/1.1") cut at its first
             "?": so "GET /path" with a query string, the whole line "GET /path HTTP/1.1" without one; lower-cased
             (ASCII) with ignore_uri_case
    params   "name=value" pieces joined by ":" for the vary_query_params present in the request (all arguments,
             sorted by name, when none are configured); a bare argument is its name alone, a repeated one its values
             sorted and joined by "," (LuaError when one of them is bare: Kong's table.sort cannot compare a
             boolean)
    headers  the same for vary_headers (nothing when none are configured); a name is looked up as configured, then
             lower-cased, then lower-cased with "_" as "-" (ngx.req.get_headers' table); a query parameter only as
             configured (ngx.req.get_uri_args' table has no __index)

Arguments come from the query string as it is when the plugin runs (after plugins of higher priority changed it),
parsed as ngx.req.get_uri_args parses them: the first 100, unescaped with "+" as a space, "=value" without a name
dropped. Headers are the first 100 (ngx.req.get_headers), names lower-cased. Everything is bytes, compared as C's
strcmp compares them, so keys agree with Kong's for any input.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from gateway.http.codec import Headers
from gateway.http.uri_args import Arg, Args, add_arg, unescape, uri_args  # noqa: F401 - unescape, uri_args: its parts
from gateway.policies.base import LuaError
from gateway.routing.router import MAX_REQ_HEADERS  # lua_max_req_headers, the lines get_headers() reads


def header_args(headers: Headers, limit: int = MAX_REQ_HEADERS) -> Args:
    """ngx.req.get_headers(limit): lower-case name -> value, a list when repeated."""
    args: Args = {}
    for name, value in headers[:limit]:
        add_arg(args, name, value)
    return args


def request_uri(method: bytes, target: bytes, http_version: bytes, ignore_case: bool = False) -> bytes:
    """What Kong hashes as the uri: the request line up to its first "?"."""
    line = b"%b %b HTTP/%b" % (method, target, http_version)
    uri = line.partition(b"?")[0]
    return uri.lower() if ignore_case else uri


def prefix_uuid(consumer_id: str | None = None, route_id: str | None = None) -> str:
    if consumer_id is not None and route_id is not None:
        return f"{consumer_id}:{route_id}"
    if route_id is not None:
        return route_id
    return "default"


def _joined(values: list[Arg]) -> bytes:
    """Kong's table.sort and concat of a repeated argument's values: a bare one (true) among them fails the sort,
    which compares every element of a list of two or more (lib_table.c auxsort)."""
    strings = [v for v in values if isinstance(v, bytes)]
    if len(strings) != len(values):
        other = "two boolean values" if not strings else "string with boolean"
        raise LuaError(f"attempt to compare {other}")
    return b",".join(sorted(strings))


def _header_arg(args: Args, field: bytes) -> Arg | list[Arg] | None:
    """The __index of ngx.req.get_headers()'s table (lua-resty-core request.lua): the name lower-cased, then, when
    it has a "_", with "_" as "-" (a client's `X_Tenant` line is "x_tenant" there: Kong keeps underscores)."""
    name = field.lower()
    arg = args.get(name)
    if arg is None and b"_" in name:
        arg = args.get(name.replace(b"_", b"-"))
    return arg


def _key_from(args: Args, fields: Iterable[bytes], normalize: bool = False) -> bytes:
    parts = []
    for field in fields:
        arg = args.get(field)
        if arg is None and normalize:
            arg = _header_arg(args, field)
        if arg is None or arg is False:
            continue
        if isinstance(arg, list):
            parts.append(field + b"=" + _joined(arg))
        elif arg is True:
            parts.append(field)
        else:
            parts.append(field + b"=" + arg)
    return b":".join(parts)


def _names(configured: Sequence[str] | None) -> list[bytes]:
    return [name.encode() for name in configured or ()]


def params_key(params: Args, vary_query_params: Sequence[str] | None = None) -> bytes:
    if not vary_query_params:
        return _key_from(params, sorted(params))
    return _key_from(params, _names(vary_query_params))


def headers_key(headers: Args, vary_headers: Sequence[str] | None = None) -> bytes:
    if not vary_headers:
        return b""
    return _key_from(headers, _names(vary_headers), normalize=True)


def build_cache_key(consumer_id: str | None, route_id: str | None, method: bytes, uri: bytes, params: Args,
                    headers: Args, vary_query_params: Sequence[str] | None = None,
                    vary_headers: Sequence[str] | None = None) -> str:
    material = b"|".join((prefix_uuid(consumer_id, route_id).encode(), method, uri,
                          params_key(params, vary_query_params), headers_key(headers, vary_headers)))
    return hashlib.sha256(material).hexdigest()
