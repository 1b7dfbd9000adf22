"""Policy redis against a real redis-server: the block script, the client's failure modes and what it sends, and
hosts (Ledger + LeaseTables) sharing one limit through it.

A redis-server (Debian's, on a free loopback port, no persistence) is started per test that needs one and stopped
by pid. Broken Redis behaviour (garbage replies, a connection that never answers) comes from a small TCP proxy in
front of it that the test scripts.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from backends import Client, EchoBackend, service
from dns_server import serve_names
from e2e_helpers import Backend, node_factory, wait_for
from e2e_helpers import request as http_request
from redis_server import RedisProcess, find_redis, running_redis

from gateway.config.schema import GatewaySettings
from gateway.dns.process import serving
from gateway.ratelimit import LeaseTable, Ledger, LimitSpec, Status, Window
from gateway.ratelimit.redis_client import RedisSettings, RedisStore, StoreError
from gateway.ratelimit.redis_script import BadReply, WindowArgs, build_call, parse_reply
from gateway.ratelimit.remote import WAIT_MARGIN_S

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))
from plugin_helpers import http_codec, plugin  # noqa: E402, F401 - the fixture: one codec

PREFIX = "gateway:rl:"
REDIS5_HELLO = b"-ERR unknown command `HELLO`, with args beginning with: `3`, \r\n"


@pytest.fixture(scope="session")
def redis_binary() -> str:
    path, why = find_redis()
    if path is None:
        pytest.skip(why)
    return path


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisProcess]:
    with running_redis(tmp_path) as server:
        yield server


async def open_store(nursery: trio.Nursery, port: int, timeout_ms: int = 5000) -> RedisStore:
    """A store with a timeout a loaded machine never reaches, unless the test is about timeouts."""
    store = RedisStore(RedisSettings("127.0.0.1", port, timeout_ms))
    await nursery.start(store.serve)
    return store


def window_call(host: str, want: int, claim: int = 0, limit: int = 100, key: str = "k"):
    wall = time.time()
    start = int(wall // 60) * 60
    return build_call(PREFIX, key, host, want, [WindowArgs(f"{key}|minute|{start}", limit, start + 60, claim)],
                      active_s=2.0, seen_s=60.0, stale_s=10.0)


# ---- the script's reply, sans I/O ------------------------------------------------------------------------------------


def test_a_reply_of_the_wrong_shape_is_a_bad_reply_not_a_crash():
    assert parse_reply([3, 2, 1, -1, 97], 1).block == 3
    for value in (None, b"OK", [1, 2, 3], [1, 2, 3, -1, b"x"], [-1, 1, 1, -1, 5], [True, 1, 1, -1, 5], {"a": 1}):
        with pytest.raises(BadReply):
            parse_reply(value, 1)


# ---- the script on a real Redis -------------------------------------------------------------------------------------


async def test_blocks_shrink_as_the_window_nears_its_limit_and_never_pass_it(nursery, redis):
    store = await open_store(nursery, redis.port)
    held = {"a": 0, "b": 0}
    blocks = []
    for _ in range(40):
        for host in ("a", "b"):
            reply = await store.take(window_call(host, 50, claim=held[host]), 1)
            held[host] += reply.block
            blocks.append(reply.block)
    assert sum(held.values()) == 100  # exactly the limit, handed out to two hosts
    assert blocks[0] == 50 and min(b for b in blocks if b) == 1  # big while there is room, single tokens at the end
    assert reply.remaining == (0,) and reply.hosts == 2 and reply.active == 2


async def test_a_claim_restates_what_a_host_holds_so_redis_repairs_after_losing_its_data(nursery, redis):
    store = await open_store(nursery, redis.port)
    first = await store.take(window_call("a", 80), 1)
    assert first.block == 50  # half the room: a block never takes more than room // (2 x active hosts)
    redis.command("FLUSHALL")  # a restarted Redis without persistence
    again = await store.take(window_call("b", 80), 1)
    assert again.block == 50 and again.remaining == (50,)  # a's 50 were forgotten
    after = await store.take(window_call("a", 0, claim=50), 1)  # a's next call restates its 50
    assert after.remaining == (0,)


async def test_a_host_over_its_claim_is_counted_in_full_and_blocks_the_others(nursery, redis):
    store = await open_store(nursery, redis.port)
    await store.take(window_call("a", 0, claim=80), 1)  # admitted 80 on its fallback share while Redis was away
    reply = await store.take(window_call("b", 50, claim=30), 1)  # b admitted 30 on its share
    assert reply.block == 0 and reply.remaining == (0,)


async def test_the_bucket_refills_at_its_rate_and_counts_tokens_hosts_hold(nursery, redis):
    store = await open_store(nursery, redis.port)

    def bucket_call(host: str, want: int, spent: int = 0, back: int = 0):
        return build_call(PREFIX, "tb", host, want, [], active_s=2.0, seen_s=60.0, stale_s=10.0, rate=100.0,
                          capacity=20.0, spent=spent, back=back)

    assert (await store.take(bucket_call("a", 20), 0)).block == 10  # room 20 // (2 x 1 host)
    assert (await store.take(bucket_call("a", 20), 0)).block == 5  # a now holds 15
    await trio.sleep(0.2)  # 20 tokens' worth of time, but the 15 a holds stay taken: the level stops at 5
    held_back = await store.take(bucket_call("b", 20), 0)
    assert held_back.level + held_back.block <= 5.5
    await store.take(bucket_call("a", 0, spent=12, back=3), 0)  # a spent 12 and gives 3 back: holds none
    await trio.sleep(0.2)
    refilled = await store.take(bucket_call("b", 20), 0)
    assert refilled.level + refilled.block >= 19  # full again (capacity 20, less what b holds)


# ---- the client's failure modes: StoreError, bounded in time, and it recovers ---------------------------------------


async def test_a_dead_redis_is_a_store_error_and_a_restarted_one_is_used_again(nursery, redis):
    store = await open_store(nursery, redis.port)
    assert (await store.take(window_call("a", 5), 1)).block == 5
    redis.kill()
    started = time.monotonic()
    with pytest.raises(StoreError, match="Redis at redis://127.0.0.1"):
        await store.take(window_call("a", 5), 1)
    took = time.monotonic() - started
    assert took < 2.5, f"{took:.1f}s"  # at once (a refused connection), not after the store's 5 s timeout
    redis.start()
    assert (await store.take(window_call("a", 5), 1)).block == 5


async def test_a_slow_redis_is_a_store_error_within_the_timeout_then_answers_again(nursery, redis):
    store = await open_store(nursery, redis.port, timeout_ms=300)
    await store.take(window_call("a", 1), 1)
    redis.command("CLIENT", "PAUSE", "2000", "ALL")
    started = time.monotonic()
    with pytest.raises(StoreError, match="within 0.3s"):
        await store.take(window_call("a", 1), 1)
    took = time.monotonic() - started
    assert took < 1.2, f"{took:.1f}s"  # its 0.3 s and a busy host's scheduling; not until the 2 s pause ends
    await trio.sleep(max(0.0, started + 2.0 - time.monotonic()))  # until the pause is over
    with trio.fail_after(2):
        assert (await store.take(window_call("a", 1), 1)).block == 1


class Proxy:
    """TCP proxy to Redis; `mode` garbage replaces the next reply with bytes that are not RESP, swallow drops it;
    `redis5` refuses HELLO as Redis before 6.0 does (HELLO, a connection's first command, comes in a packet alone)."""

    def __init__(self, upstream: int, redis5: bool = False) -> None:
        self.upstream = upstream
        self.mode = ""
        self.redis5 = redis5
        self.port = 0

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self.handle, listeners)

    async def handle(self, client: trio.SocketStream) -> None:
        async with client, await trio.open_tcp_stream("127.0.0.1", self.upstream) as server:
            async def up() -> None:
                async for data in client:
                    if self.redis5 and b"$5\r\nHELLO\r\n" in data[:32].upper():
                        await client.send_all(REDIS5_HELLO)
                        continue
                    await server.send_all(data)

            async def down() -> None:
                async for data in server:
                    if self.mode == "garbage" and b"\r\n" in data and not data.startswith(b"%"):
                        self.mode = ""
                        data = b"%zz\r\n"
                    elif self.mode == "swallow" and not data.startswith(b"%"):
                        self.mode = ""
                        continue
                    await client.send_all(data)

            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(up)
                    nursery.start_soon(down)
            except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass


@pytest.mark.parametrize("mode", ["garbage", "swallow"])
async def test_a_broken_or_lost_reply_is_a_store_error_and_a_fresh_connection_answers_the_next_call(
        nursery, redis, mode):
    proxy = Proxy(redis.port)
    await nursery.start(proxy.serve)
    store = await open_store(nursery, proxy.port, timeout_ms=300)
    assert (await store.take(window_call("a", 1), 1)).block == 1
    proxy.mode = mode
    with pytest.raises(StoreError):
        await store.take(window_call("a", 1), 1)
    for _ in range(3):  # coredis alone would time out on every later call after a lost reply
        with trio.fail_after(2):
            assert (await store.take(window_call("a", 1), 1)).block == 1


async def test_a_redis_without_hello_fails_every_call_saying_it_needs_redis_6_once(nursery, redis, caplog):
    """coredis speaks RESP3 only and opens each connection with HELLO 3, which Redis before 6.0 does not know (Kong's
    lua-resty-redis speaks RESP2): every call fails, and the error and one log line per Redis say why."""
    proxy = Proxy(redis.port, redis5=True)
    await nursery.start(proxy.serve)
    store = await open_store(nursery, proxy.port, timeout_ms=1000)
    with caplog.at_level(logging.ERROR, logger="gateway.ratelimit.redis"):
        for _ in range(3):
            with pytest.raises(StoreError, match="does not know HELLO: policy redis needs Redis 6 or later"):
                await store.take(window_call("a", 1), 1)
    assert [r.getMessage() for r in caplog.records if "HELLO" in r.getMessage()] == [
        f"Redis at redis://127.0.0.1:{proxy.port}/0 does not know HELLO: policy redis needs Redis 6 or later (its "
        "client speaks RESP3 only); every call to it fails"]


# ---- what the gateway sends: Kong's AUTH rule, no CLIENT SETNAME, commands an ACL can list -----------------------


async def _limited_request(gateway, backend_port: int, rl: dict) -> object:  # noqa: ANN001 - the conftest factory
    """One request through a route with plugin `rl`."""
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend_port}",
                                               [{"name": "r", "paths": ["/"], "plugins": [rl]}])]})
    with trio.fail_after(5):
        async with await Client.connect(port) as client:
            return await client.request("GET", "/")


async def test_a_username_without_a_password_sends_no_auth(nursery, gateway, redis):
    """Kong sends AUTH only when redis.password is present (policies/init.lua; kong/tools/redis/schema.lua: "If
    undefined, no AUTH commands are sent to Redis"): a username alone connects as the default user. coredis would
    send HELLO 3 AUTH <username> "", which Redis refuses (WRONGPASS)."""
    backend = EchoBackend()
    await nursery.start(backend.serve)
    rl = plugin("rate-limiting", minute=100, policy="redis", fault_tolerant=False,
                redis={"host": "127.0.0.1", "port": redis.port, "username": "ratelimit", "timeout": 2000})
    reply = await _limited_request(gateway, backend.port, rl)
    assert reply.status == 200, (reply.status, reply.body[:200])
    assert reply.header("x-ratelimit-remaining-minute") == "99"


async def test_response_ratelimiting_works_for_a_user_allowed_only_its_commands(nursery, gateway, redis):
    """An ACL user allowed the commands the README lists for response-ratelimiting (GET, INCRBY, EXPIRE) is
    enough: the client sends no CLIENT SETNAME (Kong sends none)."""
    assert redis.command("ACL", "SETUSER", "rrl", "on", "allkeys", "+get", "+incrby", "+expire",
                         ">secret") == b"+OK\r\n"
    backend = EchoBackend()
    backend.extra_headers = [(b"x-kong-limit", b"video=1")]
    await nursery.start(backend.serve)
    rrl = plugin("response-ratelimiting", limits={"video": {"minute": 6}}, policy="redis", fault_tolerant=False,
                 redis={"host": "127.0.0.1", "port": redis.port, "username": "rrl", "password": "secret",
                        "timeout": 2000})
    reply = await _limited_request(gateway, backend.port, rrl)
    assert reply.status == 200, (reply.status, reply.body[:200])
    assert reply.header("x-ratelimit-remaining-video-minute") == "5"


async def test_rate_limiting_works_for_a_user_allowed_only_the_commands_the_readme_lists(nursery, gateway, redis):
    """The README's list for rate-limiting (EVALSHA, SCRIPT LOAD, and the commands the script runs) is all an ACL
    user needs, so an operator can write one from it."""
    assert redis.command("ACL", "SETUSER", "rl", "on", "allkeys", "+evalsha", "+script|load", "+time", "+zadd",
                         "+zremrangebyscore", "+pexpire", "+zcard", "+zcount", "+hgetall", "+hset", "+hdel",
                         "+expireat", ">secret") == b"+OK\r\n"
    backend = EchoBackend()
    await nursery.start(backend.serve)
    rl = plugin("rate-limiting", minute=100, policy="redis", fault_tolerant=False,
                redis={"host": "127.0.0.1", "port": redis.port, "username": "rl", "password": "secret",
                       "timeout": 2000})
    reply = await _limited_request(gateway, backend.port, rl)
    assert reply.status == 200, (reply.status, reply.body[:200])
    assert reply.header("x-ratelimit-remaining-minute") == "99"


# ---- how long a request waits for Redis: its redis.timeout, as Kong's --------------------------------------------


async def _request_while_paused(nursery, gateway, redis, timeout_ms: int, pause_ms: int):  # noqa: ANN001, ANN202
    """One request through rate-limiting (policy redis, fault_tolerant off, `timeout_ms`) while Redis is paused
    `pause_ms`: the reply and how long it took."""
    backend = EchoBackend()
    await nursery.start(backend.serve)
    rl = plugin("rate-limiting", minute=100, policy="redis", fault_tolerant=False,
                redis={"host": "127.0.0.1", "port": redis.port, "timeout": timeout_ms})
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}",
                                               [{"name": "r", "paths": ["/"], "plugins": [rl]}])]})
    redis.command("CLIENT", "PAUSE", str(pause_ms), "ALL")
    started = time.monotonic()
    with trio.fail_after(6):
        async with await Client.connect(port) as client:
            reply = await client.request("GET", "/")
    return reply, time.monotonic() - started


async def test_a_redis_slower_than_half_a_second_but_within_its_timeout_is_waited_for(nursery, gateway, redis):
    """Kong waits for its Redis up to redis.timeout (red:set_timeout) and fails only when usage() does: a Redis
    0.8 s late with a timeout of 5 s admits the request (fault_tolerant off), where a fixed 0.5 s gave a 500."""
    reply, waited = await _request_while_paused(nursery, gateway, redis, timeout_ms=5000, pause_ms=800)
    assert reply.status == 200, (reply.status, reply.body[:200])
    assert waited >= 0.7


async def test_a_request_waits_for_a_silent_redis_its_timeout_and_not_much_longer(nursery, gateway, redis):
    """The wait follows redis.timeout both ways: with 1 s and a Redis paused longer, the request gets its 500
    (fault_tolerant off) after that second, within the worker's margin (remote.WAIT_MARGIN_S)."""
    reply, waited = await _request_while_paused(nursery, gateway, redis, timeout_ms=1000, pause_ms=3000)
    assert reply.status == 500
    # (1 s and at most WAIT_MARGIN_S more, and 0.4 s of a busy host's scheduling: not twice the timeout, nor the 3 s
    # pause)
    assert 0.9 <= waited < 1.0 + WAIT_MARGIN_S + 0.4, waited


# ---- hosts sharing a limit: Ledgers and LeaseTables, calls run on the real Redis -----------------------------------


class Host:
    """One gateway host in miniature: a Ledger with a store, its workers' LeaseTables, run in-process."""

    def __init__(self, name: str, store: RedisStore, workers: int, spec: LimitSpec) -> None:
        self.ledger = Ledger(workers=workers, host=name)
        self.ledger.add_store("rl", PREFIX)
        self.store = store
        self.spec = spec
        self.tables = [LeaseTable(f"{name}-w{i}", workers) for i in range(workers)]
        self.pending: list = []
        self.admitted = 0

    async def calls(self) -> None:
        """Run the due calls, as the keeper's Redis level does (sequentially here)."""
        now, wall = time.monotonic(), time.time()
        for key, _, call in self.ledger.remote_calls(now, wall):
            try:
                reply = await self.store.take(call, len(call.keys) - 3)
            except StoreError as e:
                self.ledger.remote_failed(key, str(e), time.monotonic())
            else:
                self.ledger.remote_applied(key, reply, time.monotonic(), time.time())
        self.answer()

    def answer(self) -> None:
        pending, self.pending = self.pending, []
        for table, request in pending:
            grant = self.ledger.grant_request(request, time.monotonic(), time.time())
            if grant is None:
                self.pending.append((table, request))
            else:
                table.apply(grant, time.monotonic(), time.time())

    def request(self, worker: int) -> Status:
        table = self.tables[worker]
        now, wall = time.monotonic(), time.time()
        decision = table.take("rl|k", self.spec, now, wall)
        if decision.status is Status.WAIT:
            for request in table.refills(now):
                grant = self.ledger.grant_request(request, now, wall)
                if grant is None:
                    self.pending.append((table, request))
                else:
                    table.apply(grant, now, wall)
            decision = table.take("rl|k", self.spec, now, wall, waited=True, final=False)
        else:
            for request in table.refills(now):
                grant = self.ledger.grant_request(request, now, wall)
                if grant is None:
                    self.pending.append((table, request))
                else:
                    table.apply(grant, now, wall)
        if decision.admitted:
            self.admitted += 1
        return decision.status


def second_spec(limit: int) -> LimitSpec:
    return LimitSpec(windows=(Window("second", limit),), store="rl")


async def drive(hosts: list[Host], seconds: float, per_round: int = 8) -> None:
    """Requests round-robin over every worker of every host, Redis calls between rounds, until `seconds` pass."""
    deadline = time.monotonic() + seconds
    while True:
        for host in hosts:
            for worker in range(len(host.tables)):
                for _ in range(per_round):
                    host.request(worker)
        for host in hosts:
            await host.calls()
        if time.monotonic() >= deadline:
            return
        await trio.sleep(0.002)


async def test_two_hosts_of_two_workers_admit_the_limit_of_each_second_within_one_percent(nursery, redis):
    store = await open_store(nursery, redis.port)
    spec = second_spec(500)
    hosts = [Host(name, store, 2, spec) for name in ("h1", "h2")]
    # start at a whole second, run three whole seconds, count per second
    await trio.sleep(1 - time.time() % 1 + 0.01)
    counts = []
    for _ in range(3):
        before = sum(h.admitted for h in hosts)
        await drive(hosts, 1 - time.time() % 1 - 0.005)
        counts.append(sum(h.admitted for h in hosts) - before)
        await trio.sleep(1 - time.time() % 1 + 0.005)  # skip the boundary: a round may straddle it
    ratios = [c / 500 for c in counts]
    assert all(0.95 <= r <= 1.01 for r in ratios), ratios


async def test_with_redis_gone_each_host_admits_its_share_and_confesses_when_it_returns(nursery, redis):
    store = await open_store(nursery, redis.port, timeout_ms=300)
    spec = LimitSpec(windows=(Window("minute", 400),), store="rl")
    hosts = [Host(name, store, 2, spec) for name in ("h1", "h2")]
    if time.time() % 60 > 50:
        await trio.sleep(60 - time.time() % 60 + 0.1)  # stay within one minute window
    for _ in range(10):
        await drive(hosts, 0.0, per_round=2)  # one round each
    before = sum(h.admitted for h in hosts)
    assert 0 < before < 400
    redis.kill()
    await drive(hosts, 0.6)
    for host in hosts:  # each host: at most its share (400 / 2 hosts), counting what it admitted before
        assert host.admitted <= 200 + 1
        assert host.ledger.stores["rl"].down
    total_down = sum(h.admitted for h in hosts)
    assert total_down <= 401
    redis.start()
    await trio.sleep(0.5)  # the hosts' retries (every RETRY_S) find it
    await drive(hosts, 0.6)
    assert not any(h.ledger.stores["rl"].down for h in hosts)
    # Redis (restarted empty) holds every host's claim again, and no more is admitted than the limit
    store_view = await store.take(window_call("probe", 0, limit=400, key="rl|k"), 1)
    assert store_view.remaining[0] <= 400 - total_down
    assert sum(h.admitted for h in hosts) <= 404


async def test_a_restarted_keeper_keeps_what_its_earlier_incarnation_claimed_in_redis(nursery, redis):
    """A keeper names its host in Redis the same after a restart (run_keeper: `<hostname>:<bus endpoint>`) and
    starts empty: its claims are its incarnation's own, so its first call does not overwrite the earlier
    incarnation's (what that one admitted). Kong's INCRBY counts are never lowered by a restart either: a day limit
    of 40 admits 40 in the day, whatever restarts."""
    if time.time() % 86400 > 86395:
        await trio.sleep(86400 - time.time() % 86400 + 0.1)  # stay within one day window
    store = await open_store(nursery, redis.port)
    spec = LimitSpec(windows=(Window("day", 40),), store="rl")
    before = Host("gw-host:ipc:///run/gateway/bus", store, 2, spec)
    for _ in range(30):
        await drive([before], 0.0, per_round=4)
    assert before.admitted == 40  # the day's limit is used up
    after = Host("gw-host:ipc:///run/gateway/bus", store, 2, spec)  # the restart: same name, an empty Ledger
    for _ in range(30):
        await drive([after], 0.0, per_round=4)
    assert after.admitted == 0
    probe = await store.take(window_call("probe", 0), 1)
    assert probe.hosts == 2  # the restarted host is the same host for the fallback shares (with the probe)


async def test_a_key_whose_spec_changes_keeps_what_it_claimed_before_in_redis(nursery, redis):
    """A changed spec (a reload raising the limit) starts the key's state afresh in the keeper: its claims are a new
    generation's, beside the earlier ones, so the window keeps counting what was admitted (Kong: the same counter,
    compared with the new limit)."""
    if time.time() % 86400 > 86395:
        await trio.sleep(86400 - time.time() % 86400 + 0.1)
    store = await open_store(nursery, redis.port)
    host = Host("h1", store, 2, LimitSpec(windows=(Window("day", 20),), store="rl"))
    for _ in range(20):
        await drive([host], 0.0, per_round=4)
    assert host.admitted == 20
    host.spec = LimitSpec(windows=(Window("day", 30),), store="rl")  # the reload
    for _ in range(20):
        await drive([host], 0.0, per_round=4)
    assert host.admitted == 30


# ---- the Redis host's name: resolved by the gateway's DNS client (kong.conf's dns_* keys) ------------------------


async def test_a_redis_host_name_is_resolved_by_the_gateways_dns_client(nursery, redis):
    names = await serve_names(nursery, {"redis.test": ["127.0.0.1"]})
    async with serving(GatewaySettings(**names.settings)):
        store = RedisStore(RedisSettings("redis.test", redis.port, 5000))
        await nursery.start(store.serve)
        assert (await store.take(window_call("a", 5), 1)).block == 5
    assert names.asked("redis.test") >= 1


async def test_a_redis_hosts_srv_record_gives_the_port_to_connect_to(nursery, redis):
    """Kong's patched cosocket connect resolves with toip: an SRV record's port replaces the configured one."""
    names = await serve_names(nursery, {"redis-1.test": ["127.0.0.1"]})
    names.srv["redis.test"] = [(10, 10, redis.port, "redis-1.test")]
    async with serving(GatewaySettings(**names.settings)):
        store = RedisStore(RedisSettings("redis.test", 1, 5000))
        await nursery.start(store.serve)
        assert (await store.take(window_call("a", 5), 1)).block == 5


async def test_a_redis_host_that_does_not_resolve_is_a_store_error_naming_it(nursery):
    names = await serve_names(nursery, {})
    async with serving(GatewaySettings(**names.settings)):
        store = RedisStore(RedisSettings("missing.test", 6379, 300))
        await nursery.start(store.serve)
        with pytest.raises(StoreError, match="Redis at redis://missing.test:6379/0: missing.test: "):
            await store.take(window_call("a", 1), 1)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port whose listener never accepts: connections complete in the backlog and never get a byte."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


async def test_a_redis_that_never_answers_fails_calls_without_logging_tracebacks(nursery, silent_port, caplog):
    """coredis logs each failed connection at ERROR with a traceback (several a second while a Redis hangs); the
    store's own line, once per outage, is what the log gets (Kong: one line per failure)."""
    store = RedisStore(RedisSettings("127.0.0.1", silent_port, 200))
    await nursery.start(store.serve)
    with caplog.at_level(logging.DEBUG):
        for _ in range(3):
            with pytest.raises(StoreError):
                await store.run(lambda client: client.ping())
        await trio.sleep(0.5)  # coredis' connection tasks end after the call has failed
    assert [(r.name, r.getMessage()) for r in caplog.records if r.exc_info and r.levelno >= logging.WARNING] == []


def _script_calls(server: RedisProcess) -> int:
    """How many EVALSHA calls (the block script) `server` has taken."""
    found = re.search(rb"cmdstat_evalsha:calls=(\d+)", server.command("INFO", "commandstats"))
    return int(found[1]) if found else 0


def _limited(backend: Backend, redis_port: int) -> dict:
    """One route, rate limited through Redis (fault_tolerant off) far above what a test sends."""
    return {"services": [{"name": "s", "url": f"http://{backend.target}", "routes": [{"name": "r", "paths": ["/"]}]}],
            "plugins": [{"name": "rate-limiting", "route": "r", "config": {
                "minute": 10_000_000, "limit_by": "service", "policy": "redis", "fault_tolerant": False,
                "redis": {"host": "127.0.0.1", "port": redis_port, "timeout": 1000}}}]}


async def test_a_reload_to_another_redis_fails_no_request(nursery, tmp_path, redis_binary):
    """Kong connects with the settings of the request it serves, so a changed redis record fails nothing; here the
    old client ends the calls it has under way (a reload's retiring workers hand back tokens) before it closes."""
    backend = Backend("b")
    await nursery.start(backend.serve)
    servers = []
    with node_factory(tmp_path) as make:
        try:
            for name in ("a", "b"):
                (tmp_path / name).mkdir()
                servers.append(RedisProcess(redis_binary, tmp_path / name))
                servers[-1].start()
            node = make(_limited(backend, servers[0].port))
            await node.start(workers=2)
            statuses: Counter[int] = Counter()
            done = trio.Event()

            async def client() -> None:
                while not done.is_set():
                    try:
                        statuses[(await http_request(node.port, "GET", "/")).status] += 1
                    except (OSError, ConnectionError, trio.TooSlowError):
                        statuses[0] += 1

            async def serving_through(server: RedisProcess) -> None:
                """Until the retiring generation is gone (its workers handed back their tokens), `server` has
                taken calls, and requests went on being served after both."""
                calls = _script_calls(server)

                async def one_generation() -> bool:
                    tree = (await node.status())["tree"]
                    return sum(c["id"].startswith("workers@") for c in tree["children"]) == 1
                await wait_for(one_generation, 20, what="the retiring generation gone")
                await wait_for(lambda: _script_calls(server) >= calls + 3, 20, what=f"calls to Redis {server.port}")
                served = sum(statuses.values())
                await wait_for(lambda: sum(statuses.values()) >= served + 50, 20, what="requests served after")

            async with trio.open_nursery() as load:
                for _ in range(4):
                    load.start_soon(client)
                await serving_through(servers[0])
                for i in range(4):
                    node.config.write_text(json.dumps({**node.doc, **_limited(backend, servers[(i + 1) % 2].port)}))
                    await node.admin("reload")  # what `gateway reload` sends (test_node.py runs the command)
                    await serving_through(servers[(i + 1) % 2])
                done.set()
            assert statuses[200] > 0 and dict(statuses) == {200: statuses[200]}, node.log()[-1500:]
        finally:
            for server in servers:
                server.stop()
