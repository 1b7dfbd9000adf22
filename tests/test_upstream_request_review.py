"""What goes upstream, as Kong's access phase and nginx's proxy module build it: Kong's Connection, the trusted
peer's X-Forwarded-* as Kong read them, the request's Trailer, Kong's reading of an empty first line, and a body a
plugin read whole in access on a route with `request_buffering: false`."""

from __future__ import annotations

import io
from types import SimpleNamespace
from typing import Any

import h11
import pytest
import trio
from backends import _Backend, request, service
from test_kong_spec_upstream_headers import VIA, _one, _start, _upstream_headers

from gateway.pipeline.request_buffer import SpooledBody, held_whole

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


# --- a body read whole in access, on a route with request_buffering: false ----------------------------------------


class _Upstream(_Backend):
    """Records each whole request (h11's Seen: headers as sent, body decoded); closes the connection without an
    answer while `close_first` > 0 (counted down), answers 200 `ok` after."""

    def __init__(self, close_first: int = 0) -> None:
        super().__init__("upstream")
        self.close_first = close_first

    async def handle_conn(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
        while await self._read_request(stream, conn) is not None:
            if self.close_first > 0:
                self.close_first -= 1
                return
            await stream.send_all(conn.send(h11.Response(status_code=200, headers=[(b"content-length", b"2")]))
                                  + conn.send(h11.Data(data=b"ok")) + conn.send(h11.EndOfMessage()))
            conn.start_next_cycle()


async def _size_limited_unbuffered(nursery: trio.Nursery, gateway: Any, close_first: int = 0) -> tuple[int, _Upstream]:
    """A gateway whose one route has `request_buffering: false` and request-size-limiting (which reads a chunked
    body whole in access), in front of an _Upstream."""
    upstream = _Upstream(close_first)
    await nursery.start(upstream.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{upstream.port}", [
        {"paths": ["/"], "request_buffering": False,
         "plugins": [{"name": "request-size-limiting", "config": {"allowed_payload_size": 10}}]}])]})
    return port, upstream


BIG = [b"x" * 300000] * 5  # 1.5 MB, chunked: over the 1 MiB kept in memory, so read whole into a file


async def test_a_body_a_plugin_read_whole_into_a_file_goes_with_its_length_on_an_unbuffered_route(nursery, gateway):
    """request-size-limiting reads a chunked body whole in access (kong/plugins/request-size-limiting/handler.lua:53
    `kong.request.get_raw_body()`, whose ngx.req.read_body() reads it all: kong/pdk/request.lua:717), in the
    @unbuffered_request location Kong exec'd to (kong/runloop/handler.lua:1404). When the proxy handler asks for the
    body it is there already, so nginx drops the unbuffered mode (src/http/ngx_http_request_body.c:45-47: `if (r !=
    r->main || r->request_body || r->discard_body) { r->request_body_no_buffering = 0;`) and
    ngx_http_proxy_create_request sends its length (ngx_http_proxy_module.c:1340-1345: `r->headers_in.chunked &&
    r->reading_body` is false, so `internal_body_length = content_length_n`). A body of 1.5 MB, kept in a file, goes
    so too, not chunked (which upstreams refusing chunked requests answer 411)."""
    port, upstream = await _size_limited_unbuffered(nursery, gateway)
    with trio.fail_after(10):
        reply = await request(port, "PUT", "/", body=BIG)
    assert reply.status == 200
    [seen] = upstream.requests
    assert seen.body == b"".join(BIG)
    names = dict(seen.headers)
    assert names.get("content-length") == "1500000" and "transfer-encoding" not in names, seen.headers


async def test_a_body_a_plugin_read_whole_into_a_file_is_sent_again_on_a_retry(nursery, gateway):
    """A body nginx read before its proxy handler is buffered (ngx_http_request_body.c:45-47 drops the unbuffered
    mode), so proxy_next_upstream may send it again: the first try's upstream closes without an answer
    (ngx_http_upstream_next, NGX_HTTP_UPSTREAM_FT_ERROR) and a PUT goes to the next try whole, with its length.
    Streamed, it could not be read twice: the gateway answered 502."""
    port, upstream = await _size_limited_unbuffered(nursery, gateway, close_first=1)
    with trio.fail_after(10):
        reply = await request(port, "PUT", "/", body=BIG)
    assert reply.status == 200 and reply.body == b"ok"
    assert [seen.body for seen in upstream.requests] == [b"".join(BIG)] * 2
    assert all(dict(seen.headers).get("content-length") == "1500000" for seen in upstream.requests)


@pytest.mark.parametrize(("taken", "first"), [
    (4, b"0123"),  # a later plugin read some of the file (Exchange.read_body, e.g. proxy-cache's 8 KiB): held now
    (0, b"peek:"),  # bytes read before the file was written (an MCP route's peek), which holds the rest
])
def test_a_held_file_goes_with_the_bytes_the_request_holds_whole_each_try(taken: int, first: bytes) -> None:
    """What streaming the body would have sent, as one body of its size: the bytes the request still holds, then
    the file from where reading it stopped; again from its start on a retry (`rewind`)."""
    file = io.BytesIO(b"0123456789")
    file.read(taken)
    held = SpooledBody(file, 10)
    ex: Any = SimpleNamespace(take_held_file=lambda: held)
    body = held_whole(ex, first)
    whole = first + b"0123456789"[taken:]
    assert body is held and body.size == len(whole)

    def sent() -> bytes:
        body.rewind()
        return b"".join(iter(body.read, b""))

    assert sent() == whole
    assert sent() == whole  # (a retry)
