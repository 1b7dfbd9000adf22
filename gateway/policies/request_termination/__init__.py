"""request-termination: Kong's fixed answer (status, message or body, or an echo of the request) without proxying."""

from typing import Any

from gateway.policies.request_termination.handler import RequestTermination
from gateway.policies.request_termination.schema import RequestTerminationConfig
from gateway.telemetry.node_id import gateway_node_id

name = "request-termination"
priority = RequestTermination.priority
schema = RequestTerminationConfig
consumer_scoped = True


def build(config: RequestTerminationConfig, plugin_id: str, shared: object, gateway: Any = None) -> RequestTermination:
    return RequestTermination(config, gateway_node_id(gateway) if config.echo else "")
