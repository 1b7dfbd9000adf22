"""response-ratelimiting's arithmetic and periods, sans I/O (gateway/policies/response_ratelimiting/usage.py and
periods.py): Kong's parse_header, its counter keys and period starts (timestamp.get_timestamps), the headers and
verdicts of access and header_filter, and what the log phase adds."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from gateway.policies.response_ratelimiting.periods import Clock, windows
from gateway.policies.response_ratelimiting.schema import PeriodLimits
from gateway.policies.response_ratelimiting.usage import Plan, counter_key, parse_increments

NAMES = {b"video": "video", b"image": "image"}


def at(*fields: int) -> int:
    return int(datetime(*fields, tzinfo=UTC).timestamp())


def plan(**limits: dict) -> Plan:
    return Plan({name: msgspec.convert(v, PeriodLimits) for name, v in limits.items()})


# ---- Kong's parse_header ---------------------------------------------------------------------------------------------


def test_pairs_are_split_at_commas_and_stripped():
    assert parse_increments(b"video=1, image= 2 ,\timage2=3", NAMES) == {"video": 1, "image": 2}


def test_no_header_is_no_increment():
    assert parse_increments(None, NAMES) == {}
    assert parse_increments(b"", NAMES) == {}


def test_unknown_names_are_ignored():
    assert parse_increments(b"audio=5, video=1", NAMES) == {"video": 1}


def test_a_part_without_exactly_one_equals_sign_is_ignored():
    assert parse_increments(b"video, image=1=2, video=3", NAMES) == {"video": 3}


def test_names_match_case_sensitively():
    assert parse_increments(b"Video=1", NAMES) == {}


def test_numbers_read_as_lua_tonumber_reads_them():
    assert parse_increments(b"video=0x10, image=1e2", NAMES) == {"video": 16, "image": 100}
    assert parse_increments(b"video=-3", NAMES) == {"video": -3}


def test_a_later_part_for_a_name_replaces_the_earlier_even_when_it_does_not_read():
    assert parse_increments(b"video=1, video=2", NAMES) == {"video": 2}
    assert parse_increments(b"video=1, video=abc", NAMES) == {}
    assert parse_increments(b"video=1, video=", NAMES) == {}


def test_a_fraction_or_a_number_past_two_to_the_53_is_no_increment():
    """A difference the README states: Kong's policy local counts video=0.5 (its counters and the bus's are whole)."""
    assert parse_increments(b"video=0.5, image=1e300", NAMES) == {}


# ---- periods: Kong's timestamp.get_timestamps ------------------------------------------------------------------------


def test_each_period_starts_as_get_timestamps_puts_it_in_ms():
    now = at(2024, 3, 15, 13, 47, 29)
    starts = [start for start, _ in windows(now)]
    assert starts == [now * 1000, at(2024, 3, 15, 13, 47) * 1000, at(2024, 3, 15, 13) * 1000,
                      at(2024, 3, 15) * 1000, at(2024, 3, 1) * 1000, at(2024, 1, 1) * 1000]


def test_each_period_ends_where_the_next_starts_months_and_years_by_the_calendar():
    ends = [end for _, end in windows(at(2024, 2, 29, 23, 59, 59))]
    assert ends == [at(2024, 3, 1), at(2024, 3, 1), at(2024, 3, 1), at(2024, 3, 1), at(2024, 3, 1), at(2025, 1, 1)]


def test_december_ends_at_the_next_year():
    assert windows(at(2023, 12, 31, 12))[4] == (at(2023, 12, 1) * 1000, at(2024, 1, 1))


def test_the_clock_computes_a_second_once():
    clock = Clock()
    first = clock.windows(1000)
    assert clock.windows(1000) is first
    assert clock.windows(1001)[0] == (1001000, 1002)


# ---- usage, verdicts and headers -------------------------------------------------------------------------------------


def test_usage_keys_name_each_configured_period_in_config_order():
    p = plan(video={"minute": 10, "second": 5}, image={"day": 3})
    w = windows(at(2024, 3, 15, 13, 47, 29))
    assert p.usage_keys("pid", "1.2.3.4", w) == [
        counter_key("pid", "1.2.3.4", w[0][0], "video", "second"),
        counter_key("pid", "1.2.3.4", w[1][0], "video", "minute"),
        counter_key("pid", "1.2.3.4", w[3][0], "image", "day")]
    assert counter_key("pid", "1.2.3.4", 1000, "video", "second") == "response-ratelimit:pid:1.2.3.4:1000:video:second"


def test_remaining_is_the_limit_less_the_count_and_may_go_negative():
    assert plan(video={"second": 5, "minute": 10}).remaining([2, 12]) == [3, -2]


def test_the_upstream_gets_the_least_remaining_of_each_name():
    p = plan(video={"second": 5, "minute": 10}, image={"second": 4})
    assert p.upstream_headers([3, -2, 4]) == [(b"x-ratelimit-remaining-video", b"-2"),
                                              (b"x-ratelimit-remaining-image", b"4")]


def test_block_on_first_violation_needs_exactly_nothing_remaining():
    p = plan(video={"second": 5}, image={"second": 4})
    assert p.violation([1, 0]) == "image"
    assert p.violation([-1, 1]) is None  # Kong tests remaining == 0


def test_the_client_gets_limit_and_remaining_less_this_increment_never_below_zero():
    p = plan(video={"second": 6, "minute": 12})
    assert p.client_headers([4, 10], {"video": 5}) == [
        (b"x-ratelimit-limit-video-second", b"6"), (b"x-ratelimit-remaining-video-second", b"0"),
        (b"x-ratelimit-limit-video-minute", b"12"), (b"x-ratelimit-remaining-video-minute", b"5")]


def test_limits_are_written_as_lua_writes_numbers():
    assert plan(video={"second": 2.5}).client_headers([2.5], {}) == [
        (b"x-ratelimit-limit-video-second", b"2.5"), (b"x-ratelimit-remaining-video-second", b"2.5")]


def test_header_names_are_lower_case():
    assert plan(Video={"second": 1}).upstream_headers([1]) == [(b"x-ratelimit-remaining-video", b"1")]


def test_a_positive_increment_for_a_used_up_name_exceeds():
    p = plan(video={"second": 5}, image={"second": 4})
    assert p.exceeded([0, 4], {"video": 1})
    assert not p.exceeded([0, 4], {"image": 1})  # video is used up, but this response costs it nothing
    assert not p.exceeded([0, 4], {"video": 0})
    assert not p.exceeded([1, 4], {"video": 3})  # what was left in access decides, not the new total


def test_an_increment_counts_in_all_six_periods_until_each_ends():
    p = plan(video={"second": 5}, image={"second": 4})
    now = at(2024, 3, 15, 13, 47, 29)
    w = windows(now)
    items = p.increments("pid", "ip", w, {"video": 2, "image": 0}, now + 0.25)
    periods = ("second", "minute", "hour", "day", "month", "year")
    assert [key for key, _, _ in items] == [counter_key("pid", "ip", w[i][0], "video", periods[i]) for i in range(6)]
    assert {n for _, n, _ in items} == {2}
    assert [ttl for _, _, ttl in items] == [1.0, 30.75, 750.75, 36750.75, 1419150.75, 25179150.75]
