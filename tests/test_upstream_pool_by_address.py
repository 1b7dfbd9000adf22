"""A target's host name is looked up for every try, not for every connection, and kept-alive upstream connections
are pooled by the address found: Kong's balancer calls toip for each try (kong/runloop/balancer/init.lua:375, and
targets.lua:556 getAddressPeer for a name among an upstream's addresses), which takes the name's records in turn
from the DNS cache, and kong/init.lua:1393-1407 keys the keepalive pool by `balancer_data_ip .. "|" ..
balancer_data_port` (with the SNI and TLS settings for https)."""

from __future__ import annotations

from collections import Counter
from functools import partial

import trio
from backends import EchoBackend, request, serve_on_addresses, service, upstream
from dns_server import serve_names

from gateway.http.codec_llhttp import LlhttpClient
from gateway.http.pool import Pool
from gateway.pipeline.forward import _pool_key
from gateway.runtime import TargetRuntime

TIMEOUT = 10


async def test_keepalive_requests_to_a_service_name_take_turns_over_its_addresses(nursery, gateway):
    """kong/runloop/balancer/init.lua:375 `toip(balancer_data.host, ...)` for every request (each call rotates the
    name's records) and kong/init.lua:1407 `pool = balancer_data_ip .. "|" .. balancer_data_port`: a kept-alive
    connection to one address serves only the requests whose turn that address is."""
    addresses = ["127.0.0.2", "127.0.0.3"]
    names = await serve_names(nursery, {"ka.test": addresses})
    port, _ = await serve_on_addresses(nursery, addresses, EchoBackend)
    gw = await gateway({"services": [service("svc", f"http://ka.test:{port}")]}, **names.settings)
    with trio.fail_after(TIMEOUT):  # the backends keep their connections (Content-Length framing)
        replies = [await request(gw, "GET", "/x") for _ in range(6)]
    assert [r.status for r in replies] == [200] * 6
    assert Counter(r.header("x-backend") for r in replies) == {a: 3 for a in addresses}


async def test_a_pooled_connection_is_not_reused_after_the_services_name_moved(nursery, gateway):
    """kong/runloop/balancer/init.lua:375 (toip for each request) and kong/init.lua:1407 (the pool keyed by the
    address found): once the record's TTL has run out and the name points elsewhere, requests go to the new address,
    however long a connection to the old one stays alive in the pool."""
    names = await serve_names(nursery, {"moving.test": ["127.0.0.2"]}, ttl=1)
    port, _ = await serve_on_addresses(nursery, ["127.0.0.2", "127.0.0.3"], EchoBackend)
    gw = await gateway({"services": [service("svc", f"http://moving.test:{port}")]}, dns_stale_ttl_s=0,
                       **names.settings)
    with trio.fail_after(TIMEOUT):
        first = await request(gw, "GET", "/x")
        assert first.header("x-backend") == "127.0.0.2"
        names.names["moving.test"] = ["127.0.0.3"]
        for _ in range(8):  # the pooled connection stays in use (well under the idle timeout) until the TTL is out
            await trio.sleep(0.25)
            await request(gw, "GET", "/x")
        later = [await request(gw, "GET", "/x") for _ in range(3)]
    assert names.asked("moving.test") >= 2  # the name was looked up again (its TTL ran out)
    assert [r.header("x-backend") for r in later] == ["127.0.0.3"] * 3


async def test_keepalive_requests_to_an_srv_records_target_name_take_turns_over_its_addresses(nursery, gateway):
    """kong/runloop/balancer/targets.lua:554-556 (getAddressPeer: an address that is a name, an SRV record's target,
    goes through toip for every request) and kong/init.lua:1407 (pooled by the address found): the record's target's
    addresses take turns over kept-alive connections too."""
    addresses = ["127.0.0.2", "127.0.0.3"]
    names = await serve_names(nursery, {"node.test": addresses})
    port, _ = await serve_on_addresses(nursery, addresses, EchoBackend)
    names.srv["svc.test"] = [(10, 10, port, "node.test")]
    up = upstream("up", [port])
    up["targets"][0]["target"] = "svc.test:80"
    gw = await gateway({"upstreams": [up], "services": [service("svc", "http://up")]}, **names.settings)
    with trio.fail_after(TIMEOUT):
        replies = [await request(gw, "GET", "/x") for _ in range(6)]
    assert [r.status for r in replies] == [200] * 6
    assert Counter(r.header("x-backend") for r in replies) == {a: 3 for a in addresses}


async def _hold(stream: trio.SocketStream) -> None:
    await trio.sleep_forever()


async def test_the_sweep_of_a_name_closes_its_connections_at_an_srv_records_port(nursery):
    """The circuit's sweep (circuit-breaker's sweep_force_shutdown) names the target by its host and port; a name's
    connections are pooled by address and by the port toip found (an SRV record's), and are still the target's."""
    listeners = await nursery.start(partial(trio.serve_tcp, _hold, 0, host="127.0.0.2"))
    srv_port = listeners[0].socket.getsockname()[1]
    named = TargetRuntime("api.test", 1, 100)
    pool = Pool(LlhttpClient)
    uc = await pool.connect(_pool_key(named, None, "127.0.0.2", port=srv_port), 5)
    pool.put(uc, 0.0)
    assert pool.close_target("127.0.0.2", srv_port) == 0  # the address itself is another target
    assert pool.close_target("api.test", 1) == 1
    assert uc.conn.closed and pool.idle_count() == 0
