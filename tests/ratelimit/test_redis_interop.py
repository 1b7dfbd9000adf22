"""policy redis beside Kong 3.9.3 on one Redis (a migration runs both): response-ratelimiting's counters under
Kong's keys (and policy local's, keys being keys), the commands an ACL user written for Kong allows, and TLS
verified as Kong's lua-resty-redis verifies it (the chain; the host name only against redis.server_name).

The Redis is Debian's redis-server (tests/redis_server.py), one per test, on a free loopback port."""

from __future__ import annotations

import json
import ssl
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
from backends import Client, EchoBackend, Reply, free_port, service
from redis_server import RedisProcess, find_redis, running_redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))
from plugin_helpers import http_codec, plugin  # noqa: E402, F401 - the fixture: one codec
from tls_helpers import Pki  # noqa: E402

from gateway.config import parse_config  # noqa: E402
from gateway.http.tls_contexts import TrustStore, use_trust_store  # noqa: E402
from gateway.policies.response_ratelimiting.usage import EMPTY_UUID  # noqa: E402
from gateway.ratelimit.redis_client import RedisSettings, tls_context  # noqa: E402
from gateway.runtime import compile_config  # noqa: E402
from gateway.telemetry.entities import kong_id  # noqa: E402

ROUTE_ID = "6b1a3c1e-3f5a-4a51-9c55-1d2d3e4f5a60"
SERVICE_ID = "0c7d2a11-8e0b-4c64-b2b6-5f1e2d3c4b71"
VIDEO_6_A_MINUTE = {"limits": {"video": {"minute": 6}}}


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisProcess]:
    with running_redis(tmp_path) as server:
        yield server


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """(TLS port, CA file) of a redis-server whose certificate, from a test CA, names only redis.internal.test."""
    binary, why = find_redis()
    if binary is None:
        pytest.skip(why)
    pki = Pki()
    cert, key = pki.files(tmp_path, "redis", "redis.internal.test")
    ca_file = tmp_path / "ca.crt"
    ca_file.write_text(pki.ca_pem)
    tls_port = free_port()
    server = RedisProcess(binary, tmp_path, "--tls-port", str(tls_port), "--tls-cert-file", cert, "--tls-key-file",
                          key, "--tls-ca-cert-file", str(ca_file), "--tls-auth-clients", "no")
    server.start()
    try:
        yield tls_port, ca_file
    finally:
        server.stop()
        use_trust_store(TrustStore())  # (the gateway's config set lua_ssl_trusted_certificate in this process)


def rrl_redis(port: int, **redis: object) -> dict:
    """response-ratelimiting, video 6 a minute, on the Redis at `port` (fault_tolerant off: a failure is a 500)."""
    return plugin("response-ratelimiting", **VIDEO_6_A_MINUTE, policy="redis", fault_tolerant=False,
                  redis={"host": "127.0.0.1", "port": port, "timeout": 2000, **redis})


async def one_request(nursery: trio.Nursery, gateway: Any, plugin_doc: dict, cost: bytes | None = None,
                      **settings: Any) -> Reply:
    """One GET through route ROUTE_ID (of service SERVICE_ID) carrying `plugin_doc`; the upstream's answer says
    `x-kong-limit: <cost>` when given."""
    backend = EchoBackend()
    if cost is not None:
        backend.extra_headers = [(b"x-kong-limit", cost)]
    await nursery.start(backend.serve)
    svc = service("svc", f"http://127.0.0.1:{backend.port}",
                  [{"id": ROUTE_ID, "name": "r", "paths": ["/"], "plugins": [plugin_doc]}], id=SERVICE_ID)
    port = await gateway({"services": [svc]}, **settings)
    with trio.fail_after(5):
        async with await Client.connect(port) as client:
            return await client.request("GET", "/")


def minute_ms(now: float) -> int:
    """Kong's period_date of the minute holding `now`: its start in ms (kong/tools/timestamp.lua get_timestamps)."""
    return int(now // 60) * 60 * 1000


def video_minute_key(start_ms: int) -> str:
    """Kong's key of video's minute for 127.0.0.1, for a plugin nested in route ROUTE_ID (so with no service)."""
    return f"response-ratelimit:{ROUTE_ID}:{EMPTY_UUID}:127.0.0.1:{start_ms}:video:minute"


# ---- F1: response-ratelimiting's counters under Kong's keys --------------------------------------------------------


async def test_response_ratelimiting_reads_the_count_kong_wrote_to_the_shared_redis(nursery, gateway, redis):
    """Kong 3.9.3 response-ratelimiting/policies/init.lua:59-63 keys a counter
    response-ratelimit:<route_id>:<service_id>:<identifier>:<period_date>:<name>:<period>, the plugin's own route
    and service (kong/runloop/plugins_iterator.lua:164-165; nested in a route it has no service: EMPTY_UUID,
    init.lua:42-56), and usage() GETs it (init.lua:256). A Kong node on the same Redis used up video's minute (6 of
    6): the gateway's next response declaring video=1 is Kong's 429, remaining 0."""
    now = time.time()
    for start in {minute_ms(now), minute_ms(now + 60)}:  # (a minute's end during the test)
        assert redis.command("SET", video_minute_key(start), "6") == b"+OK\r\n"
    reply = await one_request(nursery, gateway, rrl_redis(redis.port), cost=b"video=1")
    assert (reply.status, reply.header("x-ratelimit-remaining-video-minute")) == (429, "0"), \
        (reply.status, redis.command("KEYS", "*"))


async def test_response_ratelimiting_counts_where_kong_reads(nursery, gateway, redis):
    """The other way: a response's video=2 is added (INCRBY, init.lua:224-226) to the key Kong's usage() reads
    (init.lua:59-63, 254-256), so Kong's nodes count it."""
    before = time.time()
    reply = await one_request(nursery, gateway, rrl_redis(redis.port), cost=b"video=2")
    after = time.time()
    assert reply.status == 200
    keys = sorted({video_minute_key(minute_ms(before)), video_minute_key(minute_ms(after))})
    with trio.fail_after(2):  # (the increment is sent after the response)
        while b"$1\r\n2\r\n" not in (values := [redis.command("GET", key) for key in keys]):
            await trio.sleep(0.02)
    assert b"$1\r\n2\r\n" in values


def scope_of(doc: dict) -> str:
    """The `<route id>:<service id>` of the keys of the response-ratelimiting instance serving GET / in `doc`."""
    route = compile_config(parse_config(json.dumps(doc))).router.match(b"GET", b"/", None, []).payload
    (policy,) = [p for p in route.policies if p.name == "response-ratelimiting"]
    return str(policy.scope)


RRL = plugin("response-ratelimiting", **VIDEO_6_A_MINUTE)
NAMED = {"name": "s", "url": "http://127.0.0.1:1"}  # a service and route named, without ids: Kong's ids of the names


@pytest.mark.parametrize(("doc", "scope"), [
    ({"services": [{**NAMED, "routes": [{"name": "r", "paths": ["/"], "plugins": [RRL]}]}]},
     f"{kong_id('routes', 'r')}:{EMPTY_UUID}"),
    ({"services": [{**NAMED, "plugins": [RRL], "routes": [{"name": "r", "paths": ["/"]}]}]},
     f"{EMPTY_UUID}:{kong_id('services', 's')}"),
    ({"services": [{**NAMED, "id": SERVICE_ID, "routes": [{"name": "r", "id": ROUTE_ID, "paths": ["/"]}]}],
      "plugins": [{**RRL, "route": "r", "service": SERVICE_ID}]}, f"{ROUTE_ID}:{SERVICE_ID}"),
    ({"services": [{**NAMED, "routes": [{"name": "r", "paths": ["/"]}]}], "plugins": [RRL]},
     f"{EMPTY_UUID}:{EMPTY_UUID}"),
], ids=["nested-in-a-route", "nested-in-a-service", "naming-route-and-service", "global"])
def test_the_counters_scope_is_the_plugins_own_route_and_service_ids(doc, scope):
    """kong/runloop/plugins_iterator.lua:164-165: conf.route_id and conf.service_id are the plugin entity's foreign
    keys (a nested plugin's is its parent's only: declarative_config.lua:451-452), each EMPTY_UUID when absent
    (response-ratelimiting/policies/init.lua:42-56); a named entity without an id has Kong's declarative id."""
    assert scope_of(doc) == scope


class Keeper:
    """SharedState's counters API as policy local uses it: the keys asked recorded, every counter 0."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def counters_usage(self, keys: list[str], ends: list[float]) -> list[int]:
        self.asked += keys
        return [0] * len(keys)


async def test_policy_local_keeps_its_counters_under_kongs_keys():
    """Kong's local policy keys its shared dict with the same get_local_key (init.lua:137-138, 152): the keeper's
    counters (and each worker's memory of them) are asked for under Kong's key."""
    keeper = Keeper()
    doc = {"services": [{**NAMED, "routes": [{"name": "r", "id": ROUTE_ID, "paths": ["/"], "plugins": [RRL]}]}]}
    route = compile_config(parse_config(json.dumps(doc)), shared=keeper).router.match(b"GET", b"/", None, []).payload
    (policy,) = [p for p in route.policies if p.name == "response-ratelimiting"]
    ex = SimpleNamespace(consumer=None, client_ip="127.0.0.1", request=SimpleNamespace(headers=[]), state=None)
    now = int(time.time())
    assert not await policy.access(ex)
    assert keeper.asked[0] in {video_minute_key(minute_ms(now)), video_minute_key(minute_ms(now + 1))}


# ---- F4: the commands Kong's ACL user allows -------------------------------------------------------------------


async def test_response_ratelimiting_works_for_the_acl_user_kongs_commands_need(nursery, gateway, redis):
    """Kong 3.9.3 response-ratelimiting/policies/init.lua sends, for policy redis: AUTH (99-109), EXISTS (211),
    INCRBY and EXPIRE (224-229), GET (256), and INFO (kong/reports.lua retrieve_redis_version, its failure only a
    warning). An ACL user allowed just those works: the counts are read with a GET per key (no MGET)."""
    assert redis.command("ACL", "SETUSER", "kongrrl", "on", "allkeys", "+get", "+exists", "+incrby", "+expire",
                         "+info", ">secret") == b"+OK\r\n"
    reply = await one_request(nursery, gateway, rrl_redis(redis.port, username="kongrrl", password="secret"),
                              cost=b"video=1")
    assert (reply.status, reply.header("x-ratelimit-remaining-video-minute")) == (200, "5"), reply.body[:200]


# ---- F3: TLS as lua-resty-redis: the chain, the host name only against server_name ------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_ssl_verify_without_server_name_checks_the_chain_not_the_host(nursery, gateway, tls_redis, host):
    """lua-resty-redis connect() calls sock:sslhandshake(false, opts.server_name, opts.ssl_verify); without
    redis.server_name no name is given, and lua-nginx-module checks the certificate's host only when one is
    (ngx_http_lua_socket_tcp.c:2103-2104: `u->ssl_name.len && ngx_ssl_check_host`): a Redis whose certificate,
    from a trusted CA, names another host is used."""
    tls_port, ca_file = tls_redis
    rl = plugin("rate-limiting", minute=5, policy="redis", fault_tolerant=False,
                redis={"host": host, "port": tls_port, "ssl": True, "ssl_verify": True, "timeout": 2000})
    reply = await one_request(nursery, gateway, rl, lua_ssl_trusted_certificate=str(ca_file))
    assert (reply.status, reply.header("x-ratelimit-remaining-minute")) == (200, "4"), (reply.status, reply.body[:300])


def test_ssl_without_server_name_sends_no_sni():
    """ngx_http_lua_socket_tcp.c:1921-1926 sets the TLS SNI only for a given server_name: a Redis host given by
    name, connected to at its address, gets none (the chain is still verified: CERT_REQUIRED)."""
    context = tls_context(RedisSettings("redis.example.test", ssl=True, ssl_verify=True))
    assert context is not None
    tls = context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="10.0.0.5")
    assert (tls.server_hostname, context.check_hostname, context.verify_mode) == (None, False, ssl.CERT_REQUIRED)


def test_ssl_with_server_name_sends_it_and_checks_the_host_against_it():
    """With redis.server_name, lua-nginx-module sends it as SNI and checks the certificate's host against it
    (ngx_http_lua_socket_tcp.c:1921-1926, 2103-2104), whatever address the connection was made to."""
    context = tls_context(RedisSettings("127.0.0.1", ssl=True, ssl_verify=True, server_name="redis.internal.test"))
    assert context is not None
    tls = context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="127.0.0.1")
    assert (tls.server_hostname, context.check_hostname) == ("redis.internal.test", True)
