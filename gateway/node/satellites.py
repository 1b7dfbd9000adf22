"""The health checker and discovery processes (`gateway health`, `gateway discovery`): one copy each for the whole
gateway, supervised by the root, reporting to the state keeper, which publishes to every worker.

Each re-sends its whole view when it sees a new keeper incarnation, so a restarted keeper learns the state again.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable

import trio
import zmq

from gateway.bus import protocol as p
from gateway.bus.channel import KeeperChannel
from gateway.config import Config, load_config
from gateway.discovery import run_discovery
from gateway.dns import process as dns
from gateway.health.checker import HealthChecker, run_checks, upstreams_from_config
from gateway.node.orphan import parent_or_exit, stop_when_orphaned
from gateway.node.paths import absolute_endpoint

log = logging.getLogger("gateway.satellite")

# The whole view is sent again this often: reports are idempotent, and one sent while the keeper's sockets were
# coming back (a restart) may be lost, which would leave the new keeper with a wrong view until the next change.
RESEND_S = 1.0


async def _every(seconds: float, action: Callable[[], None]) -> None:
    while True:
        await trio.sleep(seconds)
        action()


class _Reporter:
    """A satellite's channel to the keeper that notices a new keeper incarnation (to re-send its whole view)."""

    def __init__(self, ctx: zmq.Context, config: Config, on_message: Callable[[p.Msg], None],
                 on_new_keeper: Callable[[], None]) -> None:
        self.channel = KeeperChannel(ctx, absolute_endpoint(config.gateway.bus), self._on_message)
        self._forward = on_message
        self._on_new_keeper = on_new_keeper
        self.incarnation = ""

    def send(self, msg: p.Msg) -> None:
        self.channel.send(msg)

    def _on_message(self, msg: p.Msg) -> None:
        if isinstance(msg, p.Heartbeat):
            if msg.incarnation != self.incarnation:
                self.incarnation = msg.incarnation
                self._on_new_keeper()
        else:
            self._forward(msg)


async def _serve_until_sigterm(config: Config, service: Callable[[zmq.Context, trio.Nursery], object],
                               ready: Callable[[], None], parent: int) -> None:
    ctx = zmq.Context()
    try:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with dns.serving(config.gateway), trio.open_nursery() as nursery:
                nursery.start_soon(stop_when_orphaned, parent)
                await service(ctx, nursery)  # type: ignore[misc]
                ready()
                async for _ in signals:
                    break
                nursery.cancel_scope.cancel()
    finally:
        ctx.term()


async def _health(config: Config, ctx: zmq.Context, nursery: trio.Nursery) -> None:
    checker: HealthChecker | None = None
    unhealthy: set[tuple[str, str]] = set()

    def on_change(upstream: str, target: str, healthy: bool) -> None:
        (unhealthy.discard if healthy else unhealthy.add)((upstream, target))
        channel.send(p.HealthReport(items=[(upstream, target, healthy)]))

    def on_message(msg: p.Msg) -> None:
        if checker is None:
            return
        if isinstance(msg, p.UpstreamTargets):
            checker.update_targets(msg.upstream, msg.targets)
        elif isinstance(msg, p.Snapshot):
            for up in msg.upstreams:
                checker.update_targets(up.upstream, up.targets)
        if isinstance(msg, (p.TargetsChanged, p.Snapshot)):  # passive verdicts: probing goes on from them
            for state in msg.targets:
                upstream, _, target = state.key.partition("|")
                ours = (upstream, target) not in unhealthy
                if state.healthy is not None and checker.state(upstream, target) is not None and ours != state.healthy:
                    (unhealthy.discard if state.healthy else unhealthy.add)((upstream, target))
                    checker.set_health(upstream, target, state.healthy)

    def on_new_keeper() -> None:  # sent even when empty: the keeper waits for it before publishing verdicts
        channel.send(p.HealthReport(items=[(u, t, False) for u, t in sorted(unhealthy)]))

    channel = _Reporter(ctx, config, on_message, on_new_keeper)
    nursery.start_soon(channel.channel.run)
    nursery.start_soon(_every, RESEND_S, on_new_keeper)
    checker = await nursery.start(run_checks, upstreams_from_config(config), on_change)


async def _discovery(config: Config, ctx: zmq.Context, nursery: trio.Nursery) -> None:
    known: dict[str, list[p.TargetInfo]] = {}

    def on_targets(upstream: str, targets: list[p.TargetInfo]) -> None:
        known[upstream] = list(targets)
        channel.send(p.Discovered(upstream=upstream, targets=list(targets)))

    def on_new_keeper() -> None:
        for upstream, targets in known.items():
            channel.send(p.Discovered(upstream=upstream, targets=targets))

    channel = _Reporter(ctx, config, lambda msg: None, on_new_keeper)
    nursery.start_soon(channel.channel.run)
    nursery.start_soon(_every, RESEND_S, on_new_keeper)
    await nursery.start(run_discovery, config, on_targets)


def run_satellite(kind: str, config_path: str) -> int:
    """`gateway health` / `gateway discovery`: the processes the root supervises."""
    from functools import partial

    from supervisor import notify_ready

    parent = parent_or_exit()
    config = load_config(config_path)
    service = _health if kind == "health" else _discovery
    trio.run(lambda: _serve_until_sigterm(config, partial(service, config), notify_ready, parent))
    return 0
