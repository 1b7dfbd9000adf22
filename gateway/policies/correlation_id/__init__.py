"""correlation-id: Kong's per-request id in a header, sent upstream and optionally echoed to the client."""

from gateway.policies.correlation_id.handler import CorrelationId, EchoingCorrelationId
from gateway.policies.correlation_id.schema import CorrelationIdConfig

name = "correlation-id"
priority = CorrelationId.priority
schema = CorrelationIdConfig
consumer_scoped = True


def build(config: CorrelationIdConfig, plugin_id: str, shared: object) -> CorrelationId:
    return EchoingCorrelationId(config) if config.echo_downstream else CorrelationId(config)
