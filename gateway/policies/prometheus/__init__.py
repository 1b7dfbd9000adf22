"""prometheus: Kong's metric families (kong_*) for the requests it applies to, from its log step."""

from gateway.policies.prometheus.handler import Prometheus
from gateway.policies.prometheus.schema import PrometheusConfig

name = "prometheus"
priority = Prometheus.priority
schema = PrometheusConfig
consumer_scoped = True


def build(config: PrometheusConfig, plugin_id: str, shared: object) -> Prometheus:
    return Prometheus(config)


def upstream_health_enabled(plugins: list) -> bool:  # type: ignore[type-arg]
    """Kong exports target health when any enabled prometheus instance turns upstream_health_metrics on."""
    return any(p.name == name and p.enabled and p.config.get("upstream_health_metrics") is True for p in plugins)
