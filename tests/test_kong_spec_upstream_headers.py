"""The headers Kong sends upstream and to the client on proxied requests, as Kong's spec tests state them
(spec/02-integration/05-proxy/03-upstream_headers_spec.lua, 35-via_spec.lua, 14-server_tokens_spec.lua,
15-upstream-status-header_spec.lua; kong/runloop/handler.lua, kong/templates/nginx_kong.lua), over the real gateway.

The backend is an EchoBackend: its JSON answer lists the headers it received, as Kong's mock upstream does."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from backends import BadBackend, Client, EchoBackend, free_port, raw_exchange, request, service, upstream

from gateway.http.kong_headers import SERVER_TOKEN

TIMEOUT = 10
TOKEN = SERVER_TOKEN.decode()
VIA = f"1.1 {TOKEN}"


def _routes() -> list[dict[str, Any]]:
    """03-upstream_headers_spec.lua's routes, each on a service of its own (Kong's insert_routes)."""
    return [{"hosts": ["headers-inspect.test"]},
            {"hosts": ["preserved.test"], "preserve_host": True},
            {"paths": ["/foo"], "strip_path": True},
            {"paths": ["/status/200"], "strip_path": False},
            {"paths": ["/"], "strip_path": True}]


async def _start(nursery, gateway, backend: EchoBackend | None = None, **settings: Any) -> tuple[int, EchoBackend]:  # noqa: ANN001
    backend = backend or EchoBackend()
    await nursery.start(backend.serve)
    url = f"http://127.0.0.1:{backend.port}"
    services = [service(f"s{i}", url, [route]) for i, route in enumerate(_routes())]
    return await gateway({"services": services}, **settings), backend


async def _upstream_headers(port: int, headers: list[tuple[str, str]], path: str = "/",
                            host: str = "headers-inspect.test") -> dict[str, list[str]]:
    """The headers the upstream received (name -> its values, in order), the answer having been a 200."""
    with trio.fail_after(TIMEOUT):
        async with await Client.connect(port) as client:
            reply = await client.request("GET", path, headers=headers, host=host)
    assert reply.status == 200, reply.body
    seen: dict[str, list[str]] = {}
    for name, value in reply.json()["headers"]:
        seen.setdefault(name, []).append(value)
    return seen


def _one(seen: dict[str, list[str]], name: str) -> str | None:
    values = seen.get(name)
    if values is None:
        return None
    assert len(values) == 1, (name, values)
    return values[0]


# --- hop-by-hop (03-upstream_headers_spec.lua "hop-by-hop headers") -------------------------------------------------


async def test_hop_by_hop_headers_are_removed_from_the_request_and_proxy_with_them(nursery, gateway):
    """"are removed from request": Keep-Alive, Proxy (httpoxy), Proxy-Connection, Upgrade and the headers Connection
    names are dropped; Proxy-Authenticate, Proxy-Authorization, X-Foo-Bar and Close pass (kong/runloop/handler.lua
    clears `Proxy` and `Proxy-Connection` in access.after)."""
    port, _ = await _start(nursery, gateway)
    seen = await _upstream_headers(port, [
        ("Connection", "X-Foo, X-Bar"), ("Keep-Alive", "timeout=5, max=1000"), ("Proxy", "Remove-Me"),
        ("Proxy-Connection", "close"), ("Proxy-Authenticate", "Basic"),
        ("Proxy-Authorization", "Basic YWxhZGRpbjpvcGVuc2VzYW1l"), ("TE", "trailers, deflate;q=0.5"),
        ("Upgrade", "example/1, foo/2"), ("X-Foo", "Remove-Me"), ("X-Bar", "Remove-Me"), ("X-Foo-Bar", "Keep-Me"),
        ("Close", "Keep-Me")])
    for name in ("keep-alive", "proxy", "proxy-connection", "upgrade", "x-foo", "x-bar"):
        assert name not in seen, name
    assert _one(seen, "proxy-authenticate") == "Basic"
    assert _one(seen, "proxy-authorization") == "Basic YWxhZGRpbjpvcGVuc2VzYW1l"
    assert _one(seen, "x-foo-bar") == "Keep-Me"
    assert _one(seen, "close") == "Keep-Me"


async def test_te_trailers_is_kept_upstream(nursery, gateway):
    """03-upstream_headers_spec.lua "are removed from request": `assert.equal("trailers", headers["te"])`
    (kong/runloop/handler.lua access.after: var.upstream_te = "trailers" when the client's TE lists trailers)."""
    port, _ = await _start(nursery, gateway)
    seen = await _upstream_headers(port, [("TE", "trailers, deflate;q=0.5")])
    assert _one(seen, "te") == "trailers"


async def test_te_goes_upstream_only_as_trailers_when_the_client_lists_trailers(nursery, gateway):
    """kong/runloop/handler.lua: upstream_te is "trailers" for a TE whose comma-separated tokens (lower-cased,
    trimmed) include trailers; any other TE (hop-by-hop) is not sent."""
    port, _ = await _start(nursery, gateway)
    assert _one(await _upstream_headers(port, [("TE", "gzip,  TRAILERS")]), "te") == "trailers"
    assert _one(await _upstream_headers(port, [("TE", "gzip")]), "te") is None
    assert _one(await _upstream_headers(port, [("TE", "trailers;q=0.5")]), "te") is None
    assert _one(await _upstream_headers(port, []), "te") is None


async def test_an_answers_trailer_header_is_kept_only_for_a_client_that_asked_for_trailers(nursery, gateway):
    """kong/runloop/handler.lua header_filter: "remove trailer response header when client didn't ask for them"."""
    backend = EchoBackend()
    backend.extra_headers = [(b"trailer", b"X-Checksum")]
    port, _ = await _start(nursery, gateway, backend)
    with trio.fail_after(TIMEOUT):
        asked = await request(port, "GET", "/get", headers=[("TE", "trailers")], host="headers-inspect.test")
        plain = await request(port, "GET", "/get", host="headers-inspect.test")
    assert asked.status == plain.status == 200
    assert asked.header("trailer") == "X-Checksum"
    assert plain.header("trailer") is None


async def test_a_websocket_upgrade_keeps_upgrade_and_kongs_connection(nursery, gateway):
    """"keeps upgrade when upgrading": the upstream sees `Connection: keep-alive, Upgrade` and `Upgrade: websocket`
    (its 200 is relayed as any answer)."""
    port, _ = await _start(nursery, gateway)
    seen = await _upstream_headers(port, [("Connection", "keep-alive, Upgrade"), ("Upgrade", "websocket")], "/get")
    assert _one(seen, "connection") == "keep-alive, Upgrade"
    assert _one(seen, "upgrade") == "websocket"


async def test_a_plugins_proxy_authorization_is_sent(nursery, gateway):
    """"keeps proxy-authorization header when a plugin specifies it" (request-transformer add + replace)."""
    backend = EchoBackend()
    await nursery.start(backend.serve)
    value = "Proxy-Authorization:Basic ZGVtbzp0ZXN0"
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{backend.port}", [
        {"paths": ["/proxy-authorization"], "strip_path": True, "plugins": [
            {"name": "request-transformer", "config": {"add": {"headers": [value]},
                                                       "replace": {"headers": [value]}}}]}])]})
    for sent in ([("Proxy-Authorization", "Basic YWxhZGRpbjpvcGVuc2VzYW1l")], [],
                 [("Proxy-Authorization", "Basic ZGVtbzp0ZXN0")]):
        seen = await _upstream_headers(port, sent, "/proxy-authorization", host="gateway.test")
        assert _one(seen, "proxy-authorization") == "Basic ZGVtbzp0ZXN0"


# --- X-Forwarded-* and X-Real-IP (03-upstream_headers_spec.lua) ----------------------------------------------------

SPOOF = [("X-Real-IP", "10.0.0.1"), ("X-Forwarded-For", "10.0.0.1"), ("X-Forwarded-Proto", "https"),
         ("X-Forwarded-Host", "example.test"), ("X-Forwarded-Port", "80"), ("X-Forwarded-Path", "/replaced")]


@pytest.mark.parametrize("trusted_ips", [[], ["10.0.0.1"]], ids=["default", "non-trusted"])
async def test_an_untrusted_clients_forwarded_headers_are_replaced(nursery, gateway, trusted_ips):
    """"(using the default configuration values)" and "(using the non-trusted configuration values)"."""
    port, backend = await _start(nursery, gateway, trusted_ips=trusted_ips)
    bare = await _upstream_headers(port, [])
    spoofed = await _upstream_headers(port, SPOOF)
    for seen, xff in ((bare, "127.0.0.1"), (spoofed, "10.0.0.1, 127.0.0.1")):
        assert _one(seen, "x-real-ip") == "127.0.0.1"
        assert _one(seen, "x-forwarded-for") == xff
        assert _one(seen, "x-forwarded-proto") == "http"
        assert _one(seen, "x-forwarded-host") == "headers-inspect.test"
        assert _one(seen, "x-forwarded-port") == str(port)
        assert _one(seen, "x-forwarded-path") == "/"
        assert _one(seen, "host") == f"127.0.0.1:{backend.port}"  # "with the downstream host discarded"
    preserved = await _upstream_headers(port, SPOOF, host="preserved.test")
    assert _one(preserved, "host") == "preserved.test"
    assert _one(preserved, "x-forwarded-host") == "preserved.test"
    assert _one(preserved, "x-forwarded-for") == "10.0.0.1, 127.0.0.1"


@pytest.mark.parametrize("trusted_ips", [[], ["10.0.0.1"]], ids=["default", "non-trusted"])
async def test_x_forwarded_prefix_is_the_stripped_part(nursery, gateway, trusted_ips):
    """X-Forwarded-Prefix: "should be added if path was stripped", "should be replaced if present in request and
    path was stripped", "should not be added if path was not stripped", "should not be added if / was stripped"."""
    port, _ = await _start(nursery, gateway, trusted_ips=trusted_ips)
    assert _one(await _upstream_headers(port, [], "/foo/status/200", host="gateway.test"),
                "x-forwarded-prefix") == "/foo"
    assert _one(await _upstream_headers(port, [("X-Forwarded-Prefix", "/replaced")], "/foo", host="gateway.test"),
                "x-forwarded-prefix") == "/foo"
    assert "x-forwarded-prefix" not in await _upstream_headers(port, [], "/status/200", host="gateway.test")
    assert "x-forwarded-prefix" not in await _upstream_headers(port, [], "/", host="gateway.test")


async def test_a_trusted_peers_forwarded_headers_are_kept(nursery, gateway):
    """"(using the trusted configuration values)": trusted_ips = 127.0.0.1; X-Real-IP (the default real_ip_header)
    names the client, and so X-Real-IP upstream."""
    port, _ = await _start(nursery, gateway, trusted_ips=["127.0.0.1"])
    bare = await _upstream_headers(port, [])
    assert (_one(bare, "x-real-ip"), _one(bare, "x-forwarded-for")) == ("127.0.0.1", "127.0.0.1")
    assert (_one(bare, "x-forwarded-proto"), _one(bare, "x-forwarded-port")) == ("http", str(port))
    assert _one(await _upstream_headers(port, [("X-Real-IP", "10.0.0.1")]), "x-real-ip") == "10.0.0.1"
    assert _one(await _upstream_headers(port, [("X-Forwarded-For", "10.0.0.1")]),
                "x-forwarded-for") == "10.0.0.1, 127.0.0.1"
    seen = await _upstream_headers(port, SPOOF[2:])
    assert _one(seen, "x-forwarded-proto") == "https"
    assert _one(seen, "x-forwarded-host") == "example.test"
    assert _one(seen, "x-forwarded-port") == "80"
    assert _one(seen, "x-forwarded-path") == "/replaced"
    for path in ("/foo/status/200", "/status/200"):  # "X-Forwarded-Prefix should be preserved even if ... stripped"
        seen = await _upstream_headers(port, [("x-forwarded-prefix", "/preserved")], path, host="gateway.test")
        assert _one(seen, "x-forwarded-prefix") == "/preserved"


async def test_a_trusted_peers_repeated_forwarded_header_is_sent_once_its_first(nursery, gateway):
    """kong/runloop/handler.lua reads a trusted peer's X-Forwarded-Proto/Host/Port/Path/Prefix with
    get_header(name, ctx), the first value of a repeated header, and nginx_kong.lua's proxy_set_header sends that one
    line (it replaces the request's)."""
    port, _ = await _start(nursery, gateway, trusted_ips=["127.0.0.1"])
    seen = await _upstream_headers(port, [("X-Forwarded-Proto", "https"), ("X-Forwarded-Proto", "http"),
                                          ("X-Forwarded-Port", "443"), ("X-Forwarded-Port", "80"),
                                          ("X-Forwarded-Host", "a.test"), ("X-Forwarded-Host", "b.test")])
    assert seen["x-forwarded-proto"] == ["https"]
    assert seen["x-forwarded-port"] == ["443"]
    assert seen["x-forwarded-host"] == ["a.test"]


async def test_x_forwarded_for_sent_in_several_lines_is_kongs_first_with_the_peer(nursery, gateway):
    """kong/runloop/handler.lua: `get_header("x_forwarded_for", ctx) .. ", " .. realip_remote_addr`, get_header with
    a ctx being ngx.req.get_headers()'s first value of a repeated header."""
    port, _ = await _start(nursery, gateway)
    seen = await _upstream_headers(port, [("X-Forwarded-For", "10.0.0.1"), ("X-Forwarded-For", "10.0.0.2")])
    assert _one(seen, "x-forwarded-for") == "10.0.0.1, 127.0.0.1"


async def test_recursive_real_ip_from_x_forwarded_for(nursery, gateway):
    """"(using the recursive trusted configuration values)" and "(using the recursive non-trusted ...)"."""
    chain = "127.0.0.1, 10.0.0.1, 192.168.0.1, 127.0.0.1, 172.16.0.1"
    ported = "127.0.0.1:14, 10.0.0.1:15, 192.168.0.1:16, 127.0.0.1:17, 172.16.0.1:18"
    port, _ = await _start(nursery, gateway, real_ip_header="X-Forwarded-For", real_ip_recursive=True,
                           trusted_ips=["127.0.0.1", "172.16.0.1", "192.168.0.1"])
    seen = await _upstream_headers(port, [("X-Forwarded-For", chain), ("X-Real-IP", "10.0.0.2")])
    assert (_one(seen, "x-real-ip"), _one(seen, "x-forwarded-for")) == ("10.0.0.1", chain + ", 127.0.0.1")
    seen = await _upstream_headers(port, [("X-Forwarded-For", ported), ("X-Real-IP", "10.0.0.2"),
                                          ("X-Forwarded-Port", "14")])
    assert (_one(seen, "x-real-ip"), _one(seen, "x-forwarded-for")) == ("10.0.0.1", ported + ", 127.0.0.1")
    assert _one(seen, "x-forwarded-port") == "14"


async def test_recursive_real_ip_from_an_untrusted_peer_changes_nothing(nursery, gateway):
    """"(using the recursive non-trusted configuration values)"."""
    ported = "127.0.0.1:14, 10.0.0.1:15, 192.168.0.1:16, 127.0.0.1:17, 172.16.0.1:18"
    port, _ = await _start(nursery, gateway, real_ip_header="X-Forwarded-For", real_ip_recursive=True,
                           trusted_ips=["10.0.0.1", "172.16.0.1", "192.168.0.1"])
    seen = await _upstream_headers(port, [("X-Forwarded-For", ported), ("X-Real-IP", "10.0.0.2"),
                                          ("X-Forwarded-Port", "14")])
    assert (_one(seen, "x-real-ip"), _one(seen, "x-forwarded-for")) == ("127.0.0.1", ported + ", 127.0.0.1")
    assert _one(seen, "x-forwarded-port") == str(port)


# --- Via (35-via_spec.lua) ---------------------------------------------------------------------------------------


async def test_via_is_appended_both_ways(nursery, gateway):
    """"HTTP/1.1 in both the inbound and outbound directions": the upstream gets the client's Via with Kong's
    `1.1 <token>` after it (kong/runloop/handler.lua upstream_via; nginx_kong.lua proxy_set_header Via), the client
    the upstream's Via with `1.1 <token>` after it, and the upstream's Server."""
    backend = EchoBackend()
    backend.extra_headers = [(b"server", b"http-mock"), (b"via", b"2 nginx, HTTP/1.1 http_mock")]
    port, _ = await _start(nursery, gateway, backend)
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/get", headers=[("Via", "1.1 dev")])
    seen = [v for k, v in reply.json()["headers"] if k == "via"]
    assert seen == [f"1.1 dev, {VIA}"]
    assert [v for k, v in reply.headers if k == "via"] == [f"2 nginx, HTTP/1.1 http_mock, {VIA}"]
    assert reply.header("server") == "http-mock"


async def test_a_request_without_via_gets_kongs_and_a_second_via_line_is_not_kept(nursery, gateway):
    """kong/runloop/handler.lua: `var.upstream_via = req_via and req_via .. ", " .. kong_inbound_via or
    kong_inbound_via`, req_via being get_header(VIA, ctx), the first Via line; proxy_set_header replaces the rest.
    Whatever kong.conf's `headers` says."""
    port, _ = await _start(nursery, gateway, headers="off")
    assert _one(await _upstream_headers(port, []), "via") == VIA
    assert _one(await _upstream_headers(port, [("Via", "1.0 a"), ("Via", "1.1 b")]), "via") == f"1.0 a, {VIA}"
    trusted, _ = await _start(nursery, gateway, trusted_ips=["127.0.0.1"])
    assert _one(await _upstream_headers(trusted, []), "via") == VIA
    assert _one(await _upstream_headers(trusted, [("Via", "1.1 lb")]), "via") == f"1.1 lb, {VIA}"


async def test_an_http_1_0_requests_via_is_kongs_version_1(nursery, gateway):
    """kong/runloop/handler.lua: kong_inbound_via = ngx.req.http_version() .. " " .. SERVER_TOKENS, the number 1.0
    printed by Lua as "1"."""
    port, _ = await _start(nursery, gateway)
    with trio.fail_after(TIMEOUT):
        data, _ = await raw_exchange(port, b"GET / HTTP/1.0\r\nHost: headers-inspect.test\r\n\r\n")
    assert f'["via", "1 {TOKEN}"]'.encode() in data


async def test_an_upstreams_several_via_lines_are_joined_before_kongs(nursery, gateway):
    """kong/runloop/handler.lua header_filter: header.Via = $upstream_http_via .. ", " .. kong_outbound_via, nginx
    joining an upstream's several Via lines with ", " in $upstream_http_via."""
    backend = EchoBackend()
    backend.extra_headers = [(b"via", b"1.0 a"), (b"via", b"1.1 b")]
    port, _ = await _start(nursery, gateway, backend)
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/get")
    assert [v for k, v in reply.headers if k == "via"] == [f"1.0 a, 1.1 b, {VIA}"]


# --- Server, latencies, X-Kong-Upstream-Status (14-server_tokens_spec.lua, 15-upstream-status-header_spec.lua) ------


def _short_circuit() -> dict[str, Any]:
    return {"hosts": ["short-circuit.test"], "plugins": [
        {"name": "request-termination", "config": {"status_code": 200, "message": "Terminated"}},
        {"name": "response-transformer", "config": {"add": {"headers": [f"Via:{TOKEN}", "Server:Demo"]}}}]}


@pytest.mark.parametrize("setting", [None, "Via, Server"], ids=["default", "via-server"])
async def test_a_short_circuit_with_kongs_via_keeps_its_server(nursery, gateway, setting):
    """"should not return Kong 'Server' header when short-circuited with a matching Kong 'Via'": a plugin's answer
    whose Via is Kong's token keeps the plugin's Server (kong/runloop/handler.lua header_filter.after: `if not
    (enabled_headers[VIA] and header[VIA] == SERVER_HEADER)`)."""
    settings = {} if setting is None else {"headers": setting}
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{free_port()}", [_short_circuit()])]},
                         **settings)
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/get", host="short-circuit.test")
    assert reply.status == 200
    assert reply.header("via") == TOKEN
    assert [v for k, v in reply.headers if k == "server"] == ["Demo"]


async def test_without_via_on_a_short_circuits_server_is_kongs(nursery, gateway):
    """The same answer with `headers = Server`: Kong's Server replaces the plugin's."""
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{free_port()}", [_short_circuit()])]},
                         headers="Server")
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/get", host="short-circuit.test")
    assert [v for k, v in reply.headers if k == "server"] == [TOKEN]


async def test_an_upstream_failure_gets_the_proxied_latencies(nursery, gateway):
    """14-server_tokens_spec.lua "should be returned with 502 errors (error_page executing)": X-Kong-Upstream-Latency
    and X-Kong-Proxy-Latency, no X-Kong-Response-Latency (kong/init.lua access: `ctx.KONG_PROXIED = true -- we
    intent to proxy, though balancer may fail on that`)."""
    port = await gateway({"services": [service("dead", f"http://127.0.0.1:{free_port()}", retries=0)]})
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/get")
    assert reply.status == 502
    assert reply.header("x-kong-upstream-latency") is not None
    assert reply.header("x-kong-proxy-latency") is not None
    assert reply.header("x-kong-response-latency") is None


async def test_a_cache_hit_has_the_stored_upstream_status(nursery, gateway):
    """15-upstream-status-header_spec.lua "should be set when proxy-cache is enabled": a Hit carries
    X-Kong-Upstream-Status 200 (proxy-cache sets KONG_PROXIED; the runloop's status is then ngx.status)."""
    backend = EchoBackend()
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{backend.port}", [
        {"paths": ["/status/200"], "strip_path": False, "plugins": [
            {"name": "proxy-cache", "config": {"strategy": "memory", "response_code": [200],
                                               "request_method": ["GET"], "content_type": ["application/json"],
                                               "cache_ttl": 300, "storage_ttl": 300}}]}])]},
                         headers="server_tokens,latency_tokens,x-kong-upstream-status")
    with trio.fail_after(TIMEOUT):
        async with await Client.connect(port) as client:
            first = await client.request("GET", "/status/200")
            hit = await client.request("GET", "/status/200")
    assert (first.header("x-cache-status"), first.header("x-kong-upstream-status")) == ("Miss", "200")
    assert (hit.header("x-cache-status"), hit.header("x-kong-upstream-status")) == ("Hit", "200")
    assert len(backend.requests) == 1


async def test_an_upstreams_host_header_is_kept_on_a_retry(nursery, gateway):
    """03-upstream_headers_spec.lua "host_header should be set correctly when retries to upstream happen": the
    upstream's host_header (with the target's port, Kong's set_host_header) on the try after a closed connection."""
    bad, echo = BadBackend("close"), EchoBackend()
    await nursery.start(bad.serve)
    await nursery.start(echo.serve)
    port = await gateway({"services": [service("retry_service", "http://foo", [{"paths": ["/hello"],
                                                                                  "strip_path": False}], retries=5)],
                          "upstreams": [upstream("foo", [bad.port, echo.port], host_header="foo.com")]})
    with trio.fail_after(TIMEOUT):
        for _ in range(2):  # the balancer starts at either target: one of these goes to `bad` first
            reply = await request(port, "GET", "/hello")
            assert reply.status == 200
    assert bad.requests and [r.header("host") for r in echo.requests] == [f"foo.com:{echo.port}"] * 2


@pytest.mark.parametrize(("preserve_host", "expected"), [(False, "127.0.0.1:{port}"), (True, "test.test")],
                         ids=["target-host", "preserve-host"])
async def test_a_retry_after_a_read_timeout_sends_the_next_targets_host(nursery, gateway, preserve_host, expected):
    """05-recreate-request_spec.lua "balancer retry updates Host header in request buffer" and "... doesn't update
    Host if preserve_host is true": the first target times out (read_timeout), the retry carries the Host of the
    target it goes to, or the client's with preserve_host."""
    hang, echo = BadBackend("hang"), EchoBackend()
    await nursery.start(hang.serve)
    await nursery.start(echo.serve)
    port = await gateway({"services": [service("recreate", "http://up", [{"paths": ["/"], "hosts": ["test.test"],
                                                                         "preserve_host": preserve_host}],
                                               read_timeout=300)],
                          "upstreams": [upstream("up", [hang.port, echo.port])]})
    with trio.fail_after(TIMEOUT):
        for _ in range(2):  # the balancer starts at either target: one of these goes to `hang` first
            reply = await request(port, "GET", "/recreate_test", host="test.test")
            assert reply.status == 200
    assert hang.requests
    assert [r.header("host") for r in echo.requests] == [expected.format(port=echo.port)] * 2
