"""Kong's rate-limiting headers, from a Decision or from the lease a token was just spent from."""

from gateway.ratelimit import Grant, LeaseTable, LimitSpec, RateLimitHeaders, Window

T0 = 1_700_000_040.0  # a whole minute (UTC)
SPEC = LimitSpec(windows=(Window("second", 10), Window("minute", 100)))


def granted_table(spec, granted, remaining, resets, retry):
    table = LeaseTable("w1", 1)
    table.take("k", spec, 0.0, T0)
    table.refills(0.0)
    table.apply(Grant("k", granted, remaining, resets, T0, min(resets, default=T0 + 1), retry), 0.0, T0)
    return table


def decide(spec=SPEC, granted=3, remaining=(7, 50), resets=(T0 + 1, T0 + 60), retry=0.0, wall=T0 + 0.2):
    return granted_table(spec, granted, remaining, resets, retry).take("k", spec, wall - T0, wall)


def pairs(lines):
    """Header lines back to (name, value) pairs, checking they are well-formed lines."""
    assert lines == b"" or lines.endswith(b"\r\n")
    return [tuple(line.split(b": ", 1)) for line in lines.split(b"\r\n")[:-1]]


def rate_limit_headers(decision):
    return pairs(RateLimitHeaders(decision.spec).decided(decision))


def spent(spec=SPEC, granted=3, remaining=(7, 50), resets=(T0 + 1, T0 + 60), wall=T0 + 0.2):
    """Headers of the fast path: a token spent from the lease, no Decision."""
    lease = granted_table(spec, granted, remaining, resets, 0.0).spend("k", spec, wall - T0, wall)
    assert lease is not None
    return pairs(RateLimitHeaders(spec).admitted(lease, wall))


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


def test_a_token_spent_from_the_lease_reports_what_a_decision_would():
    assert spent() == rate_limit_headers(decide())


def test_a_single_window_spent_from_the_lease_reports_its_window_and_reset():
    spec = LimitSpec(windows=(Window("minute", 100),))
    assert spent(spec, granted=5, remaining=(40,), resets=(T0 + 60,), wall=T0 + 12.5) == [
        (b"X-RateLimit-Limit-Minute", b"100"), (b"X-RateLimit-Remaining-Minute", b"44"),
        (b"RateLimit-Limit", b"100"), (b"RateLimit-Remaining", b"44"), (b"RateLimit-Reset", b"48")]


def test_on_a_tie_the_lease_path_reports_the_longer_window_too():
    headers = dict(spent(remaining=(5, 5)))
    assert (headers[b"RateLimit-Limit"], headers[b"RateLimit-Reset"]) == (b"100", b"60")


def test_a_bucket_only_limit_spent_from_the_lease_sends_nothing():
    spec = LimitSpec(algorithm="token-bucket", rate=1, burst=1)
    lease = granted_table(spec, 2, (), (), 0.0).spend("k", spec, 0.2, T0 + 0.2)
    assert lease is not None and RateLimitHeaders(spec).admitted(lease, T0 + 0.2) == b""
