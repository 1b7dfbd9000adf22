"""Query arguments and header lines as OpenResty's ngx.req.get_uri_args and get_headers hand them to Kong's Lua: a
table where a bare name is true and a repeated name a list of its values (add_arg), and nginx's unescaping.
Sans-I/O."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_to_bytes

MAX_URI_ARGS = 100  # Kong's lua_max_uri_args: kong.request.get_query's default

Arg = bytes | bool  # True: an argument without "="
Args = dict[bytes, Arg | list[Arg]]


def add_arg(table: dict[Any, Any], name: Any, value: Any) -> None:
    """Put `value` under `name` as Lua's argument tables hold it: alone, or with the values already there in a list
    (a new list: a table copied from another shares none of its lists)."""
    prev = table.get(name)
    table[name] = value if prev is None else [*prev, value] if isinstance(prev, list) else [prev, value]


def unescape(raw: bytes) -> bytes:
    """ngx_http_lua_unescape_uri for URI components: %XX decoded, "+" a space. A "%" not followed by two hex digits
    is kept as it is, with what follows it (lua-nginx-module since v0.10.20, in Kong's OpenResty 1.27: "%zz" and a
    trailing "%4" stay; older versions dropped them). An escaped "+" (%2B) stays a "+"."""
    if b"%" not in raw:
        return raw.replace(b"+", b" ") if b"+" in raw else raw
    return unquote_to_bytes(raw.replace(b"+", b" "))


def uri_args(query: bytes, limit: int = MAX_URI_ARGS) -> Args:
    """ngx.req.get_uri_args(limit) as lua-resty-core's FFI reads it: name -> value, True for a bare name, a list when
    repeated; at most `limit` arguments (0: all), pieces without a name ("", "=value") not counted."""
    args: Args = {}
    count = 0
    for part in query.split(b"&"):
        if not part:
            continue
        name, eq, value = part.partition(b"=")
        name = unescape(name)
        if not name:
            continue  # "=value" (and "=") are dropped
        add_arg(args, name, unescape(value) if eq else True)
        count += 1
        if count == limit:
            break
    return args


# ngx.encode_args' escaping (ngx_http_lua_escape_uri, NGX_ESCAPE_URI_COMPONENT): everything but ALPHA, DIGIT and
# - . _ ~ ! * ' ( ) as %XX (upper-case hex); a space is %20
_ARG_BYTE = [bytes([b]) if chr(b).isascii() and (chr(b).isalnum() or chr(b) in "-._~!*'()") else b"%%%02X" % b
             for b in range(256)]


def escape_arg(raw: bytes) -> bytes:
    """A name or value as ngx.encode_args writes it."""
    return b"".join([_ARG_BYTE[b] for b in raw])


def encode_args(args: dict[bytes, Any]) -> bytes:
    """ngx.encode_args: `name=value` pairs joined with "&" in the table's order; True a bare name, False nothing; a
    list repeats the name for each of its elements (True bare, False skipped)."""
    out = []
    for name, value in args.items():
        key = escape_arg(name)
        for v in value if isinstance(value, list) else (value,):
            if v is True:
                out.append(key)
            elif v is not False and v is not None:
                out.append(key + b"=" + escape_arg(v))
    return b"&".join(out)
