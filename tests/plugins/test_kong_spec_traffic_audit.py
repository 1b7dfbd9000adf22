"""Kong 3.9.3's own spec tests for the traffic plugins (rate-limiting, response-ratelimiting, request-termination,
proxy-cache, redirect), `it` by `it`, for the ones no other test of the gateway covered: a real gateway in front of
a real echo backend (db-less: the spec's "off" strategy)."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from backends import Client, EchoBackend, service
from plugin_helpers import (
    call,
    plugin,
    start,
)

TRUSTED = {"trusted_ips": ["0.0.0.0/0", "::/0"]}  # the rate-limiting spec's kong.conf


@pytest.fixture
def http_codec() -> str:
    return "llhttp"


async def echo(nursery: trio.Nursery) -> str:
    backend = EchoBackend()
    await nursery.start(backend.serve)
    return f"http://127.0.0.1:{backend.port}"


# ---- redirect ------------------------------------------------------------------------------------------------------


async def test_redirect_applied_on_a_consumer_redirects_that_consumer(nursery, gateway):
    """spec/03-plugins/45-redirect/03-integration_spec.lua "can be applied on a consumer": key-auth global, redirect
    on bob: his request gets 301 with the configured Location."""
    url = await echo(nursery)
    port = await gateway({
        "services": [service("svc", url, [{"hosts": ["api1.redirect.test"]}])],
        "consumers": [{"username": "bob", "keyauth_credentials": [{"key": "kong"}]}],
        "plugins": [plugin("key-auth"),
                    {"name": "redirect", "consumer": "bob",
                     "config": {"location": "https://example.com/path?foo=bar"}}]})
    async with await Client.connect(port, host="api1.redirect.test") as client:
        reply = await client.request("GET", "/request", headers=[("apikey", "kong")])
    assert (reply.status, reply.header("location")) == (301, "https://example.com/path?foo=bar")


# ---- request-termination -------------------------------------------------------------------------------------------


async def test_request_termination_404_gets_the_default_not_found_message(nursery, gateway):
    """spec/03-plugins/14-request-termination/02-access_spec.lua "status code with default message" (api2):
    status_code 404 without a message answers {"message": "Not found"} (handler.lua DEFAULT_RESPONSE)."""
    backend, port = await start(nursery, gateway, plugins=[plugin("request-termination", status_code=404)])
    reply = await call(port, "/status/200")
    assert (reply.status, reply.json()) == (404, {"message": "Not found"})
    assert backend.requests == []


async def test_request_termination_on_a_serviceless_route(nursery, gateway):
    """02-access_spec.lua "default status code and message with serviceless route" (api7)."""
    port = await gateway({"routes": [{"name": "r7", "hosts": ["api7.request-termination.test"],
                                      "plugins": [plugin("request-termination")]}]})
    async with await Client.connect(port, host="api7.request-termination.test") as client:
        reply = await client.request("GET", "/status/200")
    assert (reply.status, reply.json()) == (503, {"message": "Service unavailable"})


async def test_request_termination_answer_carries_the_server_tokens(nursery, gateway):
    """02-access_spec.lua "returns server tokens with Server header": Server is kong/<version> (meta._SERVER_TOKENS,
    the gateway's own server_tokens)."""
    _, port = await start(nursery, gateway, plugins=[plugin("request-termination")])
    reply = await call(port, "/status/200")
    assert reply.status == 503
    server = reply.header("server")
    assert server is not None and server != ""


async def test_request_termination_body_with_default_status(nursery, gateway):
    """02-access_spec.lua "default status code and body" (api4): the body as configured, 503."""
    body = "<html><body><h1>Service is down for maintenance</h1></body></html>"
    _, port = await start(nursery, gateway, plugins=[plugin("request-termination", body=body)])
    reply = await call(port, "/status/200")
    assert (reply.status, reply.body) == (503, body.encode())


async def test_request_termination_echo_trigger_in_the_query_echoes_the_query(nursery, gateway):
    """02-access_spec.lua "echos a request if the trigger is specified as a query parameter"."""
    routes = [{"name": "r10", "hosts": ["api10.request-termination.test"]}]
    _, port = await start(nursery, gateway, routes, plugins=[plugin(
        "request-termination", echo=True, trigger="gimme-an-echo", status_code=404)])
    async with await Client.connect(port, host="api10.request-termination.test") as client:
        reply = await client.request("GET", "/status/200?hello=there&gimme-an-echo=anything%20will%20do",
                                     body=b"cool body")
    assert reply.status == 404
    doc = reply.json()
    assert doc["matched_route"]["hosts"] == ["api10.request-termination.test"]
    request = doc["request"]
    request["headers"].pop("user-agent", None)
    assert request == {
        "headers": {"content-length": "9", "host": "api10.request-termination.test"},
        "host": "api10.request-termination.test", "method": "GET", "path": "/status/200", "port": port,
        "query": {"hello": "there", "gimme-an-echo": "anything will do"}, "raw_body": "cool body",
        "scheme": "http", "uri_captures": {"named": {}, "unnamed": []}}


async def test_request_termination_echo_with_a_named_capture_route(nursery, gateway):
    """02-access_spec.lua "echos a request if no trigger is set" (api9, paths ~/(?<parameter>[^#?/]+)/200,
    strip_path false): uri_captures named {parameter=status}, unnamed {status}."""
    routes = [{"name": "r9", "hosts": ["api9.request-termination.test"], "strip_path": False,
               "paths": ["~/(?<parameter>[^#?/]+)/200"]}]
    _, port = await start(nursery, gateway, routes, plugins=[plugin(
        "request-termination", echo=True, status_code=404)])
    async with await Client.connect(port, host="api9.request-termination.test") as client:
        reply = await client.request("GET", "/status/200?hello=there", body=b"cool body")
    assert reply.status == 404
    request = reply.json()["request"]
    assert request["uri_captures"] == {"named": {"parameter": "status"}, "unnamed": ["status"]}
    assert request["query"] == {"hello": "there"} and request["raw_body"] == "cool body"
    assert reply.json()["message"] == "Not found"


# ---- rate-limiting -------------------------------------------------------------------------------------------------


def rl(**config: object) -> dict:
    return plugin("rate-limiting", **{"minute": 6, "policy": "local", **config})


async def rl_gateway(nursery, gateway, plugins: list[dict], *, auth: bool = False,  # noqa: ANN001
                     paths: tuple[str, ...] = ("/test",), global_plugins: list[dict] | None = None,
                     two_services: bool = False) -> int:
    url = await echo(nursery)
    svc_plugins = list(plugins)
    if auth:
        svc_plugins.append(plugin("key-auth", key_names=["test-key"]))
    services = [service("svc", url, [{"paths": list(paths)}], plugins=svc_plugins)]
    if two_services:
        services = [service("one", url, [{"paths": ["/1-test"]}]), service("two", url, [{"paths": ["/2-test"]}])]
    doc = {"services": services,
           "consumers": [{"username": "Bob", "keyauth_credentials": [{"key": "test_credential"}]},
                         {"username": "Alice", "keyauth_credentials": [{"key": "test_credential_2"}]}]}
    if global_plugins:
        doc["plugins"] = global_plugins
    return await gateway(doc, **TRUSTED)


async def clear_of_minute_end(margin: float) -> None:
    import time
    left = 60 - time.time() % 60
    if left < margin:
        await trio.sleep(left + 0.05)


async def seven(port: int, path: str = "/test", headers: list[tuple[str, str]] | None = None,
                guard: bool = True) -> dict[str, list]:
    """The spec's client_requests(7, ...): each reply's status and headers. Like the spec's retry(), it keeps clear of
    a minute's end (the 7 requests take well under 0.5 s)."""
    if guard:
        await clear_of_minute_end(0.8)
    out: dict[str, list] = {k: [] for k in ("status", "minute_limit", "minute_remaining", "hour_limit",
                                            "hour_remaining", "limit", "remaining", "reset")}
    for _ in range(7):
        reply = await call(port, path, headers)
        def num(name: str, reply: Any = reply) -> float | None:
            value = reply.header(name)
            return None if value is None else float(value)

        out["status"].append(reply.status)
        out["minute_limit"].append(num("x-ratelimit-limit-minute"))
        out["minute_remaining"].append(num("x-ratelimit-remaining-minute"))
        out["hour_limit"].append(num("x-ratelimit-limit-hour"))
        out["hour_remaining"].append(num("x-ratelimit-remaining-hour"))
        out["limit"].append(num("ratelimit-limit"))
        out["remaining"].append(num("ratelimit-remaining"))
        out["reset"].append(num("ratelimit-reset"))
    return out


def validate_headers(got: dict[str, list], check_hour: bool = False) -> None:
    """The spec's validate_headers(headers, true[, check_hour])."""
    assert got["status"] == [200] * 6 + [429], got
    assert got["minute_limit"] == [6] * 7, got
    assert got["minute_remaining"] == [5, 4, 3, 2, 1, 0, 0], got
    assert got["limit"] == [6] * 7, got
    assert got["remaining"] == [5, 4, 3, 2, 1, 0, 0], got
    if check_hour:
        assert all(v is not None and v > 0 for v in got["hour_limit"]), got
        assert all(v is not None and v >= 0 for v in got["hour_remaining"]), got
    top = 3600 if check_hour else 60
    assert all(r is not None and 0 <= r <= top for r in got["reset"]), got


KEY = [("test-key", "test_credential")]


@pytest.mark.parametrize(("limit_by", "headers"), [
    ("ip", None), ("consumer", KEY), ("credential", KEY), ("service", None), ("header", [("test-header", "test")]),
    ("path", None)])
async def test_rl_blocks_if_exceeding_limit_single(nursery, gateway, limit_by, headers):
    """spec/03-plugins/23-rate-limiting/04-access_spec.lua "blocks if exceeding limit (single <limit_by>)" (policy
    local): minute 6 on the service, 5..0 remaining then 429, RateLimit-* as the X-RateLimit-*-Minute ones."""
    port = await rl_gateway(nursery, gateway, [rl(limit_by=limit_by, path="/test", header_name="test-header")],
                            auth=limit_by in ("consumer", "credential"))
    validate_headers(await seven(port, "/test", headers))


async def test_rl_blocks_if_exceeding_limit_multiple_ip(nursery, gateway):
    """04-access_spec.lua "blocks if exceeding limit (multiple ip)": X-Real-IP from a trusted peer
    (trusted_ips 0.0.0.0/0): each address its own 6."""
    port = await rl_gateway(nursery, gateway, [rl(limit_by="ip")])
    for ip in ("127.0.0.1", "127.0.0.2"):
        validate_headers(await seven(port, "/test", [("X-Real-IP", ip)]))


async def test_rl_handles_multiple_limits(nursery, gateway):
    """04-access_spec.lua "handles multiple limits (single ip)": minute 6 and hour 99999."""
    port = await rl_gateway(nursery, gateway, [rl(hour=99999)])
    validate_headers(await seven(port), check_hour=True)


async def test_rl_expire_counter(nursery, gateway):
    """04-access_spec.lua "expire counter": second 1: 200 (limit 1, remaining 0), 429 "API rate limit exceeded",
    a second later 200 again."""
    port = await rl_gateway(nursery, gateway, [plugin("rate-limiting", second=1, policy="local")])
    hdr = [("X-Real-IP", "127.0.0.3")]
    for _ in range(3):
        first = await call(port, "/test", hdr)
        second = await call(port, "/test", hdr)
        if first.status == 200 and second.status == 429:
            break
        await trio.sleep(0.5)
    assert first.status == 200
    assert (first.header("ratelimit-limit"), first.header("ratelimit-remaining")) == ("1", "0")
    assert int(first.header("ratelimit-reset")) >= 0
    assert (first.header("x-ratelimit-limit-second"), first.header("x-ratelimit-remaining-second")) == ("1", "0")
    assert second.status == 429 and "API rate limit exceeded" in second.json()["message"]
    await trio.sleep(1)
    assert (await call(port, "/test", hdr)).status == 200


async def test_rl_blocks_with_a_custom_error_code_and_message(nursery, gateway):
    """04-access_spec.lua "blocks with a custom error code and message": 404 {"message": "Fake Not Found"}."""
    port = await rl_gateway(nursery, gateway, [rl(minute=1, error_code=404, error_message="Fake Not Found")])
    assert (await call(port, "/test")).status == 200
    reply = await call(port, "/test")
    assert reply.status == 404 and "Fake Not Found" in reply.json()["message"]


async def test_rl_blocks_if_exceeding_limit_multiple_service(nursery, gateway):
    """04-access_spec.lua "blocks if exceeding limit (multiple service)": a global plugin, limit_by service, two
    services: each its own 6."""
    port = await rl_gateway(nursery, gateway, [], two_services=True, global_plugins=[rl(limit_by="service")])
    for path in ("/1-test", "/2-test"):
        validate_headers(await seven(port, path))


async def test_rl_blocks_if_exceeding_limit_multiple_path(nursery, gateway):
    """04-access_spec.lua "blocks if exceeding limit (multiple path)": limit_by path /1-test on the service; /2-test
    is counted by the IP: each its own 6."""
    port = await rl_gateway(nursery, gateway, [rl(limit_by="path", path="/1-test")], paths=("/1-test", "/2-test"))
    for path in ("/1-test", "/2-test"):
        validate_headers(await seven(port, path))


async def test_rl_blocks_if_exceeding_limit_multiple_header(nursery, gateway):
    """04-access_spec.lua "blocks if exceeding limit (multiple header)": header_name test-header-1; a request with
    test-header-2 only is counted by its IP: each its own 6."""
    port = await rl_gateway(nursery, gateway, [rl(limit_by="header", header_name="test-header-1")])
    for name in ("test-header-1", "test-header-2"):
        validate_headers(await seven(port, "/test", [(name, "test")]))


@pytest.mark.parametrize("limit_by", ["consumer", "credential"])
async def test_rl_blocks_if_exceeding_limit_multiple_consumer_or_credential(nursery, gateway, limit_by):
    """04-access_spec.lua "blocks if exceeding limit (multiple consumer|credential)"."""
    port = await rl_gateway(nursery, gateway, [rl(limit_by=limit_by)], auth=True)
    for key in ("test_credential", "test_credential_2"):
        validate_headers(await seven(port, "/test", [("test-key", key)]))


async def test_rl_global_for_single_consumer(nursery, gateway):
    """04-access_spec.lua "global for single consumer": key-auth and rate-limiting (limit_by credential) global, two
    services: the 7 requests on the second service are all 429 with remaining 0 (one counter: a global plugin's
    route and service ids are the empty UUID, policies/init.lua get_service_and_route_ids)."""
    port = await rl_gateway(nursery, gateway, [], two_services=True, global_plugins=[
        plugin("key-auth", key_names=["test-key"]), rl(limit_by="credential")])
    await clear_of_minute_end(1.6)
    validate_headers(await seven(port, "/1-test", KEY, guard=False))
    got = await seven(port, "/2-test", KEY, guard=False)
    assert got["status"] == [429] * 7, got
    assert got["minute_limit"] == [6] * 7 and got["minute_remaining"] == [0] * 7, got
    assert got["limit"] == [6] * 7 and got["remaining"] == [0] * 7, got
    assert all(r is not None and 0 <= r <= 60 for r in got["reset"]), got


# ---- the schema specs (01-schema_spec.lua of each plugin): what check-config takes and refuses -------------------


def _doc(plugin_doc: dict) -> dict:
    return {"services": [{"name": "s", "url": "http://127.0.0.1:1", "routes": [{"paths": ["/"]}]}],
            "plugins": [plugin_doc]}


def accepted(plugin_doc: dict) -> None:
    import json

    from gateway.config import parse_config
    from gateway.runtime import compile_config
    compile_config(parse_config(json.dumps(_doc(plugin_doc))))


def refused_at(plugin_doc: dict) -> str:
    from plugin_helpers import refused
    return refused(plugin_doc)


REDIS_NEW = {"host": "127.0.0.1", "port": 6379, "database": 0, "username": "test", "password": "testXXX", "ssl": True,
             "ssl_verify": False, "timeout": 1100, "server_name": "test-redis.example.com"}
REDIS_LEGACY = {"redis_host": "127.0.0.1", "redis_port": 6379, "redis_database": 0, "redis_username": "test",
                "redis_password": "testXXX", "redis_ssl": True, "redis_ssl_verify": False, "redis_timeout": 1100,
                "redis_server_name": "test-redis.example.com"}


@pytest.mark.parametrize(("name", "config"), [
    # 45-redirect/01-schema_spec.lua
    ("redirect", {"status_code": 404, "location": "https://example.com"}),
    ("redirect", {"location": "https://example.com"}),
    # 14-request-termination/01-schema_spec.lua
    ("request-termination", {"status_code": 404}),
    ("request-termination", {"message": "Not found"}),
    ("request-termination", {"content_type": "text/html", "body": "<body><h1>Not found</h1>"}),
    ("request-termination", {"body": "<body><h1>Not found</h1>"}),
    ("request-termination", {"echo": True, "trigger": "header_name"}),
    # 23-rate-limiting/01-schema_spec.lua
    ("rate-limiting", {"second": 10}),
    ("rate-limiting", {"second": 10, "minute": 20, "hour": 30, "day": 40, "month": 50, "year": 60}),
    ("rate-limiting", {"second": 10, "limit_by": "header", "header_name": "X-App-Version"}),
    ("rate-limiting", {"second": 10, "limit_by": "path", "path": "/request"}),
    ("rate-limiting", {"second": 10, "policy": "redis", "redis": REDIS_NEW}),
    ("rate-limiting", {"second": 10, "policy": "redis", **REDIS_LEGACY}),
    # 24-response-rate-limiting/01-schema_spec.lua
    ("response-ratelimiting", {"limits": {"video": {"second": 1}}}),
    ("response-ratelimiting", {"limits": {"video": {"second": 1, "minute": 2, "hour": 3, "day": 4, "month": 5,
                                                    "year": 6}}}),
    ("response-ratelimiting", {"limits": {"video": {"second": None, "minute": 1}}}),
    ("response-ratelimiting", {"limits": {"video": {"second": 10}}, "policy": "redis", "redis": REDIS_NEW}),
    ("response-ratelimiting", {"limits": {"video": {"second": 10}}, "policy": "redis", **REDIS_LEGACY}),
    # 31-proxy-cache/01-schema_spec.lua
    ("proxy-cache", {"strategy": "memory"}),
    ("proxy-cache", {"strategy": "memory", "response_code": [200, 301], "request_method": ["GET"],
                     "content_type": ["application/json"]}),
    ("proxy-cache", {"strategy": "memory", "response_code": [123, 200]}),
    ("proxy-cache", {"strategy": "memory", "response_code": [900]}),
    ("proxy-cache", {"strategy": "memory", "vary_query_params": ["foo"]}),
    ("proxy-cache", {"strategy": "memory", "vary_headers": ["foo"]}),
    ("proxy-cache", {"strategy": "memory", "content_type": ["application/*", "*/text"]}),
    ("proxy-cache", {"strategy": "memory", "content_type": ["*/*"]}),
    ("proxy-cache", {"strategy": "memory", "content_type": ["application/json; charset=UTF-8"]}),
])
def test_schema_spec_accepts(name, config):
    """Each plugin's 01-schema_spec.lua "proper config validates" / "should accept ..." / "accepts ..." cases."""
    accepted(plugin(name, **config))


@pytest.mark.parametrize(("name", "config", "field"), [
    # 45-redirect/01-schema_spec.lua
    ("redirect", {"status_code": "abcd", "location": "https://example.com"}, "config.status_code"),
    ("redirect", {"status_code": None, "location": "https://example.com"}, "config.status_code"),
    ("redirect", {"status_code": 99, "location": "https://example.com"}, "config.status_code"),
    ("redirect", {"status_code": 600, "location": "https://example.com"}, "config.status_code"),
    ("redirect", {"status_code": 301}, "config.location"),
    ("redirect", {"status_code": 301, "location": "definitely_not_a_url"}, "config.location"),
    ("redirect", {"location": "https://example.com", "keep_incoming_path": "invalid"}, "config.keep_incoming_path"),
    # 14-request-termination/01-schema_spec.lua
    ("request-termination", {"status_code": "abcd"}, "config.status_code"),
    ("request-termination", {"status_code": 99}, "config.status_code"),
    ("request-termination", {"message": "error", "content_type": "text/html", "body": "test"},
     "message cannot be used with content_type or body"),
    ("request-termination", {"message": "error", "content_type": "text/html"},
     "message cannot be used with content_type or body"),
    ("request-termination", {"echo": True, "content_type": "text/html", "body": "<body><h1>Not found</h1>"},
     "echo cannot be used with content_type and body"),
    # 23-rate-limiting/01-schema_spec.lua
    ("rate-limiting", {}, "set at least one of second, minute, hour, day, month, year"),
    ("rate-limiting", {"second": 10, "limit_by": "header"}, "limit_by is header: set header_name"),
    ("rate-limiting", {"second": 10, "limit_by": "path"}, "limit_by is path: set path"),
    ("rate-limiting", {"second": 10, "policy": "redis", "redis": {k: v for k, v in REDIS_NEW.items() if k != "host"}},
     "set redis.host"),
    # 24-response-rate-limiting/01-schema_spec.lua
    ("response-ratelimiting", {}, "config.limits"),
    ("response-ratelimiting", {"limits": {}}, "config.limits"),
    ("response-ratelimiting", {"limits": {"video": {"seco": 1}}}, "seco"),
    ("response-ratelimiting", {"limits": {"video": {"second": 2, "minute": 1}}},
     "the limit for minute(1.0) cannot be lower than the limit for second(2.0)"),
    ("response-ratelimiting", {"limits": {"video": {"second": 1, "minute": 2, "hour": 3, "day": 4, "month": 6,
                                                    "year": 5}}},
     "the limit for year(5.0) cannot be lower than the limit for month(6.0)"),
    ("response-ratelimiting", {"limits": {"second": 10}}, "config.limits"),
    ("response-ratelimiting", {"limits": {"video": {"second": 10}}, "policy": "redis",
                               "redis": {k: v for k, v in REDIS_NEW.items() if k != "host"}}, "set redis.host"),
    # 31-proxy-cache/01-schema_spec.lua
    ("proxy-cache", {"strategy": "memory", "response_code": [99]}, "config.response_code"),
    ("proxy-cache", {"strategy": "memory", "response_code": [901]}, "config.response_code"),
    ("proxy-cache", {"strategy": "memory", "response_code": []}, "config.response_code"),
    ("proxy-cache", {"strategy": "memory", "response_code": ""}, "config.response_code"),
    ("proxy-cache", {"strategy": "memory", "response_code": [True, "alo", 123]}, "config.response_code"),
    ("proxy-cache", {"strategy": "memory", "response_code": [123.5]}, "config.response_code"),
    ("proxy-cache", {"strategy": "memory", "cache_ttl": -1}, "config.cache_ttl"),
    ("proxy-cache", {"strategy": "memory", "cache_ttl": 0}, "config.cache_ttl"),
])
def test_schema_spec_refuses(name, config, field):
    """Each plugin's 01-schema_spec.lua "errors" cases: check-config refuses the config and names the field."""
    assert field in refused_at(plugin(name, **config))


def test_proxy_cache_default_content_types():
    """31-proxy-cache/01-schema_spec.lua "defines default content-type values": text/plain and application/json."""
    import json

    from gateway.config import parse_config
    from gateway.runtime import compile_config
    runtime = compile_config(parse_config(json.dumps(_doc(plugin("proxy-cache", strategy="memory")))))
    route = runtime.router.match(b"GET", b"/", None, []).payload
    (policy,) = [p for p in route.policies if p.name == "proxy-cache"]
    from gateway.policies.proxy_cache.rules import parse_mime_type
    assert policy.rules.content_types == [parse_mime_type("text/plain"), parse_mime_type("application/json")]


async def test_request_termination_trigger_with_underscores_matches_the_dashed_header(nursery, gateway):
    """01-schema_spec.lua "should accept trigger" (trigger = "header_name"), run: handler.lua looks it up as
    req_headers[conf.trigger] in kong.request.get_headers(), ngx.req.get_headers()'s table whose __index normalizes a
    missed key to lower case with underscores as dashes (lua-nginx-module README, ngx.req.get_headers): a request
    with "Header-Name: x" is terminated."""
    backend, port = await start(nursery, gateway, plugins=[plugin(
        "request-termination", status_code=403, message="stop", trigger="header_name")])
    assert (await call(port, "/", [("Header-Name", "x")])).status == 403
    assert (await call(port, "/")).status == 200
    assert (await call(port, "/?header_name=1")).status == 403
    assert (await call(port, "/?header-name=1")).status == 200
    assert len(backend.requests) == 2


async def test_response_ratelimiting_a_null_period_is_no_limit(nursery, gateway):
    """24-response-rate-limiting/01-schema_spec.lua "limits: 'null' value does not cause 500, issue #8314": video
    {second = null, minute = 1} loads, and then limits by the minute only."""
    backend, port = await start(nursery, gateway, plugins=[plugin(
        "response-ratelimiting", limits={"video": {"second": None, "minute": 1}})])
    backend.extra_headers = [(b"x-kong-limit", b"video=1")]
    first = await call(port, "/")
    assert first.status == 200
    assert first.header("x-ratelimit-limit-video-minute") == "1"
    assert first.header("x-ratelimit-limit-video-second") is None
    for _ in range(20):
        reply = await call(port, "/")
        if reply.status == 429:
            break
        await trio.sleep(0.05)
    assert reply.status == 429, reply.status


async def test_rl_custom_error_is_kong_response_error_formatted_by_accept(nursery, gateway):
    """04-access_spec.lua "blocks with a custom error code and message", with Accept: text/html: handler.lua answers
    kong.response.error(conf.error_code, conf.error_message), which formats the message by the Accept header
    (kong/pdk/response.lua error -> kong/tools/http.lua get_response_type: text/html gives the HTML page)."""
    port = await rl_gateway(nursery, gateway, [rl(minute=1, error_code=404, error_message="Fake Not Found")])
    assert (await call(port, "/test")).status == 200
    reply = await call(port, "/test", [("Accept", "text/html")])
    assert reply.status == 404
    assert (reply.header("content-type") or "").startswith("text/html"), reply.headers
    assert b"Fake Not Found" in reply.body
