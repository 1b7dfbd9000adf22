"""The discovery process (`gateway discovery`): one copy for the whole gateway, supervised by the root (its shell:
gateway.node.satellites), following etcd and Consul and resolving target names, reporting each upstream's targets to
the state keeper, which publishes them to every worker."""

from __future__ import annotations

from functools import partial

import trio
import zmq

from gateway.bus import protocol as p
from gateway.bus.reporter import Reporter
from gateway.config import Config
from gateway.discovery import run_discovery
from gateway.discovery.service import first_wait


async def serve(config: Config, bus: str, ctx: zmq.Context, nursery: trio.Nursery) -> None:
    """Start the watches in `nursery`, reporting on `bus`; returns (the process is ready) once each source made its
    first attempt, or sooner (service.first_wait): a hung etcd or Consul must not fail the gateway's start or a
    reload."""
    known: dict[str, list[p.TargetInfo]] = {}

    def on_targets(upstream: str, targets: list[p.TargetInfo]) -> None:
        known[upstream] = list(targets)
        reporter.send(p.Discovered(upstream=upstream, targets=list(targets)))

    def resend() -> None:
        for upstream, targets in known.items():
            reporter.send(p.Discovered(upstream=upstream, targets=targets))

    reporter = Reporter(ctx, bus, lambda msg: None, resend)
    nursery.start_soon(reporter.run)
    await nursery.start(partial(run_discovery, config, on_targets,
                                first_wait_s=first_wait(config.gateway.worker_start_timeout_s)))
