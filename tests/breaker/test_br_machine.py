"""One target's Breaker: thresholds, the rolling window, timeouts, probes, operator actions, aliases."""

import pytest

from gateway.breaker import Breaker, BreakerConfig, BreakerUpdate, Outcome, State, Verdict
from gateway.breaker.messages import given_up
from gateway.policies.circuit_breaker.schema import CircuitBreakerConfig


def make(**settings):
    return Breaker("t", BreakerConfig(**settings))


def feed(breaker, results, now=0.0):
    for ok in results:
        breaker.record(ok, now)
    return breaker.state


def opened(now=0.0, **settings):
    breaker = make(error_threshold=2, volume_threshold=2, **settings)
    feed(breaker, [False, False], now)
    assert breaker.state is State.OPEN
    return breaker


def test_a_new_breaker_is_closed_and_allows():
    breaker = make()
    assert breaker.state is State.CLOSED and breaker.allow(0.0) is Verdict.ALLOW


def test_opens_when_both_volume_and_errors_reach_their_thresholds():
    assert feed(make(error_threshold=3, volume_threshold=5), [True, True, False, False, False]) is State.OPEN


def test_errors_below_the_volume_threshold_do_not_open():
    assert feed(make(error_threshold=3, volume_threshold=5), [False, False, False]) is State.CLOSED


def test_volume_without_enough_errors_does_not_open():
    assert feed(make(error_threshold=3, volume_threshold=5), [True] * 10 + [False, False]) is State.CLOSED


def test_failures_older_than_the_window_are_forgotten():
    breaker = make(error_threshold=3, volume_threshold=3, window_s=10.0)
    feed(breaker, [False, False], 0.0)
    assert feed(breaker, [False], 10.5) is State.CLOSED
    assert feed(breaker, [False, False], 11.0) is State.OPEN


def test_consecutive_failures_open_regardless_of_volume():
    assert feed(make(volume_threshold=100, consecutive_threshold=3), [True, False, False, False]) is State.OPEN


def test_a_success_resets_the_consecutive_count():
    assert feed(make(volume_threshold=100, consecutive_threshold=3), [False, False, True, False, False]) \
        is State.CLOSED


def test_a_batched_outcome_extends_the_run_it_continues():
    breaker = make(volume_threshold=100, consecutive_threshold=4)
    feed(breaker, [True, False, False])
    assert breaker.record_outcome(Outcome("t", 1, 2, 2, 2, 0), 0.0) is State.OPEN  # F F S: a run of 4


def test_a_batched_outcome_opens_on_its_own_inner_run():
    breaker = make(volume_threshold=100, consecutive_threshold=3)
    assert breaker.record_outcome(Outcome("t", 2, 3, 0, 3, 0), 0.0) is State.OPEN  # S F F F S


def test_a_batched_outcome_leaves_its_tail_as_the_count():
    breaker = make(volume_threshold=100, consecutive_threshold=3)
    breaker.record_outcome(Outcome("t", 1, 2, 0, 2, 2), 0.0)  # S F F
    assert feed(breaker, [False]) is State.OPEN


def test_an_all_failure_batch_adds_to_the_count():
    breaker = make(volume_threshold=100, consecutive_threshold=5)
    feed(breaker, [False, False])
    assert breaker.record_outcome(Outcome("t", 0, 3, 3, 3, 3), 0.0) is State.OPEN


def test_open_denies_until_the_timeout_then_half_opens():
    breaker = opened(open_s=5.0)
    assert breaker.allow(4.9) is Verdict.DENY
    assert breaker.tick(5.0) is State.HALF_OPEN


def test_allow_applies_the_timeout_itself():
    assert opened(open_s=5.0).allow(5.0) is Verdict.PROBE


def test_half_open_grants_exactly_max_calls_probes():
    breaker = opened(open_s=1.0, half_open_max_calls=3)
    breaker.tick(1.0)
    assert [breaker.grant_probe(1.0) for _ in range(5)] == [True, True, True, False, False]


def test_a_probes_outcome_frees_its_permit():
    breaker = opened(open_s=1.0, success_threshold=3)
    assert breaker.allow(1.0) is Verdict.PROBE and breaker.allow(1.0) is Verdict.DENY
    breaker.record(True, 1.1, probe=True)
    assert breaker.allow(1.1) is Verdict.PROBE


def test_a_probe_given_up_frees_its_permit_and_gives_no_verdict():
    breaker = opened(open_s=1.0, success_threshold=1)
    assert breaker.allow(1.0) is Verdict.PROBE and breaker.allow(1.0) is Verdict.DENY
    assert breaker.record_outcome(given_up("t"), 1.1) is State.HALF_OPEN  # one success would have closed it
    assert breaker.allow(1.1) is Verdict.PROBE


def test_a_permit_without_an_outcome_lapses_after_its_ttl():
    breaker = opened(open_s=1.0, probe_ttl_s=10.0)
    assert breaker.grant_probe(1.0)
    assert not breaker.grant_probe(10.9)
    assert breaker.grant_probe(11.0)


def test_success_threshold_probes_close_the_breaker():
    breaker = opened(open_s=1.0, success_threshold=2)
    breaker.tick(1.0)
    assert breaker.record(True, 1.0, probe=True) is State.HALF_OPEN
    assert breaker.record(True, 1.0, probe=True) is State.CLOSED


def test_a_failed_probe_opens_again_and_restarts_the_timeout():
    breaker = opened(open_s=1.0)
    breaker.tick(1.0)
    assert breaker.record(False, 2.0, probe=True) is State.OPEN
    assert breaker.tick(2.9) is State.OPEN and breaker.tick(3.0) is State.HALF_OPEN


def test_half_open_ignores_results_of_requests_that_were_not_probes():
    breaker = opened(open_s=1.0)
    breaker.tick(1.0)
    assert breaker.record(False, 1.0) is State.HALF_OPEN


def test_an_open_breaker_ignores_late_results():
    breaker = opened(open_s=10.0)
    feed(breaker, [True, True, True, False], 1.0)
    assert breaker.state is State.OPEN


def test_closing_forgets_the_old_counts():
    breaker = opened(open_s=1.0, success_threshold=1, consecutive_threshold=3)
    breaker.tick(1.0)
    breaker.record(True, 1.0, probe=True)
    assert feed(breaker, [False], 1.0) is State.CLOSED


def test_reset_closes_and_forgets_counts():
    breaker = make(error_threshold=2, volume_threshold=2)
    feed(breaker, [False])
    breaker.reset()
    assert feed(breaker, [False]) is State.CLOSED


def test_reset_closes_an_open_breaker():
    breaker = opened()
    assert breaker.reset() is State.CLOSED and breaker.allow(0.0) is Verdict.ALLOW


def test_force_open_holds_past_any_timeout_until_reset():
    breaker = make(open_s=1.0)
    breaker.force_open(0.0)
    assert breaker.allow(1000.0) is Verdict.DENY and breaker.state is State.FORCED_OPEN
    assert breaker.reset() is State.CLOSED


def test_every_transition_is_queued_for_publishing_once():
    breaker = opened(open_s=1.0, success_threshold=1)
    breaker.tick(1.0)
    breaker.record(True, 1.0, probe=True)
    assert breaker.drain() == [BreakerUpdate("t", State.OPEN), BreakerUpdate("t", State.HALF_OPEN),
                               BreakerUpdate("t", State.CLOSED)]
    assert breaker.drain() == []


def test_describe_reports_state_and_counts():
    breaker = make()
    feed(breaker, [True, False, False])
    assert breaker.describe(0.0) == {"state": "closed", "requests": 3, "failures": 2, "consecutive_failures": 2,
                                     "probes_in_flight": 0, "probe_successes": 0}


def test_config_defaults_follow_the_plugin_schema():
    config = BreakerConfig.from_plugin(CircuitBreakerConfig())
    assert (config.error_threshold, config.volume_threshold, config.open_s, config.consecutive_threshold,
            config.success_threshold, config.half_open_max_calls) == (5, 10, 30.0, None, 2, 1)


def test_failure_threshold_is_the_consecutive_condition_beside_error_threshold():
    config = BreakerConfig.from_plugin(CircuitBreakerConfig(error_threshold=9, failure_threshold=4))
    assert (config.error_threshold, config.consecutive_threshold) == (9, 4)


@pytest.mark.parametrize("given", [{"timeout": 1500}, {"half_open_timeout": 1500},
                                   {"timeout": 1500, "half_open_timeout": 1500}])
def test_timeout_is_half_open_timeout_in_ms(given):
    assert BreakerConfig.from_plugin(CircuitBreakerConfig(**given)).open_s == 1.5


@pytest.mark.parametrize("ok", [True, False])
def test_a_single_result_is_one_outcome(ok):
    breaker = make(volume_threshold=1, error_threshold=1)
    assert breaker.record(ok, 0.0) is (State.CLOSED if ok else State.OPEN)
