"""The shell of the health checker and discovery processes (`gateway health`, `gateway discovery`; their work:
gateway.health.process, gateway.discovery.process): one copy each for the whole gateway, supervised by the root,
each serving until SIGTERM or its parent's exit, with this process's DNS client from the config's dns_* keys."""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable

import trio
import zmq

from gateway.config import Config, load_config
from gateway.dns import process as dns
from gateway.node.files import current_config
from gateway.node.orphan import parent_or_exit, stop_when_orphaned
from gateway.node.paths import absolute_endpoint
from gateway.node.start_only import inherited


async def _serve_until_sigterm(config: Config, service: Callable[[zmq.Context, trio.Nursery], Awaitable[None]],
                               ready: Callable[[], None], parent: int) -> None:
    ctx = zmq.Context()
    try:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with dns.serving(config.gateway), trio.open_nursery() as nursery:
                nursery.start_soon(stop_when_orphaned, parent)
                await service(ctx, nursery)
                ready()
                async for _ in signals:
                    break
                nursery.cancel_scope.cancel()
    finally:
        ctx.term()


def run_satellite(kind: str, config_path: str) -> int:
    """`gateway health` / `gateway discovery`: the processes the root supervises."""
    from functools import partial

    from supervisor import notify_ready

    if kind == "health":
        from gateway.health.process import serve
    else:
        from gateway.discovery.process import serve
    parent = parent_or_exit()
    # (the copy in the format of the file the root runs from now); the bus of the start, whatever a reload wrote there
    config = inherited(load_config(current_config(config_path)))
    service = partial(serve, config, absolute_endpoint(config.gateway.bus))
    trio.run(lambda: _serve_until_sigterm(config, service, notify_ready, parent))
    return 0
