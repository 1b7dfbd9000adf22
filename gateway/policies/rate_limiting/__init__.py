"""rate-limiting: cluster-exact limits over the bus (parsed and validated; enforcement lands with the bus)."""

from gateway.policies.rate_limiting.schema import RateLimitingConfig

name = "rate-limiting"
priority = 910  # Kong's
schema = RateLimitingConfig
enforced = False


def build(config: RateLimitingConfig) -> None:
    return None
