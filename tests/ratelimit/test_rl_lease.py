"""The worker's LeaseTable: spending leases, asking ahead of need, expiry, waiting, and the local-share fallback."""

from math import ceil

import pytest

from gateway.ratelimit import FallbackUsage, Grant, LeaseTable, Ledger, LimitSpec, ReturnedLease, Status, Window
from gateway.ratelimit.lease import IDLE_S, LEAD_S, RESEND_S, WAIT_S

T0 = 1_700_000_040.0  # a whole minute (UTC)
SECOND = LimitSpec(windows=(Window("second", 100),))


def grant(granted, remaining=(50,), resets=(T0 + 1,), wall=T0, expires=T0 + 1, retry=0.0, delay=0.0, key="k"):
    return Grant(key, granted, remaining, resets, wall, expires, retry, delay)


def ready(spec=SECOND, granted=10, workers=2, **kw):
    """A table that took one request of "k" (WAIT) and received `granted` tokens."""
    table = LeaseTable("w1", workers)
    table.take("k", spec, 0.0, T0)
    table.refills(0.0)
    table.apply(grant(granted, **kw), 0.001, T0 + 0.001)
    return table


def takes(table, count, spec=SECOND, now=0.01, wall=T0 + 0.01, **kw):
    return [table.take("k", spec, now, wall, **kw).status for _ in range(count)]


def test_the_first_request_of_a_key_waits_and_asks_the_keeper():
    table = LeaseTable("w1", 2)
    assert table.take("k", SECOND, 0.0, T0).status is Status.WAIT
    [request] = table.refills(0.0)
    assert (request.key, request.spec, request.worker, request.want) == ("k", SECOND, "w1", 5)


def test_leased_tokens_are_spent_without_asking():
    table = ready(granted=10)
    assert takes(table, 5) == [Status.ADMIT] * 5
    assert table.refills(0.01) == []


def test_below_half_of_the_last_grant_the_key_asks_ahead_of_need():
    table = ready(granted=10)
    takes(table, 6)
    [request] = table.refills(0.01)
    assert request.used == 6
    assert takes(table, 4) == [Status.ADMIT] * 4


def test_one_request_per_key_is_in_flight():
    table = ready(granted=10)
    takes(table, 6)
    table.refills(0.01)
    takes(table, 4)
    assert takes(table, 1) == [Status.WAIT]
    assert table.refills(0.02) == []


def test_an_unanswered_request_is_sent_again():
    table = LeaseTable("w1", 2)
    table.take("k", SECOND, 0.0, T0)
    table.refills(0.0)
    table.take("k", SECOND, RESEND_S, T0 + RESEND_S)
    assert len(table.refills(RESEND_S)) == 1


def test_the_request_asks_for_lead_time_of_recent_demand():
    table = ready(granted=1000)  # asked at 0.0
    for i in range(501):  # 501 requests in 0.1 s: 5010/s; the last one crosses the low-water mark
        table.take("k", SECOND, 0.1 * (i + 1) / 501, T0 + 0.1 * (i + 1) / 501)
    [request] = table.refills(0.1)
    assert request.want == ceil(501 / 0.1 * LEAD_S)


def test_an_exhausted_limit_is_denied_here_until_it_resets():
    table = ready(granted=2, remaining=(0,), retry=0.5)
    assert takes(table, 3) == [Status.ADMIT, Status.ADMIT, Status.DENY]
    assert table.take("k", SECOND, 0.4, T0 + 0.4).retry_after == 1
    assert table.refills(0.4) == []
    assert table.take("k", SECOND, 0.51, T0 + 0.51).status is Status.WAIT


def test_tokens_expire_when_their_window_ends_and_are_given_back():
    table = ready(granted=10)
    takes(table, 3)
    assert table.take("k", SECOND, 1.001, T0 + 1.001).status is Status.WAIT
    assert table.sweep(1.001) == [ReturnedLease("k", "w1", 7, 0, T0)]


def test_sweep_expires_tokens_of_an_idle_key():
    table = ready(granted=10)
    assert table.sweep(0.5) == []
    assert table.sweep(1.001) == [ReturnedLease("k", "w1", 10, 0, T0)]


def test_a_grant_for_newer_windows_voids_older_tokens():
    table = ready(granted=10)
    table.take("k", SECOND, 0.99, T0 + 0.99)
    table.apply(grant(4, resets=(T0 + 2,), wall=T0 + 1, expires=T0 + 2), 0.995, T0 + 0.995)
    assert takes(table, 5, now=0.996, wall=T0 + 0.996) == [Status.ADMIT] * 4 + [Status.WAIT]
    assert table.sweep(0.996) == [ReturnedLease("k", "w1", 9, 0, T0)]


def test_after_waiting_a_key_the_keeper_has_no_room_for_is_denied():
    """The keeper's grant says a retry: no other worker holds tokens it could recall (a retry of 0 would have the
    request ask again: ledger.py rule 12)."""
    table = ready(granted=1, remaining=(0,))
    takes(table, 1)
    table.refills(0.01)
    table.apply(grant(1, remaining=(0,), retry=0.001), 0.015, T0 + 0.015)
    table.take("k", SECOND, 0.016, T0 + 0.016)
    decision = table.take("k", SECOND, 0.02, T0 + 0.02, waited=True)
    assert (decision.status, decision.retry_after) == (Status.DENY, 1)


def test_after_waiting_a_key_the_keeper_had_room_for_waits_for_the_next_grant():
    """The tokens granted went to this worker's other requests while we waited: not the limit, a race. The caller
    waits again (not the local share, which the keeper would count only afterwards, past the limit near its end)."""
    table = ready(granted=1)
    takes(table, 1)
    table.refills(0.01)
    table.apply(grant(1), 0.015, T0 + 0.015)
    table.take("k", SECOND, 0.016, T0 + 0.016)
    assert table.take("k", SECOND, 0.02, T0 + 0.02, waited=True).status is Status.WAIT
    assert len(table.refills(0.02)) == 1  # the next grant was asked for
    table.apply(grant(3), 0.021, T0 + 0.021)
    assert table.take("k", SECOND, 0.022, T0 + 0.022, waited=True).status is Status.ADMIT


def test_the_final_call_after_a_race_is_denied_never_over_the_limit():
    table = ready(granted=1)
    takes(table, 1)
    table.refills(0.01)
    table.apply(grant(1), 0.015, T0 + 0.015)
    table.take("k", SECOND, 0.016, T0 + 0.016)  # another request takes the grant
    decision = table.take("k", SECOND, 1.0, T0 + 1.0, waited=True, final=True)
    assert (decision.status, decision.retry_after) == (Status.DENY, 1)
    assert table.reports(T0 + 1.0) == []


def test_a_slow_keeper_is_waited_for_not_bypassed_on_the_local_share():
    """Until the wait is over, a request whose grant is still on its way waits: what the worker admitted on its
    own the keeper would count only afterwards, on top of the tokens it handed out meanwhile."""
    table = LeaseTable("w1", 2)
    table.take("k", SECOND, 0.0, T0)
    table.refills(0.0)
    for t in (0.02, 0.1, 0.4, 0.8):
        assert table.take("k", SECOND, t, T0 + t, waited=True).status is Status.WAIT
    table.apply(grant(2), 0.85, T0 + 0.85)
    assert table.take("k", SECOND, 0.86, T0 + 0.86, waited=True).status is Status.ADMIT
    assert table.reports(T0 + 0.86) == []


def test_a_keeper_silent_on_a_key_for_the_whole_wait_admits_on_the_local_share():
    table = LeaseTable("w1", 2)
    table.take("k", SECOND, 0.0, T0)
    table.refills(0.0)
    assert table.take("k", SECOND, WAIT_S, T0 + WAIT_S, waited=True, final=True).status is Status.ADMIT
    [usage] = table.reports(T0 + WAIT_S)
    assert (usage.windows, usage.total) == ((1,), 1)


def test_a_silent_keeper_without_fault_tolerance_is_unavailable_under_policy_redis():
    """(Under policy local the local share admits: tests/test_keeper_restart_state.py.)"""
    spec = LimitSpec(windows=(Window("second", 100),), fault_tolerant=False, store="plugin-1")
    table = LeaseTable("w1", 2)
    table.take("k", spec, 0.0, T0)
    table.refills(0.0)
    assert table.take("k", spec, WAIT_S, T0 + WAIT_S, waited=True, final=True).status is Status.UNAVAILABLE


def test_a_request_waits_longer_than_a_lost_keeper_takes_to_be_noticed():
    from gateway.state.shared import FLUSH_S, KEEPER_LOST_S

    assert WAIT_S > KEEPER_LOST_S + 2 * FLUSH_S


def test_requests_in_flight_to_a_replaced_keeper_are_asked_again_at_once():
    table = LeaseTable("w1", 2)
    table.take("k", SECOND, 0.0, T0)
    [first] = table.refills(0.0)
    assert table.refills(0.01) == []  # in flight
    table.requests_lost()
    [again] = table.refills(0.01)
    assert (again.key, again.worker) == (first.key, first.worker)


def test_in_fallback_each_worker_admits_its_share_of_the_limit():
    table = LeaseTable("w1", 4)
    table.fallback(True, 4)
    statuses = takes(table, 30)
    assert statuses == [Status.ADMIT] * 25 + [Status.DENY] * 5
    assert table.take("k", SECOND, 0.5, T0 + 0.5).retry_after == 1


def test_the_local_share_is_at_least_one():
    table = LeaseTable("w1", 8)
    table.fallback(True, 8)
    assert takes(table, 2, spec=LimitSpec(windows=(Window("second", 5),))) == [Status.ADMIT, Status.DENY]


def test_the_local_share_counts_what_leases_admitted_in_the_window():
    table = ready(granted=20, workers=4)
    takes(table, 20)
    table.fallback(True, 4)
    assert takes(table, 30).count(Status.ADMIT) == 25 - 20


def test_the_local_share_renews_with_the_window():
    table = LeaseTable("w1", 4)
    table.fallback(True, 4)
    takes(table, 30)
    assert takes(table, 30, now=1.01, wall=T0 + 1.01).count(Status.ADMIT) == 25


def test_fallback_admissions_are_reported_once_the_keeper_is_back():
    table = LeaseTable("w1", 4)
    table.fallback(True, 4)
    takes(table, 10)
    assert table.reports(T0 + 0.5) == []
    table.fallback(False, 4)
    [usage] = table.reports(T0 + 0.5)
    assert usage == FallbackUsage("k", "w1", SECOND, (10,), 10, T0 + 0.5)
    assert table.reports(T0 + 0.5) == []


def test_reports_leave_out_windows_that_have_ended():
    spec = LimitSpec(windows=(Window("second", 100), Window("minute", 1000)))
    table = LeaseTable("w1", 4)
    table.fallback(True, 4)
    takes(table, 10, spec=spec)
    table.fallback(False, 4)
    [usage] = table.reports(T0 + 1.5)
    assert (usage.windows, usage.total) == ((0, 10), 10)


def test_no_lease_requests_are_made_in_fallback():
    table = LeaseTable("w1", 2)
    table.fallback(True, 2)
    takes(table, 3)
    assert table.refills(0.01) == []


def test_leaving_fallback_asks_again_at_once():
    table = LeaseTable("w1", 2)
    table.take("k", SECOND, 0.0, T0)
    table.refills(0.0)
    table.fallback(True, 2)
    table.fallback(False, 2)
    table.take("k", SECOND, 0.01, T0 + 0.01)
    assert len(table.refills(0.01)) == 1


def test_leased_tokens_are_still_spent_in_fallback():
    table = ready(granted=10, workers=100)
    table.fallback(True, 100)
    assert takes(table, 11) == [Status.ADMIT] * 10 + [Status.DENY]  # beyond the share of 1, but granted
    table.fallback(False, 100)
    assert table.reports(T0) == []


def test_a_bucket_falls_back_to_its_share_of_capacity_and_rate():
    spec = LimitSpec(algorithm="token-bucket", rate=40, burst=20)
    table = LeaseTable("w1", 4)
    table.fallback(True, 4)
    assert takes(table, 6, spec=spec, now=0.0) == [Status.ADMIT] * 5 + [Status.DENY]
    assert takes(table, 2, spec=spec, now=0.1) == [Status.ADMIT, Status.DENY]


def test_the_local_bucket_share_counts_what_leases_admitted():
    spec = LimitSpec(algorithm="token-bucket", rate=40, burst=20)  # a share of 5 tokens, 10/s, with 4 workers
    table = ready(spec=spec, granted=4, workers=4, remaining=(), resets=())
    assert takes(table, 4, spec=spec, now=0.01) == [Status.ADMIT] * 4
    table.fallback(True, 4)
    assert takes(table, 2, spec=spec, now=0.01) == [Status.ADMIT, Status.DENY]  # 5 - 4 left, not a full share


def test_a_keeper_slow_on_a_bucket_key_admits_only_what_the_share_has_left():
    spec = LimitSpec(algorithm="token-bucket", rate=40, burst=20)
    table = ready(spec=spec, granted=5, workers=4, remaining=(), resets=())
    takes(table, 5, spec=spec, now=0.01)
    assert table.take("k", spec, 0.01, T0 + 0.01).status is Status.WAIT
    table.refills(0.01)
    late = table.take("k", spec, 0.02, T0 + 0.02, waited=True, final=True)  # the keeper silent all along
    assert late.status is Status.DENY  # the share was spent from the lease; refilling at 10/s, not a new burst


def test_limit_req_tokens_are_released_on_the_keepers_schedule():
    spec = LimitSpec(algorithm="limit-req", rate=10, burst=5, nodelay=False)
    table = ready(spec=spec, granted=3, remaining=(), resets=(), delay=0.1)
    delays = [table.take("k", spec, 0.001, T0).delay for _ in range(3)]
    assert delays == pytest.approx([0.1, 0.2, 0.3])


def test_limit_req_with_nodelay_releases_at_once():
    spec = LimitSpec(algorithm="limit-req", rate=10, burst=5, nodelay=True)
    table = ready(spec=spec, granted=3, remaining=(), resets=())
    assert {table.take("k", spec, 0.001, T0).delay for _ in range(3)} == {0.0}


def test_limit_req_in_fallback_delays_on_the_local_share():
    spec = LimitSpec(algorithm="limit-req", rate=20, burst=7, nodelay=False)  # 8 tokens: 4 here at 10/s
    table = LeaseTable("w1", 2)
    table.fallback(True, 2)
    delays = [table.take("k", spec, 0.0, T0).delay for _ in range(4)]
    assert delays == pytest.approx([0.0, 0.1, 0.2, 0.3])


def test_sweep_tells_the_keeper_what_bucket_tokens_were_spent():
    spec = LimitSpec(algorithm="token-bucket", rate=10, burst=20)
    table = ready(spec=spec, granted=10, remaining=(), resets=(), expires=T0 + 1)
    takes(table, 3, spec=spec)
    assert table.sweep(0.5) == [ReturnedLease("k", "w1", 0, 3, 0.0)]


def test_idle_keys_are_forgotten():
    table = ready(granted=2)
    takes(table, 2)
    table.apply(grant(0), 0.02, T0 + 0.02)
    table.sweep(100.0)
    assert table.take("k", SECOND, 100.0, T0 + 100).status is Status.WAIT
    assert table.refills(100.0)[0].used == 0


DAY = LimitSpec(windows=(Window("day", 100),))


def test_an_idle_key_holding_leased_tokens_is_forgotten_and_gives_them_back():
    ledger, table = Ledger(), LeaseTable("w1", 1)
    assert table.take("k", DAY, 0.0, T0).status is Status.WAIT
    for request in table.refills(0.0):
        table.apply(ledger.grant_request(request, 0.0, T0), 0.0, T0)
    assert table.take("k", DAY, 0.0, T0, waited=True, final=True).status is Status.ADMIT
    for request in table.refills(0.0):  # tokens asked for ahead of need, valid until the day ends
        table.apply(ledger.grant_request(request, 0.0, T0), 0.0, T0)
    assert table.sweep(IDLE_S - 1) == []
    [back] = table.sweep(IDLE_S)
    for returned in (back, *table.sweep(IDLE_S + 1)):
        ledger.return_unused(returned)
    assert ledger.usage("k", IDLE_S, T0 + IDLE_S) == {"day": 1.0}  # only what was spent stays counted
    assert table.take("k", DAY, IDLE_S, T0 + IDLE_S).status is Status.WAIT  # forgotten: asks afresh


def test_an_idle_key_with_local_share_use_to_report_is_kept_until_reported():
    table = LeaseTable("w1", 2)
    table.fallback(True, 2)
    assert table.take("k", DAY, 0.0, T0).status is Status.ADMIT
    table.sweep(IDLE_S * 2)
    table.fallback(False, 2)
    assert [usage.total for usage in table.reports(T0 + IDLE_S * 2)] == [1]
    table.sweep(IDLE_S * 2)
    assert table.reports(T0 + IDLE_S * 2) == []
    assert table.take("k", DAY, IDLE_S * 2, T0 + IDLE_S * 2).status is Status.WAIT


def test_a_key_whose_request_is_in_flight_is_kept_for_at_most_idle_s_after_sending_it():
    for sent, kept in ((30.0, True), (0.0, False)):
        table = LeaseTable("w1", 1)
        table.take("k", DAY, 0.0, T0)
        table.refills(sent)
        table.sweep(IDLE_S + 1)  # idle since 0.0
        table.apply(grant(5, expires=T0 + 86_400), IDLE_S + 1, T0 + IDLE_S + 1)
        status = table.take("k", DAY, IDLE_S + 1, T0 + IDLE_S + 1).status
        assert status is (Status.ADMIT if kept else Status.WAIT), sent


def test_release_gives_every_token_back():
    table = ready(granted=10)
    takes(table, 4)
    assert table.release() == [ReturnedLease("k", "w1", 6, 0, T0)]
    assert table.take("k", SECOND, 0.02, T0 + 0.02).status is Status.WAIT


def test_a_changed_spec_starts_a_fresh_lease():
    table = ready(granted=10)
    assert table.take("k", LimitSpec(windows=(Window("second", 50),)), 0.01, T0 + 0.01).status is Status.WAIT


def test_a_grant_for_a_forgotten_key_is_ignored():
    table = LeaseTable("w1", 2)
    table.apply(grant(5, key="gone"), 0.0, T0)
    assert table.take("gone", SECOND, 0.0, T0).status is Status.WAIT


def test_decisions_carry_remaining_per_window_across_the_gateway():
    table = ready(granted=10, remaining=(50,))
    decision = table.take("k", SECOND, 0.01, T0 + 0.01)
    assert (decision.admitted, decision.remaining(0), decision.tokens) == (True, 59, 9)


def test_the_lease_table_and_the_ledger_work_together():
    ledger, table = Ledger(), LeaseTable("w1", 1)
    admitted = 0
    for i in range(300):
        now = i * 0.001
        decision = table.take("k", SECOND, now, T0 + now)
        admitted += decision.admitted
        for request in table.refills(now):
            table.apply(ledger.grant_request(request, now, T0 + now), now, T0 + now)
    assert admitted == 100


def test_spend_takes_a_leased_token_like_take_does():
    table = ready(granted=10)
    lease = table.spend("k", SECOND, 0.01, T0 + 0.01)
    assert lease is not None and lease.tokens == 9
    assert takes(table, 9) == [Status.ADMIT] * 9
    assert table.spend("k", SECOND, 0.01, T0 + 0.01) is None  # empty: take must decide (WAIT)


def test_spend_leaves_expired_tokens_to_take():
    table = ready(granted=10)
    assert table.spend("k", SECOND, 1.5, T0 + 1.5) is None
    assert table.take("k", SECOND, 1.5, T0 + 1.5).status is Status.WAIT


def test_spend_leaves_a_changed_spec_and_an_unknown_key_to_take():
    table = ready(granted=10)
    assert table.spend("k", LimitSpec(windows=(Window("second", 100),)), 0.01, T0 + 0.01) is None  # equal, not same
    assert table.spend("other", SECOND, 0.01, T0 + 0.01) is None


def test_spend_leaves_paced_limits_to_take_for_their_delay():
    paced = LimitSpec(algorithm="limit-req", rate=10, burst=5, nodelay=False)
    table = ready(spec=paced, granted=3, remaining=(), resets=())
    assert table.spend("k", paced, 0.01, T0 + 0.01) is None
    assert table.take("k", paced, 0.01, T0 + 0.01).status is Status.ADMIT


def test_spending_below_half_the_grant_asks_ahead_of_need():
    table = ready(granted=10)
    for _ in range(6):
        table.spend("k", SECOND, 0.01, T0 + 0.01)
    [request] = table.refills(0.01)
    assert request.used == 6


# ---- a new keeper incarnation (lease.py rule 5) -------------------------------------------------------------------

MINUTE = LimitSpec(windows=(Window("minute", 100),))


def test_a_new_keeper_hears_all_a_worker_admitted_in_the_window_leased_and_local():
    table = ready(spec=MINUTE, granted=30, resets=(T0 + 60,), expires=T0 + 60)
    takes(table, 20, spec=MINUTE)  # on leased tokens
    table.fallback(True, 2)
    assert takes(table, 50, spec=MINUTE).count(Status.ADMIT) == 30  # the 10 tokens left, then 20 of the share
    table.fallback(False, 2)
    [usage] = table.restate(T0 + 1)
    assert usage == FallbackUsage("k", "w1", MINUTE, (50,), 20, T0 + 1)  # total: the local-share use (the bucket's)


def test_restating_replaces_the_report_of_local_share_use():
    table = LeaseTable("w1", 2)
    table.fallback(True, 2)
    takes(table, 10, spec=MINUTE)
    table.fallback(False, 2)
    assert [u.windows for u in table.restate(T0 + 1)] == [(10,)]
    assert table.reports(T0 + 1) == [] and not table.pending  # counted once


def test_the_old_keepers_tokens_are_dropped_not_spent_or_given_back():
    table = ready(spec=MINUTE, granted=30, resets=(T0 + 60,), expires=T0 + 60)
    takes(table, 5, spec=MINUTE)
    [usage] = table.restate(T0 + 1)
    assert usage.windows == (5,)
    assert table.take("k", MINUTE, 0.02, T0 + 0.02).status is Status.WAIT  # asks the new keeper
    assert table.sweep(IDLE_S + 1) == []  # nothing of the old keeper's goes to the new one


def test_the_old_keepers_expired_tokens_are_not_given_back_to_the_new_one():
    table = ready(spec=MINUTE, granted=30, resets=(T0 + 60,), expires=T0 + 0.5)
    takes(table, 5, spec=MINUTE)
    assert table.take("k", MINUTE, 0.6, T0 + 0.6).status is Status.WAIT  # 25 expired, to give back
    table.restate(T0 + 1)
    assert table.sweep(1.0) == []


def test_restating_leaves_out_windows_that_have_ended_and_keys_without_use():
    spec = LimitSpec(windows=(Window("second", 100), Window("minute", 1000)))
    table = LeaseTable("w1", 2)
    table.fallback(True, 2)
    takes(table, 10, spec=spec)
    table.take("idle", spec, 0.0, T0 - 1)  # admitted in a minute that has ended
    table.fallback(False, 2)
    [usage] = table.restate(T0 + 1.5)
    assert (usage.key, usage.windows) == ("k", (0, 10))


def test_keys_are_restated_least_recently_asked_for_first():
    table = LeaseTable("w1", 2)
    table.fallback(True, 2)
    for now, key in ((0.3, "a"), (0.1, "b"), (0.2, "c")):
        table.take(key, MINUTE, now, T0 + now)
    table.fallback(False, 2)
    assert [u.key for u in table.restate(T0 + 1)] == ["b", "c", "a"]


def test_under_policy_redis_only_the_local_share_use_is_restated():
    spec = LimitSpec(windows=(Window("minute", 100),), store="plugin-1")  # Redis holds what the leases admitted
    table = ready(spec=spec, granted=30, resets=(T0 + 60,), expires=T0 + 60)
    takes(table, 30, spec=spec)
    table.fallback(True, 2)
    assert takes(table, 30, spec=spec).count(Status.ADMIT) == 20
    table.fallback(False, 2)
    [usage] = table.restate(T0 + 1)
    assert (usage.windows, usage.total) == ((20,), 20)


def test_a_window_is_not_handed_out_again_by_a_restarted_keeper():
    """Two workers spend 80 of 100 on one keeper, which is lost (they admit on their shares), then a new keeper (an
    empty Ledger) takes over: the gateway admits the limit in the window, no more."""
    old, tables = Ledger(workers=2), [LeaseTable("w1", 2), LeaseTable("w2", 2)]

    def run(ledger, count, start):
        admitted = 0
        for i in range(count):
            now = start + i * 0.001
            table = tables[i % 2]
            status = table.take("k", MINUTE, now, T0 + now).status
            if status is Status.WAIT:
                for request in table.refills(now):
                    table.apply(ledger.grant_request(request, now, T0 + now), now, T0 + now)
                status = table.take("k", MINUTE, now, T0 + now, waited=True, final=True).status
            admitted += status is Status.ADMIT
        return admitted

    before = run(old, 80, 0.0)
    for table in tables:
        table.fallback(True, 2)
    lost = run(old, 40, 0.5)  # each worker's share (50) counts what it admitted in the window
    new = Ledger(workers=2)
    for table in tables:
        table.fallback(False, 2)
        for usage in table.restate(T0 + 1):
            new.report_fallback(usage, 1.0)
    after = run(new, 100, 1.0)
    assert (before, before + lost + after) == (80, 100)
