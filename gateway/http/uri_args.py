"""Query arguments and header lines as OpenResty's ngx.req.get_uri_args and get_headers hand them to Kong's Lua: a
table where a bare name is true and a repeated name a list of its values (add_arg), and nginx's unescaping.
Sans-I/O."""

from __future__ import annotations

from typing import Any

MAX_URI_ARGS = 100  # Kong's lua_max_uri_args: kong.request.get_query's default

Arg = bytes | bool  # True: an argument without "="
Args = dict[bytes, Arg | list[Arg]]

_HEX = {c: int(chr(c), 16) for c in b"0123456789abcdefABCDEF"}


def add_arg(table: dict[Any, Any], name: Any, value: Any) -> None:
    """Put `value` under `name` as Lua's argument tables hold it: alone, or with the values already there in a list
    (a new list: a table copied from another shares none of its lists)."""
    prev = table.get(name)
    table[name] = value if prev is None else [*prev, value] if isinstance(prev, list) else [prev, value]


def unescape(raw: bytes) -> bytes:
    """ngx_http_lua_unescape_uri for URI components: %XX decoded, "+" a space. A broken escape loses its "%" (and its
    first hex digit when the second is not one), as nginx's state machine drops them."""
    if b"%" not in raw and b"+" not in raw:
        return raw
    out = bytearray()
    state = 0  # 0: usual, 1: after "%", 2: after "%" and one hex digit
    decoded = 0
    for ch in raw:
        if state == 0:
            if ch == 0x25:  # %
                state = 1
            elif ch == 0x2B:  # +
                out.append(0x20)
            else:
                out.append(ch)
        else:
            digit = _HEX.get(ch)
            if digit is None:
                state = 0
                out.append(ch)
            elif state == 1:
                decoded = digit
                state = 2
            else:
                out.append(decoded << 4 | digit)
                state = 0
    return bytes(out)


def uri_args(query: bytes, limit: int = MAX_URI_ARGS) -> Args:
    """ngx.req.get_uri_args(limit): name -> value, True for a bare name, a list when repeated."""
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
