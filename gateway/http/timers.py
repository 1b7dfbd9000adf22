"""Coarse per-connection timers: one cancel scope per connection, expired by a sweeper that wakes when the earliest
deadline is due, at most every TIMER_RESOLUTION_S and at least every CLIENT_CHECK_S.

Trio's deadlines update a heap on every change, and a proxy changes its deadline several times per request:
measured, that cost a quarter of a worker's throughput. Like nginx's timer_resolution, we trade precision
(up to TIMER_RESOLUTION_S late) for a plain attribute store per phase. When a timer fires, the connection's whole
scope is cancelled; `phase` (and `detail`) tell the connection loop what timed out, so it can answer 408 or 504. A
try that may be retried registers its upstream connection instead: the timer closes that, and the forwarder moves on.

Expiring does not walk every connection: timers wait in a min-heap by the deadline they were queued under, and
a phase change pushes an entry only when it brings the deadline earlier than that (lazy deletion: an entry whose
time is no longer the timer's queued time is stale and dropped when popped; a popped timer whose deadline moved
later is queued again). So a request costs a comparison or two, and a sweep looks only at what is due: tens of
thousands of idle streams (each one entry, its read_timeout, moved later by what the upstream sends without a push)
cost nothing until due, and an idle worker's sweeper wakes twice a second, not ten times (a push of a deadline
earlier than the sweeper's next wake-up wakes it).

The sweeper also does what nginx's ngx_http_upstream_check_broken_connection does with proxy_ignore_client_abort
off (Kong's setting): every CLIENT_CHECK_S it walks the live connections and peeks at the client of each one that
waits on its upstream (to connect, to take the request, for the response head, or for more of its body: one
recv(MSG_PEEK) each). A client that closed or reset ends its request there, and its tries with it (nginx's
ngx_http_upstream_next tries no other server for a client gone): the upstream connection is closed (its server
stops working for no one, a least-connections count is given back) and the log says 499. A client that only
half-closed (its request sent whole, then a FIN) is gone too, as for nginx: its check_broken_connection takes the
EOF (epoll's EPOLLRDHUP, or recv(MSG_PEEK) returning 0) for a client that closed. So is one that sent bytes (a
pipelined request) and then closed: the peek sees the bytes, not the FIN behind them, so a client whose peek finds
bytes is also polled for its hang-up (Conn.hung_up), as nginx's epoll reports EPOLLRDHUP whatever is unread
(ngx_epoll_module.c:884-888). Relayed streams have a watch of their own (gateway.pipeline.streamwatch).

Each time it wakes, the sweeper also refreshes the responses' `Date` line (gateway.http.dates.NOW): a new second is
formatted once, not per response, at most CLIENT_CHECK_S late.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import math
from collections.abc import Callable
from typing import Protocol

import trio

from gateway.http.dates import NOW

TIMER_RESOLUTION_S = 0.1
CLIENT_CHECK_S = 0.5


def run_clock() -> Callable[[], float]:
    """The running Trio clock's `current_time`, bound: the same readings as trio.current_time() for a fraction of
    its cost (what the request path reads several times per request). Outside Trio: trio.current_time."""
    try:
        return trio.lowlevel.current_clock().current_time
    except RuntimeError:
        return trio.current_time


class Closable(Protocol):
    def close(self) -> None: ...


class Client(Protocol):
    def peer_closed(self, behind_bytes: bool = True) -> bool | None: ...


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
    UPSTREAM_CONNECT = 9  # connecting to a target, the TLS handshake included (connect_timeout, the connect's own)


# nginx watches the client from the start of the upstream request to its end (ngx_http_upstream_init_request sets
# ngx_http_upstream_rd_check_broken_connection before the connect)
_WAITING_ON_UPSTREAM = frozenset({Phase.UPSTREAM_CONNECT, Phase.UPSTREAM_WRITE, Phase.UPSTREAM_READ,
                                  Phase.UPSTREAM_BODY})
# The request is sent whole: a client's unread bytes are its next request, not the rest of this one's body
_REQUEST_SENT = frozenset({Phase.UPSTREAM_READ, Phase.UPSTREAM_BODY})
PRUNE_SLACK = 1024  # stale heap entries tolerated beyond as many as the valid ones (Timers.tidy)
# Phases whose timeout bounds a wait on one peer (nginx arms such a timer only while it waits on that peer): a write
# to the client meanwhile does not use up their time
_BETWEEN_TWO_OPERATIONS = frozenset({Phase.UPSTREAM_WRITE, Phase.UPSTREAM_READ, Phase.UPSTREAM_BODY,
                                     Phase.CLIENT_BODY})


class ConnTimer:
    """The deadline of one connection's current phase; `at` is on Trio's clock, math.inf for none."""

    __slots__ = ("scope", "at", "phase", "detail", "exchange", "queued", "timers", "upstream", "client", "gone")

    def __init__(self, at: float, phase: Phase) -> None:
        self.scope = trio.CancelScope()
        self.at = at
        self.phase = phase
        self.detail: tuple[str, float] | None = None  # (what, seconds) for the timeout message
        self.exchange: object = None  # the request being served, for the connection loop to answer
        self.queued = math.inf  # the deadline this timer waits in the heap under (inf: not queued)
        self.timers: Timers | None = None
        # A try that may go to another target (nginx's proxy_next_upstream timeout): its upstream connection (the
        # pool's UpstreamConn, whose close frees its slot in the pool), which the timer closes instead of cancelling
        # the whole client connection; the forwarder sees why and moves on.
        self.upstream: Closable | None = None
        self.client: Client | None = None  # the client connection, looked at while it waits on its upstream
        # Not a timeout: the client closed while its request waited on the upstream (nginx's 499). Apart from
        # `phase`, which the cancelled task may still set before it reaches its next checkpoint.
        self.gone = False

    def set(self, seconds: float, phase: Phase, detail: tuple[str, float] | None = None) -> None:
        timers = self.timers
        at = self.at = (timers.clock if timers is not None else trio.current_time)() + seconds
        self.phase = phase
        self.detail = detail
        if at < self.queued and timers is not None:
            timers.push(self, at)

    def set_until(self, at: float, phase: Phase, detail: tuple[str, float] | None = None) -> None:
        """Like `set`, with the deadline itself, for a caller that read the clock a moment ago."""
        self.at = at
        self.phase = phase
        self.detail = detail
        if at < self.queued and self.timers is not None:
            self.timers.push(self, at)

    def shorten(self, at: float) -> None:
        """Bring the deadline forward to `at` if it is later (a drain)."""
        if at < self.at:
            self.at = at
            if at < self.queued and self.timers is not None:
                self.timers.push(self, at)

    def save(self) -> tuple[float, Phase, tuple[str, float] | None]:
        """The current deadline, phase and detail, for `restore` after a nested wait (a slow write, a body read)."""
        return self.at, self.phase, self.detail

    def restore(self, saved: tuple[float, Phase, tuple[str, float] | None], waited: float = 0.0) -> None:
        """Back to the saved deadline after a nested wait of `waited` seconds, which pushes back a deadline of a wait
        on the other peer (read_timeout, write_timeout, client_body_timeout): nginx's proxy_read_timeout runs only
        while nginx waits on the upstream, so a slow client's read is not charged to it."""
        at, self.phase, self.detail = saved
        if waited and self.phase in _BETWEEN_TWO_OPERATIONS:
            at += waited
        self.at = at
        if at < self.queued and self.timers is not None:
            self.timers.push(self, at)

    def clear(self, phase: Phase = Phase.BUSY) -> None:
        self.at = math.inf
        self.phase = phase


class Timers:
    """The timers of a worker's live connections and the task that expires them."""

    def __init__(self) -> None:
        # The live connections' timers, but for those relaying a stream (`park`): what a drain and the count of
        # connections by state walk, which tens of thousands of idle streams would make the biggest idle cost.
        # The running clock's reading, bound once the sweeper runs (gateway.http.timers.run_clock): a phase change
        # reads it, several times per request.
        self.clock: Callable[[], float] = trio.current_time
        self.live: set[ConnTimer] = set()
        self._heap: list[tuple[float, int, ConnTimer]] = []
        self._order = itertools.count()  # ties never compare timers
        self._wake: trio.Event | None = None  # the sleeping sweeper's alarm
        self._wake_at = math.inf  # when it wakes by itself (-inf: already woken)
        self._prune_above = PRUNE_SLACK  # the heap's length past which its stale entries are dropped (`tidy`)

    def add(self, timer: ConnTimer) -> None:
        self.live.add(timer)
        timer.timers = self
        if timer.at < timer.queued:
            self.push(timer, timer.at)

    def discard(self, timer: ConnTimer) -> None:
        self.live.discard(timer)
        timer.timers = None
        timer.queued = math.inf  # whatever it left in the heap is stale now

    def park(self, timer: ConnTimer) -> None:
        """The connection relays a stream for as long as it lasts: out of `live` (it counts as writing, and no drain
        shortens it), still timed (a write that waits for the client sets a deadline as ever)."""
        self.live.discard(timer)

    def unpark(self, timer: ConnTimer) -> None:
        if timer.timers is self:
            self.live.add(timer)

    def push(self, timer: ConnTimer, at: float) -> None:
        timer.queued = at
        heapq.heappush(self._heap, (at, next(self._order), timer))
        if at < self._wake_at and self._wake is not None:
            self._wake_at = -math.inf
            self._wake.set()

    def expire(self, now: float) -> int:
        """Cancel the scopes of timers that are due; returns how many fired."""
        heap = self._heap
        fired = 0
        while heap and heap[0][0] <= now:
            at, _, timer = heapq.heappop(heap)
            if at != timer.queued:
                continue  # stale: the timer was queued again earlier, or its connection ended
            timer.queued = math.inf
            if timer.at <= now:
                upstream = timer.upstream
                if upstream is None:
                    timer.scope.cancel()
                else:
                    timer.upstream = None
                    upstream.close()
                fired += 1
            elif timer.at != math.inf:
                self.push(timer, timer.at)  # its deadline moved later meanwhile
        return fired

    def tidy(self) -> None:
        """Drop the heap's stale entries (a connection ended, a timer queued again earlier) once the heap has doubled
        since the last time: nginx deletes a connection's timers as it closes it (ngx_close_connection), and a lazy
        heap must not keep a closed connection's timer, and its scope, for a whole read_timeout (up to 24.8 days)."""
        heap = self._heap
        if len(heap) > self._prune_above:
            heap[:] = [entry for entry in heap if entry[0] == entry[2].queued]
            heapq.heapify(heap)
            self._prune_above = 2 * len(heap) + PRUNE_SLACK

    def check_clients(self) -> int:
        """End the requests whose client closed while they wait on the upstream (see the module's docstring);
        returns how many. A client that sent bytes instead (a pipelined request) is left alone, as nginx does,
        unless it then closed (Conn.peer_closed: bytes, then a FIN or reset, are gone at once)."""
        gone = 0
        for timer in self.live:
            if timer.phase in _WAITING_ON_UPSTREAM and timer.client is not None and \
                    timer.client.peer_closed(timer.phase in _REQUEST_SENT):
                timer.gone = True
                timer.upstream = None
                timer.scope.cancel()
                gone += 1
        return gone

    async def expire_forever(self) -> None:
        """Expire against the time read as the sweeper wakes, after the tasks the next I/O poll wakes have run: as
        nginx expires timers after it handled what epoll_wait reported, against the time read right after it
        (ngx_epoll_process_events, ngx_process_events_and_timers), so bytes that came in time are read, not timed out.

        A Trio loop turn polls epoll (timeout 0 while tasks are runnable), then runs the batch of runnable tasks in
        an order it varies; a task rescheduled during a batch runs in the next. Bytes that reached a socket before
        `now` is read (in batch k, whatever stalled the loop before it) are reported by the next poll, whose tasks
        all run in batch k+1, so the expiry in batch k+2 finds their timers re-armed (if they re-arm as they read)."""
        heap = self._heap
        self.clock = run_clock()
        now = trio.current_time()
        check_at = now + CLIENT_CHECK_S
        while True:
            NOW.refresh()
            self.expire(now)
            self.tidy()
            if now >= check_at:
                self.check_clients()
                check_at = now + CLIENT_CHECK_S
            at = min(heap[0][0] if heap else math.inf, check_at)
            self._wake_at = at = max(at, now + TIMER_RESOLUTION_S)
            self._wake = alarm = trio.Event()
            with trio.move_on_at(at):
                await alarm.wait()
            now = trio.current_time()
            # Two turns (batch k+1, then k+2), shielded: a worker stopping cancels the sweeper at its wait
            await trio.lowlevel.cancel_shielded_checkpoint()
            await trio.lowlevel.cancel_shielded_checkpoint()
