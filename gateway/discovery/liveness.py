"""A long-lived read (etcd's watch) kept honest by a periodic request to the same peer.

A watch that is legitimately idle and one whose peer hung (a stopped process, a partition where its kernel still
acks TCP keep-alive) look the same from the stream: nothing arrives. etcd's Go client tells them apart with gRPC
keepalive pings and WithRequireLeader; over the JSON gateway the equivalent is a small request beside the stream,
answered only by a live member that has a leader. The first one that fails ends the stream.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio


async def while_responsive(body: Callable[[], Awaitable[None]], probe: Callable[[], Awaitable[object]],
                           interval: float) -> None:
    """Run `body` with `probe` called every `interval` seconds beside it, until either raises.

    The first exception of either (body's own, or a failed probe's) cancels the other and is raised as it is, not
    in an exception group, so the caller's `except TransportError` sees it. `body` returning ends the probing.
    """
    failure: Exception | None = None

    async def guarded(task: Callable[[], Awaitable[None]], nursery: trio.Nursery) -> None:
        nonlocal failure
        try:
            await task()
        except Exception as e:  # handed to the caller below, whatever it is
            if failure is None:
                failure = e
        nursery.cancel_scope.cancel()

    async def probing() -> None:
        while True:
            await trio.sleep(interval)
            await probe()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(guarded, body, nursery)
        nursery.start_soon(guarded, probing, nursery)
    if failure is not None:
        raise failure
