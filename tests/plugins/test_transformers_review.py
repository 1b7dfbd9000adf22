"""request-transformer and response-transformer against Kong on the points of a review: the template environment's
lazy, kept tables (kong/plugins/request-transformer/access.lua `__meta_environment`), append_value onto an empty JSON
object (lua-cjson writes {[1] = v} as an array), an append.headers entry without a value (Kong's header filter fails
on it), the rename message of an empty name (schema.lua validate_headers' tostring("")), header values with
control bytes (taken by the schema, escaped by lua-nginx-module's ngx_http_lua_copy_escaped_header), the methods
kong.service.request.set_method takes, a header value set empty (Kong's PDK sets "" as " ": sent empty), an append to
one of nginx's built-in single response headers (it overwrites the line), and the header changes that would break
the framing of a body the gateway frames itself (refused)."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from backends import Client, raw_exchange, service
from plugin_helpers import (
    TIMEOUT,
    call,
    http_codec,  # noqa: F401 - the fixture: one codec
    plugin,
    refused,
    run_without_waiting,
    seen,
    start,
)
from test_kong_spec_transformers import FixedBackend
from test_request_transformer_compiled import FakeExchange

from gateway.config import ConfigError, parse_config
from gateway.http.codec import Headers
from gateway.policies import cjson
from gateway.policies.header_list import escape_name, escape_value
from gateway.policies.request_transformer.handler import RequestTransformer
from gateway.policies.request_transformer.schema import RequestTransformerConfig
from gateway.policies.response_transformer.handler import ResponseTransformer, append_value
from gateway.policies.response_transformer.schema import ResponseTransformerConfig
from gateway.runtime import compile_config

FORM = (b"content-type", b"application/x-www-form-urlencoded")
JSON = (b"content-type", b"application/json")


def request_transformer(**config: Any) -> RequestTransformer:
    return RequestTransformer(msgspec.convert(config, RequestTransformerConfig))


def response_transformer(**config: Any) -> ResponseTransformer:
    return ResponseTransformer(msgspec.convert(config, ResponseTransformerConfig))


def transformed(policy: RequestTransformer, target: bytes, headers: Headers, body: bytes = b"",
                method: bytes = b"POST") -> FakeExchange:
    ex = FakeExchange(method, target, headers, body)
    assert run_without_waiting(policy.access(ex)) is False
    return ex


# --- request-transformer: a template's `headers` and `query_params` are read when first needed, then kept ----------


async def test_a_uri_template_reading_headers_keeps_them_as_sent_for_the_query_templates(nursery, gateway):
    # transform_uri runs first: `headers` is loaded before transform_headers removes x-user
    rt = plugin("request-transformer", replace={"uri": '/u/$(headers["x-user"])'}, remove={"headers": ["x-user"]},
                add={"querystring": ['user:$(headers["x-user"])']})
    _, port = await start(nursery, gateway, plugins=[rt])
    got = seen(await call(port, "/x", [("x-user", "alice")]))
    assert "x-user" not in got["headers"]
    assert got["path"] == "/u/alice?user=alice"


async def test_a_uri_template_reading_the_query_keeps_it_as_sent_for_the_query_ops(nursery, gateway):
    # query_params ({a=1}) is loaded before transform_method merges the form body (b=2) into the query; the query
    # ops start from a copy of it (cycle_aware_deep_copy(template_env.query_params)), so b is gone again
    rt = plugin("request-transformer", http_method="GET", replace={"uri": '/q/$(query_params["a"])'},
                add={"querystring": ["c:3"]})
    _, port = await start(nursery, gateway, plugins=[rt])
    got = seen(await call(port, "/x?a=1", [("content-type", "application/x-www-form-urlencoded")], method="POST",
                          body=b"b=2"))
    assert got["method"] == "GET"
    assert got["path"] == "/q/1?a=1&c=3"


def test_without_a_uri_template_the_query_ops_start_from_the_query_with_the_form_arguments():
    ex = transformed(request_transformer(http_method="GET", add={"querystring": ["c:$(query_params.b)"]}),
                     b"/x?a=1", [FORM], b"b=2")
    assert ex.request.target == b"/x?a=1&b=2&c=2"


def test_a_uri_template_reading_headers_1_loads_the_headers_too():
    # $(headers[1]) renders "" but reads `headers`
    ex = transformed(request_transformer(replace={"uri": "/p$(headers[1])"}, remove={"headers": ["x-user"]},
                                         add={"querystring": ["u:$(headers.x_user)"]}), b"/x", [(b"x-user", b"al")])
    assert ex.request.target == b"/x?u=al" and ("set_upstream_path", b"/p") in ex.calls


@pytest.mark.parametrize("header_ops", [
    {"replace": {"headers": ["x-absent:$(headers.x)"]}},  # rendered though nothing is replaced
    {"add": {"headers": ["x-user:$(headers.x)"]}},  # rendered though x-user is there
    {"remove": {"headers": ["x-other:$(headers.x)"]}},  # a remove entry's value is rendered too (iter())
])
def test_a_header_op_template_keeps_the_headers_as_sent_whether_or_not_it_sets_anything(header_ops):
    ex = transformed(request_transformer(**header_ops, rename={"headers": ["x-user:x-who"]},
                                         append={"querystring": ["u:$(headers.x_user)"]}), b"/x", [(b"x-user", b"al")])
    assert ex.request.target == b"/x?u=al"


def test_without_a_header_template_the_body_reads_the_changed_headers():
    ex = transformed(request_transformer(rename={"headers": ["x-user:x-who"]},
                                         add={"body": ["u:$(headers.x_user)", "w:$(headers.x_who)"]}),
                     b"/x", [(b"x-user", b"al"), JSON], b"{}")
    assert json.loads(ex.body) == {"u": "", "w": "al"}


@pytest.mark.parametrize(("body_value", "length"), [("v", b"15"), ("$(headers.x)", b"7")])
def test_the_query_reads_the_body_s_new_length_unless_a_body_template_read_the_headers_first(body_value, length):
    ex = transformed(request_transformer(add={"body": [f"k:{body_value}"], "querystring": [
        "len:$(headers.content_length)"]}), b"/x", [(b"x", b"v"), JSON, (b"content-length", b"7")], b'{"a":1}')
    assert ex.body == b'{"a":1,"k":"v"}' and (b"content-length", b"15") in ex.request.headers
    assert ex.request.target == b"/x?len=" + length


def test_a_body_template_kong_does_not_render_for_an_empty_body_loads_nothing():
    # replace runs only for a body that is not empty: its template does not load the headers there, the query does
    ex = transformed(request_transformer(replace={"body": ["k:$(headers.x)"]}, add={"body": ["n:1"], "querystring": [
        "len:$(headers.content_length)"]}), b"/x", [(b"x", b"v"), JSON, (b"content-length", b"0")])
    assert ex.body == b'{"n":"1"}' and ex.request.target == b"/x?len=9"


# --- append onto an empty JSON object: lua-cjson writes {[1] = value} as an array ---------------------------------


def test_append_value_inserts_at_the_border_and_an_object_of_inserted_keys_is_an_array():
    assert append_value({}, "a") == ["a"]
    obj: dict[Any, Any] = {"k": 1, "1": "own"}
    obj = append_value(append_value(obj, "a"), "b")
    assert cjson.encode(obj) == b'{"k":1,"1":"own","1":"a","2":"b"}'  # Lua's key 1 is no "1"
    assert append_value(append_value({}, "a"), "b") == ["a", "b"]


async def test_appending_to_an_empty_json_object_in_a_response_makes_an_array(nursery, gateway):
    backend = FixedBackend(b"application/json", b'{"tags":{},"list":[],"obj":{"k":1}}')
    await nursery.start(backend.serve)
    rt = plugin("response-transformer", append={"json": ["tags:new", "list:one", "obj:two", "obj:three"]})
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{backend.port}", [{"paths": ["/"]}])],
                          "plugins": [rt]})
    reply = await call(port, "/x")
    assert reply.status == 200
    assert json.loads(reply.body) == {"tags": ["new"], "list": ["one"], "obj": {"k": 1, "1": "two", "2": "three"}}


def test_appending_to_an_empty_json_object_in_a_request_body_makes_an_array():
    ex = transformed(request_transformer(append={"body": ["tags:a", "tags:b", "obj:c"]}), b"/x", [JSON],
                     b'{"tags":{},"obj":{"k":1}}')
    assert json.loads(ex.body) == {"tags": ["a", "b"], "obj": {"k": 1, "1": "c"}}


# --- an append.headers entry without a value: Kong's add_header(name, nil) fails every response -------------------


@pytest.mark.parametrize("entry", ["x-foo:", "x-foo::"])
def test_a_response_append_header_without_a_value_is_refused(entry):
    err = refused(plugin("response-transformer", append={"headers": ["x-ok:1", entry]}))
    assert err.endswith(f"config.append.headers[1]: '{entry}' has no value (Kong's header filter fails on it with "
                        "every response)"), err


def test_header_entries_without_a_value_kong_skips_are_taken():
    """header_transformer tests the value of rename, replace and add (`and header_value`); request-transformer's
    set_headers takes the empty table append_value(nil, nil) gives."""
    assert response_transformer(add={"headers": ["x-foo:"]}, replace={"headers": ["x-bar:"]}).add_headers == []
    assert request_transformer(add={"headers": ["x-foo:"]}, append={"headers": ["x-foo:"]},
                               replace={"headers": ["x-foo:"]}).header_append == []


# --- the rename message of an empty new name -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["request-transformer", "response-transformer"])
def test_a_rename_to_an_empty_header_name_is_refused_with_kongs_message(name):
    err = refused(plugin(name, rename={"headers": ["x-a:"]}))
    assert err.endswith("rename.headers[0]: '' is not a valid header"), err


# --- the ops that would set Host: Kong's upstream host, which the gateway has not, so refused -----------------------

_HOST_WHY = ("Host is not supported by the gateway (Kong would make it the upstream's Host and TLS server name); set "
             "the route's preserve_host, or the upstream's host_header")


@pytest.mark.parametrize("entry", ["x-host:host", "x-host:Host", "x-host::HOST"])
def test_renaming_a_header_to_host_is_refused(entry):
    """kong/plugins/request-transformer/access.lua:178-192 renames into the table set_headers is given, and
    kong/pdk/service/request.lua:455-458 makes its Host `ngx.var.upstream_host`: the upstream's Host and TLS server
    name (nginx_kong.lua `proxy_ssl_name $upstream_host`), X-Forwarded-Host staying the client's."""
    err = refused(plugin("request-transformer", rename={"headers": ["x-a:x-b", entry]}))
    assert err.endswith(f"config.rename.headers[1]: renaming a header to {_HOST_WHY}"), err


@pytest.mark.parametrize("entry", ["host:v", "Host:$(headers.x_a)", "HOST:"])
def test_appending_to_host_is_refused(entry):
    """access.lua:210-225: append, unlike add (`name:lower() ~= HOST`), sets Host in the table set_headers is given
    (append_value onto the Host transform_headers cleared), and so the upstream host (request.lua:455-458)."""
    err = refused(plugin("request-transformer", append={"headers": [entry]}))
    assert err.endswith(f"config.append.headers[0]: appending to {_HOST_WHY}"), err


# --- header values with control bytes: taken, escaped as lua-nginx-module escapes them -----------------------------

# ngx_http_lua_escape_uri's header_value bitmap (src/ngx_http_lua_util.c): which bytes copy_escaped_header escapes
_HEADER_VALUE_BITMAP = (0xfffffdff, 0, 0, 0x80000000, 0, 0, 0, 0)


def test_escape_value_is_copy_escaped_header_byte_for_byte():
    for b in range(256):
        escaped = _HEADER_VALUE_BITMAP[b >> 5] & (1 << (b & 0x1f))
        assert escape_value(bytes([b])) == (b"%%%02X" % b if escaped else bytes([b])), b


async def test_a_request_header_value_with_a_line_break_is_taken_and_sent_escaped(nursery, gateway):
    rt = plugin("request-transformer", add={"headers": ["x-a:b\nc"]}, append={"headers": ["x-b:d\r\n"]},
                replace={"headers": ["x-c:\x00"]})
    _, port = await start(nursery, gateway, plugins=[rt])
    got = seen(await call(port, "/x", [("x-c", "old")]))
    assert (got["headers"]["x-a"], got["headers"]["x-b"], got["headers"]["x-c"]) == (["b%0Ac"], ["d%0D%0A"], ["%00"])


def test_a_response_header_value_with_a_line_break_is_set_escaped():
    # kong.response.set_header / add_header -> ngx.header: ngx_http_lua_set_output_header escapes it too
    rt = response_transformer(add={"headers": ["x-a:b\nc"]}, append={"headers": ["x-b:\x7f\r\n"]},
                              replace={"headers": ["x-c:1\x002"]})
    assert rt.header_filter(None, 200, [(b"x-c", b"old")]) == [(b"x-c", b"1%002"), (b"x-a", b"b%0Ac"),
                                                               (b"x-b", b"%7F%0D%0A")]


# ngx_http_lua_escape_uri's header_name bitmap (src/ngx_http_lua_util.c): which bytes a header name is escaped in
_HEADER_NAME_BITMAP = (0xffffffff, 0xfc009305, 0x38000001, 0xa8000000, 0xffffffff, 0xffffffff, 0xffffffff,
                       0xffffffff)


def test_escape_name_is_copy_escaped_header_byte_for_byte():
    for b in range(256):
        escaped = _HEADER_NAME_BITMAP[b >> 5] & (1 << (b & 0x1f))
        assert escape_name(bytes([b])) == (b"%%%02X" % b if escaped else bytes([b])), b


def test_a_response_header_name_with_a_line_break_is_set_escaped():
    """Kong's schema checks no name of add, append and replace; ngx.header escapes it as it sets it, so a name from
    the config can never end a header line."""
    rt = response_transformer(add={"headers": ["x-a\r\nx-injected:1"]})
    assert rt.header_filter(None, 200, []) == [(b"x-a%0D%0Ax-injected", b"1")]


# --- http_method: only the methods kong.service.request.set_method takes ----------------------------------------------

KONG_METHODS = ["GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "MKCOL", "COPY", "MOVE", "PROPFIND", "PROPPATCH",
                "LOCK", "UNLOCK", "PATCH", "TRACE"]


@pytest.mark.parametrize("method", ["PURGE", "CONNECT"])
def test_an_http_method_kong_cannot_set_is_refused(method):
    """kong/pdk/service/request.lua (3.9.3) 175-191: set_method's accepted_methods; 213-215 `if not method_id then
    error("invalid method: " .. method, 2)`. The schema (typedefs.http_method, `^%u+$`) takes PURGE, and every request
    on the route then fails in access (a 500): what cannot work is refused, naming config.http_method."""
    err = refused(plugin("request-transformer", http_method=method))
    assert f"config.http_method: '{method}' is not a method Kong can set" in err, err
    assert err.endswith("use one of " + ", ".join(KONG_METHODS)), err


def test_every_method_kong_can_set_is_taken():
    for method in KONG_METHODS:
        assert request_transformer(http_method=method).method == method.encode()


def _split_response(data: bytes) -> tuple[bytes, int, bytes]:
    """(the head, its Content-Length, what follows the head) of the response at the start of `data`."""
    head, _, rest = data.partition(b"\r\n\r\n")
    length = [int(line.split(b":")[1]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")]
    return head, length[0], rest


@pytest.mark.parametrize("http_codec", ["h11", "llhttp"])
async def test_a_get_sent_upstream_as_head_is_answered_with_the_head_alone_then_the_close_that_shows_it_cut(
        nursery, gateway):
    """kong/plugins/request-transformer/access.lua:457 `set_method(conf.http_method:upper())` is ngx.req.set_method
    (r->method, lua-nginx-module src/ngx_http_lua_req_method.c:114): the upstream's HEAD answer has no body
    (release-1.27.1 ngx_http_proxy_module.c:1281-1283 ctx->head). nginx sends the head alone and keeps the
    connection (ngx_http_header_filter_module.c:186-187 header_only), so a client that asked with GET reads the next
    response as the body the head announced. The gateway sends the head alone and closes: the client sees that
    body cut, and no response of another request is taken for it (h11 reset the connection with nothing sent)."""
    _, port = await start(nursery, gateway, routes=[
        {"paths": ["/head"], "plugins": [plugin("request-transformer", http_method="HEAD")]}, {"paths": ["/get"]}])
    pipelined = b"GET /head HTTP/1.1\r\nHost: a\r\n\r\nGET /get HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    data, reset = await raw_exchange(port, pipelined, timeout=TIMEOUT)
    head, length, rest = _split_response(data)
    assert head.startswith(b"HTTP/1.1 200 ") and length > 0, data
    assert b"\r\nconnection: close" in head.lower(), head
    assert (rest, reset) == (b"", False)  # nothing after the head: the second request is not answered on it


@pytest.mark.parametrize("http_codec", ["h11", "llhttp"])
async def test_a_head_sent_upstream_as_get_is_answered_with_the_head_alone(nursery, gateway):
    """The other way (ngx.req.set_method("GET") on a client's HEAD): the upstream answers with a body, which nginx
    sends (r->method is GET: not header_only) and a client that asked with HEAD reads as the next response. The
    gateway frames the answer by the client's method: the head alone, and the connection goes on."""
    _, port = await start(nursery, gateway, routes=[
        {"paths": ["/"], "plugins": [plugin("request-transformer", http_method="GET")]}])
    pipelined = b"HEAD /x HTTP/1.1\r\nHost: a\r\n\r\nGET /y HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    data, reset = await raw_exchange(port, pipelined, timeout=TIMEOUT)
    head, length, rest = _split_response(data)
    assert head.startswith(b"HTTP/1.1 200 ") and length > 0, data
    assert rest.startswith(b"HTTP/1.1 200 "), data  # the second response follows the head: no body between
    _, second_length, second_body = _split_response(rest)
    assert (len(second_body), reset) == (second_length, False)
    assert json.loads(second_body)["method"] == "GET"


# --- a request header value set empty: Kong's PDK sets "" as " ", a line the upstream reads empty -----------------


def test_an_added_header_whose_template_renders_empty_is_sent_empty():
    """access.lua (3.9.3) 203-207 puts the rendered "" in the table (pl.template renders `$(expr)` as
    tostring(expr or '')), 231 set_headers, which sets ngx.req.set_header(k, normalize_multi_header(v))
    (kong/pdk/service/request.lua 447): "" becomes " " (kong/pdk/private/checks.lua 13-18), so X-User goes upstream
    with an empty value (t/01-pdk/06-service-request/09-set_header.t TEST 10 "can set to an empty string")."""
    ex = transformed(request_transformer(add={"headers": ["x-user:$(query_params.u)"]}), b"/x", [(b"x-a", b"1")])
    assert ex.request.headers == [(b"x-a", b"1"), (b"x-user", b"")]


def test_a_replaced_header_whose_template_renders_empty_is_sent_empty():
    """access.lua (3.9.3) 196-200 replaces x-user's value with the rendered "", then set_headers sets " "
    (normalize_multi_header): the first line takes it in place, the others of the name go
    (ngx_http_set_header_helper)."""
    ex = transformed(request_transformer(replace={"headers": ["x-user:$(query_params.u)"]}), b"/x",
                     [(b"x-user", b"alice"), (b"x-a", b"1"), (b"x-user", b"bob")])
    assert ex.request.headers == [(b"x-user", b""), (b"x-a", b"1")]


def test_an_appended_empty_value_is_a_line_of_its_own():
    """append_value gives {current, ""} or {""}, each "" set as " " (normalize_multi_header's table branch,
    kong/pdk/private/checks.lua 20-26): a line with an empty value, beside a value already there or alone."""
    rt = request_transformer(append={"headers": ["x-a:$(query_params.u)"]})
    assert transformed(rt, b"/x", [(b"x-a", b"1")]).request.headers == [(b"x-a", b"1"), (b"x-a", b"")]
    assert transformed(rt, b"/x", [(b"x-b", b"1")]).request.headers == [(b"x-b", b"1"), (b"x-a", b"")]


def test_a_header_the_client_sent_empty_is_kept_when_the_headers_are_set_again():
    """transform_headers ends with set_headers(get_headers()'s table): each of its names is set again through
    normalize_multi_header (kong/pdk/service/request.lua 447), "" as " ", so a header the client sent empty stays
    (empty, where it stood); a name sent empty and again keeps both values, set again together."""
    ex = transformed(request_transformer(add={"headers": ["x-new:1"]}), b"/x",
                     [(b"x-empty", b""), (b"x-two", b""), (b"x-a", b"1"), (b"x-two", b"2")])
    assert ex.request.headers == [(b"x-empty", b""), (b"x-two", b""), (b"x-a", b"1"), (b"x-two", b"2"),
                                  (b"x-new", b"1")]


def test_query_and_body_values_a_template_renders_empty_are_sent_empty():
    """Kong's own code keeps them: set_query (make_ordered_args) writes `u=`, cjson.encode `"b":""`,
    ngx.encode_args `b=`."""
    rt = request_transformer(add={"querystring": ["u:$(headers.x)"], "body": ["b:$(headers.x)"]})
    ex = transformed(rt, b"/x", [JSON], b'{"a":1}')
    assert (ex.request.target, ex.body) == (b"/x?u=", b'{"a":1,"b":""}')
    assert transformed(rt, b"/x", [FORM], b"a=1").body == b"a=1&b="


# --- response-transformer: append onto nginx's built-in single response headers -----------------------------------


def test_appending_content_type_leaves_one_content_type():
    """header_transformer.lua (3.9.3) 120-122 add_header -> kong.response.add_header -> ngx.resp.add_header,
    lua-nginx-module's ngx_http_lua_set_output_header with override off. Content-Type is one of its built-in headers
    (src/ngx_http_lua_headers_out.c ngx_http_set_content_type_header): it sets r->headers_out.content_type, and nginx
    sends one Content-Type, the appended value."""
    rt = response_transformer(append={"headers": ["content-type:text/plain"]})
    head = [(b"content-type", b"application/json"), (b"content-length", b"2")]
    assert rt.header_filter(None, 200, head) == [(b"content-length", b"2"), (b"content-type", b"text/plain")]


def test_appending_etag_leaves_one_etag():
    """ETag is a built-in single header (ngx_http_set_builtin_header): with r->headers_out.etag set by the
    upstream's ETag (nginx release-1.27.1 src/http/ngx_http_upstream.c 219-223, copy_header_line's offset), the
    line's value is overwritten (`h->value = *value`): one ETag, the appended one. Twice: still one, the last."""
    rt = response_transformer(append={"headers": ['etag:"b"']})
    assert rt.header_filter(None, 200, [(b"etag", b'"a"'), (b"x", b"1")]) == [(b"x", b"1"), (b"etag", b'"b"')]
    twice = response_transformer(append={"headers": ["server:a", "x-m:1", "server:b", "x-m:2"]})
    assert twice.header_filter(None, 200, []) == [(b"x-m", b"1"), (b"server", b"b"), (b"x-m", b"2")]


def test_appending_to_a_relative_location_adds_a_line_and_to_an_absolute_one_replaces_it():
    """ngx_http_upstream_rewrite_location (release-1.27.1 src/http/ngx_http_upstream.c 5436-5478) leaves a relative
    Location out of r->headers_out.location: add_header finds no slot and adds a line. An absolute one holds it."""
    rt = response_transformer(append={"headers": ["location:http://b/"]})
    assert rt.header_filter(None, 302, [(b"location", b"/a")]) == [(b"location", b"/a"), (b"location", b"http://b/")]
    assert rt.header_filter(None, 302, [(b"location", b"http://a/")]) == [(b"location", b"http://b/")]


def test_appending_to_a_multi_valued_built_in_header_adds_a_line():
    """Cache-Control, WWW-Authenticate and Link are ngx_http_set_builtin_multi_header's: add_header adds a line."""
    rt = response_transformer(append={"headers": ["cache-control:no-store"]})
    assert rt.header_filter(None, 200, [(b"cache-control", b"private")]) == [
        (b"cache-control", b"private"), (b"cache-control", b"no-store")]


def test_a_header_renamed_from_an_empty_value_is_sent_empty():
    """rename is set_header(new, old's value) (header_transformer.lua 95-100): kong.response.set_header writes
    ngx.header[new] = normalize_multi_header(value) (kong/pdk/response.lua 434), "" as " " (kong/pdk/private/
    checks.lua 13-26), so the new name has a line the client reads empty; of {"", "2"}, both lines
    (01-header_transformer_spec "header if the header exists and is empty": {h2 = " "})."""
    rt = response_transformer(rename={"headers": ["x-a:x-b"]})
    assert rt.header_filter(None, 200, [(b"x-a", b""), (b"x-c", b"1")]) == [(b"x-c", b"1"), (b"x-b", b"")]
    assert rt.header_filter(None, 200, [(b"x-a", b""), (b"x-a", b"2")]) == [(b"x-b", b""), (b"x-b", b"2")]


def test_a_header_sent_twice_renamed_onto_a_single_header_keeps_its_last_value():
    """set_header(new, {v1, v2}) sets v1, then adds v2 without override: a built-in single header's slot is
    overwritten (ngx_http_set_builtin_header), so one line with v2."""
    rt = response_transformer(rename={"headers": ["x-tag:etag"]})
    assert rt.header_filter(None, 200, [(b"x-tag", b'"1"'), (b"x-tag", b'"2"')]) == [(b"etag", b'"2"')]


# --- framing headers: the changes that would break a body's framing are refused ------------------------------------

_FRAMING_WHY = ("bodies itself (Content-Length or chunked coding, from the body it sends), and this change would "
                "break that framing; remove the entry")


@pytest.mark.parametrize(("op", "entry", "doing"), [
    ("remove", "content-length", "removing 'content-length'"),
    ("remove", "Transfer-Encoding", "removing 'Transfer-Encoding'"),
    ("rename", "content-length:x-len", "renaming 'content-length'"),
    ("rename", "transfer-encoding:x-te", "renaming 'transfer-encoding'"),
    ("rename", "x-len:Content_Length", "renaming a header to 'Content_Length'"),
    ("rename", "x-te:transfer-encoding", "renaming a header to 'transfer-encoding'"),
    ("replace", "content-length:3", "replacing 'content-length'"),
    ("add", "content-length:3", "adding 'content-length'"),
    ("add", "transfer-encoding:chunked", "adding 'transfer-encoding'"),
    ("append", "content-length:3", "appending to 'content-length'"),
    ("append", "transfer-encoding:chunked", "appending to 'transfer-encoding'"),
])
def test_a_request_header_change_that_breaks_the_body_framing_is_refused(op, entry, doing):
    """The gateway frames the upstream request from the request's Content-Length or Transfer-Encoding: without them a
    body is not sent (or the upstream reads it as the next request), with another length or a second one the
    request is broken (h11: a 500). Kong's nginx frames it itself too ($proxy_internal_body_length), from a
    content_length_n these calls set (ngx_http_lua_headers_in.c ngx_http_set_content_length_header): broken there
    as well."""
    err = refused(plugin("request-transformer", **{op: {"headers": ["x-ok:1" if op != "remove" else "x-ok", entry]}}))
    assert err.endswith(f"config.{op}.headers[1]: {doing} is refused: the gateway frames request {_FRAMING_WHY}"), err


@pytest.mark.parametrize(("op", "entry", "doing"), [
    ("rename", "x-len:content_length", "renaming a header to 'content_length'"),
    ("replace", "content-length:3", "replacing 'content-length'"),
    ("add", "Content-Length:3", "adding 'Content-Length'"),
    ("append", "content-length:3", "appending to 'content-length'"),
    ("append", "transfer-encoding:chunked", "appending to 'transfer-encoding'"),
])
def test_a_response_header_change_that_breaks_the_body_framing_is_refused(op, entry, doing):
    """kong.response.set_header / add_header("Content-Length", v) set r->headers_out.content_length_n
    (ngx_http_lua_headers_out.c ngx_http_set_content_length_header): nginx then sends that length (or two lines of
    it, with the upstream's) whatever the body; add_header takes Transfer-Encoding too (set_header ignores it),
    beside nginx's own chunked coding or length."""
    err = refused(plugin("response-transformer", **{op: {"headers": ["x-ok:1", entry]}}))
    assert err.endswith(f"config.{op}.headers[1]: {doing} is refused: the gateway frames response {_FRAMING_WHY}"), err


def test_the_framing_header_changes_that_keep_a_message_whole_are_taken():
    response_transformer(remove={"headers": ["content-length", "transfer-encoding"]},
                         rename={"headers": ["content-length:x-len", "x-te:transfer-encoding"]},
                         replace={"headers": ["transfer-encoding:gzip"]}, add={"headers": ["transfer-encoding:gzip"]})
    request_transformer(replace={"headers": ["transfer-encoding:gzip"]})


@pytest.mark.parametrize("http_codec", ["h11", "llhttp"])
async def test_the_framing_header_changes_taken_give_whole_messages(nursery, gateway):
    """A response's Content-Length removed or renamed: Kong's clear_header sets content_length_n to -1 and nginx
    sends the body chunked (release-1.27.1 src/http/modules/ngx_http_chunked_filter_module.c 74, 95). A chunked
    request's Transfer-Encoding replaced: nginx frames the upstream request itself, so does the gateway (the
    replaced value goes nowhere). All on one connection: a message framed wrong would break the next."""
    _, port = await start(nursery, gateway, routes=[
        {"paths": ["/rm"], "plugins": [plugin("response-transformer", remove={"headers": ["content-length"]})]},
        {"paths": ["/mv"], "plugins": [plugin("response-transformer",
                                              rename={"headers": ["content-length:x-length"]})]},
        {"paths": ["/te"], "plugins": [plugin("request-transformer",
                                              replace={"headers": ["transfer-encoding:gzip"]})]}])
    async with await Client.connect(port) as client:
        removed = await client.request("GET", "/rm")
        renamed = await client.request("GET", "/mv")
        posted = await client.request("POST", "/te", body=[b"hel", b"lo"])
    assert removed.header("content-length") is None and removed.header("transfer-encoding") == "chunked"
    assert removed.json()["body_len"] == 0 and renamed.json()["body_len"] == 0  # (the whole JSON read)
    assert renamed.header("x-length") == str(len(renamed.body)) and renamed.header("transfer-encoding") == "chunked"
    got = posted.json()
    assert got["body"] == "hello" and ["transfer-encoding", "gzip"] not in got["headers"], got


# --- a JSON key renamed to its own name; a body or query entry without a name ----------------------------------------


def test_renaming_a_json_key_to_its_own_name_removes_it():
    """kong/plugins/response-transformer/body_transformer.lua 127-132: the new name is set, then the old one cleared
    (`json_body[new_name] = value; json_body[old_name] = nil`), so a key renamed to itself is gone, as a header is
    (test_renaming_a_response_header_to_its_own_name_removes_it)."""
    policy = response_transformer(rename={"json": ["a:a"]})
    out = policy.body_filter(None, 200, [JSON], b'{"a":1,"b":2}')
    assert json.loads(out) == {"b": 2}


@pytest.mark.parametrize("op", ["add", "append", "replace", "rename"])
@pytest.mark.parametrize("field", ["body", "querystring"])
@pytest.mark.parametrize("entry", [":v", "::v"])
def test_a_request_body_or_query_entry_without_a_name_is_refused(op, field, entry):
    """kong/plugins/request-transformer/schema.lua 13-16, check_for_value (the custom_validator of every body and
    querystring element of rename, replace, add and append, line 79): `entry:match("^([^:]+):*(.-)$")` finds no
    name in ":v" (a name is one character or more other than ':'), and Kong refuses the entry."""
    err = refused(plugin("request-transformer", **{op: {field: ["k:v", entry]}}))
    assert err.endswith(f"config.{op}.{field}[1]: '{entry}' has no name before its ':' (write 'name:value')"), err


def _compiled(gateway: dict[str, Any], plugin_doc: dict) -> str | None:
    """The config error of a one-route config with this `gateway:` section and plugin (global), or None."""
    config = parse_config(json.dumps({"gateway": gateway, "services": [{"name": "s", "url": "http://127.0.0.1:1",
                                                                        "routes": [{"paths": ["/"]}]}],
                                      "plugins": [plugin_doc]}))
    try:
        compile_config(config)
    except ConfigError as e:
        return str(e)
    return None


@pytest.mark.parametrize(("op", "field"), [("add", "headers"), ("append", "querystring"), ("replace", "body"),
                                           ("rename", "querystring")])
def test_with_untrusted_lua_off_a_template_is_refused_as_kong_fails_the_requests_it_renders(op, field):
    """kong/tools/sandbox/init.lua 134-135 (`enabled`: untrusted_lua ~= "off"); request-transformer/access.lua
    79-86 (param_value, which every entry of rename, replace, add and append goes through, lines 179-411: with Lua
    disabled a value matching `%$%(.*%)` is an error) and 126 (iter() raises it: Kong's 500 for every such request)."""
    err = _compiled({"untrusted_lua": "off"}, plugin("request-transformer", **{op: {field: ["k:v", "x:$(headers.y)"]}}))
    assert err is not None and f"config.{op}.{field}[1]: a $(...) template, which Kong runs as Lua: with " \
                                  "kong.conf's untrusted_lua off Kong answers 500" in err, err


def test_with_untrusted_lua_off_a_template_in_replace_uri_is_refused():
    """access.lua:491 renders replace.uri with param_value too."""
    err = _compiled({"untrusted_lua": False}, plugin("request-transformer", replace={"uri": "/$(uri_captures[1])"}))
    assert err is not None and "config.replace.uri: a $(...) template" in err, err


def test_with_untrusted_lua_off_values_without_templates_load_and_sandbox_renders_templates():
    """param_value with Lua disabled returns a value without $(...) as it is (access.lua 85-86); Kong's default,
    sandbox (and on), renders the templates the gateway supports."""
    assert _compiled({"untrusted_lua": "off"}, plugin("request-transformer", add={"headers": ["k:v"]})) is None
    for setting in ("sandbox", "on", True):
        assert _compiled({"untrusted_lua": setting},
                         plugin("request-transformer", add={"headers": ["x:$(headers.y)"]})) is None
