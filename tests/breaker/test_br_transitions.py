"""The circuit breaker's state machine, exhaustively, as README.md's "Shared state" paragraph describes it.

1. A table of (state, event) -> (next state, verdict of the next request), written from the README's words: every
   state a breaker can be in (closed, open, half-open, forced open by an operator) against every event the machine
   (gateway/breaker/machine.py) and the keeper's board (keeper.py: reload, restart) take. It is asserted total, and
   each entry is one test driven through the public calls.
2. Invariants over random event sequences (Hypothesis), against a reference model of the README's rules: never more
   probe permits in flight than half_open_max_calls, an open breaker never lets a request through before its
   timeout, every transition is one the README names, thresholds trip exactly when met, a forced open breaker
   leaves only by a reset.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.breaker import Breaker, BreakerBoard, BreakerConfig, BreakerUpdate, State, Verdict
from gateway.breaker.messages import Outcome, given_up, single

CL, OP, HO, FO = State.CLOSED, State.OPEN, State.HALF_OPEN, State.FORCED_OPEN
ALLOW, DENY, PROBE = Verdict.ALLOW, Verdict.DENY, Verdict.PROBE

TARGET = "up|a:1"
# volume 5 / errors 3 in the window, 4 failures in a row (failure_threshold), 5 s open, 2 probes to close, 2 at once.
CONFIG = BreakerConfig(error_threshold=3, volume_threshold=5, consecutive_threshold=4, open_s=5.0,
                       success_threshold=2, half_open_max_calls=2, probe_ttl_s=20.0)
OPENED = 100.0  # when the prepared open, half-open and forced open breakers opened
HALF_OPENED = OPENED + CONFIG.open_s  # when the half-open one half-opened, and was asked for its one probe in flight
LAPSED = HALF_OPENED + CONFIG.probe_ttl_s  # when that probe's permit is taken back, no outcome having come
NOW = {CL: OPENED + 1, OP: OPENED + 1, HO: HALF_OPENED + 1, FO: OPENED + 1}  # when each state's events happen


# ---- the states and the events ---------------------------------------------------------------------------------------


class Rig:
    """One target's breaker on a keeper's board; reload and restart replace the board."""

    def __init__(self) -> None:
        self.board = BreakerBoard({TARGET: CONFIG})
        self.returned: object = None  # what the event's own call answered (a permit granted, one taken back)

    @property
    def breaker(self) -> Breaker:
        return self.board._breakers[TARGET]  # (the board lends out no breaker; its verdict is the machine's)


def prepared(state: State) -> Rig:
    """A breaker in `state`: closed afresh; open since OPENED (4 failures in a row); half-open since HALF_OPENED
    with one of its two probe permits out; forced open by an operator at OPENED."""
    rig = Rig()
    if state is FO:
        rig.breaker.force_open(OPENED)
    elif state is not CL:
        rig.board.record([Outcome(TARGET, 0, 4, 4, 4, 4)], OPENED)
        if state is HO:
            rig.breaker.tick(HALF_OPENED)
            assert rig.breaker.grant_probe(HALF_OPENED)
    assert rig.breaker.state is state
    rig.breaker.drain()
    return rig


def _outcomes(*results: bool, probe: bool = False) -> Callable[[Rig, float], float]:
    def act(rig: Rig, now: float) -> float:
        for ok in results:
            rig.breaker.record(ok, now, probe=probe)
        return now
    return act


def _tick_at(when: float) -> Callable[[Rig, float], float]:
    def act(rig: Rig, now: float) -> float:
        now = max(now, when)
        rig.breaker.tick(now)
        return now
    return act


def _grant(rig: Rig, now: float) -> float:
    rig.returned = rig.breaker.grant_probe(now)
    return now


def _probe_successes_to_close(rig: Rig, now: float) -> float:
    """A second permit asked, then two probes succeed: the success_threshold-th closes."""
    rig.breaker.grant_probe(now)
    return _outcomes(True, True, probe=True)(rig, now)


def _given_up(rig: Rig, now: float) -> float:
    rig.breaker.record_outcome(given_up(TARGET), now)
    return now


def _lapse(rig: Rig, now: float) -> float:
    """No outcome until the probe's lifetime is over (LAPSED); then a permit is asked for."""
    return _grant(rig, max(now, LAPSED))


def _holder_exits(rig: Rig, now: float) -> float:
    """The machine's side: the permit is no longer in flight (the keeper then places it with a live worker)."""
    rig.returned = rig.breaker.take_back(HALF_OPENED)
    return now


def _force_open(rig: Rig, now: float) -> float:
    rig.returned = rig.board.force_open(TARGET, now)  # the update the keeper publishes
    return now


def _reset(rig: Rig, now: float) -> float:
    rig.returned = rig.board.reset(TARGET)
    return now


def _reload(config: BreakerConfig) -> Callable[[Rig, float], float]:
    """The keeper reloads: a new board adopts the old one's breakers, then the keeper's timer runs."""
    def act(rig: Rig, now: float) -> float:
        old, rig.board = rig.board, BreakerBoard({TARGET: config})
        rig.board.adopt(old)
        rig.breaker.tick(now)
        return now
    return act


def _restart(rig: Rig, now: float) -> float:
    """The keeper restarted: what Keeper.saved keeps (breakers not closed, half-open saved as open, with when they
    opened), taken up by a new board (Keeper.restore), then the new keeper's timer."""
    saved = rig.board.not_closed()
    rig.board = BreakerBoard({TARGET: CONFIG})
    for target, (state, opened_at) in saved.items():
        assert rig.board.restore(target, FO if state is FO else OP, opened_at)
    rig.breaker.tick(now)
    return now


@dataclass(frozen=True)
class Ev:
    words: str
    act: Callable[[Rig, float], float]  # makes the event happen at `now`; returns when it ended


EVENTS: dict[str, Ev] = {
    "success": Ev("a request's success", _outcomes(True)),
    "failure": Ev("a request's failure, below every threshold", _outcomes(False)),
    "failure_trips_window": Ev("S F S F then F: 5 requests, 3 failures in the window", _outcomes(
        True, False, True, False, False)),
    "success_trips_window": Ev("F F F S then S: the success brings the volume to 5", _outcomes(
        False, False, False, True, True)),
    "failure_trips_in_a_row": Ev("the 4th failure in a row (failure_threshold), volume 4", _outcomes(
        False, False, False, False)),
    "time_before_timeout": Ev("time passes, to just short of the open timeout", _tick_at(HALF_OPENED - 0.01)),
    "timeout_elapses": Ev("the open timeout (half_open_timeout) elapses", _tick_at(HALF_OPENED)),
    "permit_asked": Ev("a probe permit is asked for", _grant),
    "probe_success": Ev("a probe succeeds, short of success_threshold", _outcomes(True, probe=True)),
    "probe_success_closes": Ev("probes succeed up to success_threshold", _probe_successes_to_close),
    "probe_failure": Ev("a probe fails", _outcomes(False, probe=True)),
    "probe_given_up": Ev("a probe ends without a result (its client left)", _given_up),
    "probe_lapses": Ev("a probe does not report within its lifetime; a permit is asked", _lapse),
    "holder_exits": Ev("the worker holding the probe permit exits", _holder_exits),
    "operator_open": Ev("operator: breakers action=open", _force_open),
    "operator_reset": Ev("operator: breakers action=reset", _reset),
    "reload_same_thresholds": Ev("a reload: the services' timeouts (probe lifetime) change, thresholds do not",
                                 _reload(replace(CONFIG, probe_ttl_s=90.0))),
    "reload_new_thresholds": Ev("a reload changing the plugin's error_threshold", _reload(
        replace(CONFIG, error_threshold=4))),
    "keeper_restart": Ev("the keeper is killed and restarted (keeper.state.json)", _restart),
}

# ---- the table, from the README --------------------------------------------------------------------------------------
# (state, event) -> (state after, verdict of a request asked right after). Half-open's verdict: PROBE while fewer
# than half_open_max_calls (2) permits are out, DENY when both are.
#
# README, Shared state, circuit-breaker:
#   "they count in their target's breaker and skip its open circuit" -> closed ALLOWs, open and forced open DENY.
#   "Closed -> open when, within a rolling 10 s window, requests >= volume_threshold and failures ... >=
#   error_threshold, checked on every batch of outcomes, successes too ... or ... after failure_threshold
#   consecutive failures" -> the three trips.
#   "Open -> half-open after half_open_timeout" -> timeout_elapses; nothing else leaves open but an operator.
#   "in half-open the keeper grants exactly half_open_max_calls probe permits across all workers (a permit held by a
#   worker that exits goes to another at once; one whose probe has not reported after ... is taken back ...);
#   success_threshold successful probes close it, a failed one opens it again." -> the probe events; outcomes of
#   requests that were not probes are no probe's verdict.
#   Admin channel: "breakers [action=list|reset|open target=U|H:P]"; a breaker "forced open by an operator";
#   restart: "breakers forced open, and breakers open (with when each opened, so half_open_timeout runs on from
#   then; a half-open one comes back open with its timeout over, and half-opens at once)".
#   "one breaker per target for the whole gateway ... each one a source reports gets one, and keeps it while it
#   stays"; "a reload keeps it (the keeper is not restarted)" -> a reload keeps a staying target's breaker.

_ANY = ("success", "failure", "failure_trips_window", "success_trips_window", "failure_trips_in_a_row",
        "time_before_timeout", "probe_success", "probe_success_closes", "probe_failure", "probe_given_up",
        "holder_exits", "permit_asked", "timeout_elapses", "probe_lapses", "reload_same_thresholds",
        "reload_new_thresholds", "keeper_restart")

TABLE: dict[tuple[State, str], tuple[State, Verdict]] = {
    **{(CL, e): (CL, ALLOW) for e in _ANY},  # a probe's outcome reaching a closed breaker counts as any request's
    (CL, "failure_trips_window"): (OP, DENY),
    (CL, "success_trips_window"): (OP, DENY),
    (CL, "failure_trips_in_a_row"): (OP, DENY),
    (CL, "operator_open"): (FO, DENY),
    (CL, "operator_reset"): (CL, ALLOW),

    **{(OP, e): (OP, DENY) for e in _ANY},  # late outcomes, probes' too, say nothing to an open breaker
    (OP, "timeout_elapses"): (HO, PROBE),
    (OP, "probe_lapses"): (HO, PROBE),  # 25 s later: the timeout has elapsed, and one of two permits is out
    (OP, "operator_open"): (FO, DENY),
    (OP, "operator_reset"): (CL, ALLOW),

    **{(HO, e): (HO, PROBE) for e in _ANY},  # one permit of two out: the next request is the second probe
    (HO, "permit_asked"): (HO, DENY),  # both out
    (HO, "probe_success_closes"): (CL, ALLOW),
    (HO, "probe_failure"): (OP, DENY),
    (HO, "operator_open"): (FO, DENY),
    (HO, "operator_reset"): (CL, ALLOW),

    **{(FO, e): (FO, DENY) for e in _ANY},  # no timeout: forced open until an operator resets it
    (FO, "operator_open"): (FO, DENY),
    (FO, "operator_reset"): (CL, ALLOW),
}

# Pairs where the code does not do what the README says (test marked xfail(strict=True)): none now (a reload
# changing a breaker's thresholds gave it a new, closed breaker; fixed in BreakerBoard.adopt).
DISAGREE: dict[tuple[State, str], str] = {}

# The README states nothing on: a probe ended without a result (here: no verdict, its permit back, as "a lost outcome
# cannot hold half-open for ever"); a probe's outcome reaching a closed breaker (here: counted as any request's).


def test_the_table_covers_every_state_and_event() -> None:
    assert set(TABLE) == set(itertools.product(State, EVENTS))
    assert len(TABLE) == len(State) * len(EVENTS) == 4 * 19


def _entries() -> list[object]:
    marks = {pair: pytest.mark.xfail(strict=True, reason=why) for pair, why in DISAGREE.items()}
    return [pytest.param(state, event, id=f"{state.name.lower()}-{event}", marks=marks.get((state, event), ()))
            for state, event in TABLE]


@pytest.mark.parametrize(("state", "event"), _entries())
def test_transition(state: State, event: str) -> None:
    """One entry of TABLE: the state after the event, the verdict of the next request, what is published."""
    rig = prepared(state)
    expected, verdict = TABLE[state, event]
    when = EVENTS[event].act(rig, NOW[state])
    assert rig.breaker.state is expected, EVENTS[event].words
    published = [update.state for update in rig.breaker.drain()]
    if event == "keeper_restart":
        assert published == ([HO] if state is HO else [])  # "comes back open ..., and half-opens at once"
    elif event.startswith("operator"):
        assert rig.returned == BreakerUpdate(TARGET, expected) and published == [], "the board publishes it"
    elif not event.startswith("reload"):
        assert published == ([] if expected is state else [expected]), "each transition is published once"
    if event in ("permit_asked", "probe_lapses"):
        assert rig.returned is (expected is HO), "a permit is granted in half-open only, within max_calls"
    if event == "holder_exits":
        assert rig.returned is (state is HO), "the exited worker's permit is back"
    assert rig.breaker.allow(when) is verdict


def test_a_half_open_breaker_grants_exactly_max_calls_permits_from_the_table_state() -> None:
    """The table's half-open state has one permit of two out: one more, then none, until one comes back."""
    rig = prepared(HO)
    now = NOW[HO]
    assert [rig.breaker.grant_probe(now) for _ in range(3)] == [True, False, False]
    rig.breaker.record(True, now, probe=True)
    assert [rig.breaker.grant_probe(now) for _ in range(2)] == [True, False]


def test_a_failed_probe_restarts_the_open_timeout_from_the_failure() -> None:
    """README: "a failed one opens it again"; open -> half-open "after half_open_timeout" from that opening."""
    rig = prepared(HO)
    failed = NOW[HO]
    rig.breaker.record(False, failed, probe=True)
    assert rig.breaker.allow(failed + CONFIG.open_s - 0.01) is DENY
    assert rig.breaker.allow(failed + CONFIG.open_s) is PROBE


def test_late_outcomes_do_not_move_an_open_breakers_timeout() -> None:
    """README: "Open -> half-open after half_open_timeout": outcomes reaching an open breaker do not re-open it."""
    rig = prepared(OP)
    _outcomes(False, False, False, False, False)(rig, NOW[OP])
    assert rig.breaker.allow(HALF_OPENED) is PROBE


# ---- invariants over random sequences --------------------------------------------------------------------------------

# Kinds repeated to weight them (outcomes often, an operator rarely: each resets the story); step times are multiples
# of 1/4 s (exact in binary floating point), so the window's slot edges are hit exactly.
KINDS = (["ok"] * 3 + ["fail"] * 4 + ["probe_ok"] * 3 + ["probe_fail", "probe_given_up", "take_back", "reset",
         "force_open"] + ["allow"] * 3 + ["grant"] * 2 + ["tick"] * 2)
STEPS = st.lists(st.tuples(st.sampled_from(KINDS), st.sampled_from([0.0, 0.0, 0.0, 0.25, 0.25, 1.0, 1.0, 2.5, 4.75,
                                                                    5.0, 9.75, 20.0]), st.integers(0, 3)),
                 min_size=20, max_size=80)
CONFIGS = st.builds(BreakerConfig, error_threshold=st.integers(1, 4), volume_threshold=st.integers(1, 6),
                    consecutive_threshold=st.none() | st.integers(1, 4), open_s=st.sampled_from([1.0, 5.0]),
                    success_threshold=st.integers(1, 3), half_open_max_calls=st.integers(1, 3),
                    probe_ttl_s=st.sampled_from([2.0, 20.0]))
PROPERTY = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# The README's transitions, by what may cause them.
TIMER_EDGES = {(OP, HO)}
OUTCOME_EDGES = {(CL, OP), (HO, OP), (HO, CL)}
TICKING = {"allow", "grant", "tick"}  # calls that apply the open timeout first


@dataclass
class Model:
    """The README's rules, written without the machine's table: counts since the breaker last closed, the permits
    out, when it last opened."""

    config: BreakerConfig
    state: State = CL
    opened_at: float = float("-inf")
    outcomes: list[tuple[float, bool]] = field(default_factory=list)  # counted while closed, since it closed
    in_a_row: int = 0
    permits: list[float] = field(default_factory=list)  # when each permit out was granted
    probe_successes: int = 0

    def live(self, now: float) -> list[float]:
        """Permits still out: not reported, not taken back, not past their lifetime."""
        self.permits = [g for g in self.permits if now - g < self.config.probe_ttl_s]
        return self.permits

    def enter(self, state: State, now: float) -> None:
        self.state, self.permits, self.probe_successes = state, [], 0
        if state is OP:
            self.opened_at = now
        if state is CL:
            self.forget()

    def forget(self) -> None:
        self.outcomes, self.in_a_row = [], 0

    def met(self, now: float, span: float) -> bool:
        """Do the outcomes of the last `span` seconds, or the failures in a row, pass a threshold?"""
        recent = [ok for t, ok in self.outcomes if now - t <= span]
        c = self.config
        window = len(recent) >= c.volume_threshold and recent.count(False) >= c.error_threshold
        return window or (c.consecutive_threshold is not None and self.in_a_row >= c.consecutive_threshold)


OUTCOMES = ("ok", "fail", "probe_ok", "probe_fail", "probe_given_up")


def _act(breaker: Breaker, model: Model, kind: str, now: float, pick: int) -> tuple[object, float]:
    """Make step `kind` happen; returns what the call answered and the permit a probe spent (-1: none out)."""
    live = model.live(now) if model.state is HO else []
    spent = live[pick % len(live)] if live else -1.0
    if kind in OUTCOMES:
        probe = kind.startswith("probe_")
        outcome = given_up(TARGET) if kind == "probe_given_up" else single(TARGET, kind.endswith("ok"), probe)
        return breaker.record_outcome(outcome, now, granted_at=spent if probe else None), spent
    if kind == "allow":
        return breaker.allow(now), spent
    if kind == "grant":
        return breaker.grant_probe(now), spent
    if kind == "take_back":
        return breaker.take_back(spent), spent
    if kind == "tick":
        return breaker.tick(now), spent
    if kind == "force_open":
        return breaker.force_open(now), spent
    model.forget()  # (README silent: a reset starts the counts afresh)
    return breaker.reset(), spent


def _expected_by_outcome(model: Model, kind: str, now: float, spent: float) -> State:
    """The state an outcome leads to by the README, the model's counts updated."""
    before = model.state
    if before is CL and kind != "probe_given_up":
        ok = kind.endswith("ok")
        model.outcomes.append((now, ok))
        model.in_a_row = 0 if ok else model.in_a_row + 1
        return CL  # (whether it trips is checked against the window, whose slots are coarser than the model's)
    if before is not HO or not kind.startswith("probe_"):
        return before  # open and forced open hear nothing; half-open only its probes
    if spent == -1.0:
        return HO  # no permit out (lapsed, or none granted): no probe of this spell
    model.permits.remove(spent)
    if kind == "probe_fail":
        return OP
    if kind == "probe_ok":
        model.probe_successes += 1
        return CL if model.probe_successes >= model.config.success_threshold else HO
    return HO


def _apply(breaker: Breaker, model: Model, kind: str, now: float, pick: int) -> None:
    """One step on both, then every check the README allows."""
    before = model.state
    returned, spent = _act(breaker, model, kind, now, pick)
    expected = _expected_by_outcome(model, kind, now, spent) if kind in OUTCOMES else None
    if kind == "take_back":
        assert returned is (spent != -1.0), "a permit out was not taken back, or one not out was"
        if returned:
            model.permits.remove(spent)

    path = [before] + [u.state for u in breaker.drain()]
    for old, new in itertools.pairwise(path):
        assert old is not new, f"{kind}: a transition to the same state published"
        if kind == "reset":
            assert new is CL
        elif kind == "force_open":
            assert new is FO
        elif kind in TICKING:
            assert (old, new) in TIMER_EDGES and now - model.opened_at >= model.config.open_s, \
                "an open breaker half-opens only once its timeout has elapsed"
        else:
            assert (old, new) in OUTCOME_EDGES, f"{kind}: {old.name} -> {new.name}"
        model.enter(new, now)
    after = model.state
    assert breaker.state is after
    assert len(breaker.in_flight) <= model.config.half_open_max_calls, "more probe permits out than max_calls"
    if before is FO and kind != "reset":
        assert after is FO, "a forced open breaker left it without a reset"

    if kind in TICKING:
        if after is OP:
            assert now - model.opened_at < model.config.open_s, "the open timeout elapsed and the breaker stayed open"
        free = after is HO and len(model.live(now)) < model.config.half_open_max_calls
        if kind == "grant":
            assert returned is free, "a permit granted beyond max_calls, or refused below it"
        if kind == "allow":
            assert returned is (ALLOW if after is CL else PROBE if free else DENY)
        if returned is True or returned is PROBE:
            model.permits.append(now)
    if expected is None:
        return
    if before is CL:
        if after is OP:
            assert model.met(now, 9.999), "opened though no threshold was met in the last 10 s"
        else:
            assert not model.met(now, 9.0), "a threshold was met within the last 9 s and the breaker stayed closed"
    else:
        assert after is expected, f"{kind} in {before.name}"


@PROPERTY
@given(config=CONFIGS, steps=STEPS)
def test_random_sequences_keep_the_readmes_invariants(config: BreakerConfig, steps: list[tuple[str, float, int]]
                                                       ) -> None:
    breaker, model = Breaker(TARGET, config), Model(config)
    now = 0.0
    for kind, dt, pick in steps:
        now += dt
        _apply(breaker, model, kind, now, pick)


# The board's steps: a probe that succeeded may keep its permit for its worker's next request (Outcome.kept).
BOARD_STEPS = st.lists(st.tuples(st.sampled_from(KINDS + ["probe_ok_kept"] * 3), st.sampled_from(
    [0.0, 0.0, 0.25, 1.0, 2.5, 5.0, 20.0]), st.integers(0, 3)), min_size=20, max_size=80)


@PROPERTY
@given(config=CONFIGS, steps=BOARD_STEPS, workers=st.integers(1, 4))
def test_the_board_never_has_more_probes_out_than_max_calls(config: BreakerConfig,
                                                            steps: list[tuple[str, float, int]], workers: int) -> None:
    """README: "the keeper grants exactly half_open_max_calls probe permits across all workers": the permits the
    board hands out (tick, record, take_back), less those it had back, never pass max_calls in one half-open
    spell, and a half-open breaker with none out and none lapsing is never left without its permits. "A worker
    whose probe succeeded keeps the permit for its next request ... (it counts the permit in flight still, and grants
    none in its place; one it no longer counted is withdrawn)": every permit a worker holds, kept ones too, is one
    the board counts in flight."""
    board = BreakerBoard({TARGET: config})
    held: list[tuple[int, float]] = []  # (worker, when granted) of each permit out
    now = 0.0

    def hand_out(permits: list[str], worker: int | None = None) -> None:
        for n, _ in enumerate(permits):
            held.append((n % workers if worker is None else worker, now))

    for kind, dt, pick in steps:
        now += dt
        if kind in ("ok", "fail"):
            hand_out(board.record([single(TARGET, kind == "ok")], now)[1])
        elif kind in ("probe_ok", "probe_ok_kept", "probe_fail", "probe_given_up", "take_back"):
            if not held:
                continue  # no probe out to report on
            worker, granted = held.pop(pick % len(held))
            if kind == "take_back":  # its worker exited
                hand_out(board.take_back(TARGET, granted, now))
            elif kind == "probe_ok_kept":  # (its worker saw the breaker half-open, as it is while a permit is out)
                held.append((worker, now))
                permits = board.record([Outcome(TARGET, 1, probe=True, kept=True)], now,
                                       lambda _target, g=granted: g)[1]
                sent, withdrawn = board.settle(permits, [TARGET])
                hand_out(sent, worker)  # (to the worker that reported)
                for _ in withdrawn:
                    held.remove((worker, now))
            else:
                outcome = given_up(TARGET) if kind == "probe_given_up" else single(TARGET, kind == "probe_ok", True)
                hand_out(board.record([outcome], now, lambda _target, g=granted: g)[1], worker)
        elif kind == "force_open":
            board.force_open(TARGET, now)
        elif kind == "reset":
            board.reset(TARGET)
        else:  # allow, grant, tick: the keeper's timer
            hand_out(board.tick(now)[1])
        state = {u.target: u.state for u in board.states()}[TARGET]
        if state is not HO:
            held.clear()  # permits are void outside half-open
        held[:] = [(w, g) for w, g in held if now - g < config.probe_ttl_s]
        assert len(held) <= config.half_open_max_calls
        assert len(board.in_flight(TARGET)) <= config.half_open_max_calls
        assert not Counter(g for _, g in held) - Counter(board.in_flight(TARGET)), "a permit held but not counted"
        if state is HO and kind == "tick":
            assert len(held) == config.half_open_max_calls, "half-open with permits left unhanded"
