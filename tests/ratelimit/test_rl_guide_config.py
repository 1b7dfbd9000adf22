"""The reference guide's configs/kong.yml run as written, with its rate-limiting `policy: redis`, against a local
redis-server behind `gateway start --workers 2` (issue 16): the minute limit is exact across the workers.

Only what names the outside world changes: the targets become local backends, `redis_host` / `redis_port` the local
redis-server. The file's jwt plugin lets no one in without a credential, so one consumer with a jwt secret is added;
the token travels in the file's own `uri_param_names` (`?jwt=`).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import jwt
import pytest
import trio
import yaml
from e2e_helpers import Backend, GatewayNode, request
from redis_server import RedisProcess, find_redis

GUIDE = Path(__file__).resolve().parents[2] / "configs" / "kong.yml"
SECRET = "the-guides-consumer-secret-long-enough-for-hs256"
ISSUER = "guide-client-key"


def guide_config(targets: list[str], redis_port: int) -> dict:
    doc = yaml.safe_load(GUIDE.read_text())
    for target, address in zip(doc["targets"], targets, strict=False):
        target["target"] = address
    doc["targets"] = doc["targets"][:len(targets)]
    (limit,) = [p for p in doc["plugins"] if p["name"] == "rate-limiting"]
    assert limit["config"]["policy"] == "redis"
    limit["config"].update(redis_host="127.0.0.1", redis_port=redis_port)
    doc["consumers"] = [{"username": "guide-client",
                         "jwt_secrets": [{"key": ISSUER, "secret": SECRET, "algorithm": "HS256"}]}]
    doc.pop("_format_version", None)
    return doc


async def test_the_guides_kong_yml_limits_exactly_through_redis_across_two_workers(tmp_path, nursery):
    binary, why = find_redis()
    if binary is None:
        pytest.skip(why)
    redis = RedisProcess(binary, tmp_path)
    redis.start()
    backends = [Backend("a"), Backend("b")]
    for backend in backends:
        await nursery.start(backend.serve)
    doc = guide_config([b.target for b in backends], redis.port)
    limit = next(p for p in doc["plugins"] if p["name"] == "rate-limiting")["config"]["minute"]
    node = GatewayNode(tmp_path / "gw", doc)
    token = jwt.encode({"iss": ISSUER, "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
    statuses: Counter[int] = Counter()
    try:
        await node.start(workers=2)
        left = 60 - time.time() % 60
        if left < 15:  # the whole load (900 requests, 4-8 s on 2 busy cores) in one minute window
            await trio.sleep(left + 0.05)
        wanted = limit * 3 // 2

        async def client() -> None:
            while sum(statuses.values()) < wanted:
                reply = await request(node.port, "POST", f"/v1?jwt={token}", body)
                statuses[reply.status] += 1

        with trio.fail_after(20):
            async with trio.open_nursery() as clients:
                for _ in range(8):
                    clients.start_soon(client)
        keys = redis.command("KEYS", "*")
    finally:
        await node.stop()
        node.cleanup()
        redis.stop()
    assert set(statuses) == {200, 429}, statuses
    assert statuses[200] == limit, statuses  # 600 a minute, as the file says, whichever worker answered
    assert sum(b.hits for b in backends) == limit
    assert b"gateway:rl:" in keys  # the count lives in Redis, where other gateway hosts would share it
