"""A target's health as Kong keeps it (lua-resty-healthcheck): four internal states and per-kind counters. Sans-I/O.

States: HEALTHY and UNHEALTHY, and the two in-between states MOSTLY_HEALTHY (still gets traffic: some failures
were seen, not enough to trip) and MOSTLY_UNHEALTHY (still gets none: some successes, not enough to recover).

Events: SUCCESS, HTTP_FAILURE, TCP_FAILURE, TIMEOUT. Each has a counter and a threshold from the config
(healthy.successes, unhealthy.http_failures / tcp_failures / timeouts); a threshold of 0 disables that counter,
so the event is ignored. The thresholds come with each event: those of the check that saw it (active for a probe,
passive for proxied traffic), while the counters and the state are the target's, shared by both checks, as in
lua-resty-healthcheck's incr_counter (its `check` argument only picks `self.checks[check]`'s limit).
Optionally FAILURES, a threshold on all failure kinds counted together (nginx's and HAProxy's `fall`): a failure
event then counts towards its own counter and towards that one.

Rules (Kong's):
- A success on a HEALTHY target, or a failure on an UNHEALTHY one, changes nothing and is not counted.
- Otherwise the event's counter goes up; a success clears the failure counters, a failure clears the success counter.
- The next state is `TRANSITIONS[(state, kind, reached)]`, `reached` meaning a counter hit its threshold.
- Reaching HEALTHY or UNHEALTHY clears every counter.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class State(Enum):
    HEALTHY = "healthy"
    MOSTLY_HEALTHY = "mostly_healthy"
    MOSTLY_UNHEALTHY = "mostly_unhealthy"
    UNHEALTHY = "unhealthy"

    @property
    def healthy(self) -> bool:
        """Whether the target gets traffic."""
        return self in (State.HEALTHY, State.MOSTLY_HEALTHY)


class Event(Enum):
    SUCCESS = "success"
    HTTP_FAILURE = "http_failure"
    TCP_FAILURE = "tcp_failure"
    TIMEOUT = "timeout"

    @property
    def kind(self) -> str:
        return "success" if self is Event.SUCCESS else "failure"


FAILURE_EVENTS = (Event.HTTP_FAILURE, Event.TCP_FAILURE, Event.TIMEOUT)

# (state, event kind, a threshold was reached) -> next state. Every combination is listed, nothing is implied.
TRANSITIONS: dict[tuple[State, str, bool], State] = {
    (State.HEALTHY, "success", False): State.HEALTHY,  # not counted
    (State.HEALTHY, "success", True): State.HEALTHY,  # not counted
    (State.HEALTHY, "failure", False): State.MOSTLY_HEALTHY,
    (State.HEALTHY, "failure", True): State.UNHEALTHY,
    (State.MOSTLY_HEALTHY, "success", False): State.MOSTLY_HEALTHY,
    (State.MOSTLY_HEALTHY, "success", True): State.HEALTHY,
    (State.MOSTLY_HEALTHY, "failure", False): State.MOSTLY_HEALTHY,
    (State.MOSTLY_HEALTHY, "failure", True): State.UNHEALTHY,
    (State.MOSTLY_UNHEALTHY, "success", False): State.MOSTLY_UNHEALTHY,
    (State.MOSTLY_UNHEALTHY, "success", True): State.HEALTHY,
    (State.MOSTLY_UNHEALTHY, "failure", False): State.MOSTLY_UNHEALTHY,
    (State.MOSTLY_UNHEALTHY, "failure", True): State.UNHEALTHY,
    (State.UNHEALTHY, "success", False): State.MOSTLY_UNHEALTHY,
    (State.UNHEALTHY, "success", True): State.HEALTHY,
    (State.UNHEALTHY, "failure", False): State.UNHEALTHY,  # not counted
    (State.UNHEALTHY, "failure", True): State.UNHEALTHY,  # not counted
}

# The event kinds a state ignores (neither counted nor clearing other counters).
IGNORED: dict[State, str] = {State.HEALTHY: "success", State.UNHEALTHY: "failure"}


@dataclass(frozen=True)
class Thresholds:
    """How many events of a kind make a transition; 0 disables the counter (Kong's meaning of 0)."""

    successes: int = 0
    http_failures: int = 0
    tcp_failures: int = 0
    timeouts: int = 0
    failures: int = 0  # any failure kind, counted together (nginx/HAProxy `fall`); 0 = not used

    def limit(self, event: Event) -> int:
        return {Event.SUCCESS: self.successes, Event.HTTP_FAILURE: self.http_failures,
                Event.TCP_FAILURE: self.tcp_failures, Event.TIMEOUT: self.timeouts}[event]


@dataclass(frozen=True)
class Transition:
    """A change of internal state; `changed` when the target's traffic eligibility flipped."""

    old: State
    new: State

    @property
    def changed(self) -> bool:
        return self.old.healthy != self.new.healthy


class TargetHealth:
    """One target's state and counters."""

    __slots__ = ("state", "counters")

    def __init__(self, state: State = State.HEALTHY) -> None:
        self.state = state
        self.counters: dict[str, int] = {"success": 0, "http_failure": 0, "tcp_failure": 0, "timeout": 0,
                                         "failures": 0}

    @property
    def healthy(self) -> bool:
        return self.state.healthy

    def record(self, event: Event, thresholds: Thresholds) -> Transition | None:
        """Apply one event; the Transition when the internal state changed, else None."""
        limit = thresholds.limit(event)
        combined = thresholds.failures if event is not Event.SUCCESS else 0
        if limit == 0 and combined == 0:
            return None  # counter disabled by configuration
        if IGNORED.get(self.state) == event.kind:
            return None
        c = self.counters
        reached = False
        if event is Event.SUCCESS:
            c["http_failure"] = c["tcp_failure"] = c["timeout"] = c["failures"] = 0
            c["success"] += 1
            reached = c["success"] >= limit
        else:
            c["success"] = 0
            if limit:
                c[event.value] += 1
                reached = c[event.value] >= limit
            if combined:
                c["failures"] += 1
                reached = reached or c["failures"] >= combined
        new = TRANSITIONS[(self.state, event.kind, reached)]
        if new in (State.HEALTHY, State.UNHEALTHY):
            for k in c:
                c[k] = 0
        if new is self.state:
            return None
        old, self.state = self.state, new
        return Transition(old, new)

    def force(self, healthy: bool) -> Transition | None:
        """Set the state from outside (an operator, or another checker's verdict); clears the counters."""
        new = State.HEALTHY if healthy else State.UNHEALTHY
        for k in self.counters:
            self.counters[k] = 0
        if new is self.state:
            return None
        old, self.state = self.state, new
        return Transition(old, new)
