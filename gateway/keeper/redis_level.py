"""The keeper's Redis level (rate-limiting's policy redis): the due block calls run off every worker's request
path, the requests that waited for them answered, a Redis too slow noticed. One client per plugin's Redis."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import trio

from gateway.bus import protocol as p
from gateway.http.net import is_ip
from gateway.keeper.state import Keeper, log_store_down
from gateway.metrics import REDIS_FALLBACK
from gateway.ratelimit.redis_client import RedisSettings, RedisStore, StoreError
from gateway.ratelimit.redis_script import Call

log = logging.getLogger("gateway.keeper")

REDIS_TICK_S = 0.05  # the Redis level looks for due calls, overdue requests and expired pools this often


async def run_redis_level(keeper: Keeper, deliver: Callable[[bytes, p.Msg], None],
                          task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """The keeper's Redis level (policy redis): runs the due block calls off every worker's request path, answers
    the requests that waited for them, and notices a Redis that is too slow. One client per plugin's Redis."""
    clients: dict[str, tuple[tuple[RedisSettings, int], RedisStore, trio.CancelScope]] = {}  # by plugin (_made_for)
    reported: dict[str, int] = {}
    async with trio.open_nursery() as nursery:
        task_status.started()
        next_tick = 0.0
        while True:
            for name, shared in keeper.stores.items():
                known = clients.get(name)
                made_for = _made_for(shared.settings, keeper.reloads)
                if known is None or known[0] != made_for:
                    if known is not None:  # calls still under way on the old client end first (a reload's
                        nursery.start_soon(_retire, known[1], known[2])  # retiring workers hand back tokens so)
                    client = RedisStore(shared.settings)
                    scope = trio.CancelScope()
                    nursery.start_soon(_serve_client, client, scope)
                    clients[name] = (made_for, client, scope)
            if not keeper.stores:  # no policy redis: sleep until a reload brings one (configure wakes us)
                await keeper.redis_wake.wait()
            with trio.move_on_after(REDIS_TICK_S):
                await keeper.redis_wake.wait()
            keeper.redis_wake = trio.Event()
            now, wall = trio.current_time(), time.time()
            if now >= next_tick and keeper.stores:
                next_tick = now + REDIS_TICK_S
                keeper.ledger.remote_tick(now, wall)
                for sender, msg in keeper.overdue(now, wall):
                    deliver(sender, msg)
                for name, total in keeper.ledger.fallback_granted().items():
                    if total > reported.get(name, 0):
                        REDIS_FALLBACK.labels(name).inc(total - reported.get(name, 0))
                        reported[name] = total
            for key, store, call in keeper.ledger.remote_calls(now, wall):
                entry = clients.get(store)
                if entry is not None:
                    nursery.start_soon(_remote_call, keeper, entry[1], store, key, call, deliver)


def _made_for(settings: RedisSettings, reloads: int) -> tuple[RedisSettings, int]:
    """What a client serves: its settings, and for a host name the reload whose resolver found its address (Kong's
    reload connects from new workers, resolving the name with the reloaded dns_* keys)."""
    return settings, 0 if is_ip(settings.host.strip("[]")) else reloads


async def _serve_client(client: RedisStore, scope: trio.CancelScope) -> None:
    with scope:
        await client.serve()


async def _retire(client: RedisStore, scope: trio.CancelScope) -> None:
    """Close a client whose settings a reload replaced once the calls it has under way are over: each ends within
    the Redis timeout (closing it at once failed them, and with them the requests they answered, as 500s)."""
    await trio.sleep(client.settings.timeout_s + 0.5)
    scope.cancel()


async def _remote_call(keeper: Keeper, client: RedisStore, store: str, key: str, call: Call,
                       deliver: Callable[[bytes, p.Msg], None]) -> None:
    """One block call; its outcome is applied to the ledger and the requests waiting on the key are answered."""
    try:
        reply = await client.take(call, len(call.keys) - 3)
    except StoreError as e:
        now, wall = trio.current_time(), time.time()
        if keeper.ledger.remote_failed(key, str(e), now):
            log_store_down(keeper, store)
        answers = keeper.answer_pending(keeper.ledger.remote_keys(store), now, wall)
    else:
        now, wall = trio.current_time(), time.time()
        if keeper.ledger.remote_applied(key, reply, now, wall):
            log.warning("rate-limiting %s: Redis at %s answers again; resynchronising", store,
                        client.settings.address)
        answers = keeper.answer_pending([key], now, wall)
    for sender, msg in answers:
        deliver(sender, msg)
    keeper.redis_wake.set()
