"""A window made full by tokens leased ahead of need (gateway/ratelimit/ledger.py rule 9).

Kong counts admitted requests only (kong/plugins/rate-limiting/handler.lua:89-114 get_usage: a request is stopped
only when limit - usage <= 0; handler.lua:194-217: a stopped request returns before the increment). The keeper
charges leased tokens to every window when it grants them, so a window may look full while some of its tokens are
still unspent at a worker; when they expire unspent they are given back, and the requests Kong admits must be
admitted again: a worker refused by that window asks the keeper again once they may have come back, and is told
"not before the window's end" only when none of its tokens is still out.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import trio

from gateway.ratelimit import Grant, LeaseRequest, LeaseTable, Ledger, LimitSpec, ReturnedLease, Status, Window
from gateway.ratelimit.ledger import RECHECK_S, RETURN_POLL_S, RETURN_S, WORKER_STALE_S

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))
from plugin_helpers import (  # noqa: E402 - the shared plugin helpers live beside the plugin tests
    call,
    http_codec,  # noqa: F401 - the fixture: one codec
    plugin,
    start,
)

T0 = datetime(2026, 3, 5, 13, 0, 10, tzinfo=UTC).timestamp()  # a whole second, 50 s before a minute's end
SECOND_MINUTE = LimitSpec(windows=(Window("second", 4), Window("minute", 4)))


class Gateway:
    """The keeper's Ledger and the lease tables of `workers` workers, requests decided as the plugin decides them
    (LeaseTable.spend, else take; the keeper answering each lease request at once). Times are seconds after `base`."""

    def __init__(self, spec: LimitSpec, workers: int = 1, base: float = T0) -> None:
        self.spec, self.base = spec, base
        self.ledger = Ledger(workers)
        self.tables = {f"w{i + 1}": LeaseTable(f"w{i + 1}", workers) for i in range(workers)}

    def request(self, at: float, worker: str = "w1") -> str:
        table, wall, now = self.tables[worker], self.base + at, at + 1.0
        if table.spend("k", self.spec, now, wall) is not None:
            self._pump(table, now, wall)
            return "admitted"
        decision = table.take("k", self.spec, now, wall)
        self._pump(table, now, wall)
        if decision.status is Status.WAIT:
            decision = table.take("k", self.spec, now, wall, waited=True, final=True)
        return "admitted" if decision.admitted else "denied"

    def sweep(self, at: float) -> None:
        """Every worker's periodic sweep: expired tokens go back to the keeper."""
        for table in self.tables.values():
            for returned in table.sweep(at + 1.0):
                self.ledger.return_unused(returned)

    def tokens(self, worker: str) -> int:
        return self.tables[worker]._leases["k"].tokens

    def _pump(self, table: LeaseTable, now: float, wall: float) -> None:
        for request in table.refills(now):
            grant = self.ledger.grant_request(request, now, wall)
            assert grant is not None
            table.apply(grant, now, wall)


# ---- the keeper's retry ---------------------------------------------------------------------------------------------


def lease_all(ledger: Ledger, wall: float, worker: str = "w1", spec: LimitSpec = SECOND_MINUTE) -> Grant:
    """Grant `worker` every token there is at `wall` (leases are at most half of what is left); the last grant."""
    grant = ledger.grant("k", spec, 1000, 0.0, wall, worker)
    while grant.granted and min(grant.remaining):
        grant = ledger.grant("k", spec, 1000, 0.0, wall, worker)
    return grant


def test_a_window_full_of_tokens_still_out_says_ask_again_when_they_expire():
    """The minute's last token leased ahead of need expires with its second: ask again then, not at the minute's end."""
    grant = lease_all(Ledger(), T0 + 0.25)
    assert (grant.granted, grant.remaining, grant.retry) == (1, (0, 0), 0.75)


def test_tokens_valid_for_long_are_asked_about_again_every_recheck_s():
    """A worker forgetting a key gives its tokens back before they expire (lease.py rule 2)."""
    spec = LimitSpec(windows=(Window("hour", 2), Window("day", 2)))
    ledger = Ledger()
    lease_all(ledger, T0, spec=spec)
    assert ledger.grant("k", spec, 1, 0.0, T0 + 1, "w2").retry == RECHECK_S


def test_while_expired_tokens_are_being_given_back_a_refused_worker_asks_again_every_return_poll_s():
    ledger = Ledger()
    lease_all(ledger, T0 + 0.25)
    assert ledger.grant("k", SECOND_MINUTE, 1, 1.0, T0 + 1.25, "w2").retry == RETURN_POLL_S
    assert ledger.grant("k", SECOND_MINUTE, 1, 2.0, T0 + 1 + RETURN_S, "w2").retry == RECHECK_S  # not reported yet


def test_once_its_tokens_are_reported_spent_a_full_window_says_its_end():
    ledger = Ledger()
    lease_all(ledger, T0 + 0.25)
    assert ledger.grant("k", SECOND_MINUTE, 1, 1.0, T0 + 1.25, "w1", used=4).retry == 48.75


def test_tokens_of_a_worker_silent_for_worker_stale_s_count_as_spent():
    ledger = Ledger()
    lease_all(ledger, T0 + 0.25)
    ledger.grant("k", SECOND_MINUTE, 1, 1.0, T0 + 1.25, "w2")
    ledger.expire(WORKER_STALE_S, T0 + WORKER_STALE_S)
    assert ledger.grant("k", SECOND_MINUTE, 1, WORKER_STALE_S, T0 + WORKER_STALE_S, "w2").retry == 50 - WORKER_STALE_S


def test_tokens_given_back_unspent_free_the_window_at_once():
    ledger = Ledger()
    first = lease_all(ledger, T0 + 0.25)
    ledger.return_unused(ReturnedLease("k", "w1", 1, 0, first.wall))
    assert ledger.grant("k", SECOND_MINUTE, 1, 1.0, T0 + 1.25, "w1", used=3).granted == 1


def test_expired_tokens_given_back_with_a_lease_request_are_credited_before_it_is_granted():
    ledger = Ledger()
    first = lease_all(ledger, T0 + 0.25)
    grant = ledger.grant_request(LeaseRequest("k", SECOND_MINUTE, "w1", 1, 3, 1, first.wall), 1.0, T0 + 1.25)
    assert grant is not None and (grant.granted, grant.remaining) == (1, (3, 0))


# ---- workers --------------------------------------------------------------------------------------------------------


def test_a_worker_gives_its_expired_tokens_back_with_its_next_lease_request():
    table = LeaseTable("w1", 1)
    ledger = Ledger()
    table.take("k", SECOND_MINUTE, 1.0, T0 + 0.25)
    grant = ledger.grant_request(table.refills(1.0)[0], 1.0, T0 + 0.25)
    assert grant is not None
    table.apply(grant, 1.0, T0 + 0.25)
    table.take("k", SECOND_MINUTE, 2.0, T0 + 1.25)  # the grant's tokens expired with their second: voided
    request, = table.refills(2.0)
    assert (request.unused, request.unused_wall) == (grant.granted, grant.wall)
    assert table.sweep(2.0) == []  # not given back twice


def test_the_fourth_request_of_second_4_minute_4_two_seconds_later_is_admitted():
    """Three requests in one second leave the minute's fourth token leased ahead of need; it expires with the
    second and is given back, so the fourth request (Kong's minute usage 3 < 4) is admitted."""
    gateway = Gateway(SECOND_MINUTE)
    got = [gateway.request(at) for at in (0.1, 0.2, 0.3)]
    assert gateway.tokens("w1") == 1
    gateway.sweep(1.5)
    got.append(gateway.request(2.1))
    assert got == ["admitted"] * 4


def test_the_fourth_request_of_the_day_is_admitted_the_next_hour_once_the_days_last_token_came_back_unspent():
    """hour=4, day=4: three requests in the last two seconds of 13:59, the day's last token leased ahead of need
    expiring with the hour; the worker's sweeps give it back, and at 14:00:05 the fourth request is admitted, where
    the keeper's first grant said the day was full."""
    gateway = Gateway(LimitSpec(windows=(Window("hour", 4), Window("day", 4))),
                      base=datetime(2026, 3, 5, 13, 59, 58, tzinfo=UTC).timestamp())
    got = [gateway.request(at) for at in (0.117, 0.363, 1.571)]
    for at in (2.5, 3.5, 4.5):
        gateway.sweep(at)
    assert gateway.ledger.usage("k", 6.0, gateway.base + 5.0)["day"] == 3.0
    got.append(gateway.request(7.0))
    assert got == ["admitted"] * 4


def test_a_worker_refused_while_another_held_the_last_token_is_admitted_once_it_came_back_unspent():
    """Two workers: w1 holds the minute's last token, leased ahead of need, when w2 is refused; the token expires
    with its second, w1's sweep gives it back, and w2's next request is admitted (Kong's minute usage: 3)."""
    gateway = Gateway(SECOND_MINUTE, workers=2)
    assert [gateway.request(0.1, "w1"), gateway.request(0.2, "w1"), gateway.request(0.3, "w2")] == ["admitted"] * 3
    assert gateway.tokens("w1") == 1
    assert gateway.request(0.5, "w2") == "denied"  # the tail of the window is at w1 (ledger.py rule 2)
    gateway.sweep(1.6)
    assert gateway.request(1.9, "w2") == "admitted"


def test_a_window_really_full_still_refuses_until_its_end():
    """Four requests admitted in the minute: the fifth, seconds later on either worker, is refused."""
    gateway = Gateway(SECOND_MINUTE, workers=2)
    for at, worker in ((0.1, "w1"), (0.2, "w1"), (0.3, "w2"), (0.4, "w1")):
        assert gateway.request(at, worker) == "admitted"
    gateway.sweep(1.6)
    assert [gateway.request(at, worker) for at, worker in ((1.8, "w1"), (1.9, "w2"), (5.0, "w1"), (30.0, "w2"))] \
        == ["denied"] * 4


# ---- through the gateway ------------------------------------------------------------------------------------------


async def _to_second_start(min_left_in_minute: float) -> None:
    """Sleep to just after the next whole second, the current minute having more than `min_left_in_minute` s."""
    while 60 - time.time() % 60 <= min_left_in_minute + 1:
        await trio.sleep(60 - time.time() % 60 + 0.01)
    await trio.sleep(1 - time.time() % 1 + 0.005)


async def test_second_4_minute_4_three_requests_then_one_two_seconds_later_is_admitted(nursery, gateway):
    """Kong sees minute usage 3 < 4 for the fourth request and admits it: 200, X-RateLimit-Remaining-Minute: 0, no
    Retry-After. The token leased ahead of need after the third request expired unspent with its second and went
    back to the keeper (the worker's sweep, every 1 s)."""
    _, port = await start(nursery, gateway, plugins=[plugin("rate-limiting", second=4, minute=4)])
    await _to_second_start(min_left_in_minute=6)
    first = [await call(port, "/") for _ in range(3)]
    assert [r.status for r in first] == [200, 200, 200]
    await trio.sleep(2 - time.time() % 1 + 0.05)
    fourth = await call(port, "/")
    assert (fourth.status, fourth.header("retry-after")) == (200, None)
    assert fourth.header("x-ratelimit-remaining-minute") == "0"
