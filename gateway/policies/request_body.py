"""Kong's kong.request.get_body and kong.service.request.set_body (kong/pdk/request.lua, kong/pdk/service/request.lua):
a request body read as arguments by its Content-Type, and arguments written back as a body of that type. Sans-I/O.

Reading, by the media type the Content-Type starts with (lower-cased, parameters cut):
    application/x-www-form-urlencoded  ngx.req.get_post_args: the first 100 arguments; a repeated name is a list,
                                       a name without "=" is True
    application/json                   the decoded document, if it is an object or an array
    multipart/form-data                each part's value by its Content-Disposition name (lua-multipart's
                                       get_all_with_arrays: a repeated name is a list)
Anything else, a missing Content-Type or a body that does not parse reads as nothing (None), as Kong's callers that
log the error and go on see it.

Writing follows set_body: a form's `name=value` pieces in lexicographic order; JSON compact; multipart one simple part
per name, names sorted, with the request's boundary (a new one when a value holds it), so the Content-Type may change.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any
from urllib.parse import quote, unquote_to_bytes

from gateway.http.uri_args import add_arg

FORM, JSON, MULTIPART = "application/x-www-form-urlencoded", "application/json", "multipart/form-data"
MAX_POST_ARGS = 100  # ngx.req.get_post_args' default, which Kong's get_body keeps
Args = dict[str, Any]  # name -> str, True, a list of them (repeated), or for JSON any decoded value
_BOUNDARY = re.compile(rb';\s*boundary=("[^"]*"|[^;\s]+)')  # case-sensitive, as lua-multipart's
_NAME = re.compile(rb'\bname="([^"]*)"|\bname=([^;\s]+)', re.IGNORECASE)


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
    """(the media type, the arguments or JSON document) of a whole body; None when Kong's get_body gives an error."""
    kind = media_type(content_type)
    if kind == FORM:
        return kind, _post_args(raw)
    if kind == JSON:
        try:
            doc = json.loads(raw)
        except ValueError:
            return None
        return (kind, doc) if isinstance(doc, (dict, list)) else None
    if kind == MULTIPART:
        boundary = _boundary(content_type)  # type: ignore[arg-type]  # a media type was found in it
        if not boundary:
            return kind, {}
        args: Args = {}
        for name, _, value in Multipart(raw, boundary).parts:
            add_arg(args, name, value.decode("utf-8", "surrogateescape"))
        return kind, args
    return None


def set_body(kind: str, args: Any, content_type: bytes) -> tuple[bytes, bytes]:
    """(the body, its Content-Type) for `args` written as `kind`."""
    if kind == FORM:
        pieces = sorted(filter(None, (_encode_arg(name, value) for name, value in args.items())))
        return "&".join(pieces).encode("utf-8", "surrogateescape"), content_type
    if kind == JSON:
        return json.dumps(args, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogateescape"), \
            content_type
    values = {name: _text(value).encode("utf-8", "surrogateescape") for name, value in args.items()}
    boundary = _boundary(content_type)
    if boundary is None or any(b"\n--" + boundary in value for value in values.values()):
        boundary = b"%d" % (secrets.randbelow(10**10) + 1)
    out = []
    for name in sorted(values):
        out.append(b"--%s\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n%s\r\n" % (
            boundary, name.encode("utf-8", "surrogateescape"), values[name]))
    out.append(b"--%s--\r\n" % boundary)
    return b"".join(out), b"multipart/form-data; boundary=" + boundary


def _post_args(raw: bytes) -> Args:
    """ngx.req.get_post_args (ngx_http_lua_parse_args): every piece before an "&" counts towards the limit, empty
    ones and those without a name ("=value", dropped) too, so only the first MAX_POST_ARGS pieces are read."""
    out: Args = {}
    for part in raw.split(b"&")[:MAX_POST_ARGS]:
        name_raw, eq, value_raw = part.partition(b"=")
        if name := _unquote(name_raw):
            add_arg(out, name, _unquote(value_raw) if eq else True)
    return out


def _unquote(raw: bytes) -> str:
    """ngx.unescape_uri with "+" as a space, as get_post_args decodes."""
    return unquote_to_bytes(raw.replace(b"+", b" ")).decode("utf-8", "surrogateescape")


def _boundary(content_type: bytes) -> bytes | None:
    found = _BOUNDARY.search(content_type)
    if found is None:
        return None
    boundary = found[1]
    if len(boundary) > 1 and boundary[:1] == b'"' and boundary[-1:] == b'"':
        return boundary[1:-1]
    return boundary


class Multipart:
    """A multipart/form-data body as lua-multipart's MultipartData holds it, for request-transformer: its parts in
    order (each with its own header lines and value), changed by name and written back with the same boundary."""

    def __init__(self, raw: bytes, boundary: bytes) -> None:
        self.boundary = boundary
        self.parts: list[tuple[str, list[bytes], bytes]] = []  # (name, header lines, value)
        for chunk in raw.split(b"--" + boundary)[1:]:
            if chunk.startswith(b"--"):
                break
            head, sep, value = chunk.partition(b"\r\n\r\n")
            if not sep:
                continue
            lines = [line for line in head.split(b"\r\n") if line]
            name = None
            for line in lines:
                if line[:20].lower() == b"content-disposition:":
                    found = _NAME.search(line)
                    if found is not None:
                        name = (found[1] if found[1] is not None else found[2]).decode("utf-8", "surrogateescape")
            if name is not None:
                self.parts.append((name, lines, value[:-2] if value.endswith(b"\r\n") else value))

    @classmethod
    def of(cls, content_type: bytes, raw: bytes) -> Multipart | None:
        """The body's parts, or None when its Content-Type names no boundary."""
        boundary = _boundary(content_type)
        return cls(raw, boundary) if boundary else None

    def get(self, name: str) -> bytes | None:
        """The value of the first part named `name`."""
        for part_name, _, value in self.parts:
            if part_name == name:
                return value
        return None

    def set_simple(self, name: str, value: bytes) -> None:
        """A plain part `name` (only a Content-Disposition): in place of the first of that name, else at the end."""
        part = (name, [b'Content-Disposition: form-data; name="%s"' % name.encode("utf-8", "surrogateescape")], value)
        for i, (part_name, _, _) in enumerate(self.parts):
            if part_name == name:
                self.parts[i] = part
                return
        self.parts.append(part)

    def delete(self, name: str) -> None:
        self.parts = [part for part in self.parts if part[0] != name]

    def tostring(self) -> bytes:
        delimiter = b"--" + self.boundary
        out = [delimiter + b"\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n" + value + b"\r\n"
               for _, lines, value in self.parts]
        out.append(delimiter + b"--\r\n")
        return b"".join(out)


def _encode_arg(name: str, value: Any) -> str:
    """ngx.encode_args({name = value}): `name=value` escaped, a list repeated, True a bare name, False nothing."""
    key = quote(name, safe="-_.~", errors="surrogateescape")
    parts = []
    for v in value if isinstance(value, list) else [value]:
        if v is True:
            parts.append(key)
        elif v is not False and v is not None:
            parts.append(f"{key}={quote(_text(v), safe='-_.~', errors='surrogateescape')}")
    return "&".join(parts)


def _text(value: Any) -> str:
    """A value as Lua's tostring writes it into a body (true/false, numbers as written)."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    return value if isinstance(value, str) else str(value)
