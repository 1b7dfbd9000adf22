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
escaped as ngx.req.set_header escapes them: a CR or LF becomes %0D, %0A; a value "" is set, as Kong's PDK sets it
" ", which the upstream reads empty: a header a template renders empty is sent empty, one the client sent empty
stays). As in Kong's template environment, the templates' `headers` and `query_params` are read from the request
when a template (of any op, remove's too: Kong's iter() renders every entry's value) first reads them, and kept for
the rest of the request: a replace.uri template reading them keeps them as the client sent them (before the method's
form arguments join the query, before the header changes), and the query ops start from a copy of the query so kept.
Bytes that are not UTF-8 (in a query, a header, a body) go through unchanged.

What does not depend on the request is made once, when the config is loaded: the ops' names as the header table's
keys (and the other keys get_headers()' metatable would try), the values without a template (as text and as header
bytes), the templates split into their text and their lookups, a replace.uri without a template as the escaped path,
and which of the request's parts a template reads (the query string is parsed only when an op or a template needs
it, the route's captures read only when a template does). Per request, set_headers looks only at the names the ops
may have set or cleared and those sent twice, when no name is upper-case and no value has a byte it escapes: it
would set any other name's one line to what it holds.
"""

from __future__ import annotations

import logging
import re
from itertools import compress
from operator import itemgetter
from typing import Any

from gateway.http.codec import Headers, Request
from gateway.http.server import Exchange
from gateway.http.uri_args import MAX_URI_ARGS, escape_arg, uri_args
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
_FORM_TO_QUERY = (b"GET", b"HEAD", b"TRACE")  # transform_method: the methods a form body goes into the query for
log = logging.getLogger(__name__)
Args = dict[str, Any]  # name -> str, True (no "="), or a list of them
# A value's template, split where TEMPLATE matches: text, and (table, NAME or None, NAME as bytes, N) lookups
Template = tuple[str | tuple[str, str | None, bytes | None, int | None], ...]
_NAME, _VALUE = itemgetter(0), itemgetter(1)  # a header line's name, its value
# the bytes escape_value escapes (lua-nginx-module's escaping of a header value): a value without any is set as it is
_UNSAFE_VALUE_BYTE = re.compile(rb"[%b]" % re.escape(bytes(b for b in range(256)
                                                             if escape_value(bytes([b])) != bytes([b]))))
# the bytes ngx.encode_args writes as they are (escape_arg's unreserved ones): a name or value of only these is its
# own escaping
_KEPT = re.escape(bytes(b for b in range(256) if escape_arg(bytes([b])) == bytes([b])))
_ARG_KEPT = re.compile(rb"[%b]*" % _KEPT)
_ARG_PAIR_KEPT = re.compile(rb"[%b]*=[%b]*" % (_KEPT, _KEPT))  # "name=value", "=" not being one of them


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
    query = target.partition(b"?")[2]
    if not query:
        return {}
    return {_text(name): [_text(v) if isinstance(v, bytes) else v for v in value] if isinstance(value, list)
            else _text(value) if isinstance(value, bytes) else value
            for name, value in uri_args(query, MAX_ARGS).items()}


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
    """kong.service.request.set_query (make_ordered_args): each name's ngx.encode_args, sorted. A text value (or a
    bare name) is written here: as it is when escape_arg keeps all of its bytes, and "name=value" has none other
    than them but its "="."""
    pieces = []
    for name, value in args.items():
        if isinstance(value, str):
            raw_name, raw_value = name.encode("utf-8", "surrogateescape"), value.encode("utf-8", "surrogateescape")
            piece = raw_name + b"=" + raw_value
            if _ARG_PAIR_KEPT.fullmatch(piece) is None:
                piece = escape_arg(raw_name) + b"=" + escape_arg(raw_value)
        elif value is True:
            piece = name.encode("utf-8", "surrogateescape")
            if _ARG_KEPT.fullmatch(piece) is None:
                piece = escape_arg(piece)
        else:
            piece = encode_args({name: value})
        pieces.append(piece)
    if len(pieces) > 1:
        pieces.sort()
    return b"&".join(pieces)


def _template(value: str) -> Template | None:
    """The value split where TEMPLATE matches, for _render; None for a value without a template (it renders as
    itself)."""
    if "$(" not in value:
        return None
    parts: list[Any] = []
    at = 0
    for m in TEMPLATE.finditer(value):
        if m.start() > at:
            parts.append(value[at:m.start()])
        name = m.group(2) or m.group(4)
        parts.append((m.group(1), name, None if name is None else _bytes(name),
                      None if m.group(5) is None else int(m.group(5))))
        at = m.end()
    if not at:
        return None  # "$(" that opens no template: the text as it is
    if at < len(value):
        parts.append(value[at:])
    return tuple(parts)


class _Env:
    """Kong's template environment (access.lua `__meta_environment`): `headers` and `query_params` are read from the
    request when a template first reads them and kept for the rest of the request (its rawset); the route's captures
    do not change."""

    __slots__ = ("request", "headers", "query", "captures")

    def __init__(self, request: Request, captures: dict[int | str, bytes | None]) -> None:
        self.request = request
        self.headers: Headers | None = None  # the request's list as it stood (the plugin sets new lists, never edits)
        self.query: Args | None = None
        self.captures = captures

    def load(self, tables: set[str]) -> None:
        """The tables templates about to be rendered read, as the request stands now, unless already kept: Kong
        renders every entry of an op that runs, also where the op then changes nothing."""
        if self.headers is None and "headers" in tables:
            self.headers = self.request.headers
        if self.query is None and "query_params" in tables:
            self.query = get_query(self.request.target)

    def get_headers(self) -> Headers:
        if self.headers is None:
            self.headers = self.request.headers
        return self.headers

    def get_query(self) -> Args:
        if self.query is None:
            self.query = get_query(self.request.target)
        return self.query


def _render(template: Template, env: _Env | None) -> str:
    """A value with templates: each `$(...)` as Kong's template environment reads it."""
    assert env is not None  # there is one wherever there is a template
    out = []
    for part in template:
        if isinstance(part, str):
            out.append(part)
            continue
        table, name, raw_name, number = part
        if table == "uri_captures":  # by name, or by number ([0]: the whole match); a group that took no part: ""
            value = env.captures.get(name if name is not None else number)  # type: ignore[arg-type]
            out.append(_text(value) if value else "")
        elif name is None:  # headers[1], query_params[1]: nil in Kong's tables
            continue
        elif table == "headers":  # ngx.req.get_headers(): the name as written, else lower-cased with _ as -
            header = lookup(env.get_headers(), raw_name)  # type: ignore[arg-type]
            if isinstance(header, list):
                header = header[0]
            if header is not None:
                out.append(_text(header))
        else:
            found = env.get_query().get(name)
            if isinstance(found, list):
                found = found[0]
            out.append("true" if found is True else "" if found is None else str(found))  # tostring(v or '')
    return "".join(out)


def _tables(value: str) -> set[str]:
    """The tables (headers, query_params, uri_captures) the templates of a value read."""
    return {m.group(1) for m in TEMPLATE.finditer(value)}


class _Ops:
    """One target's (querystring or body) remove, rename, replace, add and append lists; a value with its template
    (None: the value is used as it is)."""

    __slots__ = ("remove", "rename", "replace", "add", "append", "active", "reads", "present_reads", "add_reads",
                 "append_reads")

    def __init__(self, config: RequestTransformerConfig, field: str) -> None:
        self.remove = [split_pair(entry)[0] for entry in getattr(config.remove, field)]  # iter() splits these too
        self.rename = [(old, new, _template(new)) for old, new in _pairs(getattr(config.rename, field))]
        self.replace = [(name, value, _template(value)) for name, value in _pairs(getattr(config.replace, field))]
        self.add = [(name, value, _template(value)) for name, value in _pairs(getattr(config.add, field))]
        self.append = [(name, value, _template(value)) for name, value in _pairs(getattr(config.append, field))]
        self.active = bool(self.remove or self.rename or self.replace or self.add or self.append)
        # the tables its values' templates read: those Kong renders only for a body that is not empty (remove's too,
        # though the gateway need not render them), add's, append's
        removed = [value for _, value in map(split_pair, getattr(config.remove, field)) if value is not None]
        self.present_reads = {table for value in removed for table in _tables(value)} | \
            {table for ops in (self.rename, self.replace) for _, value, _ in ops for table in _tables(value)}
        self.add_reads = {table for _, value, _ in self.add for table in _tables(value)}
        self.append_reads = {table for _, value, _ in self.append for table in _tables(value)}
        self.reads = self.present_reads | self.add_reads | self.append_reads


class RequestTransformer:
    name = "request-transformer"
    priority = 801  # Kong's

    def __init__(self, config: RequestTransformerConfig) -> None:
        self.method = config.http_method.encode() if config.http_method else None
        self.form_to_query = self.method in _FORM_TO_QUERY
        self.uri = config.replace.uri  # a template of the whole upstream path (kong.service.request.set_path)
        self.uri_template = None if self.uri is None else _template(self.uri)
        # a uri without a template: the path it sets (one that is no path fails per request, as Kong's)
        self.uri_path = escape_path(_bytes(self.uri)) if self.uri is not None and self.uri_template is None \
            and self.uri.startswith("/") else None
        self.query = _Ops(config, "querystring")
        self.body = _Ops(config, "body")
        self._compile_headers(config)
        self.uri_reads = _tables(self.uri) if self.uri is not None else set()
        reads = self.query.reads | self.body.reads | self.header_reads | self.uri_reads
        self.reads_captures = "uri_captures" in reads
        self.templated = bool(reads)
        # the query ops change a copy of the query when their templates read the query as it came
        self.query_copied = "query_params" in self.query.reads

    def _compile_headers(self, config: RequestTransformerConfig) -> None:
        """The header ops on get_headers()' table, as keys: a name's key and the one the table's metatable tries
        next (lower-cased, "_" as "-"); a value as bytes, or its template."""
        def other(key: bytes) -> bytes:
            return key.lower().replace(b"_", b"-")

        def value(text: str) -> tuple[bytes | None, Template | None]:
            template = _template(text)
            return (_bytes(text) if template is None else None), template

        self.header_remove = [(key, other(key)) for key in
                              (split_pair(entry)[0].lower().encode() for entry in config.remove.headers)]
        renames = [(old.encode(), new, _template(new)) for old, new in _pairs(config.rename.headers)]
        # the schema takes header names only as rename's new names, never a template: the renames are made here
        # (with a template, per request)
        self.header_rename_templates = renames if any(template is not None for _, _, template in renames) else None
        self.header_rename = [] if self.header_rename_templates else \
            [entry for old, new, _ in renames if (entry := _header_rename(old, _bytes(new))) is not None]
        self.header_replace = [(key, other(key), *value(text)) for key, text in
                               ((name.lower().encode(), text) for name, text in _pairs(config.replace.headers))]
        self.header_add = [(key, other(key), *value(text)) for key, text in
                           ((name.encode(), text) for name, text in _pairs(config.add.headers))
                           if key.lower() != b"host"]
        self.header_append = [(key, lower, key != lower, other(key), *value(text)) for key, lower, text in
                              ((name.encode(), name.lower().encode(), text)
                               for name, text in _pairs(config.append.headers)) if lower != b"host"]
        # whether transform_headers runs (set_headers then writes the table, whatever the ops did)
        self.header_ops = bool(config.remove.headers or renames or _pairs(config.replace.headers) or
                               _pairs(config.add.headers) or _pairs(config.append.headers))
        # every key the ops may set in the table (the lines set_headers may change, with those of the names cleared
        # or sent twice, when no name is upper-case and no value escaped)
        self.header_keys = frozenset([new for _, _, new, _ in self.header_rename] +
                                     [key for key, *_ in self.header_replace] + [key for key, *_ in self.header_add] +
                                     [key for key, *_ in self.header_append])
        # the tables the header ops' templates read (remove's too: Kong renders their values)
        self.header_reads = {table for ops in (config.remove, config.rename, config.replace, config.add, config.append)
                             for _, text in _pairs(ops.headers) for table in _tables(text)}

    async def access(self, ex: Exchange) -> bool:
        req = ex.request
        # what the templates read (None: there is no template)
        env = _Env(req, ex.uri_captures() if self.reads_captures else {}) if self.templated else None
        if self.uri is not None:  # Kong's transform_uri, first of all
            if self.uri_path is not None:
                ex.set_upstream_path(self.uri_path)
            else:
                if env is not None and self.uri_reads:
                    env.load(self.uri_reads)  # as the client sent them ($(headers[1]) reads `headers` too)
                upstream_path = self.uri if self.uri_template is None else _render(self.uri_template, env)
                if not upstream_path.startswith("/"):  # kong.service.request.set_path's error: Kong's 500
                    log.error("request-transformer: replace.uri %r rendered %r, which is no path (it must start "
                              "with '/'): check the template and the route's captures", self.uri, upstream_path)
                    await ex.respond_error(500)
                    return True
                ex.set_upstream_path(escape_path(_bytes(upstream_path)))
        if self.method is not None:
            await self._method(ex)
        if self.header_ops:
            if env is not None and self.header_reads:
                env.load(self.header_reads)  # the headers as the client sent them
            req.headers = self._headers(req.headers, env)
        if self.body.active:
            await self._body(ex, env)
        if self.query.active:
            if env is None:
                args = get_query(req.target)
            else:  # cycle_aware_deep_copy(template_env.query_params): the query as a template first read it
                env.load(self.query.reads)
                kept = env.get_query()
                args = {k: list(v) if isinstance(v, list) else v for k, v in kept.items()} \
                    if self.query_copied else kept
            _apply(args, self.query, env, True)
            path = req.target.partition(b"?")[0]
            query = encode_query(args)
            ex.rewrite_target(path + b"?" + query if query else path)
        return False

    async def _method(self, ex: Exchange) -> None:
        """transform_method: the method; for GET, HEAD and TRACE a form body's arguments go into the query string
        (get_query's table of its own: a name already there gets the body's value after its own), written as
        set_query writes it."""
        req = ex.request
        ex.set_method(self.method)  # type: ignore[arg-type]
        if self.form_to_query and _content_kind(request_header(req.headers, b"content-type")) == _FORM:
            raw, whole = await ex.read_body(REQUEST_BODY_LIMIT)
            form = decode_args(raw) if whole else {}
            if form:
                query = get_query(req.target)
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

    def _headers(self, headers: Headers, env: _Env | None) -> Headers:
        """transform_headers on the table get_headers() gives (`table`: raw keys, looked up as its metatable does),
        then clear_header for the removed and renamed names and set_headers with the table."""
        first = headers if len(headers) <= _MAX_HEADERS else headers[:_MAX_HEADERS]
        table: dict[bytes, Any] = dict(first)
        sent_twice: dict[bytes, None] | None = None
        if len(table) != len(first):  # a name sent more than once: a list of its values
            table, sent_twice = {}, {}
            for line_name, line_value in first:
                current = table.get(line_name)
                if current is None:
                    table[line_name] = line_value
                else:
                    table[line_name] = [*current, line_value] if isinstance(current, list) else [current, line_value]
                    sent_twice[line_name] = None
        # set_headers writes again the lines of a name the ops did not touch when it was sent twice (its values are a
        # list), when its lower-cased name is cleared, or when its value is escaped; the first is known from the
        # table, the second from the ops' names when no name is upper-case, the last when no value has a byte to
        # escape: else every key is looked at
        names = b"".join(table)
        every_key = names.lower() != names or _UNSAFE_VALUE_BYTE.search(b"".join(map(_VALUE, first))) is not None
        table.pop(b"host", None)
        original = dict(table)

        cleared: dict[bytes, None] = {}
        for key, other in self.header_remove:
            if table.get(key) is not None or table.get(other) is not None:
                table.pop(key, None)
                cleared[key] = None
        if self.header_rename_templates:
            renames = [entry for old, new, template in self.header_rename_templates
                       if (entry := _header_rename(old, _bytes(new if template is None else _render(template, env))))
                       is not None]
            every_key = True
        else:
            renames = self.header_rename
        for old, other, new, old_lower in renames:
            value = table.get(old)
            if value is None:
                value = table.get(other)
                if value is None:
                    continue
            table.pop(old, None)
            table[new] = value
            cleared[old_lower] = None  # clear_header: any case
        for key, other, static, template in self.header_replace:
            if table.get(key) is not None or table.get(other) is not None:
                table[key] = static if template is None else _bytes(_render(template, env))
        for key, other, static, template in self.header_add:
            if table.get(key) is None and table.get(other) is None:
                table[key] = static if template is None else _bytes(_render(template, env))
        for key, lower, cased, other, static, template in self.header_append:
            current = table.get(key)
            if current is None:
                current = table.get(other)
            if cased and current is not None:
                table[key] = current
                table.pop(lower, None)
            added = static if template is None else _bytes(_render(template, env))
            table[key] = [current, added] if isinstance(current, bytes) else [*current, added] \
                if isinstance(current, list) else [added]

        out = [hv for hv in headers if hv[0] not in cleared] if cleared else list(headers)
        if every_key:
            keys: Any = table
        else:  # the other keys hold their one line's value as it came: set_header would write it as it is
            candidates = self.header_keys.union(cleared, sent_twice or ()) if cleared or sent_twice \
                else self.header_keys
            keys = filter(candidates.__contains__, table)
        for table_key in keys:
            table_value = table[table_key]
            if original.get(table_key) is table_value and isinstance(table_value, bytes) and \
                    table_key.lower() not in cleared and escape_value(table_value) is table_value:
                continue  # set_header of a line to what it holds changes nothing
            out = _set_header(out, table_key.lower(), table_value)
        return out

    async def _body(self, ex: Exchange, env: _Env | None) -> None:
        req = ex.request
        content_type = request_header(req.headers, b"content-type")
        kind = _content_kind(content_type)
        if kind is None:
            return
        raw, whole = await ex.read_body(REQUEST_BODY_LIMIT)
        if not whole:
            return  # over the limit: forwarded unchanged
        if kind == _MULTIPART:
            if env is not None:  # transform_multipart_body has no append
                env.load(self.body.present_reads | self.body.add_reads if raw else self.body.add_reads)
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
            if env is not None:
                env.load(self.body.reads if raw else self.body.add_reads | self.body.append_reads)
            args = decode_args(raw)
            if not _apply(args, self.body, env, bool(raw)):
                return
            body = encode_args(args)
        ex.replace_body(body)
        headers = [hv for hv in req.headers if hv[0] != b"transfer-encoding"]
        req.headers = _set_header(headers, b"content-length", b"%d" % len(body))

    def _json(self, raw: bytes, env: _Env | None) -> bytes | None:
        """transform_json_body: the body written again by lua-cjson, or None when it stays as it came."""
        try:
            doc = cjson.decode(raw)
        except ValueError:
            doc = _FAILED
        if doc is _FAILED:
            if raw:
                return None
            doc = {}
        if env is not None:
            env.load(self.body.reads if raw else self.body.add_reads | self.body.append_reads)
        if isinstance(doc, dict):
            return cjson.encode(doc, CJSON_PRECISION) if _apply(doc, self.body, env, bool(raw)) else None
        ops = self.body
        if isinstance(doc, list):  # a Lua array: names go to its hash part, which cjson does not write
            changed = bool(ops.remove or ops.add or ops.append)
            return cjson.encode(doc, CJSON_PRECISION) if changed else None
        if isinstance(doc, str):  # indexing a string finds the string library; writing into one fails
            writes = bool(ops.remove or ops.append) or \
                any(old in _LUA_STRING_METHODS and old != (new if template is None else _render(template, env))
                    for old, new, template in ops.rename) or \
                any(name in _LUA_STRING_METHODS for name, _, _ in ops.replace) or \
                any(name not in _LUA_STRING_METHODS for name, _, _ in ops.add)
            if writes:
                raise LuaError("request-transformer: attempt to index local 'parameters' (a string value)")
            return None
        kind = "userdata" if doc is None else "boolean" if isinstance(doc, bool) else "number"
        raise LuaError(f"request-transformer: attempt to index local 'parameters' (a {kind} value)")

    def _multipart(self, parts: Multipart, env: _Env | None, from_body: bool) -> bool:
        """Kong's transform_multipart_body: rename, remove, replace (need a body), add; whether anything changed."""
        ops = self.body
        changed = False
        if from_body:
            for old, new, template in ops.rename:
                target = new if template is None else _render(template, env)
                found = parts.get(old)
                if found is not None and old != target:
                    parts.set_simple(target, found)
                    parts.delete(old)
                    changed = True
            for name in ops.remove:
                parts.delete(name)
                changed = True
            for name, value, template in ops.replace:
                if parts.get(name) is not None:
                    parts.delete(name)
                    parts.set_simple(name, _bytes(value if template is None else _render(template, env)))
                    changed = True
        for name, value, template in ops.add:
            if parts.get(name) is None:
                parts.set_simple(name, _bytes(value if template is None else _render(template, env)))
                changed = True
        return changed


def _apply(args: Args, ops: _Ops, env: _Env | None, present: bool) -> bool:
    """The ops on a name -> value mapping (in place); whether one changed it (a body none changed is kept as it
    came). remove, rename and replace run when `present`: always for the query string, for a body when it is not
    empty (Kong's content_length > 0)."""
    changed = False
    if present:
        for name in ops.remove:
            args.pop(name, None)
            changed = True
        for old, new, template in ops.rename:
            target = new if template is None else _render(template, env)
            if old != target and _truthy(args, old):
                args[target] = args.pop(old)
                changed = True
        for name, value, template in ops.replace:
            if name in args and args[name] is not False:  # Lua truthiness: 0, "" and null count
                args[name] = value if template is None else _render(template, env)
                changed = True
    for name, value, template in ops.add:
        if name not in args or args[name] is False:
            args[name] = value if template is None else _render(template, env)
            changed = True
    for name, value, template in ops.append:
        args[name] = append_value(args.get(name), value if template is None else _render(template, env))
        changed = True
    return changed


_MAX_HEADERS = 100  # lua_max_req_headers: the lines kong.request.get_headers() reads


def _header_rename(old: bytes, new: bytes) -> tuple[bytes, bytes, bytes, bytes] | None:
    """A header rename on the table: (the key it moves, the key the metatable tries next for it, the key it moves to,
    the name it clears); None when it moves nothing (a name onto itself)."""
    source, target = (old, new) if old.lower() == new.lower() else (old.lower(), new.lower())
    if source == target:
        return None
    return source, source.lower().replace(b"_", b"-"), target, old.lower()


def _set_header(headers: Headers, name: bytes, value: bytes | list[Any]) -> Headers:
    """kong.service.request.set_header(s) on `headers` (a list of the caller's own: changed in place, and returned):
    the first line of that name takes the (first) value in place and the others of the name go
    (ngx_http_set_header_helper); the other values of a list are new lines at the end (no line of the name: all are).
    An empty value is set too: the PDK writes "" as " " (kong/pdk/private/checks.lua normalize_multi_header), which
    the upstream reads as an empty value. Values escaped as lua-nginx-module escapes them."""
    if isinstance(value, list):
        values = [escape_value(v if isinstance(v, bytes) else _bytes(str(v))) for v in value]
        first, rest = values[0], values[1:]
    else:
        first, rest = escape_value(value), None
    names = list(map(_NAME, headers))
    count = names.count(name)
    if not count:
        headers.append((name, first))
    elif count == 1:
        headers[names.index(name)] = (name, first)
    else:
        at = names.index(name)
        headers[:] = compress(headers, map(name.__ne__, names))
        headers.insert(at, (name, first))
    if rest:
        headers.extend([(name, v) for v in rest])
    return headers
