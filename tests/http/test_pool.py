"""The upstream connection pool's sweep (circuit-breaker's sweep_force_shutdown): which connections are a target's."""

from __future__ import annotations

from functools import partial

import trio
from dns_server import serve_names

from gateway.config.schema import GatewaySettings
from gateway.dns.process import serving
from gateway.http.codec_llhttp import LlhttpClient
from gateway.http.pool import Pool
from gateway.pipeline.forward import _pool_key
from gateway.runtime import TargetRuntime


async def _hold(stream: trio.SocketStream) -> None:
    await trio.sleep_forever()


async def _listener(nursery: trio.Nursery, host: str) -> int:
    """A server on `host` that accepts connections and holds them open; its port."""
    listeners = await nursery.start(partial(trio.serve_tcp, _hold, 0, host=host))
    return listeners[0].socket.getsockname()[1]


async def _close(stream: trio.SocketStream) -> None:
    await stream.aclose()


async def _listener_closing(nursery: trio.Nursery) -> int:
    """A server on 127.0.0.1 that closes every connection it accepts; its port."""
    listeners = await nursery.start(partial(trio.serve_tcp, _close, 0, host="127.0.0.1"))
    return listeners[0].socket.getsockname()[1]


async def test_the_sweep_of_a_named_target_closes_its_connections_to_each_address(nursery):
    """An MCP session's requests go to the address of the name they began on; those connections are the name's."""
    port = await _listener(nursery, "127.0.0.2")
    names = await serve_names(nursery, {"mcp.test": ["127.0.0.2"]})
    named = TargetRuntime("mcp.test", port, 100)
    pool = Pool(LlhttpClient)
    pinned = await pool.connect(_pool_key(named, None, "127.0.0.2"), 5)
    async with serving(GatewaySettings(**names.settings)):
        by_name = await pool.connect(_pool_key(named, None), 5)
    pool.put(pinned, 0.0)
    assert pool.close_target("mcp.test", port) == 2
    assert pinned.conn.closed and pool.idle_count() == 0
    assert by_name.swept  # busy: shut down under its request, closed by its task


async def test_the_sweep_of_an_address_leaves_a_names_connections_to_it_alone(nursery):
    """A target given as an address is not the name that resolves to it: each has its own breaker."""
    port = await _listener(nursery, "127.0.0.2")
    named = TargetRuntime("mcp.test", port, 100)
    pool = Pool(LlhttpClient)
    pinned = await pool.connect(_pool_key(named, None, "127.0.0.2"), 5)
    direct = await pool.connect(_pool_key(TargetRuntime("127.0.0.2", port, 100), None), 5)
    assert pool.close_target("127.0.0.2", port) == 1
    assert direct.swept and not pinned.swept


async def test_a_connection_that_carried_max_requests_is_closed_not_kept(nursery):
    """kong.conf's upstream_keepalive_max_requests: its last request done, the connection is not kept."""
    port = await _listener(nursery, "127.0.0.1")
    pool = Pool(LlhttpClient, max_requests=2)
    uc = await pool.connect(("127.0.0.1", port), 5)
    pool.put(uc, 0.0)
    assert pool.take(("127.0.0.1", port), 0.0) is uc
    pool.put(uc, 0.0)
    assert uc.conn.closed and pool.idle_count() == 0


async def test_an_idle_timeout_of_zero_keeps_idle_connections(nursery):
    """upstream_keepalive_idle_timeout = 0: an idle connection is kept however long."""
    port = await _listener(nursery, "127.0.0.1")
    pool = Pool(LlhttpClient, idle_timeout=0)
    uc = await pool.connect(("127.0.0.1", port), 5)
    pool.put(uc, 0.0)
    assert pool.take(("127.0.0.1", port), 1e9) is uc


def _sni_key(port: int, host: str) -> tuple:
    """A pool key of a preserve_host route to a TLS service: one per client Host (the SNI sent)."""
    return ("127.0.0.1", port, None, None, host)


async def test_a_key_whose_last_idle_connection_leaves_leaves_the_pool_table(nursery):
    """Every way an idle list empties (taken, expired in sweep or take, closed by watch or close_target, or kept
    from the start by upstream_keepalive 0) drops its key: a client varying its Host (a pool key per SNI with
    preserve_host) cannot grow the worker's pool table without bound, as lua-nginx-module's bounded keepalive cache."""
    port = await _listener(nursery, "127.0.0.1")
    closing = await _listener_closing(nursery)
    pool = Pool(LlhttpClient, idle_timeout=10)
    conns = [await pool.connect(_sni_key(port, f"h{i}.test"), 5) for i in range(4)]
    for uc in conns:
        pool.put(uc, 0.0)
    assert len(pool._idle) == 4
    assert pool.take(conns[0].key, 1.0) is conns[0]  # taken: busy, its key kept by nothing
    assert conns[0].key not in pool._idle
    pool.put(conns[0], 1.0)
    assert pool.take(conns[1].key, 10.5) is None  # expired on the way out
    assert pool.sweep(10.5) == 2  # h2 and h3; h0, back at 1.0, is not yet expired
    assert list(pool._idle) == [conns[0].key]
    assert pool.close_target("127.0.0.1", port) == 1
    assert pool._idle == {} and pool.idle_count() == 0

    watched = await pool.connect(_sni_key(closing, "w.test"), 5)
    pool.put(watched, 0.0)
    with trio.fail_after(5):
        while not pool.watch():  # the peer's FIN
            await trio.sleep(0.01)
    assert pool._idle == {}

    unkept = Pool(LlhttpClient, max_idle=0)  # upstream_keepalive 0
    uc = await unkept.connect(_sni_key(port, "k.test"), 5)
    unkept.put(uc, 0.0)
    assert uc.conn.closed and unkept._idle == {}


async def test_a_full_pool_closes_its_least_recently_used_connection_to_keep_the_one_put_back(nursery):
    """lua-nginx-module's ngx_http_lua_balancer_free_peer (src/ngx_http_lua_balancer.c:636, the cache Kong's
    upstream_keepalive_pool_size sizes): no free slot, the last of the cache (least recently used) is closed and
    the connection just done is kept, most recently used."""
    port = await _listener(nursery, "127.0.0.1")
    pool = Pool(LlhttpClient, max_idle=2)
    key = ("127.0.0.1", port)
    first, second, third = [await pool.connect(key, 5) for _ in range(3)]
    for i, uc in enumerate((first, second, third)):
        pool.put(uc, float(i))
    assert first.conn.closed and not third.conn.closed
    assert pool.idle_count() == 2
    assert pool.take(key, 3.0) is third


async def test_the_pool_size_bounds_idle_connections_of_all_targets_together(nursery):
    """OpenResty's balancer_keepalive (as nginx's keepalive) is one cache per worker, looked up by address, port
    and SNI: connections to another target take the room of the least recently used, whatever its target."""
    port = await _listener(nursery, "127.0.0.1")
    other = await _listener(nursery, "127.0.0.2")
    pool = Pool(LlhttpClient, max_idle=2)
    old, newer = [await pool.connect(("127.0.0.1", port), 5) for _ in range(2)]
    pool.put(old, 0.0)
    pool.put(newer, 1.0)
    elsewhere = await pool.connect(("127.0.0.2", other), 5)
    pool.put(elsewhere, 2.0)
    assert old.conn.closed and not newer.conn.closed
    assert pool.idle_count() == 2
    assert pool.idle_count(("127.0.0.2", other)) == 1
    assert pool.take(("127.0.0.1", port), 3.0) is newer


async def test_an_idle_connection_is_closed_when_its_idle_timeout_is_due(nursery):
    """upstream_keepalive_idle_timeout: OpenResty arms a timer of that on each connection it pools and closes the
    connection when it fires (lua-nginx-module src/ngx_http_lua_balancer.c:671 `ngx_add_timer(c->read,
    bp->keepalive_timeout)`, :799 `if (c->close || c->read->timedout) { goto close; }`; Kong kong/init.lua:1442
    `enable_keepalive(UPSTREAM_KEEPALIVE_IDLE_TIMEOUT, ...)`): on time, not at a later sweep, and before the one
    pooled after it."""
    port = await _listener(nursery, "127.0.0.1")
    pool = Pool(LlhttpClient, idle_timeout=0.3)
    first, second = [await pool.connect(("127.0.0.1", port), 5) for _ in range(2)]
    nursery.start_soon(pool.watch_forever)
    pooled_at = trio.current_time()
    pool.put(first, pooled_at)
    await trio.sleep(0.15)
    pool.put(second, trio.current_time())
    with trio.fail_after(5):
        while not first.conn.closed:
            await trio.sleep(0.005)
    assert 0.3 <= trio.current_time() - pooled_at < 0.38
    assert not second.conn.closed and pool.idle_count() == 1
