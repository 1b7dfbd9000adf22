"""datadog: Kong's DogStatsD metrics per request, to a Datadog agent over UDP."""

from gateway.policies.datadog.handler import Datadog
from gateway.policies.datadog.schema import DatadogConfig

name = "datadog"
priority = Datadog.priority
schema = DatadogConfig
consumer_scoped = True


def build(config: DatadogConfig, plugin_id: str, shared: object) -> Datadog:
    return Datadog(config, plugin_id)
