"""Fixed windows aligned like Kong's: UTC second/minute/hour/day boundaries, calendar months and years; and the
RateLimit-Reset Kong reports for them, which counts fixed lengths from the window's start."""

from __future__ import annotations

from datetime import UTC, datetime
from math import ceil, floor

PERIODS = ("second", "minute", "hour", "day", "month", "year")
# Unix time has no leap seconds, so these periods are exact multiples of a second on the wall clock.
FIXED_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
# Kong's window lengths (kong/plugins/rate-limiting/expiration.lua): its reset counts a month as 30 days and a year
# as 365 from the calendar period's start, whatever the calendar says
KONG_SECONDS = {**FIXED_SECONDS, "month": 2592000, "year": 31536000}
# The wall clocks a window can be found for: window_bounds computes the end of the calendar year holding `wall`, and
# Python's datetime ends with the year 9999 (a worker's clock is this host's, decades inside this range)
FIRST_WALL = 0.0
LAST_WALL = datetime(9999, 1, 1, tzinfo=UTC).timestamp()


def usable_wall(wall: float) -> bool:
    """Can `wall` (Unix seconds, from a worker's message) name windows? Not NaN, infinite or beyond the calendar."""
    return FIRST_WALL <= wall < LAST_WALL


def window_bounds(period: str, wall: float) -> tuple[float, float]:
    """[start, end) in Unix seconds of the `period` window holding `wall`; month and year follow the UTC calendar."""
    size = FIXED_SECONDS.get(period)
    if size is not None:
        first = floor(wall / size) * size
        return float(first), float(first + size)
    moment = datetime.fromtimestamp(wall, UTC)
    if period == "month":
        start = datetime(moment.year, moment.month, 1, tzinfo=UTC)
        end = datetime(moment.year + moment.month // 12, moment.month % 12 + 1, 1, tzinfo=UTC)
    elif period == "year":
        start = datetime(moment.year, 1, 1, tzinfo=UTC)
        end = datetime(moment.year + 1, 1, 1, tzinfo=UTC)
    else:
        raise ValueError(f"unknown rate-limit period {period!r}; expected one of {', '.join(PERIODS)}")
    return start.timestamp(), end.timestamp()


def reset_at(period: str, start: float) -> float:
    """When Kong's RateLimit-Reset of the `period` window starting at `start` runs out: `start` plus Kong's length,
    the window's end for second .. day, not for a month (30 days) or a year (365)."""
    return start + KONG_SECONDS[period]


def kong_reset(period: str, wall: float) -> int:
    """Kong's RateLimit-Reset of the `period` window holding `wall`: max(1, length - whole seconds since its start)."""
    return max(1, ceil(reset_at(period, window_bounds(period, wall)[0]) - wall))
