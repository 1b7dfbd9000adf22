"""Requests in progress, as the metrics show them: counted per target as they start and end (not by walking every
connection), and connections by state; an SSE stream is a request in progress for as long as it is open."""

from __future__ import annotations

import trio
from backends import EndlessSse, service
from e2e_helpers import GatewayNode
from e2e_helpers import request as http_request

TIMEOUT = 20


async def metric(node: GatewayNode, name: str, label: str) -> float | None:
    """The value of the sample of `name` whose labels include `label` (e.g. 'state="active"'), None if none has."""
    text = (await http_request(node.status_port, "GET", "/metrics")).body.decode()
    for line in text.splitlines():
        if line.startswith(name + "{") and label in line:
            return float(line.rsplit(" ", 1)[1])
    return None


async def until(node: GatewayNode, name: str, label: str, value: float) -> None:
    while await metric(node, name, label) != value:
        await trio.sleep(0.2)


async def test_open_sse_streams_are_requests_in_progress_on_their_target_until_they_close(tmp_path):
    sse = EndlessSse()
    async with trio.open_nursery() as nursery:
        await nursery.start(sse.serve)
        node = GatewayNode(tmp_path, {"services": [service("s", f"http://127.0.0.1:{sse.port}")]})
        try:
            await node.start(workers=2)
            target = f'target="127.0.0.1:{sse.port}"'
            streams = []
            with trio.fail_after(TIMEOUT):
                for _ in range(3):
                    stream = await trio.open_tcp_stream("127.0.0.1", node.port)
                    await stream.send_all(b"GET /events HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\n\r\n")
                    received = b""
                    while b"data: one" not in received:
                        received += await stream.receive_some(4096)
                    streams.append(stream)
                await until(node, "gateway_upstream_active_requests", target, 3.0)
                await until(node, "gateway_connections", 'state="writing"', 3.0)
                for stream in streams:
                    await stream.aclose()
                await until(node, "gateway_upstream_active_requests", target, 0.0)
                await until(node, "gateway_connections", 'state="active"', 0.0)
        finally:
            node.cleanup()
            nursery.cancel_scope.cancel()
