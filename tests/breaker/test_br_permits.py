"""Half-open probe permits, as README.md's "Shared state" paragraph promises them: "the keeper grants exactly
half_open_max_calls probe permits across all workers", and one whose probe has not reported in time "is taken back,
so a lost outcome cannot hold half-open for ever". A permit taken back is given again; the late outcome of the probe
that held it is then no probe of the spell (counting it would count two probes for one permit, and freeing a permit
for it would let one more probe out than max_calls), and a closed breaker has no probes out.
"""

from __future__ import annotations

from gateway.breaker import Breaker, BreakerBoard, BreakerConfig, State
from gateway.breaker.machine import NOT_HELD
from gateway.breaker.messages import single
from gateway.keeper.peers import Peers

TARGET = "up|a:1"
CONFIG = BreakerConfig(consecutive_threshold=1, open_s=5.0, success_threshold=1, half_open_max_calls=1,
                       probe_ttl_s=20.0)
OPENED = 100.0
HALF_OPENED = OPENED + CONFIG.open_s


def half_open(config: BreakerConfig = CONFIG) -> Breaker:
    """A breaker that opened at OPENED on one failure and went half-open at HALF_OPENED."""
    breaker = Breaker(TARGET, config)
    breaker.record(False, OPENED)
    assert breaker.tick(HALF_OPENED) is State.HALF_OPEN
    return breaker


def test_closing_from_half_open_leaves_no_probe_in_flight() -> None:
    breaker = half_open(BreakerConfig(consecutive_threshold=1, open_s=5.0, success_threshold=1,
                                      half_open_max_calls=2))
    assert breaker.grant_probe(HALF_OPENED) and breaker.grant_probe(HALF_OPENED + 0.1)
    assert breaker.record_outcome(single(TARGET, True, True), HALF_OPENED + 1, HALF_OPENED) is State.CLOSED
    assert breaker.in_flight == ()
    assert breaker.describe(HALF_OPENED + 1)["probes_in_flight"] == 0


def test_a_lapsed_probes_late_success_does_not_close_the_breaker() -> None:
    breaker = half_open()
    assert breaker.grant_probe(HALF_OPENED)
    again = HALF_OPENED + CONFIG.probe_ttl_s
    assert breaker.grant_probe(again), "the lapsed permit is given again"
    assert breaker.record_outcome(single(TARGET, True, True), again + 1, HALF_OPENED) is State.HALF_OPEN
    assert breaker.in_flight == (again,), "the probe now holding the permit keeps it"


def test_a_lapsed_probes_late_failure_does_not_reopen_the_breaker() -> None:
    breaker = half_open()
    assert breaker.grant_probe(HALF_OPENED)
    again = HALF_OPENED + CONFIG.probe_ttl_s
    assert breaker.grant_probe(again)
    assert breaker.record_outcome(single(TARGET, False, True), again + 1, HALF_OPENED) is State.HALF_OPEN
    assert breaker.in_flight == (again,)


def test_a_probe_of_an_earlier_half_open_spell_is_not_counted_in_the_next() -> None:
    breaker = half_open()
    assert breaker.grant_probe(HALF_OPENED)
    assert breaker.record_outcome(single(TARGET, False, True), HALF_OPENED + 1, HALF_OPENED) is State.OPEN
    second = HALF_OPENED + 1 + CONFIG.open_s
    assert breaker.tick(second) is State.HALF_OPEN
    assert breaker.grant_probe(second)
    assert breaker.record_outcome(single(TARGET, True, True), second + 1, HALF_OPENED) is State.HALF_OPEN
    assert breaker.in_flight == (second,)


def test_an_outcome_from_a_worker_holding_no_permit_frees_no_other_probes_permit() -> None:
    """The keeper's board, told the worker holds none (Peers.spent), neither counts the outcome nor hands out the
    permit another worker's probe holds."""
    board = BreakerBoard({TARGET: CONFIG})
    board.record([single(TARGET, False)], OPENED)
    updates, permits = board.tick(HALF_OPENED)
    assert permits == [TARGET]
    assert board.record([single(TARGET, True, True)], HALF_OPENED + 1, lambda _target: NOT_HELD) == ([], [])
    assert board.in_flight(TARGET) == (HALF_OPENED,)
    assert {u.target: u.state for u in board.states()}[TARGET] is State.HALF_OPEN


def test_a_worker_holding_no_permit_spent_none() -> None:
    peers = Peers()
    assert peers.spent(b"gone", TARGET) == NOT_HELD
