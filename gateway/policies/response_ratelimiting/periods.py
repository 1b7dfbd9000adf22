"""The periods a response-ratelimiting counter belongs to, sans I/O: Kong's kong.tools.timestamp.

A request is counted at `now`, Kong's timestamp.get_utc(): whole seconds since the epoch (UTC). Each period
starts where get_timestamps puts it (the second itself; :00 of the minute; the hour; 00:00 of the day; the 1st of
the month; January 1st), in milliseconds as Kong writes it into counter keys, and ends where the next one starts:
a counter is read only within its period, so it may be forgotten at that end.
"""

from __future__ import annotations

from datetime import UTC, datetime

Window = tuple[int, int]  # (start in ms since the epoch, end in seconds since the epoch)


def windows(now: int) -> tuple[Window, ...]:
    """(start in ms, end in s) of each period for the second `now`, in schema.PERIODS' order."""
    minute = now - now % 60
    hour = now - now % 3600
    day = now - now % 86400  # Unix time has no leap seconds: every UTC day is 86400 s
    date = datetime.fromtimestamp(now, UTC)
    month = int(datetime(date.year, date.month, 1, tzinfo=UTC).timestamp())
    next_month = datetime(date.year + date.month // 12, date.month % 12 + 1, 1, tzinfo=UTC)
    year = int(datetime(date.year, 1, 1, tzinfo=UTC).timestamp())
    next_year = datetime(date.year + 1, 1, 1, tzinfo=UTC)
    return ((now * 1000, now + 1), (minute * 1000, minute + 60), (hour * 1000, hour + 3600),
            (day * 1000, day + 86400), (month * 1000, int(next_month.timestamp())),
            (year * 1000, int(next_year.timestamp())))


class Clock:
    """`windows` for the current second, computed once per second (every request of that second asks)."""

    __slots__ = ("_now", "_windows")

    def __init__(self) -> None:
        self._now = -1
        self._windows: tuple[Window, ...] = ()

    def windows(self, now: int) -> tuple[Window, ...]:
        if now != self._now:
            self._windows = windows(now)
            self._now = now
        return self._windows
