"""proxy-cache's decisions, sans-I/O: Cache-Control as Kong's parse_directive_header reads it, media types as
kong.tools.mime_type reads them, which requests and responses are cacheable, their TTL and an entry's freshness."""

from __future__ import annotations

import math
import time

import msgspec
import pytest

from gateway.policies.base import LuaError
from gateway.policies.proxy_cache.rules import (
    Rules,
    header_value,
    lua_number,
    media_type_matches,
    parse_directives,
    parse_mime_type,
    resource_ttl,
)
from gateway.policies.proxy_cache.schema import ProxyCacheConfig

NOW = 1_700_000_000


def rules(**config: object) -> Rules:
    return Rules(msgspec.convert({"strategy": "memory", **config}, ProxyCacheConfig))


def response(content_type: str | None = "application/json", *extra: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", content_type.encode())] if content_type is not None else []
    return headers + [(k.encode(), v.encode()) for k, v in extra]


# --- Cache-Control ---------------------------------------------------------------------------------------------------


def test_directives_are_numbers_strings_or_true():
    assert parse_directives(b'public, max-age=60, x="a b", no-cache') == {
        b"public": True, b"max-age": 60, b"x": b'"a b"', b"no-cache": True}


def test_directive_names_are_lower_cased_and_keep_trailing_blanks():
    assert parse_directives(b"Max-Age=5 ,NO-STORE ") == {b"max-age": 5, b"no-store ": True}


def test_a_directive_value_is_read_as_luas_tonumber_reads_it():
    assert parse_directives(b"max-age= 1.5 , s-maxage=0x10, min-fresh=1e1") == {
        b"max-age": 1.5, b"s-maxage": 16, b"min-fresh": 10.0}


def test_a_directive_without_a_value_after_its_equals_sign_is_true():
    assert parse_directives(b"max-age=") == {b"max-age": True}


def test_lua_number_refuses_what_tonumber_refuses():
    assert lua_number("60s") is None and lua_number('"60"') is None and lua_number("") is None
    assert lua_number(" -3 ") == -3


def test_every_number_is_a_double_as_lua_reads_it():
    """LuaJIT's tonumber gives a double: 20 digits are 1e20 (a Python int that large could not be stored)."""
    for text, value in (("60", 60.0), ("99999999999999999999", 1e20), ("0x10", 16.0), ("9007199254740993", 2.0**53)):
        assert lua_number(text) == value and type(lua_number(text)) is float, text


def test_a_number_past_the_double_range_is_infinite_as_luajit_reads_it():
    """lj_strscan: a binary exponent past the range scales to inf, more than 310 integer digits are inf."""
    assert lua_number("0x1p99999") == math.inf and lua_number("-0x1p99999") == -math.inf
    assert lua_number("0x" + "f" * 300) == math.inf and lua_number("0x1p-99999") == 0.0
    assert lua_number("9" * 5000) == math.inf and lua_number("-" + "9" * 5000) == -math.inf
    assert lua_number("1e99999999999999999999") == math.inf and lua_number("1e-99999999999999999999") == 0.0


def test_an_exponent_is_read_only_up_to_luajits_65536():
    """lj_strscan stops taking exponent digits once the value is 65536 or more: e700000 is e70000."""
    assert lua_number("0." + "0" * 70000 + "1e700000") == 0.1


def test_binary_numbers_are_read_as_luajit_reads_them():
    assert lua_number("0b101") == 5.0 and lua_number("-0B1.00") == -1.0 and lua_number("0b.0") == 0.0
    assert lua_number("0b" + "0" * 70 + "1" * 64) == float(2**64 - 1)
    for text in ("0b", "0b.", "0b.1", "0b1.01", "0b12", "0b1e1", "0b" + "1" * 65):
        assert lua_number(text) is None, text


def test_a_long_string_that_is_no_number_is_refused_in_linear_time():
    """A backtracking pattern would take many seconds for each of these (a header a client chooses)."""
    started = time.process_time()  # CPU time: a busy host's other work does not count
    for text in ("1" * 30000 + "x", "0x" + "f" * 30000 + "g", "1." + "1" * 30000 + "x", "1e" + "1" * 30000 + "x"):
        assert lua_number(text) is None
    assert time.process_time() - started < 1


def test_no_header_means_no_directives():
    assert parse_directives(None) == {} and parse_directives(b"") == {}


def test_header_values_are_joined_as_nginx_variables_join_them():
    headers = [(b"cache-control", b"max-age=5"), (b"x", b"y"), (b"cache_control", b"no-store")]
    assert header_value(headers, b"cache-control") == b"max-age=5, no-store"
    assert header_value(headers, b"expires") is None


# --- media types -----------------------------------------------------------------------------------------------------


def test_media_types_are_lower_cased_but_parameter_values_are_not():
    assert parse_mime_type('Application/JSON; Charset=UTF-8;q="1 2"') == (
        "application", "json", {"charset": "UTF-8", "q": "1 2"})


def test_a_lone_star_is_any_type():
    assert parse_mime_type("*") == ("*", "*", {})
    assert parse_mime_type("*/*") == ("*", "*", {})


def test_trailing_semicolons_and_blanks_are_not_media_types():
    assert parse_mime_type("application/xml;") is None
    assert parse_mime_type("text/plain ") is None
    assert parse_mime_type("text/plain; charset = utf-8") is None


def test_wildcards_match_types_and_subtypes():
    expected = [parse_mime_type("application/*"), parse_mime_type("*/text")]
    assert media_type_matches("application/xml", expected)  # type: ignore[arg-type]
    assert media_type_matches("foo/text", expected)  # type: ignore[arg-type]
    assert not media_type_matches("text/plain", expected)  # type: ignore[arg-type]


def test_parameters_must_all_match_no_more_no_fewer():
    expected = [parse_mime_type("application/xml; charset=UTF-8")]
    assert media_type_matches("application/xml;charset=UTF-8", expected)  # type: ignore[arg-type]
    assert not media_type_matches("application/xml", expected)  # type: ignore[arg-type]
    assert not media_type_matches("application/xml; charset=utf-8", expected)  # type: ignore[arg-type]
    assert not media_type_matches("application/xml; charset=UTF-8; q=1", expected)  # type: ignore[arg-type]


def test_a_content_type_with_parameters_does_not_match_a_plain_entry():
    assert not rules(content_type=["application/json"]).cacheable_response(
        200, response("application/json; charset=utf-8"), NOW)


def test_star_slash_star_matches_even_a_content_type_kong_cannot_parse():
    assert rules(content_type=["*/*"]).cacheable_response(200, response("application/xml;"), NOW)


# --- requests --------------------------------------------------------------------------------------------------------


def test_only_the_configured_methods_are_cacheable():
    r = rules()
    assert r.cacheable_request(b"GET", {}) and r.cacheable_request(b"HEAD", {})
    assert not r.cacheable_request(b"POST", {})
    assert rules(request_method=["POST"]).cacheable_request(b"POST", {})


def test_no_store_and_no_cache_requests_bypass_only_with_cache_control():
    for directive in (b"no-store", b"no-cache"):
        cc = parse_directives(directive)
        assert not rules(cache_control=True).cacheable_request(b"GET", cc)
        assert rules().cacheable_request(b"GET", cc)


# --- responses -------------------------------------------------------------------------------------------------------


def test_only_the_configured_statuses_are_cacheable():
    assert rules().cacheable_response(404, response(), NOW)
    assert not rules().cacheable_response(418, response(), NOW)


def test_a_response_without_content_type_is_not_cacheable():
    assert not rules().cacheable_response(200, response(None), NOW)
    assert not rules().cacheable_response(200, response(""), NOW)


def test_the_last_content_type_is_the_one_looked_at():
    headers = [(b"content-type", b"application/json"), (b"content-type", b"application/xml")]
    assert not rules().cacheable_response(200, headers, NOW)


def test_private_no_store_and_no_cache_responses_are_not_cached_with_cache_control():
    for directive in ("private", "no-store", "no-cache"):
        headers = response("application/json", ("cache-control", f"max-age=60, {directive}"))
        assert not rules(cache_control=True).cacheable_response(200, headers, NOW)
        assert rules().cacheable_response(200, headers, NOW)


def test_the_responses_cache_control_is_only_its_lines_named_cache_control():
    """handler.lua:78 reads ngx.var.sent_http_cache_control, which nginx 1.27.1 gives from headers_out.cache_control
    (src/http/ngx_http_variables.c:334-335): the upstream module puts only `Cache-Control` lines there
    (ngx_http_upstream.c:255-258); an upstream's `cache_control:` line is an unknown header, not matched with "_" as
    "-" as $sent_http_expires or the request's $http_cache_control would match it."""
    headers = response("application/json", ("cache-control", "max-age=60"), ("cache_control", "private"))
    assert rules(cache_control=True).cacheable_response(200, headers, NOW)
    assert rules(cache_control=True).response_ttl(headers, NOW) == 60
    only_underscored = response("application/json", ("cache_control", "max-age=60"))
    assert not rules(cache_control=True).cacheable_response(200, only_underscored, NOW)


def test_a_response_without_a_ttl_is_not_cached_with_cache_control():
    assert not rules(cache_control=True).cacheable_response(200, response(), NOW)
    assert not rules(cache_control=True).cacheable_response(
        200, response("application/json", ("cache-control", "max-age=0")), NOW)


def test_s_maxage_comes_before_max_age():
    assert resource_ttl(parse_directives(b"max-age=10, s-maxage=20"), None, NOW) == 20
    assert resource_ttl(parse_directives(b"s-maxage=0, max-age=20"), None, NOW) == 0


def test_expires_gives_the_ttl_when_cache_control_has_none():
    assert resource_ttl({}, b"Tue, 14 Nov 2023 22:14:20 GMT", NOW) == 60  # NOW is 22:13:20
    assert resource_ttl({}, b"Tue, 14 Nov 2023 22:00:00 GMT", NOW) == 0
    assert resource_ttl({}, b"not a date", NOW) == 0


def test_a_ttl_of_twenty_digits_is_the_double_kong_computes():
    ttl = resource_ttl(parse_directives(b"max-age=99999999999999999999"), None, NOW)
    assert ttl == 1e20 and type(ttl) is float
    assert rules(cache_ttl=10**20).response_ttl(response(), NOW) == 1e20


def test_a_non_numeric_max_age_fails_as_kongs_math_max():
    """kong/tools/http.lua:629: math.max of a string tonumber refused is a Lua error."""
    with pytest.raises(LuaError, match="got string"):
        resource_ttl(parse_directives(b'max-age="60"'), None, NOW)


def test_a_numeric_s_maxage_spares_a_bare_max_age():
    """`res_cc["s-maxage"] or res_cc["max-age"]`: max-age is not looked at when s-maxage is there."""
    assert resource_ttl(parse_directives(b"max-age, s-maxage=20"), None, NOW) == 20


def test_the_ttl_of_a_response_is_cache_ttl_without_cache_control():
    assert rules(cache_ttl=7).response_ttl(response("application/json", ("cache-control", "max-age=60")), NOW) == 7
    assert rules(cache_control=True).response_ttl(
        response("application/json", ("cache-control", "max-age=60")), NOW) == 60


# --- freshness -------------------------------------------------------------------------------------------------------


def test_without_cache_control_an_entry_older_than_cache_ttl_is_refreshed():
    r = rules(cache_ttl=2)
    assert r.freshness(NOW - 2, 2, NOW, {}) == "Hit"
    assert r.freshness(NOW - 3, 2, NOW, {}) == "Refresh"


def test_with_cache_control_a_stale_entry_is_served_unless_the_request_says_otherwise():
    r = rules(cache_control=True)
    assert r.freshness(NOW - 100, 10, NOW, {}) == "Hit"  # kept by storage_ttl: Kong serves it


def test_request_max_age_refreshes_older_entries():
    r = rules(cache_control=True)
    assert r.freshness(NOW - 3, 10, NOW, parse_directives(b"max-age=2")) == "Refresh"
    assert r.freshness(NOW - 2, 10, NOW, parse_directives(b"max-age=2")) == "Hit"


def test_request_max_stale_refreshes_entries_stale_for_longer():
    r = rules(cache_control=True)
    assert r.freshness(NOW - 14, 2, NOW, parse_directives(b"max-stale=11")) == "Refresh"
    assert r.freshness(NOW - 13, 2, NOW, parse_directives(b"max-stale=11")) == "Hit"


def test_request_min_fresh_refreshes_entries_fresh_for_less():
    r = rules(cache_control=True)
    assert r.freshness(NOW, 2, NOW, parse_directives(b"min-fresh=30")) == "Refresh"
    assert r.freshness(NOW, 40, NOW, parse_directives(b"min-fresh=30")) == "Hit"


@pytest.mark.parametrize("directive", [b"max-age=abc", b"max-stale", b'min-fresh="1"'])
def test_a_compared_request_directive_that_is_no_number_fails_as_luas_comparison(directive):
    """handler.lua:300-311 compare max-age, max-stale and min-fresh with numbers: a string or true is a Lua error."""
    with pytest.raises(LuaError, match="attempt to compare number with"):
        rules(cache_control=True).freshness(NOW, 10, NOW, parse_directives(directive))


def test_a_request_max_age_that_refreshes_spares_a_later_bad_directive():
    """handler.lua:300-301 returns Refresh before max-stale is compared."""
    assert rules(cache_control=True).freshness(NOW - 5, 10, NOW, parse_directives(b"max-age=1, max-stale")) == \
        "Refresh"


def test_request_directives_are_ignored_without_cache_control():
    assert rules().freshness(NOW - 3, 300, NOW, parse_directives(b"max-age=0, min-fresh=999")) == "Hit"


def test_ttl_arithmetic_rounds_as_luas_doubles():
    """Kong: res.ttl - (time() - res.timestamp) < cc["min-fresh"], in doubles: 2**60 - 1 is 2**60 and min-fresh
    2**60 + 1 is read as 2**60, so no Refresh."""
    assert rules(cache_control=True).freshness(NOW - 1, 2.0**60, NOW, parse_directives(
        b"min-fresh=1152921504606846977")) == "Hit"
    assert rules(cache_ttl=10**20).freshness(NOW - 10**6, 300, NOW, {}) == "Hit"
