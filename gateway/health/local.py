"""`gateway run`'s active checks: the health checker in the worker's own process, its probes counted by the keeper's
logic there (gateway.state.shared, run_local) and that keeper's verdicts picking each target's probe interval, as the
health process does over the bus (process.py). Kong runs the checks of an upstream however it is started
(kong/runloop/balancer/healthcheckers.lua create_healthchecker)."""

from __future__ import annotations

import trio

from gateway.bus import protocol as p
from gateway.config import Config
from gateway.health.checker import run_checks, upstreams_from_config
from gateway.health.machine import Event
from gateway.health.process import Verdicts
from gateway.state.shared import SharedState


async def run_local_checks(config: Config, shared: SharedState, *,
                           task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Probe every target with active checks until cancelled, reporting to the keeper `shared.run_local` runs; with
    none, return at once."""
    upstreams = upstreams_from_config(config)
    if not upstreams:
        task_status.started()
        return
    verdicts: Verdicts | None = None

    def on_probe(upstream: str, target: str, event: Event) -> None:
        send(p.ProbeOutcomes(items=[(upstream, target, event.value)]))

    def on_message(msg: p.Msg) -> None:
        if verdicts is not None:
            verdicts.on_message(msg)

    send = shared.local_line(on_message)
    async with trio.open_nursery() as nursery:
        verdicts = Verdicts(await nursery.start(run_checks, upstreams, on_probe))
        send(verdicts.report())  # the keeper waits for the checker's view before it publishes verdicts
        task_status.started()
