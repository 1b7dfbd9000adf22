"""One target's circuit breaker, owned by the state keeper: counts outcomes, fires events, grants probe permits.

Every transition is appended to an outbox as a BreakerUpdate; the keeper publishes `drain()` to all workers.
"""

from __future__ import annotations

from enum import IntEnum
from math import floor
from typing import Any

from gateway.breaker.config import BreakerConfig
from gateway.breaker.messages import BreakerUpdate, Outcome, single
from gateway.breaker.state import TRANSITIONS, Event, State

SLOTS = 10  # the rolling window is kept as this many slots of window_s / SLOTS seconds
NOT_HELD = float("-inf")  # (record_outcome's granted_at) a probe whose worker holds no permit in flight


class Verdict(IntEnum):
    ALLOW = 0
    DENY = 1
    PROBE = 2  # allowed as a half-open probe: record its outcome with probe=True


class _Rolling:
    """Requests and failures over the last window_s seconds, to the precision of one slot."""

    __slots__ = ("width", "epochs", "requests", "failures")

    def __init__(self, window_s: float) -> None:
        self.width = window_s / SLOTS
        self.epochs = [-SLOTS] * SLOTS
        self.requests = [0] * SLOTS
        self.failures = [0] * SLOTS

    def add(self, now: float, requests: int, failures: int) -> None:
        epoch = floor(now / self.width)
        slot = epoch % SLOTS
        if self.epochs[slot] != epoch:
            self.epochs[slot] = epoch
            self.requests[slot] = self.failures[slot] = 0
        self.requests[slot] += requests
        self.failures[slot] += failures

    def totals(self, now: float) -> tuple[int, int]:
        """(requests, failures) in the slots of the last window_s seconds."""
        oldest = floor(now / self.width) - SLOTS
        live = [slot for slot, epoch in enumerate(self.epochs) if epoch > oldest]
        return sum(self.requests[s] for s in live), sum(self.failures[s] for s in live)

    def clear(self) -> None:
        self.epochs = [-SLOTS] * SLOTS


class Breaker:
    """The state machine of state.py plus the counters and timers that decide its events."""

    def __init__(self, target: str, config: BreakerConfig) -> None:
        self.target = target
        self.config = config
        self._state = State.CLOSED
        self._window = _Rolling(config.window_s)
        self._consecutive = 0  # failures in a row while closed
        self._successes = 0  # successful probes while half-open
        self._opened_at = 0.0
        self._permits: list[float] = []  # when each probe in flight was granted
        self._outbox: list[BreakerUpdate] = []

    @property
    def state(self) -> State:
        return self._state

    def allow(self, now: float) -> Verdict:
        """May a request go to the target now? In half-open only as a probe, which takes a permit."""
        state = self.tick(now)
        if state is State.CLOSED:
            return Verdict.ALLOW
        if state is State.HALF_OPEN and self.grant_probe(now):
            return Verdict.PROBE
        return Verdict.DENY

    def grant_probe(self, now: float) -> bool:
        """Take one of the half_open_max_calls probe permits, shared by all workers; permits past their TTL lapse."""
        if self.tick(now) is not State.HALF_OPEN:
            return False
        ttl = self.config.probe_ttl_s
        self._permits = [granted for granted in self._permits if now - granted < ttl]
        if len(self._permits) >= self.config.half_open_max_calls:
            return False
        self._permits.append(now)
        return True

    def record(self, success: bool, now: float, probe: bool = False) -> State:
        """Count one request's result."""
        return self.record_outcome(single(self.target, success, probe), now)

    def record_outcome(self, outcome: Outcome, now: float, granted_at: float | None = None) -> State:
        """Count a worker's batch of results. Half-open counts only probes whose permit is still in flight; open
        ignores all (late) results. `granted_at`: when the permit a probe spent was granted (NOT_HELD: its worker
        holds none), None when the caller does not track permits (the oldest in flight is taken)."""
        state, failures = self._state, outcome.failures
        if state is State.CLOSED:
            self._window.add(now, outcome.successes + failures, failures)
            if outcome.successes:
                longest = max(self._consecutive + outcome.lead, outcome.run)
                self._consecutive = outcome.tail
            else:
                self._consecutive += failures
                longest = self._consecutive
            if self._tripped(now, longest):  # a success can bring the volume up to its threshold, as a failure can
                return self._fire(Event.TRIP, now)
            return self._fire(Event.FAILURE if failures else Event.SUCCESS, now)
        if state is State.HALF_OPEN:
            if not outcome.probe:
                return state  # sent before the breaker opened: says nothing about recovery
            if granted_at is not None:
                if not self.take_back(granted_at):
                    return state  # its permit lapsed, or was of an earlier spell: taken back as lost, given again
            elif self._permits:
                self._permits.pop(0)
            if not failures and not outcome.successes:  # a probe given up (its client left): no verdict
                return state
            if failures:
                return self._fire(Event.FAILURE, now)
            self._successes += outcome.successes
            recovered = self._successes >= self.config.success_threshold
            return self._fire(Event.RECOVER if recovered else Event.SUCCESS, now)
        return self._fire(Event.FAILURE if failures else Event.SUCCESS, now)

    @property
    def in_flight(self) -> tuple[float, ...]:
        """When each permit in flight was granted (as of the last grant: lapsed ones are dropped when granting)."""
        return tuple(self._permits)

    def take_back(self, granted_at: float) -> bool:
        """The permit granted at `granted_at` is no longer in flight (spent, or its holder is gone); False when it was
        not (it lapsed, or the breaker left half-open since)."""
        if granted_at not in self._permits:
            return False
        self._permits.remove(granted_at)
        return True

    def tick(self, now: float) -> State:
        """Fire the open timeout when it is due; the keeper calls this on a timer."""
        if self._state is State.OPEN and now - self._opened_at >= self.config.open_s:
            return self._fire(Event.TIMEOUT, now)
        return self._state

    def reset(self) -> State:
        """Operator: close the breaker and forget its counts."""
        self._fire(Event.RESET, 0.0)
        self._enter(State.CLOSED, 0.0)
        return self._state

    def force_open(self, now: float) -> State:
        """Operator: open the breaker until `reset`."""
        return self._fire(Event.FORCE_OPEN, now)

    def restore(self, state: State, opened_at: float) -> None:
        """A restarted keeper: take up the state the one before it saved (open or forced open since `opened_at`, on
        this keeper's clock); no transition is published (the keeper's snapshot carries it)."""
        if state not in (State.OPEN, State.FORCED_OPEN):
            raise ValueError(f"a breaker is restored open or forced open, not {state.name.lower()}")
        self._state = state
        self._enter(state, opened_at)

    @property
    def opened_at(self) -> float:
        """When it last opened (or was forced open), on the keeper's clock: what the keeper saves to restore it."""
        return self._opened_at

    def update(self) -> BreakerUpdate:
        """The current state as published (for snapshots)."""
        return BreakerUpdate(self.target, self._state)

    def drain(self) -> list[BreakerUpdate]:
        """Transitions since the last drain, oldest first, for the keeper to publish."""
        updates, self._outbox = self._outbox, []
        return updates

    def describe(self, now: float) -> dict[str, Any]:
        """State and counters for the admin channel."""
        requests, failures = self._window.totals(now)
        return {"state": self._state.name.lower(), "requests": requests, "failures": failures,
                "consecutive_failures": self._consecutive, "probes_in_flight": len(self._permits),
                "probe_successes": self._successes}

    def _tripped(self, now: float, longest: int) -> bool:
        """Do the window's counts, or the longest run of failures just counted, pass a threshold (BreakerConfig)?"""
        config = self.config
        requests, failures = self._window.totals(now)
        if requests >= config.volume_threshold and failures >= config.error_threshold:
            return True
        return config.consecutive_threshold is not None and longest >= config.consecutive_threshold

    def _fire(self, event: Event, now: float) -> State:
        """Apply the table; on a change, do the bookkeeping of the new state and queue the update."""
        new = TRANSITIONS[self._state][event]
        if new is not self._state:
            self._state = new
            self._enter(new, now)
            self._outbox.append(BreakerUpdate(self.target, new))
        return new

    def _enter(self, state: State, now: float) -> None:
        self._permits.clear()  # probes are permitted in one half-open spell only
        if state is State.CLOSED:
            self._window.clear()
            self._consecutive = 0
        else:
            self._successes = 0
            if state is not State.HALF_OPEN:
                self._opened_at = now
