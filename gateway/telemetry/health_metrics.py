"""Kong's kong_upstream_target_health, set by the state keeper (which holds every target's verdict) at each
metrics flush, when a prometheus plugin turns upstream_health_metrics on."""

from __future__ import annotations

from typing import Any

from gateway.config import Config
from gateway.discovery.dns import target_names
from gateway.metrics import KONG_TARGET_HEALTH

STATES = ("healthchecks_off", "healthy", "unhealthy", "dns_error")


def has_checks(upstream: Any) -> bool:
    """Kong's healthchecks_off is an upstream with neither active nor passive checks."""
    checks = upstream.healthchecks
    active = checks.active
    passive = checks.passive.unhealthy
    return bool(active.healthy.interval or active.unhealthy.interval or checks.check is not None
                or passive.http_failures or passive.tcp_failures or passive.timeouts)


class TargetHealthMetrics:
    """What one config says about target health metrics: whether to export them, and which upstreams check."""

    def __init__(self, config: Config) -> None:
        from gateway.policies.prometheus import upstream_health_enabled

        self.enabled = upstream_health_enabled(config.plugins)
        self.upstreams = {up.name for up in config.upstreams}
        self.checked = {up.name for up in config.upstreams if has_checks(up)}

    def sample(self, targets: dict[str, Any], discovered: dict[str, list[Any]] | None = None) -> None:
        """`targets`: "<upstream>|<host:port>" -> its state (`healthy`: True, False or None: no verdict yet).
        `discovered`: the sources' target lists (TargetInfo), where an address of a name is labelled as Kong labels
        it (target `name:port`, address `ip:port`) and a name that never resolved is in state dns_error, with an
        empty address."""
        seen = set()
        if self.enabled:
            named, unresolved = target_names(discovered or {})
            for key, state in targets.items():
                upstream, _, target = key.partition("|")
                if upstream not in self.upstreams:
                    continue  # a service's own host: Kong reports upstream entities only
                if key in unresolved:
                    current = "dns_error"
                elif upstream not in self.checked:
                    current = "healthchecks_off"
                else:
                    current = "unhealthy" if state.healthy is False else "healthy"
                address = "" if current == "dns_error" else target  # Kong's: no address for a name without one
                for name in STATES:
                    labels = (upstream, named.get(key, target), address, name, "http")
                    KONG_TARGET_HEALTH.labels(*labels).set(1 if name == current else 0)
                    seen.add(labels)
        for known in list(KONG_TARGET_HEALTH._metrics):
            if known not in seen:
                KONG_TARGET_HEALTH.remove(*known)

