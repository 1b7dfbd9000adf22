"""request-transformer compiled at config load (gateway/policies/request_transformer/handler.py): the ops' header
keys, the values without a template, the templates' parts and a replace.uri without a template are made once; the
query string is parsed and the route's captures read only when an op or a template needs them; set_headers writes
only the names the ops may have set or cleared when nothing else in the header table would change. `Reference` below
is the plugin's per-request code as it was before it was compiled (kong/plugins/request-transformer/access.lua as
the gateway reads it, its template environment a table each template reads from the request when it first needs it,
and every entry of an op that runs rendered, as Kong's iter() does): both must leave the same request (method, target,
headers in order, body, upstream path), give the same error and log the same, for every config and request."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from plugin_helpers import run_without_waiting

from gateway.http.codec import Headers, Request
from gateway.http.uri_args import encode_args as ngx_encode_args
from gateway.policies import cjson
from gateway.policies.base import LuaError
from gateway.policies.cjson import CJSON_PRECISION
from gateway.policies.header_list import escape_value, lookup, request_header
from gateway.policies.multipart import Multipart
from gateway.policies.request_transformer import handler
from gateway.policies.request_transformer.handler import (
    _FAILED,
    _FORM,
    _JSON,
    _LUA_STRING_METHODS,
    _MULTIPART,
    MAX_ARGS,
    REQUEST_BODY_LIMIT,
    RequestTransformer,
    _bytes,
    _content_kind,
    _pairs,
    _text,
    _truthy,
    decode_args,
    encode_args,
    encode_query,
)
from gateway.policies.request_transformer.schema import TEMPLATE, RequestTransformerConfig
from gateway.policies.response_transformer.handler import append_value
from gateway.policies.response_transformer.schema import split_pair
from gateway.routing.normalize import escape_path

FUZZ = settings(max_examples=400, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


# --- the reference: the plugin's per-request code before it was compiled --------------------------------------------


def ref_get_query(target: bytes) -> dict[str, Any]:
    from gateway.http.uri_args import uri_args

    return {_text(name): [_text(v) if isinstance(v, bytes) else v for v in value] if isinstance(value, list)
            else _text(value) if isinstance(value, bytes) else value
            for name, value in uri_args(target.partition(b"?")[2], MAX_ARGS).items()}


def ref_encode_query(args: dict[str, Any]) -> bytes:
    return b"&".join(sorted(encode_args({name: value}) for name, value in args.items()))


class RefEnv:
    """access.lua's `__meta_environment`: `headers` and `query_params` read from the request when a template first
    reads them (a copy), then kept (rawset)."""

    def __init__(self, request: Request, captures: dict[int | str, bytes | None]) -> None:
        self.request, self.captures, self.kept = request, captures, {}

    def __getitem__(self, table: str) -> Any:
        if table == "uri_captures":
            return self.captures
        if table not in self.kept:
            self.kept[table] = list(self.request.headers) if table == "headers" else ref_get_query(self.request.target)
        return self.kept[table]


def ref_render(value: str, env: RefEnv) -> str:
    if "$(" not in value:
        return value

    def lookup_template(m: Any) -> str:
        name = m.group(2) or m.group(4)
        table = m.group(1)
        if table == "uri_captures":
            value = env.captures.get(name if name is not None else int(m.group(5)))
            return _text(value) if value else ""
        loaded = env[table]  # headers[1] reads `headers` too
        if name is None:
            return ""
        if table == "headers":
            header = lookup(loaded, _bytes(name))
            if isinstance(header, list):
                header = header[0]
            return _text(header) if header is not None else ""
        found = loaded.get(name)
        if isinstance(found, list):
            found = found[0]
        return "true" if found is True else "" if found is None else str(found)

    return TEMPLATE.sub(lookup_template, value)


def ref_set_header(headers: Headers, name: bytes, values: list[Any]) -> Headers:
    values = [escape_value(v if isinstance(v, bytes) else _bytes(str(v))) for v in values]
    out: Headers = []
    placed = False  # "" is set too: the PDK's normalize_multi_header sets it as " ", which is read empty
    for hv in headers:
        if hv[0] == name:
            if not placed:
                out.append((name, values[0]))
                placed = True
            continue
        out.append(hv)
    out.extend((name, v) for v in (values[1:] if placed else values))
    return out


class RefOps:
    def __init__(self, config: RequestTransformerConfig, field: str) -> None:
        self.remove = [split_pair(entry)[0] for entry in getattr(config.remove, field)]
        self.remove_values = [v for _, v in map(split_pair, getattr(config.remove, field)) if v is not None]
        self.rename = _pairs(getattr(config.rename, field))
        self.replace = _pairs(getattr(config.replace, field))
        self.add = _pairs(getattr(config.add, field))
        self.append = _pairs(getattr(config.append, field))

    def __bool__(self) -> bool:
        return bool(self.remove or self.rename or self.replace or self.add or self.append)


class Reference:
    """RequestTransformer as it was: the header table rebuilt, every name and value encoded, every value rendered
    and the query string parsed on every request."""

    def __init__(self, config: RequestTransformerConfig) -> None:
        self.method = config.http_method.encode() if config.http_method else None
        self.uri = config.replace.uri
        self.headers = RefOps(config, "headers")
        self.query = RefOps(config, "querystring")
        self.body = RefOps(config, "body")

    async def access(self, ex: Any) -> bool:
        req = ex.request
        env = RefEnv(req, ex.uri_captures())
        if self.uri is not None:
            upstream_path = ref_render(self.uri, env)
            if not upstream_path.startswith("/"):
                handler.log.error("request-transformer: replace.uri %r rendered %r, which is no path (it must start "
                                  "with '/'): check the template and the route's captures", self.uri, upstream_path)
                await ex.respond_error(500)
                return True
            ex.set_upstream_path(escape_path(_bytes(upstream_path)))
        if self.method is not None:
            await self._method(ex)
        if self.headers:
            req.headers = self._headers(req.headers, env)
        if self.body:
            await self._body(ex, env)
        if self.query:
            copy = {k: list(v) if isinstance(v, list) else v for k, v in env["query_params"].items()}
            args = self._apply(copy, self.query, env, from_body=False)
            assert args is not None
            path = req.target.partition(b"?")[0]
            query = ref_encode_query(args)
            ex.rewrite_target(path + b"?" + query if query else path)
        return False

    async def _method(self, ex: Any) -> None:
        req = ex.request
        ex.set_method(self.method)
        if self.method in (b"GET", b"HEAD", b"TRACE") and \
                _content_kind(request_header(req.headers, b"content-type")) == _FORM:
            raw, whole = await ex.read_body(REQUEST_BODY_LIMIT)
            form = decode_args(raw) if whole else {}
            if form:
                query = ref_get_query(req.target)
                for name, value in form.items():
                    current = query.get(name)
                    if current is None:
                        query[name] = value
                    elif isinstance(current, list):
                        current.append(value)
                    else:
                        query[name] = [current, value]
                path = req.target.partition(b"?")[0]
                ex.rewrite_target(path + b"?" + ref_encode_query(query))

    def _headers(self, headers: Headers, env: Any) -> Headers:
        ops = self.headers
        table: dict[bytes, Any] = {}
        for line_name, line_value in headers[:100]:
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
        for value in ops.remove_values:
            ref_render(value, env)
        for name in ops.remove:
            key = name.lower().encode()
            if get(key) is not None:
                table.pop(key, None)
                cleared[key] = None
        for old, new in ops.rename:
            old_key, new_key = old.encode(), _bytes(ref_render(new, env))
            moved = rename(old_key, new_key) if old_key.lower() == new_key.lower() else \
                rename(old_key.lower(), new_key.lower())
            if moved:
                cleared[old_key.lower()] = None
        for name, value in ops.replace:
            key, rendered = name.lower().encode(), _bytes(ref_render(value, env))
            if get(key) is not None:
                table[key] = rendered
        for name, value in ops.add:
            key, rendered = name.encode(), _bytes(ref_render(value, env))
            if get(key) is None and key.lower() != b"host":
                table[key] = rendered
        for name, value in ops.append:
            key, lower, added = name.encode(), name.lower().encode(), _bytes(ref_render(value, env))
            if lower == b"host":
                continue
            if key != lower and get(key) is not None:
                table[key] = get(key)
                table.pop(lower, None)
            current = get(key)
            table[key] = [current, added] if isinstance(current, bytes) else [*current, added] \
                if isinstance(current, list) else [added]
        out = [hv for hv in headers if hv[0] not in cleared] if cleared else list(headers)
        for table_key, table_value in table.items():
            if original.get(table_key) is table_value and isinstance(table_value, bytes) and \
                    table_key.lower() not in cleared and escape_value(table_value) is table_value:
                continue
            out = ref_set_header(out, table_key.lower(),
                                 table_value if isinstance(table_value, list) else [table_value])
        return out

    async def _body(self, ex: Any, env: Any) -> None:
        req = ex.request
        content_type = request_header(req.headers, b"content-type")
        kind = _content_kind(content_type)
        if kind is None:
            return
        raw, whole = await ex.read_body(REQUEST_BODY_LIMIT)
        if not whole:
            return
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
        req.headers = ref_set_header(headers, b"content-length", [b"%d" % len(body)])

    def _json(self, raw: bytes, env: Any) -> bytes | None:
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
        self._render_all(ops, env, bool(raw), True)
        if isinstance(doc, list):
            changed = bool(ops.remove or ops.add or ops.append)
            return cjson.encode(doc, CJSON_PRECISION) if changed else None
        if isinstance(doc, str):
            writes = bool(ops.remove or ops.append) or \
                any(old in _LUA_STRING_METHODS and old != ref_render(new, env) for old, new in ops.rename) or \
                any(name in _LUA_STRING_METHODS for name, _ in ops.replace) or \
                any(name not in _LUA_STRING_METHODS for name, _ in ops.add)
            if writes:
                raise LuaError("request-transformer: attempt to index local 'parameters' (a string value)")
            return None
        kind = "userdata" if doc is None else "boolean" if isinstance(doc, bool) else "number"
        raise LuaError(f"request-transformer: attempt to index local 'parameters' (a {kind} value)")

    def _render_all(self, ops: RefOps, env: RefEnv, from_body: bool, appends: bool) -> None:
        """Kong's iter() renders every entry's value of each op that runs."""
        present = [*ops.remove_values, *(new for _, new in ops.rename), *(v for _, v in ops.replace)] \
            if from_body else []
        for value in [*present, *(v for _, v in ops.add), *(v for _, v in ops.append if appends)]:
            ref_render(value, env)

    def _multipart(self, parts: Multipart, env: Any, from_body: bool) -> bool:
        ops = self.body
        changed = False
        self._render_all(ops, env, from_body, False)
        if from_body:
            for old, new in ops.rename:
                target = ref_render(new, env)
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
                    parts.set_simple(name, _bytes(ref_render(value, env)))
                    changed = True
        for name, value in ops.add:
            if parts.get(name) is None:
                parts.set_simple(name, _bytes(ref_render(value, env)))
                changed = True
        return changed

    def _apply(self, args: dict[str, Any], ops: RefOps, env: Any, from_body: bool) -> dict[str, Any] | None:
        changed = False
        self._render_all(ops, env, from_body or ops is self.query, True)
        if from_body or ops is self.query:
            for name in ops.remove:
                args.pop(name, None)
                changed = True
            for old, new in ops.rename:
                target = ref_render(new, env)
                if old != target and _truthy(args, old):
                    args[target] = args.pop(old)
                    changed = True
            for name, value in ops.replace:
                if _truthy(args, name):
                    args[name] = ref_render(value, env)
                    changed = True
        for name, value in ops.add:
            if not _truthy(args, name):
                args[name] = ref_render(value, env)
                changed = True
        for name, value in ops.append:
            current = args.get(name)
            args[name] = append_value(current, ref_render(value, env))
            changed = True
        return args if changed or ops is self.query else None


# --- an exchange that records what the plugin does ------------------------------------------------------------------


class FakeExchange:
    """What the plugin calls on gateway.http.server.Exchange, recorded; a body read whole (nothing awaits I/O)."""

    def __init__(self, method: bytes, target: bytes, headers: Headers, body: bytes = b"",
                 captures: dict[int | str, bytes | None] | None = None, captures_readable: bool = True) -> None:
        self.request = Request(method, target, headers, b"1.1", True)
        self.body = body
        self.captures = captures or {}
        self.captures_readable = captures_readable
        self.calls: list[tuple[Any, ...]] = []

    def uri_captures(self) -> dict[int | str, bytes | None]:
        assert self.captures_readable, "the route's captures read without a template that reads them"
        return self.captures

    def set_upstream_path(self, path: bytes) -> None:
        self.calls.append(("set_upstream_path", path))

    async def respond_error(self, status: int) -> None:
        self.calls.append(("respond_error", status))

    def set_method(self, method: bytes) -> None:
        self.calls.append(("set_method", method))
        self.request.method = method

    async def read_body(self, limit: int) -> tuple[bytes, bool]:
        self.calls.append(("read_body",))
        return self.body, len(self.body) <= limit

    def replace_body(self, body: bytes) -> None:
        self.calls.append(("replace_body", body))
        self.body = body

    def rewrite_target(self, target: bytes) -> None:
        self.calls.append(("rewrite_target", target))
        self.request.target = target


class _Logs(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def outcome(policy: Any, method: bytes, target: bytes, headers: Headers, body: bytes,
            captures: dict[int | str, bytes | None]) -> tuple[Any, ...]:
    """Everything the access step did: its answer (or error), the exchange's calls, the request as it left it, the
    headers list it was given (unchanged) and what it logged."""
    given_headers = list(headers)
    ex = FakeExchange(method, target, given_headers, body, captures)
    logs = _Logs()
    handler.log.addHandler(logs)
    previous, handler.log.propagate = handler.log.propagate, False
    try:
        result: Any = ("answered", run_without_waiting(policy.access(ex)))
    except LuaError as e:
        result = ("LuaError", str(e))
    finally:
        handler.log.removeHandler(logs)
        handler.log.propagate = previous
    return (result, ex.calls, ex.request.method, ex.request.target, ex.request.headers, given_headers == headers,
            logs.messages)


# --- configs and requests -------------------------------------------------------------------------------------------

HEADER_NAMES = ["a", "b", "x-a", "X-A", "x_a", "X_A", "x-A", "host", "Host", "content-type", "content-length",
                "x-old", "X-Old", "X-OLD", "x_old", "X_Old", "x-new", "X-New", "flag", "1"]
ARG_NAMES = ["a", "b", "q", "flag", "len", "sub", "x y", "a=b", "é", "1", "x-a"]
TEMPLATES = ["$(headers.x_a)", "$(headers.host)", "$(headers['x-a'])", '$(headers["X-Old"])', "$(query_params.a)",
             '$(query_params["q"])', "$(query_params.flag)", "$(uri_captures.n)", "$(uri_captures[0])",
             "$(uri_captures[1])", "$(headers[1])", "$(query_params[2])", "a$(b", "$(", "$(x"]
TEXTS = ["v", "1", "a b", "%", "é", "x\x01", "true", "0", "zz:yy", "a=b"]
values = st.one_of(st.sampled_from(TEXTS), st.sampled_from(TEMPLATES),
                   st.tuples(st.sampled_from(TEXTS), st.sampled_from(TEMPLATES), st.sampled_from(TEXTS)).map("".join))


def entries(names: st.SearchStrategy[str], of: st.SearchStrategy[str] = values,
            bare: bool = False) -> st.SearchStrategy[list[str]]:
    """"name:value" entries; with `bare`, "name:" too (which the schema takes for headers, and which sets nothing)."""
    entry = st.tuples(names, of).map(":".join)
    return st.lists(st.one_of(entry, names.map(lambda n: n + ":")) if bare else entry, max_size=3)


header_names = st.sampled_from(HEADER_NAMES)
arg_names = st.sampled_from(ARG_NAMES)


def ops(header_entries: st.SearchStrategy[list[str]], arg_entries: st.SearchStrategy[list[str]],
        uri: bool = False) -> st.SearchStrategy[dict[str, Any]]:
    optional: dict[str, st.SearchStrategy[Any]] = {"headers": header_entries, "querystring": arg_entries,
                                                   "body": arg_entries}
    if uri:
        optional["uri"] = st.sampled_from(["/x", "/a/$(uri_captures[1])", "x", "", "/$(headers.x_a)/é",
                                           "$(uri_captures.n)", "/a b", "/$(query_params.a)", "/$(headers[1])",
                                           "/$(query_params[2])"])
    return st.fixed_dictionaries({}, optional=optional)


configs = st.fixed_dictionaries({}, optional={
    "http_method": st.sampled_from(["GET", "POST", "HEAD", "PUT", "TRACE"]),
    # a remove entry's value is rendered too (Kong's iter()): a template in it reads its table then
    "remove": ops(st.lists(header_names | st.tuples(header_names, values).map(":".join), max_size=3),
                  st.lists(arg_names | st.tuples(arg_names, values).map(":".join), max_size=3)),
    "rename": ops(entries(header_names, header_names), entries(arg_names, arg_names | values)),
    "replace": ops(entries(header_names.filter(lambda n: n.lower() != "host"), bare=True), entries(arg_names),
                   uri=True),
    "add": ops(entries(header_names, bare=True), entries(arg_names)),
    "append": ops(entries(header_names, bare=True), entries(arg_names)),
})

LINE_NAMES = [b"x-a", b"X-A", b"x_a", b"x_old", b"X-Old", b"host", b"content-type", b"x-old", b"x-new", b"a", b"b",
              b"accept", b"transfer-encoding", b"content-length", b"X-New", b"flag", b"1"]
LINE_VALUES = [b"v", b"1", b"", b"a, b", b"x\x01y", b"\xff", b"w", b"application/json", b"x\r\ny"]
lines = st.lists(st.tuples(st.sampled_from(LINE_NAMES), st.sampled_from(LINE_VALUES)), max_size=6)
many_lines = st.lists(st.tuples(st.sampled_from(LINE_NAMES[:4]), st.sampled_from(LINE_VALUES[:3])),
                      min_size=99, max_size=103)
queries = st.one_of(st.just(b""), st.just(b"?"), st.lists(st.tuples(
    st.sampled_from([b"a", b"b", b"q", b"flag", b"x%20y", b"len", b"", b"a%3Db", b"%C3%A9", b"%ff"]),
    st.sampled_from([b"", b"=", b"=1", b"=v", b"=%ff", b"=a+b", b"=%3D", b"=x=y"])).map(b"".join),
    min_size=1, max_size=4).map(lambda args: b"?" + b"&".join(args)))
MULTIPART = (b'--XX\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n--XX\r\nContent-Disposition: form-data; '
             b'name="b"\r\n\r\n2\r\n--XX--\r\n')
bodies = st.one_of(
    st.just((None, b"")),
    st.tuples(st.just(b"application/json"), st.sampled_from(
        [b"", b'{"a":1,"b":"x","q":null,"flag":false}', b"[1,2]", b'"str"', b"1", b"null", b"true", b"{bad",
         b'{"a":{}}', b'{"a":[1]}', b'{"len":"x","sub":1}'])),
    st.tuples(st.just(b"application/x-www-form-urlencoded"),
              st.sampled_from([b"", b"a=1&b=2", b"a=1&a=2&flag", b"q=%20x&len=5"])),
    st.tuples(st.just(b"multipart/form-data; boundary=XX"), st.sampled_from([b"", MULTIPART])))
captures = st.sampled_from([{}, {0: b"/a/b", 1: b"b", "n": b"nn"}, {0: b"/p", 1: None, "n": None},
                            {0: b"/p", 1: b"", "n": b""}])


@st.composite
def requests(draw: Any) -> tuple[bytes, bytes, Headers, bytes, dict[int | str, bytes | None]]:
    headers = draw(st.one_of(lines, many_lines) if draw(st.integers(0, 30)) == 0 else lines)
    if draw(st.booleans()):
        headers.insert(draw(st.integers(0, len(headers))), (b"host", b"h"))
    content_type, body = draw(bodies)
    if content_type is not None:
        headers.append((b"content-type", content_type))
    if draw(st.booleans()):
        headers.append((b"content-length", b"%d" % len(body)))
    target = draw(st.sampled_from([b"/p", b"/a/b"])) + draw(queries)
    return draw(st.sampled_from([b"GET", b"POST", b"PUT"])), target, headers, body, draw(captures)


def config_of(document: dict[str, Any]) -> RequestTransformerConfig:
    try:
        return msgspec.convert(document, RequestTransformerConfig)
    except (msgspec.ValidationError, ValueError):
        assume(False)
        raise


# --- the compiled plugin does what the reference does ---------------------------------------------------------------


@FUZZ
@given(document=configs, request=requests())
def test_the_compiled_plugin_changes_the_request_as_the_reference_does(document, request):
    config = config_of(document)
    assert outcome(RequestTransformer(config), *request) == outcome(Reference(config), *request)


@FUZZ
@given(document=configs, renames=st.lists(st.tuples(st.sampled_from(HEADER_NAMES[:12]), st.sampled_from(
    ["x-$(headers.x_a)", "$(query_params.a)", "X-$(uri_captures.n)", "$(headers.host)", "x-new"])), min_size=1,
    max_size=2), request=requests())
def test_a_header_renamed_to_a_template_past_the_schema_is_rendered_per_request(document, renames, request):
    """The schema takes header names only as rename's new names; a config changed past it still renders them."""
    config = config_of(document)
    config.rename.headers = [f"{old}:{new}" for old, new in renames]
    assert outcome(RequestTransformer(config), *request) == outcome(Reference(config), *request)


@FUZZ
@given(args=st.dictionaries(st.text(max_size=6) | st.binary(max_size=6).map(_text), st.one_of(
    st.text(max_size=6), st.binary(max_size=6).map(_text), st.just(True),
    st.lists(st.text(max_size=3) | st.just(True), min_size=1, max_size=3)), max_size=4))
def test_the_query_string_is_written_as_each_arguments_encode_args_sorted(args):
    assert encode_query(args) == ref_encode_query(args)


def test_an_argument_kept_as_it_is_is_one_escape_arg_keeps():
    """encode_query writes a name or value as it is when escape_arg would: byte by byte, the same bytes."""
    for b in range(256):
        text = _text(bytes([b]))
        assert encode_query({text: text}) == ngx_encode_args({bytes([b]): bytes([b])}), b
        assert encode_query({text: True}) == ngx_encode_args({bytes([b]): True}), b


# --- what is made once, and what a config does not need, is not done per request ------------------------------------


def transformer(**document: Any) -> RequestTransformer:
    return RequestTransformer(msgspec.convert(document, RequestTransformerConfig))


def test_a_config_without_templates_renders_nothing_and_reads_no_captures(monkeypatch):
    policy = transformer(add={"headers": ["X-Bench:1"], "querystring": ["bench:1"], "body": ["k:v"]},
                         remove={"headers": ["X-Remove-Me"]}, rename={"headers": ["X-Old:X-New"]},
                         replace={"uri": "/static path"})

    def no_render(*args: Any) -> str:
        raise AssertionError("a template rendered for a config without one")

    monkeypatch.setattr(handler, "_render", no_render)
    ex = FakeExchange(b"POST", b"/mcp", [(b"host", b"h"), (b"x-old", b"o"), (b"content-type", b"application/json")],
                      b'{"a":1}', captures_readable=False)
    assert run_without_waiting(policy.access(ex)) is False
    assert ex.request.headers == [(b"host", b"h"), (b"content-type", b"application/json"), (b"x-new", b"o"),
                                  (b"x-bench", b"1"), (b"content-length", b"15")]
    assert ex.calls == [("set_upstream_path", b"/static%20path"), ("read_body",),
                        ("replace_body", b'{"a":1,"k":"v"}'), ("rewrite_target", b"/mcp?bench=1")]


def test_a_replace_uri_without_a_template_is_escaped_once_at_load(monkeypatch):
    policy = transformer(replace={"uri": "/a b/é"})
    monkeypatch.setattr(handler, "escape_path", lambda path: pytest.fail("escaped per request"))
    for _ in range(2):
        ex = FakeExchange(b"GET", b"/x", [])
        assert run_without_waiting(policy.access(ex)) is False
        assert ex.calls == [("set_upstream_path", b"/a%20b/%C3%A9")]


def test_a_replace_uri_without_a_template_that_is_no_path_is_still_kongs_500_each_time():
    policy = transformer(replace={"uri": "x"})
    for _ in range(2):
        ex = FakeExchange(b"GET", b"/x", [])
        assert run_without_waiting(policy.access(ex)) is True
        assert ex.calls == [("respond_error", 500)]


def test_the_query_string_is_parsed_only_when_an_op_or_a_template_needs_it(monkeypatch):
    parsed: list[bytes] = []
    real = handler.get_query
    monkeypatch.setattr(handler, "get_query", lambda target: parsed.append(target) or real(target))
    ex = FakeExchange(b"GET", b"/x?a=1", [])
    run_without_waiting(transformer(add={"headers": ["x-static:1"], "body": ["k:v"]}).access(ex))
    assert parsed == [] and ex.request.target == b"/x?a=1"  # headers and body only: the query is left alone
    ex = FakeExchange(b"GET", b"/x?a=1", [])
    run_without_waiting(transformer(add={"headers": ["x-from-query:$(query_params.a)"]}).access(ex))
    assert parsed == [b"/x?a=1"] and ex.request.headers == [(b"x-from-query", b"1")]
    ex = FakeExchange(b"POST", b"/x?a=1", [])
    run_without_waiting(transformer(http_method="GET").access(ex))  # no form body to put into the query
    assert parsed == [b"/x?a=1"]
    ex = FakeExchange(b"POST", b"/x?a=1", [(b"content-type", b"application/x-www-form-urlencoded")], b"b=2")
    run_without_waiting(transformer(http_method="GET").access(ex))  # get_query's table of its own, then set_query
    assert parsed == [b"/x?a=1", b"/x?a=1"] and ex.request.target == b"/x?a=1&b=2"


def test_query_templates_in_query_ops_read_the_query_as_it_came():
    """The query ops change a copy when one of their templates reads query_params (Kong's template environment
    holds the query as get_query gave it)."""
    ex = FakeExchange(b"GET", b"/x?a=1&b=2", [])
    run_without_waiting(transformer(remove={"querystring": ["a"]}, add={"querystring": ["c:$(query_params.a)"]},
                      append={"querystring": ["b:$(query_params.b)"]}).access(ex))
    assert ex.request.target == b"/x?b=2&b=2&c=1"


# --- set_headers still rewrites the lines no op touched where Kong's does ------------------------------------------


def both(headers: Headers, **document: Any) -> Headers:
    config = msgspec.convert(document, RequestTransformerConfig)
    ex, ref = FakeExchange(b"GET", b"/x", list(headers)), FakeExchange(b"GET", b"/x", list(headers))
    run_without_waiting(RequestTransformer(config).access(ex))
    run_without_waiting(Reference(config).access(ref))
    assert ex.request.headers == ref.request.headers
    return ex.request.headers


def test_untouched_headers_stay_in_place():
    headers = [(b"host", b"h"), (b"b", b"2"), (b"c", b"3")]
    assert both(headers, add={"headers": ["X-Bench:1"]}, remove={"headers": ["X-Remove-Me"]}) == \
        [*headers, (b"x-bench", b"1")]


def test_a_name_sent_twice_has_its_lines_set_together_though_no_op_touched_it():
    assert both([(b"a", b"1"), (b"b", b"2"), (b"a", b"3"), (b"c", b"4")], add={"headers": ["x:1"]}) == \
        [(b"a", b"1"), (b"b", b"2"), (b"c", b"4"), (b"a", b"3"), (b"x", b"1")]


def test_a_value_set_headers_escapes_is_escaped_though_no_op_touched_it():
    assert both([(b"a", b"x\x01y"), (b"b", b"2")], add={"headers": ["x:1"]}) == \
        [(b"a", b"x%01y"), (b"b", b"2"), (b"x", b"1")]


def test_an_upper_case_line_of_a_cleared_name_is_set_again():
    """A line named in upper case (none the codec makes) is a key of its own in get_headers()' table; when its
    lower-cased name is cleared, set_headers writes it again under that name."""
    assert both([(b"X-A", b"upper"), (b"x-a", b"lower"), (b"b", b"2")], remove={"headers": ["x-a"]}) == \
        [(b"X-A", b"upper"), (b"b", b"2"), (b"x-a", b"upper")]


def test_a_name_past_the_first_100_lines_is_left_alone_unless_an_op_sets_it():
    """get_headers() reads 100 lines: a name in them once and again later is no list, and set_headers does not
    touch it unless an op set it (then its later lines go)."""
    headers = [(b"a", b"old"), *[(b"f%d" % i, b"v") for i in range(120)], (b"a", b"late"), (b"z", b"1")]
    assert both(headers, add={"headers": ["x:1"]}) == [*headers, (b"x", b"1")]
    assert both(headers, replace={"headers": ["a:new"]}) == [(b"a", b"new"), *headers[1:-2], (b"z", b"1")]


def test_a_name_renamed_to_itself_in_another_case_is_set_again_where_its_key_stands():
    """rename X-A:x-A finds x-a through the table's metatable, sets the key x-A and clears x-a, whose own key stays
    in the table: set_headers writes x-a at its key's turn (before d, renamed from c), then x-A over it."""
    assert both([(b"x-a", b"v"), (b"b", b"2"), (b"c", b"3")], rename={"headers": ["c:d", "X-A:x-A"]}) == \
        [(b"b", b"2"), (b"x-a", b"v"), (b"d", b"3")]


def test_an_append_to_a_name_in_another_case_moves_its_value_to_that_key():
    """append X-A finds x-a through the metatable and moves its value to the key X-A (x-a goes from the table), so a
    later append to x-a finds nothing there; set_headers then writes X-A's values as x-a, and x-a's over them."""
    assert both([(b"x-a", b"v"), (b"b", b"2")], append={"headers": ["X-A:z", "x-a:b"]}) == \
        [(b"x-a", b"b"), (b"b", b"2")]
