"""rate-limiting against Kong's own source and spec (kong/plugins/rate-limiting, kong/tools/redis/schema.lua;
spec/03-plugins/23-rate-limiting): the divergences an audit found, each stated as Kong behaves."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))
from plugin_helpers import (  # noqa: E402 - the shared plugin helpers live beside the plugin tests
    call,
    http_codec,  # noqa: F401 - the fixture: one codec
    plugin,
    refused,
    start,
)

from gateway.config import parse_config  # noqa: E402
from gateway.runtime import compile_config  # noqa: E402


def redis(**fields: object) -> dict:
    """A rate-limiting plugin on policy redis (never reached: these configs are only validated)."""
    return plugin("rate-limiting", second=10, policy="redis", redis={"host": "127.0.0.1", **fields})


# ---- schema: limits --------------------------------------------------------------------------------------------------


def test_a_longer_periods_limit_may_not_be_below_a_shorter_ones():
    """01-schema_spec "limits: smaller unit is less than bigger unit" (schema.lua validate_periods_order)."""
    assert "config: The limit for hour(10.0) cannot be lower than the limit for second(20.0)" in refused(
        plugin("rate-limiting", second=20, hour=10))
    assert "config: The limit for year(50.0) cannot be lower than the limit for month(60.0)" in refused(
        plugin("rate-limiting", second=10, minute=20, hour=30, day=40, month=60, year=50))


# ---- schema: strings -------------------------------------------------------------------------------------------------


def test_header_name_must_be_a_header_name():
    """typedefs.header_name (kong.tools.http.validate_header_name): only A-Z, a-z, 0-9, '_' and '-'."""
    message = refused(plugin("rate-limiting", second=1, limit_by="header", header_name="X App"))
    assert "config.header_name: bad header name 'X App', allowed characters are A-Z, a-z, 0-9, '_', and '-'" \
        in message


@pytest.mark.parametrize(("config", "field"), [
    ({"limit_by": "header", "header_name": ""}, "config.header_name"),
    ({"error_message": ""}, "config.error_message"),
    ({"policy": "redis", "redis": {"host": "r", "username": ""}}, "config.redis.username"),
    ({"policy": "redis", "redis": {"host": ""}}, "config.redis.host"),
])
def test_an_empty_string_is_refused(config, field):
    """Kong's schema strings are non-empty unless the field sets len_min = 0 (kong/db/schema/init.lua)."""
    assert field in refused(plugin("rate-limiting", second=1, **config))


# ---- schema: the gateway's bucket keys -------------------------------------------------------------------------------


@pytest.mark.parametrize(("config", "message"), [
    ({"rate": 1}, "config.rate: only algorithm token-bucket or limit-req uses it; fixed-window (the default)"),
    ({"burst": 10}, "config.burst: only algorithm token-bucket or limit-req uses it; fixed-window (the default)"),
    ({"burst": 0}, "config.burst: only algorithm token-bucket or limit-req uses it; fixed-window (the default)"),
    ({"nodelay": True}, "config.nodelay: only algorithm limit-req uses it; fixed-window (the default)"),
    ({"algorithm": "token-bucket", "rate": 1, "nodelay": False},
     "config.nodelay: only algorithm limit-req uses it; token-bucket never delays a request"),
], ids=["rate", "burst", "burst-0", "nodelay", "nodelay-under-token-bucket"])
def test_a_bucket_key_the_algorithm_does_not_read_is_refused_not_ignored(config, message):
    """schema.lua (fields: second .. year, limit_by, ..., sync_rate) has no rate, burst or nodelay: they are the
    gateway's own, read by algorithm token-bucket (rate, burst) and limit-req (all three: LimitSpec.bucketed, .paced).
    Beside the default fixed-window, `rate: 1` with `minute: 100` would let 100 a second through; token-bucket never
    delays, so `nodelay` says nothing there. A key the gateway takes must do what it says: check-config names it."""
    assert message in refused(plugin("rate-limiting", minute=100, **config))


def test_the_bucket_keys_are_taken_by_the_algorithms_that_read_them():
    """limit-req reads rate, burst and nodelay; token-bucket rate and burst (gateway/ratelimit/spec.py LimitSpec)."""
    for config in ({"algorithm": "limit-req", "rate": 2, "burst": 3, "nodelay": True},
                   {"algorithm": "token-bucket", "rate": 2, "burst": 3}):
        doc = {"services": [{"name": "s", "url": "http://127.0.0.1:1", "routes": [{"paths": ["/"]}]}],
               "plugins": [plugin("rate-limiting", **config)]}
        compile_config(parse_config(json.dumps(doc)))


# ---- schema: redis ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("host", "problem"), [
    ("redis://cache", "invalid value: redis://cache"),
    ("cache-.internal", "invalid value: cache-.internal"),
    ("300.0.0.1", "invalid value: 300.0.0.1"),
    ("cache:6379", "must not have a port"),
    ("10.0.0.1:6379", "must not have a port"),
])
def test_redis_host_must_be_a_host_without_a_port(host, problem):
    """redis.host is typedefs.host (kong/tools/redis/schema.lua): kong.tools.ip.normalize_ip must take it."""
    assert f"config.redis.host: {problem}" in refused(redis(host=host))


def test_the_redis_host_shorthand_is_checked_as_redis_host():
    """The deprecated redis_host fills redis.host, which is typedefs.host."""
    assert "redis.host: must not have a port" in refused(
        plugin("rate-limiting", second=10, policy="redis", redis_host="cache:6379"))


@pytest.mark.parametrize("fields", [{"port": 0}, {"database": -1}, {"port": 65535, "database": 2**31}],
                         ids=["port-0", "negative-database", "large"])
def test_redis_port_and_database_take_what_kongs_schema_takes(fields):
    """redis.port is typedefs.port (0 to 65535), redis.database an integer without bounds: a Redis that has no
    such database refuses its SELECT at run time, a failure as any other (fault_tolerant decides)."""
    compile_config(parse_config(json.dumps({"services": [{"name": "s", "url": "http://127.0.0.1:1", "routes": [
        {"paths": ["/"]}]}], "plugins": [plugin("rate-limiting", second=10, policy="local", redis=fields)]})))


def test_redis_server_name_must_be_a_name():
    """redis.server_name is typedefs.sni: no IP, no port."""
    assert "config.redis.server_name: must not be an IP" in refused(redis(ssl=True, server_name="10.0.0.1"))
    assert "config.redis.server_name: must not have a port" in refused(redis(ssl=True, server_name="cache:6380"))


async def test_redis_server_name_without_ssl_is_accepted(nursery, gateway):
    """kong/tools/redis/schema.lua does not tie server_name to ssl; lua-resty-redis reads it only for the TLS
    handshake. A config with it and ssl off loads (and the gateway runs)."""
    _, port = await start(nursery, gateway, plugins=[plugin(
        "rate-limiting", minute=6, policy="redis", fault_tolerant=True,
        redis={"host": "127.0.0.1", "port": 1, "server_name": "cache.example.test"})])
    assert (await call(port, "/")).status == 200


# ---- the headers -----------------------------------------------------------------------------------------------------


async def test_hide_client_headers_hides_retry_after_too(nursery, gateway):
    """04-access_spec "hide_client_headers (single ip)": neither the 200 nor the 429 carries any rate-limit header,
    Retry-After included (handler.lua stores Retry-After only when not hide_client_headers)."""
    _, port = await start(nursery, gateway, plugins=[plugin("rate-limiting", day=1, hide_client_headers=True)])
    first, second = await call(port, "/"), await call(port, "/")
    assert (first.status, second.status) == (200, 429)
    assert second.json()["message"] == "API rate limit exceeded"
    for reply in (first, second):
        assert [name for name, _ in reply.headers if "ratelimit" in name or name == "retry-after"] == []


# ---- limit_by header -------------------------------------------------------------------------------------------------


async def test_header_name_with_underscores_names_the_dashed_header(nursery, gateway):
    """handler.lua: kong.request.get_header(conf.header_name), nginx's $http_<name>: "X_App" is the X-App header,
    so two X-App values are two counters (not both the client's IP)."""
    _, port = await start(nursery, gateway, plugins=[plugin(
        "rate-limiting", day=1, limit_by="header", header_name="X_App")])
    assert (await call(port, "/", headers=[("X-App", "a")])).status == 200
    assert (await call(port, "/", headers=[("X-App", "b")])).status == 200
    assert (await call(port, "/", headers=[("X-App", "a")])).status == 429


async def test_limit_req_without_nodelay_delays_the_burst_as_nginx_does(nursery, gateway):
    """nginx's limit_req burst=N without nodelay (the guide's example): the excess is held, one every 1/rate s.
    rate 2/s, burst 2: the third request in a row is the second of the excess, held 2 / 2 = 1 s."""
    _, port = await start(nursery, gateway, plugins=[plugin("rate-limiting", algorithm="limit-req", rate=2, burst=2,
                                                            policy="local")])
    began = trio.current_time()
    statuses = [(await call(port)).status for _ in range(3)]
    took = trio.current_time() - began
    assert statuses == [200, 200, 200] and took >= 0.8, (statuses, took)
