"""What a reload does to the state keeper, as `kong reload` does it to Kong (DB-less, from its declarative_config file,
which `gateway reload` re-reads).

1. The proxy-cache dictionaries Kong's reload purges are emptied (gateway/stores/cache.py FLUSHED_BY_RELOAD): nginx's
   reload keeps every shared dict (src/core/ngx_cycle.c:464-473 reuses a zone of the same name and size), then
   Kong.init flushes `kong` (kong/init.lua reset_kong_shm, flush_all at :261) and loading the file again purges
   kong.core_cache and kong.cache (kong/db/declarative/import.lua:500-501), the mlcaches on kong_core_db_cache and
   kong_db_cache (kong/global.lua:258), their `_miss` shms with them (kong/resty/mlcache/init.lua purge). The other
   dictionaries keep their entries.
2. The reloaded dns_* keys reach the keeper's Redis connections (rate-limiting's policy redis): `kong reload` starts
   workers from the new kong.conf (kong/cmd/reload.lua:60-61), which take a new DNS client (kong/init.lua:654-656)
   and connect to Redis anew (kong/plugins/rate-limiting/policies/init.lua:122 red:connect(host, ...)).

The end-to-end tests start a supervised gateway on loopback (tests/e2e_helpers.py) and stop it by pid.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import zmq
from e2e_helpers import Backend, GatewayNode
from redis_server import RedisProcess, running_redis

from gateway.bus import protocol as p
from gateway.bus.keeper_link import KeeperLink
from gateway.bus.zmq_trio import PumpedSocket
from gateway.config import parse_config
from gateway.dns import process as dns
from gateway.keeper import state
from gateway.keeper.process import serve_keeper
from gateway.keeper.state import Keeper
from gateway.policies.proxy_cache.schema import DICTIONARIES
from gateway.state.shared import KEEPER_LOST_S
from gateway.stores.cache import FLUSHED_BY_RELOAD

CONFIG = """
_format_version: '3.0'
gateway: {{dns_hostsfile: '{hosts}'}}
services:
  - {{name: s, url: 'http://127.0.0.1:9'}}
routes:
  - {{name: r, service: s, paths: ['/']}}
plugins:
  - {{name: proxy-cache, config: {{strategy: memory}}}}
"""


def reloaded_keeper(tmp_path: Path, dictionary: str) -> Keeper:
    """A keeper that holds an entry in `dictionary` and then applied a reload_config (its config file unchanged)."""
    path = tmp_path / "config.current.yaml"
    path.write_text(CONFIG.format(hosts="/etc/hosts"))
    keeper = Keeper(parse_config(path.read_text()), workers=1, config_path=str(path))
    keeper.handle(b"w1", p.CacheStore(dictionary=dictionary, key="k", entry=b"cached", ttl=300.0), 0.0, time.time())
    assert len(keeper.caches[dictionary]) == 1
    replies, _ = keeper.handle(b"root", p.AdminOp(cmd="reload_config", id=1), 0.0, time.time())
    assert isinstance(replies[0], p.AdminResult) and replies[0].ok, replies
    return keeper


@pytest.mark.parametrize("dictionary", FLUSHED_BY_RELOAD)
def test_a_reload_empties_the_dictionaries_kongs_reload_purges(tmp_path: Path, dictionary: str) -> None:
    """kong/db/declarative/import.lua:500-501 purge kong.core_cache and kong.cache (mlcache purge: the shm and its
    `_miss` shm flushed), kong/init.lua:261 flushes `kong` (a proxy-cache key, an md5, is none of preserve_keys)."""
    assert len(reloaded_keeper(tmp_path, dictionary).caches[dictionary]) == 0


@pytest.mark.parametrize("dictionary", [name for name in DICTIONARIES if name not in FLUSHED_BY_RELOAD])
def test_a_reload_keeps_the_entries_of_the_other_dictionaries(tmp_path: Path, dictionary: str) -> None:
    """nginx's reload keeps a shared dict of the same name and size (src/core/ngx_cycle.c:464-473), and nothing in
    Kong's init flushes these."""
    assert len(reloaded_keeper(tmp_path, dictionary).caches[dictionary]) == 1


async def test_a_reload_gives_the_keeper_process_a_resolver_of_the_reloaded_dns_keys(tmp_path: Path) -> None:
    """kong/init.lua:654-656: Kong.init, which `kong reload` runs again, takes the DNS client conf_loader made from
    the new kong.conf: a changed dns_hostsfile answers from the new file (the keeper resolves its Redis hosts)."""
    before, after = tmp_path / "hosts.before", tmp_path / "hosts.after"
    before.write_text("127.0.0.2 rl-redis.test\n")
    after.write_text("127.0.0.1 rl-redis.test\n")
    path = tmp_path / "config.current.yaml"
    path.write_text(CONFIG.format(hosts=before))
    keeper = Keeper(parse_config(path.read_text()), workers=1, config_path=str(path))
    async with trio.open_nursery() as nursery:
        ready = trio.Event()
        nursery.start_soon(serve_keeper, keeper, f"ipc://{tmp_path}/bus.sock", ready.set)
        await ready.wait()
        assert (await dns.resolver().toip("rl-redis.test"))[0] == "127.0.0.2"
        path.write_text(CONFIG.format(hosts=after))
        keeper.handle(b"root", p.AdminOp(cmd="reload_config", id=1), trio.current_time(), time.time())
        assert (await dns.resolver().toip("rl-redis.test"))[0] == "127.0.0.1"
        nursery.cancel_scope.cancel()


async def test_a_reload_whose_file_takes_a_second_to_read_keeps_the_heartbeats_going(tmp_path: Path,
                                                                                    monkeypatch: pytest.MonkeyPatch
                                                                                    ) -> None:
    """nginx's master reads a reload's configuration (ngx_init_cycle, nginx release-1.27.1
    src/os/unix/ngx_process_cycle.c:211-235) while the workers serve on, what they share untouched. The keeper reads
    its copy of the file (seconds for a large one: 5,000 routes, 10,000 consumers) in a thread: its heartbeats go on,
    where every worker would otherwise take it for lost after KEEPER_LOST_S and fall back to local rate-limit shares.
    Here the reading takes 1 s, more than KEEPER_LOST_S: no heartbeat is that late."""
    slow_s = 1.0
    path = tmp_path / "config.current.yaml"
    path.write_text(CONFIG.format(hosts="/etc/hosts"))
    keeper = Keeper(parse_config(path.read_text()), workers=1, config_path=str(path))
    read = state.parse_config

    def slow_parse(*args: Any) -> Any:
        time.sleep(slow_s)
        return read(*args)

    monkeypatch.setattr(state, "parse_config", slow_parse)
    bus = f"ipc://{tmp_path}/bus.sock"
    beats: list[float] = []
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(p.pub_endpoint(bus))
    heard = PumpedSocket(sub, lambda frames: beats.append(trio.current_time())
                         if isinstance(p.decode(frames[-1]), p.Heartbeat) else None)
    link = KeeperLink(ctx, bus)
    try:
        async with trio.open_nursery() as nursery:
            ready = trio.Event()
            nursery.start_soon(serve_keeper, keeper, bus, ready.set)
            await ready.wait()
            nursery.start_soon(heard.run)
            nursery.start_soon(link.run)
            while not beats:  # (subscribed)
                await trio.sleep(0.01)
            began = trio.current_time()
            answer = await link.call("reload_config", {}, timeout=10)
            ended = trio.current_time()
            assert answer.ok, answer.error
            assert keeper.reloads == 1 and ended - began >= slow_s
            during = [began, *(beat for beat in beats if began < beat < ended), ended]
            latest = max(after - before for before, after in zip(during, during[1:], strict=False))
            assert latest < KEEPER_LOST_S, f"no heartbeat for {latest:.2f}s while the keeper read the file"
            nursery.cancel_scope.cancel()
    finally:
        heard.close()
        link.close()
        ctx.term()


# ---- end to end: the root's reload reaches the keeper ---------------------------------------------------------------


def _http(port: int, target: str) -> tuple[int, bytes]:
    """A GET on a new connection (Connection: close): (status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def _backend_of(port: int, target: str) -> str:
    status, body = await trio.to_thread.run_sync(_http, port, target)
    assert status == 200, (status, body)
    return str(json.loads(body)["backend"])


async def test_a_reload_purges_proxy_caches_default_dictionary_and_keeps_another(nursery, tmp_path: Path) -> None:
    """proxy-cache's default dictionary is kong_db_cache (kong/plugins/proxy-cache/schema.lua:65-67), the shm of
    kong.cache (kong/global.lua:258), which the reload's load of the file purges whole (import.lua:500-501): Kong
    asks the reloaded config's upstream. A plugin on kong_locks, which nginx keeps (ngx_cycle.c:464-473), still hits."""
    old, new = Backend("old"), Backend("new")
    await nursery.start(old.serve)
    await nursery.start(new.serve)
    cached = {"strategy": "memory", "cache_ttl": 300, "content_type": ["application/json"]}
    doc: dict[str, Any] = {
        "services": [{"name": "s", "url": f"http://{old.target}", "routes": [{"name": "r", "paths": ["/s"]}]},
                     {"name": "k", "url": f"http://{old.target}", "routes": [{"name": "rk", "paths": ["/k"]}]}],
        "plugins": [{"name": "proxy-cache", "service": "s", "config": cached},
                    {"name": "proxy-cache", "service": "k", "config": {**cached, "memory": {"dictionary_name":
                                                                                            "kong_locks"}}}],
    }
    gw = GatewayNode(tmp_path / "gw", doc, status_listen=None)
    try:
        await gw.start(workers=1)
        assert await _backend_of(gw.port, "/s") == "old"
        assert await _backend_of(gw.port, "/k") == "old"
        assert sorted(e["entries"] for e in await gw.admin("proxy-cache")) == [1, 1]
        for service in gw.doc["services"]:  # both routes now lead to another upstream
            service["url"] = f"http://{new.target}"
        gw.config.write_text(json.dumps(gw.doc, indent=1))
        await gw.admin("reload")
        with trio.fail_after(8):  # the old generation gone: the answers are the new one's
            while (await gw.status())["retiring"]:
                await trio.sleep(0.1)
        assert await _backend_of(gw.port, "/s") == "new", "kong_db_cache was purged: the reloaded upstream answers"
        assert await _backend_of(gw.port, "/k") == "old", "kong_locks survives a reload: its entry still answers"
    finally:
        gw.cleanup()


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisProcess]:
    with running_redis(tmp_path) as server:
        yield server


async def _answers_until(port: int, wanted: int, seconds: float) -> list[int]:
    """GET /x until one is answered `wanted` or `seconds` pass: every status seen."""
    deadline = time.monotonic() + seconds
    codes: list[int] = []
    while time.monotonic() < deadline:
        codes.append((await trio.to_thread.run_sync(_http, port, "/x"))[0])
        if codes[-1] == wanted:
            break
        await trio.sleep(0.05)
    return codes


async def test_a_reload_of_dns_hostsfile_reaches_the_rate_limiting_redis_connection(nursery, tmp_path: Path,
                                                                                   redis: RedisProcess) -> None:
    """Kong's reloaded workers resolve rate-limiting's redis.host with the new kong.conf's DNS client and connect
    anew (kong/init.lua:654-656, policies/init.lua:122): a hosts file that fixes the name brings Redis back (200
    after fault_tolerant off's 500s), and one that breaks it again fails the requests, though a connection made
    under the previous file still works."""
    backend = Backend("b")
    await nursery.start(backend.serve)
    wrong, right = tmp_path / "hosts.wrong", tmp_path / "hosts.right"
    wrong.write_text("127.0.0.2 rl-redis.test\n")  # loopback, but Redis listens on 127.0.0.1 only: refused
    right.write_text("127.0.0.1 rl-redis.test\n")
    doc: dict[str, Any] = {
        "services": [{"name": "s", "url": f"http://{backend.target}", "routes": [{"name": "r", "paths": ["/"]}]}],
        "plugins": [{"name": "rate-limiting", "service": "s",
                     "config": {"hour": 1000, "policy": "redis", "fault_tolerant": False,
                                "redis": {"host": "rl-redis.test", "port": redis.port, "timeout": 500}}}],
    }
    gw = GatewayNode(tmp_path / "gw", doc, status_listen=None, dns_hostsfile=str(wrong))
    try:
        await gw.start(workers=1)
        assert (await trio.to_thread.run_sync(_http, gw.port, "/x"))[0] == 500, "Redis unreachable: Kong's 500"
        for hosts, wanted in ((right, 200), (wrong, 500)):
            gw.doc["gateway"]["dns_hostsfile"] = str(hosts)
            gw.config.write_text(json.dumps(gw.doc, indent=1))
            await gw.admin("reload")
            codes = await _answers_until(gw.port, wanted, 6)
            assert codes[-1] == wanted, f"after the reload to {hosts.name}: answers {codes}"
    finally:
        gw.cleanup()
