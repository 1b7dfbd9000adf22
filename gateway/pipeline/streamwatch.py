"""Relayed SSE streams wait here: one epoll set per worker watches every stream's client (hanging up) and, while the
stream is parked, its upstream (speaking).

An idle stream costs what its wait costs, times 50,000 on a host (issue 19). A Trio wait on the upstream needs a
cancel scope, so the keep-alive wheel and the hang-up watch can interrupt it, and Trio's waiter records: about 2 KiB
a stream. Here a stream's task parks with nothing but `wait_task_rescheduled`, its upstream socket armed one-shot in
this set, and is resumed by whoever has news: this set's task when the upstream is readable, the same task when the
client closed (`gone`), the keep-alive wheel when a comment is owed (gateway.pipeline.keepalive). The set's own
descriptor is the one thing Trio waits on, as nginx watches all its connections in one epoll.

A client that sends bytes instead of closing (a pipelined request) is then watched for its hang-up alone (EPOLLRDHUP,
not EPOLLIN), and its bytes stay for the next read: one that closes after them is gone at once, as nginx's epoll sees
the FIN behind unread bytes (ngx_epoll_module.c:884-888, pending_eof; ngx_http_upstream.c:1400-1445, its 499). The
gateway never closes an upstream socket under a parked stream (the kernel would drop it from the set without a
word): a circuit's sweep shuts it down instead (gateway.http.pool), which reads as the upstream's EOF.

An upstream that speaks re-arms its stream's read_timeout here, as it wakes the stream, as nginx's read handler
re-arms it when epoll reports the bytes (ngx_http_upstream_process_non_buffered_request): the stream's own task
runs a loop turn later, and the timer sweeper must not expire in between a deadline the upstream met.
"""

from __future__ import annotations

import select

import trio

from gateway.http.net import Conn
from gateway.http.timers import ConnTimer
from gateway.pipeline.keepalive import Stream

_CLIENT = select.EPOLLIN | select.EPOLLRDHUP
_CLIENT_SPOKE = select.EPOLLRDHUP  # a client that sent bytes: its FIN or reset only (EPOLLHUP, EPOLLERR come anyway)
_HUNG_UP = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
_UPSTREAM = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLONESHOT
_MAX_EVENTS = 1024  # per poll; the rest are reported by the next one, as the set stays readable


class StreamWatch:
    """The worker's watch over its relayed streams; `run_forever` is one of the worker's tasks."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._clients: dict[int, tuple[Conn, Stream]] = {}
        # upstream descriptor -> its stream, the stream's timer (None: no deadline) and read_timeout
        self._upstreams: dict[int, tuple[Stream, ConnTimer | None, float]] = {}

    def __len__(self) -> int:
        """Clients watched."""
        return len(self._clients)

    def watch(self, conn: Conn, stream: Stream) -> None:
        """Watch client `conn` for the life of `stream` (until `unwatch`, or until it hangs up; once it sent
        something, for its hang-up only)."""
        fd = stream.fd = conn.sock.fileno()
        self._add(fd, _CLIENT)
        self._clients[fd] = (conn, stream)

    async def wait_upstream(self, stream: Stream, upstream: Conn, timer: ConnTimer | None = None,
                            read_timeout: float = 0.0) -> None:
        """Park the stream's task until its upstream is readable, its client hangs up, or the wheel owes it a
        comment (the caller looks at `gone` and `owed`). The only checkpoint of an idle stream. `timer` (the same
        for the stream's life), whose UPSTREAM_BODY deadline is `read_timeout` from the upstream's last bytes, is
        re-armed when the upstream speaks (`check`)."""
        fd = upstream.sock.fileno()
        if stream.up_fd == fd:
            try:
                self._epoll.modify(fd, _UPSTREAM)  # re-arm: one-shot, it disarmed when it last fired
            except FileNotFoundError:
                self._add(fd, _UPSTREAM)
        else:
            self._add(fd, _UPSTREAM)
            stream.up_fd = fd
            self._upstreams[fd] = (stream, timer, read_timeout)
        stream.task = trio.lowlevel.current_task()

        def abort(_: object) -> trio.lowlevel.Abort:
            stream.task = None  # cancelled (a drain, the worker stopping); a later wake finds no task
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def unwatch(self, stream: Stream) -> None:
        """The stream ended: forget its client and its upstream (either socket may be closed by now)."""
        fd = stream.fd
        entry = self._clients.get(fd)
        if entry is not None and entry[1] is stream:  # not a later stream that reuses the descriptor number
            del self._clients[fd]
            self._remove(fd)
        fd = stream.up_fd
        upstream = self._upstreams.get(fd)
        if upstream is not None and upstream[0] is stream:
            del self._upstreams[fd]
            self._remove(fd)

    def _add(self, fd: int, events: int) -> None:
        try:
            self._epoll.register(fd, events)
        except FileExistsError:  # a closed socket's registration outlived it (a dup somewhere): take it over
            self._epoll.modify(fd, events)

    def _remove(self, fd: int) -> None:
        try:
            self._epoll.unregister(fd)
        except OSError:  # closed already: the kernel dropped it from the set with its last reference
            pass

    def check(self) -> int:
        """Resume the streams whose upstream spoke, their read_timeout re-armed from now; judge every client the
        kernel reports (a hang-up resumes its stream too). Returns how many clients hung up."""
        gone = 0
        now = None  # read once, for the first upstream that spoke (a stream parks in Trio only)
        for fd, events in self._epoll.poll(0, _MAX_EVENTS):
            upstream = self._upstreams.get(fd)
            if upstream is not None:
                stream, timer, read_timeout = upstream
                if timer is not None and stream.task is not None:  # parked: its deadline is its UPSTREAM_BODY's,
                    if now is None:
                        now = trio.current_time()
                    timer.at = now + read_timeout  # later than it was (so later than it is queued under)
                stream.wake()
                continue
            entry = self._clients.get(fd)
            if entry is not None and self._hung_up(fd, events, entry[0]):
                del self._clients[fd]
                self._remove(fd)
                stream = entry[1]
                stream.gone = True
                stream.wake()
                gone += 1
        return gone

    def _hung_up(self, fd: int, events: int, conn: Conn) -> bool:
        """Did the client the kernel reported hang up? A FIN or reset is the end whatever bytes came before it; bytes
        alone (a pipelined request) are left unread, and the client is watched for its hang-up only from then on."""
        if events & _HUNG_UP:
            return True
        closed = conn.peer_closed()
        if closed is False:
            self._epoll.modify(fd, _CLIENT_SPOKE)
        return bool(closed)  # (None: woken for nothing, TLS housekeeping: keep watching)

    async def run_forever(self) -> None:
        try:
            while True:
                await trio.lowlevel.wait_readable(self._epoll.fileno())
                self.check()
        finally:  # the worker is stopping: parked streams are cancelled with it (their abort forgets the task)
            self._clients.clear()
            self._upstreams.clear()
            self._epoll.close()
