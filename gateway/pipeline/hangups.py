"""Clients that hang up on their SSE streams: one epoll set per worker watches every relayed stream's client.

A relayed stream waits on its upstream; its client can leave meanwhile, and the upstream stream (an MCP request in
progress) must end then, not at the next write. A Trio wait per client would cost each stream a task, a nursery
and a parked wait (about 4 KiB, issue 19); here a stream's client socket is one registration in a private epoll
set whose own descriptor is the one thing Trio waits on, as nginx watches all its connections in one epoll. When a
client closes, its stream is marked `gone` and its wait interrupted (the same cancel scope the keep-alive wheel
uses); when it sends bytes instead (a pipelined request) watching stops and the bytes stay for the next read.
"""

from __future__ import annotations

import select

import trio

from gateway.http.net import Conn
from gateway.pipeline.keepalive import Stream

_EVENTS = select.EPOLLIN | select.EPOLLRDHUP
_MAX_EVENTS = 1024  # per poll; the rest are reported by the next one, as the set stays readable


class Hangups:
    """The worker's watch over the clients of its relayed streams; `run_forever` is one of the worker's tasks."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._watched: dict[int, tuple[Conn, Stream]] = {}

    def __len__(self) -> int:
        return len(self._watched)

    def watch(self, conn: Conn, stream: Stream) -> None:
        """Watch client `conn` for the life of `stream` (until `unwatch`, or until it hangs up or sends something)."""
        fd = stream.fd = conn.sock.fileno()
        try:
            self._epoll.register(fd, _EVENTS)
        except FileExistsError:  # a closed socket's registration outlived it (a dup somewhere): take it over
            self._epoll.modify(fd, _EVENTS)
        self._watched[fd] = (conn, stream)

    def unwatch(self, stream: Stream) -> None:
        fd = stream.fd  # the socket may be closed by now
        entry = self._watched.get(fd)
        if entry is not None and entry[1] is stream:  # not a later stream that reuses the descriptor number
            self._forget(fd)

    def _forget(self, fd: int) -> None:
        del self._watched[fd]
        try:
            self._epoll.unregister(fd)
        except OSError:  # closed already: the kernel dropped it from the set with its last reference
            pass

    def check(self) -> int:
        """Judge every client the kernel reports: a hang-up ends its stream's wait. Returns how many hung up."""
        gone = 0
        for fd, _ in self._epoll.poll(0, _MAX_EVENTS):
            entry = self._watched.get(fd)
            if entry is None:
                continue
            conn, stream = entry
            closed = conn.peer_closed()
            if closed is None:
                continue  # woken for nothing (TLS housekeeping): keep watching
            self._forget(fd)
            if closed:
                stream.gone = True
                if stream.scope is not None:
                    stream.scope.cancel()
                gone += 1
        return gone

    async def run_forever(self) -> None:
        try:
            while True:
                await trio.lowlevel.wait_readable(self._epoll.fileno())
                self.check()
        finally:
            self._watched.clear()
            self._epoll.close()
