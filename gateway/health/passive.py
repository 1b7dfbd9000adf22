"""Passive health checks (Kong's `healthchecks.passive`): the outcomes of proxied requests move each target's
state machine. Pure and synchronous: whoever sees the outcomes (the workers, through the bus) calls `report`.

    passive = PassiveChecker.from_config(config, on_change)
    passive.report("erlmcp-cluster", "10.0.1.10:8080", 503)          # an HTTP status
    passive.report("erlmcp-cluster", "10.0.1.10:8080", TCP_FAILURE)  # connect refused / reset
    passive.report("erlmcp-cluster", "10.0.1.10:8080", TIMEOUT)

An unhealthy target gets no traffic, so passive successes alone rarely bring it back: pair it with active checks
(an active `healthy` verdict calls `set_health(..., True)`) or an operator action, as Kong documents.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.config.schema import Config
from gateway.health.machine import State, TargetHealth
from gateway.health.policy import Outcome, PassivePolicy

HealthCallback = Callable[[str, str, bool], None]


class PassiveChecker:
    def __init__(self, policies: dict[str, PassivePolicy], on_change: HealthCallback | None = None) -> None:
        self.policies = policies
        self.on_change = on_change
        self.targets: dict[tuple[str, str], TargetHealth] = {}

    @classmethod
    def from_config(cls, config: Config, on_change: HealthCallback | None = None) -> PassiveChecker:
        """Only upstreams whose passive checks can trip (a non-zero unhealthy threshold) are tracked."""
        policies = {up.name: PassivePolicy.from_config(up.healthchecks) for up in config.upstreams}
        return cls({name: p for name, p in policies.items() if p.enabled}, on_change)

    def report(self, upstream: str, target: str, outcome: Outcome) -> bool | None:
        """Feed one outcome; returns the target's new health when it flipped (and calls on_change), else None."""
        policy = self.policies.get(upstream)
        if policy is None:
            return None
        event = policy.classify(outcome)
        if event is None:
            return None
        th = self.targets.setdefault((upstream, target), TargetHealth())
        transition = th.record(event, policy.thresholds)
        if transition is None or not transition.changed:
            return None
        if self.on_change is not None:
            self.on_change(upstream, target, transition.new.healthy)
        return transition.new.healthy

    def healthy(self, upstream: str, target: str) -> bool:
        th = self.targets.get((upstream, target))
        return th.healthy if th is not None else True

    def state(self, upstream: str, target: str) -> State:
        th = self.targets.get((upstream, target))
        return th.state if th is not None else State.HEALTHY

    def set_health(self, upstream: str, target: str, healthy: bool) -> None:
        """Another source decided (active checks, an operator): start counting afresh from that state."""
        if upstream in self.policies:
            self.targets.setdefault((upstream, target), TargetHealth()).force(healthy)

    def retain(self, upstream: str, targets: set[str]) -> None:
        """Forget targets that left the upstream (discovery removed them)."""
        for key in [k for k in self.targets if k[0] == upstream and k[1] not in targets]:
            del self.targets[key]
