"""The discovery service: one source per upstream that has a `discovery:` block, or whose configured targets name
hosts (gateway.discovery.dns), all in one Trio task tree.

    status = await nursery.start(run_discovery, config, on_change)

`on_change(upstream, targets)` receives each upstream's full current list whenever it changes (the first call
per upstream is its initial list, which may come after the start). `status.check()` summarises every source for
the status server.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio

from gateway.config.discovery import DiscoverySettings
from gateway.config.loader import DEFAULT_TARGET_PORT
from gateway.config.loader import parse_host_port as config_host_port
from gateway.config.schema import Config, Upstream
from gateway.config.typedefs import kong_address
from gateway.discovery.backoff import LinkState
from gateway.discovery.consul import run_consul
from gateway.discovery.dns import has_names, run_dns
from gateway.discovery.etcd import run_etcd
from gateway.discovery.types import OnChange, TargetInfo, normalise

log = logging.getLogger("gateway.discovery")

# A registry answers its first request within milliseconds, or hangs for up to its timeout_s: the discovery process
# reports ready after this at most, within the worker_start_timeout_s its supervisor gives it (first_wait).
FIRST_WAIT_S = 1.0


def first_wait(start_timeout_s: float) -> float:
    """How long the discovery process waits for its sources' first answers before it reports ready: FIRST_WAIT_S,
    or a quarter of the start timeout its supervisor gives it when that is shorter (the rest is the process's own
    start)."""
    return min(FIRST_WAIT_S, start_timeout_s / 4)


def target_address(target: str) -> tuple[str, int] | None:
    """A config target's (host, port) as Kong's balancer takes it (kong/db/dao/targets.lua format_target): port 8000
    when it names none (a bare IPv6 address too), an IPv4 address as kong/tools/ip.lua normalize_ipv4 writes it
    (`127.000.000.001` is 127.0.0.1) and an IPv6 one in a single spelling, so that the workers, the health process
    and discovery name a target alike. None for what the loader refuses."""
    address = config_host_port(target, DEFAULT_TARGET_PORT, lowest=0)
    if address is None:
        return None
    host, port = address[0], DEFAULT_TARGET_PORT if address[1] is None else address[1]  # (0 is a port: Kong's)
    kong = kong_address(host)
    if ":" in host:  # normalize_ipv6's reading (`:1:2:3:4:5:6:7` is 0:1:...), then one spelling of it
        return (str(ipaddress.IPv6Address(kong[1])), port) if isinstance(kong, tuple) else None
    return (kong[1] if isinstance(kong, tuple) and kong[0] == "ipv4" else host), port


def config_targets(config: Config, upstream: str) -> list[TargetInfo]:
    """The targets the config lists for an upstream (after the loader moved nested targets to config.targets)."""
    return targets_by_upstream(config).get(upstream, [])


def targets_by_upstream(config: Config) -> dict[str, list[TargetInfo]]:
    """Every upstream's config targets (config_targets'), in one pass over config.targets: what asks for many
    upstreams' takes them from here, as Kong selects each upstream's targets by its id, never scanning all of them
    per upstream (1,000 upstreams of 12 targets each: 12,000 looked at, not 12 million)."""
    grouped: dict[str, list[TargetInfo]] = {}
    for t in config.targets:
        if t.upstream is not None and (address := target_address(t.target)) is not None:
            grouped.setdefault(t.upstream, []).append(TargetInfo(address[0], address[1], t.weight))
    return {name: normalise(targets) for name, targets in grouped.items()}


async def run_static(upstream: str, targets: list[TargetInfo], on_change: OnChange, *,
                     task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Report a fixed list once, then wait (so every source has the same shape)."""
    on_change(upstream, normalise(list(targets)))
    task_status.started()
    await trio.sleep_forever()


class DiscoveryStatus:
    """Per-upstream source state, for the status server's `discovery` check."""

    def __init__(self) -> None:
        self.links: dict[str, LinkState] = {}
        self.static: dict[str, int] = {}

    def check(self) -> tuple[str, dict[str, Any]]:
        """("healthy" | "degraded" | "unhealthy", details): degraded while some registry is unreachable (the
        gateway keeps serving the last known targets), unhealthy when every dynamic source is down."""
        details: dict[str, Any] = {name: link.details() for name, link in self.links.items()}
        for name, count in self.static.items():
            details[name] = {"state": "ok", "type": "static", "targets": count}
        down = [name for name, link in self.links.items() if link.state == "down"]
        if not down:
            return "healthy", details
        return ("unhealthy" if len(down) == len(self.links) else "degraded"), details


def discovered_upstreams(config: Config) -> list[Upstream]:
    """The upstreams whose targets a source reports: a registry's, or their configured names resolved."""
    grouped = targets_by_upstream(config)
    return [up for up in config.upstreams if up.discovery is not None or has_names(grouped.get(up.name, []))]


async def run_source(upstream: Upstream, config: Config, on_change: OnChange, *, status: DiscoveryStatus,
                     task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    settings: DiscoverySettings | None = upstream.discovery
    name = upstream.name
    if settings is None or settings.type == "static":
        targets = config_targets(config, name)
        status.static[name] = len(targets)
        if has_names(targets):
            await run_dns(name, targets, on_change, upstream.use_srv_name, task_status=task_status)
        else:
            await run_static(name, targets, on_change, task_status=task_status)
        return
    runner = run_etcd if settings.type == "etcd" else run_consul
    what = (f"etcd {settings.etcd_prefix(name)}" if settings.type == "etcd"
            else f"consul service {settings.consul_service(name)}")
    link = LinkState(f"discovery: upstream {name} ({what})", log)
    status.links[name] = link
    await runner(name, settings, on_change, link=link, task_status=task_status)


async def run_discovery(config: Config, on_change: OnChange, *, first_wait_s: float = FIRST_WAIT_S,
                        upstreams: list[Upstream] | None = None,
                        task_status: trio.TaskStatus[DiscoveryStatus] = trio.TASK_STATUS_IGNORED) -> None:
    """Run every upstream's source (or those of `upstreams`) until cancelled; started(status) once each source made
    its first attempt, or after `first_wait_s`, whichever comes first: a registry that answers is in the first
    report, one that hangs (a first request may take its whole `timeout_s`) delays the start by at most that, and
    reports when it answers.

    Upstreams without a `discovery:` block whose targets are addresses are not reported: their config targets are
    already in the runtime.
    """
    status = DiscoveryStatus()
    async with trio.open_nursery() as nursery:
        attempted: dict[str, trio.Event] = {}
        for up in discovered_upstreams(config) if upstreams is None else upstreams:  # (in parallel: one slow
            # registry delays no other)
            attempted[up.name] = trio.Event()
            nursery.start_soon(_flag_started, partial(run_source, up, config, on_change, status=status),
                               attempted[up.name])
        with trio.move_on_after(first_wait_s):
            for event in attempted.values():
                await event.wait()
        if waiting := [name for name, event in attempted.items() if not event.is_set()]:
            log.info("discovery: ready without a first answer for upstream(s) %s after %gs; their targets follow "
                     "when their registry answers", ", ".join(waiting), first_wait_s)
        task_status.started(status)
        await trio.sleep_forever()


async def _flag_started(source: Callable[..., Awaitable[None]], started: trio.Event) -> None:
    """Run `source` (a run_source), setting `started` once it has made its first attempt."""
    async with trio.open_nursery() as nursery:
        await nursery.start(source)
        started.set()
