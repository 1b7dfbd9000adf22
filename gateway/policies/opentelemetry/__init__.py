"""opentelemetry: Kong's plugin: trace context propagation (all of Kong's formats) and, as the gateway's
tracing_instrumentations and tracing_sampling_rate (kong.conf's) turn them on, Kong's spans over OTLP/HTTP."""

from __future__ import annotations

from typing import Any

from gateway.policies.opentelemetry.handler import OpenTelemetry, OpenTelemetryWithHeader
from gateway.policies.opentelemetry.schema import OpenTelemetryConfig
from gateway.telemetry.node_id import gateway_node_id
from gateway.telemetry.tracing import TracingSettings

name = "opentelemetry"
priority = OpenTelemetry.priority
schema = OpenTelemetryConfig
consumer_scoped = True


def build(config: OpenTelemetryConfig, plugin_id: str, shared: object, gateway: Any = None) -> OpenTelemetry:
    cls = OpenTelemetryWithHeader if config.http_response_header_for_traceid else OpenTelemetry
    return cls(config, plugin_id, gateway_node_id(gateway), tracing=TracingSettings.of(gateway))
