"""What a retiring worker does with its pooled upstream connections (real processes: `gateway start`, then `gateway
reload`, as tests/test_drain_delivery.py): the idle ones are closed at once, and none is pooled during the drain.
The pool's side of it is tests/http/test_pool.py's (Pool.stop_keeping); this is the worker telling it."""

from __future__ import annotations

from pathlib import Path

import trio
from backends import EchoBackend, EndlessSse, read_head, wait_until
from e2e_helpers import GatewayNode

TIMEOUT = 20


class CountingEcho(EchoBackend):
    """An EchoBackend that knows how many of its connections are open."""

    def __init__(self) -> None:
        super().__init__()
        self.open = 0

    async def handle_conn(self, stream: trio.SocketStream) -> None:
        self.open += 1
        try:
            await super().handle_conn(stream)
        finally:
            self.open -= 1


async def _get(port: int) -> bytes:
    """GET /echo on a new connection: the response head."""
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return await read_head(stream)


async def test_a_draining_worker_closes_its_idle_upstream_connections_at_once_and_pools_none_after(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    """At SIGQUIT (a reload's old workers, a graceful stop) nginx closes every idle connection at once, pooled
    upstream ones included (release-1.27.1 src/os/unix/ngx_process_cycle.c:735-738 `ngx_close_idle_connections`;
    src/core/ngx_connection.c:1441-1443 `if (c[i].fd != -1 && c[i].idle) { c[i].close = 1; ...}`; a cached upstream
    connection is idle: src/http/modules/ngx_http_upstream_keepalive_module.c:394 `c->idle = 1`, as in OpenResty's
    balancer pool that Kong uses, ngx_http_lua_balancer_free_peer), and caches no connection freed while exiting
    (ngx_http_upstream_keepalive_module.c:350 `if (ngx_terminate || ngx_exiting) { goto invalid; }`). An SSE stream
    holds the old worker's drain meanwhile, so neither waits for the worker's exit."""
    echo, sse = CountingEcho(), EndlessSse()
    for backend in (echo, sse):
        await nursery.start(backend.serve)
    node = GatewayNode(tmp_path / "gw", {"services": [
        {"name": "echo", "url": f"http://127.0.0.1:{echo.port}", "routes": [{"paths": ["/echo"]}]},
        {"name": "sse", "url": f"http://127.0.0.1:{sse.port}", "routes": [{"paths": ["/sse"]}]}]}, drain_timeout=6)
    try:
        with trio.fail_after(TIMEOUT):
            await node.start(workers=1)
            stream = await trio.open_tcp_stream("127.0.0.1", node.port)  # holds the old worker's drain
            await stream.send_all(b"GET /sse HTTP/1.1\r\nHost: x\r\n\r\n")
            received = b""
            while b"data: one" not in received:
                received += await stream.receive_some(65536)
            held = await trio.open_tcp_stream("127.0.0.1", node.port)
            await held.send_all(b"GET /echo?hold=1 HTTP/1.1\r\nHost: x\r\n\r\n")
            await wait_until(lambda: echo.active == 1, "the held request at the upstream")
            assert (await _get(node.port)).startswith(b"HTTP/1.1 200 ")
            assert echo.open == 2, "the second request's upstream connection was not pooled"
            assert (await node.acli("reload")).returncode == 0
            with trio.move_on_after(2.5):
                await wait_until(lambda: echo.open == 1, "the idle upstream connection closed", timeout=2.5)
            open_once_retired = echo.open
            echo.release.set()
            assert (await read_head(held)).startswith(b"HTTP/1.1 200 ")
            with trio.move_on_after(2.5):
                await wait_until(lambda: echo.open == 0, "the finished request's upstream connection closed",
                                 timeout=2.5)
            open_once_answered = echo.open
            await held.aclose()
            await stream.aclose()
    finally:
        await trio.to_thread.run_sync(node.cleanup)
    assert open_once_retired == 1, "the draining worker kept its idle pooled upstream connection open"
    assert open_once_answered == 0, "the draining worker pooled the upstream connection of a response it finished"
