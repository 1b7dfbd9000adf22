"""circuit-breaker's sweep_force_shutdown (the guide's kong.yml sets it): when a target's circuit opens, every worker
closes its connections to that target, so requests in flight there end at once (a cut response the client can see),
not when the target gets round to finishing them; without it they run to their end."""

from __future__ import annotations

import pytest
import trio
from backends import EndlessSse
from e2e_helpers import GatewayNode

TIMEOUT = 20


async def open_stream(port: int) -> trio.SocketStream:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"GET /events HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\n\r\n")
    received = b""
    while b"data: one" not in received:
        received += await stream.receive_some(4096)
    return stream


async def still_open(stream: trio.SocketStream, seconds: float) -> bool:
    """True if nothing (no end, no reset) comes on the stream for `seconds`."""
    with trio.move_on_after(seconds):
        try:
            data = await stream.receive_some(4096)
        except trio.BrokenResourceError:
            return False
        return bool(data) and b"0\r\n\r\n" not in data
    return True


@pytest.mark.parametrize("sweep", [True, False], ids=["sweep", "no_sweep"])
async def test_forcing_a_circuit_open_cuts_the_streams_in_flight_to_it_only_with_sweep_force_shutdown(tmp_path,
                                                                                                       sweep):
    sse = EndlessSse()
    async with trio.open_nursery() as nursery:
        await nursery.start(sse.serve)
        doc = {"services": [{"name": "s", "url": "http://up", "routes": [{"paths": ["/"]}]}],
               "upstreams": [{"name": "up", "targets": [{"target": f"127.0.0.1:{sse.port}"}]}],
               "plugins": [{"name": "circuit-breaker", "service": "s", "config": {"sweep_force_shutdown": sweep}}]}
        node = GatewayNode(tmp_path, doc, sse_keepalive=30)
        try:
            await node.start(workers=2)
            with trio.fail_after(TIMEOUT):
                streams = [await open_stream(node.port) for _ in range(6)]  # on both workers, most likely
                forced = await node.acli("admin", "breakers", "open", f"target=up|127.0.0.1:{sse.port}",
                                         "--config", str(node.config))
                assert forced.returncode == 0, forced.stderr
                open_after: list[bool] = []

                async def watch(stream: trio.SocketStream) -> None:
                    open_after.append(await still_open(stream, 1.0))

                async with trio.open_nursery() as watching:  # all six watched over the same second
                    for stream in streams:
                        watching.start_soon(watch, stream)
                cut = open_after.count(False)
                for stream in streams:  # (the stop need not wait for them to drain)
                    await stream.aclose()
            assert cut == (6 if sweep else 0)
            if sweep:
                with trio.fail_after(TIMEOUT):
                    while sse.closed_at is None:  # the upstream side was closed too
                        await trio.sleep(0.05)
        finally:
            node.cleanup()
            nursery.cancel_scope.cancel()
