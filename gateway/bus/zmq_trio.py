"""pyzmq sockets driven by Trio's I/O waits, with no thread per message.

ZMQ_FD is edge-triggered: it signals that *something* changed, and only reading ZMQ_EVENTS tells what and
re-arms it. So every operation is tried first; on EAGAIN we consult ZMQ_EVENTS (which may reveal a message that
arrived meanwhile) and only then park on the fd. One task owns each socket, so the fd is never waited on twice.
"""

from __future__ import annotations

from collections.abc import Callable

import trio
import zmq


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
    but `run` waits on the fd.
    """

    __slots__ = ("sock", "_fd", "_on_message", "_pumping")

    def __init__(self, sock: zmq.Socket, on_message: Callable[[list[bytes]], None]) -> None:
        self.sock = sock
        self._fd: int = sock.getsockopt(zmq.FD)  # type: ignore[assignment]  # ZMQ_FD is an int option
        self._on_message = on_message
        self._pumping = False

    def send(self, frames: list[bytes]) -> bool:
        """Queue a message without blocking; False when zmq's queue is full (the peer is gone or slow)."""
        try:
            self.sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            return False
        finally:
            self.pump()
        return True

    def pump(self) -> None:
        """Dispatch every message that has arrived (a callback that sends does not recurse: the loop goes on)."""
        if self._pumping:
            return
        self._pumping = True
        try:
            sock = self.sock
            while True:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    return
                self._on_message(frames)
        finally:
            self._pumping = False

    async def run(self) -> None:
        """Receive until cancelled."""
        sock = self.sock
        while True:
            self.pump()
            if sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:  # type: ignore[arg-type, operator]  # an int option
                continue
            await trio.lowlevel.wait_readable(self._fd)

    def close(self, linger: int = 0) -> None:
        """Close; `linger` ms for queued messages to leave (0: dropped)."""
        self.sock.close(linger=linger)
