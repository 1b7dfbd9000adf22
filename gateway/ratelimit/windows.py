"""Fixed windows aligned like Kong's: UTC second/minute/hour/day boundaries, calendar months and years."""

from __future__ import annotations

from datetime import UTC, datetime
from math import floor

PERIODS = ("second", "minute", "hour", "day", "month", "year")
# Unix time has no leap seconds, so these periods are exact multiples of a second on the wall clock.
FIXED_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


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
