"""Host-wide stores (Kong's shared dicts) held by the state keeper: the sans-I/O structures, the keeper's handling of
their messages, and a worker's calls to them, in-process and over a real ZeroMQ bus shared by two workers."""

from __future__ import annotations

from math import inf

import pytest
import trio
import zmq

import gateway.stores.counters as counters_module
from gateway.bus import protocol as p
from gateway.config import parse_config
from gateway.keeper.process import serve_keeper
from gateway.keeper.state import Keeper
from gateway.metrics import RECORDER
from gateway.policies.proxy_cache.entry import Entry, encode
from gateway.policies.response_ratelimiting.usage import counter_key
from gateway.state import shared as shared_module
from gateway.state.shared import CALL_TIMEOUT_S, SharedState
from gateway.stores import Counters, HostCache
from gateway.stores.cache import ENTRY_OVERHEAD, SIZES

WALL = 1_700_000_000.0  # the Unix time the keeper is handed
PLUGIN_ID = "7f3c8a52-1d2e-4f5a-9b6c-0d1e2f3a4b5c"
CONFIG = """
_format_version: '3.0'
services: [{name: s, url: 'http://127.0.0.1:9'}]
routes: [{name: r, service: s, paths: ['/']}]
"""


def cost(key: str, value: bytes) -> int:
    return len(key) + len(value) + ENTRY_OVERHEAD


def counter_cost(key: str) -> int:
    """What a shared dict is charged for a counter: its key, its number (a double), the shm's node."""
    return len(key) + 8 + ENTRY_OVERHEAD


# ---- HostCache: an nginx shared dict --------------------------------------------------------------------------------


def test_an_absent_key_is_none():
    assert HostCache().get("k", 0.0) is None


def test_a_stored_entry_is_read_back_until_its_ttl_ends():
    cache = HostCache()
    assert cache.set("k", b"v", 10.0, now=100.0)
    assert cache.get("k", 109.9) == b"v"
    assert cache.get("k", 110.0) is None
    assert len(cache) == 0 and cache.size == 0  # an expired entry found is dropped


def test_ttl_zero_never_expires():
    cache = HostCache()
    cache.set("k", b"v", 0, now=0.0)
    assert cache.get("k", 1e12) == b"v"


def test_a_set_replaces_the_value_and_its_ttl():
    cache = HostCache()
    cache.set("k", b"old", 1.0, now=0.0)
    cache.set("k", b"newer", 10.0, now=0.0)
    assert cache.get("k", 5.0) == b"newer"
    assert cache.size == cost("k", b"newer")


def test_a_full_cache_evicts_the_least_recently_used_first():
    one = cost("a", b"x" * 100)
    cache = HostCache(capacity=3 * one)
    for key in "abc":
        cache.set(key, b"x" * 100, 0, now=0.0)
    assert cache.get("a", 0.0) is not None  # a is now the most recently used; b the least
    cache.set("d", b"x" * 100, 0, now=0.0)
    assert [cache.get(k, 0.0) is not None for k in "abcd"] == [True, False, True, True]
    assert cache.size == 3 * one


def test_an_entry_larger_than_the_whole_cache_is_refused_and_evicts_nothing():
    cache = HostCache(capacity=1000)
    cache.set("a", b"x", 0, now=0.0)
    assert not cache.set("big", b"x" * 1000, 0, now=0.0)
    assert cache.get("a", 0.0) == b"x" and cache.get("big", 0.0) is None


def test_delete_and_flush_remove_entries_and_their_size():
    cache = HostCache()
    for key in "abc":
        cache.set(key, b"v", 0, now=0.0)
    assert cache.delete("a") and not cache.delete("a")
    assert cache.flush() == 2
    assert len(cache) == 0 and cache.size == 0


# ---- Counters: shared dict incr with init_ttl -----------------------------------------------------------------------


def test_a_counter_starts_at_its_first_increment_and_accumulates():
    counters = Counters()
    assert counters.get("k", 0.0) == 0
    assert counters.add("k", 3, 60.0, now=0.0) == 3
    assert counters.add("k", 2, 60.0, now=1.0) == 5
    assert counters.get("k", 1.0) == 5


def test_a_later_increment_does_not_move_the_end_of_a_counter():
    counters = Counters()
    counters.add("k", 1, 10.0, now=0.0)
    counters.add("k", 1, 10.0, now=9.0)
    assert counters.get("k", 9.9) == 2
    assert counters.get("k", 10.0) == 0


def test_an_expired_counter_starts_again_from_the_increment():
    counters = Counters()
    counters.add("k", 5, 1.0, now=0.0)
    assert counters.add("k", 2, 1.0, now=1.5) == 2
    assert counters.get("k", 2.4) == 2 and counters.get("k", 2.5) == 0


def test_a_counter_with_ttl_zero_never_ends():
    counters = Counters()
    counters.add("k", 1, 0, now=0.0)
    assert counters.get("k", inf) == 0 and counters.get("k", 1e15) == 1


def test_sweep_forgets_expired_counters_only():
    counters = Counters()
    counters.add("old", 1, 1.0, now=0.0)
    counters.add("live", 1, 100.0, now=0.0)
    assert counters.sweep(5.0) == 1
    assert len(counters) == 1 and counters.get("live", 5.0) == 1


def test_adding_sweeps_expired_counters_every_sweep_every_adds(monkeypatch):
    monkeypatch.setattr(counters_module, "SWEEP_EVERY", 3)
    counters = Counters()
    counters.add("a", 1, 1.0, now=0.0)
    counters.add("b", 1, 1.0, now=0.0)
    counters.add("c", 1, 1.0, now=5.0)  # the third add sweeps a and b first
    assert len(counters) == 1


def test_a_full_dict_drops_the_least_recently_incremented_counter():
    """Kong's local policies count with `shm:incr` (kong/plugins/response-ratelimiting/policies/init.lua:140).
    lua-nginx-module's incr moves a live key to the head of the dict's LRU queue (src/ngx_http_lua_shdict.c:1797-1798)
    and a full dict drops the last of that queue, the least recently used (ngx_http_lua_shdict_expire:262, called
    with n == 0 from incr at :1863): an active client's long-period counter outlives a flood of new keys, though it
    was the first one in."""
    counters = Counters(capacity=3 * counter_cost("active"))
    counters.add("active", 5, 3600.0, now=0.0)
    counters.add("idle-a", 1, 3600.0, now=1.0)
    counters.add("idle-b", 1, 3600.0, now=2.0)
    counters.add("active", 5, 3600.0, now=3.0)
    counters.add("newbie", 1, 3600.0, now=4.0)
    assert [counters.get(k, 5.0) for k in ("active", "idle-a", "idle-b", "newbie")] == [10, 0, 1, 1]


def test_reading_a_live_counter_makes_it_the_most_recently_used():
    """`shm:get` (policies/init.lua:154) goes through ngx_http_lua_shdict_lookup, which moves the live key it finds
    to the head of the LRU queue (src/ngx_http_lua_shdict.c:219-220), so a counter read on every request is not the
    one a full dict drops."""
    counters = Counters(capacity=counter_cost("read") + counter_cost("other"))
    counters.add("read", 1, 60.0, now=0.0)
    counters.add("other", 1, 60.0, now=0.0)
    assert counters.get("read", 1.0) == 1
    counters.add("new", 1, 60.0, now=2.0)
    assert [counters.get(k, 3.0) for k in ("read", "other", "new")] == [1, 0, 1]


def test_counters_are_bounded_by_bytes_so_a_long_key_drops_as_many_short_ones_as_it_needs():
    """A shared dict is bounded by its size, not by a number of keys (`lua_shared_dict kong_rate_limiting_counters
    12m`, kong/templates/nginx_kong.lua:19): each counter is charged its key, its number and the shm's node, as
    HostCache charges an entry, and a new key evicts least recently used ones until it fits."""
    counters = Counters(capacity=3 * counter_cost("a"))
    for key in ("a", "b", "c"):
        counters.add(key, 1, 60.0, now=0.0)
    long_key = "x" * (2 * counter_cost("a") - counter_cost(""))  # as much as two one-letter counters
    counters.add(long_key, 1, 60.0, now=1.0)
    assert [counters.get(k, 2.0) for k in ("a", "b", "c", long_key)] == [0, 0, 1, 1]
    assert counters.size == counter_cost("c") + counter_cost(long_key) == counters.capacity


def test_swept_counters_give_their_bytes_back():
    """Expired counters leave the dict (rule 4), and what they were charged with them: keys added after a sweep fit
    beside the live ones without evicting any."""
    counters = Counters(capacity=2 * counter_cost("k0"))
    counters.add("k0", 1, 1.0, now=0.0)
    counters.add("k1", 1, 100.0, now=0.0)
    assert counters.sweep(5.0) == 1 and counters.size == counter_cost("k1")
    counters.add("k2", 1, 100.0, now=5.0)
    assert [counters.get(k, 6.0) for k in ("k1", "k2")] == [1, 1]


def test_a_key_larger_than_the_whole_dict_is_counted_nowhere_and_evicts_nothing():
    """A node that cannot fit in the shm even empty is not stored (the shm's "no memory", as HostCache refuses an
    entry larger than itself): the counters already held stay."""
    counters = Counters(capacity=2 * counter_cost("k"))
    counters.add("k", 1, 60.0, now=0.0)
    assert counters.add("x" * counters.capacity, 1, 60.0, now=0.0) == 1
    assert len(counters) == 1 and counters.get("k", 1.0) == 1 and counters.size == counter_cost("k")


# ---- the keeper's handling ------------------------------------------------------------------------------------------


def keeper() -> Keeper:
    return Keeper(parse_config(CONFIG), workers=2)


def test_the_keeper_answers_a_fetch_with_the_entry_stored_by_another_worker():
    k = keeper()
    assert k.handle(b"w1", p.CacheStore(dictionary="kong_db_cache", key="x", entry=b"e", ttl=5), 0.0, 0.0) == ([], [])
    replies, _ = k.handle(b"w2", p.CacheFetch(id=7, dictionary="kong_db_cache", key="x"), 1.0, 0.0)
    assert replies == [p.CacheEntry(id=7, entry=b"e")]


def test_the_keeper_answers_none_for_an_unknown_dictionary_or_key():
    k = keeper()
    replies, _ = k.handle(b"w1", p.CacheFetch(id=1, dictionary="nope", key="x"), 0.0, 0.0)
    assert replies == [p.CacheEntry(id=1, entry=None)]


def test_the_keeper_purges_one_entry_or_flushes_the_dictionary():
    k = keeper()
    for key in ("a", "b"):
        k.handle(b"w1", p.CacheStore(dictionary="kong", key=key, entry=b"e"), 0.0, 0.0)
    k.handle(b"w1", p.CachePurge(dictionary="kong", key="a"), 0.0, 0.0)
    assert len(k.caches["kong"]) == 1
    k.handle(b"w1", p.CachePurge(dictionary="kong"), 0.0, 0.0)
    assert len(k.caches["kong"]) == 0


def test_the_keeper_adds_counters_from_every_worker_and_reports_them():
    k = keeper()
    k.handle(b"w1", p.CountersAdd(items=[("a", 2, 60.0), ("b", 1, 60.0)]), 0.0, 0.0)
    k.handle(b"w2", p.CountersAdd(items=[("a", 3, 60.0)]), 1.0, 0.0)
    replies, _ = k.handle(b"w1", p.CountersGet(id=4, keys=["a", "b", "c"]), 2.0, 0.0)
    assert replies == [p.CounterValues(id=4, values=[5, 1, 0])]


# Kong's shared dicts expire by the wall clock: ngx.shared.DICT:set and incr's init_ttl stamp `expires` with
# ngx_timeofday() and a get compares with it again (lua-nginx-module ngx_http_lua_shdict.c:205-213, 1547-1550), so
# the keeper's dictionaries follow the wall clock it is handed, not its monotonic one, when the two part (an NTP step)


def test_a_cached_entry_is_gone_once_the_wall_clock_passes_its_ttl_whatever_the_monotonic_clock_says():
    k = keeper()
    k.handle(b"w1", p.CacheStore(dictionary="kong_db_cache", key="k", entry=b"e", ttl=60), 5000.0, WALL)
    replies, _ = k.handle(b"w2", p.CacheFetch(id=1, dictionary="kong_db_cache", key="k"), 5001.0, WALL + 3601)
    assert replies == [p.CacheEntry(id=1, entry=None)]


def test_a_cached_entry_lives_until_the_wall_clock_passes_its_ttl_when_that_clock_steps_back():
    k = keeper()
    k.handle(b"w1", p.CacheStore(dictionary="kong_db_cache", key="k", entry=b"e", ttl=60), 5000.0, WALL)
    replies, _ = k.handle(b"w2", p.CacheFetch(id=1, dictionary="kong_db_cache", key="k"), 5061.0, WALL - 3539)
    assert replies == [p.CacheEntry(id=1, entry=b"e")]


def test_a_counter_expires_by_the_wall_clock():
    k = keeper()
    k.handle(b"w1", p.CountersAdd(items=[("a", 2, 60.0)]), 5000.0, WALL)
    replies, _ = k.handle(b"w1", p.CountersGet(id=1, keys=["a"]), 5001.0, WALL + 61)
    assert replies == [p.CounterValues(id=1, values=[0])]


def test_the_admin_channel_finds_a_cached_entry_by_the_wall_clock():
    k = keeper()
    k.handle(b"w1", p.CacheStore(dictionary="kong_db_cache", key="k", entry=b"e", ttl=60), 5000.0, WALL)
    k.cached = {"pc": "kong_db_cache"}
    with pytest.raises(KeyError, match="no cached entry"):
        k.admin("proxy-cache", {"action": "get", "key": "k"}, 5001.0, WALL + 61)


def test_the_keepers_counters_hold_what_kongs_kong_rate_limiting_counters_holds():
    """Kong's response-ratelimiting `local` policy counts in `ngx.shared.kong_rate_limiting_counters`
    (kong/plugins/response-ratelimiting/policies/init.lua:9), declared `lua_shared_dict kong_rate_limiting_counters
    12m` (kong/templates/nginx_kong.lua:19): a full dict evicts its least recently used keys, so the counters of every
    client take at most 12 MiB. 120,000 clients with distinct IPv6 addresses (a /64 has 2^64; limit_by consumer and
    credential fall back to the address) fit it by the accounting the gateway's HostCache gives the same dicts (key,
    a number, ENTRY_OVERHEAD each), and the latest client's counter is among those kept."""
    k = Keeper(parse_config("_format_version: '3.0'\n"), workers=1)
    start_ms = int(WALL // 60 * 60 * 1000)
    for block in range(0, 120_000, 1000):
        items = [(counter_key(PLUGIN_ID, f"2001:db8:0:0:1:{(block + i) >> 16:x}:{(block + i) & 0xffff:x}:1",
                              start_ms, "videos", "minute"), 1, 60.0) for i in range(1000)]
        k.handle(b"w1", p.CountersAdd(items=items), 0.0, WALL)
    charged = sum(counter_cost(key) for key in k.counters._values)
    capacity = SIZES["kong_rate_limiting_counters"]
    assert charged <= capacity, (f"{len(k.counters)} counters kept, {charged / (1 << 20):.1f} MiB by the shm's "
                                 f"accounting, over kong_rate_limiting_counters' {capacity >> 20} MiB")
    assert k.counters.size == charged
    replies, _ = k.handle(b"w1", p.CountersGet(id=1, keys=[items[-1][0]]), 0.0, WALL)
    assert replies == [p.CounterValues(id=1, values=[1])]


def test_store_messages_survive_the_bus_encoding():
    for msg in (p.CacheFetch(id=1, dictionary="d", key="k"), p.CacheStore(dictionary="d", key="k", entry=b"\0\xff",
                ttl=1.5), p.CachePurge(dictionary="d"), p.CountersGet(id=2, keys=["a"]),
                p.CountersAdd(items=[("a", 1, 2.0)]), p.CacheEntry(id=3), p.CounterValues(id=4, values=[1])):
        assert p.decode(p.encode(msg)) == msg


# ---- a worker's calls -----------------------------------------------------------------------------------------------


async def test_a_worker_with_its_keeper_in_process_stores_and_reads_back():
    shared = SharedState("local", 1)
    async with trio.open_nursery() as nursery:
        await nursery.start(shared.run_local, keeper())
        shared.cache_store("kong_db_cache", "k", b"entry", 5.0)
        assert await shared.cache_fetch("kong_db_cache", "k") == b"entry"
        shared.cache_purge("kong_db_cache", "k")
        assert await shared.cache_fetch("kong_db_cache", "k") is None
        shared.counters_add([("c", 2, 60.0)])
        shared.counters_add([("c", 1, 60.0)])
        assert await shared.counters_get(["c", "d"]) == [3, 0]
        nursery.cancel_scope.cancel()


async def test_without_a_keeper_a_fetch_is_a_miss_and_counters_are_unknown_at_once():
    shared = SharedState("w1", 2)  # never heard a keeper
    with trio.fail_after(0.05):
        assert await shared.cache_fetch("kong_db_cache", "k") is None
        assert await shared.counters_get(["c"]) is None


async def test_a_keeper_that_does_not_answer_is_waited_for_call_timeout_s_only(autojump_clock):
    shared = SharedState("w1", 2)
    shared._send = lambda msg: True  # sent, never answered
    shared.on_message(p.Heartbeat(incarnation="k1"))
    start = trio.current_time()
    assert await shared.counters_get(["c"]) is None
    assert trio.current_time() - start == pytest.approx(CALL_TIMEOUT_S)
    assert shared._calls == {}


async def test_an_entry_over_the_limit_is_not_sent(monkeypatch):
    shared = SharedState("w1", 2)
    sent: list[p.Msg] = []
    shared._send = lambda msg: sent.append(msg) or True
    shared.on_message(p.Heartbeat(incarnation="k1"))
    monkeypatch.setattr(shared_module, "CACHE_ENTRY_LIMIT", 10)
    shared.cache_store("d", "k", b"x" * 11, 1.0)
    shared.cache_store("d", "k", b"x" * 10, 1.0)
    assert [len(m.entry) for m in sent if isinstance(m, p.CacheStore)] == [10]


async def test_a_cache_entry_leaves_at_once_not_with_the_turns_batch():
    shared = SharedState("w1", 2)
    sent: list[p.Msg] = []
    shared._send = lambda msg: sent.append(msg) or True
    shared.on_message(p.Heartbeat(incarnation="k1"))
    sent.clear()
    shared.counters_add([("c", 1, 60.0)])  # batched: Kong adds response costs on a timer too
    shared.cache_store("d", "k", b"entry", 1.0)
    assert [type(m) for m in sent] == [p.CacheStore] and len(shared._outbox) == 1


async def test_the_store_calls_of_one_scheduler_turn_leave_in_one_message():
    shared = SharedState("w1", 2)
    sent: list[p.Msg] = []
    shared._send = lambda msg: sent.append(msg) or True
    shared.on_message(p.Heartbeat(incarnation="k1"))
    go = trio.Event()

    async def request(n: int) -> None:
        await go.wait()  # all three wake in the same turn, as requests whose data came in one epoll wait
        if n == 0:
            shared.counters_add([("k0", 1, 60.0)])
        await shared.counters_get([f"k{n}"])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(shared._send_outbox)
        for n in range(3):
            nursery.start_soon(request, n)
        await trio.sleep(0.01)
        sent.clear()  # the Hello and GiveBack a keeper's first heartbeat brings
        go.set()
        await trio.sleep(0.01)
        assert len(sent) == 1 and isinstance(sent[0], p.StoreBatch)
        assert sorted(type(m).__name__ for m in sent[0].items) == ["CountersAdd", "CountersGet", "CountersGet",
                                                                    "CountersGet"]
        shared.on_message(p.StoreBatch(items=[p.CounterValues(id=m.id, values=[7]) for m in sent[0].items
                                              if isinstance(m, p.CountersGet)]))
        await trio.sleep(0.01)
        assert shared._calls == {}  # every call had its answer, and ended
        nursery.cancel_scope.cancel()


async def test_a_batch_the_bus_refuses_ends_its_calls_at_once():
    shared = SharedState("w1", 2)
    shared._send = lambda msg: False  # zmq's queue is full: the keeper is gone
    shared.on_message(p.Heartbeat(incarnation="k1"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(shared._send_outbox)
        with trio.fail_after(CALL_TIMEOUT_S / 2):
            assert await shared.cache_fetch("d", "k") is None
        nursery.cancel_scope.cancel()


def test_the_keeper_answers_a_batch_with_one_batch_of_the_answers_in_order():
    k = keeper()
    batch = p.StoreBatch(items=[p.CountersAdd(items=[("a", 2, 60.0)]), p.CountersGet(id=1, keys=["a"]),
                                p.CacheStore(dictionary="kong", key="x", entry=b"e"),
                                p.CacheFetch(id=2, dictionary="kong", key="x")])
    assert k.handle(b"w1", batch, 0.0, 0.0) == ([p.StoreBatch(items=[p.CounterValues(id=1, values=[2]),
                                                                     p.CacheEntry(id=2, entry=b"e")])], [])


async def test_two_workers_share_cache_entries_and_counters_over_the_bus(tmp_path):
    bus = f"ipc://{tmp_path}/bus.sock"
    ctx = zmq.Context()
    ready = trio.Event()
    one, two = SharedState("w1", 2), SharedState("w2", 2)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_keeper, keeper(), bus, ready.set)
            await ready.wait()
            for worker in (one, two):
                await nursery.start(worker.run_bus, ctx, bus)
            with trio.fail_after(5):
                await one.synced.wait()
                await two.synced.wait()
            one.cache_store("kong_db_cache", "key", b"from w1" * 1000, 10.0)
            one.counters_add([("n", 4, 60.0)])
            two.counters_add([("n", 1, 60.0)])
            with trio.fail_after(5):  # the stores are not acknowledged: read until they have arrived
                while await two.cache_fetch("kong_db_cache", "key") is None:
                    await trio.sleep(0.01)
                while await one.counters_get(["n"]) != [5]:
                    await trio.sleep(0.01)
            assert await two.cache_fetch("kong_db_cache", "key") == b"from w1" * 1000
            nursery.cancel_scope.cancel()
    finally:
        ctx.term()
    # the keeper served in this process took its metrics sampler with it (a later flush would publish its state)
    assert not any(getattr(sampler, "__self__", None).__class__ is Keeper for sampler in RECORDER.samplers)


# ---- the operator's proxy-cache commands (Kong's Admin API /proxy-cache endpoints) -----------------------------------

CACHED = CONFIG + """
plugins:
  - {name: proxy-cache, id: 3f2a63d2-2b43-4a5b-9d1e-5c6b1f0e8a42, route: r, config: {strategy: memory}}
  - {name: proxy-cache, id: 7c9e6679-7425-40de-944b-e07fc1f90ae7, service: s,
     config: {strategy: memory, memory: {dictionary_name: kong}}}
"""
PC_A, PC_B = "3f2a63d2-2b43-4a5b-9d1e-5c6b1f0e8a42", "7c9e6679-7425-40de-944b-e07fc1f90ae7"


def cached_keeper() -> Keeper:
    k = Keeper(parse_config(CACHED), workers=2)
    entry = encode(Entry(status=200, headers=[(b"content-type", b"text/plain")], body=b"hello", timestamp=1, ttl=300))
    k.handle(b"w1", p.CacheStore(dictionary="kong_db_cache", key="k1", entry=entry, ttl=300), 0.0, 0.0)
    k.handle(b"w1", p.CacheStore(dictionary="kong", key="k1", entry=entry, ttl=300), 0.0, 0.0)
    k.handle(b"w1", p.CacheStore(dictionary="kong", key="k2", entry=entry, ttl=300), 0.0, 0.0)
    return k


def test_proxy_cache_list_shows_each_plugin_and_its_dictionary():
    result, _ = cached_keeper().admin("proxy-cache", {}, 1.0, 0.0)
    assert [(r["plugin"], r["dictionary"], r["entries"]) for r in result] == [(PC_A, "kong_db_cache", 1),
                                                                                (PC_B, "kong", 2)]


def test_proxy_cache_get_shows_the_entry_as_kong_does():
    result, _ = cached_keeper().admin("proxy-cache", {"action": "get", "key": "k2"}, 1.0, 0.0)
    assert result["plugin"] == PC_B
    assert result["entry"]["status"] == 200 and result["entry"]["body"] == "hello"


def test_proxy_cache_get_of_an_absent_key_is_an_error_naming_it():
    with pytest.raises(KeyError, match="no cached entry for key 'nope'"):
        cached_keeper().admin("proxy-cache", {"action": "get", "key": "nope"}, 1.0, 0.0)


def test_proxy_cache_purge_removes_the_key_from_every_plugin():
    k = cached_keeper()
    assert k.admin("proxy-cache", {"action": "purge", "key": "k1"}, 1.0, 0.0)[0] == {"purged": "k1"}
    assert k.caches["kong_db_cache"].get("k1", 1.0) is None and k.caches["kong"].get("k1", 1.0) is None
    with pytest.raises(KeyError):
        k.admin("proxy-cache", {"action": "purge", "key": "k1"}, 1.0, 0.0)


def test_proxy_cache_flush_of_one_plugin_leaves_the_others():
    k = cached_keeper()
    assert k.admin("proxy-cache", {"action": "flush", "plugin": PC_B}, 1.0, 0.0)[0] == {"flushed": 2}
    assert len(k.caches["kong_db_cache"]) == 1


def test_proxy_cache_commands_refuse_an_unknown_plugin_or_action():
    k = cached_keeper()
    with pytest.raises(KeyError, match="no proxy-cache plugin 'x'"):
        k.admin("proxy-cache", {"action": "list", "plugin": "x"}, 1.0, 0.0)
    with pytest.raises(ValueError):
        k.admin("proxy-cache", {"action": "explode", "key": "k1"}, 1.0, 0.0)
