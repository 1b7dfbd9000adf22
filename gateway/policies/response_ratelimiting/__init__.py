"""response-ratelimiting: Kong's plugin, limits the upstream counts per response (`X-Kong-Limit: name=n`); counters
shared by the host's workers (policy local, held by the state keeper) or by every host (policy redis)."""

from gateway.policies.response_ratelimiting.handler import ResponseRateLimiting
from gateway.policies.response_ratelimiting.schema import ResponseRateLimitingConfig

name = "response-ratelimiting"
priority = ResponseRateLimiting.priority
schema = ResponseRateLimitingConfig
consumer_scoped = True


def build(config: ResponseRateLimitingConfig, plugin_id: str, shared: object,
          owner_ids: tuple[str | None, str | None] = (None, None)) -> ResponseRateLimiting:
    """The plugin; `owner_ids`: its own route's and service's ids (gateway.runtime.owner_ids), its counters' scope."""
    return ResponseRateLimiting(config, plugin_id, shared, owner_ids)
