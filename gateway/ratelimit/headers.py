"""Kong's rate-limiting response headers as formatted header lines (Exchange.add_response_lines), with everything
constant built once per LimitSpec at config load."""

from __future__ import annotations

from collections.abc import Sequence
from math import ceil

from gateway.ratelimit.lease import Decision, Lease
from gateway.ratelimit.spec import LimitSpec
from gateway.ratelimit.windows import PERIODS, window_bounds

Headers = list[tuple[bytes, bytes]]

_LIMIT = {period: f"X-RateLimit-Limit-{period.capitalize()}".encode() for period in PERIODS}
_REMAINING = {period: f"X-RateLimit-Remaining-{period.capitalize()}".encode() for period in PERIODS}


class RateLimitHeaders:
    """What a response of one LimitSpec reports, as Kong sends it.

    X-RateLimit-Limit-<Period> and X-RateLimit-Remaining-<Period> for every window; RateLimit-Limit, -Remaining and
    -Reset (seconds to the window's end, at least 1) for the tightest window: fewest remaining, the longer one on a
    tie (windows are in PERIODS order); Retry-After when denied. Bucket-only limits send only Retry-After, as nginx
    sends none. hide_client_headers is the caller's business.
    """

    def __init__(self, spec: LimitSpec) -> None:
        self.spec = spec
        self._limits = [(_LIMIT[w.period], b"%d" % w.limit) for w in spec.windows]
        self._standard = [(b"RateLimit-Limit", limit) for _, limit in self._limits]
        self._remaining = [_REMAINING[w.period] for w in spec.windows]
        self._single = None  # one window: every header line in one format, remaining twice and the reset
        if len(spec.windows) == 1:
            (limit_name, limit), = self._limits
            self._single = b"%b: %b\r\n%b: %%d\r\nRateLimit-Limit: %b\r\nRateLimit-Remaining: %%d\r\n" \
                b"RateLimit-Reset: %%d\r\n" % (limit_name, limit, self._remaining[0], limit)

    def admitted(self, lease: Lease, wall: float) -> bytes:
        """Header lines of a request just admitted on a token of `lease` (LeaseTable.spend): the hot path."""
        tokens = lease.tokens
        remaining = lease.grant.remaining  # type: ignore[union-attr]  # a lease with tokens has had a grant
        if self._single is not None:
            left = max(0, remaining[0] + tokens)
            return self._single % (left, left, max(1, ceil(lease.next_roll - wall)))
        if not remaining:
            return b""  # a bucket-only limit
        lefts = [max(0, r + tokens) for r in remaining]
        tightest = self._tightest(lefts)
        return _lines(self._build(lefts, tightest, lease.ends[tightest] - wall))

    def decided(self, decision: Decision) -> bytes:
        """Header lines of any other decision: denied, admitted on the local share, or after a wait."""
        lefts = [decision.remaining(index) for index in range(len(self._limits))]
        headers: Headers = []
        if lefts:
            tightest = self._tightest(lefts)
            window = self.spec.windows[tightest]
            headers = self._build(lefts, tightest, window_bounds(window.period, decision.wall)[1] - decision.wall)
        if not decision.admitted:
            headers.append((b"Retry-After", b"%d" % decision.retry_after))
        return _lines(headers)

    @staticmethod
    def _tightest(lefts: Sequence[int]) -> int:
        """The window with the fewest requests left; the longer window on a tie."""
        tightest = 0
        for index, left in enumerate(lefts):
            if left <= lefts[tightest]:
                tightest = index
        return tightest

    def _build(self, lefts: Sequence[int], tightest: int, reset: float) -> Headers:
        headers: Headers = []
        for limit, name, left in zip(self._limits, self._remaining, lefts, strict=True):
            headers.append(limit)
            headers.append((name, b"%d" % left))
        headers += [self._standard[tightest], (b"RateLimit-Remaining", b"%d" % lefts[tightest]),
                    (b"RateLimit-Reset", b"%d" % max(1, ceil(reset)))]
        return headers


def retry_after(decision: Decision) -> bytes:
    """The one header line a denial sends with hide_client_headers."""
    return b"Retry-After: %d\r\n" % decision.retry_after


def _lines(headers: Headers) -> bytes:
    return b"".join([b"%b: %b\r\n" % (name, value) for name, value in headers])
