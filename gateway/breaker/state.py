"""The circuit breaker's states, events and transition table: every state change is a lookup in TRANSITIONS.

Rules:
1. A breaker changes state only through TRANSITIONS[state][event]; machine.py decides which event happened
   (thresholds, timers, probe results) and does the bookkeeping of entering a state.
2. The table is total: every event has an entry in every state. An entry equal to its row's state means the event
   changes nothing there (a late outcome reaching an open breaker, a timer event while closed, ...).
3. FORCED_OPEN, an operator's force-open, has no timeout: only RESET leaves it. RESET closes from any state.
"""

from __future__ import annotations

from enum import IntEnum


class State(IntEnum):
    CLOSED = 0  # requests pass; outcomes are counted
    OPEN = 1  # requests fail fast until the timeout
    HALF_OPEN = 2  # only probes (permits granted by the keeper) pass
    FORCED_OPEN = 3  # open until an operator resets it


class Event(IntEnum):
    SUCCESS = 0  # a success that does not close the breaker
    FAILURE = 1  # a failure that does not trip a closed breaker
    TRIP = 2  # a failure that passes a threshold while closed
    TIMEOUT = 3  # the open timeout has passed
    RECOVER = 4  # the success_threshold-th successful probe
    RESET = 5  # operator: close
    FORCE_OPEN = 6  # operator: open until reset


_C, _O, _H, _F = State.CLOSED, State.OPEN, State.HALF_OPEN, State.FORCED_OPEN

TRANSITIONS: dict[State, dict[Event, State]] = {
    #         SUCCESS  FAILURE  TRIP  TIMEOUT  RECOVER  RESET  FORCE_OPEN
    _C: dict(zip(Event, (_C, _C, _O, _C, _C, _C, _F), strict=True)),
    _O: dict(zip(Event, (_O, _O, _O, _H, _O, _C, _F), strict=True)),
    _H: dict(zip(Event, (_H, _O, _O, _H, _C, _C, _F), strict=True)),
    _F: dict(zip(Event, (_F, _F, _F, _F, _F, _C, _F), strict=True)),
}
