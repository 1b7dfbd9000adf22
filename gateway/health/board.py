"""Every target's health on ONE state machine fed by both checks, as Kong keeps it. Pure and synchronous: the state
keeper calls it with the outcomes it hears (proxied traffic from the workers, probes from the health checker).

Kong creates one lua-resty-healthcheck checker per upstream and reports both its active probes and the proxied
traffic (check "passive") to it; `incr_counter` keeps a single multi-counter and state per target, the check only
picks the threshold. So a passing probe clears the failures real traffic counted, and a passive success the
failures probes counted:

    board = HealthBoard.from_config(config)
    board.report("erlmcp-cluster", "10.0.1.10:8080", 503)              # proxied traffic: passive thresholds
    board.probed("erlmcp-cluster", "10.0.1.10:8080", Event.SUCCESS)    # a probe: active thresholds

Each call returns the target's new health when it flipped (it starts or stops getting traffic), else None.
"""

from __future__ import annotations

from gateway.config.schema import Config
from gateway.health.machine import Event, State, TargetHealth, Thresholds
from gateway.health.policy import ActivePolicy, Outcome, PassivePolicy


class HealthBoard:
    def __init__(self, active: dict[str, Thresholds], passive: dict[str, PassivePolicy]) -> None:
        self.active = active
        self.passive = passive
        self.targets: dict[tuple[str, str], TargetHealth] = {}

    @classmethod
    def from_config(cls, config: Config) -> HealthBoard:
        """Upstreams with active checks on or passive checks that can trip; both checks' thresholds for each."""
        active: dict[str, Thresholds] = {}
        passive: dict[str, PassivePolicy] = {}
        for up in config.upstreams:
            a, p = ActivePolicy.from_config(up.healthchecks), PassivePolicy.from_config(up.healthchecks)
            if a.enabled or p.enabled:
                active[up.name], passive[up.name] = a.thresholds, p
        return cls(active, passive)

    def tracks(self, upstream: str) -> bool:
        return upstream in self.passive

    def report(self, upstream: str, target: str, outcome: Outcome) -> bool | None:
        """A proxied request's outcome, judged by the passive thresholds."""
        policy = self.passive.get(upstream)
        if policy is None:
            return None
        event = policy.classify(outcome)
        return None if event is None else self._record(upstream, target, event, policy.thresholds)

    def probed(self, upstream: str, target: str, event: Event) -> bool | None:
        """A probe's event, judged by the active thresholds."""
        thresholds = self.active.get(upstream)
        return None if thresholds is None else self._record(upstream, target, event, thresholds)

    def _record(self, upstream: str, target: str, event: Event, thresholds: Thresholds) -> bool | None:
        th = self.targets.setdefault((upstream, target), TargetHealth())
        transition = th.record(event, thresholds)
        return transition.new.healthy if transition is not None and transition.changed else None

    def healthy(self, upstream: str, target: str) -> bool:
        th = self.targets.get((upstream, target))
        return th.healthy if th is not None else True

    def state(self, upstream: str, target: str) -> State:
        th = self.targets.get((upstream, target))
        return th.state if th is not None else State.HEALTHY

    def set_health(self, upstream: str, target: str, healthy: bool) -> None:
        """A verdict from outside (a restarted keeper learning the last one): counting starts afresh from it."""
        if self.tracks(upstream):
            self.targets.setdefault((upstream, target), TargetHealth()).force(healthy)

    def retain(self, upstream: str, targets: set[str]) -> None:
        """Forget targets that left the upstream (discovery removed them)."""
        for key in [k for k in self.targets if k[0] == upstream and k[1] not in targets]:
            del self.targets[key]

    def adopt(self, old: HealthBoard, staying: set[tuple[str, str]]) -> None:
        """After a reload: the targets that stay, of upstreams still checked, keep their state and counters (one
        that left and comes back later starts afresh, as its verdict does)."""
        self.targets = {key: th for key, th in old.targets.items() if key in staying and self.tracks(key[0])}
