"""The active health checker: one Trio task per target, probing at the interval its current state asks for.

    checker = await nursery.start(run_checks, upstreams_from_config(config), on_probe)
    checker.update_targets("erlmcp-cluster", targets)   # from discovery's on_change
    checker.set_health("erlmcp-cluster", "10.0.1.10:8080", False)   # the verdict the keeper published

It judges nothing itself: `on_probe(upstream, target key, event)` gets each probe's event, which the keeper counts
on the target's one state machine, with the passive outcomes (gateway.health.board, as Kong's one checker per
upstream). The keeper's verdict picks the interval, as Kong's checker_callback: healthy.interval while the target
gets traffic (healthy or mostly healthy), unhealthy.interval while it does not. As in Kong, a target is healthy
until told otherwise; a target with weight 0 gets no traffic and is not probed. At most `concurrency` probes per
upstream run at once; each is bounded by `timeout`.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import trio

from gateway.config.schema import Config
from gateway.config.tls import ref_id
from gateway.discovery.service import targets_by_upstream
from gateway.discovery.types import TargetInfo
from gateway.health.machine import Event
from gateway.health.policy import ActivePolicy
from gateway.health.probe import probe
from gateway.tls_runtime import compile_client_ssl

log = logging.getLogger("gateway.health")

CHECK_INTERVAL = 0.1  # lua-resty-healthcheck's
# (upstream, the target's key: "ip:port", or "hostname/ip:port" for an address of a name, what the probe found)
ProbeCallback = Callable[[str, str, Event], None]


@dataclass
class UpstreamChecks:
    """What the checker needs about one upstream."""

    name: str
    policy: ActivePolicy
    targets: list[TargetInfo] = field(default_factory=list)
    host_header: str | None = None


def upstreams_from_config(config: Config) -> list[UpstreamChecks]:
    """Every upstream whose active checks are on (an interval > 0), with the config's targets as a start."""
    out = []
    global_pair = None
    grouped: dict[str, list[TargetInfo]] | None = None  # (made once, for the first upstream with checks)
    for up in config.upstreams:
        policy = ActivePolicy.from_config(up.healthchecks)
        if not policy.enabled:
            continue
        if policy.type == "https":  # Kong's healthcheckers.lua: the upstream's client certificate, else client_ssl
            pair = _upstream_certificate(config, up.client_certificate)
            if pair is None and config.gateway.client_ssl:
                global_pair = global_pair or compile_client_ssl(config, [])
                pair = global_pair
            if pair is not None:
                policy = replace(policy, client_cert=pair)
        grouped = grouped if grouped is not None else targets_by_upstream(config)
        out.append(UpstreamChecks(up.name, policy, grouped.get(up.name, []), up.host_header))
    return out


def _upstream_certificate(config: Config, ref: object) -> tuple[str, str] | None:
    """The (certificate, key) of the certificate entity an upstream's client_certificate names, if any."""
    cert_id = ref_id(ref)  # type: ignore[arg-type]
    if cert_id is None:
        return None
    cert = next((c for c in config.certificates if c.id == cert_id), None)
    return None if cert is None else (cert.cert, cert.key)


class _Target:
    __slots__ = ("info", "healthy", "scope", "wake", "last_event", "last_probe")

    def __init__(self, info: TargetInfo) -> None:
        self.info = info
        self.healthy = True  # the keeper's verdict: it picks the interval
        self.scope = trio.CancelScope()
        self.wake = trio.Event()
        self.last_event: Event | None = None
        self.last_probe: float | None = None

    def poke(self) -> None:
        self.wake.set()
        self.wake = trio.Event()


class _Upstream:
    def __init__(self, spec: UpstreamChecks) -> None:
        self.spec = spec
        self.limiter = trio.CapacityLimiter(spec.policy.concurrency)
        self.targets: dict[str, _Target] = {}
        self.origin = 0.0  # when the checker took it (Kong's checker:start): its probe schedules count from here


class HealthChecker:
    def __init__(self, upstreams: list[UpstreamChecks], on_probe: ProbeCallback) -> None:
        self.upstreams = {u.name: _Upstream(u) for u in upstreams}
        self.on_probe = on_probe
        self._nursery: trio.Nursery | None = None

    # ---- the service --------------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[HealthChecker] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for name, up in self.upstreams.items():
                up.origin = trio.current_time()
                self._apply_targets(name, up.spec.targets)
            task_status.started(self)
            await trio.sleep_forever()

    def update_targets(self, upstream: str, targets: list[TargetInfo]) -> None:
        """The upstream's full current target list (discovery). New targets start healthy; gone ones are dropped."""
        up = self.upstreams.get(upstream)
        if up is None:
            return  # no active checks for this upstream
        up.spec.targets = list(targets)
        if self._nursery is not None:
            self._apply_targets(upstream, targets)

    def set_health(self, upstream: str, target: str, healthy: bool) -> None:
        """The target's verdict (the keeper's, from both checks): probing goes on at that state's interval."""
        up = self.upstreams.get(upstream)
        t = up.targets.get(target) if up else None
        if t is None or t.healthy == healthy:
            return
        t.healthy = healthy
        t.poke()  # its interval may have changed (healthy.interval vs unhealthy.interval)

    def snapshot(self) -> dict[str, dict[str, bool]]:
        return {name: {key: t.healthy for key, t in up.targets.items()} for name, up in self.upstreams.items()}

    def healthy(self, upstream: str, target: str) -> bool | None:
        """The verdict the target is probed by; None for a target not probed."""
        up = self.upstreams.get(upstream)
        t = up.targets.get(target) if up else None
        return t.healthy if t else None

    def check(self) -> tuple[str, dict[str, Any]]:
        """For the status server: unhealthy when an upstream with targets has none healthy, degraded when some
        target is down, else healthy."""
        status = "healthy"
        details: dict[str, Any] = {}
        for name, up in self.upstreams.items():
            healthy = [k for k, t in up.targets.items() if t.healthy]
            down = [k for k, t in up.targets.items() if not t.healthy]
            details[name] = {"healthy": len(healthy), "unhealthy": len(down), "down": sorted(down)}
            if down:
                status = "unhealthy" if not healthy else ("degraded" if status == "healthy" else status)
        return status, details

    # ---- per target ---------------------------------------------------------------------------------------------

    def _apply_targets(self, upstream: str, targets: list[TargetInfo]) -> None:
        up = self.upstreams[upstream]
        # by name, hostname included: two names at one ip:port are probed each with its Host (Kong's checker keys
        # targets by ip, port and hostname: healthcheckers.lua populate_healthchecker)
        wanted = {t.name: t for t in targets if t.weight > 0}
        for key in [k for k in up.targets if k not in wanted]:
            up.targets.pop(key).scope.cancel()
        assert self._nursery is not None
        for key, info in wanted.items():
            current = up.targets.get(key)
            if current is not None:
                current.info = info  # re-weighted: same state
                continue
            t = _Target(info)
            up.targets[key] = t
            self._nursery.start_soon(self._run_target, up, key, t)

    async def _run_target(self, up: _Upstream, key: str, t: _Target) -> None:
        policy = up.spec.policy
        with t.scope:
            # As Kong's checker:start, the first probe comes an interval after the target is taken (spread over a
            # moment, so many targets do not make one burst).
            await trio.sleep(random.random() * min(0.05, policy.interval_for(True) or 0.05))
            next_at = trio.current_time() + _period(policy.interval_for(t.healthy))
            while True:
                interval = policy.interval_for(t.healthy)
                if interval <= 0:
                    await t.wake.wait()  # nothing to do in this state until someone else changes it
                    next_at = _next_tick(up.origin, trio.current_time(), _period(policy.interval_for(t.healthy)))
                    continue
                wake = t.wake
                with trio.move_on_at(next_at):
                    await wake.wait()
                    # state changed from outside: the new state's next scheduled run (Kong: one schedule a state)
                    next_at = _next_tick(up.origin, trio.current_time(), _period(policy.interval_for(t.healthy)))
                    continue
                started = trio.current_time()
                async with up.limiter:
                    event = await probe(t.info.host, t.info.port, policy,
                                        up.spec.host_header or t.info.hostname or None)  # (a name's address: its name)
                t.last_probe = started
                t.last_event = event
                if event is not None:  # (None: a status in neither list, which Kong does not count)
                    self.on_probe(up.spec.name, key, event)
                next_at = started + _period(policy.interval_for(t.healthy))


def _next_tick(origin: float, now: float, period: float) -> float:
    """The next run, from `now` on, of a schedule of `period` started at `origin`: lua-resty-healthcheck probes the
    targets of a state when that state's `last_run + interval` is due (healthcheck.lua:1781-1787, last_run set at
    checker:start, :1404-1411), so a target entering a state waits for that state's next run, not a fresh probe."""
    return origin + math.ceil((now - origin) / period) * period


def _period(interval: float) -> float:
    """The time between two probes of a target: lua-resty-healthcheck probes from one timer that runs every 0.1 s
    (its CHECK_INTERVAL), so a shorter interval still waits that long."""
    return max(interval, CHECK_INTERVAL)


async def run_checks(upstreams: list[UpstreamChecks], on_probe: ProbeCallback, *,
                     task_status: trio.TaskStatus[HealthChecker] = trio.TASK_STATUS_IGNORED) -> None:
    """Run active checks until cancelled; task_status.started(checker) once every target's task is scheduled."""
    await HealthChecker(upstreams, on_probe).run(task_status=task_status)
