"""A worker's line to the state keeper: noticing a keeper that exited (its connection closes) or hangs (no heartbeat
for KEEPER_LOST_S), falling back to local shares, and resynchronising with the next keeper."""

from __future__ import annotations

import pytest
import trio
import trio.testing
import zmq

from gateway.bus import protocol as p
from gateway.bus.channel import KeeperChannel
from gateway.ratelimit import LimitSpec, Status, Window
from gateway.state.shared import KEEPER_LOST_S, SharedState

SPEC = LimitSpec(windows=(Window("minute", 100),))


def connected(incarnation: str = "k1") -> tuple[SharedState, list[p.Msg]]:
    shared = SharedState("w1", 2)
    sent: list[p.Msg] = []
    shared._send = lambda msg: sent.append(msg) or True
    shared.on_message(p.Heartbeat(incarnation=incarnation))
    return shared, sent


async def test_a_closed_connection_means_local_shares_at_once():
    shared, _ = connected()
    shared.keeper_disconnected()
    assert not shared.keeper_up
    now = trio.current_time()
    assert shared.leases.take("k", SPEC, now, 1e9).status is Status.ADMIT  # on the local share, no waiting


async def test_a_closed_connection_ends_the_waits_for_grants():
    shared, _ = connected()
    assert shared.leases.take("k", SPEC, trio.current_time(), 1e9).status is Status.WAIT
    async with trio.open_nursery() as nursery:
        nursery.start_soon(shared.wait_grant, "k", 10.0)
        await trio.sleep(0.01)
        with trio.fail_after(1):
            shared.keeper_disconnected()
    assert shared.leases.take("k", SPEC, trio.current_time(), 1e9, waited=True).status is Status.ADMIT


async def test_a_heartbeat_the_exited_keeper_sent_before_it_went_is_ignored():
    shared, _ = connected("k1")
    shared.keeper_disconnected()
    shared.on_message(p.Heartbeat(incarnation="k1"))
    assert not shared.keeper_up


async def test_the_next_keepers_heartbeat_resynchronises_and_asks_again_for_leases():
    shared, sent = connected("k1")
    shared.leases.take("k", SPEC, trio.current_time(), 1e9)
    shared.flush(trio.current_time())  # asks k1
    shared.keeper_disconnected()
    sent.clear()
    shared.on_message(p.Heartbeat(incarnation="k2"))
    assert shared.keeper_up and shared.incarnation == "k2"
    assert [type(m) for m in sent] == [p.Hello, p.GiveBack]  # the leases asked of k1 are asked for when next due


async def test_a_replaced_keeper_gets_the_requests_the_old_one_never_answered():
    shared, sent = connected("k1")
    shared.leases.take("k", SPEC, trio.current_time(), 1e9)
    shared.flush(trio.current_time())
    sent.clear()
    shared.on_message(p.Heartbeat(incarnation="k2"))  # restarted faster than KEEPER_LOST_S, no disconnect seen
    assert [type(m) for m in sent] == [p.Hello, p.GiveBack, p.AskLeases]
    assert [r.key for r in sent[-1].requests] == ["k"]


async def test_the_same_keeper_heard_again_after_the_stale_period_is_back(autojump_clock):
    shared, _ = connected("k1")
    shared.keeper_disconnected()
    await trio.sleep(KEEPER_LOST_S + 0.01)
    shared.on_message(p.Heartbeat(incarnation="k1"))
    assert shared.keeper_up


async def test_a_hanging_keeper_is_lost_after_keeper_lost_s_without_heartbeat(autojump_clock):
    shared, _ = connected()
    await trio.sleep(KEEPER_LOST_S / 2)
    shared.flush(trio.current_time())
    assert shared.keeper_up
    await trio.sleep(KEEPER_LOST_S)
    shared.flush(trio.current_time())
    assert not shared.keeper_up


async def test_a_quiet_worker_flushes_when_the_keepers_heartbeat_wakes_it_and_when_one_is_overdue(autojump_clock):
    shared, _ = connected()
    start = trio.current_time()
    flushes: list[float] = []
    flush = shared.flush
    shared.flush = lambda now: (flushes.append(now - start), flush(now))  # type: ignore[method-assign]
    beats = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(shared._periodic)
        for _ in range(10):  # a second of heartbeats, 0.1 s apart
            await trio.sleep(0.1)
            beats.append(trio.current_time() - start)
            shared.on_message(p.Heartbeat(incarnation="k1"))
            await trio.testing.wait_all_tasks_blocked()
        settled = [t for t in flushes if t > 0.15]  # after the back-off from FLUSH_S (0.02, 0.06, 0.14)
        assert settled == pytest.approx(beats[1:])  # no wake-up of its own between two heartbeats
        await trio.sleep(KEEPER_LOST_S - 0.05)  # the keeper hangs: nothing until its heartbeat is overdue
        assert flushes[-1] == pytest.approx(beats[-1]) and shared.keeper_up
        await trio.sleep(0.1)
        assert flushes[-1] == pytest.approx(beats[-1] + KEEPER_LOST_S + 0.01)
        assert not shared.keeper_up
        nursery.cancel_scope.cancel()


async def test_a_quiet_worker_sends_the_first_outcome_after_a_quiet_spell_at_once(autojump_clock):
    """Waiting for the keeper's next heartbeat is for a worker with nothing to say: a failure (a breaker may be
    about to open) does not wait for it."""
    shared, sent = connected()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(shared._periodic)
        await trio.sleep(0.3)  # backed off: now waiting for a heartbeat
        assert shared._beat is not None
        failed_at = trio.current_time()
        shared.outcome("up|127.0.0.1:1", ok=False, probe=False)
        await trio.testing.wait_all_tasks_blocked()
        [outcomes] = [m for m in sent if isinstance(m, p.Outcomes)]
        assert outcomes.items[0].failures == 1 and trio.current_time() == failed_at
        nursery.cancel_scope.cancel()


async def test_the_channel_reports_the_keepers_socket_closing(tmp_path):
    """Real sockets: a ROUTER standing in for the keeper is closed; the worker's channel calls on_disconnect."""
    ctx = zmq.Context()
    endpoint = f"ipc://{tmp_path}/bus.sock"
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(endpoint)
    disconnected = trio.Event()
    channel = KeeperChannel(ctx, endpoint, lambda msg: None, disconnected.set)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(channel.run)
            channel.send(p.Hello(worker="w1"))
            with trio.fail_after(5):
                while not router.poll(0):
                    await trio.sleep(0.01)
            assert p.decode(router.recv_multipart()[-1]) == p.Hello(worker="w1")
            assert not disconnected.is_set()
            router.close()
            with trio.fail_after(5):
                await disconnected.wait()
            nursery.cancel_scope.cancel()
    finally:
        router.close()
        ctx.term()
