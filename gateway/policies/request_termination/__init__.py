"""request-termination: Kong's fixed answer (status, message or body, or an echo of the request) without proxying."""

from gateway.policies.request_termination.handler import RequestTermination
from gateway.policies.request_termination.schema import RequestTerminationConfig

name = "request-termination"
priority = RequestTermination.priority
schema = RequestTerminationConfig
consumer_scoped = True


def build(config: RequestTerminationConfig, plugin_id: str, shared: object) -> RequestTermination:
    return RequestTermination(config)
