"""request-transformer and response-transformer against Kong's own source and spec tests
(kong/plugins/request-transformer/access.lua, kong/plugins/response-transformer/*.lua,
spec/03-plugins/36-request-transformer, spec/03-plugins/15-response-transformer)."""

from __future__ import annotations

import json
from typing import Any

import h11
import msgspec
import pytest
import trio
from backends import _Backend, service
from plugin_helpers import (
    body_json,
    call,
    http_codec,  # noqa: F401 - the fixture: one codec
    plugin,
    refused,
    seen,
    start,
)

from gateway.policies.base import LuaError
from gateway.policies.response_transformer.handler import ResponseTransformer, is_json
from gateway.policies.response_transformer.schema import ResponseTransformerConfig

JSON_HEADERS = [("content-type", "application/json")]
FORM_HEADERS = [("content-type", "application/x-www-form-urlencoded")]


# --- request-transformer: the query string --------------------------------------------------------------------------


async def test_the_query_string_goes_upstream_in_kongs_sorted_order(nursery, gateway):
    """kong.service.request.set_query (make_ordered_args) sorts the encoded arguments; 02-access_spec "template as
    querystring parameters on GET" expects `?q1=20&uri_param1=foo&uri_param2%5Bsome_index%5D%5B1%5D=bar`."""
    rt = plugin("request-transformer", add={"querystring": ["uri_param2[some_index][1]:bar", "uri_param1:foo"]})
    _, port = await start(nursery, gateway, plugins=[rt])
    got = seen(await call(port, "/x?z=9&q1=20"))
    assert got["path"] == "/x?q1=20&uri_param1=foo&uri_param2%5Bsome_index%5D%5B1%5D=bar&z=9"


async def test_a_repeated_query_argument_stays_together_when_sorted(nursery, gateway):
    _, port = await start(nursery, gateway, plugins=[plugin("request-transformer", append={"querystring": ["a:z"]})])
    assert seen(await call(port, "/x?b=2&a=x&a=y"))["path"] == "/x?a=x&a=y&a=z&b=2"


async def test_a_method_change_to_get_puts_the_form_body_in_the_query_sorted(nursery, gateway):
    """transform_method: GET with a form body appends its arguments to the query (set_query: sorted); 02-access_spec
    "changes the HTTP method from POST to GET"."""
    _, port = await start(nursery, gateway, plugins=[plugin("request-transformer", http_method="GET")])
    got = seen(await call(port, "/x?hello=world", FORM_HEADERS, method="POST", body=b"name=marco&a=1"))
    assert got["method"] == "GET"
    assert got["path"] == "/x?a=1&hello=world&name=marco"


async def test_a_bare_query_argument_appended_to_is_replaced(nursery, gateway):
    """append_value: a value that is neither a string nor a table (a bare `?flag` is true) becomes { value }."""
    _, port = await start(nursery, gateway, plugins=[plugin("request-transformer",
                                                            append={"querystring": ["flag:v"]})])
    assert seen(await call(port, "/x?flag"))["path"] == "/x?flag=v"


async def test_only_the_first_100_query_arguments_are_kept(nursery, gateway):
    """kong.request.get_query reads at most lua_max_uri_args (100) arguments; set_query writes back only those."""
    _, port = await start(nursery, gateway, plugins=[plugin("request-transformer", add={"querystring": ["zz:1"]})])
    query = "&".join(f"a{i:03d}=v" for i in range(120))
    path = seen(await call(port, f"/x?{query}"))["path"]
    args = path.partition("?")[2].split("&")
    assert args == [f"a{i:03d}=v" for i in range(100)] + ["zz=1"]


# --- request-transformer: headers -----------------------------------------------------------------------------------


async def test_a_renamed_header_replaces_the_header_already_there(nursery, gateway):
    """02-access_spec "override value if target header already exist"."""
    rt = plugin("request-transformer", rename={"headers": ["x-to-rename:x-is-renamed"]})
    _, port = await start(nursery, gateway, plugins=[rt])
    h = seen(await call(port, "/x", [("x-to-rename", "new-result"), ("X-Is-Renamed", "old-result")]))["headers"]
    assert "x-to-rename" not in h
    assert h["x-is-renamed"] == ["new-result"]


async def test_a_header_entry_without_a_value_changes_nothing(nursery, gateway):
    """iter() gives no value for "name:"; add then sets nothing, replace and append leave the header as it was."""
    rt = plugin("request-transformer", add={"headers": ["x-add:"]}, replace={"headers": ["x-rep:"]},
                append={"headers": ["x-app:", "x-app2:"]})
    _, port = await start(nursery, gateway, plugins=[rt])
    h = seen(await call(port, "/x", [("x-rep", "r"), ("x-app", "a")]))["headers"]
    assert "x-add" not in h and "x-app2" not in h
    assert h["x-rep"] == ["r"] and h["x-app"] == ["a"]


async def test_remove_takes_the_name_before_a_colon(nursery, gateway):
    """remove goes through iter(), which splits "name:value": the name is removed."""
    rt = plugin("request-transformer", remove={"headers": ["x-drop:ignored"], "querystring": ["q:x"],
                                               "body": ["b:y"]})
    _, port = await start(nursery, gateway, plugins=[rt])
    got = seen(await call(port, "/x?q=1&k=2", [("x-drop", "1"), *JSON_HEADERS], method="POST",
                          body=b'{"b":1,"c":2}'))
    assert "x-drop" not in got["headers"]
    assert got["path"] == "/x?k=2"
    assert json.loads(got["body"]) == {"c": 2}


# --- request-transformer: templates ---------------------------------------------------------------------------------


async def test_header_templates_find_a_header_named_with_underscores(nursery, gateway):
    """The template's `headers` is ngx.req.get_headers(): a missing key is looked up lower-cased, `_` as `-`, in
    both the `headers.x_user` and the `headers['x_user']` forms."""
    rt = plugin("request-transformer", add={"headers": ["x-a:$(headers['X_User'])", "x-b:$(headers.x_user)"]})
    _, port = await start(nursery, gateway, plugins=[rt])
    h = seen(await call(port, "/x", [("x-user", "ann")]))["headers"]
    assert (h["x-a"], h["x-b"]) == (["ann"], ["ann"])


async def test_a_bare_query_argument_renders_as_true(nursery, gateway):
    """pl.template renders `$(expr)` as tostring(expr or ''): a bare `?flag` (true) is "true"."""
    rt = plugin("request-transformer", add={"headers": ["x-flag:$(query_params.flag)"]})
    _, port = await start(nursery, gateway, plugins=[rt])
    assert seen(await call(port, "/x?flag"))["headers"]["x-flag"] == ["true"]


async def test_query_templates_see_the_headers_as_transformed(nursery, gateway):
    """The template environment loads `headers` when a template first reads it; with no header template among the
    header changes that is after them, so a removed header renders empty."""
    rt = plugin("request-transformer", remove={"headers": ["x-token"]},
                add={"querystring": ["token:$(headers.x_token)"]})
    _, port = await start(nursery, gateway, plugins=[rt])
    got = seen(await call(port, "/x", [("x-token", "abc")]))
    assert got["path"] == "/x?token="


async def test_a_header_template_among_header_changes_keeps_the_headers_as_sent(nursery, gateway):
    """02-access_spec "validate that removed header can be used as template": read during the header changes,
    `headers` is the request's as sent, for the query templates too."""
    rt = plugin("request-transformer", remove={"headers": ["x-remove-header"]},
                add={"headers": ["x-test-header:$(headers['x-remove-header'])"],
                     "querystring": ["q2:$(headers['x-remove-header'])"]})
    _, port = await start(nursery, gateway, plugins=[rt])
    got = seen(await call(port, "/x", [("x-remove-header", "its a test")]))
    assert "x-remove-header" not in got["headers"]
    assert got["headers"]["x-test-header"] == ["its a test"]
    assert got["path"] == "/x?q2=its%20a%20test"


# --- request-transformer: JSON bodies -------------------------------------------------------------------------------


async def test_json_body_changes_follow_lua_truthiness(nursery, gateway):
    """transform_json_body: replace needs a truthy value (JSON null is cjson.null, truthy; false is not), add writes
    over a missing or false one, rename moves only a truthy one."""
    rt = plugin("request-transformer", replace={"body": ["f:R", "n:R"]}, add={"body": ["f2:A", "n2:A"]},
                rename={"body": ["f3:g3", "n3:m3"]})
    _, port = await start(nursery, gateway, plugins=[rt])
    body = b'{"f":false,"n":null,"f2":false,"n2":null,"f3":false,"n3":null}'
    got = seen(await call(port, "/x", JSON_HEADERS, method="POST", body=body))
    assert json.loads(got["body"]) == {"f": False, "n": "R", "f2": "A", "n2": None, "f3": False, "m3": None}


async def test_appending_to_a_json_number_or_boolean_replaces_it(nursery, gateway):
    """append_value: a string becomes { old, new }, a table gets new inserted, anything else becomes { new }."""
    rt = plugin("request-transformer", append={"body": ["n:x", "b:x", "s:y", "l:z"]})
    _, port = await start(nursery, gateway, plugins=[rt])
    got = seen(await call(port, "/x", JSON_HEADERS, method="POST", body=b'{"n":5,"b":true,"s":"a","l":[1]}'))
    assert json.loads(got["body"]) == {"n": ["x"], "b": ["x"], "s": ["a", "y"], "l": [1, "z"]}


# --- request-transformer: config errors -----------------------------------------------------------------------------


def test_a_bad_http_method_is_refused_with_kongs_message():
    """01-schema_spec "errors invalid http_method": `invalid value: HELLO!`."""
    assert "config.http_method: invalid value: HELLO!" in refused(plugin("request-transformer",
                                                                         http_method="HELLO!"))


@pytest.mark.parametrize("field", ["add", "replace", "append"])
def test_a_request_header_without_a_colon_is_refused_with_kongs_message(field):
    """03-api_spec "add/replace/append fails with missing colons": `invalid value: just_a_key`."""
    message = refused(plugin("request-transformer", **{field: {"headers": ["just_a_key"]}}))
    assert f"config.{field}.headers[0]: " in message and message.endswith("invalid value: just_a_key")


# --- response-transformer: which bodies are JSON --------------------------------------------------------------------


@pytest.mark.parametrize(("content_type", "expected"), [
    ("application/json", True),
    ("application/json; charset=utf-8", True),
    ("application/problem+json", True),
    ("application/problem+json; charset=utf-8", True),
    ("application/x-www-form-urlencoded, application/json", True),
    ("Application/JSON", True),
    ("application/x-www-form-urlencoded", False),
    ("application/json;", False),
    ("application/json; charset", False),
    ("text/json", False),
    ("application/jsonx", False),
    ("application/*", False),
])
def test_is_json_follows_kongs_mime_type_rules(content_type, expected):
    """01-header_transformer_spec is_json_body(): kong.tools.mime_type parses each comma-separated type (a
    malformed one is skipped) and application/json includes any +json subtype."""
    assert is_json(content_type.encode()) is expected


class FixedBackend(_Backend):
    """Answers every request with one content type and body."""

    def __init__(self, content_type: bytes, body: bytes) -> None:
        super().__init__("fixed")
        self.content_type = content_type
        self.body = body

    async def handle_conn(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        if await self._read_request(stream, conn) is None:
            return
        headers = [(b"content-type", self.content_type), (b"content-length", b"%d" % len(self.body))]
        await stream.send_all(conn.send(h11.Response(status_code=200, headers=headers)))
        await stream.send_all(conn.send(h11.Data(data=self.body)))
        await stream.send_all(conn.send(h11.EndOfMessage()))


async def test_a_problem_json_response_body_is_transformed(nursery, gateway):
    backend = FixedBackend(b"application/problem+json", b'{"title":"oops"}')
    await nursery.start(backend.serve)
    rt = plugin("response-transformer", add={"json": ["hint:retry"]})
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{backend.port}", [{"paths": ["/"]}])],
                          "plugins": [rt]})
    assert body_json(await call(port, "/x")) == {"title": "oops", "hint": "retry"}


def test_a_transformed_json_body_is_written_as_its_own_lua_cjson_writes_it():
    """body_transformer.lua decodes and encodes with its own cjson.safe.new(): lua-cjson's lenient reading, "/"
    escaped, numbers at 14 significant digits."""
    rt = transformer(add={"json": ["hint:a/b"]})
    body = rt.body_filter(None, 200, [], b'{"n": 0.1234567890123456789, "big": 12345678901234567, "x": 01}')
    assert body == b'{"n":0.12345678901235,"big":1.2345678901235e+16,"x":1,"hint":"a\\/b"}'


# --- response-transformer: headers ----------------------------------------------------------------------------------


def transformer(**config: Any) -> ResponseTransformer:
    return ResponseTransformer(msgspec.convert(config, ResponseTransformerConfig))


def filtered(rt: ResponseTransformer, headers: list[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in rt.header_filter(None, 200, [(n.encode(), v.encode()) for n, v in headers]):
        out.setdefault(name.decode(), []).append(value.decode())
    return out


def test_response_remove_takes_the_name_before_a_colon():
    """01-header_transformer_spec "performing remove, replace, add, append together" (remove `h1:v1`)."""
    rt = transformer(remove={"headers": ["h1:v1"]}, replace={"headers": ["h2:v3"]}, add={"headers": ["h3:v3"]},
                     append={"headers": ["h3:v4"]})
    assert filtered(rt, [("h1", "v1"), ("h2", "v2")]) == {"h2": ["v3"], "h3": ["v3", "v4"]}


def test_a_header_renamed_onto_transfer_encoding_is_dropped_not_sent():
    """header_transformer: rename is kong.response.set_header(new) then clear_header(old), and set_header ignores
    Transfer-Encoding (t/01-pdk/08-response/05-set_header.t TEST 8): the gateway frames the body."""
    rt = transformer(rename={"headers": ["x-te:transfer-encoding"]})
    assert filtered(rt, [("x-te", "gzip"), ("content-length", "2")]) == {"content-length": ["2"]}


def test_response_header_changes_look_at_the_headers_as_they_came():
    """transform_headers gets kong.response.get_headers() taken before any change: rename, replace and add test
    that copy, so add skips a header that was removed, replace sets one that was removed, and add overrides a
    header a rename just made."""
    rt = transformer(remove={"headers": ["x-a", "x-d"]}, rename={"headers": ["x-b:x-c"]},
                     replace={"headers": ["x-d:again"]}, add={"headers": ["x-a:new", "x-c:default"]})
    assert filtered(rt, [("x-a", "1"), ("x-b", "2"), ("x-d", "3")]) == {"x-c": ["default"], "x-d": ["again"]}


def test_a_renamed_response_header_replaces_the_header_already_there():
    """rename uses kong.response.set_header, which replaces the target's values."""
    rt = transformer(rename={"headers": ["x-old:x-new"]})
    assert filtered(rt, [("x-old", "1"), ("x-new", "2")]) == {"x-new": ["1"]}


def test_renaming_a_response_header_to_its_own_name_removes_it():
    """rename sets the new name, then clears the old one: the same name (in any case) ends up cleared."""
    rt = transformer(rename={"headers": ["x-a:X-A"]})
    assert filtered(rt, [("x-a", "1"), ("x-b", "2")]) == {"x-b": ["2"]}


def test_response_remove_json_takes_the_name_before_a_colon():
    rt = transformer(remove={"json": ["p1:x"]})
    assert json.loads(rt.body_filter(None, 200, [], b'{"p1":1,"p2":2}')) == {"p2": 2}


# --- response-transformer: JSON values ------------------------------------------------------------------------------


def body_of(rt: ResponseTransformer, body: bytes) -> bytes:
    return rt.body_filter(None, 200, [(b"content-type", b"application/json")], body)


def test_json_string_values_go_through_cjson_escaping():
    """body_transformer json_value(): the value is cjson-encoded, its quotes stripped, then only `\\"` and `\\/`
    unescaped, so a backslash or a tab comes out escaped; 04-filter_spec "replace a body parameter on GET"."""
    rt = transformer(replace={"json": ["u:/hello/world", 'q:"wot"', "p:a\\b", "t:x\ty"]})
    doc = json.loads(body_of(rt, b'{"u":1,"q":1,"p":1,"t":1}'))
    assert doc == {"u": "/hello/world", "q": '"wot"', "p": "a\\\\b", "t": "x\\ty"}


def test_number_values_are_read_as_lua_tonumber_and_written_as_cjson():
    """json_types number: tonumber() (spaces around, hex, exponents; not a number: the key is skipped), encoded
    with cjson's 14 significant digits (an integral value without a fraction)."""
    entries = ["a:1e3", "b:1.0", "c: 7 ", "d:0x10", "e:abc", "f:0.1", "g:3.14159265358979323", "h:-2"]
    rt = transformer(add={"json": entries, "json_types": ["number"] * len(entries)})
    body = body_of(rt, b"{}")
    assert json.loads(body) == {"a": 1000, "b": 1, "c": 7, "d": 16, "f": 0.1, "g": 3.1415926535898, "h": -2}
    assert b'"a":1000,' in body and b'"b":1,' in body


@pytest.mark.parametrize("value", ["nan", "inf", "-Infinity"])
def test_a_number_cjson_cannot_encode_leaves_the_body_unchanged(value):
    """tonumber("nan") is NaN; cjson.encode fails on it, transform_json_body returns the error and the handler
    sends the body as it came."""
    rt = transformer(add={"json": [f"n:{value}", "k:v"], "json_types": ["number", "string"]})
    body = b'{"a": 1}'
    assert body_of(rt, body) == body


def test_a_json_entry_without_a_value_writes_the_text_null():
    """iter() gives no value for "name:"; json_value(nil) is cjson.encode(nil), "null", then cast: the string
    "null", false as a boolean, nothing as a number."""
    rt = transformer(replace={"json": ["p:"]}, add={"json": ["b:", "n:"], "json_types": ["boolean", "number"]})
    assert json.loads(body_of(rt, b'{"p":1}')) == {"p": "null", "b": False}


def test_appending_to_a_json_number_in_a_response_replaces_it():
    """body_transformer append_value: a string becomes { old, new }, a table gets it inserted, else { new }."""
    rt = transformer(append={"json": ["n:x", "s:y", "l:z"]})
    assert json.loads(body_of(rt, b'{"n":5,"s":"a","l":[1]}')) == {"n": ["x"], "s": ["a", "y"], "l": [1, "z"]}


# --- response-transformer: bodies that are no JSON object -----------------------------------------------------------


def test_a_json_array_body_is_written_again_by_its_lua_cjson():
    """body_transformer.lua decodes with decode_array_with_array_mt(true): an array is a Lua table, the ops put
    their names in its hash part (which cjson does not write for an array) and cjson_encode writes it again, so it
    comes out as lua-cjson writes it (the gateway used to send an array as it came)."""
    rt = transformer(remove={"json": ["x"]}, add={"json": ["y:z"]}, append={"json": ["a:b"]})
    assert body_of(rt, b'[1.0, "a/b", {"k" : 2}]') == b'[1,"a\\/b",{"k":2}]'
    assert body_of(rt, b" [] ") == b"[]"


@pytest.mark.parametrize(("config", "body", "written"), [
    ({"rename": {"json": ["a:b"]}}, b'"a/b"', b'"a\\/b"'),  # reading a string's "a" finds nothing
    ({"replace": {"json": ["a:b"]}}, b' "x" ', b'"x"'),
    ({"add": {"json": ["len:1"]}}, b'"x"', b'"x"'),  # a string "has" len (string.len): add writes nothing
    ({"append": {"json": ["n:x"], "json_types": ["number"]}}, b"1.50", b"1.5"),  # no value: append indexes nothing
    ({"append": {"json": ["n:x"], "json_types": ["number"]}}, b"true", b"true"),
    ({"append": {"json": ["n:x"], "json_types": ["number"]}}, b"null", b"null"),
])
def test_a_scalar_body_no_op_writes_into_is_written_again(config, body, written):
    """cjson decodes a top-level string, number, boolean or null to a Lua scalar; when no op of transform_json_body
    fails on it (reading a string finds only the string library's names), cjson_encode writes it again."""
    assert body_of(transformer(**config), body) == written


@pytest.mark.parametrize(("config", "body", "kind"), [
    ({"remove": {"json": ["a"]}}, b'"x"', "string"),
    ({"rename": {"json": ["sub:b"]}}, b'"x"', "string"),
    ({"replace": {"json": ["len:1"]}}, b'"x"', "string"),
    ({"add": {"json": ["a:1"]}}, b'"x"', "string"),
    ({"append": {"json": ["a:1"]}}, b'"x"', "string"),
    ({"rename": {"json": ["a:b"]}}, b"1", "number"),
    ({"replace": {"json": ["n:x"], "json_types": ["number"]}}, b"false", "boolean"),  # indexed before v is tested
    ({"add": {"json": ["a:1"]}}, b"null", "userdata"),  # cjson.null
])
def test_an_op_indexing_a_scalar_body_fails_as_lua_does(config, body, kind):
    """Writing into a Lua string, or indexing a number, boolean or cjson.null, is a Lua error; Kong's body_filter
    runs outside any pcall, so the request fails (not: the body sent as it came)."""
    with pytest.raises(LuaError, match=f"attempt to index local 'json_body' \\(a {kind} value\\)"):
        body_of(transformer(**config), body)


async def _raw_get(port: int, method: bytes = b"GET") -> bytes:
    """All the gateway sends back to one request before it closes the connection (b"" for a reset)."""
    data = b""
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"%b /x HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n" % method)
            try:
                while chunk := await stream.receive_some(65536):
                    data += chunk
            except trio.BrokenResourceError:
                pass
    return data


async def _fixed_gateway(nursery: trio.Nursery, gateway: Any, body: bytes, **config: Any) -> int:
    backend = FixedBackend(b"application/json", body)
    await nursery.start(backend.serve)
    return await gateway({"services": [service("s", f"http://127.0.0.1:{backend.port}", [{"paths": ["/"]}])],
                          "plugins": [plugin("response-transformer", **config)]})


async def test_a_json_number_body_an_op_indexes_gets_no_answer(nursery, gateway):
    """The Lua error in body_filter ends the request with its head unsent (nginx holds a short head until the body
    comes): the client's connection closes with no response."""
    port = await _fixed_gateway(nursery, gateway, b"42", add={"json": ["a:1"]})
    assert await _raw_get(port) == b""


# --- response-transformer: Content-Length ---------------------------------------------------------------------------


def test_json_changes_clear_a_json_responses_content_length_in_header_filter():
    """header_transformer.lua: `if is_body_transform_set(conf) and is_json_body(headers["Content-Type"]) then
    clear_header("Content-Length")`, on the headers as they came (a Content-Type replaced to JSON does not count);
    the body filter sets the new body's length."""
    rt = transformer(add={"json": ["a:b"]})
    assert filtered(rt, [("content-type", "application/json"), ("content-length", "2")]) == {
        "content-type": ["application/json"]}
    assert filtered(rt, [("content-type", "text/plain"), ("content-length", "2")])["content-length"] == ["2"]
    to_json = transformer(add={"json": ["a:b"]}, replace={"headers": ["content-type:application/json"]})
    assert filtered(to_json, [("content-type", "text/plain"), ("content-length", "2")]) == {
        "content-type": ["application/json"], "content-length": ["2"]}
    from_json = transformer(add={"json": ["a:b"]}, replace={"headers": ["content-type:text/plain"]})
    assert filtered(from_json, [("content-type", "application/json"), ("content-length", "2")]) == {
        "content-type": ["text/plain"]}


async def test_a_head_answer_to_a_json_transform_has_no_content_length(nursery, gateway):
    """Kong clears Content-Length in header_filter and a HEAD has no body to give it a new one, so its answer has
    none, nor Transfer-Encoding (nginx's chunked filter skips HEAD: ngx_http_chunked_filter_module.c:65-70)."""
    _, port = await start(nursery, gateway, plugins=[plugin("response-transformer", add={"json": ["a:b"]})])
    get = await call(port, "/x")
    assert get.status == 200 and get.json()["a"] == "b" and get.header("content-length") == str(len(get.body))
    head = await call(port, "/x", method="HEAD")
    assert head.status == 200 and head.header("content-type") == "application/json"
    assert head.header("content-length") is None and head.header("transfer-encoding") is None, head.headers


async def test_a_json_body_cjson_cannot_read_goes_out_chunked(nursery, gateway):
    """Kong's header_filter cleared its Content-Length and the body filter sends it as it came: nginx frames it
    chunked."""
    port = await _fixed_gateway(nursery, gateway, b"{not json", add={"json": ["a:b"]})
    reply = await call(port, "/x")
    assert (reply.status, reply.body) == (200, b"{not json")
    assert reply.header("content-length") is None and reply.header("transfer-encoding") == "chunked"


# --- response-transformer: config errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["add", "replace", "append"])
def test_a_response_header_without_a_colon_is_refused_with_kongs_message(field):
    """03-api_spec "add/replace/append fails with missing colons for key/value separation"."""
    message = refused(plugin("response-transformer", **{field: {"headers": ["just_a_key"]}}))
    assert f"config.{field}.headers[0]: " in message and message.endswith("invalid value: just_a_key")


def test_a_response_rename_without_a_colon_is_refused_with_kongs_message():
    """03-api_spec "rename fails with missing colons for header old_name/new_name separation"."""
    message = refused(plugin("response-transformer", rename={"headers": ["x-request-idx-custom-request-id"]}))
    assert "config.rename.headers[0]: " in message
    assert message.endswith("invalid value: x-request-idx-custom-request-id")


# --- request-transformer: uri_captures and replace.uri --------------------------------------------------------------


async def _captures_gateway(nursery: trio.Nursery, gateway: Any, path: str, rt: dict, strip: bool = True) -> int:
    """An echo backend behind a service whose own path is /base, on one regex route `path` with plugin `rt`."""
    _, port = await start(nursery, gateway, routes=[{"paths": [path], "strip_path": strip, "plugins": [rt]}])
    return port


USERS = "~/requests/user1/(?P<user1>\\w+)/user2/(?P<user2>\\S+)"


async def test_replace_uri_renders_the_route_captures_into_the_whole_upstream_path(nursery, gateway):
    """02-access_spec "should update request path using hash": the upstream path is the rendered template (the
    service's path and the route's strip take no part: kong.service.request.set_path); the query stays."""
    rt = plugin("request-transformer",
                replace={"uri": "/requests/user2/$(uri_captures.user2)/user1/$(uri_captures.user1)"})
    port = await _captures_gateway(nursery, gateway, USERS, rt)
    assert seen(await call(port, "/requests/user1/foo/user2/bar?q=1"))["path"] == "/requests/user2/bar/user1/foo?q=1"


async def test_uri_captures_by_number_zero_being_the_whole_match(nursery, gateway):
    """02-access_spec "should not fail when uri template rendered using index": $(uri_captures[0])."""
    rt = plugin("request-transformer", replace={"uri": "/requests$(uri_captures[0])"},
                add={"headers": ["x-first:$(uri_captures[1])"]})
    port = await _captures_gateway(nursery, gateway, "~/user1/(?P<user1>\\w+)/user2/(?P<user2>\\S+)", rt)
    got = seen(await call(port, "/user1/foo/user2/bar"))
    assert got["path"] == "/requests/user1/foo/user2/bar"
    assert got["headers"]["x-first"] == ["foo"]


async def test_a_capture_by_quoted_name_beside_a_group_that_took_no_part(nursery, gateway):
    """02-access_spec "replaces request uri with optional capture prefix" / "with the capature prefix"."""
    rt = plugin("request-transformer", replace={"uri": "/api/v2/$(uri_captures[\"subpath\"])"})
    port = await _captures_gateway(nursery, gateway, "~/(gw/)?api/(?<subpath>htest)$", rt, strip=False)
    assert seen(await call(port, "/api/htest"))["path"] == "/api/v2/htest"
    assert seen(await call(port, "/gw/api/htest"))["path"] == "/api/v2/htest"


async def test_query_templates_read_the_captures_and_go_upstream_sorted(nursery, gateway):
    """02-access_spec "template as querystring parameters on GET"."""
    rt = plugin("request-transformer", add={"querystring": ["uri_param1:$(uri_captures.user1)",
                                                            "uri_param2[some_index][1]:$(uri_captures.user2)"]})
    port = await _captures_gateway(nursery, gateway, USERS, rt, strip=False)
    assert seen(await call(port, "/requests/user1/foo/user2/bar?q1=20"))["path"] == \
        "/requests/user1/foo/user2/bar?q1=20&uri_param1=foo&uri_param2%5Bsome_index%5D%5B1%5D=bar"


async def test_a_replaced_uri_that_is_no_path_is_kongs_500(nursery, gateway):
    """kong.service.request.set_path refuses a path not starting with "/": the plugin's error, a 500."""
    rt = plugin("request-transformer", replace={"uri": "$(uri_captures.user1)"})
    port = await _captures_gateway(nursery, gateway, USERS, rt)
    reply = await call(port, "/requests/user1/foo/user2/bar")
    assert (reply.status, reply.json()["message"]) == (500, "An unexpected error occurred")


async def test_a_replaced_uri_is_escaped_as_kong_escapes_a_set_path(nursery, gateway):
    rt = plugin("request-transformer", replace={"uri": "/requests/tést here"})
    port = await _captures_gateway(nursery, gateway, "/", rt)
    assert seen(await call(port, "/x?a=1"))["path"] == "/requests/t%C3%A9st%20here?a=1"


async def test_a_route_without_captures_renders_them_empty(nursery, gateway):
    rt = plugin("request-transformer", add={"headers": ["x-cap:[$(uri_captures.any)$(uri_captures[1])]"]})
    port = await _captures_gateway(nursery, gateway, "/", rt)
    assert seen(await call(port, "/x"))["headers"]["x-cap"] == ["[]"]
