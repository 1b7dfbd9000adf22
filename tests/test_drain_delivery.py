"""What the clients of a retiring worker see (real processes: `gateway start`, then `gateway reload`): an answer
given during the drain says Connection: close, so the client does not send its next request as the worker closes
the connection; a response the drain_timeout cuts ends with a reset, never a FIN, which would make a body that
ends with the connection look whole, and is logged; and every old worker drains at once, for one drain_timeout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
from backends import EchoBackend, EndlessSse, read_head, wait_until
from e2e_helpers import GatewayNode, owners

TIMEOUT = 15
SWITCH = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
HANDSHAKE = (b"GET /ws HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


@pytest.fixture
def echo() -> EchoBackend:
    return EchoBackend()


@pytest.fixture
async def node(nursery: trio.Nursery, tmp_path: Path, echo: EchoBackend):  # noqa: ANN201 - a started gateway, stopped by pid at the end
    sse = EndlessSse()
    for backend in (echo, sse):
        await nursery.start(backend.serve)
    gw = GatewayNode(tmp_path / "gw", {"services": [
        {"name": "echo", "url": f"http://127.0.0.1:{echo.port}", "routes": [{"paths": ["/slow"]}]},
        {"name": "sse", "url": f"http://127.0.0.1:{sse.port}", "routes": [{"paths": ["/sse"]}]}]}, drain_timeout=1)
    try:
        await gw.start(workers=1)
        yield gw
    finally:
        await trio.to_thread.run_sync(gw.cleanup)


async def _head(stream: trio.SocketStream) -> bytes:
    return (await read_head(stream)).lower()


async def test_an_answer_given_while_the_worker_drains_says_connection_close(node: GatewayNode,
                                                                               echo: EchoBackend) -> None:
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", node.port)
        # The request is with the upstream when the reload begins, and still there when the old worker is retired
        # (`gateway reload` returns then, however long it took on a loaded host); it ends within the drain_timeout
        await stream.send_all(b"GET /slow?hold=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        await wait_until(lambda: echo.active == 1, "the request at the upstream")
        assert (await node.acli("reload")).returncode == 0
        echo.release.set()
        head = await _head(stream)
        await stream.aclose()
    assert head.startswith(b"http/1.1 200 ") and b"\r\nconnection: close" in head


async def test_a_close_delimited_stream_the_drain_timeout_cuts_ends_with_a_reset(node: GatewayNode) -> None:
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", node.port)
        await stream.send_all(b"GET /sse HTTP/1.0\r\nHost: x\r\n\r\n")  # HTTP/1.0: the body ends with the connection
        head = await _head(stream)
        assert b"content-length" not in head and b"transfer-encoding" not in head
        assert (await node.acli("reload")).returncode == 0
        with pytest.raises(trio.BrokenResourceError):  # a FIN would say the stream was whole
            while await stream.receive_some(65536):
                pass


async def _echo_after_101(stream: trio.SocketStream) -> None:
    """Answer the handshake with a 101, then echo until the gateway closes."""
    async with stream:
        head = b""
        while b"\r\n\r\n" not in head:
            data = await stream.receive_some(65536)
            if not data:
                return
            head += data
        await stream.send_all(SWITCH)
        try:
            while data := await stream.receive_some(65536):
                await stream.send_all(data)
        except trio.BrokenResourceError:
            pass


async def _tunnel_node(nursery: trio.Nursery, workdir: Path, drain_s: float, **gateway: object) -> GatewayNode:
    """A gateway (not started) with /ws to an upstream that echoes after a 101, and /sse to an endless stream."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    nursery.start_soon(trio.serve_listeners, _echo_after_101, listeners)
    sse = EndlessSse()
    await nursery.start(sse.serve)
    return GatewayNode(workdir, {"services": [
        {"name": "ws", "url": f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}", "read_timeout": 60000,
         "routes": [{"paths": ["/ws"], "strip_path": False}]},
        {"name": "sse", "url": f"http://127.0.0.1:{sse.port}", "routes": [{"paths": ["/sse"]}]}]},
        drain_timeout=drain_s, **gateway)


async def _open_tunnel(port: int) -> tuple[trio.SocketStream, int]:
    """A tunnel through the gateway, and the bytes of the 101 head the client received."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(HANDSHAKE)
    head = b""
    while b"\r\n\r\n" not in head:
        data = await stream.receive_some(65536)
        assert data, head
        head += data
    assert head.startswith(b"HTTP/1.1 101 ") and head.endswith(b"\r\n\r\n"), head
    return stream, len(head)


async def _until_closed(stream: trio.SocketStream) -> int:
    """Read until the gateway ends the connection (a FIN or a reset); the bytes read."""
    received = 0
    try:
        while data := await stream.receive_some(65536):
            received += len(data)
    except trio.BrokenResourceError:
        pass
    await stream.aclose()
    return received


async def _lifetime(stream: trio.SocketStream, since: float, ended: list[float]) -> None:
    """Talk through the tunnel until the gateway ends it; record when, in seconds after `since`."""
    try:
        while True:
            await stream.send_all(b"ping")
            if not await stream.receive_some(65536):
                break
            await trio.sleep(0.1)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    ended.append(trio.current_time() - since)
    await stream.aclose()


async def test_a_reload_drains_every_old_worker_at_once_for_one_drain_timeout(nursery: trio.Nursery,
                                                                             tmp_path: Path) -> None:
    """nginx's reload sends SIGQUIT to every old worker at once: each stops accepting and drains for at most
    worker_shutdown_timeout. workers@G is one_for_one, whose shutdown stops its children one after another (OTP):
    unless told to drain together first, the last old worker kept accepting and its tunnels outlived drain_timeout
    by a drain_timeout per worker stopped before it."""
    drain_s = 1.0
    node = await _tunnel_node(nursery, tmp_path / "gw", drain_s)
    try:
        await node.start(workers=2)
        workers = await node.worker_pids()
        with trio.fail_after(TIMEOUT * 2):
            held: dict[int, trio.SocketStream] = {}  # one tunnel on each old worker
            spare: list[trio.SocketStream] = []
            while len(held) < len(workers) and len(spare) < 40:
                stream, _ = await _open_tunnel(node.port)
                local = stream.socket.getsockname()[1]
                owner = owners(workers, local_port=node.port, remote_port=local).get((node.port, local))
                if owner is not None and owner not in held:
                    held[owner] = stream
                else:
                    spare.append(stream)
            for stream in spare:
                await stream.aclose()
            assert len(held) == len(workers), "could not open a tunnel on every worker"
            assert (await node.acli("reload")).returncode == 0
            retired = trio.current_time()  # the new generation accepts: the old one is being retired
            ended: list[float] = []
            async with trio.open_nursery() as talking:
                for stream in held.values():
                    talking.start_soon(_lifetime, stream, retired, ended)
                await trio.sleep(drain_s / 2)
                listening = owners(workers, local_port=node.port, remote_port=0)  # an old worker's listener open
    finally:
        await trio.to_thread.run_sync(node.cleanup)
    assert not listening, "an old worker still accepts while the other drains"
    assert max(ended) - min(ended) < drain_s / 2 and max(ended) < drain_s + 0.8, \
        f"tunnels ended {sorted(ended)} s after the reload"


async def test_a_tunnel_and_a_stream_the_drain_timeout_cuts_are_logged(nursery: trio.Nursery,
                                                                       tmp_path: Path) -> None:
    """README: one access log line per request that reached the pipeline, also when it is cut short. nginx's
    ngx_shutdown_timer_handler finalizes the connections still open and the log phase runs: a tunnel is logged as
    its 101, a stream as its 200, each with every byte sent ($bytes_sent). The worker flushed its lines before it
    cut the connections, so those lines were lost."""
    node = await _tunnel_node(nursery, tmp_path / "gw", 1, access_log=True)
    access = node.dir / "run" / "access.log"
    try:
        await node.start(workers=1)
        with trio.fail_after(TIMEOUT):
            tunnel, head_bytes = await _open_tunnel(node.port)
            await tunnel.send_all(b"ping")
            echoed = b""
            while len(echoed) < len(b"ping"):
                echoed += await tunnel.receive_some(65536)
            tunnel_bytes = head_bytes + len(echoed)
            stream = await trio.open_tcp_stream("127.0.0.1", node.port)
            await stream.send_all(b"GET /sse HTTP/1.1\r\nHost: x\r\n\r\n")
            received = b""
            while b"data: one" not in received:
                received += await stream.receive_some(65536)
            stream_bytes = len(received)
            assert (await node.acli("reload")).returncode == 0
            tunnel_bytes += await _until_closed(tunnel)
            stream_bytes += await _until_closed(stream)
            lines = await wait_until(lambda: access.exists() and len(access.read_text().splitlines()) == 2 and
                                     access.read_text().splitlines(), "the two access log lines")
    finally:
        await trio.to_thread.run_sync(node.cleanup)
    logged = sorted((entry["response"]["status"], entry["response"]["size"]) for entry in map(json.loads, lines))
    assert logged == [(101, tunnel_bytes), (200, stream_bytes)]
