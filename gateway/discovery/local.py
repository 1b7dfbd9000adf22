"""`gateway run`'s discovery: the upstreams whose targets come from etcd or Consul, or whose configured targets name
hosts (resolved by gateway.discovery.dns into a target per address, as Kong's balancer makes them), followed in the
worker's own process, each list reported to the keeper's logic there (gateway.state.shared, run_local), as the
discovery process reports it over the bus under `gateway start` (process.py): an upstream's target name is the same
targets however the gateway runs (README: Upstreams)."""

from __future__ import annotations

import trio

from gateway.bus import protocol as p
from gateway.config import Config
from gateway.discovery.service import DiscoveryStatus, discovered_upstreams, first_wait, run_discovery
from gateway.discovery.types import TargetInfo
from gateway.state.shared import SharedState


async def run_local_discovery(config: Config, shared: SharedState, *,
                              task_status: trio.TaskStatus[DiscoveryStatus | None] = trio.TASK_STATUS_IGNORED) -> None:
    """Follow every upstream the discovery process follows (a registry's, or one naming hosts) until cancelled;
    started(status) once each made its first attempt, or after service.first_wait, as the discovery process is
    ready; started(None) at once when there is none."""
    upstreams = discovered_upstreams(config)
    if not upstreams:
        task_status.started(None)
        return
    send = shared.local_line(lambda msg: None)

    def on_targets(upstream: str, targets: list[TargetInfo]) -> None:
        send(p.Discovered(upstream=upstream, targets=list(targets)))

    await run_discovery(config, on_targets, first_wait_s=first_wait(config.gateway.worker_start_timeout_s),
                        upstreams=upstreams, task_status=task_status)
