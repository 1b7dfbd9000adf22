"""What rate limits keep while the state keeper is lost and after it is killed and restarted, against Kong's shared
dicts, which no worker's crash touches.

Kong's `policy: local` counters (rate-limiting and response-ratelimiting) live in the `kong_rate_limiting_counters`
shared dict: reading them never fails, so `fault_tolerant: false` never turns into a 500 there, and counts never go
back to 0 mid-window. Here the keeper holds them: each worker admits on its local share, or reads its own view of the
counters, while the keeper is away, and tells a restarted keeper what it added (gateway/ratelimit/lease.py rules 4-5,
gateway/stores/counters.py rules 5-7). The workers talk to the keeper in-process below (as `gateway run` has it):
a keeper killed is one that answers no more, the one restarted in its place another Keeper, a new incarnation.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
import trio

from gateway.bus import protocol as p
from gateway.config import parse_config
from gateway.keeper.state import Keeper
from gateway.pipeline.phases import Exit
from gateway.policies.response_ratelimiting.handler import ResponseRateLimiting
from gateway.policies.response_ratelimiting.schema import ResponseRateLimitingConfig
from gateway.ratelimit import LeaseTable, LimitSpec, Status, Window
from gateway.ratelimit.lease import WAIT_S
from gateway.state.shared import KEEPER_LOST_S, SharedState
from gateway.stores.counters import WorkerCounters

T0 = 1_700_000_040.0  # a whole minute (UTC)
HOUR = (Window("hour", 100_000),)


class Host:
    """One gateway host's workers and the keeper now running."""

    def __init__(self, workers: int) -> None:
        self.workers = [SharedState(f"w{i}", workers) for i in range(workers)]
        self.keeper = self._keeper()
        self.up = True
        for worker in self.workers:
            worker._send = self._line(worker)
            worker._local = self  # store calls go out at once, answered within the send
            worker.on_message(p.Heartbeat(incarnation=self.keeper.incarnation))

    def _keeper(self) -> Keeper:
        return Keeper(parse_config("_format_version: '3.0'\n"), workers=len(self.workers))

    def _line(self, worker: SharedState) -> Any:
        def send(msg: p.Msg) -> bool:
            if not self.up:
                return False
            replies, broadcasts = self.keeper.handle(worker.worker_id.encode(), msg, trio.current_time(), time.time())
            for reply in replies:
                worker.on_message(reply)
            for each in self.workers:
                for broadcast in broadcasts:
                    each.on_message(broadcast)
            return True

        return send

    def kill(self) -> None:
        """kill -9: the workers' connections close."""
        self.up = False
        for worker in self.workers:
            worker.keeper_disconnected()

    def restart(self) -> None:
        """The root starts a new keeper; the workers hear its first heartbeat."""
        self.keeper = self._keeper()
        self.up = True
        for worker in self.workers:
            worker.on_message(p.Heartbeat(incarnation=self.keeper.incarnation))

    def counter(self, key: str) -> int:
        return self.keeper.counters.get(key, time.time())


class Exchange(SimpleNamespace):
    """What response-ratelimiting reads of a request, and what it answered (a 500, a 429)."""

    def __init__(self) -> None:
        super().__init__(consumer=None, client_ip="10.0.0.1", request=SimpleNamespace(headers=[]), state=None,
                         answered=None)

    async def respond_error(self, status: int, message: str | None = None, extra: Any = None) -> None:
        self.answered = (status, message)


def video_limit(shared: SharedState, hour: int) -> ResponseRateLimiting:
    """response-ratelimiting, policy local, `video` limited per hour, without fault_tolerant."""
    config = msgspec.convert({"limits": {"video": {"hour": hour}}, "fault_tolerant": False},
                             ResponseRateLimitingConfig)
    return ResponseRateLimiting(config, "pid", shared)


async def request(plugin: ResponseRateLimiting, cost: int = 1) -> Exchange:
    """A request through access, the upstream's response costing `cost` videos, and the log step; a 429 the
    response became is in `answered`."""
    ex = Exchange()
    if await plugin.access(ex):
        return ex
    try:
        plugin.header_filter(ex, 200, [(b"x-kong-limit", b"video=%d" % cost)])
    except Exit as stop:
        ex.answered = (stop.status, None)
    plugin.log(ex, 0.0, 0.0, 200)
    return ex


def upstream_remaining(ex: Exchange) -> bytes:
    return dict(ex.request.headers)[b"x-ratelimit-remaining-video"]


# ---- rate-limiting ----------------------------------------------------------------------------------------------


def test_rate_limiting_local_without_fault_tolerant_admits_on_the_local_share_while_the_keeper_is_lost():
    """Kong 3.9.3 kong/plugins/rate-limiting/policies/init.lua:318-327: policy local's usage is shm:get, which no
    process's crash makes fail; handler.lua:143-146 raises (a 500) only when usage fails."""
    table = LeaseTable("w1", 2)
    table.fallback(True, 2)
    assert table.take("k", LimitSpec(windows=HOUR, fault_tolerant=False), 0.0, T0).status is Status.ADMIT


def test_rate_limiting_local_without_fault_tolerant_admits_on_the_local_share_when_the_keeper_is_silent():
    """The same (policies/init.lua:318-327) for a keeper silent on a key through a request's whole wait."""
    spec = LimitSpec(windows=HOUR, fault_tolerant=False)
    table = LeaseTable("w1", 2)
    table.take("k", spec, 0.0, T0)
    table.refills(0.0)
    assert table.take("k", spec, WAIT_S, T0 + WAIT_S, waited=True, final=True).status is Status.ADMIT


def test_rate_limiting_redis_without_fault_tolerant_admits_on_the_local_share_while_the_keeper_is_lost():
    """Under policy redis a lost keeper is not Redis failing (Kong's workers reach Redis themselves, and answer 500
    only when it cannot be read, handler.lua:143-146): the share admits, as under policy local. (A live keeper
    silent on the key, its Redis slow, is the 500: test_rl_lease.py.)"""
    table = LeaseTable("w1", 2)
    table.fallback(True, 2)
    spec = LimitSpec(windows=HOUR, fault_tolerant=False, store="plugin-1")
    assert table.take("k", spec, 0.0, T0).status is Status.ADMIT


# ---- response-ratelimiting ----------------------------------------------------------------------------------------


async def test_response_ratelimiting_local_without_fault_tolerant_counts_on_while_the_keeper_is_away():
    """Kong 3.9.3 kong/plugins/response-ratelimiting/policies/init.lua:150-160 (local usage: shm:get) and
    access.lua:81-85 (a 500 only when usage fails): the worker reads what it knows, the keeper's last answer and
    its own costs since."""
    host = Host(1)
    plugin = video_limit(host.workers[0], 3)
    assert upstream_remaining(await request(plugin)) == b"3"
    host.kill()
    during = [await request(plugin) for _ in range(3)]
    assert [(ex.answered, upstream_remaining(ex)) for ex in during] == [(None, b"2"), (None, b"1"), ((429, None), b"0")]


async def test_response_ratelimiting_counts_are_not_handed_out_again_after_the_keeper_is_killed():
    """Kong: the local counters are in the kong_rate_limiting_counters shm (policies/init.lua:140 shm:incr, 154
    shm:get), which outlives any worker: a used-up `video` stays used up for its hour. Two workers used it up; the
    restarted keeper hears what each added."""
    host = Host(2)
    plugins = [video_limit(worker, 3) for worker in host.workers]
    assert [(await request(plugins[i % 2])).answered for i in range(4)] == [None, None, None, (429, None)]
    host.kill()
    host.restart()
    assert (await request(plugins[0])).answered == (429, None)
    assert (await request(plugins[1])).answered == (429, None)


async def test_costs_added_while_the_keeper_is_away_reach_it_when_it_is_back():
    """The keeper hung (no heartbeat for KEEPER_LOST_S) and answers again: what the worker added meanwhile is sent
    to it then, once."""
    host = Host(1)
    worker = host.workers[0]
    worker.counters_add([("c", 1, 3600.0)])
    worker.flush(trio.current_time() + KEEPER_LOST_S + 1)  # no heartbeat: lost
    assert not worker.keeper_up
    worker.counters_add([("c", 2, 3600.0)])
    worker.on_message(p.Heartbeat(incarnation=host.keeper.incarnation))
    worker.flush(trio.current_time())
    worker.flush(trio.current_time())
    assert host.counter("c") == 3


async def test_costs_added_while_the_keeper_is_away_are_told_once_to_the_restarted_one():
    host = Host(1)
    worker = host.workers[0]
    worker.counters_add([("c", 1, 3600.0)])
    host.kill()
    worker.counters_add([("c", 2, 3600.0)])
    host.restart()
    worker.flush(trio.current_time())
    assert host.counter("c") == 3


def test_an_add_sent_to_the_keeper_before_this_one_is_dropped():
    """ZeroMQ hands what a worker sent to a keeper that died before reading it to the next one; the worker's
    restate already holds it (gateway/stores/counters.py rule 5)."""
    keeper = Keeper(parse_config("_format_version: '3.0'\n"), workers=1)
    wall = time.time()
    keeper.handle(b"w1", p.CountersAdd(items=[("c", 5, 60.0)], keeper="an-older-one"), 0.0, wall)
    keeper.handle(b"w1", p.CountersAdd(items=[("c", 1, 60.0)], keeper=keeper.incarnation), 0.0, wall)
    keeper.handle(b"w1", p.CountersAdd(items=[("c", 1, 60.0)]), 0.0, wall)
    assert keeper.counters.get("c", wall) == 2


def test_a_worker_restates_each_live_key_with_the_time_it_has_left():
    """shm:incr's ttl runs from a key's first increment: the restarted keeper's key ends where the old one did, and a
    key whose period has ended is not restated."""
    counts = WorkerCounters()
    counts.add([("hour", 2, 10.0), ("second", 1, 1.0)], 100.0, sent=True)
    counts.add([("hour", 1, 10.0)], 104.0, sent=True)
    assert counts.restate(105.0) == [("hour", 3, pytest.approx(5.0))]


def test_a_worker_remembers_no_more_keys_than_the_keeper_holds():
    """Bounded as the keeper's counters are (gateway/stores/counters.py rule 3), the adds kept for an away keeper
    with them: whatever keys clients make up."""
    counts = WorkerCounters(capacity=4096)
    for i in range(1000):
        counts.add([(f"key-{i}", 1, 60.0)], 0.0, sent=False)
    assert counts.size <= 4096 and len(counts) < 1000
    assert len(counts.take_unsent(1.0)) == len(counts)
