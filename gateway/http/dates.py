"""HTTP dates as nginx reads them (ngx_parse_http_time), sans-I/O: what Kong's hmac-auth checks its clock skew with;
and as nginx writes them: NOW, the `Date` line every response carries (ngx_http_header_filter's, from its cached
ngx_cached_http_time), formatted once a second, never per response.

Three forms: RFC 1123 (`Sun, 06 Nov 1994 08:49:37 GMT`), RFC 850 (`Sunday, 06-Nov-94 08:49:37 GMT`) and asctime
(`Sun Nov  6 08:49:37 1994`). As in nginx, the weekday and the zone are not looked at (the time is always UTC), a
month is known by its first letters, and a day must exist in its month.
"""

from __future__ import annotations

import time

_MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


class _NotADate(Exception):
    pass


def parse_http_time(value: bytes) -> int | None:
    """Seconds since the epoch that `value` names, or None if nginx would not read it as a date. The second before
    the epoch (-1) is none either: nginx's -1 is NGX_ERROR, and lua-resty-core's ngx.parse_http_time gives nil."""
    try:
        seconds = _parse(value)
    except (_NotADate, IndexError):  # (IndexError: the text ended where nginx reads on)
        return None
    return None if seconds == -1 else seconds


def _number(value: bytes, at: int, width: int) -> int:
    digits = value[at:at + width]
    if len(digits) != width or not digits.isdigit():
        raise _NotADate
    return int(digits)


def _month(value: bytes, at: int) -> int:
    """The month (0 = January) from the letters nginx looks at: Ja(n) Ju(n) Ju(l), Ma(r) Ma(y), Ap(r) Au(g), ..."""
    first = value[at]
    if first == 0x4A:  # J
        return 0 if value[at + 1] == 0x61 else 5 if value[at + 2] == 0x6E else 6
    if first == 0x4D:  # M
        return 2 if value[at + 2] == 0x72 else 4
    if first == 0x41:  # A
        return 3 if value[at + 1] == 0x70 else 7
    month = {0x46: 1, 0x53: 8, 0x4F: 9, 0x4E: 10, 0x44: 11}.get(first)  # F S O N D
    if month is None:
        raise _NotADate
    return month


def _parse(value: bytes) -> int:
    end = len(value)
    # The weekday runs to the first comma (RFC 1123, RFC 850) or space (asctime).
    at = next((i for i, c in enumerate(value) if c in b", "), end)
    asctime = at < end and value[at] == 0x20
    at += 1
    while at < end and value[at] == 0x20:
        at += 1
    if end - at < 18:
        raise _NotADate
    rfc850 = False
    if not asctime:
        day = _number(value, at, 2)
        at += 2
        if value[at] == 0x20:
            if end - at < 18:
                raise _NotADate
        elif value[at] == 0x2D:  # -
            rfc850 = True
        else:
            raise _NotADate
        at += 1
    month = _month(value, at)
    at += 3
    if not asctime:
        if value[at] != (0x2D if rfc850 else 0x20):
            raise _NotADate
        at += 1
        if rfc850:
            year = _number(value, at, 2)
            year += 2000 if year < 70 else 1900
            at += 2
        else:
            year = _number(value, at, 4)
            at += 4
    else:
        at += 1
        if value[at] == 0x20:
            at += 1
        day = _number(value, at, 1)
        at += 1
        if value[at] != 0x20:
            day = day * 10 + _number(value, at, 1)
            at += 1
        if end - at < 14:
            raise _NotADate
    if value[at] != 0x20:
        raise _NotADate
    hour = _number(value, at + 1, 2)
    if value[at + 3] != 0x3A:  # :
        raise _NotADate
    minute = _number(value, at + 4, 2)
    if value[at + 6] != 0x3A:
        raise _NotADate
    second = _number(value, at + 7, 2)
    if asctime:
        if value[at + 9] != 0x20:
            raise _NotADate
        year = _number(value, at + 10, 4)
    if hour > 23 or minute > 59 or second > 59:
        raise _NotADate
    if day == 29 and month == 1:
        if year % 4 or (year % 100 == 0 and year % 400):
            raise _NotADate
    elif day > _MONTH_DAYS[month]:
        raise _NotADate
    # Gauss's formula, with the year starting on March 1 (nginx's own arithmetic)
    month -= 1
    if month <= 0:
        month += 12
        year -= 1
    days = 365 * year + year // 4 - year // 100 + year // 400 + 367 * month // 12 - 30 + day - 1 - 719527 + 31 + 28
    return days * 86400 + hour * 3600 + minute * 60 + second


_WEEKDAYS = (b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun")
_MONTHS = (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec")


def http_date(seconds: int) -> bytes:
    """An instant (seconds since the epoch) in IMF-fixdate (RFC 9110 5.6.7), as nginx's ngx_http_time writes it:
    `Sun, 06 Nov 1994 08:49:37 GMT`, in English whatever the locale."""
    t = time.gmtime(seconds)
    return b"%b, %02d %b %d %02d:%02d:%02d GMT" % (_WEEKDAYS[t.tm_wday], t.tm_mday, _MONTHS[t.tm_mon - 1], t.tm_year,
                                                   t.tm_hour, t.tm_min, t.tm_sec)


class HttpNow:
    """The current second as a response's `Date` header line (`Date: <IMF-fixdate>` and CRLF), for every response
    without a Date of its own. `refresh` formats it again when the second changed: the worker's timer sweeper calls
    it each time it wakes (gateway.http.timers, at least twice a second), so a response reads one attribute."""

    __slots__ = ("second", "line")

    def __init__(self) -> None:
        self.second = -1
        self.line = b""
        self.refresh()

    def refresh(self, now: float | None = None) -> None:
        """Format the line again if the second (`now`, else the wall clock's) is not the one it shows."""
        second = int(time.time() if now is None else now)
        if second != self.second:
            self.second = second
            self.line = b"Date: " + http_date(second) + b"\r\n"


NOW = HttpNow()  # one per process: each worker's sweeper keeps it current
