"""proxy-cache on `gateway start --workers 2`: one host-wide cache, as Kong's shared dict is one for all nginx workers,
and the operator's purge (Kong's DELETE /proxy-cache/{key}) over the admin channel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from e2e_helpers import Backend, GatewayNode, conns_per_worker

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc (which worker is which)")


@pytest.fixture
async def cached(nursery: trio.Nursery, tmp_path: Path):  # noqa: ANN201 - (backend, gateway, {worker pid: conn})
    backend = Backend("a")
    await nursery.start(backend.serve)
    doc: dict[str, Any] = {
        "services": [{"name": "s", "url": f"http://{backend.target}", "routes": [{"name": "r", "paths": ["/"]}]}],
        "plugins": [{"name": "proxy-cache", "service": "s",
                     "config": {"strategy": "memory", "cache_ttl": 60, "content_type": ["application/json"]}}],
    }
    gw = GatewayNode(tmp_path / "gw", doc)
    try:
        await gw.start(workers=2)
        conns = await conns_per_worker(gw.port, await gw.worker_pids())
        yield backend, gw, [c for c, *_ in conns.values()]
        for conn in (c for cs in conns.values() for c in cs):
            await conn.aclose()
    finally:
        gw.cleanup()


async def stored(gw: GatewayNode, key: str) -> None:
    """Until the keeper holds the entry: a worker sends it as the response leaves, but the keeper takes messages
    from the workers' connections in turn, so another worker's next question may be read first."""
    with trio.fail_after(5):
        while (await gw.acli("admin", "proxy-cache", "action=get", f"key={key}")).returncode != 0:
            await trio.sleep(0.02)


async def test_a_response_cached_through_one_worker_is_a_hit_through_the_other(cached):
    backend, gw, (first, second) = cached
    miss = await first.request("GET", "/doc")
    await stored(gw, miss.headers["x-cache-key"])
    hit = await second.request("GET", "/doc")
    assert (miss.status, miss.headers["x-cache-status"]) == (200, "Miss")
    assert (hit.status, hit.headers["x-cache-status"]) == (200, "Hit")
    assert hit.body == miss.body and hit.headers["x-cache-key"] == miss.headers["x-cache-key"]
    assert backend.hits == 1


async def test_an_operators_purge_empties_the_cache_of_every_worker(cached):
    backend, gw, (first, second) = cached
    key = (await first.request("GET", "/doc")).headers["x-cache-key"]
    assert (await gw.admin("proxy-cache", action="get", key=key))["entry"]["status"] == 200
    assert await gw.admin("proxy-cache", action="purge", key=key) == {"purged": key}
    assert (await second.request("GET", "/doc")).headers["x-cache-status"] == "Miss"
    await stored(gw, key)
    assert (await first.request("GET", "/doc")).headers["x-cache-status"] == "Hit"
    assert backend.hits == 2
    out = await gw.acli("admin", "proxy-cache", "action=get", "key=no-such-key")
    assert out.returncode != 0 and "no cached entry for key 'no-such-key'" in out.stderr
