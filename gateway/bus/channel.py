"""A process's line to the state keeper: a DEALER for its requests and reports, a SUB for what the keeper publishes.

The DEALER is monitored: when its connection closes (over ipc, the keeper process exited), `on_disconnect` is
called at once, so a worker need not wait for the missing heartbeats to notice a keeper that died.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

import trio
import zmq

from gateway.bus import protocol as p
from gateway.bus.zmq_trio import PumpedSocket

log = logging.getLogger("gateway.bus")

# How soon a lost connection to the keeper is tried again (ZeroMQ's default is 100 ms): a restarted keeper is up in
# tens of milliseconds, and over ipc a refused attempt costs a syscall.
RECONNECT_IVL_MS = 10
CLOSE_LINGER_MS = 200  # at close, how long messages still queued for the keeper may take to leave


class KeeperChannel:
    """Both sockets, with every decoded message (direct or published) handed to `on_message`."""

    def __init__(self, ctx: zmq.Context, bus: str, on_message: Callable[[p.Msg], None],
                 on_disconnect: Callable[[], None] | None = None) -> None:
        dealer = ctx.socket(zmq.DEALER)
        sub = ctx.socket(zmq.SUB)
        for sock in (dealer, sub):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.MAXMSGSIZE, p.MAX_MESSAGE)
            sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
        dealer.setsockopt(zmq.SNDHWM, 10000)
        self._on_disconnect = on_disconnect
        self._monitor = None
        if on_disconnect is not None:
            self._monitor = PumpedSocket(dealer.get_monitor_socket(zmq.EVENT_DISCONNECTED), self._on_event)
        dealer.connect(bus)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(p.pub_endpoint(bus))
        self._on_message = on_message
        self._dealer = PumpedSocket(dealer, self._on_frames)
        self._sub = PumpedSocket(sub, self._on_frames)

    def send(self, msg: p.Msg) -> bool:
        """Queue a message for the keeper; False when zmq's queue is full (the keeper is gone)."""
        return self._dealer.send([p.encode(msg)])

    def pump(self) -> None:
        """Hand over whatever has arrived, now (e.g. before judging the keeper silent: a worker that was busy for a
        while has heartbeats waiting that its receiving task did not get to run for)."""
        self._sub.pump()
        self._dealer.pump()

    def _on_frames(self, frames: list[bytes]) -> None:
        try:
            msg = p.decode(frames[-1])
        except p.BadMessage as e:
            log.warning("dropped a bus message: %s", e)
            return
        self._on_message(msg)

    def _on_event(self, frames: list[bytes]) -> None:
        # A monitor event's first frame: the event (uint16) and its value (uint32), native order (ZMQ's
        # zmq_socket_monitor). Parsed here: zmq.utils.monitor would import zmq.asyncio, and asyncio with it.
        if int.from_bytes(frames[0][:2], sys.byteorder) == zmq.EVENT_DISCONNECTED and self._on_disconnect is not None:
            self._on_disconnect()

    async def run(self) -> None:
        """Receive until cancelled; the sockets are closed on the way out."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._dealer.run)
                nursery.start_soon(self._sub.run)
                if self._monitor is not None:
                    nursery.start_soon(self._monitor.run)
        finally:
            if self._monitor is not None:
                self._dealer.sock.disable_monitor()
                self._monitor.close()
            self._dealer.close(linger=CLOSE_LINGER_MS)  # what was queued last (tokens given back) still leaves
            self._sub.close()
