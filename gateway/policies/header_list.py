"""Kong's kong.response.set_header / add_header / clear_header over a header list (lower-case names, bytes), and how
kong.request.get_header / get_headers() find a request header (`request_header`, `lookup`), and how
ngx.req.set_header and ngx.header escape a value (`escape_value`: the setters here escape what they set, so no value
a plugin sets can end a header line)."""

from __future__ import annotations

import re

from gateway.http.codec import Headers
from gateway.routing.router import MAX_REQ_HEADERS  # lua_max_req_headers, the lines get_headers() reads

TRANSFER_ENCODING_NAMES = (b"transfer-encoding", b"transfer_encoding")  # which set_header leaves alone


# lua-nginx-module's escaping of what ngx.req.set_header / ngx.header set (ngx_http_lua_copy_escaped_header): in a
# value, the control bytes but HTAB (0x00-0x08, 0x0A-0x1F, 0x7F) become %XX
_VALUE_BYTE = [b"%%%02X" % b if (b < 0x20 and b != 0x09) or b == 0x7F else bytes([b]) for b in range(256)]
_UNSAFE_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# ... and in a name (its header_name bitmap): the control bytes, space, DEL, bytes 0x80-0xFF and `"(),/:;<=>?@[\]{}`
_NAME_ESCAPED = frozenset(range(0x21)) | frozenset(range(0x7F, 0x100)) | frozenset(b'"(),/:;<=>?@[\\]{}')
_NAME_BYTE = [b"%%%02X" % b if b in _NAME_ESCAPED else bytes([b]) for b in range(256)]


def escape_value(value: bytes) -> bytes:
    """A header value as ngx.req.set_header sends it: a CR or LF can end no header line."""
    if _UNSAFE_VALUE.search(value) is None:
        return value
    return b"".join([_VALUE_BYTE[b] for b in value])


def escape_name(name: bytes) -> bytes:
    """A header name as ngx.header and ngx.req.set_header send it (a name from the config, escaped once at load)."""
    return b"".join([_NAME_BYTE[b] for b in name])


def set_header(headers: Headers, name: bytes, value: bytes) -> Headers:
    """Replace every `name` header with one of `value` (appended at the end, as nginx does). Transfer-Encoding is
    left alone, as kong.response.set_header ignores it ("manually setting Transfer-Encoding. Ignored."): the
    gateway frames the body."""
    if name in TRANSFER_ENCODING_NAMES:
        return headers
    headers[:] = [hv for hv in headers if hv[0] != name]
    headers.append((name, escape_value(value)))
    return headers


def add_header(headers: Headers, name: bytes, value: bytes) -> Headers:
    """One more `name` header, keeping those already there."""
    headers.append((name, escape_value(value)))
    return headers


def clear_header(headers: Headers, name: bytes) -> Headers:
    headers[:] = [hv for hv in headers if hv[0] != name]
    return headers


def get_header(headers: Headers, name: bytes) -> bytes | None:
    """The first `name` header's value, or None."""
    for hname, value in headers:
        if hname == name:
            return value
    return None


def count_header(headers: Headers, name: bytes) -> int:
    return sum(1 for hname, _ in headers if hname == name)


# nginx's $http_ variables with a handler of their own: these names only (no "_" for "-"), Cookie joined by "; "
KNOWN_VARIABLES = {b"host": b", ", b"user-agent": b", ", b"referer": b", ", b"via": b", ",
                    b"x-forwarded-for": b", ", b"cookie": b"; "}


def lookup(headers: Headers, name: bytes) -> bytes | list[bytes] | None:
    """`kong.request.get_headers()[name]`: the first 100 header lines, the name as written (the table's keys are the
    lower-case names as sent, "_" kept), else lua-resty-core's metatable: lower-cased, then that with every "_" as
    "-" (so `X_Foo` finds `x_foo` lines before `x-foo` ones); a list for a header sent more than once."""
    first = headers if len(headers) <= MAX_REQ_HEADERS else headers[:MAX_REQ_HEADERS]
    values = [v for n, v in first if n == name]
    if not values:
        lowered = name.lower()
        if lowered != name:
            values = [v for n, v in first if n == lowered]
        if not values and b"_" in lowered:
            key = lowered.replace(b"_", b"-")
            values = [v for n, v in first if n == key]
    return None if not values else values[0] if len(values) == 1 else values


def request_header(headers: Headers, name: bytes) -> bytes | None:
    """kong.request.get_header(name) (kong.tools.http.get_header): nginx's $http_<name>, every line whose name
    matches (any case, "-" and "_" alike; Host, User-Agent, Referer, Via, X-Forwarded-For and Cookie by their own
    name only) joined by ", " ("; " for Cookie). A value without ", " is the answer; one with it is looked up again
    in get_headers() (`lookup`: the first 100 lines), its first value."""
    key = name.lower().replace(b"_", b"-")
    sep = KNOWN_VARIABLES.get(key)
    if sep is not None:
        values = [v for n, v in headers if n == key]
    else:
        sep = b", "
        values = [v for n, v in headers if n == key or n.replace(b"_", b"-") == key]
    if not values:
        return None
    value = values[0] if len(values) == 1 else sep.join(values)
    if b", " not in value:
        return value
    found = lookup(headers, name)
    return found[0] if isinstance(found, list) else found
