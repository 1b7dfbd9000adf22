"""What goes upstream, as Kong's access phase and nginx's proxy module build it: Kong's Connection, the trusted
peer's X-Forwarded-* as Kong read them, the request's Trailer, and Kong's reading of an empty first line."""

from __future__ import annotations

from test_kong_spec_upstream_headers import VIA, _one, _start, _upstream_headers

NAMES = ("x-forwarded-proto", "x-forwarded-host", "x-forwarded-port", "x-forwarded-path", "x-forwarded-prefix")


async def test_a_proxied_request_carries_kongs_connection_keep_alive(nursery, gateway):
    """Kong sends `Connection: keep-alive` upstream with every proxied request that is not a WebSocket upgrade
    (kong/runloop/handler.lua access.before: `var.upstream_connection = "keep-alive"`; kong/templates/nginx_kong.lua:
    `proxy_set_header Connection $upstream_connection;`), whatever the client's own Connection said. (The gateway sent
    none.)"""
    port, _ = await _start(nursery, gateway)
    assert (await _upstream_headers(port, [])).get("connection") == ["keep-alive"]
    seen = await _upstream_headers(port, [("Connection", "close, X-Foo"), ("X-Foo", "dropped")])
    assert seen.get("connection") == ["keep-alive"]
    assert "x-foo" not in seen


async def test_a_trusted_peers_forwarded_headers_named_in_connection_are_still_kongs_values(nursery, gateway):
    """A trusted peer's X-Forwarded-Proto / -Host / -Port / -Path / -Prefix are read by Kong in access.before
    (kong/runloop/handler.lua: `forwarded_proto = get_header("x_forwarded_proto", ctx) or ctx.scheme`, ...) and put in
    $upstream_x_forwarded_*; the Connection header's tokens are cleared only later, in access.after (`clear_header`),
    and proxy_set_header X-Forwarded-* $upstream_x_forwarded_* (nginx_kong.lua) writes the values read before. So a
    trusted peer that names them in Connection still has its values sent. (The gateway replaced them.)"""
    port, _ = await _start(nursery, gateway, trusted_ips=["127.0.0.1"])
    seen = await _upstream_headers(port, [
        ("Connection", "X-Forwarded-Proto, X-Forwarded-Host, X-Forwarded-Port, X-Forwarded-Path, X-Forwarded-Prefix"),
        ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "outer.test"), ("X-Forwarded-Port", "443"),
        ("X-Forwarded-Path", "/outer"), ("X-Forwarded-Prefix", "/pre")])
    assert _one(seen, "x-forwarded-proto") == "https"
    assert _one(seen, "x-forwarded-host") == "outer.test"
    assert _one(seen, "x-forwarded-port") == "443"
    assert _one(seen, "x-forwarded-path") == "/outer"
    assert _one(seen, "x-forwarded-prefix") == "/pre"


async def test_a_trusted_peers_empty_forwarded_headers_are_not_sent(nursery, gateway):
    """A trusted peer's empty X-Forwarded-Proto / -Host / -Port / -Path / -Prefix: Kong's get_header returns "" (a true
    value in Lua, so `get_header(...) or ctx.scheme` keeps it; kong/runloop/handler.lua access.before), $upstream_x_
    forwarded_* is empty, and nginx's proxy module does not send a proxy_set_header line whose value is empty
    (ngx_http_proxy_create_request: `if (val_len == 0) { e.skip = 1; ... continue; }`), while the client's own line is
    not passed either (its name is in the proxy_set_header hash). So the upstream gets no such header (checked on nginx
    1.22 with `proxy_set_header X-Forwarded-Proto $upstream_x_forwarded_proto`). (The gateway sent each one empty.)"""
    port, _ = await _start(nursery, gateway, trusted_ips=["127.0.0.1"])
    seen = await _upstream_headers(port, [(name, "") for name in NAMES], path="/foo/bar", host="any.test")
    for name in NAMES:
        assert name not in seen, (name, seen.get(name))


async def test_a_requests_trailer_header_is_passed_upstream(nursery, gateway):
    """A request's Trailer header goes upstream through Kong: nginx's proxy module drops only Host, Connection,
    Proxy-Connection, Content-Length, Transfer-Encoding, TE, Keep-Alive, Expect and Upgrade (ngx_http_proxy_module.c
    ngx_http_proxy_headers[]), and Kong's access.after clears only the Connection tokens, Proxy and Proxy-Connection
    (kong/runloop/handler.lua); 03-upstream_headers_spec.lua leaves Trailer out of the headers it expects removed
    ("This is a response header, so we don't remove it"). Checked on nginx 1.22: `Trailer: X-T` reaches the upstream.
    (The gateway dropped it.)"""
    port, _ = await _start(nursery, gateway)
    seen = await _upstream_headers(port, [("Trailer", "X-Checksum")])
    assert _one(seen, "trailer") == "X-Checksum"


async def test_an_empty_first_x_forwarded_for_line_is_kongs_value(nursery, gateway):
    """Kong reads the first line of X-Forwarded-For and of Via (kong/tools/http.lua get_header: `value[1]` of a
    repeated header), and an empty value is a true value in Lua: X-Forwarded-For goes as `"" .. ", " ..
    realip_remote_addr` and Via as `"" .. ", " .. kong_inbound_via` (kong/runloop/handler.lua access.before). (The
    gateway took an empty first line as absent.)"""
    port, _ = await _start(nursery, gateway)
    seen = await _upstream_headers(port, [("X-Forwarded-For", ""), ("X-Forwarded-For", "1.1.1.1")])
    assert _one(seen, "x-forwarded-for") == ", 127.0.0.1"


async def test_an_empty_via_is_kongs_value(nursery, gateway):
    port, _ = await _start(nursery, gateway)
    seen = await _upstream_headers(port, [("Via", "")])
    assert _one(seen, "via") == ", " + VIA
