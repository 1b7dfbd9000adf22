"""cors: Kong's Cross-Origin Resource Sharing headers, and its answer to preflight requests."""

from gateway.policies.cors.handler import Cors
from gateway.policies.cors.schema import CorsConfig

name = "cors"
priority = Cors.priority
schema = CorsConfig
consumer_scoped = False  # Kong's no_consumer


def build(config: CorsConfig, plugin_id: str, shared: object) -> Cors:
    return Cors(config)
