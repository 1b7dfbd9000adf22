"""opentelemetry: Kong's plugin: trace context propagation (w3c, b3, b3-single, jaeger) and spans over OTLP/HTTP."""

from gateway.policies.opentelemetry.handler import OpenTelemetry
from gateway.policies.opentelemetry.schema import OpenTelemetryConfig

name = "opentelemetry"
priority = OpenTelemetry.priority
schema = OpenTelemetryConfig
consumer_scoped = True


def build(config: OpenTelemetryConfig, plugin_id: str, shared: object) -> OpenTelemetry:
    return OpenTelemetry(config, plugin_id)
