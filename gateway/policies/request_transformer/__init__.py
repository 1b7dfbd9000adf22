"""request-transformer: Kong's changes to the request before it is proxied (method, headers, query, body)."""

from gateway.policies.request_transformer.handler import RequestTransformer
from gateway.policies.request_transformer.schema import RequestTransformerConfig

name = "request-transformer"
priority = RequestTransformer.priority
schema = RequestTransformerConfig
consumer_scoped = True


def build(config: RequestTransformerConfig, plugin_id: str, shared: object) -> RequestTransformer:
    return RequestTransformer(config)
