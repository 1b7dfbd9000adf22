"""request-size-limiting: Kong's body size limit (413)."""

from gateway.policies.request_size_limiting.handler import RequestSizeLimiting
from gateway.policies.request_size_limiting.schema import RequestSizeLimitingConfig

name = "request-size-limiting"
priority = RequestSizeLimiting.priority
schema = RequestSizeLimitingConfig
consumer_scoped = True


def build(config: RequestSizeLimitingConfig, plugin_id: str, shared: object) -> RequestSizeLimiting:
    return RequestSizeLimiting(config)
