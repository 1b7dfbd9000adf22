"""The state keeper process (`gateway keeper`): owner of the bus and of the state all workers share (state.py).

Workers never wait on it in the common case: they hold token leases and the last published breaker and target
states, and fall back to local shares while it is away (it is restarted by the root supervisor; a new incarnation
id tells workers to resynchronise).

A worker that exits is forgotten (Keeper.peer_gone) as soon as the bus finds it gone: its ROUTER refuses a message
to a peer whose connection closed (ROUTER_MANDATORY), and each closed connection it reports (a socket monitor) has
every known worker sent a heartbeat of its own, which finds the one that left.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import signal
import socket
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import outcome
import trio
import zmq

from gateway.bus import protocol as p
from gateway.bus.admin_server import not_a_socket
from gateway.bus.zmq_trio import PumpedSocket
from gateway.cli import SettingError
from gateway.config import Config, load_config
from gateway.dns import process as dns
from gateway.dns.client import Resolver
from gateway.keeper.redis_level import run_redis_level
from gateway.keeper.saved import encode, read_saved
from gateway.keeper.state import TICK_S, Keeper, ReadConfig
from gateway.metrics import RECORDER
from gateway.node.files import current_config, write_atomically
from gateway.node.orphan import parent_or_exit, stop_when_orphaned

log = logging.getLogger("gateway.keeper")

HEARTBEAT_S = 0.25  # workers declare the keeper lost after KEEPER_LOST_S (three) without one (gateway/state/shared.py)
IDLE_TICK_S = 0.5  # the tick's period while no breaker is away from closed (a breaker leaving closed wakes it at once)
SAVE_EVERY_S = 0.25  # the state file is rewritten at once after a change, then at most this often (breakers can flap)
SAVED_IN = (p.BreakersChanged, p.TargetsChanged, p.UpstreamTargets, p.Snapshot)  # publications that may change it
# After a connection closes, when the workers are looked for (seconds after it): ZeroMQ reports the close just before
# its I/O thread lets go of the peer's id (microseconds later on an idle host), so a second look follows the first.
PEER_CHECKS_S = (0.01, 0.2)


async def serve_keeper(keeper: Keeper, bus: str, ready: Any = None, parent: int | None = None,
                       state_file: str | None = None) -> None:
    """Bind the bus sockets and serve until SIGTERM; with `state_file`, begin from what it holds (the keeper before
    this one saved it) and keep it up to date."""
    saver = _Saver(keeper, state_file) if state_file is not None else None
    if saver is not None:
        saver.restore()
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    pub = ctx.socket(zmq.PUB)
    for sock in (router, pub):
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, p.MAX_MESSAGE)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a message to a peer that is gone raises EHOSTUNREACH (send_to)
    old = os.umask(0o177)
    try:
        for sock, endpoint in ((router, bus), (pub, p.pub_endpoint(bus))):
            try:
                if endpoint.startswith("ipc://"):
                    path = endpoint[len("ipc://"):]
                    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                    if (problem := not_a_socket(path)) is not None:  # (never unlink an operator's file)
                        raise OSError(errno.EEXIST, problem)
                    if os.path.exists(path):
                        os.unlink(path)  # a stale socket: the root refused to start over a live one
                sock.bind(endpoint)
            except (OSError, zmq.ZMQError) as e:
                router.close()
                pub.close()
                ctx.term()
                raise SettingError(e.errno or errno.EINVAL, _bind_failure(bus, endpoint, e)) from None
    finally:
        os.umask(old)

    def publish(msg: p.Msg) -> None:
        pub.send(p.encode(msg), zmq.NOBLOCK)
        if saver is not None and isinstance(msg, SAVED_IN):  # whatever the file holds, workers are told of
            saver.wake()

    def send_to(peer: bytes, msg: p.Msg) -> None:
        """A direct message; a peer found gone is forgotten, and the permits it held go to others."""
        queue = [(peer, msg)]
        while queue:
            to, direct = queue.pop(0)
            try:
                routed.send([to, p.encode(direct)])  # (False, dropped: its queue is full, it hangs or is slow)
            except zmq.ZMQError as e:
                if e.errno != zmq.EHOSTUNREACH:
                    raise
                queue += keeper.peer_gone(to, trio.current_time())

    def on_message(frames: list[bytes]) -> None:
        if len(frames) != 2:
            return
        sender, frame = frames
        try:
            msg = p.decode(frame)
        except p.BadMessage as e:
            log.warning("state keeper: dropped a message from %s: %s", keeper.peers.name(sender), e)
            return
        try:
            dispatch(sender, msg)
        except Exception:  # a bug, not a bad message (handle refuses those): the keeper and its state outlive it
            log.exception("state keeper: a %s from %s could not be handled, and is dropped", type(msg).__name__,
                          keeper.peers.name(sender))

    def dispatch(sender: bytes, msg: p.Msg) -> None:
        if isinstance(msg, p.AdminOp) and msg.cmd == "reload_config":
            reload_requests.send_nowait((sender, msg))  # (_reloads: read off the loop)
            return
        replies, broadcasts = keeper.handle(sender, msg, trio.current_time(), time.time())
        for reply in replies:
            send_to(sender, reply)
        for peer, direct in keeper.outbox():  # recalls, and the grants of requests held for one
            send_to(peer, direct)
        for b in broadcasts:
            publish(b)
            if isinstance(b, p.BreakersChanged):  # maybe one opened: its timer runs from now
                timer.wake()
        if keeper.ledger.recalling:  # requests held for a recall are answered after RECALL_S at most (tick)
            timer.wake()

    reload_requests, reloads = trio.open_memory_channel[tuple[bytes, p.AdminOp]](math.inf)
    routed = PumpedSocket(router, on_message)
    checks = _Wakeup()
    closed = PumpedSocket(router.get_monitor_socket(zmq.EVENT_DISCONNECTED), lambda frames: checks.wake())
    timer = _Timer()
    try:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with dns.serving(keeper.dns_settings) as resolver, trio.open_nursery() as nursery:
                keeper.on_reload = _ResolverRenewal(resolver)
                nursery.start_soon(routed.run)
                nursery.start_soon(closed.run)
                nursery.start_soon(_heartbeats, keeper, publish)
                nursery.start_soon(_reloads, keeper, reloads, send_to, publish)
                nursery.start_soon(_peer_checks, keeper, send_to, checks)
                nursery.start_soon(_ticks, keeper, send_to, publish, timer)
                nursery.start_soon(keeper.drop_ended_limits)
                nursery.start_soon(run_redis_level, keeper, send_to)
                RECORDER.samplers.append(keeper.sample_metrics)
                nursery.start_soon(RECORDER.flush_forever)
                if parent is not None:
                    nursery.start_soon(stop_when_orphaned, parent)
                if saver is not None:
                    nursery.start_soon(saver.run)
                publish(keeper.snapshot())
                log.info("state keeper %s serving the bus on %s", keeper.incarnation, bus)
                if ready is not None:
                    ready()
                async for _ in signals:
                    break
                nursery.cancel_scope.cancel()
                if saver is not None:
                    saver.save()  # a change still waiting for its turn
    finally:
        keeper.on_reload = None
        with contextlib.suppress(ValueError):  # (an in-process keeper: its sampler must not outlive it)
            RECORDER.samplers.remove(keeper.sample_metrics)
        router.disable_monitor()
        closed.close()
        routed.close()
        pub.close(linger=0)
        ctx.term()


def _bind_failure(bus: str, endpoint: str, e: OSError | zmq.ZMQError) -> str:
    """Why the keeper cannot serve gateway.bus on `endpoint` (the bus's own, or its PUB socket's beside it), and what
    to do, as the root says it of gateway.listen."""
    what = endpoint if endpoint == bus else f"{endpoint} (its PUB socket, beside {bus})"
    if e.errno == errno.EEXIST:  # (not_a_socket's reason says what to do)
        return f"gateway.bus: cannot bind {what}: {e.strerror}"
    if e.errno == errno.EADDRINUSE:
        return (f"gateway.bus: cannot bind {what}: address in use; stop what listens there (`ss -ltnp` names it), "
                "or change gateway.bus")
    return f"gateway.bus: cannot bind {what}: {e.strerror or e}; change gateway.bus"


async def _heartbeats(keeper: Keeper, publish: Any) -> None:
    while True:
        keeper.seq += 1
        publish(p.Heartbeat(incarnation=keeper.incarnation, seq=keeper.seq))
        await trio.sleep(HEARTBEAT_S)


async def _reloads(keeper: Keeper, requests: trio.MemoryReceiveChannel[tuple[bytes, p.AdminOp]],
                   send_to: Callable[[bytes, p.Msg], None], publish: Any) -> None:
    """The root's reload_config commands, in order: the config read and compiled in a thread (seconds for a large
    file), applied on the loop, which goes on meanwhile: heartbeats, leases and breakers do not wait for a reload."""
    async for sender, msg in requests:
        read = await trio.to_thread.run_sync(outcome.capture, keeper.read_reload, msg.args, abandon_on_cancel=True)
        try:
            replies, broadcasts = keeper.answer(msg, partial(_apply, keeper, read))
        except Exception:  # a bug (answer says what fails in a command): the keeper and its state outlive it
            log.exception("state keeper: a reload_config could not be handled, and is dropped")
            continue
        for reply in replies:
            send_to(sender, reply)
        for b in broadcasts:
            publish(b)


def _apply(keeper: Keeper, read: outcome.Outcome[ReadConfig]) -> tuple[Any, list[p.Msg]]:
    """A reload's config read in a thread, applied (or what failed in the thread, raised for Keeper.answer)."""
    return keeper.apply_reload(read.unwrap(), trio.current_time())


async def _peer_checks(keeper: Keeper, send_to: Callable[[bytes, p.Msg], None], closed: _Wakeup) -> None:
    """After a connection closed, a heartbeat sent to each known worker itself finds the one gone (send_to)."""
    while True:
        await closed.wait()
        for delay in PEER_CHECKS_S:
            await trio.sleep(delay)
            for peer in keeper.peers.ids():
                send_to(peer, p.Heartbeat(incarnation=keeper.incarnation, seq=keeper.seq))


class _ResolverRenewal:
    """A reload's part in the keeper process: the resolver of its Redis hosts made anew from the reloaded dns_*
    keys, as Kong's reload gives the workers that connect to Redis a new DNS client (dns/process.py renew)."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver

    def __call__(self, config: Config) -> None:
        self.resolver = dns.renew(self.resolver, config.gateway)


class _Wakeup:
    """Woken any number of times while its task is busy: its next wait returns at once, once."""

    def __init__(self) -> None:
        self._woken = trio.Event()

    def wake(self) -> None:
        self._woken.set()

    async def wait(self) -> None:
        await self._woken.wait()
        self._woken = trio.Event()


class _Timer:
    """The keeper's tick: every TICK_S while it has timers running, else every IDLE_TICK_S unless woken."""

    def __init__(self) -> None:
        self._woken = trio.Event()

    def wake(self) -> None:
        self._woken.set()

    async def wait(self, keeper: Keeper) -> None:
        if keeper.ticking():
            await trio.sleep(TICK_S)
            return
        with trio.move_on_after(IDLE_TICK_S):
            await self._woken.wait()
        if self._woken.is_set():
            self._woken = trio.Event()
            await trio.sleep(TICK_S)  # the first due time is at least one tick away


class _Saver:
    """The keeper's state file (saved.py): rewritten when a publication may have changed what it holds, at once,
    then at most every SAVE_EVERY_S; never on a worker's request's way (the keeper writes it in a task of its own)."""

    def __init__(self, keeper: Keeper, path: str) -> None:
        self.keeper = keeper
        self.path = path
        self._woken = trio.Event()
        self._written = b""  # what the file holds, as far as this keeper knows
        self._failing = False

    def restore(self) -> None:
        """Begin from the file, if the keeper before this one left one. (No file and a file of nothing are one: the
        first write waits for something to save, so the keeper's first change is not held back by SAVE_EVERY_S.)"""
        saved = read_saved(self.path)
        if saved is not None:
            self.keeper.restore(saved, trio.current_time(), time.time())
        self._written = encode(self.keeper.saved(trio.current_time(), time.time()))

    def wake(self) -> None:
        self._woken.set()

    def save(self) -> bool:
        """Write the file if what it must hold changed (whether it did); a failure is logged (once until a write
        succeeds)."""
        data = encode(self.keeper.saved(trio.current_time(), time.time()))
        if data == self._written:
            return False
        try:
            write_atomically(self.path, data.decode())
        except OSError as e:
            if not self._failing:
                log.error("state keeper: cannot write its state file %s (%s): a restarted keeper would lose the "
                          "operators' overrides, health verdicts and open breakers", self.path, e.strerror or e)
            self._failing = True
            return False
        self._written, self._failing = data, False
        return True

    async def run(self) -> None:
        while True:
            await self._woken.wait()
            self._woken = trio.Event()
            if self.save():  # (a publication that changed nothing in it, the first snapshot's, delays no change)
                await trio.sleep(SAVE_EVERY_S)


async def _ticks(keeper: Keeper, send_to: Callable[[bytes, p.Msg], None], publish: Any, timer: _Timer) -> None:
    while True:
        await timer.wait(keeper)
        direct, broadcasts = keeper.tick(trio.current_time())
        for worker, msg in direct:
            send_to(worker, msg)
        for b in broadcasts:
            publish(b)


def run_keeper(config_path: str, workers: int) -> int:
    """`gateway keeper`: the process the root supervises."""
    from gateway.node.paths import absolute_endpoint, keeper_state_file
    from gateway.node.start_only import inherited
    from supervisor import notify_ready

    parent = parent_or_exit()
    config_path = current_config(config_path)  # (in the format of the file the root runs from now)
    config = inherited(load_config(config_path))  # a restart after a reload keeps the bus of the start
    bus = absolute_endpoint(config.gateway.bus)
    keeper = Keeper(config, workers, config_path, host=f"{socket.gethostname()}:{bus}")
    # The root gives the keeper its config in the run directory (run/config.current.yaml or .json), which holds the
    # state file too: gateway.pid_file, which names that directory, may have changed in a reload the root has not
    # applied.
    state_file = keeper_state_file(os.path.dirname(os.path.abspath(config_path)))
    trio.run(lambda: serve_keeper(keeper, bus, notify_ready, parent, state_file))
    return 0
