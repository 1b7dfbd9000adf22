"""The root's request/reply line to the state keeper, for operators' commands on shared state.

A command the keeper did not answer in time is reported failed, and must then change nothing: it may still wait in
the line (a keeper stopped or busy for a while reads it later), so it carries a deadline past which the keeper
refuses it, set before the caller gives up by the share of the timeout its answer needs to come back.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import trio
import zmq

from gateway.bus import protocol as p
from gateway.bus.channel import RECONNECT_IVL_MS
from gateway.bus.zmq_trio import PumpedSocket

REPLY_SHARE = 0.25  # of a call's timeout, left after the command's deadline for the keeper's answer to arrive


class KeeperUnavailable(Exception):
    """The keeper did not answer in time (it may be restarting)."""


class KeeperLink:
    """A DEALER to the keeper's ROUTER; `run` must be running in a nursery for replies to arrive."""

    def __init__(self, ctx: zmq.Context, endpoint: str) -> None:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 100)
        sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
        sock.connect(endpoint)
        self._sock = PumpedSocket(sock, self._on_message)
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[trio.Event, list[p.AdminResult]]] = {}

    async def run(self) -> None:
        await self._sock.run()

    def _on_message(self, frames: list[bytes]) -> None:
        try:
            msg = p.decode(frames[-1])
        except p.BadMessage:
            return
        if isinstance(msg, p.AdminResult) and msg.id in self._waiting:
            event, box = self._waiting[msg.id]
            box.append(msg)
            event.set()

    async def call(self, cmd: str, args: dict[str, Any], timeout: float = 2.0) -> p.AdminResult:
        """The keeper's answer to `cmd`; KeeperUnavailable when none came within `timeout` seconds (the keeper then
        never carries it out, but for the commands in protocol.LATE_APPLIED)."""
        call_id = next(self._ids)
        event = trio.Event()
        box: list[p.AdminResult] = []
        self._waiting[call_id] = (event, box)
        deadline = time.monotonic() + timeout * (1 - REPLY_SHARE)
        try:
            if not self._sock.send([p.encode(p.AdminOp(cmd=cmd, args=args, id=call_id, deadline=deadline))]):
                raise KeeperUnavailable("the state keeper is not reachable")
            with trio.move_on_after(timeout):
                await event.wait()
                return box[0]
            raise KeeperUnavailable(f"the state keeper did not answer within {timeout:g}s (it may be restarting)"
                                    + ("" if cmd in p.LATE_APPLIED else "; nothing was changed"))
        finally:
            del self._waiting[call_id]

    def close(self) -> None:
        self._sock.close()
