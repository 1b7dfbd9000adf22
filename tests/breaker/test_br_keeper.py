"""The keeper's BreakerBoard, and half-open probes counted across simulated workers."""

import msgspec
import pytest

from gateway.breaker import BreakerBoard, BreakerConfig, BreakerUpdate, BreakerView, Outcome, State

CONFIG = BreakerConfig(error_threshold=2, volume_threshold=2, open_s=5.0, half_open_max_calls=2, success_threshold=2)


def board():
    return BreakerBoard({"a": CONFIG, "b": CONFIG})


def trip(breakers, target="a", now=0.0):
    return breakers.record([Outcome(target, 0, 2, 2, 2, 2)], now)


def test_outcomes_that_trip_a_breaker_publish_the_transition():
    assert trip(board()) == ([BreakerUpdate("a", State.OPEN)], [])


def test_outcomes_for_targets_without_a_breaker_are_ignored():
    assert board().record([Outcome("zzz", 0, 50, 50, 50, 50)], 0.0) == ([], [])


def test_the_timeout_half_opens_and_hands_out_max_calls_permits():
    breakers = board()
    trip(breakers)
    assert breakers.tick(4.9) == ([], [])
    assert breakers.tick(5.0) == ([BreakerUpdate("a", State.HALF_OPEN)], ["a", "a"])
    assert breakers.tick(5.1) == ([], [])


def test_a_probes_outcome_passes_its_permit_to_the_reporting_worker():
    breakers = board()
    trip(breakers)
    breakers.tick(5.0)
    assert breakers.record([Outcome("a", 1, 0, probe=True)], 5.2) == ([], ["a"])


def test_the_closing_probe_publishes_closed_and_hands_out_nothing():
    breakers = board()
    trip(breakers)
    breakers.tick(5.0)
    breakers.record([Outcome("a", 1, 0, probe=True)], 5.2)
    assert breakers.record([Outcome("a", 1, 0, probe=True)], 5.3) == ([BreakerUpdate("a", State.CLOSED)], [])


def test_operators_reset_and_force_open_return_the_state_to_publish():
    breakers = board()
    assert breakers.force_open("b", 0.0) == BreakerUpdate("b", State.FORCED_OPEN)
    assert breakers.tick(100.0) == ([], [])
    assert breakers.reset("b") == BreakerUpdate("b", State.CLOSED)


def test_an_unknown_target_is_a_key_error_naming_it():
    with pytest.raises(KeyError, match="zzz"):
        board().reset("zzz")


def test_states_and_describe_cover_every_breaker():
    breakers = board()
    trip(breakers)
    assert breakers.states() == [BreakerUpdate("a", State.OPEN), BreakerUpdate("b", State.CLOSED)]
    assert breakers.describe(0.0, "a")["a"]["state"] == "open" and set(breakers.describe(0.0)) == {"a", "b"}


@pytest.mark.parametrize("workers", [2, 4, 8])
def test_half_open_admits_exactly_max_calls_probes_across_all_workers(workers):
    """Every worker wants to probe; the keeper's permits, spread round-robin, let exactly half_open_max_calls go."""
    breakers = board()
    views = [BreakerView() for _ in range(workers)]
    for update in trip(breakers)[0]:
        for view in views:
            view.apply(update)
    updates, permits = breakers.tick(5.0)
    for i, target in enumerate(permits):
        views[i % workers].permit(target)
    for update in updates:
        for view in views:
            view.apply(update)
    probes = [view.started("a") for view in views for _ in range(10) if not view.is_open("a")]
    assert probes.count(True) == CONFIG.half_open_max_calls


def test_board_messages_are_msgpack_encodable():
    update = BreakerUpdate("a", State.HALF_OPEN)
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(update), type=BreakerUpdate) == update
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(update)) == ["a", 2]


def test_the_board_has_timers_running_only_while_a_breaker_is_not_closed():
    breakers = board()
    assert breakers.all_closed()
    trip(breakers)
    assert not breakers.all_closed()  # open: its timeout runs
    breakers.tick(5.0)
    assert not breakers.all_closed()  # half-open: probes are out
    breakers.reset("a")
    assert breakers.all_closed()
