"""A satellite's line to the state keeper (the health checker's, the discovery process's): its reports go out on a
KeeperChannel, and its whole view again whenever a new keeper incarnation is seen (so a restarted keeper learns the
state again) and every RESEND_S (reports are idempotent, and one sent while the keeper's sockets were coming back may
be lost, which would leave the new keeper with a wrong view until the next change)."""

from __future__ import annotations

from collections.abc import Callable

import trio
import zmq

from gateway.bus import protocol as p
from gateway.bus.channel import KeeperChannel

RESEND_S = 1.0


class Reporter:
    """`on_message` gets what the keeper sends and publishes but heartbeats; `resend` sends the whole view."""

    def __init__(self, ctx: zmq.Context, bus: str, on_message: Callable[[p.Msg], None],
                 resend: Callable[[], None]) -> None:
        self.channel = KeeperChannel(ctx, bus, self._on_message)
        self._forward = on_message
        self._resend = resend
        self.incarnation = ""

    def send(self, msg: p.Msg) -> None:
        self.channel.send(msg)

    async def run(self) -> None:
        """The channel, and the periodic resend."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.channel.run)
            while True:
                await trio.sleep(RESEND_S)
                self._resend()

    def _on_message(self, msg: p.Msg) -> None:
        if isinstance(msg, p.Heartbeat):
            if msg.incarnation != self.incarnation:
                self.incarnation = msg.incarnation
                self._resend()
        else:
            self._forward(msg)
