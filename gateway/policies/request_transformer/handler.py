"""Kong's request-transformer (kong/plugins/request-transformer/access.lua), in Kong's order: the method, then the
headers, the body, the query string; each as remove, rename, replace (only present names), add (only absent
names), append.

Bodies: JSON (as lua-cjson reads and writes it: an object changed by name; an array or a string written again or
failing as Lua indexing them does), application/x-www-form-urlencoded and multipart/form-data (lua-multipart 0.5.9's
reading and writing, quirks included: gateway.policies.multipart.Multipart), read whole up to
REQUEST_BODY_LIMIT; a larger body is forwarded unchanged (Kong's get_raw_body gives nothing for a body over
client_body_buffer_size, 8k by default, and Kong then builds the body from the added keys alone). Values may use the
templates $(headers.NAME) and $(query_params.NAME) (empty when absent). As in Kong, the query string is read as
kong.request.get_query reads it (the first 100 named arguments) and written back sorted (set_query, ngx.encode_args'
escaping); a form body as ngx.decode_args reads it (its first 100 pieces) and ngx.encode_args writes it; a value is
tested with Lua's truthiness (a JSON null counts, false does not); headers are changed on the table
kong.request.get_headers() gives (its first 100 lines; a name as written, else lower-cased with "_" as "-"), cleared
with clear_header and set again with set_headers (a header set in place of the first line of its name; values
escaped as ngx.req.set_header escapes them: a CR or LF becomes %0D, %0A); and the template's `headers` are read
when a template first reads them: during the header changes when one of them has a headers template, else after
those changes. Bytes that are not UTF-8 (in a query, a header, a body) go through unchanged.
"""

from __future__ import annotations

import logging
from typing import Any

from gateway.http.codec import Headers
from gateway.http.server import Exchange
from gateway.http.uri_args import MAX_URI_ARGS, uri_args
from gateway.http.uri_args import encode_args as ngx_encode_args
from gateway.policies import cjson
from gateway.policies.base import LuaError
from gateway.policies.cjson import CJSON_PRECISION
from gateway.policies.header_list import escape_value, lookup, request_header
from gateway.policies.multipart import Multipart
from gateway.policies.request_body import post_args
from gateway.policies.request_transformer.schema import TEMPLATE, RequestTransformerConfig
from gateway.policies.response_transformer.handler import append_value
from gateway.policies.response_transformer.schema import split_pair
from gateway.routing.normalize import escape_path

REQUEST_BODY_LIMIT = 1024 * 1024  # bytes of a request body the plugin reads to transform it
MAX_ARGS = MAX_URI_ARGS  # arguments kong.request.get_query and ngx.decode_args read; the rest are dropped
_JSON, _FORM, _MULTIPART = "json", "form", "multipart"
_FAILED = object()  # a JSON body lua-cjson could not decode
# what indexing a Lua string finds (its metatable's __index is the string library): the only names a string body
# "has"
_LUA_STRING_METHODS = frozenset({"byte", "char", "dump", "find", "format", "gmatch", "gsub", "len", "lower", "match",
                                 "rep", "reverse", "sub", "upper"})
log = logging.getLogger(__name__)
Args = dict[str, Any]  # name -> str, True (no "="), or a list of them
Env = tuple[Headers, Args, dict[int | str, bytes | None]]  # a template's headers, query_params, uri_captures


def _pairs(entries: list[str]) -> list[tuple[str, str]]:
    """The "name:value" entries that have a value: Kong's iter() gives none for "name:", and nothing is set then."""
    return [(name, value) for name, value in map(split_pair, entries) if value is not None]


def _truthy(args: Args, name: str) -> bool:
    """Lua's `if args[name]`: present and not false (a JSON null is cjson.null, which is true)."""
    return name in args and args[name] is not False


def _content_kind(content_type: bytes | None) -> str | None:
    if content_type is None:
        return None
    lowered = content_type.lower()
    if b"application/json" in lowered:
        return _JSON
    if b"multipart/form-data" in lowered:  # Kong's get_content_type: in this order
        return _MULTIPART
    if b"application/x-www-form-urlencoded" in lowered:
        return _FORM
    return None


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def get_query(target: bytes) -> Args:
    """kong.request.get_query(): ngx.req.get_uri_args as lua-resty-core reads it (gateway.http.uri_args), as text."""
    return {_text(name): [_text(v) if isinstance(v, bytes) else v for v in value] if isinstance(value, list)
            else _text(value) if isinstance(value, bytes) else value
            for name, value in uri_args(target.partition(b"?")[2], MAX_ARGS).items()}


def decode_args(raw: bytes) -> Args:
    """ngx.decode_args: the first 100 pieces; repeated names become lists; a name without "=" is true."""
    return post_args(raw, MAX_ARGS)


def encode_args(args: Args) -> bytes:
    """ngx.encode_args: escaped as ngx escapes a URI component, lists repeated, true a bare name, false dropped (a
    table inside a list is ngx's error)."""
    table: dict[bytes, Any] = {}
    for name, value in args.items():
        if isinstance(value, list):
            if any(isinstance(v, (list, dict)) for v in value):
                raise LuaError("attempt to use table as query arg value")
            table[_bytes(name)] = [v if isinstance(v, bool) else _bytes(_lua_string(v)) for v in value]
        else:
            table[_bytes(name)] = value if isinstance(value, bool) else _bytes(_lua_string(value))
    return ngx_encode_args(table)


def _lua_string(value: Any) -> str:
    """A value as Lua's tostring writes it (numbers "%.14g")."""
    if isinstance(value, (int, float)):
        return f"{value:.14g}"
    return value if isinstance(value, str) else str(value)


def encode_query(args: Args) -> bytes:
    """kong.service.request.set_query (make_ordered_args): each name's ngx.encode_args, sorted."""
    return b"&".join(sorted(encode_args({name: value}) for name, value in args.items()))


class _Ops:
    """One target's (headers, querystring or body) remove, rename, replace, add and append lists."""

    __slots__ = ("remove", "rename", "replace", "add", "append")

    def __init__(self, config: RequestTransformerConfig, field: str) -> None:
        self.remove = [split_pair(entry)[0] for entry in getattr(config.remove, field)]  # iter() splits these too
        self.rename = _pairs(getattr(config.rename, field))
        self.replace = _pairs(getattr(config.replace, field))
        self.add = _pairs(getattr(config.add, field))
        self.append = _pairs(getattr(config.append, field))

    def __bool__(self) -> bool:
        return bool(self.remove or self.rename or self.replace or self.add or self.append)


class RequestTransformer:
    name = "request-transformer"
    priority = 801  # Kong's

    def __init__(self, config: RequestTransformerConfig) -> None:
        self.method = config.http_method.encode() if config.http_method else None
        self.uri = config.replace.uri  # a template of the whole upstream path (kong.service.request.set_path)
        self.headers = _Ops(config, "headers")
        self.query = _Ops(config, "querystring")
        self.body = _Ops(config, "body")
        # Kong's template environment reads `headers` when a template first does: while the headers change when a
        # header change has such a template, else after them (so removed headers are gone for the body and query)
        header_entries = [e for ops in (config.remove, config.rename, config.replace, config.add, config.append)
                          for e in ops.headers]
        self.headers_read_early = any(m.group(1) == "headers" for e in header_entries for m in TEMPLATE.finditer(e))

    async def access(self, ex: Exchange) -> bool:
        req = ex.request
        original_query = get_query(req.target)
        captures = ex.uri_captures()
        env = (req.headers, original_query, captures)
        if self.uri is not None:  # Kong's transform_uri, first of all
            upstream_path = _render(self.uri, env)
            if not upstream_path.startswith("/"):  # kong.service.request.set_path's error: Kong's 500
                log.error("request-transformer: replace.uri %r rendered %r, which is no path (it must start with "
                          "'/'): check the template and the route's captures", self.uri, upstream_path)
                await ex.respond_error(500)
                return True
            ex.set_upstream_path(escape_path(_bytes(upstream_path)))
        if self.method is not None:
            await self._method(ex, original_query)
        if self.headers:
            req.headers = self._headers(req.headers, env)
            if not self.headers_read_early:
                env = (req.headers, original_query, captures)
        if self.body:
            await self._body(ex, env)
        if self.query:
            copy = {k: list(v) if isinstance(v, list) else v for k, v in original_query.items()}
            args = self._apply(copy, self.query, env, from_body=False)
            path = req.target.partition(b"?")[0]
            query = encode_query(args)  # type: ignore[arg-type]  # None only for a body
            ex.rewrite_target(path + b"?" + query if query else path)
        return False

    async def _method(self, ex: Exchange, query: Args) -> None:
        """transform_method: the method; for GET, HEAD and TRACE a form body's arguments go into the query string
        (a name already there gets the body's value after its own), written as set_query writes it."""
        req = ex.request
        ex.set_method(self.method)  # type: ignore[arg-type]
        if self.method in (b"GET", b"HEAD", b"TRACE") and \
                _content_kind(request_header(req.headers, b"content-type")) == _FORM:
            raw, whole = await ex.read_body(REQUEST_BODY_LIMIT)
            form = decode_args(raw) if whole else {}
            if form:
                for name, value in form.items():
                    current = query.get(name)
                    if current is None:
                        query[name] = value
                    elif isinstance(current, list):
                        current.append(value)
                    else:
                        query[name] = [current, value]
                path = req.target.partition(b"?")[0]
                ex.rewrite_target(path + b"?" + encode_query(query))

    def _headers(self, headers: Headers, env: Env) -> Headers:
        """transform_headers on the table get_headers() gives (`table`: raw keys, looked up as its metatable does),
        then clear_header for the removed and renamed names and set_headers with the table."""
        ops = self.headers
        table: dict[bytes, Any] = {}
        for line_name, line_value in headers[:_MAX_HEADERS]:
            current = table.get(line_name)
            table[line_name] = line_value if current is None else [*current, line_value] \
                if isinstance(current, list) else [current, line_value]
        table.pop(b"host", None)
        original = dict(table)

        def get(key: bytes) -> Any:
            found = table.get(key)
            return found if found is not None else table.get(key.lower().replace(b"_", b"-"))

        def rename(old: bytes, new: bytes) -> bool:
            if old == new:
                return False
            value = get(old)
            if value is None:
                return False
            table.pop(old, None)
            table[new] = value
            return True

        cleared: dict[bytes, None] = {}
        for name in ops.remove:
            key = name.lower().encode()
            if get(key) is not None:
                table.pop(key, None)
                cleared[key] = None
        for old, new in ops.rename:
            old_key, new_key = old.encode(), _bytes(_render(new, env))
            moved = rename(old_key, new_key) if old_key.lower() == new_key.lower() else \
                rename(old_key.lower(), new_key.lower())
            if moved:
                cleared[old_key.lower()] = None  # clear_header: any case
        for name, value in ops.replace:
            key = name.lower().encode()
            if get(key) is not None:
                table[key] = _bytes(_render(value, env))
        for name, value in ops.add:
            key = name.encode()
            if get(key) is None and key.lower() != b"host":
                table[key] = _bytes(_render(value, env))
        for name, value in ops.append:
            key, lower = name.encode(), name.lower().encode()
            if lower == b"host":
                continue
            if key != lower and get(key) is not None:
                table[key] = get(key)
                table.pop(lower, None)
            current = get(key)
            added = _bytes(_render(value, env))
            table[key] = [current, added] if isinstance(current, bytes) else [*current, added] \
                if isinstance(current, list) else [added]
        out = [hv for hv in headers if hv[0] not in cleared] if cleared else list(headers)
        for table_key, table_value in table.items():
            if original.get(table_key) is table_value and isinstance(table_value, bytes) and \
                    table_key.lower() not in cleared and escape_value(table_value) is table_value:
                continue  # set_header of a line to what it holds changes nothing
            out = _set_header(out, table_key.lower(), table_value if isinstance(table_value, list) else [table_value])
        return out

    async def _body(self, ex: Exchange, env: Env) -> None:
        req = ex.request
        content_type = request_header(req.headers, b"content-type")
        kind = _content_kind(content_type)
        if kind is None:
            return
        raw, whole = await ex.read_body(REQUEST_BODY_LIMIT)
        if not whole:
            return  # over the limit: forwarded unchanged
        if kind == _MULTIPART:
            multipart = Multipart(raw, content_type)
            if not self._multipart(multipart, env, bool(raw)):
                return
            body = multipart.tostring()
        elif kind == _JSON:
            body_or_none = self._json(raw, env)
            if body_or_none is None:
                return
            body = body_or_none
        else:
            new = self._apply(decode_args(raw), self.body, env, from_body=bool(raw))
            if new is None:
                return
            body = encode_args(new)
        ex.replace_body(body)
        headers = [hv for hv in req.headers if hv[0] != b"transfer-encoding"]
        req.headers = _set_header(headers, b"content-length", [b"%d" % len(body)])

    def _json(self, raw: bytes, env: Env) -> bytes | None:
        """transform_json_body: the body written again by lua-cjson, or None when it stays as it came."""
        try:
            doc = cjson.decode(raw)
        except ValueError:
            doc = _FAILED
        if doc is _FAILED:
            if raw:
                return None
            doc = {}
        if isinstance(doc, dict):
            new = self._apply(doc, self.body, env, from_body=bool(raw))
            return None if new is None else cjson.encode(new, CJSON_PRECISION)
        ops = self.body
        if isinstance(doc, list):  # a Lua array: names go to its hash part, which cjson does not write
            changed = bool(ops.remove or ops.add or ops.append)
            return cjson.encode(doc, CJSON_PRECISION) if changed else None
        if isinstance(doc, str):  # indexing a string finds the string library; writing into one fails
            writes = bool(ops.remove or ops.append) or \
                any(old in _LUA_STRING_METHODS and old != _render(new, env) for old, new in ops.rename) or \
                any(name in _LUA_STRING_METHODS for name, _ in ops.replace) or \
                any(name not in _LUA_STRING_METHODS for name, _ in ops.add)
            if writes:
                raise LuaError("request-transformer: attempt to index local 'parameters' (a string value)")
            return None
        kind = "nil" if doc is None else "boolean" if isinstance(doc, bool) else "number"
        raise LuaError(f"request-transformer: attempt to index local 'parameters' (a {kind} value)")

    def _multipart(self, parts: Multipart, env: Env, from_body: bool) -> bool:
        """Kong's transform_multipart_body: rename, remove, replace (need a body), add; whether anything changed."""
        ops = self.body
        changed = False
        if from_body:
            for old, new in ops.rename:
                target = _render(new, env)
                found = parts.get(old)
                if found is not None and old != target:
                    parts.set_simple(target, found)
                    parts.delete(old)
                    changed = True
            for name in ops.remove:
                parts.delete(name)
                changed = True
            for name, value in ops.replace:
                if parts.get(name) is not None:
                    parts.delete(name)
                    parts.set_simple(name, _bytes(_render(value, env)))
                    changed = True
        for name, value in ops.add:
            if parts.get(name) is None:
                parts.set_simple(name, _bytes(_render(value, env)))
                changed = True
        return changed

    def _apply(self, args: Args, ops: _Ops, env: Env, from_body: bool) -> Args | None:
        """The ops on a name -> value mapping; for a body, None when nothing changed (Kong keeps the body then).
        remove, rename and replace need a non-empty body (Kong's content_length > 0)."""
        changed = False
        if from_body or ops is self.query:
            for name in ops.remove:
                args.pop(name, None)
                changed = True
            for old, new in ops.rename:
                target = _render(new, env)
                if old != target and _truthy(args, old):
                    args[target] = args.pop(old)
                    changed = True
            for name, value in ops.replace:
                if _truthy(args, name):  # Lua truthiness: 0, "" and null count
                    args[name] = _render(value, env)
                    changed = True
        for name, value in ops.add:
            if not _truthy(args, name):
                args[name] = _render(value, env)
                changed = True
        for name, value in ops.append:
            current = args.get(name)
            # table.insert into an empty JSON object makes it the array [value]
            args[name] = [_render(value, env)] if current == {} else append_value(current, _render(value, env))
            changed = True
        return args if changed or ops is self.query else None


_MAX_HEADERS = 100  # lua_max_req_headers: the lines kong.request.get_headers() reads


def _set_header(headers: Headers, name: bytes, values: list[Any]) -> Headers:
    """ngx.req.set_header(name, values): the first line of that name (any case) takes the first value in place and
    the others of the name go; the other values are new lines at the end (no line of the name: all are). Values
    escaped as lua-nginx-module escapes them."""
    values = [escape_value(v if isinstance(v, bytes) else _bytes(str(v))) for v in values]
    out: Headers = []
    placed = False
    for hv in headers:
        if hv[0] == name:
            if not placed:
                out.append((name, values[0]))
                placed = True
            continue
        out.append(hv)
    out.extend((name, v) for v in (values[1:] if placed else values))
    return out


def _render(value: str, env: Env) -> str:
    if "$(" not in value:
        return value
    headers, query, captures = env

    def lookup_template(m: Any) -> str:
        name = m.group(2) or m.group(4)
        table = m.group(1)
        if table == "uri_captures":  # by name, or by number ([0]: the whole match); a group that took no part: ""
            value = captures.get(name if name is not None else int(m.group(5)))
            return _text(value) if value else ""
        if name is None:  # headers[1], query_params[1]: nil in Kong's tables
            return ""
        if table == "headers":  # ngx.req.get_headers(): the name as written, else lower-cased with _ as -
            header = lookup(headers, _bytes(name))
            if isinstance(header, list):
                header = header[0]
            return _text(header) if header is not None else ""
        found = query.get(name)
        if isinstance(found, list):
            found = found[0]
        return "true" if found is True else "" if found is None else str(found)  # pl.template: tostring(v or '')

    return TEMPLATE.sub(lookup_template, value)
