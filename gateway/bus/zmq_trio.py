"""pyzmq sockets driven by Trio's I/O waits, with no thread per message.

ZMQ_FD is edge-triggered: it signals that *something* changed, and only reading ZMQ_EVENTS tells what and
re-arms it. So every operation is tried first; on EAGAIN we consult ZMQ_EVENTS (which may reveal a message that
arrived meanwhile) and only then park on the fd. One task owns each socket, so the fd is never waited on twice.
"""

from __future__ import annotations

import trio
import zmq


class TrioSocket:
    """A non-blocking view of a zmq.Socket for one owning Trio task."""

    __slots__ = ("sock", "_fd")

    def __init__(self, sock: zmq.Socket) -> None:
        self.sock = sock
        self._fd = sock.getsockopt(zmq.FD)

    async def recv_multipart(self) -> list[bytes]:
        sock = self.sock
        while True:
            try:
                return sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                pass
            if sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
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
            if sock.getsockopt(zmq.EVENTS) & zmq.POLLOUT:
                continue
            await trio.lowlevel.wait_readable(self._fd)  # the fd signals any change, POLLOUT included

    def close(self) -> None:
        self.sock.close(linger=0)
