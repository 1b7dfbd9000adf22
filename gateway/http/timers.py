"""Coarse per-connection timers: one cancel scope per connection, expired by a sweeper every TIMER_RESOLUTION_S.

Trio's deadlines update a heap on every change, and a proxy changes its deadline several times per request:
measured, that cost a quarter of a worker's throughput. Like nginx's timer_resolution, we trade precision
(up to TIMER_RESOLUTION_S late) for a plain attribute store per phase. When a timer fires, the connection's whole
scope is cancelled; `phase` (and `detail`) tell the connection loop what timed out, so it can answer 408 or 504.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable

import trio

TIMER_RESOLUTION_S = 0.1


def run_clock() -> Callable[[], float]:
    """The running Trio clock's `current_time`, bound: the same readings as trio.current_time() for a fraction of
    its cost (what the request path reads several times per request). Outside Trio: trio.current_time."""
    try:
        return trio.lowlevel.current_clock().current_time
    except RuntimeError:
        return trio.current_time


class Phase(enum.IntEnum):
    NEW = 0  # accepted, no byte yet
    HEAD = 1  # part of a request head has arrived
    IDLE = 2  # kept alive between requests
    BUSY = 3  # a handler runs with no deadline of its own
    UPSTREAM_WRITE = 4  # sending the request upstream (write_timeout)
    UPSTREAM_READ = 5  # waiting for the response head (read_timeout)
    UPSTREAM_BODY = 6  # relaying the response body (read_timeout between reads)
    CLIENT_BODY = 7  # waiting for the next piece of the request body (client_body_timeout_s between reads)
    CLIENT_WRITE = 8  # a write to the client waits for it to read (send_timeout_s, as nginx's send_timeout)


class ConnTimer:
    """The deadline of one connection's current phase; `at` is on Trio's clock, math.inf for none."""

    __slots__ = ("scope", "at", "phase", "detail", "exchange")

    def __init__(self, at: float, phase: Phase) -> None:
        self.scope = trio.CancelScope()
        self.at = at
        self.phase = phase
        self.detail: tuple[str, float] | None = None  # (what, seconds) for the timeout message
        self.exchange: object = None  # the request being served, for the connection loop to answer

    def set(self, seconds: float, phase: Phase, detail: tuple[str, float] | None = None) -> None:
        self.at = trio.current_time() + seconds
        self.phase = phase
        self.detail = detail

    def clear(self, phase: Phase = Phase.BUSY) -> None:
        self.at = math.inf
        self.phase = phase


class Timers:
    """The live timers of a worker and the task that expires them."""

    def __init__(self) -> None:
        self.live: set[ConnTimer] = set()

    async def expire_forever(self) -> None:
        while True:
            await trio.sleep(TIMER_RESOLUTION_S)
            now = trio.current_time()
            for timer in self.live:
                if timer.at <= now:
                    timer.scope.cancel()
