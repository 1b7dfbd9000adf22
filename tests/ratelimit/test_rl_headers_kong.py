"""Kong's rate-limiting headers where Kong's numbers are not the calendar's, or not whole.

RateLimit-Reset (kong/plugins/rate-limiting/handler.lua): `max(1, window - floor((now - timestamps[k]) / 1000))`,
`window` from expiration.lua (a month is 30 days, a year 365) and `timestamps[k]` the UTC calendar start of the
period; Retry-After is that reset. Counting stays by calendar period, as Kong's. A limit is any number above 0
(schema.lua), and handler.lua writes `limit` and `remaining = max(0, limit - usage - 1)` as Lua writes numbers
(%.14g): a limit of 2.5 admits three requests and reports 2.5, remaining 1.5, 0.5, 0.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from math import ceil
from pathlib import Path

import pytest
import trio

from gateway.ratelimit import Grant, LeaseTable, Ledger, LimitSpec, RateLimitHeaders, Status, Window
from gateway.ratelimit.windows import FIXED_SECONDS, kong_reset, window_bounds

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))
from plugin_helpers import (  # noqa: E402 - the shared plugin helpers live beside the plugin tests
    call,
    http_codec,  # noqa: F401 - the fixture
    plugin,
    start,
)

KONG_MONTH_S = 2592000  # expiration.lua
KONG_YEAR_S = 31536000


def at(*fields: int) -> float:
    return datetime(*fields, tzinfo=UTC).timestamp()  # type: ignore[arg-type, misc]


def replies(spec: LimitSpec, walls: list[float], limits: tuple[float, ...] = ()) -> list[tuple[str, dict]]:
    """("admitted" or "denied", headers) of one request of one key at each of `walls`, decided by the lease table
    (take, then RateLimitHeaders.decided) with the keeper's Ledger answering every lease request."""
    ledger, table, headers = Ledger(), LeaseTable("w1", 1), RateLimitHeaders(spec, limits)
    out = []
    for i, wall in enumerate(walls):
        now = wall - walls[0] + 1.0 + i * 0.001
        decision = table.take("k", spec, now, wall)
        for request in table.refills(now):
            table.apply(ledger.grant_request(request, now, wall), now, wall)
        if decision.status is Status.WAIT:
            decision = table.take("k", spec, now, wall, waited=True, final=True)
        out.append(("admitted" if decision.admitted else "denied", parse(headers.decided(decision))))
    return out


def spent(spec: LimitSpec, created: float, wall: float, left: int, limits: tuple[float, ...] = ()) -> dict:
    """Headers of the fast path (LeaseTable.spend, admitted) at `wall`: a token spent from a lease made at `created`
    and granted `left` + 1 tokens (all the keeper had) at `wall`, so `left` requests are then left in every window."""
    table = LeaseTable("w1", 1)
    table.take("k", spec, 0.0, created)
    table.refills(0.0)
    now = wall - created
    ends = tuple(window_bounds(w.period, wall)[1] for w in spec.windows)
    table.apply(Grant("k", left + 1, tuple(0 for _ in ends), ends, wall, min(ends), 0.0), now, wall)
    lease = table.spend("k", spec, now, wall)
    assert lease is not None
    return parse(RateLimitHeaders(spec, limits).admitted(lease, wall))


def parse(lines: bytes) -> dict[bytes, bytes]:
    return dict(tuple(line.split(b": ", 1)) for line in lines.split(b"\r\n")[:-1])  # type: ignore[misc]


@pytest.mark.parametrize("period", list(FIXED_SECONDS))
def test_kongs_reset_is_the_seconds_to_the_calendar_end_for_second_to_day(period):
    """Kong's fixed lengths are the calendar's for second .. day, whole or fractional `now` alike."""
    for wall in (at(2026, 12, 5, 13, 59, 59), at(2026, 12, 5, 13, 59, 59) + 0.25, at(2026, 12, 31, 23, 59, 59) + 0.9):
        assert kong_reset(period, wall) == max(1, ceil(window_bounds(period, wall)[1] - wall))


def test_a_month_windows_reset_counts_kongs_thirty_days_from_the_months_start():
    """4 days into a 31-day month Kong says 30 days less 4 (the calendar: 27 days), on both header paths."""
    wall, spec = at(2026, 12, 5), LimitSpec(windows=(Window("month", 5),))
    (_, decided), = replies(spec, [wall])
    assert decided[b"RateLimit-Reset"] == spent(spec, wall, wall + 0.5, 4)[b"RateLimit-Reset"] == b"%d" % (
        KONG_MONTH_S - 4 * 86400)


def test_a_denied_month_windows_retry_after_is_kongs_reset():
    wall = at(2026, 12, 5)
    (_, _), (path, denied) = replies(LimitSpec(windows=(Window("month", 1),)), [wall, wall])
    assert path == "denied"
    assert denied[b"Retry-After"] == denied[b"RateLimit-Reset"] == b"%d" % (KONG_MONTH_S - 4 * 86400)


def test_past_kongs_thirty_days_a_month_resets_in_1_second_though_the_calendar_month_goes_on():
    """The 31st day: Kong's reset is at least 1 while its count (by calendar month) still denies."""
    wall = at(2026, 12, 31, 12)
    got = replies(LimitSpec(windows=(Window("month", 1),)), [wall, wall, wall + 5])
    assert [path for path, _ in got] == ["admitted", "denied", "denied"]
    assert [h[b"RateLimit-Reset"] for _, h in got] == [b"1"] * 3
    assert [h[b"Retry-After"] for _, h in got[1:]] == [b"1"] * 2


def test_a_year_windows_reset_counts_kongs_365_days_in_a_leap_year():
    wall = at(2028, 1, 1) + 10
    (_, first), = replies(LimitSpec(windows=(Window("year", 5),)), [wall])
    assert first[b"RateLimit-Reset"] == b"%d" % (KONG_YEAR_S - 10)


def test_a_lease_that_rolls_into_a_new_year_reports_the_new_years_kong_reset():
    """The fast path reads the lease's own reset moments, which move with its windows."""
    spec = LimitSpec(windows=(Window("second", 100), Window("year", 1000)))
    created = at(2027, 12, 31, 23, 59, 59) + 0.5
    assert spent(spec, created, created, 50)[b"RateLimit-Reset"] == b"1"  # the last second of Kong's 365 days
    assert spent(spec, created, at(2028, 1, 1) + 10.5, 50)[b"RateLimit-Reset"] == b"%d" % (KONG_YEAR_S - 10)


def test_a_fractional_limit_is_reported_as_kong_writes_it_with_fractional_remainders():
    """hour: 2.5 admits three; limit 2.5, remaining 1.5, 0.5, 0, then 0 denied, on both header paths."""
    wall, spec = at(2026, 12, 5, 13), LimitSpec(windows=(Window("hour", 3),))
    got = replies(spec, [wall + i * 0.1 for i in range(4)], limits=(2.5,))
    assert [path for path, _ in got] == ["admitted", "admitted", "admitted", "denied"]
    assert {(h[b"X-RateLimit-Limit-Hour"], h[b"RateLimit-Limit"]) for _, h in got} == {(b"2.5", b"2.5")}
    assert [h[b"X-RateLimit-Remaining-Hour"] for _, h in got] == [b"1.5", b"0.5", b"0", b"0"]
    assert [h[b"RateLimit-Remaining"] for _, h in got] == [b"1.5", b"0.5", b"0", b"0"]
    assert [spent(spec, wall, wall, left, limits=(2.5,))[b"RateLimit-Remaining"] for left in (2, 1, 0)] == [
        b"1.5", b"0.5", b"0"]


def test_the_tightest_window_is_chosen_on_kongs_fractional_remainders():
    """minute 2.5 and hour 3: after one request 1.5 and 2 remain (whole counts tie at 2): Kong reports the minute."""
    wall = at(2026, 12, 5, 13, 0, 12)
    (_, headers), = replies(LimitSpec(windows=(Window("minute", 3), Window("hour", 3))), [wall], limits=(2.5, 3.0))
    assert (headers[b"X-RateLimit-Remaining-Minute"], headers[b"X-RateLimit-Remaining-Hour"]) == (b"1.5", b"2")
    assert (headers[b"RateLimit-Limit"], headers[b"RateLimit-Remaining"], headers[b"RateLimit-Reset"]) == (
        b"2.5", b"1.5", b"48")


@pytest.mark.parametrize(("limit", "written"), [(2**53, b"9.007199254741e+15"), (10**14, b"1e+14"),
                                                (10**14 - 1, b"99999999999999")])
def test_a_limit_of_15_digits_or_more_is_written_as_lua_writes_it(limit, written):
    (_, headers), = replies(LimitSpec(windows=(Window("day", limit),)), [at(2026, 12, 5)], limits=(float(limit),))
    assert headers[b"X-RateLimit-Limit-Day"] == headers[b"RateLimit-Limit"] == written


async def test_a_fractional_limit_is_reported_as_configured_through_the_plugin(nursery, gateway):
    """The plugin hands its configured limits to the headers: Kong's 2.5 on the wire, three requests admitted."""
    _, port = await start(nursery, gateway, plugins=[plugin("rate-limiting", hour=2.5)])
    if 3600 - time.time() % 3600 < 2:  # the four requests in one hour
        await trio.sleep(3600 - time.time() % 3600 + 0.05)
    got = [await call(port) for _ in range(4)]
    assert [r.status for r in got] == [200, 200, 200, 429]
    assert [(r.header("x-ratelimit-limit-hour"), r.header("ratelimit-limit")) for r in got] == [("2.5", "2.5")] * 4
    assert [r.header("x-ratelimit-remaining-hour") for r in got] == ["1.5", "0.5", "0", "0"]


# ---- a 429 of a longer window: the other windows as they are now -------------------------------------------------
# handler.lua:160-186: a period that is not the one that stopped the request (`stop == nil or stop == k`, line 164)
# reports limit - usage of its current window, whatever the keeper's last grant to this worker said of an earlier one.
T = at(2026, 3, 5, 13, 0, 10)  # 50 s before a minute's end, an hour's start


def test_a_429_of_the_minute_reports_the_current_seconds_remaining():
    """second=1, minute=2: one request in each of two seconds, a third in a later second: Kong's usage is second 0,
    minute 2, so it answers 429 with X-RateLimit-Remaining-Second: 1 and -Minute: 0."""
    spec = LimitSpec(windows=(Window("second", 1), Window("minute", 2)))
    got = replies(spec, [T + 0.1, T + 1.1, T + 2.1])
    assert [verdict for verdict, _ in got] == ["admitted", "admitted", "denied"]
    assert (got[2][1][b"X-RateLimit-Remaining-Second"], got[2][1][b"X-RateLimit-Remaining-Minute"]) == (b"1", b"0")


def test_a_worker_refused_until_the_hours_end_reports_each_later_minute_afresh():
    """second=6, minute=6, hour=10: six requests in one minute, four in the next fill the hour; in the minute after,
    the worker refuses on the keeper's word from the minute before (no asking), and reports the new minute's limit
    less its usage there (0): -Minute: 6, not the 2 the keeper said of the minute before."""
    spec = LimitSpec(windows=(Window("second", 6), Window("minute", 6), Window("hour", 10)))
    walls = [T + 0.1] * 6 + [T + 60.1] * 4 + [T + 63.0, T + 121.0]
    got = replies(spec, walls)
    assert [verdict for verdict, _ in got] == ["admitted"] * 10 + ["denied"] * 2
    remaining = [tuple(h[b"X-RateLimit-Remaining-" + p] for p in (b"Second", b"Minute", b"Hour")) for _, h in got[10:]]
    assert remaining == [(b"6", b"2", b"0"), (b"6", b"6", b"0")]
    assert got[11][1][b"Retry-After"] == b"%d" % kong_reset("hour", T + 121.0)


async def test_a_429_of_the_minute_reports_the_current_seconds_remaining_through_the_plugin(nursery, gateway):
    """The same through the gateway: the third request, in a later second, is a 429 with -Second: 1, -Minute: 0."""
    _, port = await start(nursery, gateway, plugins=[plugin("rate-limiting", second=1, minute=2)])
    while 60 - time.time() % 60 <= 4:  # three seconds within one minute
        await trio.sleep(60 - time.time() % 60 + 0.01)
    for _ in range(2):
        await trio.sleep(1 - time.time() % 1 + 0.01)
        assert (await call(port, "/")).status == 200
    await trio.sleep(1 - time.time() % 1 + 0.01)
    third = await call(port, "/")
    assert third.status == 429
    assert (third.header("x-ratelimit-remaining-second"), third.header("x-ratelimit-remaining-minute")) == ("1", "0")
