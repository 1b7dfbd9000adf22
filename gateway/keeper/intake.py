"""What the keeper takes from the bus: a decoded message is checked whole before any of it is applied, so one
carrying values the keeper's state cannot hold (a period it does not know, counts that do not match their windows,
a clock of NaN, a dictionary Kong has no shared dict for) is dropped and leaves that state as it was."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import chain

from gateway.breaker.messages import Outcome
from gateway.bus import protocol as p
from gateway.policies.proxy_cache import DICTIONARIES
from gateway.ratelimit.ledger import report_problem, request_problem, returned_problem


def refusal(msg: p.Msg, wall: float) -> str | None:
    """Why the keeper, its clock reading `wall`, cannot use `msg` (one line for the log), or None."""
    if isinstance(msg, p.AskLeases):
        return _first(request_problem(r) for r in msg.requests)
    if isinstance(msg, p.GiveBack):
        return _first(chain((returned_problem(r) for r in msg.returned),
                            (report_problem(f, wall) for f in msg.fallback)))
    if isinstance(msg, p.Outcomes):
        return _first(_outcome_problem(o) for o in msg.items)
    if isinstance(msg, p.CacheStore) and msg.dictionary not in DICTIONARIES:
        return (f"no cache dictionary {msg.dictionary[:60]!r} (they are Kong's shared dicts: "
                f"{', '.join(DICTIONARIES)})")
    return None


def _outcome_problem(outcome: Outcome) -> str | None:
    counts = (outcome.successes, outcome.failures, outcome.lead, outcome.run, outcome.tail)
    if min(counts) < 0:
        return f"outcomes of {outcome.target[:60]!r}: negative counts (successes, failures, lead, run, tail) {counts}"
    return None


def _first(problems: Iterable[str | None]) -> str | None:
    return next((problem for problem in problems if problem is not None), None)
