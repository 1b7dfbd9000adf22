"""circuit-breaker: one breaker per target for the whole gateway (parsed; enforcement lands with the bus)."""

from gateway.policies.circuit_breaker.schema import CircuitBreakerConfig

name = "circuit-breaker"
priority = 920
schema = CircuitBreakerConfig
enforced = False


def build(config: CircuitBreakerConfig) -> None:
    return None
