"""Kong's response-transformer (kong/plugins/response-transformer/): header_filter and body_filter phases.

Headers, in Kong's order: remove, rename, replace (only present ones), add (only absent ones), append. As in Kong,
rename, replace and add test the headers as they came from upstream (kong.response.get_headers() is taken before any
change; of a response of MAX_RESP_HEADERS lines or more, only the lines it reads: router.resp_get_headers; remove and
set_header's clearing reach every line), and rename, replace and add set the header (its other values go; a renamed
header's empty value is set, as kong.response.set_header sets it " " (normalize_multi_header), which the client reads
empty: a line with an empty value). Append adds a line, but to one of nginx's built-in single headers (Content-Type,
ETag, Location, ...: SINGLE_BUILTIN) whose headers_out slot holds a line it overwrites that line, as ngx.resp.add_header
does; a relative Location from upstream holds no slot (nginx leaves it out so as not to rewrite it), so an append to it
adds a second line as in Kong. The JSON body (a response whose
Content-Type is application/json or a +json type, never text/event-stream; read whole up to
gateway.pipeline.phases.RESPONSE_BODY_LIMIT): remove, rename, replace, add, append of top-level keys, values cast by
json_types as Kong's json_value() does; a key renamed to its own name is removed, as Kong sets the new name and then
clears the old. Lua's truthiness is kept: replace needs a present value other than false,
add writes over a missing or false one. The body is always written again by the plugin's lua-cjson, as Kong's is: an
array too (the names land in the Lua table's hash part, which cjson does not write for an array), and a top-level
string, number, boolean or null when no op indexes it as Lua would fail to (else LuaError: Kong's body_filter runs
outside any pcall, so the request fails with its head unsent). A body cjson cannot read, or could not encode again
(a NaN number), is sent unchanged. With JSON changes, the header filter drops the Content-Length of a response whose
Content-Type (as it came) is JSON, as Kong's header_filter does: a transformed body gets its new length, one sent
unchanged goes out chunked, and a HEAD answer has none. A JSON body over RESPONSE_BODY_LIMIT is answered 502, never
sent untransformed (`changes_body`: gateway.pipeline.phases.ResponsePhases.refuses_unfiltered).

Compiled at config load: names encoded and lower-cased, values escaped, entries without a value dropped, the
built-in single headers appended to picked out. What the header changes do to a response depends only on which of
the names they test it has (and on the values of renamed ones, and, with an append to Location, on whether its value
is relative), so they are played once per such set of names (`ResponseTransformer.plan`, a bounded memo) and a
response pays one dict of its headers, the removal of the names that go and one extend. The phases are the config's:
no header_filter without header or JSON changes, no body phases without JSON ones (so such a transformer's responses
are never considered for their bodies).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from operator import itemgetter
from typing import Any, NamedTuple

from gateway.http.codec import Headers
from gateway.http.server import Exchange
from gateway.memo import Memo
from gateway.policies import cjson
from gateway.policies.base import LuaError
from gateway.policies.cjson import CJSON_PRECISION
from gateway.policies.header_list import TRANSFER_ENCODING_NAMES, escape_name, escape_value
from gateway.policies.response_transformer.schema import ResponseTransformerConfig, Values, split_pair
from gateway.routing.router import MAX_RESP_HEADERS, resp_get_headers  # lua_max_resp_headers

log = logging.getLogger("gateway.policies.response_transformer")
_MISSING = object()
_NAME = itemgetter(0)  # of a header line
# what indexing a Lua string finds (its metatable's __index is the string library): the only names a string body "has"
LUA_STRING_METHODS = frozenset({"byte", "char", "dump", "find", "format", "gmatch", "gsub", "len", "lower", "match",
                                "rep", "reverse", "sub", "upper"})

# kong.tools.mime_type's grammar (RFC 2045): type "/" subtype, or "*", then `; attribute=value` parameters, nothing
# else; parse_mime_type fails on anything more (a trailing ";", a parameter without a value).
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_MEDIA_TYPE = re.compile(rf'(?:({_TOKEN})/({_TOKEN})|\*)(?:[ \t]*;[ \t]*{_TOKEN}=(?:{_TOKEN}|"[^"\x00-\x1f\x7f]*"))*')
_LUA_SPACE = " \t\n\v\f\r"
_DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_HEX = re.compile(r"([+-]?)0[xX]([0-9a-fA-F]+)")
_INF_NAN = re.compile(r"([+-]?)(?:(inf(?:inity)?)|nan)", re.IGNORECASE)


def is_json(content_type: bytes | None) -> bool:
    """Kong's is_json_body: one of the comma-separated media types is application/json or application/*+json."""
    if not content_type:
        return False
    for part in content_type.decode("latin-1").split(","):
        m = _MEDIA_TYPE.fullmatch(part.strip(_LUA_SPACE))
        if m is not None and m.group(1) is not None and m.group(1).lower() == "application":
            subtype = m.group(2).lower()
            if subtype == "json" or subtype.endswith("+json"):
                return True
    return False


_JSON_TYPES: Memo[bytes, bool] = Memo(256)  # is_json of the Content-Type values seen (a worker sees few)


def lua_tonumber(text: str) -> float | None:
    """LuaJIT's tonumber() of a string: decimal or hex, spaces around allowed, inf and nan as words; else None."""
    text = text.strip(_LUA_SPACE)
    if _DECIMAL.fullmatch(text):
        return float(text)
    if m := _HEX.fullmatch(text):
        return float(int(m.group(2), 16) * (-1 if m.group(1) == "-" else 1))
    if m := _INF_NAN.fullmatch(text):
        return (-math.inf if m.group(1) == "-" else math.inf) if m.group(2) else math.nan
    return None


def cjson_number(number: float) -> int | float:
    """The number as cjson writes it (14 significant digits), an int when integral so that it is written so."""
    number = float(f"{number:.14g}") if math.isfinite(number) else number
    return int(number) if number.is_integer() and abs(number) < 1e15 else number


def json_value(value: str | None, json_type: str | None) -> Any:
    """Kong's json_value(): the value cjson-encoded, its quotes stripped and only `\\"` and `\\/` unescaped (so a
    backslash or a control character stays escaped), then cast by json_type; None when tonumber() fails. No value
    ("name:") encodes as null, so it is the text "null"."""
    if value is None:
        text = "null"
    else:
        encoded = cjson.encode(value).decode("utf-8", "surrogateescape")
        text = encoded[1:-1].replace('\\"', '"').replace("\\/", "/")
    if json_type == "number":
        number = lua_tonumber(text)
        return None if number is None else cjson_number(number)
    if json_type == "boolean":
        return text == "true"
    return text


def append_value(current: Any, value: Any) -> Any:
    """Kong's append_value(): a string becomes [it, value], a Lua table gets value inserted, anything else (absent, a
    number, a boolean, null) becomes [value]. An object (a table of string keys) gets it at the integer key after its
    border (#t: 1, then 2, ...), which lua-cjson writes as "1", "2" beside its own keys, and as an array when the
    object had none: {} becomes [value]."""
    if isinstance(current, str):
        return [current, value]
    if isinstance(current, list):
        current.append(value)
        return current
    if isinstance(current, dict):
        border = 1
        while border in current:
            border += 1
        current[border] = value
        # only the inserted keys are integers, 1 to border: all of them, the table is an array
        return list(current.values()) if len(current) == border else current
    return [value]


def _values(values: Values) -> list[tuple[str, Any]]:
    out = []
    for i, entry in enumerate(values.json):
        name, value = split_pair(entry)
        cast = json_value(value, values.json_types[i] if i < len(values.json_types) else None)
        if cast is not None:
            out.append((name, cast))
    return out


def _header_pairs(entries: list[str]) -> list[tuple[bytes, bytes | None]]:
    """(name, value) of each entry; a name as kong.response's setters write it and get_headers() finds it: lower
    case, "_" as "-" (lua-nginx-module's transform_underscores_in_response_headers, on in Kong), and escaped as
    ngx.header escapes a name (Kong's schema does not check the names of add, append and replace)."""
    out = []
    for entry in entries:
        name, value = split_pair(entry)
        raw = value.encode() if value is not None else None
        out.append((escape_name(name.lower().replace("_", "-").encode()), raw))
    return out


def _set(pairs: list[tuple[bytes, bytes | None]]) -> list[tuple[bytes, bytes]]:
    """The entries with a value, as kong.response.set_header / add_header write it (escape_value)."""
    return [(name, escape_value(value)) for name, value in pairs if value is not None]


_PLANS = 64  # header plans kept per config: one per set of tested names that responses have (a few at most)

# lua-nginx-module's built-in response headers set through one headers_out slot (ngx_http_lua_headers_out.c
# ngx_http_lua_set_handlers: ngx_http_set_builtin_header and its Location, Last-Modified, Content-Length and
# Content-Type variants; WWW-Authenticate, Cache-Control and Link are multi-valued and not here). ETag and E-Tag
# share one slot in nginx; here each is its own.
SINGLE_BUILTIN = frozenset({b"server", b"date", b"content-encoding", b"location", b"refresh", b"last-modified",
                            b"content-range", b"accept-ranges", b"expires", b"e-tag", b"etag", b"content-length",
                            b"content-type"})
_RELATIVE_LOCATION = b"location:relative"  # in a plan's names: the response's Location starts with "/"
_EMPTY, _UPSTREAM, _SET = 0, 1, 2  # a built-in header's slot: no line, the upstream's line, the last line added


class _HeaderPlan(NamedTuple):
    """Kong's transform_headers for responses having one set of the tested names: the names whose headers (as they
    came) go; and what is added, in order, each (name, value, None), or (name, b"", old) for a renamed header, which
    takes old's values as they came. `fixed`: the added headers when none is renamed."""

    cleared: frozenset[bytes]
    added: tuple[tuple[bytes, bytes, bytes | None], ...]
    fixed: list[tuple[bytes, bytes]] | None


def _clear_length(headers: Headers) -> None:
    """kong.response.clear_header("Content-Length"), in place."""
    for name, _ in headers:
        if name == b"content-length":
            headers[:] = [hv for hv in headers if hv[0] != b"content-length"]
            return


class ResponseTransformer:
    """A phase is an attribute only when the config needs it, as ResponsePhases takes a plugin's phases by hasattr:
    header_filter with header or JSON changes, wants_body and body_filter with JSON ones."""

    name = "response-transformer"
    priority = 800  # Kong's
    changes_body = True

    header_filter: Callable[[Exchange, int, Headers], Headers]
    wants_body: Callable[[Exchange, int, Headers], bool]
    body_filter: Callable[[Exchange, int, Headers, bytes], bytes]

    def __init__(self, config: ResponseTransformerConfig) -> None:
        # remove goes through Kong's iter(), which splits "name:value" too: the name is what is removed
        self.remove_headers = [name for name, _ in _header_pairs(config.remove.headers)]
        self.rename_headers = [(old, new.lower().replace(b"_", b"-"))
                               for old, new in _header_pairs(config.rename.headers) if new is not None]
        self.replace_headers = _set(_header_pairs(config.replace.headers))
        self.add_headers = _set(_header_pairs(config.add.headers))
        self.append_headers = _set(_header_pairs(config.append.headers))
        # the built-in single headers appended to (which overwrite the line their slot holds)
        self.single_appends = frozenset(name for name, _ in self.append_headers if name in SINGLE_BUILTIN)
        self.appends_location = b"location" in self.single_appends
        # the names whose presence in the response (as it came) the changes depend on: rename's old names, replace's
        # and add's, the built-in single headers appended to
        self.tested = frozenset([old for old, _ in self.rename_headers] + [n for n, _ in self.replace_headers]
                                + [n for n, _ in self.add_headers]) | self.single_appends
        self.plans: Memo[frozenset[bytes], _HeaderPlan] = Memo(_PLANS)
        header_changes = bool(self.remove_headers or self.rename_headers or self.replace_headers
                              or self.add_headers or self.append_headers)
        self.remove_json = [split_pair(name)[0] for name in config.remove.json]
        # (old, new) of the renames that apply ("a:" has none); new is None for a key renamed to itself: Kong sets
        # the new name, then clears the old one, so that key is dropped
        self.rename_json = [(old, None if new == old else new) for old, new in map(split_pair, config.rename.json)
                            if new is not None]
        self.replace_json = _values(config.replace)
        self.add_json = _values(config.add)
        self.append_json = _values(config.append)
        # what transform_json_body's ops do to a body that is a Lua scalar: replace and add index it also for an
        # entry whose value json_value() drops, append does not; a string is written into only where a name is (or,
        # for add, is not) one of its methods
        self.indexes_scalar = bool(config.remove.json or config.rename.json or config.replace.json
                                   or config.add.json or self.append_json)
        self.writes_string = bool(self.remove_json or self.append_json
                                  or any(old in LUA_STRING_METHODS for old, _ in self.rename_json)
                                  or any(name in LUA_STRING_METHODS for name, _ in self.replace_json)
                                  or any(name not in LUA_STRING_METHODS for name, _ in self.add_json))
        # any JSON entry, also one whose value json_value() drops: Kong decodes and encodes the body again
        if config.remove.json or config.rename.json or config.replace.json or config.add.json or config.append.json:
            self.wants_body = self._wants_body
            self.body_filter = self._body_filter
            self.header_filter = self._json_header_filter if header_changes else self._length_filter
        elif header_changes:
            self.header_filter = self._header_filter

    def plan(self, present: frozenset[bytes]) -> _HeaderPlan:
        """Kong's transform_headers played over names for a response having `present` of the tested names: remove,
        rename (set_header(new, old's values), clear_header(old)), replace (present names), add (absent names),
        append; set_header clears the name, then adds its value, Transfer-Encoding aside. Kept for the next such
        response."""
        cleared = set(self.remove_headers)
        added: list[tuple[bytes, bytes, bytes | None]] = []
        # the slot of each built-in single header appended to: an upstream's line holds it, but for a relative
        # Location (ngx_http_upstream_rewrite_location) or an E-Tag (whose slot is ETag's)
        slots = {name: _UPSTREAM if name in present and name != b"e-tag" and not (
            name == b"location" and _RELATIVE_LOCATION in present) else _EMPTY for name in self.single_appends}

        def clear(name: bytes) -> None:
            cleared.add(name)
            added[:] = [a for a in added if a[0] != name]
            if name in slots:
                slots[name] = _EMPTY

        def hold(name: bytes, value: bytes) -> None:
            """The slot holds the line just set, unless a relative Location (ngx_http_set_location_header)."""
            slots[name] = _EMPTY if name == b"location" and value[:1] == b"/" else _SET

        def put(name: bytes, value: bytes, old: bytes | None = None) -> None:
            if name not in TRANSFER_ENCODING_NAMES:  # which kong.response.set_header ignores
                clear(name)
                added.append((name, value, old))
                if name in slots:
                    hold(name, value)

        for name in self.remove_headers:
            if name in slots:
                slots[name] = _EMPTY

        for old, new in self.rename_headers:
            if old in present:
                put(new, b"", old)
                clear(old)
        for name, value in self.replace_headers:
            if name in present:
                put(name, value)
        for name, value in self.add_headers:
            if name not in present:
                put(name, value)
        for name, value in self.append_headers:  # the line a slot holds goes (the new value at the end, as put's)
            slot = slots.get(name, _EMPTY)
            if slot == _SET:  # the last line added of the name
                del added[max(i for i, entry in enumerate(added) if entry[0] == name)]
            elif slot == _UPSTREAM:
                cleared.add(name)
            added.append((name, value, None))
            if name in slots:
                hold(name, value)
        renames = any(old is not None for _, _, old in added)
        return self.plans.keep(present, _HeaderPlan(frozenset(cleared), tuple(added),
                                                     None if renames else [(name, value) for name, value, _ in added]))

    def _header_filter(self, ex: Exchange, status: int, headers: Headers) -> Headers:
        came = dict(headers)  # the names as they came, each with its last value
        read = headers
        if len(headers) < MAX_RESP_HEADERS:
            present = self.tested.intersection(came)
        else:  # rename, replace and add test what kong.response.get_headers() reads of it; a slot is nginx's
            read = resp_get_headers(headers)
            present = self.tested.intersection(map(_NAME, read)) | self.single_appends.intersection(came)
        if self.appends_location and came.get(b"location", b"")[:1] == b"/":
            present = present | {_RELATIVE_LOCATION}
        cleared, added, fixed = self.plans.get(present) or self.plan(present)
        unique = len(came) == len(headers)  # no name twice
        if fixed is None:  # a renamed header takes the values its old name came with
            fixed = []
            for name, value, old in added:
                if old is None:
                    fixed.append((name, value))
                elif unique:
                    fixed.append((name, came[old]))
                else:  # set_header of the values: a built-in single header keeps the last (set_builtin_header)
                    values = [v for n, v in read if n == old]
                    fixed += [(name, v) for v in (values[-1:] if name in SINGLE_BUILTIN else values)]
        if gone := cleared.intersection(came):  # clear_header of each
            if unique:  # each goes where it stands
                try:
                    for name in gone:
                        headers.remove((name, came[name]))
                except ValueError:  # an entry that is no tuple (as Headers are): filtered
                    headers[:] = [hv for hv in headers if hv[0] not in gone]
            else:
                headers[:] = [hv for hv in headers if hv[0] not in gone]
        headers += fixed
        return headers

    def _length_filter(self, ex: Exchange, status: int, headers: Headers) -> Headers:
        """transform_headers' last step: a JSON response (by its Content-Type as it came) loses its Content-Length,
        which the body filter's new body replaces (so a HEAD answer has none)."""
        if self._wants_body(ex, status, headers):
            _clear_length(headers)
        return headers

    def _json_header_filter(self, ex: Exchange, status: int, headers: Headers) -> Headers:
        """The header changes, then `_length_filter`'s step (its Content-Type tested before the changes, as Kong
        tests its get_headers() copy)."""
        json = self._wants_body(ex, status, headers)
        headers = self._header_filter(ex, status, headers)
        if json:
            _clear_length(headers)
        return headers

    def _wants_body(self, ex: Exchange, status: int, headers: Headers) -> bool:
        for name, value in headers:
            if name == b"content-type":
                known = _JSON_TYPES.get(value)
                return _JSON_TYPES.keep(value, is_json(value)) if known is None else known
        return False

    def _body_filter(self, ex: Exchange, status: int, headers: Headers, body: bytes) -> bytes:
        try:
            doc = cjson.decode(body)
        except ValueError:
            log.warning("response-transformer: body transform failed: failed parsing json body")
            return body
        if isinstance(doc, dict):
            self._transform(doc)
        elif not isinstance(doc, list):  # (an array's op names go to its hash part: nothing to do)
            self._index_scalar(doc)
        try:
            return cjson.encode(doc, CJSON_PRECISION)  # body_transformer's own cjson.safe.new(): 14 digits
        except ValueError:  # cjson.encode fails on NaN and infinities: Kong sends the body as it came
            log.warning("response-transformer: body transform failed: Cannot serialise number: must not be NaN or "
                        "Infinity")
            return body

    def _transform(self, doc: dict[str, Any]) -> None:
        """transform_json_body's ops on a JSON object, in place."""
        for name in self.remove_json:
            doc.pop(name, None)
        for old, new in self.rename_json:
            if old in doc:
                value = doc.pop(old)
                if new is not None:
                    doc[new] = value
        for name, value in self.replace_json:
            current = doc.get(name, _MISSING)
            if current is not _MISSING and current is not False:  # Lua: present and not false (0 and "" count)
                doc[name] = value
        for name, value in self.add_json:
            current = doc.get(name, _MISSING)
            if current is _MISSING or current is False:
                doc[name] = value
        for name, value in self.append_json:
            doc[name] = append_value(doc.get(name), value)

    def _index_scalar(self, doc: Any) -> None:
        """transform_json_body's ops on a body cjson decoded to a Lua scalar: LuaError where Lua's indexing fails
        (a string is written into, any other value indexed), as Kong's body_filter, run outside a pcall, fails."""
        if isinstance(doc, str):
            if self.writes_string:
                raise LuaError("response-transformer: attempt to index local 'json_body' (a string value)")
        elif self.indexes_scalar:
            kind = "userdata" if doc is None else "boolean" if isinstance(doc, bool) else "number"  # null: cjson.null
            raise LuaError(f"response-transformer: attempt to index local 'json_body' (a {kind} value)")
