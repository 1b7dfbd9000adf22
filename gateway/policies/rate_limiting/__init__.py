"""rate-limiting: Kong's plugin, exact across the workers of a host through the state keeper's leases, and across
hosts through Redis (policy redis: the keepers take blocks of each limit from Redis)."""

from gateway.policies.rate_limiting.handler import RateLimiting
from gateway.policies.rate_limiting.schema import RateLimitingConfig

name = "rate-limiting"
priority = RateLimiting.priority
schema = RateLimitingConfig
enforced = True


def build(config: RateLimitingConfig, plugin_id: str, shared: object,
          owner_ids: tuple[str | None, str | None] = (None, None)) -> RateLimiting:
    """The plugin; `owner_ids`: its own route's and service's ids (gateway.runtime.owner_ids), its counters' scope."""
    return RateLimiting(config, plugin_id, shared, owner_ids)
