"""The transition table, pair by pair, and the same pairs driven through a Breaker's public calls."""

import pytest

from gateway.breaker import TRANSITIONS, Breaker, BreakerConfig, Event, State

CL, OP, HO, FO = State.CLOSED, State.OPEN, State.HALF_OPEN, State.FORCED_OPEN
SU, FA, TR, TI, RC, RS, FP = (Event.SUCCESS, Event.FAILURE, Event.TRIP, Event.TIMEOUT, Event.RECOVER, Event.RESET,
                              Event.FORCE_OPEN)

EXPECTED = {
    (CL, SU): CL, (CL, FA): CL, (CL, TR): OP, (CL, TI): CL, (CL, RC): CL, (CL, RS): CL, (CL, FP): FO,
    (OP, SU): OP, (OP, FA): OP, (OP, TR): OP, (OP, TI): HO, (OP, RC): OP, (OP, RS): CL, (OP, FP): FO,
    (HO, SU): HO, (HO, FA): OP, (HO, TR): OP, (HO, TI): HO, (HO, RC): CL, (HO, RS): CL, (HO, FP): FO,
    (FO, SU): FO, (FO, FA): FO, (FO, TR): FO, (FO, TI): FO, (FO, RC): FO, (FO, RS): CL, (FO, FP): FO,
}

CONFIG = BreakerConfig(error_threshold=3, volume_threshold=3, open_s=5.0, success_threshold=2)


def test_the_table_is_total():
    assert set(TRANSITIONS) == set(State)
    assert all(set(row) == set(Event) for row in TRANSITIONS.values())


@pytest.mark.parametrize(("state", "event"), list(EXPECTED))
def test_table_entry(state, event):
    assert TRANSITIONS[state][event] is EXPECTED[state, event]


def breaker_in(state):
    """A breaker brought into `state` at time 10 through its public calls."""
    breaker = Breaker("t", CONFIG)
    if state is FO:
        breaker.force_open(10.0)
    elif state is not CL:
        for _ in range(3):
            breaker.record(False, 10.0)
        if state is HO:
            breaker.tick(15.0)
    assert breaker.state is state
    breaker.drain()
    return breaker


def cause(breaker, event):
    """Make `event` happen through the public calls, at time 16 (after the open timeout)."""
    state = breaker.state
    if event is SU:
        breaker.record(True, 16.0, probe=state is HO)
    elif event is FA:
        breaker.record(False, 16.0, probe=state is HO)
    elif event is TR:
        breaker.record(False, 16.0)
        breaker.record(False, 16.0)
        breaker.record(False, 16.0)
    elif event is TI:
        breaker.tick(16.0)
    elif event is RC:
        breaker.record(True, 16.0, probe=True)
        breaker.record(True, 16.0, probe=True)
    elif event is RS:
        breaker.reset()
    else:
        breaker.force_open(16.0)


# Pairs a breaker cannot meet through its calls: TRIP is decided only while closed, RECOVER only while half-open.
UNREACHABLE = {(OP, TR), (HO, TR), (FO, TR), (CL, RC), (OP, RC), (FO, RC)}


@pytest.mark.parametrize(("state", "event"), [pair for pair in EXPECTED if pair not in UNREACHABLE])
def test_breaker_follows_the_table(state, event):
    breaker = breaker_in(state)
    cause(breaker, event)
    expected = EXPECTED[state, event]
    assert breaker.state is expected
    assert [u.state for u in breaker.drain()] == ([] if expected is state else [expected])
