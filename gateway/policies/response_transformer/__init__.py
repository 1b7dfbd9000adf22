"""response-transformer: Kong's changes to response headers and to JSON response bodies."""

from gateway.policies.response_transformer.handler import ResponseTransformer
from gateway.policies.response_transformer.schema import ResponseTransformerConfig

name = "response-transformer"
priority = ResponseTransformer.priority
schema = ResponseTransformerConfig
consumer_scoped = True


def build(config: ResponseTransformerConfig, plugin_id: str, shared: object) -> ResponseTransformer:
    return ResponseTransformer(config)
