"""Keep-alive comments for idle SSE streams: one task per worker instead of a timeout per read of every stream.

A stream notes the wheel's coarse clock (`now`, updated each tick) whenever the upstream sends something: an
attribute store, no clock read, no cancel scope per read. Each tick, a stream silent for its interval has its wait
interrupted (its cancel scope, one per interval of silence) so the relay sends a `: keepalive` comment between
events. Intervals get a per-stream jitter of up to JITTER, so streams opened together do not all speak at once,
and a stream the upstream keeps busy never gets one.
"""

from __future__ import annotations

import random

import trio

JITTER = 0.1  # a stream's interval is sse_keepalive x (1 - up to this), fixed per stream
MAX_TICK_S = 1.0


class Stream:
    """One relayed SSE stream as the wheel sees it."""

    __slots__ = ("last", "interval", "scope", "gone", "fd")

    def __init__(self, now: float, interval: float) -> None:
        self.last = now
        self.interval = interval
        self.scope: trio.CancelScope | None = None  # around the stream's wait for its upstream, while it waits
        self.gone = False  # its client hung up (gateway.pipeline.hangups)
        self.fd = -1  # its client's socket, while watched


class StreamKeepAlives:
    """The worker's idle-stream clock."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.tick = min(MAX_TICK_S, interval / 4)
        self.now = 0.0
        self.streams: set[Stream] = set()

    def open(self) -> Stream:
        stream = Stream(self.now, self.interval * (1 - JITTER * random.random()))
        self.streams.add(stream)
        return stream

    def close(self, stream: Stream) -> None:
        self.streams.discard(stream)

    def due(self, now: float) -> int:
        """Interrupt every stream silent for its interval; returns how many."""
        self.now = now
        count = 0
        for stream in self.streams:
            if now - stream.last >= stream.interval and stream.scope is not None:
                stream.scope.cancel()
                stream.scope = None
                count += 1
        return count

    async def run_forever(self) -> None:
        self.now = trio.current_time()
        while True:
            await trio.sleep(self.tick)
            self.due(trio.current_time())
