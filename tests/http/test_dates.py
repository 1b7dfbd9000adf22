"""HTTP dates as nginx's ngx_parse_http_time reads them (gateway.http.dates): the three forms, what it does not look
at (the weekday, the zone), and what it refuses."""

from __future__ import annotations

import calendar

import pytest

from gateway.http.dates import parse_http_time

SUNDAY = calendar.timegm((1994, 11, 6, 8, 49, 37))  # RFC 9110's example date


@pytest.mark.parametrize("text", [
    b"Sun, 06 Nov 1994 08:49:37 GMT",  # RFC 1123
    b"Sunday, 06-Nov-94 08:49:37 GMT",  # RFC 850
    b"Sun Nov  6 08:49:37 1994",  # asctime
    b"Sun Nov 06 08:49:37 1994",
])
def test_the_three_forms_name_the_same_instant(text):
    assert parse_http_time(text) == SUNDAY


@pytest.mark.parametrize("text", [
    b"Xyz, 06 Nov 1994 08:49:37 GMT",  # any weekday
    b"Sun, 06 Nov 1994 08:49:37 PST",  # any zone: always UTC
    b"Sun, 06 Nov 1994 08:49:37",
    b",   06 Nov 1994 08:49:37 GMT",  # spaces after the comma are skipped
    b"Sun, 06 Nxx 1994 08:49:37 GMT",  # a month is known by its first letters
])
def test_what_nginx_does_not_look_at_does_not_matter(text):
    assert parse_http_time(text) == SUNDAY


@pytest.mark.parametrize(("month", "number"), [
    (b"Jan", 1), (b"Feb", 2), (b"Mar", 3), (b"Apr", 4), (b"May", 5), (b"Jun", 6), (b"Jul", 7), (b"Aug", 8),
    (b"Sep", 9), (b"Oct", 10), (b"Nov", 11), (b"Dec", 12),
])
def test_every_month(month, number):
    assert parse_http_time(b"Mon, 01 %s 2024 12:00:00 GMT" % month) == calendar.timegm((2024, number, 1, 12, 0, 0))


def test_two_digit_years_below_70_are_this_century():
    assert parse_http_time(b"Sunday, 06-Nov-69 08:49:37 GMT") == calendar.timegm((2069, 11, 6, 8, 49, 37))
    assert parse_http_time(b"Sunday, 06-Nov-70 08:49:37 GMT") == calendar.timegm((1970, 11, 6, 8, 49, 37))


def test_february_29_only_in_leap_years():
    assert parse_http_time(b"Thu, 29 Feb 2024 00:00:00 GMT") == calendar.timegm((2024, 2, 29, 0, 0, 0))
    assert parse_http_time(b"Tue, 29 Feb 2000 00:00:00 GMT") is not None
    assert parse_http_time(b"Wed, 29 Feb 2023 00:00:00 GMT") is None
    assert parse_http_time(b"Thu, 29 Feb 2100 00:00:00 GMT") is None


@pytest.mark.parametrize("text", [
    b"", b"wrong date", b"Sun, 06 Nov 1994", b"Sun, 6 Nov 1994 08:49:37 GMT", b"Sun, 06 Nov 94 08:49:37 GMT",
    b"Sun, 06 Xov 1994 08:49:37 GMT", b"Sun, 31 Nov 1994 08:49:37 GMT", b"Sun, 06 Nov 1994 24:00:00 GMT",
    b"Sun, 06 Nov 1994 08:60:00 GMT", b"Sun, 06 Nov 1994 08:49:60 GMT", b"Sun, 06 Nov 1994 08-49-37 GMT",
    b"Sun, 06/Nov/1994 08:49:37 GMT", b"1994-11-06T08:49:37Z", b"784111777", b"Sun Nov  6 08:49:37",
    b"Sunday, 06-Nov-1994 08:49:37 GMT", b"Sun, 06 Nov 1994 08:49:3x GMT", "Sun, 06 Nov １994 08:49:37".encode(),
])
def test_what_is_not_a_date(text):
    assert parse_http_time(text) is None


@pytest.mark.parametrize("text", [b"Wed, 31 Dec 1969 23:59:59 GMT", b"Wed Dec 31 23:59:59 1969"])
def test_the_second_before_the_epoch_is_not_a_date(text):
    """nginx's ngx_parse_http_time returns -1 for it, the value of NGX_ERROR its callers test for
    (src/core/ngx_parse_time.c; ngx_http_not_modified_filter_module.c `last_modified_time == (time_t) -1`), and
    lua-resty-core v0.1.31 lib/resty/core/time.lua ngx.parse_http_time returns nil for it (`if res == FFI_ERROR then
    return nil end`, FFI_ERROR being -1): no date to hmac-auth, proxy-cache's Expires or the conditional checks."""
    assert parse_http_time(text) is None
    assert parse_http_time(b"Wed, 31 Dec 1969 23:59:58 GMT") == -2  # the seconds around it are dates
