"""pyzmq sockets driven by Trio's I/O waits, with no thread per message.

ZMQ_FD is edge-triggered: it signals that *something* changed, and only reading ZMQ_EVENTS tells what and
re-arms it. So every operation is tried first; on EAGAIN we consult ZMQ_EVENTS (which may reveal a message that
arrived meanwhile) and only then park on the fd. One task owns each socket, so the fd is never waited on twice.
"""

from __future__ import annotations

from collections.abc import Callable

import trio
import zmq

PUMP_BATCH = 64  # messages a PumpedSocket's run or send takes before letting other tasks run


class TrioSocket:
    """A non-blocking view of a zmq.Socket for one owning Trio task."""

    __slots__ = ("sock", "_fd")

    def __init__(self, sock: zmq.Socket) -> None:
        self.sock = sock
        self._fd: int = sock.getsockopt(zmq.FD)  # type: ignore[assignment]  # ZMQ_FD is an int option

    async def recv_multipart(self) -> list[bytes]:
        sock = self.sock
        while True:
            try:
                return sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                pass
            if sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:  # type: ignore[arg-type, operator]  # an int option
                continue
            await trio.lowlevel.wait_readable(self._fd)

    async def send_multipart(self, parts: list[bytes]) -> None:
        sock = self.sock
        while True:
            try:
                sock.send_multipart(parts, zmq.NOBLOCK)
                await trio.lowlevel.checkpoint()
                return
            except zmq.Again:
                pass
            if sock.getsockopt(zmq.EVENTS) & zmq.POLLOUT:  # type: ignore[arg-type, operator]  # an int option
                continue
            await trio.lowlevel.wait_readable(self._fd)  # the fd signals any change, POLLOUT included

    def close(self) -> None:
        self.sock.close(linger=0)


class PumpedSocket:
    """A zmq socket whose incoming messages are handed to a synchronous callback, sendable from any task.

    Any operation on the socket may consume ZMQ_FD's edge, so whoever sends also pumps what has arrived; the one
    `run` task parks on the fd only when ZMQ_EVENTS says nothing is waiting. No wake-up is ever lost, and no task
    but `run` waits on the fd. `run` and `send` take at most PUMP_BATCH messages at a time, then let the other tasks
    run (a sender's pump that leaves messages waking `run` for them): a peer sending without pause cannot hold up the
    event loop, as nginx handles one bounded batch of ready events per turn.
    """

    __slots__ = ("sock", "_fd", "_on_message", "_pumping", "_parked")

    def __init__(self, sock: zmq.Socket, on_message: Callable[[list[bytes]], None]) -> None:
        self.sock = sock
        self._fd: int = sock.getsockopt(zmq.FD)  # type: ignore[assignment]  # ZMQ_FD is an int option
        self._on_message = on_message
        self._pumping = False
        self._parked: trio.CancelScope | None = None  # `run`'s wait on the fd, while it waits

    def send(self, frames: list[bytes]) -> bool:
        """Queue a message without blocking; False when zmq's queue is full (the peer is gone or slow)."""
        try:
            self.sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            return False
        finally:
            if self.pump(PUMP_BATCH) and self._parked is not None:
                self._parked.cancel()  # the edge is consumed and messages wait: `run` takes them at its turn
        return True

    def pump(self, limit: int | None = None) -> bool:
        """Dispatch what has arrived, at most `limit` messages (None: all); True when it stopped at the limit with
        more perhaps waiting. A callback that sends does not recurse: the loop goes on."""
        if self._pumping:
            return False
        self._pumping = True
        try:
            sock = self.sock
            taken = 0
            while limit is None or taken < limit:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    return False
                taken += 1
                self._on_message(frames)
            return True
        finally:
            self._pumping = False

    async def run(self) -> None:
        """Receive until cancelled."""
        sock = self.sock
        while True:
            more = self.pump(PUMP_BATCH)
            if more or sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:  # type: ignore[arg-type, operator]  # an int option
                await trio.lowlevel.checkpoint()  # more waiting: the other tasks' turn first
                continue
            with trio.CancelScope() as self._parked:
                await trio.lowlevel.wait_readable(self._fd)
            self._parked = None

    def close(self, linger: int = 0) -> None:
        """Close; `linger` ms for queued messages to leave (0: dropped)."""
        self.sock.close(linger=linger)
