"""The health checker process (`gateway health`): one copy for the whole gateway, supervised by the root (its shell:
gateway.node.satellites), probing every target with active checks and reporting what each probe found to the state
keeper. The keeper counts those with the passive outcomes on each target's one state machine (Kong's) and publishes
the verdicts; the ones taken in here pick each target's probe interval, and are what this process re-sends to a new
keeper (gateway.bus.protocol.HealthReport)."""

from __future__ import annotations

import trio
import zmq

from gateway.bus import protocol as p
from gateway.bus.reporter import Reporter
from gateway.config import Config
from gateway.health.checker import HealthChecker, run_checks, upstreams_from_config
from gateway.health.machine import Event


async def serve(config: Config, bus: str, ctx: zmq.Context, nursery: trio.Nursery) -> None:
    """Start the checks in `nursery`, reporting on `bus`."""
    checker: HealthChecker | None = None
    verdicts: dict[tuple[str, str], bool] = {}  # as the keeper last published them
    found: list[tuple[str, str, p.ProbeEvent]] = []
    have_found = trio.Event()

    def on_probe(upstream: str, target: str, event: Event) -> None:
        found.append((upstream, target, event.value))
        have_found.set()

    async def send_found() -> None:
        """Probes that end together go in one message."""
        nonlocal have_found
        while True:
            await have_found.wait()
            have_found = trio.Event()
            reporter.send(p.ProbeOutcomes(items=found[:]))
            found.clear()

    def on_message(msg: p.Msg) -> None:
        if checker is None:
            return
        if isinstance(msg, p.UpstreamTargets):
            _take_targets(checker, verdicts, msg)
        elif isinstance(msg, p.Snapshot):
            for up in msg.upstreams:
                _take_targets(checker, verdicts, up)
        if isinstance(msg, (p.TargetsChanged, p.Snapshot)):
            for state in msg.targets:
                if state.healthy is None:  # a new keeper that has no verdicts yet: keep ours
                    continue
                upstream, _, target = state.key.partition("|")
                verdicts[(upstream, target)] = state.healthy
                checker.set_health(upstream, target, state.healthy)

    def resend() -> None:  # sent even when empty: a new keeper waits for it before publishing verdicts
        reporter.send(p.HealthReport(items=[(u, t, False) for (u, t), healthy in sorted(verdicts.items())
                                            if not healthy]))

    reporter = Reporter(ctx, bus, on_message, resend)
    nursery.start_soon(reporter.run)
    nursery.start_soon(send_found)
    checker = await nursery.start(run_checks, upstreams_from_config(config), on_probe)


def _take_targets(checker: HealthChecker, verdicts: dict[tuple[str, str], bool], msg: p.UpstreamTargets) -> None:
    """Discovery's new list: probe it, with the verdicts known of the targets that stay."""
    names = {t.name for t in msg.targets}
    for key in [k for k in verdicts if k[0] == msg.upstream and k[1] not in names]:
        del verdicts[key]
    checker.update_targets(msg.upstream, msg.targets)
    for (upstream, target), healthy in verdicts.items():
        if upstream == msg.upstream:
            checker.set_health(upstream, target, healthy)
