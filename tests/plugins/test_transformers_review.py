"""request-transformer and response-transformer against Kong on the points of a review: the template environment's
lazy, kept tables (kong/plugins/request-transformer/access.lua `__meta_environment`), append_value onto an empty JSON
object (lua-cjson writes {[1] = v} as an array), an append.headers entry without a value (Kong's header filter fails
on it), the rename message of an empty name (schema.lua validate_headers' tostring("")), and header values with
control bytes (taken by the schema, escaped by lua-nginx-module's ngx_http_lua_copy_escaped_header)."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from backends import service
from plugin_helpers import (
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

from gateway.http.codec import Headers
from gateway.policies import cjson
from gateway.policies.header_list import escape_name, escape_value
from gateway.policies.request_transformer.handler import RequestTransformer
from gateway.policies.request_transformer.schema import RequestTransformerConfig
from gateway.policies.response_transformer.handler import ResponseTransformer, append_value
from gateway.policies.response_transformer.schema import ResponseTransformerConfig

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
