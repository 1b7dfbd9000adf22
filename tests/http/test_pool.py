"""The upstream connection pool (gateway.http.pool): which connections are a target's (circuit-breaker's
sweep_force_shutdown), how its keys keep them apart, and which ones it keeps idle and for how long."""

from __future__ import annotations

from functools import partial
from typing import Any

import trio
from backends import request, service
from dns_server import serve_names

from gateway import worker
from gateway.config.schema import GatewaySettings
from gateway.dns.process import serving
from gateway.http.codec_llhttp import LlhttpClient
from gateway.http.pool import Pool, UpstreamConn, _target_of
from gateway.http.tls_contexts import ClientTls
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


async def test_the_pool_size_bounds_each_keys_idle_connections_not_all_targets_together(nursery):
    """Kong 3.9.3 names a pool per ip|port (|sni[|client cert id] for https) of upstream_keepalive_pool_size slots
    each (kong/init.lua:1383-1397, `pool = ip .. "|" .. port`, `pool_size = upstream_keepalive_pool_size`; its
    ngx_lua-0.10.26_01-dyn_upstream_keepalive.patch: ngx_http_lua_balancer_create_keepalive_pool allocates
    cpool_size items per pool name): a connection to another target takes none of a full key's room."""
    port = await _listener(nursery, "127.0.0.1")
    other = await _listener(nursery, "127.0.0.2")
    pool = Pool(LlhttpClient, max_idle=2)
    old, newer = [await pool.connect(("127.0.0.1", port), 5) for _ in range(2)]
    pool.put(old, 0.0)
    pool.put(newer, 1.0)
    elsewhere = await pool.connect(("127.0.0.2", other), 5)
    pool.put(elsewhere, 2.0)
    assert not old.conn.closed and not newer.conn.closed and not elsewhere.conn.closed
    assert pool.idle_count() == 3
    assert pool.idle_count(("127.0.0.1", port)) == 2 and pool.idle_count(("127.0.0.2", other)) == 1


async def test_an_idle_connection_is_closed_when_its_idle_timeout_is_due(nursery):
    """upstream_keepalive_idle_timeout: OpenResty arms a timer of that on each connection it pools and closes the
    connection when it fires (lua-nginx-module src/ngx_http_lua_balancer.c:671 `ngx_add_timer(c->read,
    bp->keepalive_timeout)`, :799 `if (c->close || c->read->timedout) { goto close; }`; Kong kong/init.lua:1442
    `enable_keepalive(UPSTREAM_KEEPALIVE_IDLE_TIMEOUT, ...)`): on time, not at a later sweep (seconds late), and
    before the one pooled after it. (The margins, 0.45 s, are a busy host's scheduling.)"""
    port = await _listener(nursery, "127.0.0.1")
    pool = Pool(LlhttpClient, idle_timeout=1.0)
    first, second = [await pool.connect(("127.0.0.1", port), 5) for _ in range(2)]
    nursery.start_soon(pool.watch_forever)
    pooled_at = trio.current_time()
    pool.put(first, pooled_at)
    await trio.sleep(0.5)
    pool.put(second, trio.current_time())
    with trio.fail_after(10):
        while not first.conn.closed:
            await trio.sleep(0.005)
    closed_after = trio.current_time() - pooled_at
    assert 1.0 <= closed_after < 1.45, closed_after
    assert not second.conn.closed and pool.idle_count() == 1


async def _listener_closing_on(nursery: trio.Nursery, close: trio.Event) -> int:
    """A server on 127.0.0.1 that holds each connection it accepts until `close` is set, then closes it; its port."""

    async def hold_then_close(stream: trio.SocketStream) -> None:
        await close.wait()
        await stream.aclose()

    listeners = await nursery.start(partial(trio.serve_tcp, hold_then_close, 0, host="127.0.0.1"))
    return listeners[0].socket.getsockname()[1]


async def _readable(uc: UpstreamConn) -> None:
    """Wait until the connection's socket has something to read (looked at with poll, no epoll event taken)."""
    with trio.fail_after(5):
        while not uc.conn.readable():
            await trio.sleep(0.005)


async def test_a_connection_the_upstream_closed_while_it_was_busy_is_not_put_back(nursery):
    """nginx caches no connection whose read side is ready when it is freed (src/http/modules/
    ngx_http_upstream_keepalive_module.c:403, release-1.27.1: `if (c->read->ready)
    ngx_http_upstream_keepalive_close_handler(c->read)`, which finds the EOF with recv MSG_PEEK and closes it). The
    pool's watch is edge-triggered: a FIN that came while the connection was busy (its answer being written to a
    slow client) and that the watch took then is not reported again, so `put` must look."""
    close = trio.Event()
    port = await _listener_closing_on(nursery, close)
    pool = Pool(LlhttpClient)
    uc = await pool.connect(("127.0.0.1", port), 5)
    close.set()
    await _readable(uc)  # the upstream's FIN is in
    assert pool.watch() == 0  # busy: left alone, and its edge taken
    pool.put(uc, 0.0)
    assert uc.conn.closed and pool.idle_count() == 0
    assert not pool._open  # (out of the pool's count)


async def test_a_connection_whose_only_activity_while_busy_was_its_response_is_put_back(nursery):
    """The watch sees every busy connection whose response arrives; once that response is read, nothing is left
    to read, and `put` keeps the connection as before (one look, then no more until the watch sees it again)."""
    async def answer(stream: trio.SocketStream) -> None:
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await trio.sleep_forever()

    listeners = await nursery.start(partial(trio.serve_tcp, answer, 0, host="127.0.0.1"))
    pool = Pool(LlhttpClient)
    uc = await pool.connect(("127.0.0.1", listeners[0].socket.getsockname()[1]), 5)
    await _readable(uc)
    pool.watch()
    assert uc.stirred
    assert uc.conn.recv_ready()  # (the codec reads the response)
    pool.put(uc, 0.0)
    assert not uc.conn.closed and pool.idle_count() == 1 and not uc.stirred


async def test_a_draining_pool_closes_its_idle_connections_and_keeps_none_put_back(nursery):
    """A worker told to quit closes its idle connections at once (nginx release-1.27.1 src/os/unix/
    ngx_process_cycle.c:735-738, ngx_close_idle_connections; src/core/ngx_connection.c:1441-1443) and caches none
    freed afterwards (ngx_http_upstream_keepalive_module.c:350 `if (ngx_terminate || ngx_exiting) goto invalid`;
    OpenResty's balancer pool, which Kong uses, the same): gateway/worker.py's drain calls `stop_keeping`."""
    port = await _listener(nursery, "127.0.0.1")
    pool = Pool(LlhttpClient)
    key = ("127.0.0.1", port)
    idle = [await pool.connect(key, 5) for _ in range(2)]
    busy = await pool.connect(key, 5)
    for uc in idle:
        pool.put(uc, 0.0)
    assert pool.stop_keeping() == 2
    assert all(uc.conn.closed for uc in idle) and pool.idle_count() == 0
    pool.put(busy, 0.0)  # its response ended during the drain
    assert busy.conn.closed and pool.idle_count() == 0 and not pool._open


def test_tls_connections_to_one_address_for_two_names_are_pooled_apart():
    """Kong keys an https connection pool by ip, port and the Host it sends as SNI (kong/init.lua:1393-1403:
    `balancer_data_ip|balancer_data_port|var.upstream_host|tls_verify|...`), so two targets whose names resolve to
    one address never share a TLS session opened (and its certificate checked) for the other. Discovery makes each
    name's address a target of its own (host the address, hostname the name): the name sent is in the key."""
    tls = ClientTls(False)
    a = TargetRuntime("127.0.0.2", 443, 100, hostname="a.test")
    b = TargetRuntime("127.0.0.2", 443, 100, hostname="b.test")
    assert _pool_key(a, tls) != _pool_key(b, tls)
    assert _pool_key(a, tls) == _pool_key(TargetRuntime("127.0.0.2", 443, 100, hostname="a.test"), tls)
    assert _target_of(_pool_key(a, tls)) == ("127.0.0.2", 443)  # (the address's connections, for close_target)
    assert _pool_key(a, tls, sni="c.test") != _pool_key(b, tls, sni="d.test")  # preserve_host: the request's name
    assert _pool_key(a, None) == _pool_key(b, None) == ("127.0.0.2", 443)  # plain HTTP: Kong keys ip and port only


async def test_a_try_its_read_timeout_ended_is_no_longer_counted_open_by_the_pool(nursery, gateway, monkeypatch):
    """nginx frees an upstream connection's slot whatever closes it (src/core/ngx_connection.c ngx_close_connection
    -> ngx_free_connection, release-1.27.1). The pool counts its open connections (its descriptor budget, and
    close_target's walk); the timer that ends a retryable try on read_timeout closes the pool's connection, so it
    leaves that count then, not when another socket happens to get its descriptor number."""
    pools: list[Pool] = []

    class Recorded(Pool):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            pools.append(self)

    monkeypatch.setattr(worker, "Pool", Recorded)
    silent = await _listener(nursery, "127.0.0.1")  # takes the request, never answers
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{silent}", retries=0, read_timeout=200)]})
    with trio.fail_after(5):
        assert (await request(port, "GET", "/")).status == 504
    assert [uc for uc in pools[0]._open.values() if uc.conn.closed] == []
