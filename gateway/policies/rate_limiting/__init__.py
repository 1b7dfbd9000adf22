"""rate-limiting: Kong's plugin, exact across the workers of a host through the state keeper's leases."""

import logging

from gateway.policies.rate_limiting.handler import RateLimiting
from gateway.policies.rate_limiting.schema import RateLimitingConfig

name = "rate-limiting"
priority = RateLimiting.priority
schema = RateLimitingConfig
enforced = True
log = logging.getLogger("gateway.policies")


def build(config: RateLimitingConfig, plugin_id: str, shared: object) -> RateLimiting:
    if config.policy == "redis" and shared is not None:
        log.warning("rate-limiting %s: policy redis is not supported yet; enforcing it per host (exact across "
                    "this host's workers, like policy local)", plugin_id)
    return RateLimiting(config, plugin_id, shared)
