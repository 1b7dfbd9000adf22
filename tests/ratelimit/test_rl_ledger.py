"""The keeper's Ledger: exact windows, lease sizing, wall-clock resets, buckets, returns and fallback reports."""

import random
from collections import Counter
from datetime import UTC, datetime
from math import floor

import pytest

import gateway.ratelimit.ledger as ledger_module
from gateway.ratelimit import FallbackUsage, LeaseRequest, Ledger, LimitSpec, ReturnedLease, Window
from gateway.ratelimit.ledger import LEASE_TTL_S, RESYNC_RETRY_S, RESYNC_S, WORKER_STALE_S

T0 = 1_700_000_040.0  # a whole minute (UTC)


def ts(*parts):
    return datetime(*parts, tzinfo=UTC).timestamp()


def exhaust(ledger, spec, wall, worker="w"):
    """Grant until the ledger gives nothing at `wall`; return the total."""
    total = 0
    while (granted := ledger.grant("k", spec, 1000, 0.0, wall, worker).granted):
        total += granted
    return total


def per(period, limit):
    return LimitSpec(windows=(Window(period, limit),))


def bucket(rate, burst, algorithm="token-bucket", nodelay=True):
    return LimitSpec(algorithm=algorithm, rate=rate, burst=burst, nodelay=nodelay)


def test_never_grants_more_than_the_limit_in_any_window():
    rng = random.Random(5)
    ledger, spec = Ledger(), per("second", 500)
    charged = Counter()
    wall = T0
    for _ in range(20_000):
        wall += rng.random() * 0.002
        worker = f"w{rng.randrange(8)}"
        grant = ledger.grant("k", spec, rng.randint(1, 120), wall - T0, wall, worker)
        charged[floor(wall)] += grant.granted
        if grant.granted and rng.random() < 0.1:  # some leases come back partly unspent
            back = rng.randint(0, grant.granted)
            ledger.return_unused(ReturnedLease("k", worker, back, 0, grant.wall))
            charged[floor(wall)] -= back
    assert len(charged) > 10
    assert max(charged.values()) <= 500


def test_the_whole_limit_is_handed_out_to_workers_that_keep_asking():
    ledger, spec = Ledger(), per("second", 100)
    total = sum(ledger.grant("k", spec, 1000, 0.0, T0 + 0.1, f"w{i % 3}").granted for i in range(200))
    assert total == 100


def test_lease_sizes_shrink_towards_the_end_of_the_window():
    ledger, spec = Ledger(), per("minute", 1000)
    sizes = [ledger.grant("k", spec, 10_000, 0.0, T0, f"w{i % 4}").granted for i in range(60)]
    sizes = [s for s in sizes if s]
    assert sizes[0] <= 1000 // 2 and sizes == sorted(sizes, reverse=True)
    assert sizes[-5:] == [1] * 5 and sum(sizes) == 1000


def test_a_lone_worker_gets_at_most_half_of_what_is_left():
    ledger, spec = Ledger(), per("minute", 100)
    assert [ledger.grant("k", spec, 1000, 0.0, T0, "w").granted for _ in range(3)] == [50, 25, 12]


def test_active_workers_share_the_tail():
    ledger, spec = Ledger(), per("minute", 400)
    for worker in ("a", "b", "c"):
        ledger.grant("k", spec, 1, 0.0, T0, worker)
    assert ledger.grant("k", spec, 1000, 0.0, T0, "d").granted == 397 // 8


def test_a_worker_silent_for_a_while_no_longer_shares_the_tail():
    ledger, spec = Ledger(), per("minute", 400)
    ledger.grant("k", spec, 1, 0.0, T0, "a")
    assert ledger.grant("k", spec, 1000, 5.0, T0 + 5, "b").granted == 399 // 2


def test_a_grant_never_exceeds_what_was_wanted():
    assert Ledger().grant("k", per("minute", 100), 3, 0.0, T0, "w").granted == 3


def test_an_exhausted_window_grants_nothing_and_says_until_when():
    """Once its tokens are reported spent (ledger rule 9), an exhausted window says: not before it ends."""
    ledger, spec = Ledger(), per("minute", 1)
    first = ledger.grant("k", spec, 5, 0.0, T0 + 20, "w")
    second = ledger.grant("k", spec, 5, 1.0, T0 + 21, "w", used=1)
    assert (first.granted, first.remaining) == (1, (0,))
    assert (second.granted, second.remaining, second.resets, second.retry) == (0, (0,), (T0 + 60,), 39.0)


@pytest.mark.parametrize(("period", "last_instant", "next_start"), [
    ("second", ts(2024, 5, 1, 12, 0, 0) + 0.999, ts(2024, 5, 1, 12, 0, 1)),
    ("minute", ts(2024, 5, 1, 12, 0, 59), ts(2024, 5, 1, 12, 1)),
    ("hour", ts(2024, 5, 1, 12, 59, 59), ts(2024, 5, 1, 13)),
    ("day", ts(2024, 5, 1, 23, 59, 59), ts(2024, 5, 2)),
    ("month", ts(2023, 2, 28, 23, 59, 59), ts(2023, 3, 1)),
    ("month", ts(2024, 2, 29, 23, 59, 59), ts(2024, 3, 1)),
    ("year", ts(2024, 12, 31, 23, 59, 59), ts(2025, 1, 1)),
])
def test_a_window_resets_on_its_wall_clock_boundary(period, last_instant, next_start):
    ledger, spec = Ledger(), per(period, 2)
    assert exhaust(ledger, spec, last_instant - 0.5) == 2
    assert ledger.grant("k", spec, 2, 0.0, last_instant, "w").granted == 0
    again = ledger.grant("k", spec, 1, 0.0, next_start, "w")
    assert again.granted == 1 and again.resets[0] > next_start


def test_february_28_of_a_leap_year_is_still_february():
    ledger, spec = Ledger(), per("month", 1)
    ledger.grant("k", spec, 1, 0.0, ts(2024, 2, 1), "w")
    assert ledger.grant("k", spec, 1, 0.0, ts(2024, 2, 28, 23, 59, 59) + 1, "w").granted == 0


def test_grant_reports_remaining_and_reset_per_window():
    spec = LimitSpec(windows=(Window("second", 10), Window("minute", 100)))
    grant = Ledger().grant("k", spec, 4, 0.0, T0 + 30.5, "w")
    assert (grant.granted, grant.remaining, grant.resets) == (4, (6, 96), (T0 + 31, T0 + 60))


def test_tokens_expire_when_the_shortest_window_ends():
    spec = LimitSpec(windows=(Window("second", 10), Window("minute", 100)))
    assert Ledger().grant("k", spec, 4, 0.0, T0 + 30.5, "w").expires == T0 + 31


def test_a_request_is_admitted_only_if_every_window_has_room():
    ledger = Ledger()
    spec = LimitSpec(windows=(Window("second", 5), Window("minute", 7)))
    assert [exhaust(ledger, spec, T0 + s) for s in (0.5, 1.5, 2.5)] == [5, 2, 0]
    assert ledger.grant("k", spec, 1, 0.0, T0 + 3.5, "w", used=7).retry == 56.5


def test_returned_tokens_are_credited_to_the_windows_still_current():
    ledger = Ledger()
    spec = LimitSpec(windows=(Window("second", 20), Window("minute", 70)))
    grant = ledger.grant("k", spec, 5, 0.0, T0 + 0.5, "w")
    ledger.grant("k", spec, 1, 0.0, T0 + 1.5, "w")
    ledger.return_unused(ReturnedLease("k", "w", 3, 0, grant.wall))
    assert ledger.usage("k", 0.0, T0 + 1.5) == {"second": 1.0, "minute": 3.0}


def test_tokens_returned_after_their_window_ended_are_not_credited():
    ledger, spec = Ledger(), per("minute", 10)
    grant = ledger.grant("k", spec, 4, 0.0, T0 + 59, "w")
    ledger.grant("k", spec, 1, 0.0, T0 + 60, "w")
    ledger.return_unused(ReturnedLease("k", "w", 4, 0, grant.wall))
    assert ledger.usage("k", 0.0, T0 + 61) == {"minute": 1.0}


def test_fallback_usage_is_added_to_the_window_it_fell_in():
    ledger, spec = Ledger(), per("minute", 100)
    ledger.grant("k", spec, 10, 0.0, T0 + 1, "w")
    ledger.report_fallback(FallbackUsage("k", "w", spec, (30,), 30, T0 + 20), 20.0)
    assert ledger.usage("k", 20.0, T0 + 20) == {"minute": 40.0}
    assert ledger.grant("k", spec, 1000, 20.0, T0 + 20, "w").remaining == (30,)


def test_fallback_usage_of_an_older_window_is_dropped():
    ledger, spec = Ledger(), per("second", 100)
    ledger.grant("k", spec, 10, 0.0, T0 + 5.2, "w")
    ledger.report_fallback(FallbackUsage("k", "w", spec, (30,), 30, T0 + 4.9), 5.2)
    assert ledger.usage("k", 0.0, T0 + 5.2) == {"second": 10.0}


def test_fallback_usage_reaches_a_keeper_that_lost_its_state():
    ledger, spec = Ledger(), per("minute", 100)
    ledger.report_fallback(FallbackUsage("k", "w", spec, (70,), 70, T0 + 3), 3.0)
    assert ledger.grant("k", spec, 1000, 3.0, T0 + 3, "w").granted == 15


def test_after_a_fallback_report_the_shares_of_workers_not_heard_from_stay_reserved():
    ledger, spec = Ledger(workers=4), per("minute", 1000)
    ledger.report_fallback(FallbackUsage("k", "a", spec, (250,), 250, T0 + 10), 10.0)
    grant = ledger.grant("k", spec, 1000, 10.0, T0 + 10, "a")
    assert (grant.granted, grant.retry) == (0, RESYNC_RETRY_S)


def test_reports_and_requests_release_the_reserved_shares():
    ledger, spec = Ledger(workers=4), per("minute", 1000)
    ledger.report_fallback(FallbackUsage("k", "a", spec, (250,), 250, T0 + 10), 10.0)
    ledger.report_fallback(FallbackUsage("k", "b", spec, (100,), 100, T0 + 10), 10.0)
    ledger.grant("k", spec, 1, 10.0, T0 + 10, "c")  # c had nothing to report
    assert ledger.grant("k", spec, 1000, 10.0, T0 + 10, "a").granted == (1000 - 351 - 250) // 4


def test_the_reserve_lapses_after_the_resync_period():
    ledger, spec = Ledger(workers=4), per("minute", 1000)
    ledger.report_fallback(FallbackUsage("k", "a", spec, (250,), 250, T0 + 10), 10.0)
    assert ledger.grant("k", spec, 1000, 10.0, T0 + 10 + RESYNC_S, "a").granted == 750 // 2


def test_usage_counts_only_the_current_window():
    ledger, spec = Ledger(), per("second", 100)
    ledger.grant("k", spec, 10, 0.0, T0, "w")
    assert ledger.usage("k", 0.0, T0 + 0.5) == {"second": 10.0}
    assert ledger.usage("k", 0.0, T0 + 1.5) == {"second": 0.0}
    assert ledger.usage("nobody", 0.0, T0) == {}


def test_reset_forgets_a_key():
    ledger, spec = Ledger(), per("minute", 10)
    ledger.grant("k", spec, 10, 0.0, T0, "w")
    assert ledger.reset("k") and not ledger.reset("k")
    assert ledger.grant("k", spec, 10, 0.0, T0, "w").granted == 5
    assert ledger.keys() == ["k"]


def test_expire_drops_ended_windows_and_keys_left_empty():
    ledger = Ledger()
    ledger.grant("short", per("second", 10), 1, 0.0, T0, "w")
    ledger.grant("long", per("hour", 10), 1, 0.0, T0, "w")
    assert ledger.expire(1.0, T0 + 1) == 1
    assert ledger.keys() == ["long"]


def test_a_changed_spec_keeps_the_counts_of_its_windows():
    ledger = Ledger()
    ledger.grant("k", per("minute", 10), 4, 0.0, T0, "w")
    assert ledger.grant("k", per("minute", 20), 1000, 0.0, T0, "w").remaining == (20 - 4 - 8,)


# ---- token bucket ------------------------------------------------------------------------------------------------


def drain(ledger, spec, now, worker="w", want=1000):
    """Grant until the bucket gives nothing; return the total."""
    total = 0
    while (granted := ledger.grant("k", spec, want, now, T0 + now, worker).granted):
        total += granted
    return total


def test_a_token_bucket_starts_full_with_burst_tokens():
    assert drain(Ledger(), bucket(rate=10, burst=20), 0.0) == 20


def test_a_token_bucket_refills_at_its_rate():
    ledger, spec = Ledger(), bucket(rate=10, burst=20)
    drain(ledger, spec, 0.0)
    ledger.grant("k", spec, 0, 0.0, T0, "w", used=20)  # the worker spent its lease
    assert drain(ledger, spec, 0.5) == 5


def test_an_idle_token_bucket_holds_no_more_than_its_burst():
    ledger, spec = Ledger(), bucket(rate=10, burst=20)
    drain(ledger, spec, 0.0)
    ledger.grant("k", spec, 0, 0.0, T0, "w", used=20)
    assert drain(ledger, spec, 100.0) == 20


def test_an_empty_bucket_says_when_the_next_token_comes():
    ledger, spec = Ledger(), bucket(rate=4, burst=2)
    drain(ledger, spec, 0.0)
    assert ledger.grant("k", spec, 1, 0.1, T0, "w", used=2).retry == pytest.approx(0.15)


def test_tokens_leased_and_not_reported_spent_hold_the_bucket_below_capacity():
    ledger, spec = Ledger(), bucket(rate=10, burst=20)
    assert ledger.grant("k", spec, 6, 0.0, T0, "sitter").granted == 6
    assert drain(ledger, spec, 100.0, worker="busy") == 14


def test_reporting_tokens_spent_lets_the_bucket_refill_to_capacity():
    ledger, spec = Ledger(), bucket(rate=10, burst=20)
    ledger.grant("k", spec, 6, 0.0, T0, "sitter")
    ledger.return_unused(ReturnedLease("k", "sitter", 0, 6, T0))
    assert drain(ledger, spec, 100.0, worker="busy") == 20


def test_bucket_tokens_given_back_unspent_can_be_granted_again():
    ledger, spec = Ledger(), bucket(rate=1, burst=10)
    ledger.grant("k", spec, 5, 0.0, T0, "a")
    ledger.return_unused(ReturnedLease("k", "a", 5, 0, T0))
    assert drain(ledger, spec, 0.0, worker="b") == 10


def test_a_silent_workers_outstanding_tokens_are_written_off():
    ledger, spec = Ledger(), bucket(rate=10, burst=20)
    ledger.grant("k", spec, 6, 0.0, T0, "dead")
    ledger.expire(WORKER_STALE_S, T0 + WORKER_STALE_S)
    assert drain(ledger, spec, WORKER_STALE_S + 100, worker="live") == 20


def test_bucket_leases_live_for_the_lease_ttl():
    assert Ledger().grant("k", bucket(rate=10, burst=20), 1, 0.0, T0, "w").expires == T0 + LEASE_TTL_S


def test_a_bucket_never_admits_more_than_capacity_plus_rate_times_time():
    rng = random.Random(11)
    ledger, spec = Ledger(), bucket(rate=100, burst=50)
    spent = {f"w{i}": 0 for i in range(4)}
    admitted, now = 0, 0.0
    while now < 10.0:
        now += rng.random() * 0.01
        worker = rng.choice(list(spent))
        grant = ledger.grant("k", spec, rng.randint(1, 40), now, T0 + now, worker, used=spent[worker])
        spent[worker] = grant.granted  # spends the whole lease at once, reports it with the next request
        admitted += grant.granted
    assert 0.95 * (50 + 100 * now) <= admitted <= 50 + 100 * now


def test_fallback_use_drives_a_bucket_into_debt_but_not_below_minus_capacity():
    ledger, spec = Ledger(), bucket(rate=10, burst=20)
    ledger.report_fallback(FallbackUsage("k", "w", spec, (), 100, T0), 0.0)
    assert ledger.usage("k", 0.0, T0)["tokens"] == -20
    assert drain(ledger, spec, 4.0) == 20


def test_bucket_usage_shows_tokens_and_outstanding():
    ledger, spec = Ledger(), bucket(rate=10, burst=20)
    ledger.grant("k", spec, 5, 0.0, T0, "w")
    assert ledger.usage("k", 0.0, T0) == {"tokens": 15.0, "outstanding": 5.0}


# ---- nginx limit_req -------------------------------------------------------------------------------------------


def test_limit_req_admits_burst_plus_one_at_once():
    assert drain(Ledger(), bucket(rate=10, burst=20, algorithm="limit-req"), 0.0) == 21


def test_limit_req_with_nodelay_sends_everything_at_once():
    ledger, spec = Ledger(), bucket(rate=10, burst=5, algorithm="limit-req", nodelay=True)
    assert {ledger.grant("k", spec, 1, 0.0, T0, "w").delay for _ in range(6)} == {0.0}


def test_limit_req_without_nodelay_delays_the_excess_like_nginx():
    ledger, spec = Ledger(), bucket(rate=10, burst=5, algorithm="limit-req", nodelay=False)
    delays = [ledger.grant("k", spec, 1, 0.0, T0, "w").delay for _ in range(6)]
    assert delays == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    assert ledger.grant("k", spec, 1, 0.0, T0, "w").granted == 0


def test_limit_req_delay_shrinks_as_the_excess_drains():
    ledger, spec = Ledger(), bucket(rate=10, burst=5, algorithm="limit-req", nodelay=False)
    for _ in range(4):
        ledger.grant("k", spec, 1, 0.0, T0, "w", used=1)
    assert ledger.grant("k", spec, 1, 0.25, T0, "w", used=1).delay == pytest.approx(0.15)


def test_a_limit_req_grant_gives_the_delay_of_its_first_token():
    ledger, spec = Ledger(), bucket(rate=10, burst=5, algorithm="limit-req", nodelay=False)
    ledger.grant("k", spec, 1, 0.0, T0, "a")
    assert ledger.grant("k", spec, 3, 0.0, T0, "b").delay == pytest.approx(0.1)


def test_grant_request_serves_a_workers_message():
    ledger, spec = Ledger(), per("minute", 100)
    grant = ledger.grant_request(LeaseRequest("k", spec, "w", 7), 0.0, T0)
    assert (grant.key, grant.granted) == ("k", 7)


def test_the_ledger_keeps_at_most_max_keys_the_least_recently_asked_for_going_first(monkeypatch):
    monkeypatch.setattr(ledger_module, "MAX_KEYS", 3)
    ledger, spec = Ledger(), per("day", 100)
    for key in ("a", "b", "c", "a", "d"):  # "a" asked for again: "b" is now the least recent
        ledger.grant(key, spec, 1, 0.0, T0, "w")
    assert ledger.keys() == ["c", "a", "d"]


def test_a_stream_of_one_off_identifiers_keeps_the_newest_within_the_bound(monkeypatch):
    monkeypatch.setattr(ledger_module, "MAX_KEYS", 500)
    ledger, spec = Ledger(workers=2), per("day", 100)
    for i in range(2000):  # limit_by header: a new value per request, within a second
        assert ledger.grant(f"p|client-{i}", spec, 1, i * 1e-4, T0, "w1").granted == 1
    ledger.expire(1.0, T0 + 1)
    keys = ledger.keys()
    assert len(keys) == 500 and keys[-1] == "p|client-1999" and keys[0] == "p|client-1500"


def test_an_evicted_key_counts_afresh_as_a_kong_counter_evicted_from_its_shared_dict(monkeypatch):
    monkeypatch.setattr(ledger_module, "MAX_KEYS", 2)
    ledger, spec = Ledger(), per("day", 5)
    assert exhaust(ledger, spec, T0) == 5
    ledger.grant("x", spec, 1, 0.0, T0, "w")
    ledger.grant("y", spec, 1, 0.0, T0, "w")  # "k" was the least recently asked for
    assert "k" not in ledger.keys()
    assert exhaust(ledger, spec, T0) == 5  # README: an evicted key starts again from 0, as in Kong


def test_an_evicted_redis_key_claims_afresh_under_a_new_claimant(monkeypatch):
    monkeypatch.setattr(ledger_module, "MAX_KEYS", 1)
    ledger = Ledger(host="h")
    ledger.add_store("rl", "p:")
    spec = LimitSpec(windows=(Window("day", 100),), store="rl")
    assert ledger.grant("k", spec, 1, 0.0, T0, "w") is None  # waits for its first block
    first = ledger._keys["k"].remote.claimant
    ledger.grant("other", per("day", 5), 1, 0.0, T0, "w")
    assert ledger.keys() == ["other"] and ledger.remote_keys("rl") == []
    ledger.grant("k", spec, 1, 0.0, T0, "w")
    assert ledger._keys["k"].remote.claimant != first  # its earlier claims in Redis stay, never restated lower


def test_a_restarted_keeper_adds_up_what_every_worker_restates_and_grants_the_rest():
    """A new Ledger hears from each worker all it admitted in the window (lease.py rule 5): the sum is the window's
    count, and what is left is granted once every worker was heard from."""
    ledger, spec = Ledger(workers=2), per("minute", 100)
    ledger.report_fallback(FallbackUsage("k", "a", spec, (55,), 5, T0 + 10), 10.0)
    assert ledger.grant("k", spec, 1000, 10.0, T0 + 10, "a").granted == 0  # b's share is reserved until b is heard
    ledger.report_fallback(FallbackUsage("k", "b", spec, (25,), 0, T0 + 10), 10.0)
    assert ledger.usage("k", 10.0, T0 + 10) == {"minute": 80.0}
    assert exhaust(ledger, spec, T0 + 10, "a") == 20


def test_a_redis_key_asked_for_before_its_store_was_known_moves_to_redis_once_it_is():
    """A reload's new workers serve before the keeper has read the new config: a key of a new `policy: redis` plugin
    asked for then is counted here alone, and must go to its Redis once the keeper knows the store (it stayed local
    for as long as its spec did not change)."""
    ledger = Ledger()
    spec = LimitSpec(windows=(Window("minute", 100),), store="plugin-1")
    assert ledger.grant("k", spec, 5, 0.0, T0, "w") is not None
    assert ledger.remote_keys("plugin-1") == []
    ledger.add_store("plugin-1", "prefix")
    ledger.grant("k", spec, 5, 1.0, T0 + 1, "w")
    assert ledger.remote_keys("plugin-1") == ["k"]
