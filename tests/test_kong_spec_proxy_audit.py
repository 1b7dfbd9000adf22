"""Kong 3.9.3's spec/02-integration/05-proxy/ specs (01-proxy, 03-upstream_headers, 12-error_default_type,
13-error_handlers, 14-server_tokens, 15-upstream-status-header, 33-request-id-header, 35-via), the `it` blocks no
test covered before, over the real gateway and real backends (test-only plugins replaced by real ones doing the same:
post-function's header writes by request- / response-transformer, dummy's status change by response-ratelimiting's
429 in its header filter, error-generator's access error by rate-limiting's unreachable Redis)."""

from __future__ import annotations

from typing import Any

import trio
from backends import Client, EchoBackend, ScriptedBackend, free_port, request, service
from test_kong_spec_upstream_headers import _one

TIMEOUT = 10
SPEC = "spec/02-integration/05-proxy/"
CHAIN = "10.0.0.1, 127.0.0.2, 10.0.0.1, 192.168.0.1, 172.16.0.1"
PORTED = "127.0.0.1:14, 10.0.0.1:15, 192.168.0.1:16, 127.0.0.1:17, 172.16.0.1:18"
LATENCIES = ("x-kong-upstream-latency", "x-kong-proxy-latency", "x-kong-response-latency")


def _headers(reply: Any) -> dict[str, list[str]]:
    """The echo backend's request headers (name -> values in order), the answer having been a 200."""
    assert reply.status == 200, (reply.status, reply.body)
    seen: dict[str, list[str]] = {}
    for name, value in reply.json()["headers"]:
        seen.setdefault(name, []).append(value)
    return seen


async def _echo(nursery: trio.Nursery) -> EchoBackend:
    echo = EchoBackend()
    await nursery.start(echo.serve)
    return echo


# --- 03-upstream_headers_spec.lua ----------------------------------------------------------------------------------


async def test_a_preserved_host_without_forwarded_headers_gets_kongs_forwarded_headers(nursery, gateway):
    """03-upstream_headers_spec.lua "with the downstream host preserved" / "should be added if not present in request
    while preserving the downstream host": Host, X-Real-IP, X-Forwarded-For/-Proto/-Host/-Path/-Port."""
    echo = await _echo(nursery)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}",
                                               [{"hosts": ["preserved.test"], "preserve_host": True}])]})
    with trio.fail_after(TIMEOUT):
        seen = _headers(await request(port, "GET", "/", host="preserved.test"))
    assert _one(seen, "host") == "preserved.test"
    assert (_one(seen, "x-real-ip"), _one(seen, "x-forwarded-for")) == ("127.0.0.1", "127.0.0.1")
    assert (_one(seen, "x-forwarded-proto"), _one(seen, "x-forwarded-host")) == ("http", "preserved.test")
    assert (_one(seen, "x-forwarded-path"), _one(seen, "x-forwarded-port")) == ("/", str(port))


async def test_recursive_real_ip_from_an_untrusted_peer_keeps_the_peer_and_appends_it(nursery, gateway):
    """03-upstream_headers_spec.lua "(using the recursive non-trusted configuration values)": "should be added if
    not present in request" and "should be changed according to rules if present in request"."""
    echo = await _echo(nursery)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}",
                                               [{"hosts": ["headers-inspect.test"]}])]},
                         real_ip_header="X-Forwarded-For", real_ip_recursive=True,
                         trusted_ips=["10.0.0.1", "172.16.0.1", "192.168.0.1"])
    with trio.fail_after(TIMEOUT):
        bare = _headers(await request(port, "GET", "/", host="headers-inspect.test"))
        ruled = _headers(await request(port, "GET", "/", host="headers-inspect.test",
                                       headers=[("X-Forwarded-For", CHAIN), ("X-Real-IP", "10.0.0.2")]))
    assert (_one(bare, "x-real-ip"), _one(bare, "x-forwarded-for")) == ("127.0.0.1", "127.0.0.1")
    assert (_one(ruled, "x-real-ip"), _one(ruled, "x-forwarded-for")) == ("127.0.0.1", CHAIN + ", 127.0.0.1")


def _proxy_line(port: int, source: str = "192.168.0.1") -> bytes:
    return f"PROXY TCP4 {source} 127.0.0.1 56324 {port}\r\n".encode()


async def _over_proxy_protocol(port: int, headers: list[tuple[str, str]]) -> dict[str, list[str]]:
    """One request (Host headers-inspect.test) after a PROXY v1 line from 192.168.0.1; the upstream's headers."""
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(_proxy_line(port))
        async with Client(stream, "headers-inspect.test") as client:
            return _headers(await client.request("GET", "/", headers=headers))


async def _proxy_protocol_gateway(nursery: trio.Nursery, gateway: Any, trusted: list[str]) -> int:
    echo = await _echo(nursery)
    pp = free_port()
    await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}", [{"hosts": ["headers-inspect.test"]}])]},
                  listen=[f"127.0.0.1:{pp} proxy_protocol"], real_ip_header="proxy_protocol", real_ip_recursive=True,
                  trusted_ips=trusted)
    return pp


async def test_a_trusted_proxy_protocol_peer_names_the_client_and_its_forwarded_port_is_kept(nursery, gateway):
    """03-upstream_headers_spec.lua "(using trusted proxy protocol configuration values)": X-Real-IP is the PROXY
    line's source, X-Forwarded-For the client's with the peer appended (or the source alone), X-Forwarded-Port the
    client's ("should be forwarded even if proxy protocol and X-Forwarded-For header has a port in it") or the
    listener's."""
    pp = await _proxy_protocol_gateway(nursery, gateway, ["127.0.0.1", "172.16.0.1", "192.168.0.1"])
    bare = await _over_proxy_protocol(pp, [])
    assert (_one(bare, "x-real-ip"), _one(bare, "x-forwarded-for")) == ("192.168.0.1", "192.168.0.1")
    assert _one(bare, "x-forwarded-port") == str(pp)
    ruled = await _over_proxy_protocol(pp, [("X-Real-IP", "10.0.0.2"), ("X-Forwarded-For", CHAIN)])
    assert (_one(ruled, "x-real-ip"), _one(ruled, "x-forwarded-for")) == ("192.168.0.1", CHAIN + ", 127.0.0.1")
    ported = await _over_proxy_protocol(pp, [("X-Real-IP", "10.0.0.2"), ("X-Forwarded-For", PORTED),
                                             ("X-Forwarded-Port", "14")])
    assert (_one(ported, "x-real-ip"), _one(ported, "x-forwarded-for")) == ("192.168.0.1", PORTED + ", 127.0.0.1")
    assert _one(ported, "x-forwarded-port") == "14"


async def test_an_untrusted_proxy_protocol_peer_is_the_client_and_its_forwarded_port_is_replaced(nursery, gateway):
    """03-upstream_headers_spec.lua "(using non-trusted proxy protocol configuration values)": the PROXY line of a
    peer not in trusted_ips changes nothing: X-Real-IP the peer, X-Forwarded-For appended with it, X-Forwarded-Port
    the listener's."""
    pp = await _proxy_protocol_gateway(nursery, gateway, ["10.0.0.1", "172.16.0.1", "192.168.0.1"])
    bare = await _over_proxy_protocol(pp, [])
    assert (_one(bare, "x-real-ip"), _one(bare, "x-forwarded-for")) == ("127.0.0.1", "127.0.0.1")
    assert _one(bare, "x-forwarded-port") == str(pp)
    ruled = await _over_proxy_protocol(pp, [("X-Real-IP", "10.0.0.2"), ("X-Forwarded-For", CHAIN)])
    assert (_one(ruled, "x-real-ip"), _one(ruled, "x-forwarded-for")) == ("127.0.0.1", CHAIN + ", 127.0.0.1")
    ported = await _over_proxy_protocol(pp, [("X-Real-IP", "10.0.0.2"), ("X-Forwarded-For", PORTED),
                                             ("X-Forwarded-Port", "14")])
    assert (_one(ported, "x-real-ip"), _one(ported, "x-forwarded-for")) == ("127.0.0.1", PORTED + ", 127.0.0.1")
    assert _one(ported, "x-forwarded-port") == str(pp)


async def test_with_charset_off_an_upstreams_charset_is_kept(nursery, gateway):
    """03-upstream_headers_spec.lua "(response from upstream)" "charset remain unchanged if the response from upstream
    contains charset when charset is turned off" (nginx_http_charset = off)."""
    backend = ScriptedBackend([b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 13\r\n"
                               b"\r\nHello World!\n"])
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{backend.port}",
                                               [{"hosts": ["headers-charset.test"]}])]}, nginx_http_charset="off")
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/charset", host="headers-charset.test")
    assert (reply.status, reply.header("content-type")) == (200, "text/plain; charset=utf-8")


# --- 14-server_tokens_spec.lua -------------------------------------------------------------------------------------


async def test_a_plugins_access_error_has_the_response_latency_not_the_proxied_ones(nursery, gateway):
    """14-server_tokens_spec.lua "should not be returned when plugin errors on access phase" (error-generator's
    access error; here rate-limiting's `error(err)` with Redis unreachable and fault_tolerant false: Kong's 500)."""
    echo = await _echo(nursery)
    limit = {"name": "rate-limiting", "config": {"minute": 5, "policy": "redis", "fault_tolerant": False,
                                                 "redis": {"host": "127.0.0.1", "port": free_port(), "timeout": 500}}}
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}", [
        {"hosts": ["error-access.test"], "plugins": [limit]}])]})
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/get", host="error-access.test")
    assert reply.status == 500
    assert {h for h in LATENCIES if reply.header(h) is not None} == {"x-kong-response-latency"}
    assert not echo.requests


# --- 15-upstream-status-header_spec.lua ----------------------------------------------------------------------------


async def test_x_kong_upstream_status_is_the_upstreams_when_a_plugin_changes_the_status(nursery, gateway):
    """15-upstream-status-header_spec.lua "when a plugin changes status code" (dummy's ngx.status = 500 in its header
    filter; here response-ratelimiting's kong.response.exit(429) in its header filter): the header is set in the
    runloop's header_filter.before from $upstream_status (kong/runloop/handler.lua:1510-1516), so it stays 200."""
    echo = EchoBackend()
    echo.extra_headers = [(b"x-kong-limit", b"video=1")]
    await nursery.start(echo.serve)
    rrl = {"name": "response-ratelimiting", "config": {"policy": "local", "limits": {"video": {"minute": 1}}}}
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}", [
        {"paths": ["/status/plugin-changes-200-to-500"], "plugins": [rrl]}])]}, headers="X-Kong-Upstream-Status")
    with trio.fail_after(TIMEOUT):
        first = await request(port, "GET", "/status/plugin-changes-200-to-500")
        while True:  # the first answer's increment is counted after it (Kong's log phase)
            reply = await request(port, "GET", "/status/plugin-changes-200-to-500")
            if reply.status != 200:
                break
            await trio.sleep(0.02)
    assert (first.status, first.header("x-kong-upstream-status")) == (200, "200")
    assert (reply.status, reply.header("x-kong-upstream-status")) == (429, "200")


# --- 33-request-id-header_spec.lua ---------------------------------------------------------------------------------


async def test_kongs_request_id_replaces_one_a_plugin_set_on_the_response(nursery, gateway):
    """33-request-id-header_spec.lua "(downstream)" "overwrites value set by plugin" (post-function's header_filter
    ngx.header[X-Kong-Request-Id] = 'overwritten'; here response-transformer's add and replace): the runloop's
    header_filter.after sets the header after the plugins' (kong/runloop/handler.lua:1597-1605)."""
    echo = await _echo(nursery)
    value = "X-Kong-Request-Id:overwritten"
    rt = {"name": "response-transformer", "config": {"add": {"headers": [value]}, "replace": {"headers": [value]},
                                                     "append": {"headers": [value]}}}
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}", [
        {"hosts": ["post-function-header-filter"], "plugins": [rt]}])]})
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/", host="post-function-header-filter")
    assert reply.status == 200
    values = [v for k, v in reply.headers if k == "x-kong-request-id"]
    assert len(values) == 1 and values[0] != "overwritten", values
    assert all(c in "0123456789abcdef" for c in values[0])


async def test_kongs_request_id_replaces_one_a_plugin_set_on_the_request(nursery, gateway):
    """33-request-id-header_spec.lua "(upstream)" "overwrites value set by plugin" (post-function's access
    ngx.req.set_header; here request-transformer's add, and replace / append over a client's): nginx_kong.lua's
    `proxy_set_header X-Kong-Request-Id $kong_request_id` replaces the request's."""
    echo = await _echo(nursery)
    value = "X-Kong-Request-Id:overwritten"
    rt = {"name": "request-transformer", "config": {"add": {"headers": [value]}, "replace": {"headers": [value]},
                                                    "append": {"headers": [value]}}}
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}", [
        {"hosts": ["post-function-access"], "plugins": [rt]}])]})
    with trio.fail_after(TIMEOUT):
        plain = await request(port, "GET", "/", host="post-function-access")
        forged = await request(port, "GET", "/", host="post-function-access",
                               headers=[("X-Kong-Request-Id", "client_value")])
    for reply in (plain, forged):
        sent = _headers(reply).get("x-kong-request-id")
        assert sent is not None and len(sent) == 1 and sent[0] != "overwritten", sent
        assert sent[0] == reply.header("x-kong-request-id")
