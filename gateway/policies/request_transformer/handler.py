"""Kong's request-transformer (kong/plugins/request-transformer/access.lua), in Kong's order: the method, then the
headers, the body, the query string; each as remove, rename, replace (only present names), add (only absent
names), append.

Bodies: JSON (an object), application/x-www-form-urlencoded and multipart/form-data, read whole up to
REQUEST_BODY_LIMIT; a larger body is forwarded unchanged (Kong's get_raw_body gives nothing for a body over
client_body_buffer_size, 8k by default, and Kong then builds the body from the added keys alone). A multipart
body is changed as Kong's lua-multipart changes it: rename, remove, replace, add (no append), each part kept with its
own headers, a new or replaced one a plain part at the end. Values may use the templates $(headers.NAME) and
$(query_params.NAME) (empty when absent). As in Kong, the query string is written back sorted (set_query), from at
most the first 100 arguments (lua_max_uri_args); a value is tested with Lua's truthiness (a JSON null counts, false
does not); and the template's `headers` are read when a template first reads them: during the header changes when
one of them has a headers template, else after those changes.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import parse_qsl, quote

from gateway.http.codec import Headers
from gateway.http.server import Exchange
from gateway.http.uri_args import add_arg
from gateway.policies.header_list import get_header, set_header
from gateway.policies.request_body import Multipart
from gateway.policies.request_transformer.schema import TEMPLATE, RequestTransformerConfig
from gateway.policies.response_transformer.handler import append_value
from gateway.policies.response_transformer.schema import split_pair
from gateway.routing.normalize import escape_path

REQUEST_BODY_LIMIT = 1024 * 1024  # bytes of a request body the plugin reads to transform it
MAX_ARGS = 100  # arguments ngx.decode_args and kong.request.get_query read (lua_max_uri_args); the rest are dropped
_JSON, _FORM, _MULTIPART = "json", "form", "multipart"
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


def decode_args(text: str) -> Args:
    """ngx.decode_args: repeated names become lists; a name without "=" is true; MAX_ARGS arguments at most."""
    out: Args = {}
    for part in text.split("&", MAX_ARGS)[:MAX_ARGS]:
        if not part:
            continue
        value: str | bool
        if "=" in part:
            pair = parse_qsl(part, keep_blank_values=True)
            if not pair:
                continue
            name, value = pair[0]
        else:
            name, value = parse_qsl(part + "=", keep_blank_values=True)[0][0], True
        add_arg(out, name, value)
    return out


def encode_args(args: Args) -> str:
    """ngx.encode_args: percent-encoded, lists repeated, true as a bare name, false dropped."""
    parts = []
    for name, value in args.items():
        for v in value if isinstance(value, list) else [value]:
            if v is True:
                parts.append(quote(name, safe="-_.~"))
            elif v is not False and v is not None:
                parts.append(f"{quote(name, safe='-_.~')}={quote(str(v), safe='-_.~')}")
    return "&".join(parts)


def encode_query(args: Args) -> bytes:
    """kong.service.request.set_query (make_ordered_args): each name's ngx.encode_args, sorted."""
    return "&".join(sorted(encode_args({name: value}) for name, value in args.items())).encode("latin-1")


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
        original_query = decode_args(req.target.partition(b"?")[2].decode("latin-1"))
        captures = ex.uri_captures()
        env = (req.headers, original_query, captures)
        if self.uri is not None:  # Kong's transform_uri, first of all
            upstream_path = _render(self.uri, env)
            if not upstream_path.startswith("/"):  # kong.service.request.set_path's error: Kong's 500
                log.error("request-transformer: replace.uri %r rendered %r, which is no path (it must start with "
                          "'/'): check the template and the route's captures", self.uri, upstream_path)
                await ex.respond_error(500)
                return True
            ex.set_upstream_path(escape_path(upstream_path.encode("utf-8", "surrogateescape")))
        if self.method is not None:
            await self._method(ex, original_query)
        if self.headers:
            req.headers = self._headers(list(req.headers), env)
            if not self.headers_read_early:
                env = (req.headers, original_query, captures)
        if self.body:
            await self._body(ex, env)
        if self.query:
            args = self._apply(dict(original_query), self.query, env, from_body=False)
            path = req.target.partition(b"?")[0]
            query = encode_query(args)  # type: ignore[arg-type]  # None only for a body
            ex.rewrite_target(path + b"?" + query if query else path)
        return False

    async def _method(self, ex: Exchange, query: Args) -> None:
        req = ex.request
        ex.set_method(self.method)  # type: ignore[arg-type]
        if self.method in (b"GET", b"HEAD", b"TRACE") and \
                _content_kind(get_header(req.headers, b"content-type")) == _FORM:
            raw, whole = await ex.read_body(REQUEST_BODY_LIMIT)
            form = decode_args(raw.decode("latin-1")) if whole else {}
            if form:
                for name, value in form.items():
                    add_arg(query, name, value)
                path = req.target.partition(b"?")[0]
                ex.rewrite_target(path + b"?" + encode_query(query))

    def _headers(self, headers: Headers, env: Env) -> Headers:
        ops = self.headers
        for name in ops.remove:
            key = name.lower().encode()
            headers = [hv for hv in headers if hv[0] != key or key == b"host"]
        for old, new in ops.rename:
            okey, nkey = old.lower().encode(), _render(new, env).lower().encode()
            if okey == b"host" or okey == nkey:
                continue
            values = [v for n, v in headers if n == okey]
            if values:  # the new name's own values go: Kong sets the renamed one in their place
                headers = [hv for hv in headers if hv[0] != okey and hv[0] != nkey] + [(nkey, v) for v in values]
        for name, value in ops.replace:
            key = name.lower().encode()
            if any(n == key for n, _ in headers):
                set_header(headers, key, _render(value, env).encode("latin-1"))
        for name, value in ops.add:
            key = name.lower().encode()
            if key != b"host" and not any(n == key for n, _ in headers):
                headers.append((key, _render(value, env).encode("latin-1")))
        for name, value in ops.append:
            key = name.lower().encode()
            if key != b"host":
                headers.append((key, _render(value, env).encode("latin-1")))
        return headers

    async def _body(self, ex: Exchange, env: Env) -> None:
        req = ex.request
        kind = _content_kind(get_header(req.headers, b"content-type"))
        if kind is None:
            return
        raw, whole = await ex.read_body(REQUEST_BODY_LIMIT)
        if not whole:
            return  # over the limit: forwarded unchanged
        if kind == _MULTIPART:
            multipart = Multipart.of(get_header(req.headers, b"content-type") or b"", raw)
            if multipart is None or not self._multipart(multipart, env, bool(raw)):
                return
            body = multipart.tostring()
        elif kind == _JSON:
            try:
                doc = json.loads(raw) if raw else {}
            except ValueError:
                return
            if not isinstance(doc, dict):
                return
            new = self._apply(doc, self.body, env, from_body=bool(raw))
            if new is None:
                return
            body = json.dumps(new, separators=(",", ":"), ensure_ascii=False).encode()
        else:
            new = self._apply(decode_args(raw.decode("latin-1")), self.body, env, from_body=bool(raw))
            if new is None:
                return
            body = encode_args(new).encode("latin-1")
        ex.replace_body(body)
        headers = [hv for hv in req.headers if hv[0] != b"transfer-encoding"]
        req.headers = set_header(headers, b"content-length", b"%d" % len(body))

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
                    parts.set_simple(name, _render(value, env).encode("utf-8", "surrogateescape"))
                    changed = True
        for name, value in ops.add:
            if parts.get(name) is None:
                parts.set_simple(name, _render(value, env).encode("utf-8", "surrogateescape"))
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
            args[name] = append_value(args.get(name), _render(value, env))
            changed = True
        return args if changed or ops is self.query else None


def _render(value: str, env: Env) -> str:
    if "$(" not in value:
        return value
    headers, query, captures = env

    def lookup(m: Any) -> str:
        name = m.group(2) or m.group(4)
        table = m.group(1)
        if table == "uri_captures":  # by name, or by number ([0]: the whole match); a group that took no part: ""
            value = captures.get(name if name is not None else int(m.group(5)))
            return value.decode("utf-8", "surrogateescape") if value else ""
        if name is None:  # headers[1], query_params[1]: nil in Kong's tables
            return ""
        if table == "headers":  # ngx.req.get_headers(): the name as written, else lower-cased with _ as -
            found = get_header(headers, name.encode()) if name == name.lower() else None
            if found is None:
                found = get_header(headers, name.lower().replace("_", "-").encode())
            return found.decode("latin-1") if found is not None else ""
        found = query.get(name)
        if isinstance(found, list):
            found = found[0]
        return "true" if found is True else "" if found is None else str(found)  # pl.template: tostring(v or '')

    return TEMPLATE.sub(lookup, value)
