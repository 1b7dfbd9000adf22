"""Kong's kong_upstream_target_health, set by the state keeper (which holds every target's verdict) at each
metrics flush, when a prometheus plugin turns upstream_health_metrics on, and published whole (a StateGauge), so
/metrics shows the targets and upstreams of the current config only."""

from __future__ import annotations

from typing import Any

from gateway.config import Config
from gateway.discovery.dns import target_names
from gateway.discovery.service import target_address
from gateway.discovery.types import key_address
from gateway.metrics import KONG_TARGET_HEALTH

STATES = ("healthchecks_off", "healthy", "unhealthy", "dns_error")


def has_checks(upstream: Any) -> bool:
    """Kong's healthchecks_off is an upstream with neither active nor passive checks."""
    checks = upstream.healthchecks
    active = checks.active
    passive = checks.passive.unhealthy
    return bool(active.healthy.interval or active.unhealthy.interval or checks.check is not None
                or passive.http_failures or passive.tcp_failures or passive.timeouts)


def target_health(checked: bool, weight: int, healthy: bool | None) -> str:
    """Kong's health of a target's address (healthcheckers.lua get_upstream_health: `using_hc and target.weight > 0`),
    for both /metrics and the Status API: healthchecks_off unless its upstream checks and the target has weight;
    None (no verdict yet) is healthy, as Kong's checker starts every target healthy."""
    if not checked or weight <= 0:
        return "healthchecks_off"
    return "unhealthy" if healthy is False else "healthy"


def _configured_weights(config: Config) -> dict[str, int]:
    """"<upstream>|<host:port>" -> the weight the config gives that target (spelled as the runtime names it)."""
    weights = {}
    for target in config.targets:
        hostport = target_address(target.target)
        if hostport is not None:
            host, port = hostport
            name = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            weights[f"{target.upstream}|{name}"] = target.weight
    return weights


class TargetHealthMetrics:
    """What one config says about target health metrics: whether to export them, and which upstreams check."""

    def __init__(self, config: Config) -> None:
        from gateway.policies.prometheus import upstream_health_enabled

        self.enabled = upstream_health_enabled(config.plugins)
        self.upstreams = {up.name for up in config.upstreams}
        self.checked = {up.name for up in config.upstreams if has_checks(up)}
        self.weights = _configured_weights(config)

    def sample(self, targets: dict[str, Any], discovered: dict[str, list[Any]] | None = None) -> None:
        """`targets`: "<upstream>|<host:port>" -> its state (`healthy`: True, False or None: no verdict yet).
        `discovered`: the sources' target lists (TargetInfo), where an address of a name is labelled as Kong labels
        it (target `name:port`, address `ip:port`) and a name that never resolved is in state dns_error, with an
        empty address."""
        seen = set()
        if self.enabled:
            named, unresolved = target_names(discovered or {})
            # an address DNS made has its configured target's weight (Kong: `target.weight > 0`), not a record's
            weights = self.weights | {f"{upstream}|{info.name}": self.weights.get(f"{upstream}|{info.target}",
                                                                                   info.weight)
                                      for upstream, infos in (discovered or {}).items() for info in infos}
            for key, state in targets.items():
                upstream, _, target = key.partition("|")
                if upstream not in self.upstreams:
                    continue  # a service's own host: Kong reports upstream entities only
                if key in unresolved:
                    current = "dns_error"
                else:
                    current = target_health(upstream in self.checked, weights.get(key, 1), state.healthy)
                address = "" if current == "dns_error" else key_address(target)  # (Kong: none for a name without one)
                for name in STATES:
                    labels = (upstream, named.get(key, target), address, name, "http")
                    KONG_TARGET_HEALTH.labels(*labels).set(1 if name == current else 0)
                    seen.add(labels)
        for known in list(KONG_TARGET_HEALTH._metrics):
            if known not in seen:
                KONG_TARGET_HEALTH.remove(*known)
        KONG_TARGET_HEALTH.publish()

