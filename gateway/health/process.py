"""The health checker process (`gateway health`): one copy for the whole gateway, supervised by the root (its shell:
gateway.node.satellites), probing every target with active checks and reporting verdicts to the state keeper, which
publishes them to every worker. Passive verdicts the keeper publishes are taken in, so probing goes on from them."""

from __future__ import annotations

import trio
import zmq

from gateway.bus import protocol as p
from gateway.bus.reporter import Reporter
from gateway.config import Config
from gateway.health.checker import HealthChecker, run_checks, upstreams_from_config


async def serve(config: Config, bus: str, ctx: zmq.Context, nursery: trio.Nursery) -> None:
    """Start the checks in `nursery`, reporting on `bus`."""
    checker: HealthChecker | None = None
    unhealthy: set[tuple[str, str]] = set()

    def on_change(upstream: str, target: str, healthy: bool) -> None:
        (unhealthy.discard if healthy else unhealthy.add)((upstream, target))
        reporter.send(p.HealthReport(items=[(upstream, target, healthy)]))

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

    def resend() -> None:  # sent even when empty: the keeper waits for it before publishing verdicts
        reporter.send(p.HealthReport(items=[(u, t, False) for u, t in sorted(unhealthy)]))

    reporter = Reporter(ctx, bus, on_message, resend)
    nursery.start_soon(reporter.run)
    checker = await nursery.start(run_checks, upstreams_from_config(config), on_change)
