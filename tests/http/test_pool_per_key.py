"""The upstream keep-alive pool size bounds each key's idle connections, as Kong 3.9.3's pools: kong/init.lua:1383-1397
names a pool per `ip|port` (`|sni[|client cert id]` for https) of `upstream_keepalive_pool_size` slots each
(build/openresty/patches/ngx_lua-0.10.26_01-dyn_upstream_keepalive.patch: ngx_http_lua_balancer_create_keepalive_pool
allocates cpool_size items per pool name, ngx_http_lua_balancer_free_peer closes `ngx_queue_last(&cpool->cache)`,
that pool's least recently used, when it has no free slot)."""

from __future__ import annotations

from functools import partial

import trio
from backends import service

from gateway.http.codec_llhttp import LlhttpClient
from gateway.http.pool import Pool

SLOW_S = 0.3


async def _hold(stream: trio.SocketStream) -> None:
    await trio.sleep_forever()


async def _listener(nursery: trio.Nursery, host: str) -> int:
    """A server on `host` that accepts connections and holds them open; its port."""
    listeners = await nursery.start(partial(trio.serve_tcp, _hold, 0, host=host))
    return listeners[0].socket.getsockname()[1]


async def test_a_connection_to_another_target_leaves_a_targets_only_idle_connection(nursery):
    """upstream_keepalive_pool_size 1: a connection to target B put back after target A's does not close A's (B's
    pool has its own slot), and A's next request reuses it."""
    a = ("127.0.0.1", await _listener(nursery, "127.0.0.1"))
    b = ("127.0.0.2", await _listener(nursery, "127.0.0.2"))
    pool = Pool(LlhttpClient, max_idle=1)
    to_a, to_b = await pool.connect(a, 5), await pool.connect(b, 5)
    pool.put(to_a, 0.0)
    pool.put(to_b, 1.0)
    assert not to_a.conn.closed and not to_b.conn.closed
    assert pool.take(a, 2.0) is to_a


async def test_a_full_key_closes_its_own_least_recently_used_not_an_older_one_of_another_key(nursery):
    """free_peer evicts the last of THAT pool's cache: target B's connection, idle the longest of all, stays when
    target A's pool is full; A's oldest is closed for the one put back."""
    a = ("127.0.0.1", await _listener(nursery, "127.0.0.1"))
    b = ("127.0.0.2", await _listener(nursery, "127.0.0.2"))
    pool = Pool(LlhttpClient, max_idle=2)
    to_b = await pool.connect(b, 5)
    first, second, third = [await pool.connect(a, 5) for _ in range(3)]
    for i, uc in enumerate((to_b, first, second, third)):
        pool.put(uc, float(i))
    assert first.conn.closed and not to_b.conn.closed
    assert (pool.idle_count(a), pool.idle_count(b), pool.idle_count()) == (2, 1, 3)
    assert pool.take(a, 4.0) is third and pool.take(a, 4.0) is second


async def test_a_connection_closed_for_its_keys_room_leaves_the_idle_timeout_sweep(nursery):
    """The sweep walks every key's idle connections oldest first (one timer each in nginx): one evicted for its
    key's room is no longer among them, and the others of every key are closed when due."""
    a = ("127.0.0.1", await _listener(nursery, "127.0.0.1"))
    b = ("127.0.0.2", await _listener(nursery, "127.0.0.2"))
    pool = Pool(LlhttpClient, max_idle=1, idle_timeout=10.0)
    first, second = [await pool.connect(a, 5) for _ in range(2)]
    to_b = await pool.connect(b, 5)
    for i, uc in enumerate((first, to_b, second)):
        pool.put(uc, float(i))
    assert first.conn.closed
    assert pool.sweep(11.5) == 1 and to_b.conn.closed and not second.conn.closed
    assert pool.sweep(12.0) == 1 and second.conn.closed and pool.idle_count() == 0


async def _slow_answers(stream: trio.SocketStream, open_by: list[int], target: int) -> None:
    """Answer each request (a head, no body) after SLOW_S; `open_by[target]` counts this connection while open."""
    open_by[target] += 1
    buf = b""
    try:
        while True:
            while b"\r\n\r\n" not in buf:
                data = await stream.receive_some(65536)
                if not data:
                    return
                buf += data
            buf = buf.partition(b"\r\n\r\n")[2]
            await trio.sleep(SLOW_S)
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        open_by[target] -= 1


async def _get(port: int, path: str) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    answer = b""
    while data := await stream.receive_some(65536):
        answer += data
    await stream.aclose()
    assert answer.startswith(b"HTTP/1.1 200 "), answer


async def test_a_burst_to_two_targets_leaves_pool_size_idle_connections_to_each(nursery, gateway):
    """upstream_keepalive 2, three concurrent requests to each of two targets (three connections each): 2 kept
    idle to EACH target afterwards (nginx with an upstream block of `keepalive 2` per ip:port, as Kong's per-key
    pools, does the same), the third of each closed."""
    open_by = [0, 0]
    ports = []
    for target in (0, 1):
        handler = partial(_slow_answers, open_by=open_by, target=target)
        listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        ports.append(listeners[0].socket.getsockname()[1])
    doc = {"services": [service(f"s{i}", f"http://127.0.0.1:{p}", [{"paths": [f"/t{i}/"]}])
                        for i, p in enumerate(ports)]}
    port = await gateway(doc, upstream_keepalive=2)
    with trio.fail_after(5):
        async with trio.open_nursery() as burst:
            for i in range(6):
                burst.start_soon(_get, port, f"/t{i % 2}/x")
        await trio.sleep(0.1)
    assert open_by == [2, 2]
