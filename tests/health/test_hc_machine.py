"""The per-target health state machine, exhaustively.

1. The transition table is total and each of its 16 rows does what it says (counters included).
2. Every event sequence up to length 6, under threshold sets with disabled counters, one-shot thresholds and the
   combined `fall` counter, from both stable states, agrees with a reference model written the way
   lua-resty-healthcheck's `incr_counter` is (no table), on the internal state after every step.
3. Both checks on one machine, as Kong reports probes and proxied traffic to one checker: every sequence up to
   length 5 of events each judged by its own check's thresholds, counters shared, agrees with the same model; and
   a success of either check clears the failures the other counted.
"""

from __future__ import annotations

import itertools

import pytest

from gateway.health import TRANSITIONS, Event, State, TargetHealth, Thresholds

KINDS = ("success", "failure")
EVENTS = list(Event)


def test_table_is_total() -> None:
    assert set(TRANSITIONS) == set(itertools.product(State, KINDS, (False, True)))


def _prepared(state: State, event: Event, reached: bool) -> tuple[TargetHealth, Thresholds]:
    """A target in `state` whose next `event` reaches its threshold (reached) or not."""
    th = TargetHealth(state)
    limit = 1 if reached else 3
    thresholds = Thresholds(successes=limit, http_failures=limit, tcp_failures=limit, timeouts=limit)
    return th, thresholds


@pytest.mark.parametrize("state, kind, reached", sorted(TRANSITIONS, key=lambda k: (k[0].value, k[1], k[2])))
def test_each_row(state: State, kind: str, reached: bool) -> None:
    event = Event.SUCCESS if kind == "success" else Event.TCP_FAILURE
    th, thresholds = _prepared(state, event, reached)
    th.counters["success" if kind == "failure" else "tcp_failure"] = 1  # the other kind's counter, to be cleared
    transition = th.record(event, thresholds)
    expected = TRANSITIONS[(state, kind, reached)]
    assert th.state is expected
    assert (transition is None) == (expected is state)
    if transition is not None:
        assert (transition.old, transition.new) == (state, expected)
        assert transition.changed == (state.healthy != expected.healthy)
    ignored = (state, kind) in ((State.HEALTHY, "success"), (State.UNHEALTHY, "failure"))
    if ignored:
        assert th.counters["success" if kind == "failure" else "tcp_failure"] == 1, "an ignored event clears nothing"
    elif expected in (State.HEALTHY, State.UNHEALTHY):
        assert all(v == 0 for v in th.counters.values()), "reaching a stable state clears every counter"
    else:
        own = "success" if kind == "success" else "tcp_failure"
        other = "tcp_failure" if kind == "success" else "success"
        assert th.counters[own] == 1 and th.counters[other] == 0


def test_disabled_counter_ignores_its_events() -> None:
    th = TargetHealth()
    assert th.record(Event.TIMEOUT, Thresholds(http_failures=1)) is None and th.state is State.HEALTHY
    th.force(False)
    assert th.record(Event.SUCCESS, Thresholds(http_failures=1)) is None and th.state is State.UNHEALTHY


def test_force_and_external_health() -> None:
    th = TargetHealth()
    th.record(Event.HTTP_FAILURE, Thresholds(http_failures=2))
    assert th.state is State.MOSTLY_HEALTHY and th.healthy
    t = th.force(False)
    assert t is not None and t.changed and th.state is State.UNHEALTHY and not any(th.counters.values())
    assert th.force(False) is None
    assert [s.healthy for s in State] == [True, True, False, False]


# ---- reference model ------------------------------------------------------------------------------------------------

_NAMES = {State.HEALTHY: "healthy", State.UNHEALTHY: "unhealthy", State.MOSTLY_HEALTHY: "mostly_healthy",
          State.MOSTLY_UNHEALTHY: "mostly_unhealthy"}
_STATES = {v: k for k, v in _NAMES.items()}


def reference_step(health: str, ctr: dict[str, int], event: Event, t: Thresholds) -> str:
    """lua-resty-healthcheck's incr_counter, plus the combined `failures` counter."""
    success = event is Event.SUCCESS
    limit = t.limit(event)
    combined = 0 if success else t.failures
    if limit == 0 and combined == 0:
        return health  # fail fast on counters disabled by configuration
    report = "healthy" if success else "unhealthy"
    if report == health:
        return health  # no need to count successes when fully healthy, or failures when fully unhealthy
    if success:
        for k in ("http_failure", "tcp_failure", "timeout", "failures"):
            ctr[k] = 0
        ctr["success"] += 1
        hit = ctr["success"] >= limit
    else:
        ctr["success"] = 0
        hit = False
        if limit:
            ctr[event.value] += 1
            hit = ctr[event.value] >= limit
        if combined:
            ctr["failures"] += 1
            hit = hit or ctr["failures"] >= combined
    if hit:
        return report
    if health == "healthy" and report == "unhealthy":
        return "mostly_healthy"
    if health == "unhealthy" and report == "healthy":
        return "mostly_unhealthy"
    return health


THRESHOLD_SETS = [
    Thresholds(successes=2, http_failures=3, tcp_failures=2, timeouts=1),  # mixed
    Thresholds(successes=1, http_failures=1, tcp_failures=1, timeouts=1),  # every event decides at once
    Thresholds(successes=0, http_failures=2, tcp_failures=0, timeouts=3),  # disabled counters
    Thresholds(successes=3, http_failures=0, tcp_failures=0, timeouts=0),  # failures never counted
    Thresholds(successes=2, failures=3),  # nginx rise=2 fall=3: any failure kind counts together
    Thresholds(successes=2, http_failures=2, tcp_failures=5, timeouts=5, failures=3),  # both kinds of counters
]


@pytest.mark.parametrize("thresholds", THRESHOLD_SETS)
@pytest.mark.parametrize("start", [State.HEALTHY, State.UNHEALTHY])
def test_every_sequence_matches_the_reference(thresholds: Thresholds, start: State) -> None:
    checked = 0

    def explore(th: TargetHealth, ref: str, ref_ctr: dict[str, int], depth: int, path: tuple[Event, ...]) -> None:
        nonlocal checked
        if depth == 0:
            return
        for event in EVENTS:
            mine = TargetHealth(th.state)
            mine.counters = dict(th.counters)
            ctr = dict(ref_ctr)
            before = mine.state
            transition = mine.record(event, thresholds)
            expected = reference_step(ref, ctr, event, thresholds)
            assert _NAMES[mine.state] == expected, (path + (event,), thresholds)
            assert (transition is not None) == (mine.state is not before)
            if transition is not None:
                assert transition.changed == (before.healthy != mine.state.healthy)
            checked += 1
            explore(mine, expected, ctr, depth - 1, path + (event,))

    zero = {"success": 0, "http_failure": 0, "tcp_failure": 0, "timeout": 0, "failures": 0}
    explore(TargetHealth(start), _NAMES[start], zero, 6, ())
    assert checked == sum(4 ** n for n in range(1, 7))


def test_rise_and_fall_are_consecutive_counts() -> None:
    """nginx: fall=3 means three failures in a row of any kind; a success in between starts over."""
    t = Thresholds(successes=2, failures=3)
    th = TargetHealth()
    for event in (Event.TIMEOUT, Event.TCP_FAILURE, Event.SUCCESS, Event.HTTP_FAILURE, Event.TIMEOUT):
        th.record(event, t)
    assert th.state is State.MOSTLY_HEALTHY
    assert th.record(Event.TCP_FAILURE, t).new is State.UNHEALTHY
    assert th.record(Event.SUCCESS, t).new is State.MOSTLY_UNHEALTHY
    assert th.record(Event.SUCCESS, t).new is State.HEALTHY


def test_kong_counters_are_per_kind() -> None:
    """Kong: http_failures=2, tcp_failures=2 - one of each does not trip; a second of one kind does."""
    t = Thresholds(successes=1, http_failures=2, tcp_failures=2)
    th = TargetHealth()
    th.record(Event.HTTP_FAILURE, t)
    th.record(Event.TCP_FAILURE, t)
    assert th.state is State.MOSTLY_HEALTHY
    assert th.record(Event.TCP_FAILURE, t).new is State.UNHEALTHY


# ---- both checks on one machine ------------------------------------------------------------------------------------

ACTIVE = Thresholds(successes=1, http_failures=1, tcp_failures=2, timeouts=1)
PASSIVE = Thresholds(successes=0, http_failures=2, tcp_failures=1, timeouts=3)
# (active, passive) threshold pairs: Kong's blocks side by side; the nginx `fall` alias on the active side only
CHECK_PAIRS = [
    (ACTIVE, PASSIVE),
    (Thresholds(successes=3, http_failures=2, tcp_failures=2, timeouts=2), Thresholds(successes=2, http_failures=3)),
    (Thresholds(successes=2, failures=3), Thresholds(http_failures=2, tcp_failures=2, timeouts=2)),
]


@pytest.mark.parametrize("active, passive", CHECK_PAIRS)
@pytest.mark.parametrize("start", [State.HEALTHY, State.UNHEALTHY])
def test_every_mixed_sequence_of_both_checks_matches_the_reference(active: Thresholds, passive: Thresholds,
                                                                    start: State) -> None:
    """lua-resty-healthcheck's incr_counter with `check` picking the limit: every sequence up to length 5 of (event,
    which check saw it) on one target, counters shared, agrees with the reference model step by step."""
    steps = [(event, thresholds) for event in EVENTS for thresholds in (active, passive)]
    checked = 0

    def explore(th: TargetHealth, ref: str, ref_ctr: dict[str, int], depth: int) -> None:
        nonlocal checked
        if depth == 0:
            return
        for event, thresholds in steps:
            mine = TargetHealth(th.state)
            mine.counters = dict(th.counters)
            ctr = dict(ref_ctr)
            mine.record(event, thresholds)
            expected = reference_step(ref, ctr, event, thresholds)
            assert _NAMES[mine.state] == expected
            checked += 1
            explore(mine, expected, ctr, depth - 1)

    zero = {"success": 0, "http_failure": 0, "tcp_failure": 0, "timeout": 0, "failures": 0}
    explore(TargetHealth(start), _NAMES[start], zero, 5)
    assert checked == sum(8 ** n for n in range(1, 6))


def test_a_probe_success_clears_the_failures_real_traffic_counted() -> None:
    """Passive http_failures 2: failure, passing probe, failure is still only one failure in a row."""
    th = TargetHealth()
    th.record(Event.HTTP_FAILURE, PASSIVE)
    assert th.state is State.MOSTLY_HEALTHY and th.counters["http_failure"] == 1
    assert th.record(Event.SUCCESS, ACTIVE) is not None and th.state is State.HEALTHY
    th.record(Event.HTTP_FAILURE, PASSIVE)
    assert th.state is State.MOSTLY_HEALTHY, "the probe's success started the count over"


def test_a_passive_success_clears_the_failures_probes_counted() -> None:
    """Active tcp_failures 2: a probe's TCP failure, then a good proxied answer (passive successes 2, so not yet
    healthy again), then another failed probe: one failure in a row, the target still gets traffic."""
    active = Thresholds(successes=1, tcp_failures=2)
    passive = Thresholds(successes=2, tcp_failures=5)
    th = TargetHealth()
    th.record(Event.TCP_FAILURE, active)
    assert th.record(Event.SUCCESS, passive) is None and th.state is State.MOSTLY_HEALTHY
    assert th.counters == {"success": 1, "http_failure": 0, "tcp_failure": 0, "timeout": 0, "failures": 0}
    th.record(Event.TCP_FAILURE, active)
    assert th.state is State.MOSTLY_HEALTHY and th.healthy


def test_each_event_is_judged_by_its_own_checks_threshold() -> None:
    """The counter is shared, the limit is the reporting check's: with active http_failures 3 and passive 2, two
    probe failures then one passive failure make 3 in a row, past the passive limit of 2; two passive failures
    alone trip it, two probe failures do not."""
    active, passive = Thresholds(http_failures=3), Thresholds(http_failures=2)
    probes = TargetHealth()
    probes.record(Event.HTTP_FAILURE, active)
    assert probes.record(Event.HTTP_FAILURE, active) is None and probes.state is State.MOSTLY_HEALTHY
    assert probes.record(Event.HTTP_FAILURE, passive).new is State.UNHEALTHY  # 3 >= 2
    traffic = TargetHealth()
    traffic.record(Event.HTTP_FAILURE, passive)
    assert traffic.record(Event.HTTP_FAILURE, passive).new is State.UNHEALTHY
    disabled = TargetHealth()
    disabled.record(Event.TIMEOUT, Thresholds(timeouts=1, successes=1))
    assert disabled.state is State.UNHEALTHY
    assert disabled.record(Event.SUCCESS, Thresholds(http_failures=2)) is None, "passive successes 0: not counted"
    assert disabled.record(Event.SUCCESS, Thresholds(successes=1)).new is State.HEALTHY
