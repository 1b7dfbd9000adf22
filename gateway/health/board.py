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

A reload keeps the machines of the targets that stay; those it drops (or whose upstream it leaves unchecked) are
retired for CLEAR_HEALTH_STATUS_DELAY_S, as Kong's delayed_clear keeps them in its shm, and one a later reload brings
back within that has its state and counters again.
"""

from __future__ import annotations

from gateway.config.schema import Config
from gateway.health.machine import Event, State, TargetHealth, Thresholds
from gateway.health.policy import ActivePolicy, Outcome, PassivePolicy

# How long a reload keeps the machine of a target it dropped: Kong's CLEAR_HEALTH_STATUS_DELAY (kong/constants.lua),
# the delay of the delayed_clear it stops a rebuilt upstream's checker with (balancer/healthcheckers.lua:27-35).
CLEAR_HEALTH_STATUS_DELAY_S = 300.0


class HealthBoard:
    def __init__(self, active: dict[str, Thresholds], passive: dict[str, PassivePolicy]) -> None:
        self.active = active
        self.passive = passive
        self.targets: dict[tuple[str, str], TargetHealth] = {}
        # The machines reloads dropped, with when each is forgotten (the keeper's clock): `adopt`, `purge`.
        self.retired: dict[tuple[str, str], tuple[TargetHealth, float]] = {}

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
        """Forget targets that left the upstream (discovery removed them: Kong's remove_target clears at once)."""
        for key in [k for k in self.targets if k[0] == upstream and k[1] not in targets]:
            del self.targets[key]

    def adopt(self, old: HealthBoard, staying: set[tuple[str, str]], now: float = 0.0) -> list[tuple[str, str]]:
        """After a reload: the targets that stay, of upstreams still checked, keep their state and counters; the
        others' machines are retired until CLEAR_HEALTH_STATUS_DELAY_S from `now`, and a retired one back in
        `staying`, of a checked upstream, is taken up again (the keys returned), as Kong's new checker of the same
        name re-adds it from the shm (lua-resty-healthcheck 3.1.0 healthcheck.lua:456-469, 1665-1688)."""
        self.targets = {key: th for key, th in old.targets.items() if key in staying and self.tracks(key[0])}
        self.retired = {key: kept for key, kept in old.retired.items() if kept[1] > now and key not in old.targets}
        expiry = now + CLEAR_HEALTH_STATUS_DELAY_S
        self.retired.update((key, (th, expiry)) for key, th in old.targets.items() if key not in self.targets)
        back = [key for key in self.retired if key in staying and self.tracks(key[0])]
        for key in back:
            th = self.targets[key] = self.retired.pop(key)[0]
            th.state = State.HEALTHY if th.healthy else State.UNHEALTHY  # (add_target: its verdict, counters kept)
        return back

    def purge(self, now: float) -> None:
        """Forget the retired machines whose time is up (lua-resty-healthcheck's cleanup of purge_time targets)."""
        if self.retired:
            self.retired = {key: kept for key, kept in self.retired.items() if kept[1] > now}
