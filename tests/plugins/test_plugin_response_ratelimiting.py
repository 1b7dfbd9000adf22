"""response-ratelimiting through the gateway (in-process, real sockets), from Kong's spec
(spec/03-plugins/24-response-rate-limiting/04-access_spec.lua), each case with policy local (the state keeper's
counters, in-process here) and policy redis (a real redis-server): statuses, headers and bodies. The backend is
httpbin's /response-headers: the `x-kong-limit` query arguments come back as response headers.

As in Kong's spec, a test starts within a second with time to spare (wait_server_sync) and polls for the counters
the log phase adds after each response (wait_remaining_sync); every limit is per second."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlsplit

import h11
import pytest
import trio
from backends import Client, Reply, _Backend, free_port, service
from plugin_helpers import TIMEOUT, call, headers_of, http_codec, plugin, refused  # noqa: F401 - http_codec: fixture
from redis_server import RedisProcess, find_redis

ITERATIONS = 6  # Kong's spec


class HttpbinBackend(_Backend):
    """httpbin's /response-headers and /get in one: every answer is JSON with the request's headers; each
    `x-kong-limit` query argument is a response header of its own. `bytes=N`: N more body bytes, chunked, in
    pieces (a body still being read when the head goes out)."""

    async def handle_conn(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            seen = await self._read_request(stream, conn)
            if seen is None:
                return
            query = parse_qsl(urlsplit(seen.target).query)
            body = json.dumps({"headers": {k.lower(): v for k, v in seen.headers}}).encode()
            headers = [(b"content-type", b"application/json")]
            headers += [(k.encode(), v.encode()) for k, v in query if k.lower() == "x-kong-limit"]
            extra = int(dict(query).get("bytes", "0"))
            if not extra:
                headers.append((b"content-length", b"%d" % len(body)))
            await stream.send_all(conn.send(h11.Response(status_code=200, headers=headers)))
            await stream.send_all(conn.send(h11.Data(data=body)))
            for _ in range(0, extra, 4096):
                await stream.send_all(conn.send(h11.Data(data=b"x" * 4096)))
                await trio.sleep(0.001)
            await stream.send_all(conn.send(h11.EndOfMessage()))
            conn.start_next_cycle()


@pytest.fixture(scope="session")
def redis_binary() -> str:
    path, why = find_redis()
    if path is None:
        pytest.skip(why)
    return path


@pytest.fixture(params=["local", "redis"])
def policy(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict]:
    """The plugin's policy settings: local, or redis with a redis-server of the test's own."""
    if request.param == "local":
        yield {"policy": "local"}
        return
    server = RedisProcess(request.getfixturevalue("redis_binary"), tmp_path)
    server.start()
    try:
        yield {"policy": "redis", "redis": {"host": "127.0.0.1", "port": server.port, "database": 1}}
    finally:
        server.stop()


def rrl(policy: dict, limits: dict, **config: object) -> dict:
    return plugin("response-ratelimiting", **{"fault_tolerant": False, "limits": limits, **policy, **config})


async def gateway_with(nursery: trio.Nursery, gateway, routes: list[dict], **doc: object) -> int:  # noqa: ANN001
    backend = HttpbinBackend()
    await nursery.start(backend.serve)
    return await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}", routes)], **doc})


def limit_header(value: str) -> str:
    return "/response-headers?x-kong-limit=" + quote(value)


async def get(port: int, target: str, headers: list[tuple[str, str]] | None = None) -> Reply:
    return await call(port, target, headers)


def number(reply: Reply, name: str) -> float | None:
    value = reply.header(name)
    return float(value) if value is not None else None


async def fresh_second(need: float = 0.5) -> None:
    """Kong's wait_server_sync: go on only with at least `need` of the current second left."""
    left = 1 - time.time() % 1
    if left < need:
        await trio.sleep(left + 0.01)


async def remaining_settles(port: int, path: str, expected: dict[str, float],
                            headers: list[tuple[str, str]] | None = None) -> Reply:
    """Kong's wait_remaining_sync: ask (without an increment) until the counters show `expected`."""
    deadline = trio.current_time() + 1
    while True:
        reply = await get(port, path, headers)
        if reply.status == 200 and all(number(reply, k) == v for k, v in expected.items()):
            return reply
        assert trio.current_time() < deadline, (reply.status, reply.headers)
        await trio.sleep(0.01)


async def exhaust(port: int, path: str, limit: int, headers: list[tuple[str, str]] | None = None) -> Reply:
    """Kong's test_limit: `limit` responses of video=1 pass, then the next is 429 with the headers."""
    for _ in range(limit):
        assert (await get(port, path, headers)).status == 200
    await remaining_settles(port, "/response-headers", {"x-ratelimit-remaining-video-second": 0}, headers)
    return await get(port, path, headers)


def assert_limited(reply: Reply, limit: int) -> None:
    assert reply.status == 429, (reply.status, reply.body)
    assert reply.body == b""
    assert number(reply, "x-ratelimit-limit-video-second") == limit
    assert number(reply, "x-ratelimit-remaining-video-second") == 0


# ---- without authentication (by IP address) -------------------------------------------------------------------------


async def test_returns_remaining_counter(nursery, gateway, policy):
    port = await gateway_with(nursery, gateway, [{"paths": ["/"], "plugins": [
        rrl(policy, {"video": {"second": ITERATIONS}})]}])
    await fresh_second()
    n = ITERATIONS // 2
    for _ in range(n):
        assert (await get(port, limit_header("video=1"))).status == 200
    await remaining_settles(port, "/response-headers", {"x-ratelimit-remaining-video-second": ITERATIONS - n})
    reply = await get(port, limit_header("video=1"))
    assert reply.status == 200
    assert number(reply, "x-ratelimit-limit-video-second") == ITERATIONS
    assert number(reply, "x-ratelimit-remaining-video-second") == ITERATIONS - n - 1


async def test_blocks_if_exceeding_limit(nursery, gateway, policy):
    port = await gateway_with(nursery, gateway, [{"paths": ["/"], "plugins": [
        rrl(policy, {"video": {"second": ITERATIONS}})]}])
    await fresh_second()
    assert_limited(await exhaust(port, limit_header("video=1"), ITERATIONS), ITERATIONS)


async def test_counts_against_the_same_service_from_different_routes(nursery, gateway, policy):
    backend = HttpbinBackend()
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}", [
        {"name": "one", "paths": ["/one"], "strip_path": True}, {"name": "two", "paths": ["/two"], "strip_path": True}],
        plugins=[rrl(policy, {"video": {"second": ITERATIONS}})])]})
    await fresh_second()
    target = limit_header(f"video=1, test={ITERATIONS}")
    for i in range(ITERATIONS):
        assert (await get(port, ("/one" if i < ITERATIONS // 2 else "/two") + target)).status == 200
    await remaining_settles(port, "/one/response-headers", {"x-ratelimit-remaining-video-second": 0})
    assert (await get(port, "/one" + target)).status == 429


async def test_handles_multiple_limits(nursery, gateway, policy):
    limits = {"video": {"second": ITERATIONS * 2, "minute": ITERATIONS * 4}, "image": {"second": ITERATIONS}}
    port = await gateway_with(nursery, gateway, [{"paths": ["/"], "plugins": [rrl(policy, limits)]}])
    await fresh_second()
    n = ITERATIONS // 2
    in_sec, in_min = ITERATIONS * 2, ITERATIONS * 4
    for _ in range(n):
        assert (await get(port, limit_header("video=2, image=1"))).status == 200
        in_sec, in_min = in_sec - 2, in_min - 2
    reply = await remaining_settles(port, "/response-headers", {"x-ratelimit-remaining-video-second": in_sec,
                                                                "x-ratelimit-remaining-video-minute": in_min})
    assert number(reply, "x-ratelimit-limit-video-second") == ITERATIONS * 2
    assert number(reply, "x-ratelimit-limit-video-minute") == ITERATIONS * 4
    assert number(reply, "x-ratelimit-limit-image-second") == ITERATIONS
    assert number(reply, "x-ratelimit-remaining-image-second") == ITERATIONS - n
    for _ in range(n, ITERATIONS):
        assert (await get(port, limit_header("video=1, image=1"))).status == 200
        in_sec, in_min = in_sec - 1, in_min - 1
    reply = await remaining_settles(port, "/response-headers", {"x-ratelimit-remaining-video-second": in_sec,
                                                                "x-ratelimit-remaining-video-minute": in_min})
    assert number(reply, "x-ratelimit-remaining-image-second") == 0
    reply = await get(port, limit_header("video=1, image=1"))
    assert reply.status == 429
    assert number(reply, "x-ratelimit-remaining-image-second") == 0
    assert number(reply, "x-ratelimit-remaining-video-minute") == in_min - 1
    assert number(reply, "x-ratelimit-remaining-video-second") == in_sec - 1


# ---- with authentication ---------------------------------------------------------------------------------------------


CONSUMERS = [{"username": "provider_123", "custom_id": "provider_123", "keyauth_credentials": [{"key": "apikey123"}]},
             {"username": "provider_124", "custom_id": "provider_124", "keyauth_credentials": [{"key": "apikey124"}]}]


async def authenticated_gateway(nursery, gateway, policy: dict) -> int:  # noqa: ANN001
    """Kong's route3: key-auth, a route limit of ITERATIONS - 3 and one of ITERATIONS - 2 for provider_123."""
    return await gateway_with(nursery, gateway, [{"name": "r3", "paths": ["/"], "plugins": [
        plugin("key-auth"), rrl(policy, {"video": {"second": ITERATIONS - 3}}, fault_tolerant=True)]}],
        consumers=CONSUMERS,
        plugins=[{**rrl(policy, {"video": {"second": ITERATIONS - 2}}), "route": "r3", "consumer": "provider_123"}])


async def test_blocks_if_exceeding_limit_and_a_per_consumer_and_route_setting(nursery, gateway, policy):
    port = await authenticated_gateway(nursery, gateway, policy)
    await fresh_second()
    reply = await exhaust(port, limit_header("video=1"), ITERATIONS - 2, [("apikey", "apikey123")])
    assert_limited(reply, ITERATIONS - 2)


async def test_blocks_if_exceeding_limit_and_a_per_route_setting(nursery, gateway, policy):
    port = await authenticated_gateway(nursery, gateway, policy)
    await fresh_second()
    reply = await exhaust(port, limit_header("video=1"), ITERATIONS - 3, [("apikey", "apikey124")])
    assert_limited(reply, ITERATIONS - 3)


# ---- upstream usage headers ------------------------------------------------------------------------------------------


async def test_appends_the_upstream_headers_with_multiple_limits(nursery, gateway, policy):
    limits = {"video": {"second": ITERATIONS, "minute": ITERATIONS * 2}, "image": {"second": ITERATIONS - 1}}
    port = await gateway_with(nursery, gateway, [{"paths": ["/"], "plugins": [rrl(policy, limits)]}])
    await fresh_second()
    upstream = (await get(port, "/get")).json()["headers"]
    assert upstream["x-ratelimit-remaining-image"] == str(ITERATIONS - 1)
    assert upstream["x-ratelimit-remaining-video"] == str(ITERATIONS)
    upstream = (await get(port, limit_header("video=2, image=1"))).json()["headers"]  # consumed after this one
    assert upstream["x-ratelimit-remaining-image"] == str(ITERATIONS - 1)
    assert upstream["x-ratelimit-remaining-video"] == str(ITERATIONS)
    await remaining_settles(port, "/response-headers", {"x-ratelimit-remaining-video-second": ITERATIONS - 2})
    upstream = (await get(port, "/get")).json()["headers"]
    assert upstream["x-ratelimit-remaining-image"] == str(ITERATIONS - 2)
    assert upstream["x-ratelimit-remaining-video"] == str(ITERATIONS - 2)  # the least of second and minute


async def test_combines_limits_of_one_comma_joined_x_kong_limit_header(nursery, gateway, policy):
    """Kong's "combines multiple x-kong-limit headers": httpbin joins them into one header, as here."""
    port = await gateway_with(nursery, gateway, [{"paths": ["/"], "plugins": [
        rrl(policy, {"video": {"second": ITERATIONS * 2 + 2}, "image": {"second": ITERATIONS}})]}])
    await fresh_second()
    for _ in range(ITERATIONS):
        assert (await get(port, limit_header("video=2, image=1"))).status == 200
    assert (await get(port, limit_header("video=1"))).status == 200
    await remaining_settles(port, "/response-headers", {"x-ratelimit-remaining-video-second": 1})
    reply = await get(port, limit_header("video=2, image=1"))
    assert reply.status == 429
    assert number(reply, "x-ratelimit-remaining-image-second") == 0
    assert number(reply, "x-ratelimit-remaining-video-second") == 0


async def test_only_the_first_of_repeated_x_kong_limit_headers_counts(nursery, gateway, policy):
    """kong.service.response.get_header returns the first of repeated headers: image=1 is not counted."""
    port = await gateway_with(nursery, gateway, [{"paths": ["/"], "plugins": [
        rrl(policy, {"video": {"second": ITERATIONS}, "image": {"second": ITERATIONS}})]}])
    await fresh_second()
    reply = await get(port, "/response-headers?x-kong-limit=video%3D2&x-kong-limit=image%3D1")
    assert reply.status == 200
    assert number(reply, "x-ratelimit-remaining-video-second") == ITERATIONS - 2
    assert number(reply, "x-ratelimit-remaining-image-second") == ITERATIONS


async def test_the_x_kong_limit_header_is_removed_from_the_response(nursery, gateway, policy):
    port = await gateway_with(nursery, gateway, [{"paths": ["/"], "plugins": [
        rrl(policy, {"video": {"second": ITERATIONS}})]}])
    reply = await get(port, limit_header("video=1"))
    assert reply.status == 200
    assert headers_of(reply, "x-kong-limit") == []


async def test_blocks_on_first_violation(nursery, gateway, policy):
    port = await gateway_with(nursery, gateway, [{"paths": ["/"], "plugins": [
        rrl(policy, {"video": {"second": ITERATIONS, "minute": ITERATIONS * 2}, "image": {"second": 4}},
            block_on_first_violation=True)]}])
    await fresh_second()
    assert (await get(port, limit_header("video=2, image=4"))).status == 200
    deadline = trio.current_time() + 1
    while (reply := await get(port, "/response-headers")).status != 429:  # Kong's wait_remaining_sync for a 429
        assert trio.current_time() < deadline
        await trio.sleep(0.01)
    reply = await get(port, limit_header("video=2"))
    assert reply.status == 429
    assert reply.json()["message"] == "API rate limit exceeded for 'image'"


async def test_does_not_send_rate_limit_headers_when_hide_client_headers(nursery, gateway, policy):
    port = await gateway_with(nursery, gateway, [{"paths": ["/"], "plugins": [
        rrl(policy, {"video": {"second": ITERATIONS}}, hide_client_headers=True)]}])
    reply = await get(port, "/status/200")
    assert reply.status == 200
    assert reply.header("x-ratelimit-remaining-video-second") is None
    assert reply.header("x-ratelimit-limit-video-second") is None


# ---- expirations, global plugins ------------------------------------------------------------------------------------


async def test_expires_a_counter(nursery, gateway, policy):
    port = await gateway_with(nursery, gateway, [{"paths": ["/"], "plugins": [
        rrl(policy, {"video": {"second": ITERATIONS}})]}])
    await fresh_second()
    reply = await get(port, limit_header("video=1"))
    assert (reply.status, number(reply, "x-ratelimit-remaining-video-second")) == (200, ITERATIONS - 1)
    await trio.sleep(1 - time.time() % 1 + 0.01)  # the next second: a new counter
    reply = await get(port, limit_header("video=1"))
    assert number(reply, "x-ratelimit-limit-video-second") == ITERATIONS
    assert number(reply, "x-ratelimit-remaining-video-second") == ITERATIONS - 1


async def test_a_consumer_plugin_blocks_the_consumer_whatever_route_it_uses(nursery, gateway, policy):
    routes = [{"name": f"r{i}", "paths": [f"/r{i}"], "strip_path": True} for i in range(ITERATIONS)]
    port = await gateway_with(nursery, gateway, routes, plugins=[
        plugin("key-auth"), {**rrl(policy, {"video": {"second": ITERATIONS}}), "consumer": "provider_126"}],
        consumers=[{"username": "provider_126", "keyauth_credentials": [{"key": "apikey126"}]}])
    await fresh_second()
    key = [("apikey", "apikey126")]
    for i in range(ITERATIONS):
        assert (await get(port, f"/r{i}" + limit_header("video=1"), key)).status == 200
    await remaining_settles(port, "/r0/response-headers", {"x-ratelimit-remaining-video-second": 0}, key)
    assert_limited(await get(port, "/r1" + limit_header("video=1"), key), ITERATIONS)


async def test_a_global_plugin_blocks_across_routes(nursery, gateway, policy):
    routes = [{"name": f"r{i}", "paths": [f"/r{i}"], "strip_path": True} for i in range(ITERATIONS)]
    port = await gateway_with(nursery, gateway, routes, plugins=[rrl(policy, {"video": {"second": ITERATIONS}})])
    await fresh_second()
    for i in range(ITERATIONS):
        assert (await get(port, f"/r{i}" + limit_header("video=1"))).status == 200
    await remaining_settles(port, "/r0/response-headers", {"x-ratelimit-remaining-video-second": 0})
    assert_limited(await get(port, "/r0" + limit_header("video=1")), ITERATIONS)


# ---- what the 429 of the response phase is -----------------------------------------------------------------------


async def test_the_429_replaces_a_streamed_upstream_body_and_keeps_the_connection(nursery, gateway, policy):
    port = await gateway_with(nursery, gateway, [{"paths": ["/"], "plugins": [
        rrl(policy, {"video": {"second": 1}})]}])
    await fresh_second()
    assert (await get(port, limit_header("video=1"))).status == 200
    await remaining_settles(port, "/response-headers", {"x-ratelimit-remaining-video-second": 0})
    with trio.fail_after(TIMEOUT):
        async with await Client.connect(port) as client:
            reply = await client.request("GET", limit_header("video=1") + "&bytes=65536")
            assert (reply.status, reply.body, reply.header("content-length")) == (429, b"", "0")
            assert reply.header("x-kong-limit") is None
            again = await client.request("GET", "/response-headers")  # the same connection, still in step
            assert again.status == 200 and again.json()["headers"]["x-ratelimit-remaining-video"] == "0"


async def test_a_response_turned_429_is_not_counted(nursery, gateway, policy):
    port = await gateway_with(nursery, gateway, [{"paths": ["/"], "plugins": [
        rrl(policy, {"video": {"second": 2}})]}])
    await fresh_second()
    for _ in range(2):
        assert (await get(port, limit_header("video=1"))).status == 200
    await remaining_settles(port, "/response-headers", {"x-ratelimit-remaining-video-second": 0})
    assert (await get(port, limit_header("video=1"))).status == 429
    await trio.sleep(0.05)  # an increment (there must be none) would have landed
    upstream = (await get(port, "/get")).json()["headers"]
    assert upstream["x-ratelimit-remaining-video"] == "0"  # not -1


async def test_a_negative_increment_gives_back(nursery, gateway, policy):
    port = await gateway_with(nursery, gateway, [{"paths": ["/"], "plugins": [
        rrl(policy, {"video": {"second": ITERATIONS}})]}])
    await fresh_second()
    assert (await get(port, limit_header("video=3"))).status == 200
    await remaining_settles(port, "/response-headers", {"x-ratelimit-remaining-video-second": ITERATIONS - 3})
    assert (await get(port, limit_header("video=-2"))).status == 200
    await remaining_settles(port, "/response-headers", {"x-ratelimit-remaining-video-second": ITERATIONS - 1})


# ---- fault tolerance (Kong's cases are for policy redis) -------------------------------------------------------------


def unreachable_redis() -> dict:
    return {"policy": "redis", "redis": {"host": "127.0.0.1", "port": free_port(), "timeout": 500}}


async def test_redis_unreachable_without_fault_tolerance_is_a_500(nursery, gateway):
    port = await gateway_with(nursery, gateway, [{"paths": ["/"], "plugins": [
        rrl(unreachable_redis(), {"video": {"second": ITERATIONS}})]}])
    reply = await get(port, "/status/200")
    assert reply.status == 500
    assert reply.json()["message"] == "An unexpected error occurred"


async def test_redis_unreachable_with_fault_tolerance_passes_without_headers(nursery, gateway):
    port = await gateway_with(nursery, gateway, [{"paths": ["/"], "plugins": [
        rrl(unreachable_redis(), {"video": {"second": ITERATIONS}}, fault_tolerant=True)]}])
    reply = await get(port, "/status/200")
    assert reply.status == 200
    assert reply.header("x-ratelimit-limit-video-second") is None
    assert reply.header("x-ratelimit-remaining-video-second") is None


# ---- config ----------------------------------------------------------------------------------------------------------


def test_policy_cluster_is_refused_with_a_pointer_to_redis():
    message = refused(plugin("response-ratelimiting", policy="cluster", limits={"video": {"second": 1}}))
    assert "policy cluster keeps counters in Kong's database" in message and "use policy redis" in message


def test_a_longer_period_may_not_allow_less_than_a_shorter_one():
    message = refused(plugin("response-ratelimiting", limits={"video": {"second": 10, "minute": 5}}))
    assert "the limit for minute(5.0) cannot be lower than the limit for second(10.0)" in message


def test_a_limit_needs_a_period():
    message = refused(plugin("response-ratelimiting", limits={"video": {}}))
    assert "at least one of these fields must be non-empty" in message


def test_limits_are_required_and_not_empty():
    assert "limits" in refused(plugin("response-ratelimiting"))
    assert "limits" in refused(plugin("response-ratelimiting", limits={}))


def test_a_limit_name_must_be_a_header_name():
    assert "limits" in refused(plugin("response-ratelimiting", limits={"my video": {"second": 1}}))


def test_policy_redis_needs_a_host():
    message = refused(plugin("response-ratelimiting", policy="redis", limits={"video": {"second": 1}}))
    assert "set redis.host (or redis_host)" in message


def test_the_deprecated_redis_shorthands_fill_the_redis_record():
    import msgspec

    from gateway.policies.response_ratelimiting.schema import ResponseRateLimitingConfig

    config = msgspec.convert({"policy": "redis", "limits": {"video": {"second": 1}}, "redis_host": "r.test",
                              "redis_port": 6380, "redis_timeout": 100, "redis_database": 2, "redis_ssl": True,
                              "redis_ssl_verify": True, "redis_server_name": "sni.test", "redis_username": "u",
                              "redis_password": "p"}, ResponseRateLimitingConfig)
    r = config.redis
    assert (r.host, r.port, r.timeout, r.database, r.ssl, r.ssl_verify, r.server_name, r.username, r.password) == (
        "r.test", 6380, 100, 2, True, True, "sni.test", "u", "p")


def test_an_unknown_key_is_refused():
    assert "config.sync_rate is not supported" in refused(plugin("response-ratelimiting", sync_rate=1,
                                                                 limits={"video": {"second": 1}}))


async def test_redis_counters_expire_when_their_period_ends(nursery, gateway, redis_binary, tmp_path):
    server = RedisProcess(redis_binary, tmp_path)
    server.start()
    try:
        port = await gateway_with(nursery, gateway, [{"paths": ["/"], "plugins": [
            rrl({"policy": "redis", "redis": {"host": "127.0.0.1", "port": server.port}}, {"video": {"second": 5}})]}])
        await fresh_second()
        assert (await get(port, limit_header("video=1"))).status == 200
        await remaining_settles(port, "/response-headers", {"x-ratelimit-remaining-video-second": 4})
        keys = [line for line in server.command("KEYS", "*").decode().split("\r\n") if line.startswith("response")]
        ttls = {key.rsplit(":", 1)[1]: int(server.command("TTL", key)[1:-2]) for key in keys}
        assert sorted(ttls) == ["day", "hour", "minute", "month", "second", "year"]  # all six, as Kong counts
        assert ttls["second"] == 1 and 1 <= ttls["minute"] <= 60 and 1 <= ttls["hour"] <= 3600
        assert ttls["year"] >= ttls["month"] >= ttls["day"] >= ttls["hour"]  # (December: year and month end together)
    finally:
        server.stop()
