"""Window alignment: UTC second/minute/hour/day boundaries, calendar months (February, leap years) and years."""

from datetime import UTC, datetime

import pytest

from gateway.ratelimit.windows import window_bounds


def ts(*parts):
    return datetime(*parts, tzinfo=UTC).timestamp()


def test_second_window_is_the_whole_second():
    start = ts(2024, 5, 1, 12, 0, 7)
    assert window_bounds("second", start + 0.25) == (start, start + 1)


def test_minute_window_starts_on_the_minute():
    assert window_bounds("minute", ts(2024, 5, 1, 12, 34, 56)) == (ts(2024, 5, 1, 12, 34), ts(2024, 5, 1, 12, 35))


def test_hour_window_starts_on_the_hour():
    assert window_bounds("hour", ts(2024, 5, 1, 23, 59, 59)) == (ts(2024, 5, 1, 23), ts(2024, 5, 2, 0))


def test_day_window_is_the_utc_day():
    assert window_bounds("day", ts(2024, 5, 1, 0, 0, 0)) == (ts(2024, 5, 1), ts(2024, 5, 2))


def test_a_boundary_instant_belongs_to_the_next_window():
    assert window_bounds("minute", ts(2024, 5, 1, 12, 35))[0] == ts(2024, 5, 1, 12, 35)


def test_month_window_is_the_calendar_month():
    assert window_bounds("month", ts(2024, 5, 31, 23, 59, 59)) == (ts(2024, 5, 1), ts(2024, 6, 1))


def test_february_of_a_common_year_has_28_days():
    start, end = window_bounds("month", ts(2023, 2, 14))
    assert (start, end) == (ts(2023, 2, 1), ts(2023, 3, 1)) and end - start == 28 * 86400


def test_february_of_a_leap_year_has_29_days():
    start, end = window_bounds("month", ts(2024, 2, 29, 12))
    assert (start, end) == (ts(2024, 2, 1), ts(2024, 3, 1)) and end - start == 29 * 86400


def test_december_window_ends_at_the_new_year():
    assert window_bounds("month", ts(2024, 12, 31, 23)) == (ts(2024, 12, 1), ts(2025, 1, 1))


def test_year_window_is_the_calendar_year_leap_or_not():
    assert window_bounds("year", ts(2024, 7, 1)) == (ts(2024, 1, 1), ts(2025, 1, 1))
    assert window_bounds("year", ts(2024, 7, 1))[1] - window_bounds("year", ts(2024, 7, 1))[0] == 366 * 86400
    assert window_bounds("year", ts(2023, 7, 1))[1] - window_bounds("year", ts(2023, 7, 1))[0] == 365 * 86400


def test_unknown_period_is_refused_with_the_valid_ones_named():
    with pytest.raises(ValueError, match="second, minute"):
        window_bounds("week", 0.0)
