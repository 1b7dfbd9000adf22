"""Kong 3.9.3's own spec tests for cors, request-transformer and response-transformer, `it` by `it`, for the ones no
other test of the gateway covered, each against a real gateway and backend; and Kong's PDK setting an empty header
value as " " (kong/pdk/private/checks.lua normalize_multi_header), so the header goes out with an empty value."""

from __future__ import annotations

import json

import h11
import pytest
import trio
from backends import Client, EchoBackend, _Backend, service
from plugin_helpers import (
    call,
    headers_of,
    http_codec,  # noqa: F401 - the fixture: one codec
    plugin,
    seen,
    start,
)

JSON_CT = [("content-type", "application/json")]
FORM_CT = [("content-type", "application/x-www-form-urlencoded")]


async def hcall(port, target, headers=None, host="gateway.test", method="GET", body=b""):
    with trio.fail_after(10):
        async with await Client.connect(port, host) as client:
            return await client.request(method, target, headers=headers, body=body)


async def rt(nursery, gateway, routes=None, **config):
    return await start(nursery, gateway, routes, plugins=[plugin("request-transformer", **config)])


@pytest.mark.parametrize("config", [
    {"remove": {"headers": ["x-to-remove"], "querystring": ["q1"], "body": ["toremoveform"]}},
    {"rename": {"headers": ["x-to-rename:x-is-renamed"], "body": ["originalparam:renamedparam"]}},
    {"replace": {"headers": ["h1:v1"], "body": ["p1:v1"]}},
    {"add": {"headers": ["h1:v1"], "body": ["p1:v1"]}},
    {"append": {"headers": ["h1:v1"], "body": ["p1:v1", "p1:v2"]}},
])
async def test_rt_a_malformed_json_body_goes_upstream_as_sent(nursery, gateway, config):
    """02-access_spec "does not fail if JSON body is malformed in POST" (remove, rename, replace, add, append)."""
    _, port = await rt(nursery, gateway, **config)
    got = seen(await call(port, "/request", JSON_CT, method="POST", body=b"malformed json body"))
    assert got["body"] == "malformed json body"


async def test_rt_an_empty_json_object_body_stays_two_bytes(nursery, gateway):
    """02-access_spec remove "does not fail if body is empty and content type is application/json in POST"."""
    _, port = await rt(nursery, gateway, remove={"headers": ["x-to-remove"], "body": ["toremoveform"]})
    got = seen(await call(port, "/request", JSON_CT, method="POST", body=b"{}"))
    assert got["body"] == "{}"
    assert got["headers"]["content-length"] == ["2"]


async def test_rt_an_empty_body_goes_with_content_length_zero(nursery, gateway):
    """02-access_spec remove "does not fail if body is empty in POST"."""
    _, port = await rt(nursery, gateway, remove={"headers": ["x-to-remove"], "body": ["toremoveform"]})
    got = seen(await call(port, "/request", [("content-length", "0")], method="POST", body=b""))
    assert got["body"] == ""
    assert got["headers"].get("content-length") == ["0"]


@pytest.mark.parametrize("config", [
    {"remove": {"body": ["toremoveform"]}},
    {"rename": {"body": ["originalparam:renamedparam"]}},
    {"replace": {"body": ["p1:v1"]}},
    {"add": {"body": ["p1:v1"]}},
    {"append": {"body": ["p1:v1"]}},
])
async def test_rt_an_empty_json_array_stays_an_array(nursery, gateway, config):
    """02-access_spec "preserves empty json array" (remove, rename, replace, add, append)."""
    _, port = await rt(nursery, gateway, **config)
    got = seen(await call(port, "/request", JSON_CT, method="POST", body=b'{"emptyarray":[], "p1":"v"}'))
    assert '"emptyarray":[]' in got["body"]


async def test_rt_get_to_post_with_an_added_json_body(nursery, gateway):
    """02-access_spec "changes the HTTP method from GET to POST and adds JSON body"."""
    _, port = await rt(nursery, gateway, http_method="POST",
                       add={"headers": ["Content-Type:application/json"], "body": ["body:somecontent"]})
    got = seen(await call(port, "/request"))
    assert got["method"] == "POST"
    assert got["headers"]["content-type"] == ["application/json"]
    assert json.loads(got["body"]) == {"body": "somecontent"}


async def test_rt_get_to_post_keeps_the_query(nursery, gateway):
    """02-access_spec "changes the HTTP method from GET to POST"."""
    _, port = await rt(nursery, gateway, http_method="POST")
    got = seen(await call(port, "/request?hello=world&name=marco"))
    assert got["method"] == "POST"
    assert got["path"] == "/request?hello=world&name=marco"


async def test_rt_optional_capture_prefix(nursery, gateway):
    """02-access_spec "replaces request uri with optional capture prefix" / "with the capature prefix"."""
    routes = [{"paths": ["~/(gw/)?api/(?<subpath>htest)$"], "strip_path": False}]
    _, port = await rt(nursery, gateway, routes, replace={"uri": '/api/v2/$(uri_captures["subpath"])'})
    assert seen(await call(port, "/api/htest"))["path"] == "/api/v2/htest"
    assert seen(await call(port, "/gw/api/htest"))["path"] == "/api/v2/htest"


async def test_rt_uri_by_index_zero(nursery, gateway):
    """02-access_spec "should not fail when uri template rendered using index"."""
    routes = [{"paths": ["~/user1/(?P<user1>\\w+)/user2/(?P<user2>\\S+)"]}]
    _, port = await rt(nursery, gateway, routes, replace={"uri": "/requests$(uri_captures[0])"})
    assert seen(await call(port, "/user1/foo/user2/bar"))["path"] == "/requests/user1/foo/user2/bar"


async def test_rt_templates_from_headers_and_query(nursery, gateway):
    """02-access_spec "validate using headers/req_querystring for rendering templates"."""
    routes = [{"paths": ["~/requests/user1/(?<user1>\\w+)/user2/(?<user2>\\S+)"], "strip_path": False}]
    _, port = await rt(nursery, gateway, routes, add={"querystring": ["uri_param1:$(uri_captures.user1)",
                                                                       "uri_param2:$(headers.host)"],
                                                       "headers": ["x-test-header:$(query_params.q1)"]},
                       remove={"querystring": ["q1"]})
    got = seen(await hcall(port, "/requests/user1/foo/user2/bar?q1=20", FORM_CT, host="test15.test"))
    assert got["path"] == "/requests/user1/foo/user2/bar?uri_param1=foo&uri_param2=test15.test"
    assert got["headers"]["x-test-header"] == ["20"]


async def test_rt_removed_header_as_template(nursery, gateway):
    """02-access_spec "validate that removed header can be used as template"."""
    routes = [{"paths": ["~/requests/user1/(?<user1>\\w+)/user2/(?<user2>\\S+)"], "strip_path": False}]
    _, port = await rt(nursery, gateway, routes, replace={"querystring": ["q2:$(headers['x-remove-header'])"]},
                       add={"querystring": ["q1:$(uri_captures.user1)"],
                            "headers": ["x-test-header:$(headers['x-remove-header'])"]},
                       remove={"headers": ["x-remove-header"]})
    got = seen(await call(port, "/requests/user1/foo/user2/bar?q2=20", [("x-remove-header", "its a test"), *FORM_CT]))
    assert "x-remove-header" not in got["headers"]
    assert got["path"] == "/requests/user1/foo/user2/bar?q1=foo&q2=its%20a%20test"
    assert got["headers"]["x-test-header"] == ["its a test"]


async def test_rt_replaced_header_old_value_in_template(nursery, gateway):
    """02-access_spec "validate template will be rendered with old value of replaced header"."""
    routes = [{"paths": ["~/requests/user1/(?<user1>\\w+)/user2/(?<user2>\\S+)"], "strip_path": False}]
    _, port = await rt(nursery, gateway, routes, replace={"querystring": ["q2:$(headers['x-replace-header'])"],
                                                           "headers": ["x-replace-header:the new value"]},
                       add={"querystring": ["q1:$(uri_captures.user1)"],
                            "headers": ["x-test-header:$(headers['x-replace-header'])"]})
    got = seen(await call(port, "/requests/user1/foo/user2/bar?q2=20", [("x-replace-header", "the old value")]))
    assert got["path"] == "/requests/user1/foo/user2/bar?q1=foo&q2=the%20old%20value"
    assert got["headers"]["x-test-header"] == ["the old value"]
    assert got["headers"]["x-replace-header"] == ["the new value"]


async def test_rt_remove_then_add_header(nursery, gateway):
    """02-access_spec "remove then add header (regression test)"."""
    _, port = await rt(nursery, gateway, http_method="POST", remove={"headers": ["Authorization"]},
                       add={"headers": ["Authorization:Basic test"]})
    got = seen(await call(port, "/", [("Authorization", "Basic dGVzdDp0ZXN0"), *JSON_CT]))
    assert got["headers"]["authorization"] == ["Basic test"]
    got = seen(await call(port, "/", JSON_CT))
    assert got["headers"]["authorization"] == ["Basic test"]


async def test_rt_query_not_urlencoded_without_ops(nursery, gateway):
    """02-access_spec "query parameters are not #urlencoded to upstream URL"."""
    routes = [{"paths": ["/request"]}]
    _, port = await rt(nursery, gateway, routes)
    got = seen(await call(port, "/request?expected=$&+,/:;?@"))
    assert got["path"] == "/?expected=$&+,/:;?@"


async def test_rt_append_hash_value(nursery, gateway):
    """02-access_spec "can append a value with '#' (regression test for #29)"."""
    _, port = await rt(nursery, gateway, append={"headers": ["h1:v1", "h1:v2", "h1:#value_with_hash", "h2:v1"],
                                                 "querystring": ["q1:v1", "q1:v2", "q2:v1"],
                                                 "body": ["p1:v1", "p1:v2", "p2:value:1"]})
    got = seen(await call(port, "/request"))
    assert got["headers"]["h1"] == ["v1", "v2", "#value_with_hash"]
    assert got["path"] == "/request?q1=v1&q1=v2&q2=v1"


async def test_rt_add_host_header_with_preserve_host(nursery, gateway):
    """02-access_spec add "should not change the host header" (preserve_host, add host:mark)."""
    routes = [{"paths": ["/"], "preserve_host": True}]
    _, port = await rt(nursery, gateway, routes, add={"headers": ["host:mark"]})
    got = seen(await hcall(port, "/get", JSON_CT, host="test2.test"))
    assert got["headers"]["host"] == ["test2.test"]


# --- response-transformer -------------------------------------------------------------------------------------------


async def test_resp_replace_json_values_with_slashes_and_quotes(nursery, gateway):
    """15-response-transformer/04-filter_spec "replace a body parameter on GET"."""
    rtr = plugin("response-transformer", replace={"json": ["headers:/hello/world", "method:this is a / test",
                                                            'path:"wot"']})
    _, port = await start(nursery, gateway, plugins=[rtr])
    doc = (await call(port, "/get")).json()
    assert doc["headers"] == "/hello/world"
    assert doc["method"] == "this is a / test"
    assert doc["path"] == '"wot"'


async def test_resp_remove_json_and_header(nursery, gateway):
    """04-filter_spec "remove a parameter" / "remove a header"."""
    backend, port = await start(nursery, gateway, plugins=[plugin(
        "response-transformer", remove={"headers": ["Access-Control-Allow-Origin"], "json": ["path"]})])
    backend.extra_headers.append((b"Access-Control-Allow-Origin", b"*"))
    reply = await call(port, "/get")
    assert "path" not in reply.json()
    assert headers_of(reply, "access-control-allow-origin") == []


async def test_resp_short_circuited_request_is_answered(nursery, gateway):
    """04-filter_spec "does not throw an error when request was short-circuited in access phase"."""
    route_plugins = [plugin("response-transformer", remove={"json": ["ip"]}), plugin("basic-auth")]
    _, port = await start(nursery, gateway, [{"paths": ["/"], "plugins": route_plugins}])
    reply = await call(port, "/get")
    assert reply.status == 401
    assert reply.json()["message"] == "Unauthorized"


@pytest.mark.parametrize("op", ["add", "remove"])
async def test_resp_large_json_body_is_transformed(nursery, gateway, op):
    """05-big_response_body_spec "add new parameters on large POST" / "remove parameters on large POST" (a response
    over 1 MiB: the echo of a 1 MiB body)."""
    rtr = plugin("response-transformer", add={"json": ["p1:v1"]}, remove={"json": ["body"]})
    _, port = await start(nursery, gateway, [{"paths": ["/"], "methods": ["POST"]}], plugins=[rtr])
    body = json.dumps({"mock_json": {"big_field": "*" * (1024 * 1024)}}).encode()
    reply = await call(port, "/post", JSON_CT, method="POST", body=body)
    assert reply.status == 200
    doc = reply.json()
    assert doc.get("p1") == "v1"
    assert "body" not in doc


class JsonBackend(_Backend):
    """Answers every request 200 application/json with `body`."""

    def __init__(self, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__("json")
        self.body = body
        self.extra = extra or []

    async def handle_conn(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        while (await self._read_request(stream, conn)) is not None:
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(self.body)).encode()),
                       *self.extra]
            await stream.send_all(conn.send(h11.Response(status_code=200, headers=headers)))
            await stream.send_all(conn.send(h11.Data(data=self.body)))
            await stream.send_all(conn.send(h11.EndOfMessage()))
            conn.start_next_cycle()


# --- response-transformer: 02-body_transformer_spec's transform_json_body() cases, through a real gateway ----------

BT_CASES = [
    # (describe/it, config, body in, expected document)
    ("add parameter", {"add": {"json": ["p1:v1", "p3:value:3", 'p4:"v1"', "p5:-1", "p6:false", "p7:true"],
                               "json_types": ["string", "string", "string", "number", "boolean", "boolean"]}},
     '{"p2":"v1", "a":[]}',
     {"p1": "v1", "p2": "v1", "p3": "value:3", "p4": '"v1"', "p5": -1, "p6": False, "p7": True, "a": []}),
    ("add number/boolean", {"add": {"json": ["p1:v1", "p3:value:3", 'p4:"v1"', "p5:-1", "p6:false", "p7:true"],
                                    "json_types": ["string", "string", "string", "number", "boolean", "boolean"]}},
     '{"p2":false}',
     {"p1": "v1", "p2": False, "p3": "value:3", "p4": '"v1"', "p5": -1, "p6": False, "p7": True}),
    ("append new", {"append": {"json": ["p1:v1", 'p3:"v1"', "p4:-1", "p5:false", "p6:true"],
                               "json_types": ["string", "string", "number", "boolean", "boolean"]}},
     '{"p2":"v1", "a":[]}',
     {"p2": "v1", "a": [], "p1": ["v1"], "p3": ['"v1"'], "p4": [-1], "p5": [False], "p6": [True]}),
    ("append existing", {"append": {"json": ["p1:v1", 'p3:"v1"', "p4:-1", "p5:false", "p6:true"],
                                    "json_types": ["string", "string", "number", "boolean", "boolean"]}},
     '{"p1":"v2", "p3":"v2", "p4":"v2", "p5":"v5", "p6":"v6"}',
     {"p1": ["v2", "v1"], "p3": ["v2", '"v1"'], "p4": ["v2", -1], "p5": ["v5", False], "p6": ["v6", True]}),
    ("remove", {"remove": {"json": ["p1", "p2"]}}, '{"p1" : "v1", "p2" : "v1", "a": []}', {"a": []}),
    ("rename", {"rename": {"json": ["p1:k1", "p2:k2", "p3:k3", "p4:k4", "p5:k5"]}},
     '{"p1" : "v1", "p2" : "v2", "p3": [], "p4": false, "p5": true}',
     {"k1": "v1", "k2": "v2", "k3": [], "k4": False, "k5": True}),
    ("replace", {"replace": {"json": ["p1:v2", 'p2:"v2"', "p3:-1", "p4:false", "p5:true"],
                             "json_types": ["string", "string", "number", "boolean", "boolean"]}},
     '{"p1" : "v1", "p2" : "v1", "a": [], "p3": "v1", "p4": "v4", "p5": "v5"}',
     {"p1": "v2", "p2": '"v2"', "a": [], "p3": -1, "p4": False, "p5": True}),
    ("replace absent", {"replace": {"json": ["p1:v2", 'p2:"v2"'], "json_types": ["string", "string"]}},
     '{"p1" : "v1"}', {"p1": "v2"}),
    ("combination", {"remove": {"json": ["p1"]}, "rename": {"json": ["p4:p2"]}, "replace": {"json": ["p2:v2"]},
                     "add": {"json": ["p3:v1"]}, "append": {"json": ["p3:v2"]}},
     '{"p1" : "v1", "p4" : "v1", "a" : []}', {"p2": "v2", "p3": ["v1", "v2"], "a": []}),
]


@pytest.mark.parametrize(("title", "config", "body", "expected"), BT_CASES, ids=[c[0] for c in BT_CASES])
async def test_resp_body_transformer_spec_cases(nursery, gateway, title, config, body, expected):
    """15-response-transformer/02-body_transformer_spec transform_json_body() cases, through a real gateway."""
    backend = JsonBackend(body.encode())
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{backend.port}", [{"paths": ["/"]}])],
                          "plugins": [plugin("response-transformer", **config)]})
    reply = await call(port, "/x")
    assert reply.status == 200
    assert json.loads(reply.body) == expected
    if "a" in expected:
        assert b'"a":[]' in reply.body


async def test_resp_body_unaltered_with_only_header_transforms(nursery, gateway):
    """02-body_transformer_spec "body remains unaltered if no transforms have been set"."""
    body = b'{\n  "id": 1,\n  "name": "Some One",\n  "x": 1.50\n}\n'
    backend = JsonBackend(body)
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{backend.port}", [{"paths": ["/"]}])],
                          "plugins": [plugin("response-transformer", remove={"headers": ["h1", "h2", "h3"]})]})
    assert (await call(port, "/x")).body == body


async def test_resp_invalid_json_body_sent_as_it_came(nursery, gateway):
    """02-body_transformer_spec "gracefully fails transforming invalid json body"."""
    body = b"{\"bad\": json"
    backend = JsonBackend(body)
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{backend.port}", [{"paths": ["/"]}])],
                          "plugins": [plugin("response-transformer", add={"json": ["a:1"]})]})
    reply = await call(port, "/x")
    assert reply.status == 200 and reply.body == body


# --- Kong's PDK set_header / set_headers write "" as " " (kong/pdk/private/checks.lua 13-38): sent empty ----------


async def test_rt_a_header_added_from_an_empty_template_is_sent_empty(nursery, gateway):
    """request-transformer access.lua:204-206,231 puts the rendered "" in the table and calls
    kong.service.request.set_headers, which writes ngx.req.set_header(k, normalize_multi_header(v)) with "" -> " "
    (kong/pdk/service/request.lua:447, kong/pdk/private/checks.lua:13-18): the header goes upstream, empty
    (t/01-pdk/06-service-request/09-set_header.t TEST 10 "can set to an empty string": upstream reads X-Foo = "")."""
    _, port = await rt(nursery, gateway, add={"headers": ["x-user:$(query_params.u)"]})
    got = seen(await call(port, "/x"))
    assert got["headers"].get("x-user") == [""], got["headers"]


async def test_rt_a_header_the_client_sent_empty_stays_when_header_ops_run(nursery, gateway):
    """request-transformer access.lua:231 ends transform_headers with set_headers(get_headers()'s table): a header
    the client sent empty is set again as " " (kong/pdk/service/request.lua:447 normalize_multi_header,
    kong/pdk/private/checks.lua:13-18), so it still reaches the upstream, empty, as it would without the plugin."""
    _, port = await rt(nursery, gateway, add={"headers": ["x-new:1"]})
    got = seen(await call(port, "/x", [("x-empty", "")]))
    assert got["headers"].get("x-empty") == [""], got["headers"]


async def test_rt_a_header_the_client_sent_empty_renamed_is_sent_empty_under_its_new_name(nursery, gateway):
    """access.lua:152-162,179-192 moves the "" (truthy in Lua) to the new name's key and clears the old name;
    set_headers sets it as " " (kong/pdk/service/request.lua:447, kong/pdk/private/checks.lua:13-18): the upstream
    reads the new name, empty."""
    _, port = await rt(nursery, gateway, rename={"headers": ["x-old:x-new"]})
    got = seen(await call(port, "/x", [("x-old", "")]))
    assert "x-old" not in got["headers"]
    assert got["headers"].get("x-new") == [""], got["headers"]


async def test_resp_a_header_renamed_from_an_empty_value_is_sent_empty(nursery, gateway):
    """01-header_transformer_spec rename "header if the header exists and is empty": {h1 = ""} becomes {h2 = " "}
    (header_transformer.lua:95-100 set_header(new, "") -> kong/pdk/response.lua:434 normalize -> " ";
    t/01-pdk/08-response/05-set_header.t TEST 7 "can set to an empty string")."""
    backend = JsonBackend(b"{}", [(b"h1", b"")])
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{backend.port}", [{"paths": ["/"]}])],
                          "plugins": [plugin("response-transformer", rename={"headers": ["h1:h2", "h3:h4"]})]})
    reply = await call(port, "/x")
    assert headers_of(reply, "h1") == []
    assert headers_of(reply, "h2") == [""], reply.headers


# --- cors: 13-cors/01-access_spec.lua ---------------------------------------------------------------------------------


async def cors(nursery, gateway, **config):
    return await start(nursery, gateway, plugins=[plugin("cors", **config)])


async def test_cors_flat_strings_validated_on_a_plain_options(nursery, gateway):
    """01-access_spec "properly validates flat strings" (OPTIONS without Access-Control-Request-Method: proxied)."""
    _, port = await cors(nursery, gateway, origins=["http://my-site.test", "http://my-other-site.test"])
    for origin, allowed in [("http://my-site.test", ["http://my-site.test"]), ("http://bad-guys.test", []),
                            ("http://my-site.test.bad-guys.test", [])]:
        reply = await call(port, "/", [("Origin", origin)], method="OPTIONS")
        assert reply.status == 200
        assert headers_of(reply, "access-control-allow-origin") == allowed, origin


async def test_cors_validates_scheme_and_port(nursery, gateway):
    """01-access_spec "validates scheme and port"."""
    _, port = await cors(nursery, gateway, origins=["http://my-site.test", "https://my-other-site.test:9000"])
    for origin, allowed in [("http://my-site.test", ["http://my-site.test"]),
                            ("http://my-site.test:80", ["http://my-site.test"]),
                            ("http://my-site.test:8000", []), ("https://my-site.test", []),
                            ("https://my-other-site.test:9000", ["https://my-other-site.test:9000"]),
                            ("https://my-other-site.test:9001", [])]:
        reply = await call(port, "/", [("Origin", origin)])
        assert headers_of(reply, "access-control-allow-origin") == allowed, origin


async def test_cors_does_not_parse_the_host(nursery, gateway):
    """01-access_spec "does not automatically parse the host" (origins example.test, example.org)."""
    _, port = await cors(nursery, gateway, origins=["example.test", "example.org"], methods=["GET"],
                         headers=["origin", "type", "accepts"], exposed_headers=["x-auth-token"], max_age=23,
                         preflight_continue=True)
    for origin in ["http://example.test", "https://example.test"]:
        reply = await call(port, "/", [("Origin", origin)])
        assert reply.status == 200
        assert headers_of(reply, "access-control-allow-origin") == []


async def test_cors_private_network_and_request_headers(nursery, gateway):
    """01-access_spec "support private-network"; "replies with request-headers if present in request"."""
    _, port = await cors(nursery, gateway, preflight_continue=False, private_network=True,
                         origins=["allowed-domain.test"])
    asked = [("Origin", "allowed-domain.test"), ("Access-Control-Request-Private-Network", "true"),
             ("Access-Control-Request-Method", "PUT"), ("Access-Control-Request-Headers", "origin,accepts")]
    reply = await call(port, "/", asked, method="OPTIONS")
    assert reply.status == 200
    assert headers_of(reply, "access-control-allow-private-network") == ["true"]
    assert headers_of(reply, "access-control-allow-headers") == ["origin,accepts"]
    assert headers_of(reply, "content-length") == ["0"]


async def test_cors_star_with_credentials_echoes(nursery, gateway):
    """01-access_spec "gives appropriate defaults when origin is explicitly set to * and config.credentials=true";
    "responds with the requested Origin (including port) when config.credentials=true"."""
    _, port = await cors(nursery, gateway, origins=["*"], credentials=True)
    reply = await call(port, "/", [("Origin", "http://www.example.net:8080")])
    assert headers_of(reply, "access-control-allow-origin") == ["http://www.example.net:8080"]
    assert headers_of(reply, "access-control-allow-credentials") == ["true"]
    assert headers_of(reply, "vary") == ["Origin"]
    reply = await call(port, "/", [("Origin", "origin5.test"), ("Access-Control-Request-Method", "GET")],
                       method="OPTIONS")
    assert headers_of(reply, "access-control-allow-origin") == ["origin5.test"]
    assert headers_of(reply, "access-control-allow-methods") == ["GET,HEAD,PUT,PATCH,POST,DELETE,OPTIONS,TRACE,CONNECT"]


async def test_cors_upstream_timeout_gets_headers(nursery, gateway):
    """01-access_spec "works even when upstream timeouts" (a 504 still gets the CORS headers)."""
    backend = EchoBackend()
    await nursery.start(backend.serve)
    # the spec's service reads for 1 ms; here 100 ms against a 1 s delay
    port2 = await gateway({"services": [service("s2", f"http://127.0.0.1:{backend.port}", [{"paths": ["/"]}],
                                                read_timeout=100)], "plugins": [plugin("cors")]})
    reply = await call(port2, "/?delay=1", [("Origin", "example.test")])
    assert reply.status == 504
    assert headers_of(reply, "access-control-allow-origin") == ["*"]
