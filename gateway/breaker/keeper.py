"""The keeper's breakers, one per target: outcomes in, transitions to publish and probe permits to hand out."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

from gateway.breaker.config import BreakerConfig
from gateway.breaker.machine import Breaker
from gateway.breaker.messages import BreakerUpdate, Outcome
from gateway.breaker.state import State
from gateway.metrics import BREAKER_STATE, BREAKER_TRANSITIONS, RECORDER


def _unknown(target: str) -> float | None:
    """(BreakerBoard.record) No permit's grant time is known: a probe's outcome takes back the oldest in flight."""
    return None


_NAMES = {State.CLOSED: "closed", State.OPEN: "open", State.HALF_OPEN: "half_open", State.FORCED_OPEN: "forced_open"}


class BreakerBoard:
    """All breakers of the gateway. Each call returns (updates to publish to every worker, permits to send).

    A permit is a target name: whoever receives it may send one probe. Permits freed by a probe's outcome go back
    to the worker that reported it (it has traffic for the target; one it kept is not sent again: `settle`); those
    of a breaker just half-open, or lapsed after probe_ttl_s (BreakerConfig: as long as a probe can run), come out
    of `tick` for the keeper to spread over the workers.
    """

    def __init__(self, configs: Mapping[str, BreakerConfig],
                 by_upstream: Mapping[str, BreakerConfig] | None = None) -> None:
        """`configs`: the config's targets' breakers; `by_upstream`: the breaker of each upstream a plugin covers, for
        the targets a source reports (`cover`)."""
        self._breakers = {target: Breaker(target, config) for target, config in configs.items()}
        self._by_upstream = by_upstream or {}
        self._last: dict[str, State] = {}  # the state last published per target, to count transitions from it

    def cover(self, upstream: str, keys: Iterable[str]) -> None:
        """A source's target list for `upstream` (discovery, names resolved): a breaker for each of its targets when
        a plugin covers the upstream (one it had is kept), none for the targets it no longer has."""
        config = self._by_upstream.get(upstream)
        if config is None:
            return
        keep = set(keys)
        prefix = upstream + "|"
        for key in [k for k in self._breakers if k.startswith(prefix) and k not in keep]:
            del self._breakers[key]
        for key in keep:
            if key not in self._breakers:
                self._breakers[key] = Breaker(key, config)

    def record(self, outcomes: Iterable[Outcome], now: float, granted_at: Callable[[str], float | None] = _unknown
               ) -> tuple[list[BreakerUpdate], list[str]]:
        """Count a worker's outcomes (unknown targets are ignored); `granted_at(target)`: when the permit a probe to
        `target` spent was granted (NOT_HELD: the worker holds none, so the outcome is no probe; None: unknown)."""
        touched: dict[str, Breaker] = {}
        permits: list[str] = []
        for outcome in outcomes:
            breaker = self._breakers.get(outcome.target)
            if breaker is not None:
                breaker.record_outcome(outcome, now, granted_at(outcome.target) if outcome.probe else None)
                permits += _probes(breaker, now)
                touched[outcome.target] = breaker
        return self._counted(_drain(touched.values())), permits

    def settle(self, permits: list[str], kept: list[str]) -> tuple[list[str], list[str]]:
        """A worker's probe outcomes freed `permits` (all granted again to it: `record`), and it kept a permit for
        each of `kept` (Outcome.kept): (the permits to send it, those it kept that no permit freed here while the
        breaker stays half-open, to withdraw: its probe's permit was not in flight, lapsed or of an earlier spell).
        A kept one freed here is in flight as granted now, and goes to it once, not twice."""
        unsent = list(permits)
        withdrawn = []
        for target in kept:
            if target in unsent:
                unsent.remove(target)
            elif (breaker := self._breakers.get(target)) is not None and breaker.state is State.HALF_OPEN:
                withdrawn.append(target)
        return unsent, withdrawn

    def tick(self, now: float) -> tuple[list[BreakerUpdate], list[str]]:
        """Open timeouts and lapsed permits, checked on the keeper's timer."""
        permits: list[str] = []
        for breaker in self._breakers.values():
            breaker.tick(now)
            permits += _probes(breaker, now)
        return self._counted(_drain(self._breakers.values())), permits

    def take_back(self, target: str, granted_at: float, now: float) -> list[str]:
        """A permit granted at `granted_at` went to a worker that is gone: it is no longer in flight, and the permits
        this frees are granted again at once (for the keeper to place with a live worker)."""
        breaker = self._breakers.get(target)
        if breaker is None or not breaker.take_back(granted_at):
            return []
        return _probes(breaker, now)

    def __contains__(self, target: str) -> bool:
        """Has `target` a breaker?"""
        return target in self._breakers

    def in_flight(self, target: str) -> tuple[float, ...]:
        """When each of `target`'s permits in flight was granted (none without a breaker)."""
        breaker = self._breakers.get(target)
        return breaker.in_flight if breaker is not None else ()

    def all_closed(self) -> bool:
        """No breaker has a timer running (open) or probes out (half-open): `tick` has nothing to do."""
        return all(breaker.state is State.CLOSED for breaker in self._breakers.values())

    def adopt(self, old: BreakerBoard) -> None:
        """A reload: the targets that stay keep their breakers' states. A breaker whose thresholds did not change is
        kept whole (a new probe lifetime alone, the services' timeouts changed, is taken on by it); one whose
        thresholds changed starts its counts afresh under them, but an open or forced open circuit stays so, from
        when it opened (a half-open one comes back open with its timeout over, as after a keeper restart): a
        reload neither closes a failing target's circuit nor undoes an operator's."""
        for target, breaker in old._breakers.items():
            mine = self._breakers.get(target)
            if mine is None:
                continue
            if replace(mine.config, probe_ttl_s=breaker.config.probe_ttl_s) == breaker.config:
                breaker.config = mine.config
                self._breakers[target] = breaker
                if target in old._last:
                    self._last[target] = old._last[target]
            elif breaker.state is not State.CLOSED:
                self.restore(target, State.FORCED_OPEN if breaker.state is State.FORCED_OPEN else State.OPEN,
                             breaker.opened_at)

    def reset(self, target: str) -> BreakerUpdate:
        """Operator: close `target`'s breaker."""
        breaker = self._get(target)
        breaker.reset()
        self._counted(breaker.drain())
        return breaker.update()

    def force_open(self, target: str, now: float) -> BreakerUpdate:
        """Operator: open `target`'s breaker until reset."""
        breaker = self._get(target)
        breaker.force_open(now)
        self._counted(breaker.drain())
        return breaker.update()

    def restore(self, target: str, state: State, opened_at: float) -> bool:
        """A restarted keeper: `target`'s breaker open or forced open since `opened_at`, as the keeper before it
        saved it. False when the config has no breaker for `target` (any more, or not until a source reports it)."""
        breaker = self._breakers.get(target)
        if breaker is None:
            return False
        breaker.restore(state, opened_at)
        self._last[target] = state
        return True

    def not_closed(self) -> dict[str, tuple[State, float]]:
        """The breakers away from closed, with when each opened: what a keeper saves to begin from after a restart."""
        return {target: (breaker.state, breaker.opened_at) for target, breaker in self._breakers.items()
                if breaker.state is not State.CLOSED}

    def states(self) -> list[BreakerUpdate]:
        """Every breaker's state (the snapshot a worker gets when it connects)."""
        return [breaker.update() for breaker in self._breakers.values()]

    def describe(self, now: float, target: str | None = None) -> dict[str, dict[str, Any]]:
        """State and counters of one breaker, or of all, for the admin channel."""
        targets = [target] if target is not None else list(self._breakers)
        return {name: self._get(name).describe(now) for name in targets}

    def sample_states(self) -> None:
        """gateway_circuit_breaker_state: 1 for each breaker's current state, 0 for the others (metrics flush),
        published whole (a StateGauge), so a target the config no longer has leaves /metrics."""
        for target, breaker in self._breakers.items():
            for state in State:
                BREAKER_STATE.labels(target, _NAMES[state]).set(1 if breaker.state is state else 0)
        for labels in list(BREAKER_STATE._metrics):
            if labels[0] not in self._breakers:  # a target the config no longer has
                BREAKER_STATE.remove(*labels)
        BREAKER_STATE.publish()

    def _counted(self, updates: list[BreakerUpdate]) -> list[BreakerUpdate]:
        """Count each transition (gateway_circuit_breaker_transitions_total) as it is published."""
        for update in updates:
            before = self._last.get(update.target, State.CLOSED)
            if update.state is not before:
                RECORDER.count(BREAKER_TRANSITIONS, (update.target, _NAMES[before], _NAMES[update.state]))
            self._last[update.target] = update.state
        return updates

    def _get(self, target: str) -> Breaker:
        breaker = self._breakers.get(target)
        if breaker is None:
            raise KeyError(f"no circuit breaker for target {target!r}")
        return breaker


def _probes(breaker: Breaker, now: float) -> list[str]:
    """Permits the breaker can grant now (none unless half-open)."""
    permits = []
    while breaker.state is State.HALF_OPEN and breaker.grant_probe(now):
        permits.append(breaker.target)
    return permits


def _drain(breakers: Iterable[Breaker]) -> list[BreakerUpdate]:
    return [update for breaker in breakers for update in breaker.drain()]
