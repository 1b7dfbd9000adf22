"""Kong's kong.request.get_body and kong.service.request.set_body (kong/pdk/request.lua, kong/pdk/service/request.lua):
a request body read as arguments by its Content-Type, and arguments written back as a body of that type. Sans-I/O.

Reading, by the media type the Content-Type starts with (lower-cased, parameters cut):
    application/x-www-form-urlencoded  ngx.req.get_post_args: the first 100 pieces; a repeated name is a list, a
                                       name without "=" is True
    application/json                   the document as lua-cjson decodes it (`cjson.decode`), if it is an object or
                                       an array
    multipart/form-data                each part's value by its Content-Disposition name, as lua-multipart 0.5.9
                                       (Kong's) parses the body (`Multipart`): get_all_with_arrays, a repeated name a
                                       list
Anything else, a missing Content-Type or a body that does not parse reads as nothing (None), as Kong's callers that
log the error and go on see it. What is a Lua error in Kong (lua-multipart failing on a body, set_body refusing a
type or value) raises ValueError here: the plugin fails, Kong's 500.

Writing follows set_body: a form's `name=value` pieces (ngx.encode_args) in lexicographic order; JSON as lua-cjson
writes it (`cjson.encode`); multipart one simple part per name, names sorted, with the boundary Kong finds in the
Content-Type (a new one when a value holds it), so the Content-Type may change. set_body picks the writer by the
Content-Type as it is, up to a ";" (no lower-casing): any other type is Kong's error (ValueError here, a 500).
"""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import unquote_to_bytes

from gateway.http.uri_args import add_arg, encode_args
from gateway.policies import cjson
from gateway.policies.cjson import CJSON_PRECISION, PDK_PRECISION
from gateway.policies.multipart import Multipart

FORM, JSON, MULTIPART = "application/x-www-form-urlencoded", "application/json", "multipart/form-data"
MAX_POST_ARGS = 100  # ngx.req.get_post_args' default, which Kong's get_body keeps
Args = dict[str, Any]  # name -> str, True, a list of them (repeated), or for JSON any decoded value


def media_type(content_type: bytes | None) -> str | None:
    """FORM, JSON or MULTIPART when the Content-Type starts with one of them (Kong's find(...) == 1), else None."""
    if content_type is None:
        return None
    lowered = content_type.partition(b";")[0].lower().decode("latin-1")
    for kind in (FORM, JSON, MULTIPART):
        if lowered.startswith(kind):
            return kind
    return None


def get_body(content_type: bytes | None, raw: bytes) -> tuple[str, Any] | None:
    """(the media type, the arguments or JSON document) of a whole body; None when Kong's get_body gives an error
    (ValueError where its Lua fails)."""
    kind = media_type(content_type)
    if kind == FORM:
        return kind, post_args(raw)
    if kind == JSON:
        try:
            doc = cjson.decode(raw)
        except ValueError:
            return None
        return (kind, doc) if isinstance(doc, (dict, list)) else None
    if kind == MULTIPART:
        return kind, Multipart(raw, content_type).get_all_with_arrays()  # type: ignore[arg-type]  # found in it
    return None


def set_body(kind: str, args: Any, content_type: bytes) -> tuple[bytes, bytes]:
    """(the body, its Content-Type) for `args` written as set_body(args) writes them for a request of `content_type`
    (`kind`, get_body's reading of it, is not what decides: set_body compares the type up to ";" as it is)."""
    handler = content_type.partition(b";")[0]
    if handler == FORM.encode():
        pieces = sorted(filter(None, (encode_args({name.encode("utf-8", "surrogateescape"): _arg(value)})
                                      for name, value in args.items())))
        return b"&".join(pieces), content_type
    if handler == JSON.encode():
        return cjson.encode(args, PDK_PRECISION), content_type
    if handler != MULTIPART.encode():
        raise ValueError(f"unsupported content type {content_type.decode('latin-1')}")
    values = {}
    for name, value in args.items():
        if not isinstance(value, (str, int, float)):  # a list (a repeated name) is Kong's error
            raise ValueError(f"invalid value {name!r}: got {type(value).__name__}, expected string, number or "
                             "boolean")
        values[name] = _text(value).encode("utf-8", "surrogateescape")
    boundary = _set_body_boundary(content_type)
    while boundary is None or any(b"\n--" + boundary in value for value in values.values()):
        boundary = b"%d" % (secrets.randbelow(10**10) + 1)  # math.random(1e10)
    out = []
    for name in sorted(values):
        out.append(b"--%s\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n%s\r\n" % (
            boundary, name.encode("utf-8", "surrogateescape"), values[name]))
    out.append(b"--%s--\r\n" % boundary)
    return b"".join(out), b"multipart/form-data; boundary=" + boundary


def _set_body_boundary(content_type: bytes) -> bytes | None:
    """set_body's boundary: what follows the first "boundary=" to the end of the type, or up to the next '"' when it
    starts with one (none: Kong's Lua error)."""
    at = content_type.find(b"boundary=")
    if at < 0:
        return None
    rest = content_type[at + 9:]
    if rest[:1] == b'"':
        till = rest.find(b'"', 1)
        if till < 0:
            raise ValueError("attempt to perform arithmetic on local 'till' (a nil value)")
        return rest[1:till]
    return rest


def _arg(value: Any) -> Any:
    if isinstance(value, list):
        return [_arg(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    return _text(value).encode("utf-8", "surrogateescape")


def post_args(raw: bytes, limit: int = MAX_POST_ARGS) -> Args:
    """ngx.req.get_post_args and ngx.decode_args (ngx_http_lua_parse_args): every piece before an "&" counts towards
    the limit, empty ones and those without a name ("=value", dropped) too, so only the first `limit` pieces are
    read. Names and values as text (bytes that are not UTF-8 surrogate-escaped, so they are written back as they
    came)."""
    out: Args = {}
    for part in raw.split(b"&", limit)[:limit]:
        name_raw, eq, value_raw = part.partition(b"=")
        if name := _unquote(name_raw):
            add_arg(out, name, _unquote(value_raw) if eq else True)
    return out


def _unquote(raw: bytes) -> str:
    """ngx.unescape_uri with "+" as a space, as get_post_args decodes."""
    return unquote_to_bytes(raw.replace(b"+", b" ")).decode("utf-8", "surrogateescape")


def _text(value: Any) -> str:
    """A value as Lua's tostring writes it into a body (true/false, numbers as written)."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, float)):  # LuaJIT's tostring: "%.14g"
        return cjson.number(float(value), CJSON_PRECISION)
    return value if isinstance(value, str) else str(value)
