"""What the clients of a retiring worker see (real processes: `gateway start`, then `gateway reload`): an answer
given during the drain says Connection: close, so the client does not send its next request as the worker closes
the connection; and a response the drain_timeout cuts ends with a reset, never a FIN, which would make a body that
ends with the connection look whole."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from backends import EchoBackend, EndlessSse
from e2e_helpers import GatewayNode

TIMEOUT = 15


@pytest.fixture
async def node(nursery: trio.Nursery, tmp_path: Path):  # noqa: ANN201 - a started gateway, stopped by pid at the end
    echo, sse = EchoBackend(), EndlessSse()
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
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        assert chunk, f"closed before a response head: {data!r}"
        data += chunk
    return data.partition(b"\r\n\r\n")[0].lower()


async def test_an_answer_given_while_the_worker_drains_says_connection_close(node: GatewayNode) -> None:
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", node.port)
        await stream.send_all(b"GET /slow?delay=0.8 HTTP/1.1\r\nHost: x\r\n\r\n")
        await trio.sleep(0.2)  # the request is with the upstream when the reload begins
        assert (await node.acli("reload")).returncode == 0
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
