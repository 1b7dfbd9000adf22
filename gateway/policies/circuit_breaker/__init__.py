"""circuit-breaker: one breaker per target for the whole gateway, kept by the state keeper (gateway.breaker).

It has no access step: the runtime gives the covered upstreams breakers, and the forwarder skips open targets."""

from gateway.policies.circuit_breaker.schema import CircuitBreakerConfig

name = "circuit-breaker"
priority = 920
schema = CircuitBreakerConfig
consumer_scoped = False  # one breaker per target, for every client


def build(config: CircuitBreakerConfig, plugin_id: str, shared: object) -> None:
    return None
