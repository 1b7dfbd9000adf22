"""Kong's rate-limiting response headers for a Decision, built when the response is written (off the take path)."""

from __future__ import annotations

from math import ceil

from gateway.ratelimit.lease import Decision
from gateway.ratelimit.windows import PERIODS, window_bounds

_LIMIT = {period: f"X-RateLimit-Limit-{period.capitalize()}".encode() for period in PERIODS}
_REMAINING = {period: f"X-RateLimit-Remaining-{period.capitalize()}".encode() for period in PERIODS}


def rate_limit_headers(decision: Decision) -> list[tuple[bytes, bytes]]:
    """Headers for an admitted or denied request, as Kong sends them.

    X-RateLimit-Limit-<Period> and X-RateLimit-Remaining-<Period> for every window; RateLimit-Limit, -Remaining and
    -Reset (seconds to the window's end, at least 1) for the tightest window: fewest remaining, the longer one on a
    tie (windows are in PERIODS order); Retry-After when denied. Bucket-only limits send only Retry-After, as nginx
    sends none. hide_client_headers is the caller's business.
    """
    spec = decision.spec
    if decision.admitted and len(spec.windows) == 1:  # the common case, in a few operations
        limit_name, limit, remaining_name = _single(spec)
        remaining = decision.remaining(0)
        reset = max(1, ceil(window_bounds(spec.windows[0].period, decision.wall)[1] - decision.wall))
        rem = b"%d" % remaining
        return [(limit_name, limit), (remaining_name, rem), (b"RateLimit-Limit", limit), (b"RateLimit-Remaining", rem),
                (b"RateLimit-Reset", b"%d" % reset)]
    names = _names.get(spec)
    if names is None:
        names = _names[spec] = [(_LIMIT[w.period], b"%d" % w.limit, _REMAINING[w.period]) for w in spec.windows]
    headers: list[tuple[bytes, bytes]] = []
    tightest, least = -1, 0
    for index, (limit_name, limit, remaining_name) in enumerate(names):
        remaining = decision.remaining(index)
        headers.append((limit_name, limit))
        headers.append((remaining_name, b"%d" % remaining))
        if tightest < 0 or remaining <= least:
            tightest, least = index, remaining
    if tightest >= 0:
        window = spec.windows[tightest]
        reset = max(1, ceil(window_bounds(window.period, decision.wall)[1] - decision.wall))
        headers += [(b"RateLimit-Limit", names[tightest][1]), (b"RateLimit-Remaining", b"%d" % least),
                    (b"RateLimit-Reset", b"%d" % reset)]
    if not decision.admitted:
        headers.append((b"Retry-After", b"%d" % decision.retry_after))
    return headers


_names: dict[object, list[tuple[bytes, bytes, bytes]]] = {}  # per LimitSpec: its windows' header names and limits


def _single(spec: object) -> tuple[bytes, bytes, bytes]:
    names = _names.get(spec)
    if names is None:
        names = _names[spec] = [(_LIMIT[w.period], b"%d" % w.limit, _REMAINING[w.period])
                                for w in spec.windows]  # type: ignore[attr-defined]
    return names[0]
