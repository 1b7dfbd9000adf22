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
