"""Kong's documented examples (developer.konghq.com plugins/*/examples, how-to guides) for the traffic and
transformation plugins, through the real gateway, compared with what Kong 3.9.3 does with them."""

from __future__ import annotations

import json
import re

import trio
from backends import Client, EchoBackend, service
from plugin_helpers import call, headers_of, http_codec, plugin, seen  # noqa: F401 - http_codec: the fixture


async def hcall(port, target, host, method="GET", headers=None):  # noqa: ANN001, ANN201
    with trio.fail_after(10):
        async with await Client.connect(port) as c:
            return await c.request(method, target, headers=headers, host=host)


async def one(nursery, gateway, plugins, routes=None, **doc):  # noqa: ANN001, ANN201
    backend = EchoBackend()
    await nursery.start(backend.serve)
    port = await gateway({"_format_version": "3.0",
                          "services": [service("example_service", f"http://127.0.0.1:{backend.port}",
                                               routes or [{"name": "example_route", "paths": ["/anything"]}])],
                          "plugins": plugins, **doc})
    return backend, port


# --- request-termination ---------------------------------------------------------------------------------------------

async def test_rt_block_with_message(nursery, gateway) -> None:
    _, port = await one(nursery, gateway, [plugin("request-termination", status_code=401,
                                                  message='"Error - Authentication required"')])
    r = await call(port, "/anything")
    assert r.status == 401
    assert r.body == b'{"message":"\\"Error - Authentication required\\""}', r.body
    assert headers_of(r, "content-type") == ["application/json; charset=utf-8"]


async def test_rt_trigger_header(nursery, gateway) -> None:
    backend, port = await one(nursery, gateway, [plugin("request-termination", status_code=401,
                                                        message='"Error - Authentication required"',
                                                        trigger="X-My-Header")])
    assert (await call(port, "/anything")).status == 200
    assert (await call(port, "/anything", headers=[("X-My-Header", "1")])).status == 401
    assert (await call(port, "/anything?X-My-Header")).status == 401


async def test_rt_maintenance_page(nursery, gateway) -> None:
    body = '<h1 style="color:Gray;">This page is under maintenance.</h1>'
    _, port = await one(nursery, gateway, [plugin("request-termination", body=body, content_type="text/html")])
    r = await call(port, "/anything")
    assert r.status == 503
    assert r.body == body.encode()
    assert headers_of(r, "content-type") == ["text/html; charset=UTF-8"]  # nginx_kong.lua `charset UTF-8;`


async def test_rt_echo(nursery, gateway) -> None:
    _, port = await one(nursery, gateway, [plugin("request-termination", status_code=401,
                                                  message='"Error - Authentication required"', echo=True)])
    r = await call(port, "/anything?a=1", headers=[("x-h", "v")])
    assert r.status == 401
    doc = json.loads(r.body)
    assert doc["message"] == '"Error - Authentication required"'
    assert doc["request"]["query"] == {"a": "1"}
    assert doc["request"]["headers"]["x-h"] == "v"
    assert doc["matched_route"]["name"] == "example_route"
    assert doc["matched_service"]["name"] == "example_service"


# --- cors ------------------------------------------------------------------------------------------------------------

async def test_cors_specific_domain_preflight(nursery, gateway) -> None:
    _, port = await one(nursery, gateway, [plugin("cors", origins=["http://mockbin.com"], methods=["GET", "POST"])])
    r = await call(port, "/anything", method="OPTIONS",
                   headers=[("origin", "http://mockbin.com"), ("access-control-request-method", "GET")])
    assert r.status == 200
    assert headers_of(r, "access-control-allow-origin") == ["http://mockbin.com"]
    assert headers_of(r, "access-control-allow-methods") == ["GET,POST"]
    assert headers_of(r, "vary") == ["Origin"]


async def test_cors_specific_domain_actual(nursery, gateway) -> None:
    backend, port = await one(nursery, gateway, [plugin("cors", origins=["http://mockbin.com"],
                                                        methods=["GET", "POST"])])
    r = await call(port, "/anything", headers=[("origin", "http://other.test")])
    assert r.status == 200
    # one plain origin: always sent, with Vary: Origin (cors/handler.lua configure_origin, 3.9.3)
    assert headers_of(r, "access-control-allow-origin") == ["http://mockbin.com"]
    assert headers_of(r, "vary") == ["Origin"]


async def test_cors_vary_added_to_upstream_vary(nursery, gateway) -> None:
    backend, port = await one(nursery, gateway, [plugin("cors", origins=["http://mockbin.com"])])
    backend.extra_headers = [(b"vary", b"Accept-Encoding")]
    r = await call(port, "/anything", headers=[("origin", "http://mockbin.com")])
    assert r.status == 200
    # header_filter: kong.response.add_header("vary", "Origin")
    assert headers_of(r, "vary") == ["Accept-Encoding", "Origin"], r.headers


async def test_cors_tryit_headers(nursery, gateway) -> None:
    _, port = await one(nursery, gateway, [plugin("cors", origins=["https://domain.us.kongportals.com"],
                                                  headers=["X-Custom"])])
    r = await call(port, "/anything", method="OPTIONS",
                   headers=[("origin", "https://domain.us.kongportals.com"),
                            ("access-control-request-method", "POST"),
                            ("access-control-request-headers", "x-other")])
    assert r.status == 200
    assert headers_of(r, "access-control-allow-headers") == ["X-Custom"]
    assert headers_of(r, "access-control-allow-methods") == ["GET,HEAD,PUT,PATCH,POST,DELETE,OPTIONS,TRACE,CONNECT"]


# --- redirect --------------------------------------------------------------------------------------------------------

async def test_redirect_keep_incoming_path(nursery, gateway) -> None:
    _, port = await one(nursery, gateway, [plugin("redirect", location="https://new.example.com/some-path",
                                                  keep_incoming_path=True)])
    r = await call(port, "/anything/demo?foo=bar")
    assert r.status == 301
    assert headers_of(r, "location") == ["https://new.example.com/anything/demo?foo=bar"]
    assert r.body == b"redirecting"


async def test_redirect_plain(nursery, gateway) -> None:
    _, port = await one(nursery, gateway, [plugin("redirect", location="https://new.example.com")])
    r = await call(port, "/anything/demo?foo=bar")
    assert r.status == 301
    assert headers_of(r, "location") == ["https://new.example.com"]


# --- correlation-id --------------------------------------------------------------------------------------------------

async def test_correlation_id_counter(nursery, gateway) -> None:
    _, port = await one(nursery, gateway, [plugin("correlation-id", header_name="Kong-Request-ID",
                                                  generator="uuid#counter", echo_downstream=False)])
    r = await call(port, "/anything")
    got = seen(r)["headers"]
    vals = [v for k, v in got.items() if k.lower() == "kong-request-id"]
    assert len(vals) == 1 and re.fullmatch(r"[0-9a-f-]{36}#\d+", vals[0][0]), got
    assert headers_of(r, "kong-request-id") == []


async def test_correlation_id_passthrough(nursery, gateway) -> None:
    _, port = await one(nursery, gateway, [plugin("correlation-id", echo_downstream=True)])
    r = await call(port, "/anything", headers=[("Kong-Request-Id", "ab58c8d9-04d2-4b6e-9f31-431cf922ab8d")])
    got = seen(r)["headers"]
    vals = [v for k, v in got.items() if k.lower() == "kong-request-id"]
    assert vals == [["ab58c8d9-04d2-4b6e-9f31-431cf922ab8d"]], got
    assert headers_of(r, "kong-request-id") == ["ab58c8d9-04d2-4b6e-9f31-431cf922ab8d"]


# --- response-transformer / request-transformer ----------------------------------------------------------------------

async def test_response_transformer_add_header(nursery, gateway) -> None:
    _, port = await one(nursery, gateway,
                        [plugin("response-transformer", add={"headers": ["New-Header:Header Value"]})])
    r = await call(port, "/anything")
    assert headers_of(r, "new-header") == ["Header Value"]


async def test_request_transformer_rewrite_path_regex(nursery, gateway) -> None:
    _, port = await one(nursery, gateway,
                        [plugin("request-transformer", replace={"uri": "/anything/$(uri_captures[1])"})],
                        routes=[{"name": "r", "paths": [r"~/users/(\d+)"]}])
    r = await call(port, "/users/123")
    assert seen(r)["path"] == "/anything/123"


async def test_request_transformer_rewrite_path_doc_literal(nursery, gateway) -> None:
    # the doc's route path as written, no `~`: a prefix in Kong 3.x (validate_path_with_regexes), so /users/123
    # matches no route
    _, port = await one(nursery, gateway,
                        [plugin("request-transformer", replace={"uri": "/anything/$(uri_captures[1])"})],
                        routes=[{"name": "r", "paths": [r"/users/(\d+)"]}])
    r = await call(port, "/users/123")
    assert r.status == 404
    r = await call(port, "/users/(\\d+)")
    assert seen(r)["path"] == "/anything/"


# --- rate limiting ---------------------------------------------------------------------------------------------------

async def test_rate_limiting_local_headers(nursery, gateway) -> None:
    _, port = await one(nursery, gateway, [plugin("rate-limiting", second=5, hour=1000, policy="local")])
    r = await call(port, "/anything")
    assert r.status == 200
    assert headers_of(r, "x-ratelimit-limit-second") == ["5"]
    assert headers_of(r, "x-ratelimit-limit-hour") == ["1000"]
    assert headers_of(r, "ratelimit-limit") == ["5"]


async def test_response_ratelimiting_local_headers(nursery, gateway) -> None:
    backend, port = await one(nursery, gateway, [plugin("response-ratelimiting",
                                                        limits={"example-limit-name": {"minute": 10}},
                                                        policy="local")])
    backend.extra_headers = [(b"x-kong-limit", b"example-limit-name=1")]
    r = await call(port, "/anything")
    assert r.status == 200
    assert headers_of(r, "x-ratelimit-limit-example-limit-name-minute") == ["10"]
    assert headers_of(r, "x-ratelimit-remaining-example-limit-name-minute") == ["9"], r.headers
    assert headers_of(r, "x-kong-limit") == []


# --- proxy-cache -----------------------------------------------------------------------------------------------------

async def test_proxy_cache_get(nursery, gateway) -> None:
    backend, port = await one(nursery, gateway, [plugin("proxy-cache", response_code=[200], request_method=["GET"],
                                                        content_type=["text/plain", "application/json"],
                                                        cache_ttl=300, strategy="memory")])
    r1 = await call(port, "/anything")
    r2 = await call(port, "/anything")
    assert headers_of(r1, "x-cache-status") == ["Miss"]
    assert headers_of(r2, "x-cache-status") == ["Hit"]
    assert len(backend.requests) == 1
    r3 = await call(port, "/anything", method="HEAD")
    assert headers_of(r3, "x-cache-status") == ["Bypass"]


# --- request-size-limiting -------------------------------------------------------------------------------------------

async def test_request_size_limiting_bytes(nursery, gateway) -> None:
    _, port = await one(nursery, gateway, [plugin("request-size-limiting", allowed_payload_size=10, size_unit="bytes")])
    assert (await call(port, "/anything", method="POST", body=b"x" * 10)).status == 200
    r = await call(port, "/anything", method="POST", body=b"x" * 11)
    assert r.status == 413
    assert json.loads(r.body)["message"] == "Request size limit exceeded"


# --- routing how-tos -------------------------------------------------------------------------------------------------

async def test_routes_host_header_method(nursery, gateway) -> None:
    _, port = await one(nursery, gateway, [], routes=[
        {"name": "h", "hosts": ["example.com", "foo-service.com"], "paths": ["/foo", "/bar"], "methods": ["GET"]},
        {"name": "hd", "headers": {"x-version": ["v2"]}, "paths": ["/foo"], "strip_path": False},
    ])
    r = await hcall(port, "/foo/hello/world", "example.com")
    assert seen(r)["path"] == "/hello/world"
    r = await hcall(port, "/foo", "example.com", method="POST")
    assert r.status == 404
    r = await call(port, "/foo/x", headers=[("x-version", "v2")])
    assert seen(r)["path"] == "/foo/x"


async def test_route_preserve_host(nursery, gateway) -> None:
    _, port = await one(nursery, gateway, [], routes=[{"name": "p", "paths": ["/p"], "preserve_host": True}])
    r = await hcall(port, "/p", "client.example")
    assert seen(r)["headers"]["host"] == ["client.example"]


# --- more edges -------------------------------------------------------------------------------------------------------

async def test_cid_tracker(nursery, gateway) -> None:
    _, port = await one(nursery, gateway, [plugin("correlation-id", generator="tracker", echo_downstream=True,
                                                  header_name="X-Request-ID")])
    r = await call(port, "/anything")
    v = headers_of(r, "x-request-id")
    assert len(v) == 1 and re.fullmatch(r"127\.0\.0\.1-\d+-\d+-\d+-1-\d+\.\d{3}", v[0]), v


async def test_cors_wildcard_credentials(nursery, gateway) -> None:
    _, port = await one(nursery, gateway, [plugin("cors", origins=["*"], credentials=True,
                                                  exposed_headers=["X-Auth-Token"], max_age=3600)])
    r = await call(port, "/anything", headers=[("origin", "http://a.test")])
    assert headers_of(r, "access-control-allow-origin") == ["http://a.test"]
    assert headers_of(r, "access-control-allow-credentials") == ["true"]
    assert headers_of(r, "access-control-expose-headers") == ["X-Auth-Token"]
    assert headers_of(r, "vary") == ["Origin"]
    r = await call(port, "/anything", method="OPTIONS",
                   headers=[("origin", "http://a.test"), ("access-control-request-method", "GET")])
    assert r.status == 200
    assert headers_of(r, "access-control-max-age") == ["3600"]
    assert headers_of(r, "access-control-allow-origin") == ["http://a.test"]
    assert headers_of(r, "vary") == ["Origin"]


async def test_cors_regex(nursery, gateway) -> None:
    _, port = await one(nursery, gateway, [plugin("cors", origins=["http://(.*\\.)?example\\.com"])])
    r = await call(port, "/anything", headers=[("origin", "http://api.example.com")])
    assert headers_of(r, "access-control-allow-origin") == ["http://api.example.com"]
    r = await call(port, "/anything", headers=[("origin", "http://api.example.com.evil")])
    assert headers_of(r, "access-control-allow-origin") == []


async def test_regex_strip(nursery, gateway) -> None:
    _, port = await one(nursery, gateway, [], routes=[{"name": "r", "paths": [r"~/users/\d+"], "strip_path": True}])
    assert seen(await call(port, "/users/123/profile"))["path"] == "/profile"
    assert seen(await call(port, "/users/123"))["path"] == "/"


async def test_rl_exceeded(nursery, gateway) -> None:
    _, port = await one(nursery, gateway, [plugin("rate-limiting", minute=2, policy="local")])
    for _ in range(2):
        assert (await call(port, "/anything")).status == 200
    r = await call(port, "/anything")
    assert r.status == 429
    assert json.loads(r.body)["message"] == "API rate limit exceeded"
    assert headers_of(r, "x-ratelimit-remaining-minute") == ["0"]
    assert headers_of(r, "ratelimit-remaining") == ["0"]
    assert len(headers_of(r, "retry-after")) == 1


async def test_rl_error_code_message(nursery, gateway) -> None:
    _, port = await one(nursery, gateway,
                        [plugin("rate-limiting", minute=1, error_code=503, error_message="slow down")])
    await call(port, "/anything")
    r = await call(port, "/anything")
    assert r.status == 503
    assert json.loads(r.body)["message"] == "slow down"


async def test_rl_limit_by_header_missing(nursery, gateway) -> None:
    _, port = await one(nursery, gateway,
                        [plugin("rate-limiting", minute=1, limit_by="header", header_name="X-Tenant")])
    assert (await call(port, "/anything", headers=[("x-tenant", "a")])).status == 200
    assert (await call(port, "/anything", headers=[("x-tenant", "b")])).status == 200
    assert (await call(port, "/anything", headers=[("x-tenant", "a")])).status == 429
    # no header: the client address (rate-limiting/handler.lua get_identifier falls back to ip)
    assert (await call(port, "/anything")).status == 200
    assert (await call(port, "/anything")).status == 429


async def test_pc_vary(nursery, gateway) -> None:
    backend, port = await one(nursery, gateway, [plugin("proxy-cache", response_code=[200], request_method=["GET"],
                                                        content_type=["application/json"], cache_ttl=120,
                                                        vary_headers=["X-Tenant"], vary_query_params=["page"],
                                                        strategy="memory")])
    a = await call(port, "/anything?page=1&x=1", headers=[("x-tenant", "t1")])
    b = await call(port, "/anything?page=1&x=2", headers=[("x-tenant", "t1")])
    c = await call(port, "/anything?page=1&x=2", headers=[("x-tenant", "t2")])
    assert [headers_of(x, "x-cache-status") for x in (a, b, c)] == [["Miss"], ["Hit"], ["Miss"]]


async def test_redirect_head(nursery, gateway) -> None:
    _, port = await one(nursery, gateway, [plugin("redirect", status_code=302, location="https://example.com/new")])
    r = await call(port, "/anything", method="HEAD")
    assert r.status == 302 and r.body == b""
    assert headers_of(r, "location") == ["https://example.com/new"]


async def test_rt_echo_json_body(nursery, gateway) -> None:
    _, port = await one(nursery, gateway, [plugin("request-termination", status_code=200, echo=True)])
    r = await call(port, "/anything", method="POST", body=b'{"a":[1,2]}',
                   headers=[("content-type", "application/json")])
    doc = json.loads(r.body)
    assert doc["request"]["body"] == {"a": [1, 2]}
    assert doc["request"]["raw_body"] == '{"a":[1,2]}'
    assert doc["request"]["method"] == "POST"
    assert "message" not in doc  # 200: no default message


async def test_cors_preflight_continue(nursery, gateway) -> None:
    backend, port = await one(nursery, gateway,
                              [plugin("cors", origins=["http://mockbin.com"], preflight_continue=True)])
    r = await call(port, "/anything", method="OPTIONS",
                   headers=[("origin", "http://mockbin.com"), ("access-control-request-method", "GET")])
    assert r.status == 200 and len(backend.requests) == 1
    assert headers_of(r, "access-control-allow-origin") == []


async def test_routes_more(nursery, gateway) -> None:
    backend = EchoBackend()
    await nursery.start(backend.serve)
    port = await gateway({"_format_version": "3.0", "services": [
        service("s1", f"http://127.0.0.1:{backend.port}/anything", [
            {"name": "re_hdr", "headers": {"x-version": ["~*^v[0-9]+$"]}, "paths": ["/h"]},
            {"name": "wild", "hosts": ["*.example.com"], "paths": ["/w"], "strip_path": False},
            {"name": "keep", "paths": ["/k"], "strip_path": False},
        ])]})
    assert seen(await call(port, "/h/x", headers=[("x-version", "V12")]))["path"] == "/anything/x"
    assert (await call(port, "/h/x", headers=[("x-version", "v1x")])).status == 404
    assert seen(await hcall(port, "/w/z", "api.example.com"))["path"] == "/anything/w/z"
    assert (await hcall(port, "/w/z", "example.com")).status == 404
    assert seen(await call(port, "/k?q=1"))["path"] == "/anything/k?q=1"


async def test_rl_limit_by_path(nursery, gateway) -> None:
    _, port = await one(nursery, gateway, [plugin("rate-limiting", minute=1, limit_by="path", path="/anything/a")],
                        routes=[{"name": "r", "paths": ["/anything"]}])
    assert (await call(port, "/anything/b")).status == 200
    # not the configured path: counted by the client address (handler.lua get_identifier's fallback)
    assert (await call(port, "/anything/b")).status == 429
    assert (await call(port, "/anything/a")).status == 200
    assert (await call(port, "/anything/a")).status == 429
