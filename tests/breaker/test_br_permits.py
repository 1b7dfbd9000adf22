"""Half-open probe permits, as README.md's "Shared state" paragraph promises them: "the keeper grants exactly
half_open_max_calls probe permits across all workers", and one whose probe has not reported in time "is taken back,
so a lost outcome cannot hold half-open for ever". A permit taken back is given again; the late outcome of the probe
that held it is then no probe of the spell (counting it would count two probes for one permit, and freeing a permit
for it would let one more probe out than max_calls), and a closed breaker has no probes out.
"""

from __future__ import annotations

import time
from dataclasses import replace

import trio

from gateway.breaker import Breaker, BreakerBoard, BreakerConfig, BreakerUpdate, BreakerView, Outcome, State
from gateway.breaker.machine import NOT_HELD
from gateway.breaker.messages import single
from gateway.bus import protocol as p
from gateway.config import parse_config
from gateway.keeper.peers import Peers
from gateway.keeper.state import Keeper
from gateway.runtime import compile_config
from gateway.state.shared import SharedState

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


# ---- a worker keeps the permit of a probe that succeeded -------------------------------------------------------------
# README, Shared state: "a worker whose probe succeeded keeps the permit for its next request while the circuit is
# half-open, the keeper told so with the outcome (it counts the permit in flight still, and grants none in its place;
# one it no longer counted is withdrawn)". Before, the permit went back to the keeper with the outcome and came back
# in a ProbePermit: a client's next request that came first found the target skipped (503 under `gateway start`).

KEPT = BreakerConfig(consecutive_threshold=2, open_s=1.0, success_threshold=3, half_open_max_calls=1,
                     probe_ttl_s=20.0)
DOC = """
_format_version: '3.0'
upstreams:
  - name: up
    targets: [{target: '127.0.0.1:9001'}]
services:
  - {name: s, host: up}
routes:
  - {name: r, service: s, paths: ['/']}
plugins:
  - {name: circuit-breaker, service: s, config: {failure_threshold: 2, half_open_timeout: 1000, success_threshold: 3}}
"""
UP = "up|127.0.0.1:9001"
WORKER = b"\x00W"


def holding_a_permit() -> BreakerView:
    view = BreakerView()
    view.apply(BreakerUpdate(TARGET, State.HALF_OPEN))
    view.permit(TARGET)
    return view


def test_a_probe_that_succeeded_keeps_its_permit_for_the_workers_next_request() -> None:
    view = holding_a_permit()
    assert view.started(TARGET)
    assert view.record(TARGET, True, probe=True) == Outcome(TARGET, 1, probe=True, kept=True)
    assert not view.is_open(TARGET) and view.started(TARGET)


def test_a_probe_that_failed_keeps_no_permit() -> None:
    """A failed probe opens the circuit again (README): the worker's next request is not a probe."""
    view = holding_a_permit()
    assert view.started(TARGET)
    assert view.record(TARGET, False, probe=True) == single(TARGET, False, probe=True)
    assert view.is_open(TARGET) and not view.started(TARGET)


def half_open_board() -> BreakerBoard:
    board = BreakerBoard({TARGET: KEPT})
    board.record([single(TARGET, False), single(TARGET, False)], OPENED)
    assert board.tick(OPENED + KEPT.open_s)[1] == [TARGET]
    return board


def test_the_keeper_counts_a_kept_permit_in_flight_and_sends_no_new_one() -> None:
    board = half_open_board()
    now = OPENED + KEPT.open_s + 0.5
    _, permits = board.record([Outcome(TARGET, 1, probe=True, kept=True)], now, lambda _t: OPENED + KEPT.open_s)
    assert board.settle(permits, [TARGET]) == ([], [])
    assert board.in_flight(TARGET) == (now,), "one probe in flight, its lifetime from the outcome on"


def test_a_kept_permit_the_keeper_no_longer_counted_is_withdrawn() -> None:
    """Its probe's permit had lapsed and was given again (the late outcome is no probe of this spell): the worker's
    kept permit would be one more than half_open_max_calls."""
    board = half_open_board()
    now = OPENED + KEPT.open_s + 0.5
    _, permits = board.record([Outcome(TARGET, 1, probe=True, kept=True)], now, lambda _t: NOT_HELD)
    assert board.settle(permits, [TARGET]) == ([], [TARGET])
    view = holding_a_permit()
    view.withdraw(TARGET)
    assert view.is_open(TARGET) and not view.started(TARGET)


def test_a_kept_permit_of_a_closing_probe_is_neither_sent_nor_withdrawn() -> None:
    """The closing update voids it (BreakerView.apply)."""
    board = BreakerBoard({TARGET: replace(KEPT, success_threshold=1)})
    board.record([single(TARGET, False), single(TARGET, False)], OPENED)
    board.tick(OPENED + KEPT.open_s)
    updates, permits = board.record([Outcome(TARGET, 1, probe=True, kept=True)], OPENED + 2,
                                    lambda _t: OPENED + KEPT.open_s)
    assert [u.state for u in updates] == [State.CLOSED]
    assert board.settle(permits, [TARGET]) == ([], [])


class SlowBus:
    """A worker's SharedState and a Keeper, what the worker sends held until `carry`: a bus round trip as long as
    the test likes."""

    def __init__(self, keeper: Keeper, shared: SharedState) -> None:
        self.keeper, self.shared = keeper, shared
        self.sent: list[p.Msg] = []
        self.answers: list[p.Msg] = []
        shared._send = self.send

    def send(self, msg: p.Msg) -> bool:
        self.sent.append(msg)
        return True

    def carry(self, now: float) -> None:
        """The keeper handles what the worker sent, and the worker its answers."""
        sent, self.sent = self.sent, []
        for msg in sent:
            replies, broadcasts = self.keeper.handle(WORKER, msg, now, time.time())
            self.answers += replies
            for answer in replies + broadcasts:
                self.shared.on_message(answer)


async def test_a_worker_sends_its_next_probe_before_the_keeper_heard_the_last() -> None:
    """success_threshold 3, half_open_max_calls 1: the worker's three probes in a row go out without waiting for
    the keeper, whose count of probes in flight stays one, held by that worker, and the third closes the circuit."""
    config = parse_config(DOC)
    keeper, shared = Keeper(config, 1), SharedState("w", 1)
    runtime = compile_config(config)
    shared.attach(runtime)
    [group] = [g for g in runtime.all_groups() if g.name == "up"]
    bus = SlowBus(keeper, shared)
    shared.on_message(p.Heartbeat(incarnation=keeper.incarnation))  # the worker says hello
    bus.carry(0.0)
    for _ in range(2):
        shared.outcome(UP, False, False)
    shared.flush(trio.current_time())
    bus.carry(0.0)  # open
    direct, broadcasts = keeper.tick(1.0)
    for answer in [msg for _, msg in direct] + broadcasts:
        shared.on_message(answer)  # half-open, its permit with this worker
    for n in range(2):
        assert 0 not in group.unusable, f"probe {n + 1} refused"
        assert shared.begin(group, 0)
        shared.outcome(UP, True, True)
    assert 0 not in group.unusable, "probe 3 refused"
    bus.carry(1.5)
    assert keeper.breakers.in_flight(UP) == (1.5,) and keeper.peers.spent(WORKER, UP) == 1.5
    keeper.peers.hold(WORKER, UP, 1.5)  # (as it was)
    assert not [a for a in bus.answers if isinstance(a, p.ProbePermit)], "no permit sent: the worker kept its own"
    assert shared.begin(group, 0)
    shared.outcome(UP, True, True)
    bus.carry(1.6)
    assert keeper.breakers.describe(1.6, UP)[UP]["state"] == "closed"
    assert shared.breakers.state(UP) is State.CLOSED and UP not in shared.breakers.permits
