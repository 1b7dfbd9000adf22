"""Keep-alive comments for idle SSE streams: one task per worker writes them, instead of a timeout per read of
every stream and a wake-up of each stream's task per comment.

A stream notes the wheel's coarse clock (`now`, updated each tick) whenever the upstream sends something: an
attribute store, no clock read, no cancel scope per read. Each tick, a stream silent for its interval and parked
between two events gets a `: keepalive` comment written by the wheel itself, as far as the kernel takes it at once;
only when it does not (a full socket buffer, or TLS, whose records are written by the stream's task) is the
stream's task resumed from its wait (gateway.pipeline.streamwatch) to send what is owed. Intervals get a per-stream
jitter of up to JITTER, so streams opened together do not all speak at once, and a stream the upstream keeps busy
never gets one; nor does a stream whose body is compressed (Content-Encoding), which the gateway passes on byte for
byte as nginx does. With 50,000 idle streams on a host that is 3,500 comments a second (issue 19).

The wheel does not look at every stream every tick: streams wait in buckets by the tick they are next due at, so a
tick looks only at the streams due then, and a stream is looked at about once per interval (a stream that heard
from its upstream meanwhile moves to the bucket of its new due time).
"""

from __future__ import annotations

import random
from typing import Protocol

import trio

JITTER = 0.1  # a stream's interval is sse_keepalive x (1 - up to this), fixed per stream
MAX_TICK_S = 1.0
COMMENT = b": keepalive\n\n"
_FRAMED: dict[bytes, bytes] = {}  # the comment as each framing carries it: one object shared by all the streams


class Client(Protocol):
    """The stream's response, as the wheel writes to it (gateway.http.server.Exchange)."""

    def extra_body(self, data: bytes) -> bytes | None: ...
    def send_now(self, framed: bytes) -> bytes: ...


class Stream:
    """One relayed SSE stream as the wheel (and the hang-up watch) see it."""

    __slots__ = ("client", "comment", "last", "interval", "task", "at_boundary", "owed", "gone", "fd", "up_fd",
                 "closed")

    def __init__(self, client: Client, now: float, interval: float, comment: bytes = b"") -> None:
        self.client: Client | None = client
        self.comment = comment  # the comment as its response frames it; b"": none (a body of fixed length)
        self.last = now
        self.interval = interval
        self.task: trio.lowlevel.Task | None = None  # the stream's task, while it is parked waiting for its upstream
        self.at_boundary = True  # what was relayed so far ends with a whole event: a comment may go in here
        self.owed = b""  # comment bytes the wheel could not write: the stream's task sends them
        self.gone = False  # its client hung up (gateway.pipeline.streamwatch)
        self.fd = -1  # its client's socket, while watched
        self.up_fd = -1  # its upstream's socket, once it has waited for it
        self.closed = False  # ended: dropped from the wheel when its bucket comes up

    def wake(self) -> None:
        """Resume the stream's task if it is parked at its wait (it then looks at `gone` and `owed`)."""
        task = self.task
        if task is not None:
            self.task = None
            trio.lowlevel.reschedule(task)


class StreamKeepAlives:
    """The worker's idle-stream clock."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.tick = min(MAX_TICK_S, interval / 4)
        self.now = 0.0
        self.open_streams = 0
        self._buckets: dict[int, list[Stream]] = {}  # tick number -> the streams to look at then
        self._next = 0  # the first tick number not swept yet

    def open(self, client: Client, comments: bool = True) -> Stream:
        """A stream relayed to `client`, its response head sent. A response of fixed length (Content-Length), or
        one opened with `comments` False (a body in a content coding, whose bytes a plain comment would corrupt),
        is never given a comment; it is not queued at all."""
        comment = client.extra_body(COMMENT) if comments else None
        stream = Stream(client, self.now, self.interval * (1 - JITTER * random.random()),
                        _FRAMED.setdefault(comment, comment) if comment else b"")
        if comment:
            self._queue(stream, self.now + stream.interval, self._next)
        self.open_streams += 1
        return stream

    def close(self, stream: Stream) -> None:
        if not stream.closed:
            stream.closed = True
            stream.client = None  # its bucket holds the record until it comes up, not the whole exchange
            self.open_streams -= 1

    def _queue(self, stream: Stream, at: float, earliest: int) -> None:
        slot = max(int(at / self.tick), earliest)
        bucket = self._buckets.get(slot)
        if bucket is None:
            self._buckets[slot] = [stream]
        else:
            bucket.append(stream)

    def due(self, now: float) -> int:
        """Give every stream silent for its interval its comment; returns how many got one."""
        self.now = now
        upto = int(now / self.tick)
        later = upto + 1
        count = 0
        buckets = self._buckets
        tick = self.tick
        for slot in range(self._next, later):
            bucket = buckets.pop(slot, None)
            if bucket is None:
                continue
            for stream in bucket:
                if stream.closed:
                    continue
                due_at = stream.last + stream.interval
                if now < due_at:
                    self._queue(stream, due_at, later)  # it heard from its upstream since it was queued
                    continue
                if stream.task is None or stream.owed:  # its task is writing (not parked at its wait)
                    self._queue(stream, now, later)
                    continue
                stream.last = now
                # _queue, inline (3,500 times a second at 50,000 streams): an interval spans at least 3 ticks
                next_slot = int((now + stream.interval) / tick)
                queued = buckets.get(next_slot)
                if queued is None:
                    buckets[next_slot] = [stream]
                else:
                    queued.append(stream)
                if not stream.at_boundary:
                    continue  # mid-event: a comment would split it; the event's rest is what keeps it alive
                count += 1
                owed = stream.client.send_now(stream.comment)  # type: ignore[union-attr]  # not closed
                if owed:
                    stream.owed = owed
                    stream.wake()
        self._next = later
        return count

    async def run_forever(self) -> None:
        self.now = trio.current_time()
        self._next = int(self.now / self.tick)
        while True:
            await trio.sleep(self.tick)
            self.due(trio.current_time())
