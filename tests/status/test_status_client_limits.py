"""The status server under nginx's http-level client settings. Kong's status server is a `server {}` in nginx's
http{} block (kong/templates/nginx_kong.lua:463-505), so the client timeouts and limits that kong.conf's nginx_http_*
keys (this gateway's `gateway:` settings of the same names) set apply to it as to the proxy; and a stopping status
server waits for no client (nginx never blocks on one longer than send_timeout). nginx read at release-1.27.1."""

from __future__ import annotations

import socket
import struct
import time
from functools import partial
from pathlib import Path

import trio
from e2e_helpers import GatewayNode
from prometheus_client import CollectorRegistry, Gauge

from gateway.config.schema import GatewaySettings
from gateway.status import BaseStatusSource, StatusApp, serve_status

LIVE = b"GET /live HTTP/1.1\r\nHost: status.test\r\n\r\n"


def _big_app() -> StatusApp:
    """A status app whose /metrics is ~700 KB: more than the socket buffers hold."""
    registry = CollectorRegistry()
    gauge = Gauge("big", "a large scrape", ["label"], registry=registry)
    for i in range(8000):
        gauge.labels(f"v{i:07d}" + "x" * 60).set(i)
    return StatusApp(BaseStatusSource(), registry)


async def _serve(nursery: trio.Nursery, settings: GatewaySettings, app: StatusApp | None = None) -> int:
    app = app or StatusApp(BaseStatusSource(), CollectorRegistry())
    _, port = await nursery.start(partial(serve_status, app, "127.0.0.1", 0, settings=lambda: settings))
    return port


def _closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Read (and drop) whatever the server sends until it closes: the seconds that took, None if still open."""
    began = time.monotonic()
    sock.settimeout(0.1)
    while time.monotonic() - began < seconds:
        try:
            if sock.recv(65536) == b"":
                return time.monotonic() - began
        except TimeoutError:
            continue
        except ConnectionResetError:
            return time.monotonic() - began
    return None


def _responses(sock: socket.socket, wait: float) -> bytes:
    sock.settimeout(wait)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def _slow_reader(port: int) -> socket.socket:
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(("127.0.0.1", port))
    return client


async def test_a_cancelled_status_server_stops_though_a_client_reads_nothing_of_its_answer():
    """The supervisor stops the status child by cancelling it (gateway/node/root.py: ChildSpec "status",
    shutdown=5000), and hypercorn shields its socket writes from cancellation (hypercorn/trio/tcp_server.py
    protocol_send: `cancel_scope.shield = True`): a client that never read its /metrics answer held `gateway stop`
    until it went away. nginx never waits on a client past send_timeout (src/http/ngx_http_request.c:2846,
    2874-2879); cancelled, the status server closes every connection at once."""
    scope, stopped = trio.CancelScope(), trio.Event()

    async def run(task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await serve_status(_big_app(), "127.0.0.1", 0, task_status=task_status)
        stopped.set()

    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(run)
        client = _slow_reader(port)
        try:
            client.sendall(b"GET /metrics HTTP/1.1\r\nHost: status.test\r\n\r\n")
            await trio.sleep(0.5)  # the answer fills the buffers; the server's send waits for the client
            scope.cancel()
            with trio.move_on_after(2.0):
                await stopped.wait()
            held = not stopped.is_set()
        finally:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()  # (a reset: ends a stuck send, so the test ends either way)
    assert not held, "serve_status still ran 2 s after it was cancelled (a client reading nothing)"


async def test_a_client_that_reads_nothing_of_its_answer_is_cut_after_send_timeout_s(nursery):
    """send_timeout (src/http/ngx_http_request.c:2846 `ngx_add_timer(wev, clcf->send_timeout)`; 2874-2879 "client
    timed out" -> NGX_HTTP_REQUEST_TIME_OUT): a write that makes no progress for send_timeout_s ends the
    connection. The status server kept it (and its descriptor) for as long as the client stayed."""
    port = await _serve(nursery, GatewaySettings(send_timeout_s=0.5), _big_app())
    client = _slow_reader(port)
    try:
        client.sendall(b"GET /metrics HTTP/1.1\r\nHost: status.test\r\n\r\n")
        await trio.sleep(2.0)  # nothing read: the server gives up after 0.5 s of no progress
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        took = await trio.to_thread.run_sync(_closed_within, client, 2.0)
        assert took is not None, "the connection of a client that read nothing for 2 s is still open"
    finally:
        client.close()


async def test_a_stalled_request_body_is_closed_after_client_body_timeout_s(nursery):
    """client_body_timeout (src/http/ngx_http_request_body.c:438 `ngx_add_timer(c->read,
    clcf->client_body_timeout)`; 278-283 -> NGX_HTTP_REQUEST_TIME_OUT): a POST /status/ready whose body stops
    coming is closed (Kong's handler reads its body: kong/status/ready.lua:126). hypercorn ran with read_timeout
    None: the app waited for the body for ever."""
    port = await _serve(nursery, GatewaySettings(client_body_timeout_s=0.5))
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(b"POST /status/ready HTTP/1.1\r\nHost: status.test\r\n"
                       b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 15\r\n\r\nstatus=")
        took = await trio.to_thread.run_sync(_closed_within, client, 2.0)
    assert took is not None, "a stalled request body held open 2 s (client_body_timeout_s 0.5)"


async def test_an_idle_kept_alive_connection_is_closed_after_keepalive_timeout_s(nursery):
    """keepalive_timeout (src/http/ngx_http_request.c:3306 `ngx_add_timer(rev, clcf->keepalive_timeout)`): an idle
    kept-alive connection closes after keepalive_timeout_s. The status server closed it after hypercorn's
    keep_alive_timeout, 5 s whatever was configured (70 s before nginx would with Kong's 75 s)."""
    port = await _serve(nursery, GatewaySettings(keepalive_timeout_s=0.5, header_timeout_s=5))
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(LIVE)
        took = await trio.to_thread.run_sync(_closed_within, client, 2.0)
    assert took is not None and took >= 0.4, took


async def test_a_head_not_whole_within_header_timeout_s_is_closed(nursery):
    """client_header_timeout (src/http/ngx_http_request.c:355,430 `ngx_add_timer(rev, cscf->client_header_timeout)`;
    1096-1100 "client timed out"): a request head not whole within header_timeout_s of the accept is closed. The
    status server gave every head hypercorn's 5 s keep_alive_timeout instead."""
    port = await _serve(nursery, GatewaySettings(header_timeout_s=0.5, keepalive_timeout_s=5))
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(b"GET /live HTTP/1.1\r\nHost: status.test\r\n")
        took = await trio.to_thread.run_sync(_closed_within, client, 2.0)
    assert took is not None, "a half-sent head still open after 2 s (header_timeout_s 0.5)"


async def test_the_keepalive_requests_th_answer_on_a_connection_is_its_last(nursery):
    """keepalive_requests (Kong's nginx_http_keepalive_requests): the answer to the connection's Nth request says
    `Connection: close` and the connection ends (src/http/ngx_http_core_module.c:1344-1345
    `r->connection->requests >= clcf->keepalive_requests` -> r->keepalive = 0). hypercorn's own
    keep_alive_max_requests (1000) applied instead."""
    port = await _serve(nursery, GatewaySettings(keepalive_requests=2))
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(LIVE)
        first = await trio.to_thread.run_sync(_responses, client, 0.3)  # (all of it: the connection stays open)
        client.sendall(LIVE)
        second = await trio.to_thread.run_sync(_responses, client, 2.0)
    assert first.startswith(b"HTTP/1.1 200") and b"connection: close" not in first.lower()
    assert second.startswith(b"HTTP/1.1 200") and b"connection: close" in second.lower()


async def test_a_request_line_longer_than_max_header_line_bytes_is_answered_414(nursery):
    """large_client_header_buffers (max_header_line_bytes: one buffer): a request line longer than a buffer is 414
    (src/http/ngx_http_request.c:1228-1235 "client sent too long URI" -> NGX_HTTP_REQUEST_URI_TOO_LARGE). The status
    server answered a 10 KB request line 200; one that fits still is."""
    port = await _serve(nursery, GatewaySettings())
    for query, status in ((b"a" * 10000, b"414"), (b"a" * 8000, b"200")):
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.sendall(b"GET /live?" + query + b" HTTP/1.1\r\nHost: status.test\r\nConnection: close\r\n\r\n")
            data = await trio.to_thread.run_sync(_responses, client, 2.0)
        assert data.startswith(b"HTTP/1.1 " + status), (len(query), data[:60])


async def test_a_20k_head_of_short_lines_is_taken_though_it_arrives_in_pieces(nursery):
    """max_header_bytes 32768 (large_client_header_buffers 4 8k): a 21 KB head of three 7 KB lines fits, however its
    bytes are segmented (ngx_http_alloc_large_header_buffer). hypercorn's h11 refused any head still incomplete
    past h11_max_incomplete_size (16 KB) with 431."""
    port = await _serve(nursery, GatewaySettings())
    lines = [b"X-Cookie-%d: %s\r\n" % (i, b"c" * 7000) for i in range(3)]
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(b"GET /live HTTP/1.1\r\nHost: status.test\r\nConnection: close\r\n" + lines[0] + lines[1])
        await trio.sleep(0.1)
        client.sendall(lines[2])
        await trio.sleep(0.1)
        client.sendall(b"\r\n")
        data = await trio.to_thread.run_sync(_responses, client, 2.0)
    assert data.startswith(b"HTTP/1.1 200"), data[:60]


async def test_the_gateways_client_settings_reach_its_status_server(tmp_path: Path):
    """The root starts the status server with the `gateway:` settings (gateway/node/root.py, child "status"): here
    send_timeout_s and keepalive_timeout_s of 1 s, both seen on one started gateway."""
    gw = GatewayNode(tmp_path / "gw", {}, send_timeout_s=1, keepalive_timeout_s=1)
    await gw.start(workers=1)
    client = _slow_reader(gw.status_port)
    try:
        with socket.create_connection(("127.0.0.1", gw.status_port)) as idle:
            idle.sendall(LIVE)
            client.sendall(b"GET /metrics HTTP/1.1\r\nHost: status.test\r\n\r\n" * 300)
            took = await trio.to_thread.run_sync(_closed_within, idle, 3.0)
        assert took is not None, "an idle kept-alive status connection still open after 3 s (keepalive_timeout_s 1)"
        await trio.sleep(1.0)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        cut = await trio.to_thread.run_sync(_closed_within, client, 30.0)
        assert cut is not None
    finally:
        client.close()
        gw.cleanup()
