"""Kong's rate-limiting response headers as formatted header lines (Exchange.add_response_lines), with everything
constant built once per LimitSpec at config load; `header_pairs` makes them headers for the plugins' header filters
to see, when one can (gateway.policies.rate_limiting.handler)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from math import ceil

from gateway.ratelimit.lease import Decision, Lease
from gateway.ratelimit.spec import LimitSpec
from gateway.ratelimit.windows import PERIODS, kong_reset

Headers = list[tuple[bytes, bytes]]
# Kong's numbers are Lua's, written "%.14g"; "%d" writes a whole one below this the same, and faster
WHOLE_BELOW = 10**14

_LIMIT = {period: f"X-RateLimit-Limit-{period.capitalize()}".encode() for period in PERIODS}
_REMAINING = {period: f"X-RateLimit-Remaining-{period.capitalize()}".encode() for period in PERIODS}


class RateLimitHeaders:
    """What a response of one LimitSpec reports, as Kong sends it.

    X-RateLimit-Limit-<Period> and X-RateLimit-Remaining-<Period> for every window; RateLimit-Limit, -Remaining and
    -Reset (Kong's: seconds to the window's start plus Kong's length of it, 30 days for a month and 365 for a year,
    at least 1) for the tightest window: fewest remaining, the longer one on a tie (windows are in PERIODS order);
    Retry-After when denied. Numbers as Kong writes them: a limit of 2.5 is reported as 2.5, remaining 1.5, 0.5, 0.
    Bucket-only limits send only Retry-After, as nginx sends none. hide_client_headers is the caller's business.
    """

    def __init__(self, spec: LimitSpec, limits: Sequence[float] = ()) -> None:
        """`limits`: the configured limit of each window (the spec's are whole: 2.5 admits 3); by default the spec's."""
        self.spec = spec
        limits = tuple(limits) or tuple(w.limit for w in spec.windows)
        # Lua's number writer and (limit, the window's whole limit) pairs, for limits "%d" does not write as Lua does
        self._lua: Callable[[float], bytes] | None = None
        self._kong: list[tuple[float, int]] | None = None
        if any(limit != int(limit) or limit >= WHOLE_BELOW for limit in limits):
            from gateway.policies.cjson import lua_string  # not at the top: gateway.policies imports this module

            self._lua = lua_string
            self._kong = [(limit, w.limit) for w, limit in zip(spec.windows, limits, strict=True)]
        number = self._lua or _whole
        self._limits = [(_LIMIT[w.period], number(limit)) for w, limit in zip(spec.windows, limits, strict=True)]
        self._standard = [(b"RateLimit-Limit", limit) for _, limit in self._limits]
        self._remaining = [_REMAINING[w.period] for w in spec.windows]
        self._single = None  # one window of a whole limit: every header line in one format, remaining twice, reset
        if len(spec.windows) == 1 and self._lua is None:
            (limit_name, limit), = self._limits
            self._single = b"%b: %b\r\n%b: %%d\r\nRateLimit-Limit: %b\r\nRateLimit-Remaining: %%d\r\n" \
                b"RateLimit-Reset: %%d\r\n" % (limit_name, limit, self._remaining[0], limit)

    def admitted(self, lease: Lease, wall: float) -> bytes:
        """Header lines of a request just admitted on a token of `lease` (LeaseTable.spend): the hot path."""
        tokens = lease.tokens
        remaining = lease.grant.remaining  # type: ignore[union-attr]  # a lease with tokens has had a grant
        if self._single is not None:
            left = max(0, remaining[0] + tokens)
            return self._single % (left, left, max(1, ceil(lease.resets[0] - wall)))
        if not remaining:
            return b""  # a bucket-only limit
        lefts: Sequence[float] = [max(0, r + tokens) for r in remaining]
        kong = self._kong
        if kong is not None:
            lefts = _kong_remaining(kong, lefts)
        tightest = self._tightest(lefts)
        return _lines(self._build(lefts, tightest, max(1, ceil(lease.resets[tightest] - wall))))

    def decided(self, decision: Decision) -> bytes:
        """Header lines of any other decision: denied, admitted on the local share, or after a wait."""
        lefts: Sequence[float] = [decision.remaining(index) for index in range(len(self._limits))]
        kong = self._kong
        if kong is not None:
            lefts = _kong_remaining(kong, lefts)
        headers: Headers = []
        if lefts:
            tightest = self._tightest(lefts)
            headers = self._build(lefts, tightest, kong_reset(self.spec.windows[tightest].period, decision.wall))
        if not decision.admitted:
            headers.append((b"Retry-After", b"%d" % decision.retry_after))
        return _lines(headers)

    @staticmethod
    def _tightest(lefts: Sequence[float]) -> int:
        """The window with the fewest requests left; the longer window on a tie."""
        tightest = 0
        for index, left in enumerate(lefts):
            if left <= lefts[tightest]:
                tightest = index
        return tightest

    def _build(self, lefts: Sequence[float], tightest: int, reset: int) -> Headers:
        headers: Headers = []
        lua = self._lua
        if lua is None:
            for limit, name, left in zip(self._limits, self._remaining, lefts, strict=True):
                headers.append(limit)
                headers.append((name, b"%d" % left))
            headers += [self._standard[tightest], (b"RateLimit-Remaining", b"%d" % lefts[tightest]),
                        (b"RateLimit-Reset", b"%d" % reset)]
            return headers
        for limit, name, left in zip(self._limits, self._remaining, lefts, strict=True):
            headers.append(limit)
            headers.append((name, lua(left)))
        headers += [self._standard[tightest], (b"RateLimit-Remaining", lua(lefts[tightest])),
                    (b"RateLimit-Reset", b"%d" % reset)]
        return headers


def _kong_remaining(kong: Sequence[tuple[float, int]], lefts: Sequence[float]) -> list[float]:
    """Kong's remaining of each window, max(0, limit - usage - 1), from what is left of its whole limit (usage:
    whole - 1 - left, the requests before this one)."""
    return [max(0, limit - (whole - 1 - left) - 1) for (limit, whole), left in zip(kong, lefts, strict=True)]


def _whole(number: float) -> bytes:
    """A whole number below WHOLE_BELOW, as Lua writes it."""
    return b"%d" % number


def _lines(headers: Headers) -> bytes:
    return b"".join([b"%b: %b\r\n" % (name, value) for name, value in headers])


def header_pairs(lines: bytes) -> Headers:
    """Formatted header lines as (lower-case name, value) pairs: the headers' form the header filters see."""
    pairs: Headers = []
    for line in lines.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b": ")
            pairs.append((name.lower(), value))
    return pairs
