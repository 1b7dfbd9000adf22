"""The worker's BreakerView: the skip set, probe permits and batched outcomes."""

from gateway.breaker import BreakerUpdate, BreakerView, Outcome, State


def view_with(target, state):
    view = BreakerView()
    view.apply(BreakerUpdate(target, state))
    return view


def test_unknown_targets_are_closed():
    view = BreakerView()
    assert not view.is_open("a") and view.state("a") is State.CLOSED


def test_open_forced_open_and_half_open_targets_are_skipped():
    for state in (State.OPEN, State.FORCED_OPEN, State.HALF_OPEN):
        assert view_with("a", state).is_open("a")


def test_a_closing_update_stops_skipping():
    view = view_with("a", State.OPEN)
    view.apply(BreakerUpdate("a", State.CLOSED))
    assert not view.is_open("a")


def test_a_permit_lets_one_probe_through():
    view = view_with("a", State.HALF_OPEN)
    view.permit("a")
    assert not view.is_open("a")
    assert view.started("a") is True
    assert view.is_open("a") and view.started("a") is False


def test_permits_add_up():
    view = view_with("a", State.HALF_OPEN)
    view.permit("a")
    view.permit("a")
    assert [view.started("a"), view.started("a"), view.started("a")] == [True, True, False]


def test_a_permit_that_arrives_before_the_half_open_update_is_kept():
    view = view_with("a", State.OPEN)
    view.permit("a")
    view.apply(BreakerUpdate("a", State.HALF_OPEN))
    assert not view.is_open("a") and view.started("a")


def test_leaving_half_open_voids_permits():
    view = view_with("a", State.HALF_OPEN)
    view.permit("a")
    view.apply(BreakerUpdate("a", State.OPEN))
    assert view.is_open("a") and not view.started("a")


def test_requests_to_a_closed_target_are_not_probes():
    view = BreakerView()
    view.permit("a")
    view.apply(BreakerUpdate("a", State.CLOSED))
    assert not view.started("a")


def test_results_are_batched_per_target_with_their_failure_runs():
    view = BreakerView()
    for ok in (False, True, False, False, False, True, False, False):
        assert view.record("a", ok) is None
    view.record("b", True)
    assert view.drain_outcomes() == [Outcome("a", 2, 6, 1, 3, 2), Outcome("b", 1, 0, 0, 0, 0)]
    assert view.drain_outcomes() == []


def test_successes_alone_wait_for_a_batch_with_successes_but_a_failure_goes_at_once_with_them():
    view = BreakerView()
    view.record("a", True)
    view.record("b", True)
    view.record("b", False)
    assert view.drain_outcomes(successes=False) == [Outcome("b", 1, 1, 0, 1, 1)]
    view.record("a", True)
    assert view.drain_outcomes(successes=False) == []
    view.record("a", False)  # in order after the two successes: no leading failure
    assert view.drain_outcomes(successes=False) == [Outcome("a", 2, 1, 0, 1, 1)]
    view.record("a", True)
    assert view.drain_outcomes(successes=True) == [Outcome("a", 1, 0, 0, 0, 0)]


def test_a_run_without_successes_is_lead_run_and_tail_at_once():
    view = BreakerView()
    for _ in range(3):
        view.record("a", False)
    assert view.drain_outcomes() == [Outcome("a", 0, 3, 3, 3, 3)]


def test_a_probe_result_is_returned_at_once_not_batched():
    view = BreakerView()
    assert view.record("a", False, probe=True) == Outcome("a", 0, 1, 1, 1, 1, probe=True)
    assert view.drain_outcomes() == []
