"""A restarted keeper's token buckets (lease.py rule 5): each worker restates how far its admissions drew a key's
bucket down, so the new keeper's bucket starts where the old one was, not full.

nginx 1.27.1 src/http/modules/ngx_http_limit_req_module.c:454-494 (ngx_http_limit_req_lookup): a key's `excess` and
`last` live in the zone's shared memory, which a worker's crash leaves as it was.
"""

from gateway.ratelimit import LeaseTable, Ledger, LimitSpec, Status

T0 = 1_700_000_040.0  # a whole minute (UTC)
PER_MINUTE = LimitSpec(algorithm="limit-req", rate=1 / 60, burst=2, nodelay=True)  # 3 tokens, one back a minute


def admit(table: LeaseTable, ledger: Ledger, now: float, spec: LimitSpec = PER_MINUTE) -> bool:
    """One request of key k at `table`, asking `ledger` for tokens when it has none; whether it was admitted."""
    decision = table.take("k", spec, now, T0 + now)
    if decision.status is Status.WAIT:
        for request in table.refills(now):
            grant = ledger.grant_request(request, now, T0 + now)
            assert grant is not None
            table.apply(grant, now, T0 + now)
        decision = table.take("k", spec, now, T0 + now, waited=True, final=True)
    return decision.admitted


def restart(tables: list[LeaseTable], now: float) -> Ledger:
    """A new keeper (an empty Ledger) hears each worker's restate at `now`."""
    ledger = Ledger(workers=len(tables))
    for table in tables:
        table.keeper = "next"
        for usage in table.restate(T0 + now, now):
            ledger.report_fallback(usage, now)
    return ledger


def test_a_bucket_emptied_before_the_keeper_restarts_is_still_empty_after():
    """limit-req 1r/m burst=2 nodelay: three requests empty the bucket; the restarted keeper's bucket is empty too
    (it was full again, and admitted three more)."""
    table, old = LeaseTable("w1", 1), Ledger(workers=1)
    assert [admit(table, old, i * 0.001) for i in range(4)] == [True, True, True, False]
    new = restart([table], 1.0)
    assert [admit(table, new, 1.0 + i * 0.001) for i in range(3)] == [False, False, False]


def test_what_two_workers_drew_from_a_bucket_is_summed_by_the_restarted_keeper():
    tables, old = [LeaseTable("w1", 2), LeaseTable("w2", 2)], Ledger(workers=2)
    assert [admit(tables[i % 2], old, i * 0.001) for i in range(3)] == [True, True, True]
    new = restart(tables, 1.0)
    assert [admit(tables[i % 2], new, 1.0 + i * 0.001) for i in range(4)] == [False] * 4


def test_what_the_bucket_refilled_since_is_not_stated():
    """A minute after the bucket emptied nginx has one token again (excess down by rate x 60 s): so does the
    restarted keeper, and no more."""
    table, old = LeaseTable("w1", 1), Ledger(workers=1)
    assert [admit(table, old, i * 0.001) for i in range(3)] == [True, True, True]
    new = restart([table], 60.5)
    assert [admit(table, new, 60.5 + i * 0.001) for i in range(2)] == [True, False]


def test_a_bucket_full_again_is_not_stated():
    table, old = LeaseTable("w1", 1), Ledger(workers=1)
    assert [admit(table, old, i * 0.001) for i in range(3)] == [True, True, True]
    table.keeper = "next"
    assert table.restate(T0 + 200.0, 200.0) == []


def test_local_share_use_is_stated_once_within_what_the_bucket_was_drawn():
    """Admissions on the local share (keeper lost) draw the bucket as leased ones do: the restate's total is how far
    they drew it, not that plus the local-share use again."""
    table, old = LeaseTable("w1", 1), Ledger(workers=1)
    assert admit(table, old, 0.0)
    table.fallback(True, 1)
    assert [admit(table, old, 0.001 + i * 0.001) for i in range(3)] == [True, True, False]
    table.fallback(False, 1)
    table.keeper = "next"
    [usage] = table.restate(T0 + 1.0, 1.0)
    assert usage.total == 3


EVERY_SECOND = LimitSpec(algorithm="limit-req", rate=1.0, burst=2, nodelay=True)  # 3 tokens, one back a second


def test_a_bucket_one_worker_drew_within_its_rate_is_full_after_a_keeper_restart():
    """One client on one connection (one worker of two) pacing under the rate has nginx's excess at 0: its burst is
    admitted whether a keeper restarted in between or not (a worker's view refilled at rate / 2 stated a shortfall
    the zone never had)."""
    def steady_then_burst(restart_keeper: bool) -> list[bool]:
        tables, ledger = [LeaseTable("w1", 2), LeaseTable("w2", 2)], Ledger(workers=2)
        t = 0.0
        for _ in range(20):  # a request every 1.5 s (rate: 1/s), all on worker 1
            assert admit(tables[0], ledger, t, EVERY_SECOND)
            t += 1.5
        t += 2.0
        if restart_keeper:
            ledger = restart(tables, t)
        return [admit(tables[0], ledger, t + i * 0.001, EVERY_SECOND) for i in range(3)]

    assert steady_then_burst(False) == [True, True, True]
    assert steady_then_burst(True) == [True, True, True]
