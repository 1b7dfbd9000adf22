"""Protocol upgrades (WebSocket handshakes) against what Kong 3.x on nginx does with them, once per codec, through a
real gateway and a small upstream written here that answers 101 and then echoes bytes.

Kong's side, read in its source (Kong/kong, kong/runloop/handler.lua and kong/templates/nginx_kong.lua) and nginx's
(nginx/nginx, src/http/modules/ngx_http_proxy_module.c, src/http/ngx_http_upstream.c,
src/http/ngx_http_header_filter_module.c):
- handler.lua access.before (lines 1357-1365): a request whose Upgrade is `websocket` in any case, whatever its
  method, HTTP version or body, gets upstream_upgrade "websocket" and upstream_connection "keep-alive, Upgrade",
  which nginx_kong.lua (lines 196-197) sends with proxy_set_header; proxy_http_version is 1.1 (line 184) and the
  body is read whole first (proxy_request_buffering on, line 186) and sent with a Content-Length.
- ngx_http_proxy_module.c ngx_http_proxy_process_header (lines 2039-2044): a 101 makes a tunnel when the client's
  request had an Upgrade header (r->headers_in.upgrade), whatever its method or version;
  ngx_http_upstream.c ngx_http_upstream_send_response (line 3293) then relays the bytes (ngx_http_upstream_upgrade).
  Any other status is an ordinary answer: the client connection goes on as HTTP.
- ngx_http_header_filter_module.c (lines 562-564): nginx writes `Connection: upgrade` itself on a 101, in that case;
  the upstream's Upgrade line is copied as it came (ngx_http_upstream_copy_upgrade, line 5886); Kong's header_filter
  (handler.lua lines 1529-1532) drops an Upgrade other than the one it asked for and adds its Via and X-Kong-* as on
  any proxied answer (lines 1567-1634).
"""

from __future__ import annotations

import pytest
import trio
from backends import service
from test_websocket import accept_for

TIMEOUT = 10


class UpgradeUpstream:
    """Answers each request on a connection with `status` (a 101 with `extra` header lines, after which every byte it
    reads is sent back as it came; or a 200 with a short body, after which it serves the next request). It records
    each request's head and body."""

    def __init__(self, status: int = 101, extra: bytes = b"") -> None:
        self.status = status
        self.extra = extra
        self.port = 0
        self.requests: list[tuple[bytes, dict[bytes, bytes], bytes]] = []  # (request line, headers, body)
        self.echoed = b""

    async def serve(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            buf = bytearray()
            try:
                while True:
                    head = await read_head(stream, buf)
                    if head is None:
                        return
                    line, headers = parse_head(head)
                    body = await _read_body(stream, buf, headers)
                    self.requests.append((line, headers, body))
                    if self.status != 101:
                        await stream.send_all(b"HTTP/1.1 %d Answered\r\nContent-Length: 5\r\n\r\nplain" % self.status)
                        continue
                    key = headers.get(b"sec-websocket-key", b"")
                    await stream.send_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                          b"Connection: Upgrade\r\nSec-WebSocket-Accept: %b\r\n%b\r\n%b"
                                          % (accept_for(key), self.extra, bytes(buf)))
                    self.echoed += bytes(buf)
                    while data := await stream.receive_some(65536):
                        self.echoed += data
                        await stream.send_all(data)
                    return
            except trio.BrokenResourceError:
                pass


async def read_head(stream: trio.abc.Stream, buf: bytearray) -> bytes | None:
    """The next head off `stream`, as it came (without its blank line); what followed it stays in `buf`. None when
    the peer closed before one began."""
    while b"\r\n\r\n" not in buf:
        data = await stream.receive_some(65536)
        if not data:
            assert not buf, f"closed in a head: {bytes(buf)!r}"
            return None
        buf += data
    end = buf.index(b"\r\n\r\n")
    head = bytes(buf[:end])
    del buf[:end + 4]
    return head


def parse_head(head: bytes) -> tuple[bytes, dict[bytes, bytes]]:
    """(the first line, the headers by lower-case name, repeated ones joined with ", ")."""
    lines = head.split(b"\r\n")
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        headers[name] = headers[name] + b", " + value.strip() if name in headers else value.strip()
    return lines[0], headers


async def _read_body(stream: trio.abc.Stream, buf: bytearray, headers: dict[bytes, bytes]) -> bytes:
    """A request body framed by Content-Length or chunked (no trailers), taken out of `buf`."""
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        body = b""
        while True:
            while b"\r\n" not in buf:
                buf += await stream.receive_some(65536)
            size_line, _, _ = bytes(buf).partition(b"\r\n")
            size = int(size_line, 16)
            while len(buf) < len(size_line) + 2 + size + 2:
                buf += await stream.receive_some(65536)
            body += bytes(buf[len(size_line) + 2:len(size_line) + 2 + size])
            del buf[:len(size_line) + 2 + size + 2]
            if not size:
                return body
    length = int(headers.get(b"content-length", b"0"))
    while len(buf) < length:
        buf += await stream.receive_some(65536)
    body = bytes(buf[:length])
    del buf[:length]
    return body


async def _gateway(nursery: trio.Nursery, gateway, upstream: UpgradeUpstream | None = None,  # noqa: ANN001
                   **settings) -> tuple[UpgradeUpstream, int]:  # noqa: ANN003
    upstream = upstream or UpgradeUpstream()
    await nursery.start(upstream.serve)
    port = await gateway({"services": [service("up", f"http://127.0.0.1:{upstream.port}")]}, **settings)
    return upstream, port


def handshake(method: bytes = b"GET", version: bytes = b"1.1", connection: bytes = b"Upgrade", body: bytes = b"",
              chunked: bool = False, key: bytes = b"dGhlIHNhbXBsZSBub25jZQ==") -> bytes:
    """A WebSocket handshake; with `body`, framed by Content-Length (or `chunked`)."""
    framing, sent = b"", body
    if chunked:
        framing, sent = b"Transfer-Encoding: chunked\r\n", b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)
    elif body:
        framing = b"Content-Length: %d\r\n" % len(body)
    return (b"%b /ws HTTP/%b\r\nHost: gw.test\r\nUpgrade: websocket\r\nConnection: %b\r\nSec-WebSocket-Key: %b\r\n"
            b"Sec-WebSocket-Version: 13\r\n%b\r\n%b" % (method, version, connection, key, framing, sent))


async def _tunnelled(port: int, request: bytes) -> tuple[bytes, bytes]:
    """Send `request`, read the answer's head (as it came), then send bytes and read them back through the tunnel:
    (the head, the bytes echoed)."""
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(request)
            buf = bytearray()
            head = await read_head(stream, buf)
            assert head is not None
            if not head.startswith(b"HTTP/1.1 101 "):
                return head, b""
            await stream.send_all(b"\x81\x05hello-through")
            while len(buf) < 15:
                data = await stream.receive_some(65536)
                assert data, bytes(buf)
                buf += data
            return head, bytes(buf)


# --- 1. which requests are upgrades: any method, any version, with or without a body ---------------------------------


@pytest.mark.parametrize("method", [b"POST", b"PUT", b"DELETE"])
async def test_a_non_get_websocket_handshake_without_a_body_is_tunnelled(nursery, gateway, method):
    """handler.lua 1357-1365 reads the Upgrade header alone, not the method; nginx tunnels the 101 (proxy module
    2039-2044): the upstream gets the method with Kong's Upgrade and Connection, the client the 101 and a tunnel."""
    upstream, port = await _gateway(nursery, gateway)
    head, echoed = await _tunnelled(port, handshake(method))
    assert head.startswith(b"HTTP/1.1 101 ")
    assert echoed == b"\x81\x05hello-through"
    line, seen = upstream.requests[0][:2]
    assert line == method + b" /ws HTTP/1.1"
    assert (seen[b"upgrade"], seen[b"connection"]) == (b"websocket", b"keep-alive, Upgrade")


async def test_a_post_handshake_with_a_body_sends_its_body_then_tunnels(nursery, gateway):
    """Kong sends the body (read whole, a Content-Length) with Kong's Upgrade and Connection, and nginx tunnels the
    101 after it: the bytes after the body are the new protocol's."""
    upstream, port = await _gateway(nursery, gateway)
    head, echoed = await _tunnelled(port, handshake(b"POST", body=b"abc=1"))
    assert head.startswith(b"HTTP/1.1 101 ")
    assert echoed == b"\x81\x05hello-through"
    line, seen, body = upstream.requests[0]
    assert (line, body) == (b"POST /ws HTTP/1.1", b"abc=1")
    assert (seen[b"upgrade"], seen[b"connection"], seen[b"content-length"]) == (b"websocket", b"keep-alive, Upgrade",
                                                                                 b"5")


async def test_a_post_with_a_body_and_upgrade_websocket_alone_sends_its_body_then_tunnels(nursery, gateway):
    """The same with a Connection that does not name upgrade (Kong reads Upgrade alone)."""
    upstream, port = await _gateway(nursery, gateway)
    head, echoed = await _tunnelled(port, handshake(b"POST", connection=b"keep-alive", body=b"abc=1"))
    assert head.startswith(b"HTTP/1.1 101 ")
    assert echoed == b"\x81\x05hello-through"
    line, seen, body = upstream.requests[0]
    assert (line, body) == (b"POST /ws HTTP/1.1", b"abc=1")
    assert (seen[b"upgrade"], seen[b"connection"]) == (b"websocket", b"keep-alive, Upgrade")


@pytest.mark.xfail(strict=True, reason=(
    "gateway/pipeline/headers.py upstream_request_headers asks upgrade_asked only when the body is not chunked "
    "(`framing != CHUNKED`): a chunked handshake goes as an ordinary request, Upgrade dropped"))
async def test_a_chunked_body_with_upgrade_websocket_is_sent_whole_then_tunnelled(nursery, gateway):
    """nginx reads a chunked body whole (proxy_request_buffering on) and sends it with a Content-Length, Kong's
    Upgrade and Connection with it; a 101 makes a tunnel."""
    upstream, port = await _gateway(nursery, gateway)
    head, echoed = await _tunnelled(port, handshake(b"POST", connection=b"keep-alive", body=b"abc=1", chunked=True))
    assert head.startswith(b"HTTP/1.1 101 ")
    assert echoed == b"\x81\x05hello-through"
    seen, body = upstream.requests[0][1:]
    assert body == b"abc=1"
    assert (seen[b"upgrade"], seen[b"connection"]) == (b"websocket", b"keep-alive, Upgrade")


async def test_an_http_1_0_handshake_is_tunnelled(nursery, gateway):
    """Kong reads Upgrade whatever the request's version, and sends HTTP/1.1 upstream (proxy_http_version 1.1);
    nginx tunnels the 101 (r->headers_in.upgrade is set for an HTTP/1.0 request too) and writes it as HTTP/1.1."""
    upstream, port = await _gateway(nursery, gateway)
    head, echoed = await _tunnelled(port, handshake(version=b"1.0"))
    assert head.startswith(b"HTTP/1.1 101 ")
    assert echoed == b"\x81\x05hello-through"
    line, seen = upstream.requests[0][:2]
    assert line == b"GET /ws HTTP/1.1"
    assert (seen[b"upgrade"], seen[b"connection"]) == (b"websocket", b"keep-alive, Upgrade")


# --- 2. the 101 the client gets -------------------------------------------------------------------------------------


_EXTRA = (b"Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Extensions: permessage-deflate\r\nX-Custom: kept\r\n"
          b"Server: upstream-server\r\nKeep-Alive: timeout=5\r\n")


async def _switched_head(nursery, gateway, extra: bytes = _EXTRA) -> bytes:  # noqa: ANN001
    _, port = await _gateway(nursery, gateway, UpgradeUpstream(extra=extra))
    head, echoed = await _tunnelled(port, handshake())
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert echoed == b"\x81\x05hello-through"
    return head


async def test_the_101_carries_the_upstreams_websocket_and_other_headers(nursery, gateway):
    """nginx passes an upstream's headers on (Upgrade by ngx_http_upstream_copy_upgrade, the rest as any answer's,
    its Server too: nginx_kong.lua proxy_pass_header Server)."""
    headers = parse_head(await _switched_head(nursery, gateway))[1]
    assert headers[b"sec-websocket-accept"] == accept_for(b"dGhlIHNhbXBsZSBub25jZQ==")
    assert headers[b"sec-websocket-protocol"] == b"chat"
    assert headers[b"sec-websocket-extensions"] == b"permessage-deflate"
    assert headers[b"x-custom"] == b"kept"
    assert headers[b"server"] == b"upstream-server"
    assert headers[b"upgrade"] == b"websocket"


async def test_the_101_loses_keep_alive_and_what_the_upstreams_connection_names(nursery, gateway):
    """ngx_http_upstream.c ignores an upstream's Keep-Alive and Connection; Kong's header_filter (handler.lua
    1515-1527) drops the headers its Connection names but close, upgrade and keep-alive."""
    headers = parse_head(await _switched_head(nursery, gateway, _EXTRA.replace(b"X-Custom", b"X-Hop")
                                              + b"Connection: X-Hop\r\n"))[1]
    assert b"keep-alive" not in headers and b"x-hop" not in headers
    assert headers[b"connection"] == b"upgrade"


async def test_the_101_has_kongs_via_latencies_and_request_id(nursery, gateway):
    """Kong's header_filter.after (handler.lua 1567-1634) runs on a proxied 101 as on any proxied answer: Via,
    X-Kong-Upstream-Latency, X-Kong-Proxy-Latency and X-Kong-Request-Id, written as Kong writes them."""
    head = await _switched_head(nursery, gateway)
    assert b"\r\nVia: 1.1 mcp-gateway/" in head
    assert b"\r\nX-Kong-Upstream-Latency: " in head
    assert b"\r\nX-Kong-Proxy-Latency: " in head
    assert b"\r\nX-Kong-Request-Id: " in head


async def test_the_101s_connection_line_is_nginxs_own_text(nursery, gateway):
    """ngx_http_header_filter_module.c 562-564 writes `Connection: upgrade` on a 101, that text, once (the upstream's
    Connection is not passed on); Kong's 09-websockets_spec check_headers looks for it literally."""
    head = await _switched_head(nursery, gateway)
    assert b"\r\nConnection: upgrade\r\n" in head + b"\r\n"
    assert head.lower().count(b"\r\nconnection:") == 1


# --- 3. what is not a switch ----------------------------------------------------------------------------------------


async def test_an_upgrade_answered_200_is_an_ordinary_answer_and_the_connection_goes_on_as_http(nursery, gateway):
    """nginx tunnels only a 101 (proxy module 2039-2044); Kong's 03-upstream_headers_spec "keeps upgrade when
    upgrading" gets a 200 to a handshake. The client reads the 200 and its body, and its next request is answered."""
    upstream, port = await _gateway(nursery, gateway, UpgradeUpstream(status=200))
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            buf = bytearray()
            for _ in range(2):
                await stream.send_all(handshake())
                head = await read_head(stream, buf)
                assert head is not None and head.startswith(b"HTTP/1.1 200 ")
                assert await _read_body(stream, buf, parse_head(head)[1]) == b"plain"
    assert len(upstream.requests) == 2
    assert (upstream.requests[0][1][b"upgrade"], upstream.requests[0][1][b"connection"]) == (b"websocket",
                                                                                             b"keep-alive, Upgrade")


async def test_a_101_to_a_request_that_asked_for_no_upgrade_is_a_502(nursery, gateway):
    """A deliberate difference: nginx, finding no Upgrade in the client's request, does not tunnel
    (r->headers_in.upgrade unset, proxy module 2042) but passes the 101 on as a final answer, with
    `Connection: upgrade`, and what follows it as a body read until the upstream closes
    (ngx_http_proxy_input_filter_init, 2114-2119): a switch the client never proposed (RFC 9110 7.8: a server must
    not switch to a protocol the client did not name). The gateway answers 502, the upstream's answer being
    unusable."""
    _, port = await _gateway(nursery, gateway)
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET /plain HTTP/1.1\r\nHost: gw.test\r\nSec-WebSocket-Key: eA==\r\n\r\n")
            head = await read_head(stream, bytearray())
    assert head is not None and head.startswith(b"HTTP/1.1 502 ")


_H2C_OFFER = (b"POST /submit HTTP/1.1\r\nHost: gw.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
              b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nContent-Type: text/plain\r\n")


@pytest.mark.parametrize("framing", [b"Content-Length: 5\r\n\r\nhello",
                                     b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"],
                         ids=["length", "chunked"])
async def test_a_post_offering_h2c_with_a_body_is_an_ordinary_request_with_its_body(nursery, gateway, framing):
    """`Connection: Upgrade, HTTP2-Settings` and `Upgrade: h2c` on a POST with a body (JDK's HttpClient sends that on
    its first http:// request) is no upgrade for Kong: handler.lua 1357-1365 asks for one only when Upgrade is
    `websocket` (else Connection `keep-alive`, no Upgrade: nginx_kong.lua 196-197), 1463-1482 clear the headers the
    client's Connection names, and nginx reads the body by its framing (ngx_http_request_body.c). The upstream gets
    the POST and its body without the offer; the client its answer, and its connection goes on as HTTP."""
    upstream, port = await _gateway(nursery, gateway, UpgradeUpstream(status=200))
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            buf = bytearray()
            for _ in range(2):
                await stream.send_all(_H2C_OFFER + framing)
                head = await read_head(stream, buf)
                assert head is not None and head.startswith(b"HTTP/1.1 200 "), head
                assert await _read_body(stream, buf, parse_head(head)[1]) == b"plain"
    assert len(upstream.requests) == 2
    line, seen, body = upstream.requests[0]
    assert (line, body) == (b"POST /submit HTTP/1.1", b"hello")
    assert b"upgrade" not in seen and b"http2-settings" not in seen
    assert seen[b"connection"] == b"keep-alive"


# --- 4. request ids upstream ----------------------------------------------------------------------------------------


async def test_headers_upstream_off_sends_the_clients_request_ids_as_they_came(nursery, gateway):
    """nginx_kong.lua 205-207: Kong's X-Kong-Request-Id (constants.lua 128, its one request id header) replaces the
    client's only when headers_upstream names it; off, a client's passes as any header. Kong never sets X-Request-Id
    (only the correlation-id plugin, under the name it is given): a client's passes too."""
    upstream, port = await _gateway(nursery, gateway, UpgradeUpstream(status=200), headers_upstream="off")
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: gw.test\r\nX-Kong-Request-Id: from-client\r\n"
                                  b"X-Request-Id: client-chosen\r\n\r\n")
            head = await read_head(stream, bytearray())
    assert head is not None and head.startswith(b"HTTP/1.1 200 ")
    seen = upstream.requests[0][1]
    assert seen.get(b"x-kong-request-id") == b"from-client"
    assert seen[b"x-request-id"] == b"client-chosen"
