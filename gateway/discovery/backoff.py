"""Capped exponential backoff with jitter, and a connection-state tracker that logs transitions only."""

from __future__ import annotations

import logging
import random
import time
from typing import Any


class Backoff:
    """Delays initial, 2x, 4x, ... capped at `maximum`, each scaled by a random factor in [1 - jitter, 1].

    The jitter spreads the retries of many gateways that lost the same registry at the same moment.
    """

    def __init__(self, initial: float, maximum: float, *, multiplier: float = 2.0, jitter: float = 0.5,
                 rng: random.Random | None = None) -> None:
        if initial <= 0 or maximum < initial or multiplier < 1 or not 0 <= jitter < 1:
            raise ValueError("invalid backoff parameters")
        self.initial = initial
        self.maximum = maximum
        self.multiplier = multiplier
        self.jitter = jitter
        self.attempts = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        base = min(self.maximum, self.initial * self.multiplier ** min(self.attempts, 64))
        self.attempts += 1
        return base * (1 - self.jitter * self._rng.random())

    def reset(self) -> None:
        self.attempts = 0


class LinkState:
    """Whether a registry is reachable, logged once per change (not once per failed attempt).

    `details()` feeds the status server: {"state": "ok"|"down"|"starting", "endpoint", "error", "since", ...}.
    """

    def __init__(self, what: str, logger: logging.Logger) -> None:
        self.what = what
        self.log = logger
        self.state = "starting"
        self.error: str | None = None
        self.since = time.time()
        self.failures = 0
        self.extra: dict[str, Any] = {}

    @property
    def ok(self) -> bool:
        return self.state == "ok"

    def up(self, endpoint: str, note: str = "") -> None:
        if self.state != "ok":
            if self.state == "down":
                self.log.warning("%s: connected again to %s after %d failed attempts%s", self.what, endpoint,
                                 self.failures, note)
            else:
                self.log.info("%s: connected to %s%s", self.what, endpoint, note)
            self.state, self.error, self.since, self.failures = "ok", None, time.time(), 0
        self.extra["endpoint"] = endpoint

    def down(self, endpoint: str, error: str, note: str = "") -> None:
        self.failures += 1
        self.error = error
        if self.state != "down":
            self.log.error("%s: %s unreachable (%s)%s; retrying with backoff", self.what, endpoint, error, note)
            self.state, self.since = "down", time.time()

    def details(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state, "since": round(self.since, 3), **self.extra}
        if self.error is not None:
            out["error"] = self.error
            out["failed_attempts"] = self.failures
        return out
