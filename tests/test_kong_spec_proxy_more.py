"""More of Kong's spec/02-integration/05-proxy/ against the gateway: 27-unbuffered (what X-Kong-Proxy-Latency and
X-Kong-Upstream-Latency count with and without request buffering), 24-buffered (nginx's conditional checks of a 200
Lua sends), 32-query-params and 08-uri_encoding (the query string as the Lua API reads it: OpenResty's
ngx.req.get_uri_args; the "?" of an empty query), 25-upstream_keepalive (under kong.conf's names),
19-grpc_proxy (gRPC is refused by check-config, never accepted and ignored), 16-custom_nginx_directive and
34-proxy_with_compress (kong.conf's nginx_* injected directives are refused or honoured, never ignored).

Kong's source read for them: kong/init.lua (balancer phase: KONG_PROXY_LATENCY, the keepalive pool),
kong/runloop/handler.lua, and OpenResty's lua-nginx-module (ngx_http_lua_args.c ngx_http_lua_parse_args,
ngx_http_lua_util.c ngx_http_lua_unescape_uri) at the version Kong 3.x builds (OpenResty 1.27.1.2), and nginx's
ngx_http_not_modified_filter_module.

The tests marked xfail need changes outside this file (the hot-path pipeline): they state Kong's behaviour and turn
into failures (strict) once the change is made."""

from __future__ import annotations

import textwrap
from typing import Any

import h11
import pytest
import trio
from backends import Client, EchoBackend, request, service

from gateway.config import ConfigError, parse_config
from gateway.http.uri_args import unescape, uri_args
from gateway.policies.request_body import FORM, get_body

TIMEOUT = 10


async def start_echo(nursery: trio.Nursery, name: str = "echo") -> EchoBackend:
    backend = EchoBackend(name)
    await nursery.start(backend.serve)
    return backend


def refusals(text: str) -> list[str]:
    """check-config's messages for a config file's text (without the file name)."""
    with pytest.raises(ConfigError) as e:
        parse_config(textwrap.dedent(text), "c.yml")
    return [m.removeprefix("c.yml: ") for m in e.value.messages]


# --- 27-unbuffered_spec: request latency ------------------------------------------------------------------------------


async def slow_chunked_post(port: int, target: str, pieces: list[bytes], gap: float) -> tuple[int, dict[str, str]]:
    """POST `pieces` as a chunked body, `gap` seconds apart; the response's status and headers."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    conn = h11.Connection(h11.CLIENT)
    try:
        await stream.send_all(conn.send(h11.Request(method="POST", target=target, headers=[
            ("host", "gateway.test"), ("transfer-encoding", "chunked"),
            ("content-type", "application/octet-stream")])))
        for piece in pieces:
            await trio.sleep(gap)
            await stream.send_all(conn.send(h11.Data(data=piece)))
        await stream.send_all(conn.send(h11.EndOfMessage()))
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(ev, h11.Response):
                return ev.status_code, {k.decode(): v.decode() for k, v in ev.headers}
    finally:
        await trio.aclose_forcefully(stream)


@pytest.mark.parametrize("request_buffering", [True, False])
async def test_the_proxy_latency_counts_reading_a_buffered_body_and_the_upstream_latency_an_unbuffered_one(
        nursery, gateway, request_buffering):
    """27-unbuffered_spec "request latency": X-Kong-Proxy-Latency "is greater for buffered than unbuffered". Kong's
    is KONG_BALANCER_ENDED_AT - KONG_PROCESSING_START (kong/init.lua balancer phase), and nginx runs the balancer
    only once a buffered body has been read (proxy_request_buffering on), but at once for an unbuffered one, whose
    upload then counts in X-Kong-Upstream-Latency (KONG_WAITING_TIME: from the balancer to the response head)."""
    echo = await start_echo(nursery)
    route = {"paths": ["/"], "request_buffering": request_buffering}
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{echo.port}", [route])]})
    with trio.fail_after(TIMEOUT):
        status, headers = await slow_chunked_post(port, "/post", [b"a" * 1000] * 4, gap=0.15)
    assert status == 200
    proxy, waiting = int(headers["x-kong-proxy-latency"]), int(headers["x-kong-upstream-latency"])
    if request_buffering:
        assert proxy >= 400 and waiting < 300, (proxy, waiting)
    else:
        assert proxy < 300 and waiting >= 400, (proxy, waiting)


# --- 24-buffered_spec: nginx's conditional checks (ngx_http_not_modified_filter) ------------------------------------


def terminating_route(status: int = 200) -> dict[str, Any]:
    return {"paths": ["/"], "plugins": [{"name": "request-termination", "config": {"status_code": status,
                                                                                  "message": "hello"}}]}


@pytest.mark.parametrize(("header", "status"), [
    (("if-match", "1"), 412),  # no ETag: ngx_http_test_if_match is false
    (("if-unmodified-since", "Thu, 01 Jan 2026 00:00:00 GMT"), 412),  # no Last-Modified: test_if_unmodified false
    (("if-none-match", "*"), 304),  # "*" matches whatever the ETag
])
async def test_a_plugins_own_200_goes_through_nginxs_conditional_checks(nursery, gateway, header, status):
    """24-buffered_spec "remains healthy when if-match header is used with buffering": a 200 that Lua sends (there a
    buffered upstream answer, re-sent by Kong; likewise kong.response.exit's, a request-termination or a proxy-cache
    hit) passes nginx's ngx_http_not_modified_filter, which only an upstream's own answer skips
    (ngx_http_upstream: `r->disable_not_modified = !u->cacheable`; lua-nginx-module's bypass_if_checks is 0.10.29,
    after Kong's OpenResty 1.27.1.2). `If-Match: 1` with no ETag, or an If-Unmodified-Since with no Last-Modified,
    is 412 through Kong's error handler (error_page 412: "Precondition failed"); `If-None-Match: *` is 304 without
    a body."""
    port = await gateway({"services": [service("svc", "http://127.0.0.1:1", [terminating_route()])]})
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/x", headers=[header, ("accept", "application/json")])
    assert reply.status == status
    if status == 412:
        assert reply.json()["message"] == "Precondition failed"
    else:
        assert reply.body == b"" and reply.header("content-type") is None


async def test_an_upstreams_answer_skips_the_conditional_checks(nursery, gateway):
    """The control: nginx sets r->disable_not_modified for a proxied answer that is not cached (Kong has no
    proxy_cache), so the conditional headers reach the upstream and its 200 is passed on."""
    echo = await start_echo(nursery)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{echo.port}")]})
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/x", headers=[("if-match", "1"), ("if-none-match", "*")])
    assert reply.status == 200
    assert dict(reply.json()["headers"])["if-match"] == "1"


# --- 32-query-params_spec / 08-uri_encoding_spec: the query string as the Lua API reads it ----------------------------


@pytest.mark.parametrize(("raw", "decoded"), [
    (b"+%41%zz%4", b" A%zz%4"),  # "%zz" and a trailing "%4" stay as they are
    (b"%4g", b"%4g"),
    (b"100%", b"100%"),
    (b"%", b"%"),
    (b"%%41", b"%A"),
    (b"a%2Bb+c", b"a+b c"),  # an escaped "+" is a "+", a raw one a space
    (b"%e4%BD%a0", "你".encode()),
    (b"try %search%%20%again%", b"try %search% %again%"),  # lua-nginx-module's README example
])
def test_a_broken_escape_is_kept_as_kongs_openresty_keeps_it(raw, decoded):
    """ngx_http_lua_unescape_uri (lua-nginx-module v0.10.20 and later; Kong 3.x builds OpenResty 1.27.1.2, whose
    lua-nginx-module is 0.10.28): a "%" not followed by two hex digits is copied with what follows, where older
    versions dropped it and its first digit. get_uri_args, get_post_args and ngx.unescape_uri all decode so."""
    assert unescape(raw) == decoded


def test_the_query_argument_limit_counts_named_arguments_as_resty_cores_get_uri_args():
    """lua-resty-core's ngx.req.get_uri_args (ngx_http_lua_ffi_req_get_uri_args): it stops once `max` arguments with
    a name are read; empty pieces and "=value" ones are skipped without counting."""
    assert uri_args(b"&" * 100 + b"a=1") == {b"a": b"1"}
    assert uri_args(b"=x&" * 100 + b"a=1") == {b"a": b"1"}
    assert uri_args(b"&".join(b"a%d" % i for i in range(101))) == {b"a%d" % i: True for i in range(100)}


def test_the_post_argument_limit_counts_every_piece_between_ampersands():
    """ngx.req.get_post_args (ngx_http_lua_parse_args) counts each "&" it passes (`++count == max`), whether the
    piece before it was empty or had no name: only the first 100 pieces are read, so 100 empty ones leave nothing."""
    form = b"application/x-www-form-urlencoded"
    assert get_body(form, b"&" * 100 + b"a=1") == (FORM, {})
    assert get_body(form, b"=x&" * 100 + b"a=1") == (FORM, {})
    assert get_body(form, b"&" * 99 + b"a=1") == (FORM, {"a": "1"})
    assert get_body(form, b"=x&a=1") == (FORM, {"a": "1"})


async def test_request_termination_echoes_the_query_as_kongs_get_query_reads_it(nursery, gateway):
    """kong.request.get_query (ngx.req.get_uri_args) as request-termination's echo shows it: `100%` and `%zz` stay,
    `+` is a space, a bare name is true."""
    route = {"paths": ["/echo"], "plugins": [
        {"name": "request-termination", "config": {"status_code": 200, "echo": True}}]}
    port = await gateway({"services": [service("svc", "http://127.0.0.1:1", [route])]})
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/echo?rate=100%&x=%zz&y=a+b&flag")
    assert reply.status == 200
    assert reply.json()["request"]["query"] == {"rate": "100%", "x": "%zz", "y": "a b", "flag": True}


async def test_an_added_query_argument_goes_upstream_after_the_empty_querys_question_mark(nursery, gateway):
    """32-query-params_spec: GET /set-query-arg? (strip_path: the upstream path is /) with request-transformer
    add.querystring dummy:1: handler.lua appends "?" .. var.args to the upstream uri, so the upstream's target is
    exactly /?dummy=1."""
    echo = await start_echo(nursery)
    route = {"paths": ["/set-query-arg"], "plugins": [
        {"name": "request-transformer", "config": {"add": {"querystring": ["dummy:1"]}}}]}
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{echo.port}", [route])]})
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/set-query-arg?", host="mock_upstream")
    assert reply.json()["path"] == "/?dummy=1"


async def test_a_request_uri_ending_in_a_question_mark_keeps_it_when_a_plugin_removes_every_argument(nursery,
                                                                                                      gateway):
    """handler.lua's access `after`: `if byte(ctx.request_uri or var.request_uri, -1) == QUESTION_MARK or var.is_args
    == "?" then upstream_uri = upstream_uri .. "?" .. (var.args or "")`. request_uri is the client's request line,
    which set_uri_args does not change: with request-transformer's remove.querystring (set_uri_args of what is
    left, here nothing), GET /x? goes upstream as /x? and GET /x?a=1 as /x."""
    echo = await start_echo(nursery)
    route = {"paths": ["/"], "plugins": [
        {"name": "request-transformer", "config": {"remove": {"querystring": ["a"]}}}]}
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{echo.port}", [route])]})
    with trio.fail_after(TIMEOUT):
        got = [(await request(port, "GET", target)).json()["path"] for target in ("/x?a=1", "/x?")]
    assert got == ["/x", "/x?"]


# --- 25-upstream_keepalive_spec under kong.conf's names ---------------------------------------------------------------


async def connections_for(nursery: trio.Nursery, gateway, n: int, **settings: Any) -> int:  # noqa: ANN001
    echo = await start_echo(nursery)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{echo.port}")]}, **settings)
    with trio.fail_after(TIMEOUT):
        async with await Client.connect(port) as client:
            statuses = [(await client.request("GET", f"/r{i}")).status for i in range(n)]
    assert statuses == [200] * n
    return echo.connections


async def test_kongs_upstream_keepalive_pool_size_0_disables_pooling(nursery, gateway):
    """25-upstream_keepalive_spec "upstream_keepalive_pool_size = 0 disables connection pooling", under kong.conf's
    own name (kong/init.lua: no pool name when UPSTREAM_KEEPALIVE_POOL_SIZE is 0)."""
    assert await connections_for(nursery, gateway, 3, upstream_keepalive_pool_size=0) == 3


async def test_upstream_keepalive_max_requests_1_saves_no_connection(nursery, gateway):
    """25-upstream_keepalive_spec "free upstream keepalive pool": upstream_keepalive_max_requests = 1, "keepalive not
    saving connection" after each request."""
    assert await connections_for(nursery, gateway, 3, upstream_keepalive_max_requests=1) == 3


# --- 19-grpc_proxy_spec: gRPC is refused, never accepted and ignored --------------------------------------------------


GRPC_WHY = "gRPC needs HTTP/2 to the upstream, and the gateway forwards HTTP/1.1"


@pytest.mark.parametrize(("doc", "message"), [
    ("services: [{name: grpc, url: 'grpc://localhost:8765'}]",
     f"services[0].url: grpc:// is not supported by the gateway (http:// and https:// upstreams only; {GRPC_WHY}), "
     'got "grpc://localhost:8765"'),
    ("services: [{name: grpcs, url: 'grpcs://localhost:8765'}]",
     f"services[0].url: grpcs:// is not supported by the gateway (http:// and https:// upstreams only; {GRPC_WHY}), "
     'got "grpcs://localhost:8765"'),
    ("services: [{name: g, protocol: grpc, host: localhost, port: 15002}]",
     f"services[0].protocol: a grpc service is not supported by the gateway (http and https only; {GRPC_WHY})"),
    ("services: [{name: s, url: 'http://a', routes: [{protocols: [grpc], hosts: [grpc]}]}]",
     f"services[0].routes[0].protocols: grpc is not supported by the gateway (HTTP routes only: http, https; "
     f"{GRPC_WHY})"),
    ("services: [{name: s, url: 'http://a', routes: [{protocols: [http, grpcs], hosts: [grpcs]}]}]",
     f"services[0].routes[0].protocols: grpcs is not supported by the gateway (HTTP routes only: http, https; "
     f"{GRPC_WHY})"),
    ("upstreams: [{name: u, healthchecks: {active: {type: grpc}}}]",
     f"upstreams[0].healthchecks.active.type: grpc health checks are not supported by the gateway ({GRPC_WHY}; "
     "http, https or tcp)"),
])
def test_grpc_services_routes_and_health_checks_are_refused_saying_why(doc, message):
    """19-grpc_proxy_spec proxies grpc:// and grpcs:// services through routes of protocols grpc / grpcs (nginx's
    grpc_pass, HTTP/2 to the upstream): the gateway cannot, and check-config says so, one line each."""
    assert refusals(doc) == [message]


# --- 16-custom_nginx_directive_spec, 34-proxy_with_compress_spec: nginx_* directives --------------------------------


@pytest.mark.parametrize(("key", "value"), [
    ("nginx_proxy_add_header", "foo-header bar-value"),  # 16-custom_nginx_directive_spec
    ("nginx_proxy_brotli", "on"),  # 34-proxy_with_compress_spec
    ("nginx_proxy_brotli_comp_level", 6),
    ("nginx_proxy_brotli_types", "text/plain application/json"),
    ("nginx_location_proxy_set_header", "X-Foo bar"),
    ("nginx_http_gzip", "on"),
])
def test_an_injected_nginx_directive_is_refused_not_ignored(key, value):
    """16-custom_nginx_directive_spec (nginx_proxy_add_header = "foo-header bar-value" adds foo-header to every
    answer) and 34-proxy_with_compress_spec (nginx_proxy_brotli = on compresses): directives Kong injects into
    nginx.conf. The gateway is not nginx: each is refused by name, never taken and ignored."""
    [message] = refusals(f"services: []\ngateway: {{{key}: {value!r}}}")
    assert message.startswith(f"gateway.{key}: kong.conf's {key} (nginx's ")
    assert "nginx directives cannot be injected: the gateway is not nginx" in message


def test_an_nginx_directive_the_gateway_has_is_honoured_under_kongs_name():
    """nginx_http_keepalive_requests (Kong's template default 10000) is the gateway's keepalive_requests."""
    config = parse_config("services: []\ngateway: {nginx_http_keepalive_requests: 7}\n", "c.yml")
    assert config.gateway.keepalive_requests == 7


@pytest.mark.parametrize(("key", "instead"), [
    ("nginx_proxy_proxy_request_buffering", "a route's `request_buffering`"),
    ("nginx_proxy_proxy_buffering", "a route's `response_buffering`"),
])
def test_a_refused_buffering_directive_names_the_route_field_that_does_it(key, instead):
    """24-buffered_spec / 27-unbuffered_spec switch buffering per route (request_buffering, response_buffering):
    the refusal of nginx's own directives points there."""
    [message] = refusals(f"services: []\ngateway: {{{key}: 'off'}}")
    assert message.endswith(f"is {instead}" + (" (responses are relayed as they arrive either way) here"
                                               if "response" in instead else " here"))


def test_kongs_client_body_buffer_size_is_accepted_under_either_name():
    """nginx_http_client_body_buffer_size = 8k (kong/templates/kong_defaults.lua:91; client_body_buffer_size, its name
    before 3.0, still listed at :117) is what the gateway does: a body a route buffers is kept in memory up to 8 KiB
    (gateway.pipeline.request_buffer.MEMORY_LIMIT)."""
    config = parse_config("services: []\ngateway: {nginx_http_client_body_buffer_size: 8k, client_body_buffer_size: "
                          "8192}", "c.yml")
    assert config.services == []


def test_the_refusal_of_another_client_body_buffer_size_says_where_buffered_bodies_go():
    """nginx_http_client_body_buffer_size other than 8k: a body a route buffers goes to a temporary file beyond 8 KiB
    (README "What the data plane does"), not "never written to disk"; the refusal says which value passes."""
    [message] = refusals("services: []\ngateway: {nginx_http_client_body_buffer_size: 1m}")
    assert "temporary file" in message and "8 KiB" in message and "never written to disk" not in message
    assert message.endswith("`nginx_http_client_body_buffer_size: 8k` is accepted (it is what the gateway does)")


def test_an_upstream_with_http_health_checks_still_loads():
    """Only gRPC itself is refused: an upstream whose checks are http loads (a control for the cases above)."""
    config = parse_config(textwrap.dedent("""\
        upstreams: [{name: u, healthchecks: {active: {type: http}}, targets: [{target: '127.0.0.1:1'}]}]
        services: [{name: s, host: u}]
    """), "c.yml")
    assert config.upstreams[0].healthchecks.active.type == "http"
