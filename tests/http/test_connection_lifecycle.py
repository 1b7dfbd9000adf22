"""A client connection's life as nginx 1.27.1 (Kong 3.x's) leads it: what a client too slow with its request head or
body gets (nothing: the connection closes, the log says 408), and when keepalive_time ends a connection.

The connection loop runs here on one end of a socket pair (gateway.http.server.handle_connection, timed by the
worker's timer sweeper), once per codec; only what needs the pipeline's log phase starts a gateway."""

from __future__ import annotations

import json
import socket
from collections.abc import Awaitable, Callable

import pytest
import trio
from backends import EchoBackend, read_to_end, service

from gateway.http.codecs import codec_classes
from gateway.http.net import Conn
from gateway.http.server import Exchange, ServerSettings, handle_connection

TIMEOUT = 5


@pytest.fixture(params=["h11", "llhttp"])
def codec(request: pytest.FixtureRequest) -> str:
    return request.param


async def _answer_ok(ex: Exchange) -> None:
    """A handler that reads the request body to its end and answers 200 "ok"."""
    while await ex.receive_body() is not None:
        pass
    await ex.respond(200, b"ok", b"text/plain")


async def _serve(nursery: trio.Nursery, codec: str, logged: list[Exchange],
                 handler: Callable[[Exchange], Awaitable[None]] = _answer_ok,
                 **settings: float) -> trio.socket.SocketType:
    """The connection loop on one end of a socket pair with `settings` (requests it refuses go to `logged`, as to
    the log phase); the client's end."""
    server_settings = ServerSettings(codec_classes(codec)[0], **settings)  # type: ignore[arg-type]
    server_settings.log_refused = logged.append
    nursery.start_soon(server_settings.connections.timers.expire_forever)
    ours, theirs = socket.socketpair()
    conn = Conn(ours)

    async def run() -> None:
        try:
            await handle_connection(conn, handler, server_settings)
        finally:
            conn.close()

    nursery.start_soon(run)
    return trio.socket.from_stdlib_socket(theirs)


async def _until_closed(client: trio.socket.SocketType) -> bytes:
    """Everything the loop sends until it closes the connection."""
    received = b""
    with trio.fail_after(TIMEOUT):
        while chunk := await client.recv(65536):
            received += chunk
    return received


async def test_a_head_not_whole_within_header_timeout_is_closed_unanswered_and_logged_408(nursery, codec):
    """nginx release-1.27.1 src/http/ngx_http_request.c:1097-1101 (ngx_http_process_request_line) and :1386-1390
    (ngx_http_process_request_headers): `if (rev->timedout) { ... c->timedout = 1; ngx_http_close_request(r,
    NGX_HTTP_REQUEST_TIME_OUT); return; }`. ngx_http_close_request writes nothing: the 408 is the log's status
    (ngx_http_free_request, :3740-3742), and Kong's `error_page 408` is never reached. The log has the request line
    that came."""
    logged: list[Exchange] = []
    client = await _serve(nursery, codec, logged, header_timeout=0.2)
    with client:
        await client.send(b"POST /c?x=1 HTTP/1.1\r\nHost: gw.test\r\n")  # the head's end never comes
        assert await _until_closed(client) == b""
    [refused] = logged
    assert (refused.status, refused.request.method, refused.request.target, refused.sent) == (408, b"POST",
                                                                                            b"/c?x=1", 0)


async def test_keepalive_time_ends_the_connection_at_its_first_request_too(nursery, codec):
    """nginx release-1.27.1 src/http/ngx_http_core_module.c:1347-1350 (ngx_http_update_location_config, for every
    request): `ngx_current_msec - r->connection->start_time > clcf->keepalive_time` turns keep-alive off, start_time
    being the accept's (src/event/ngx_event_accept.c:262). A first request that comes after keepalive_time (with a
    header_timeout longer than it) is answered `Connection: close`, and the connection ends."""
    client = await _serve(nursery, codec, [], keepalive_time=0.2)
    with client:
        await trio.sleep(0.3)
        await client.send(b"GET /first HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        received = await _until_closed(client)
    head = received.partition(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 200 ") and b"\r\nconnection: close" in head, head


async def test_a_body_stalled_past_client_body_timeout_is_closed_unanswered_and_logged_408(nursery, gateway, tmp_path):
    """nginx release-1.27.1, request buffered (Kong's default): src/http/ngx_http_request_body.c:280-283
    (ngx_http_read_client_request_body_handler) `ngx_http_finalize_request(r, NGX_HTTP_REQUEST_TIME_OUT)`, which
    src/http/ngx_http_request.c:2531-2541 terminates (ngx_http_terminate_request: no response, no error_page).
    Unbuffered (request_buffering false): the upstream module reads the body while it proxies it, and its
    ngx_http_upstream_read_request_handler (src/http/ngx_http_upstream.c:2360-2363) calls
    ngx_http_upstream_finalize_request(r, u, NGX_HTTP_REQUEST_TIME_OUT), which hands a 408 to
    ngx_http_finalize_request (:4630-4635) whatever was sent: terminated too. Either way the log says 408
    (ngx_http_free_request: the status of a request that sent nothing)."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    access = tmp_path / "access.log"
    routes = [{"paths": ["/buffered"]}, {"paths": ["/unbuffered"], "request_buffering": False},
              {"paths": ["/mcp"], "mcp": True}]  # (its body peeked for the JSON-RPC call: the MCP step reads it)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}", routes)]},
                         access_log=str(access), client_body_timeout_s=0.2)
    for path in (b"/buffered", b"/unbuffered", b"/mcp"):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        try:
            with trio.fail_after(TIMEOUT):
                await stream.send_all(b"POST %b HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n\r\nabc" % path)
                received, _ = await read_to_end(stream)
        finally:
            await trio.aclose_forcefully(stream)
        assert received == b"", (path, received[:80])
    assert echo.body_started.is_set()  # the unbuffered body was on its way upstream
    assert echo.requests == []  # never a whole request
    with trio.fail_after(TIMEOUT):
        while len(lines := access.read_text().splitlines() if access.exists() else []) < 3:
            await trio.sleep(0.02)
    assert [(line["request"]["uri"], line["response"]["status"]) for line in map(json.loads, lines)] == [
        ("/buffered", 408), ("/unbuffered", 408), ("/mcp", 408)]


async def test_client_body_timeout_bounds_each_wait_for_body_bytes_on_an_mcp_route_too(nursery, gateway):
    """client_body_timeout is nginx's time between two successive reads (ngx_http_read_client_request_body_handler
    re-arms it after each read), not a bound on the whole body: a JSON-RPC body trickled in within it reaches the
    server, on an MCP route whose body the gateway peeks too (its peek was bounded as a whole, by header_timeout_s,
    and answered 408)."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}", [
        {"paths": ["/mcp"], "mcp": True}])]}, client_body_timeout_s=0.3, header_timeout_s=0.3)
    body = b'{"jsonrpc":"2.0","id":1,"method":"ping"}'
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        with trio.fail_after(TIMEOUT):
            await stream.send_all(b"POST /mcp HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                                  b"Accept: application/json, text/event-stream\r\nConnection: close\r\n"
                                  b"Mcp-Method: ping\r\n"  # (2026-07-28: its body is read to confirm it)
                                  b"Content-Length: %d\r\n\r\n" % len(body))
            for i in range(0, len(body), 8):  # 0.6 s in all, 0.12 s between pieces
                await stream.send_all(body[i:i + 8])
                await trio.sleep(0.12)
            received, _ = await read_to_end(stream)
    finally:
        await trio.aclose_forcefully(stream)
    assert received.startswith(b"HTTP/1.1 200 "), received[:200]
    assert [r.body for r in echo.requests] == [body]

