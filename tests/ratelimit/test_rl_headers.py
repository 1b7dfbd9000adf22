"""Kong's rate-limiting headers built from a Decision."""

from gateway.ratelimit import Grant, LeaseTable, LimitSpec, Window, rate_limit_headers

T0 = 1_700_000_040.0  # a whole minute (UTC)
SPEC = LimitSpec(windows=(Window("second", 10), Window("minute", 100)))


def decide(spec=SPEC, granted=3, remaining=(7, 50), resets=(T0 + 1, T0 + 60), retry=0.0, wall=T0 + 0.2):
    table = LeaseTable("w1", 1)
    table.take("k", spec, 0.0, T0)
    table.refills(0.0)
    table.apply(Grant("k", granted, remaining, resets, T0, min(resets, default=T0 + 1), retry), 0.0, T0)
    return table.take("k", spec, wall - T0, wall)


def test_admitted_request_gets_kongs_per_window_headers_and_the_tightest_window():
    assert rate_limit_headers(decide()) == [
        (b"X-RateLimit-Limit-Second", b"10"), (b"X-RateLimit-Remaining-Second", b"9"),
        (b"X-RateLimit-Limit-Minute", b"100"), (b"X-RateLimit-Remaining-Minute", b"52"),
        (b"RateLimit-Limit", b"10"), (b"RateLimit-Remaining", b"9"), (b"RateLimit-Reset", b"1")]


def test_on_a_tie_the_longer_window_is_reported():
    headers = dict(rate_limit_headers(decide(remaining=(5, 5))))
    assert (headers[b"RateLimit-Limit"], headers[b"RateLimit-Reset"]) == (b"100", b"60")


def test_denied_request_gets_retry_after():
    headers = dict(rate_limit_headers(decide(granted=0, remaining=(0, 50), retry=0.8)))
    assert headers[b"X-RateLimit-Remaining-Second"] == b"0" and headers[b"RateLimit-Remaining"] == b"0"
    assert headers[b"Retry-After"] == b"1"


def test_a_bucket_only_limit_sends_retry_after_only_when_denied():
    spec = LimitSpec(algorithm="token-bucket", rate=1, burst=1)
    assert rate_limit_headers(decide(spec=spec, granted=1, remaining=(), resets=())) == []
    denied = decide(spec=spec, granted=0, remaining=(), resets=(), retry=2.5)
    assert rate_limit_headers(denied) == [(b"Retry-After", b"3")]
