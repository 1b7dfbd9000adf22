"""The health checker process (`gateway health`): one copy for the whole gateway, supervised by the root (its shell:
gateway.node.satellites), probing every target with active checks and reporting what each probe found to the state
keeper. The keeper counts those with the passive outcomes on each target's one state machine (Kong's) and publishes
the verdicts; the ones taken in here pick each target's probe interval, and are what this process re-sends to a new
keeper (gateway.bus.protocol.HealthReport). `gateway run` runs the same checks in its one process (local.py)."""

from __future__ import annotations

import trio
import zmq

from gateway.bus import protocol as p
from gateway.bus.reporter import Reporter
from gateway.config import Config
from gateway.health.checker import HealthChecker, run_checks, upstreams_from_config
from gateway.health.machine import Event


class Verdicts:
    """The keeper's verdicts as the checker follows them: each picks its target's probe interval, and the whole
    view is what a new keeper is told (`report`)."""

    def __init__(self, checker: HealthChecker) -> None:
        self.checker = checker
        self.known: dict[tuple[str, str], bool] = {}  # as the keeper last published them

    def on_message(self, msg: p.Msg) -> None:
        """A message from the keeper: discovery's lists and the verdicts it publishes."""
        if isinstance(msg, p.UpstreamTargets):
            self._take_targets(msg)
        elif isinstance(msg, p.Snapshot):
            for up in msg.upstreams:
                self._take_targets(up)
        if isinstance(msg, (p.TargetsChanged, p.Snapshot)):
            for state in msg.targets:
                if state.healthy is None:  # a new keeper that has no verdicts yet: keep ours
                    continue
                upstream, _, target = state.key.partition("|")
                self.known[(upstream, target)] = state.healthy
                self.checker.set_health(upstream, target, state.healthy)

    def report(self) -> p.HealthReport:
        """The view, as the targets held unhealthy (possibly none: a new keeper waits for it all the same)."""
        return p.HealthReport(items=[(u, t, False) for (u, t), healthy in sorted(self.known.items()) if not healthy])

    def _take_targets(self, msg: p.UpstreamTargets) -> None:
        """Discovery's new list: probe it, with the verdicts known of the targets that stay."""
        names = {t.name for t in msg.targets}
        for key in [k for k in self.known if k[0] == msg.upstream and k[1] not in names]:
            del self.known[key]
        self.checker.update_targets(msg.upstream, msg.targets)
        for (upstream, target), healthy in self.known.items():
            if upstream == msg.upstream:
                self.checker.set_health(upstream, target, healthy)


async def serve(config: Config, bus: str, ctx: zmq.Context, nursery: trio.Nursery) -> None:
    """Start the checks in `nursery`, reporting on `bus`."""
    verdicts: Verdicts | None = None
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
        if verdicts is not None:
            verdicts.on_message(msg)

    def resend() -> None:  # sent even when empty: a new keeper waits for it before publishing verdicts
        reporter.send(verdicts.report() if verdicts is not None else p.HealthReport())

    reporter = Reporter(ctx, bus, on_message, resend)
    nursery.start_soon(reporter.run)
    nursery.start_soon(send_found)
    verdicts = Verdicts(await nursery.start(run_checks, upstreams_from_config(config), on_probe))
