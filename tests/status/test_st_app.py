"""The status server over a real socket: hypercorn's Trio worker serving the app with a fake StatusSource."""

from __future__ import annotations

import socket
from datetime import datetime
from functools import partial

import pytest
import trio
from backends import Client, request
from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.status import CHECKS, BaseStatusSource, CheckResult, StatusApp, StatusSource, memory_check, serve_status
from gateway.status.app import overall


class FakeSource:
    """Every check answers what the test set; `fail` makes one raise, `slow` one hang."""

    def __init__(self) -> None:
        self.results = {name: CheckResult("healthy", {"n": 1}) for name in CHECKS}
        self.ready_parts = {"workers": True, "bus": True}
        self.fail: str | None = None
        self.slow: str | None = None

    async def _answer(self, name: str) -> CheckResult:
        if self.fail == name:
            raise RuntimeError("bus socket closed")
        if self.slow == name:
            await trio.sleep_forever()
        return self.results[name]

    async def workers(self) -> CheckResult:
        return await self._answer("workers")

    async def bus(self) -> CheckResult:
        return await self._answer("bus")

    async def discovery(self) -> CheckResult:
        return await self._answer("discovery")

    async def upstreams(self) -> CheckResult:
        return await self._answer("upstreams")

    async def memory(self) -> CheckResult:
        return await self._answer("memory")

    async def readiness(self) -> dict[str, bool]:
        if self.fail == "readiness":
            raise RuntimeError("no")
        return dict(self.ready_parts)


@pytest.fixture
async def served(nursery: trio.Nursery) -> tuple[FakeSource, CollectorRegistry, int]:
    source = FakeSource()
    registry = CollectorRegistry()
    app = StatusApp(source, registry, version="1.2.3", node="gateway@test", started_at=1.0, check_timeout=0.3)
    host, port = await nursery.start(serve_status, app, "127.0.0.1", 0)
    assert host == "127.0.0.1" and port > 0
    return source, registry, port


def test_fake_source_satisfies_the_protocol() -> None:
    assert isinstance(FakeSource(), StatusSource) and isinstance(BaseStatusSource(), StatusSource)


async def test_health_all_healthy(served: tuple[FakeSource, CollectorRegistry, int]) -> None:
    _, _, port = served
    reply = await request(port, "GET", "/health")
    assert reply.status == 200 and reply.header("content-type") == "application/json; charset=utf-8"
    doc = reply.json()
    assert list(doc) == ["status", "version", "uptime", "node", "timestamp", "time", "checks"]
    assert doc["status"] == "healthy" and doc["version"] == "1.2.3" and doc["node"] == "gateway@test"
    assert isinstance(doc["uptime"], int) and doc["uptime"] > 1000
    parsed = datetime.fromisoformat(doc["time"].replace("Z", "+00:00"))
    assert isinstance(doc["timestamp"], int) and abs(doc["timestamp"] - parsed.timestamp() * 1000) < 1000
    assert doc["checks"] == {name: {"status": "healthy", "details": {"n": 1}} for name in CHECKS}


@pytest.mark.parametrize("check, status, overall_status", [
    ("bus", "degraded", "degraded"),
    ("discovery", "unhealthy", "unhealthy"),
    ("memory", "degraded", "degraded"),
])
async def test_health_not_healthy_is_503(served: tuple[FakeSource, CollectorRegistry, int], check: str,
                                         status: str, overall_status: str) -> None:
    source, _, port = served
    source.results[check] = CheckResult(status, {"reason": "x"})  # type: ignore[arg-type]
    reply = await request(port, "GET", "/health")
    assert reply.status == 503, "degraded counts as not healthy"
    doc = reply.json()
    assert doc["status"] == overall_status and doc["checks"][check] == {"status": status, "details": {"reason": "x"}}


async def test_a_failing_or_hanging_check_is_unhealthy(served: tuple[FakeSource, CollectorRegistry, int]) -> None:
    source, _, port = served
    source.fail = "bus"
    source.slow = "workers"
    with trio.fail_after(5):
        reply = await request(port, "GET", "/health")
    assert reply.status == 503
    checks = reply.json()["checks"]
    assert checks["bus"] == {"status": "unhealthy", "details": {"error": "RuntimeError: bus socket closed"}}
    assert checks["workers"] == {"status": "unhealthy", "details": {"error": "no answer within 0.3s"}}
    assert checks["memory"]["status"] == "healthy"


async def test_ready_and_live(served: tuple[FakeSource, CollectorRegistry, int]) -> None:
    source, _, port = served
    reply = await request(port, "GET", "/ready")
    doc = reply.json()
    assert reply.status == 200 and doc["ready"] is True and doc["checks"] == {"workers": "ready", "bus": "ready"}
    source.ready_parts["bus"] = False
    reply = await request(port, "GET", "/ready")
    assert reply.status == 503 and reply.json()["checks"]["bus"] == "not_ready"
    source.fail = "readiness"
    reply = await request(port, "GET", "/ready")
    assert reply.status == 503 and reply.json()["error"] == "RuntimeError: no"
    source.fail = "workers"  # liveness does not depend on any check
    reply = await request(port, "GET", "/live")
    doc = reply.json()
    assert reply.status == 200 and doc["alive"] is True and doc["node"] == "gateway@test" and doc["uptime"] > 0


async def test_kongs_status_ready_answers_as_kongs_status_api(served: tuple[FakeSource, CollectorRegistry, int]) \
        -> None:
    """kong/status/ready.lua: 200 {"message": "ready"}, else 503 with the reason as the message."""
    source, _, port = served
    reply = await request(port, "GET", "/status/ready")
    assert (reply.status, reply.json()) == (200, {"message": "ready"})
    source.ready_parts["bus"] = False
    reply = await request(port, "GET", "/status/ready")
    assert (reply.status, reply.json()) == (503, {"message": "not ready: bus"})
    source.fail = "readiness"
    reply = await request(port, "GET", "/status/ready")
    assert (reply.status, reply.json()) == (503, {"message": "RuntimeError: no"})


async def test_metrics(served: tuple[FakeSource, CollectorRegistry, int]) -> None:
    _, registry, port = served
    requests = Counter("gateway_requests", "requests", ["code"], registry=registry)
    requests.labels("200").inc(3)
    Gauge("gateway_workers", "workers", registry=registry).set(4)
    reply = await request(port, "GET", "/metrics")
    assert reply.status == 200 and reply.header("content-type") == "text/plain; charset=UTF-8"
    text = reply.body.decode()
    assert 'gateway_requests_total{code="200"} 3.0' in text and "gateway_workers 4.0" in text
    reply = await request(port, "GET", "/metrics", headers=[("accept", "application/openmetrics-text")])
    assert reply.header("content-type") == "text/plain; charset=UTF-8"  # Kong's exporter: text whatever the Accept
    assert reply.body.decode() == text and "# EOF" not in text


async def test_methods_paths_and_keepalive(served: tuple[FakeSource, CollectorRegistry, int]) -> None:
    _, _, port = served
    async with await Client.connect(port) as client:  # several requests on one connection
        head = await client.request("HEAD", "/health")
        assert head.status == 200 and head.body == b"" and int(head.header("content-length")) > 0
        post = await client.request("POST", "/health", body=b"x")
        assert post.status == 405 and post.header("allow") == "GET, HEAD"
        missing = await client.request("GET", "/nope")  # Kong's Status API's handle_404
        assert missing.status == 404 and missing.json() == {"message": "Not found"}
        assert (await client.request("GET", "/live")).status == 200


async def test_serve_status_binds_and_stops() -> None:
    app = StatusApp(BaseStatusSource(), CollectorRegistry())
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(serve_status, app, "127.0.0.1", 0)
        assert (await request(port, "GET", "/live")).status == 200
        with pytest.raises(OSError):  # the port is taken: the error comes before started()
            await nursery.start(serve_status, app, "127.0.0.1", port)
        nursery.cancel_scope.cancel()
    with socket.socket() as s, pytest.raises(OSError):  # closed after cancellation
        s.settimeout(1)
        s.connect(("127.0.0.1", port))


def test_memory_check_and_overall() -> None:
    result = memory_check()
    assert result.status in ("healthy", "degraded", "unhealthy") and result.details["rss_bytes"] > 0
    assert memory_check(warn_percent=0, critical_percent=100).status in ("degraded", "unhealthy")
    assert memory_check(warn_percent=0, critical_percent=0).status == "unhealthy"
    assert overall([]) == "healthy" and overall(["healthy", "degraded"]) == "degraded"
    assert overall(["degraded", "unhealthy"]) == "unhealthy" and overall(["weird"]) == "unhealthy"


async def test_serve_status_with_reuseport_shares_its_port_as_nginxs_listen_reuseport() -> None:
    """kong.conf's default status_listen `127.0.0.1:8007 reuseport backlog=16384`: the socket has SO_REUSEPORT, so
    another SO_REUSEPORT socket may bind the same port, and the status server answers on it."""
    app = StatusApp(BaseStatusSource(), CollectorRegistry())
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(partial(serve_status, app, "127.0.0.1", 0, backlog=16384, reuseport=True))
        with socket.socket() as other:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            other.bind(("127.0.0.1", port))  # would raise EADDRINUSE without the server's SO_REUSEPORT
        assert (await request(port, "GET", "/live")).status == 200
        nursery.cancel_scope.cancel()


async def test_serve_status_without_reuseport_keeps_its_port_to_itself() -> None:
    app = StatusApp(BaseStatusSource(), CollectorRegistry())
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(serve_status, app, "127.0.0.1", 0)
        with socket.socket() as other:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            with pytest.raises(OSError):
                other.bind(("127.0.0.1", port))
        nursery.cancel_scope.cancel()
