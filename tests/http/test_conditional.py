"""nginx's conditional checks on the gateway's own 200s (gateway.http.conditional, ngx_http_not_modified_filter):
the verdicts sans-I/O; the heads of the 412 and the 304 through in-process gateways (the `gateway` fixture, one per
codec), backends in the test's nursery, all on loopback."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from backends import EchoBackend, request, service

from gateway.http.conditional import etag_matches, precondition

LAST = b"Wed, 01 Jul 2026 10:00:00 GMT"
ANSWER = [(b"content-type", b"text/plain"), (b"etag", b'"v1"'), (b"last-modified", LAST)]


def test_a_request_without_conditions_leaves_the_answer_alone():
    assert precondition([(b"host", b"x")], ANSWER) == 0


@pytest.mark.parametrize(("header", "verdict"), [
    ((b"if-none-match", b'"v1"'), 304),
    ((b"if-none-match", b'W/"v1"'), 304),  # weak comparison
    ((b"if-none-match", b'"v0", "v1"'), 304),
    ((b"if-none-match", b'"v2"'), 0),
    ((b"if-none-match", b"*"), 304),
    ((b"if-modified-since", LAST), 304),  # exact: the same date
    ((b"if-modified-since", b"Thu, 02 Jul 2026 10:00:00 GMT"), 0),  # nginx's default `if_modified_since exact`
    ((b"if-modified-since", b"not a date"), 0),
    ((b"if-match", b'"v1"'), 0),
    ((b"if-match", b'W/"v1"'), 412),  # strong comparison
    ((b"if-match", b'"v2"'), 412),
    ((b"if-unmodified-since", LAST), 0),
    ((b"if-unmodified-since", b"Tue, 30 Jun 2026 10:00:00 GMT"), 412),  # changed since
    ((b"if-unmodified-since", b"not a date"), 412),
])
def test_each_condition_against_an_answer_with_an_etag_and_a_date(header, verdict):
    assert precondition([(b"host", b"x"), header], ANSWER) == verdict


def test_a_failed_precondition_wins_over_not_modified():
    assert precondition([(b"if-match", b'"v2"'), (b"if-none-match", b'"v1"')], ANSWER) == 412


def test_both_if_modified_since_and_if_none_match_must_hold_for_a_304():
    assert precondition([(b"if-modified-since", LAST), (b"if-none-match", b'"v2"')], ANSWER) == 0
    assert precondition([(b"if-modified-since", LAST), (b"if-none-match", b'"v1"')], ANSWER) == 304


def test_an_answer_without_validators_fails_if_match_and_passes_if_modified_since():
    assert precondition([(b"if-match", b'"v1"')], [(b"content-length", b"2")]) == 412
    assert precondition([(b"if-match", b"*")], [(b"content-length", b"2")]) == 0
    assert precondition([(b"if-modified-since", LAST)], [(b"content-length", b"2")]) == 0


def test_an_etag_must_end_where_the_listed_tag_ends():
    assert not etag_matches(b'"v10"', b'"v1', weak=False)
    assert etag_matches(b'"v1"  , "v2"', b'"v1"', weak=False)


def test_an_etag_holding_a_comma_matches_itself():
    """ngx_http_not_modified_filter_module.c:177-248 (release-1.27.1) ngx_http_test_if_match compares the ETag byte by
    byte from each tag's start (`ngx_strncmp(start, etag.data, etag.len)`) without splitting the list first, so an
    ETag with a comma inside its quotes (etagc allows it, RFC 9110 8.8.3) matches the same tag, alone or after
    others: a 304 for If-None-Match, and If-Match passes."""
    answer = [(b"content-type", b"text/plain"), (b"etag", b'"v1,2"')]
    assert precondition([(b"if-none-match", b'"v1,2"')], answer) == 304
    assert precondition([(b"if-none-match", b'"v0", "v1,2"')], answer) == 304
    assert precondition([(b"if-match", b'"v1,2"')], answer) == 0


def test_a_last_modified_of_the_second_before_the_epoch_is_no_last_modified():
    """nginx's ngx_parse_http_time gives -1 for `Wed, 31 Dec 1969 23:59:59 GMT`, the value of NGX_ERROR, which
    lua-nginx-module's ngx_http_set_last_modified_header stores as last_modified_time; the filter then takes the
    answer as having none (ngx_http_test_if_modified: `last_modified_time == (time_t) -1` returns 1, modified;
    ngx_http_test_if_unmodified returns 0, a 412)."""
    date = b"Wed, 31 Dec 1969 23:59:59 GMT"
    answer = [(b"last-modified", date)]
    assert precondition([(b"if-modified-since", date)], answer) == 0
    assert precondition([(b"if-unmodified-since", date)], answer) == 412


def test_an_unreadable_if_unmodified_since_passes_a_last_modified_earlier_than_its_error_value():
    """ngx_http_test_if_unmodified (ngx_http_not_modified_filter_module.c:110-131): `iums >= last_modified_time`
    with iums nginx's -1 (NGX_ERROR) for an unreadable date, so an answer last modified before
    1969-12-31 23:59:59 (a negative time) passes; one after it fails (412)."""
    unreadable = [(b"if-unmodified-since", b"not a date")]
    assert precondition(unreadable, [(b"last-modified", b"Wed, 31 Dec 1969 23:59:58 GMT")]) == 0
    assert precondition(unreadable, ANSWER) == 412


# --- the head of the 412 and of the 304 -----------------------------------------------------------------------------
# nginx's not_modified filter answers a failed precondition with ngx_http_filter_finalize_request(r, NULL, 412)
# (src/http/modules/ngx_http_not_modified_filter_module.c:66-76 at release-1.27.1), which first calls
# ngx_http_clean_header (src/http/ngx_http_special_response.c:534, 567-583): headers_out is emptied before Kong's
# error_page 412 handler answers, so what plugins set in access is not on Kong's 412. A 304 is the 200's head
# without the fields the filter clears (ngx_http_not_modified_header_filter: ngx_http_clear_content_length and
# the rest), so it keeps them.

TIMEOUT = 10
FAILS = [("if-match", '"nope"'), ("accept", "application/json")]  # the answers have no ETag: If-Match fails
NOT_MODIFIED = [("if-none-match", "*")]  # "*" matches any answer


def _terminated_and_limited() -> dict[str, Any]:
    """A route request-termination answers 200, rate-limiting setting its headers in access (Kong's
    kong/pdk/private/rate_limiting.lua:93-104 apply_response_headers: ngx.header, from the plugin's access)."""
    return {"paths": ["/"], "plugins": [
        {"name": "request-termination", "config": {"status_code": 200, "message": "hello"}},
        {"name": "rate-limiting", "config": {"minute": 1000, "policy": "local"}}]}


async def test_a_412_has_none_of_the_headers_set_in_access(nursery, gateway):
    """The rate-limiting headers the 200 carries are not on the 412 (ngx_http_clean_header); the 412 is Kong's
    error page for it (error_page 412: "Precondition failed")."""
    port = await gateway({"services": [service("svc", "http://127.0.0.1:1", [_terminated_and_limited()])]})
    with trio.fail_after(TIMEOUT):
        plain = await request(port, "GET", "/x")
        failed = await request(port, "GET", "/x", headers=FAILS)
    assert plain.status == 200 and plain.header("ratelimit-remaining") is not None  # the control
    assert failed.status == 412 and failed.json()["message"] == "Precondition failed"
    assert [name for name, _ in failed.headers if "ratelimit" in name] == []


async def test_a_304_keeps_the_headers_set_in_access(nursery, gateway):
    """ngx_http_not_modified_header_filter turns the 200 into a 304 in place (headers_out kept but the length, type,
    Accept-Ranges and Content-Encoding): rate-limiting's headers stay."""
    port = await gateway({"services": [service("svc", "http://127.0.0.1:1", [_terminated_and_limited()])]})
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/x", headers=NOT_MODIFIED)
    assert reply.status == 304 and reply.body == b""
    assert reply.header("ratelimit-remaining") is not None and reply.header("x-ratelimit-limit-minute") == "1000"


async def test_a_412_in_place_of_a_proxy_cache_hit_has_none_of_its_cache_headers(nursery, gateway):
    """A proxy-cache hit is kong.response.exit(res.status, res.body, res.headers) after set_header of X-Cache-Key
    in access (kong/plugins/proxy-cache/handler.lua:262, 343-348): a 200 of Lua's, so it passes the conditional
    checks, and its 412 has neither X-Cache-Key nor X-Cache-Status (headers_out cleaned); its 304 keeps them."""
    backend = EchoBackend()
    await nursery.start(backend.serve)
    route = {"paths": ["/"], "plugins": [{"name": "proxy-cache", "config": {"strategy": "memory"}}]}
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}", [route])]})
    with trio.fail_after(TIMEOUT):
        first = await request(port, "GET", "/cached")
        failed = await request(port, "GET", "/cached", headers=FAILS)
        not_modified = await request(port, "GET", "/cached", headers=NOT_MODIFIED)
    assert first.header("x-cache-status") == "Miss" and len(backend.requests) == 1  # the others are hits
    assert failed.status == 412 and failed.json()["message"] == "Precondition failed"
    assert [name for name, _ in failed.headers if name.startswith("x-cache")] == []
    assert not_modified.status == 304 and not_modified.header("x-cache-status") == "Hit"
    assert not_modified.header("x-cache-key") == first.header("x-cache-key")
