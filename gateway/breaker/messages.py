"""Breaker payloads on the bus: the keeper's published states and the workers' batched outcomes."""

from __future__ import annotations

import msgspec

from gateway.breaker.state import State


class BreakerUpdate(msgspec.Struct, frozen=True, array_like=True):
    """Keeper -> all workers: `target`'s breaker is now in `state`."""

    target: str
    state: State


class Outcome(msgspec.Struct, frozen=True, array_like=True):
    """Worker -> keeper: results of requests to `target` since the last batch, in order as runs of failures.

    lead: failures before the first success; run: longest run of failures; tail: failures after the last success
    (all equal to `failures` when there was no success). They let the keeper keep an exact count of consecutive
    failures without one message per request. A probe's result is sent alone, at once, with probe=True; kept: the
    probe succeeded while the circuit was half-open and its worker kept the permit for its next request (the
    keeper counts that permit in flight still, and sends no new one).
    """

    target: str
    successes: int = 0
    failures: int = 0
    lead: int = 0
    run: int = 0
    tail: int = 0
    probe: bool = False
    kept: bool = False


def given_up(target: str) -> Outcome:
    """A probe that ended without a result (its client left): its permit back, and no verdict on the target."""
    return Outcome(target, probe=True)


def single(target: str, ok: bool, probe: bool = False) -> Outcome:
    """The Outcome of one request."""
    return Outcome(target, 1, 0, 0, 0, 0, probe) if ok else Outcome(target, 0, 1, 1, 1, 1, probe)
