"""Consul discovery and self-registration against the fake agent in tests/consul_server.py.

The first tests pin the fake itself to Consul's documented behaviour (blocking queries, X-Consul-Index, the
passing filter, register/deregister), so the discovery tests after them exercise the real protocol.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import pytest
import trio
from backends import free_port
from consul_server import FakeConsul

from gateway.config.discovery import DiscoverySettings, RegistrationSettings
from gateway.config.schema import GatewaySettings
from gateway.discovery import TargetInfo, run_consul, run_registration
from gateway.discovery.consul import ConsulClient
from gateway.discovery.http import Endpoint, request
from gateway.status import BaseStatusSource, StatusApp, serve_status

TIMEOUT = 10


class Recorder:
    def __init__(self) -> None:
        self.reports: list[tuple[str, list[TargetInfo]]] = []
        self.latest: dict[str, list[TargetInfo]] = {}
        self._changed = trio.Event()

    def __call__(self, upstream: str, targets: list[TargetInfo]) -> None:
        self.reports.append((upstream, targets))
        self.latest[upstream] = targets
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, upstream: str, pred: Callable[[list[TargetInfo]], bool]) -> list[TargetInfo]:
        with trio.fail_after(TIMEOUT):
            while upstream not in self.latest or not pred(self.latest[upstream]):
                await self._changed.wait()
        return self.latest[upstream]

    async def wait_equal(self, upstream: str, expected: list[TargetInfo]) -> None:
        await self.wait_for(upstream, lambda t: t == sorted(expected))


@pytest.fixture
async def consul(nursery: trio.Nursery) -> FakeConsul:
    fake = FakeConsul()
    await nursery.start(fake.serve)
    return fake


def agent(consul: FakeConsul) -> ConsulClient:
    return ConsulClient([f"127.0.0.1:{consul.port}"])


def svc(sid: str, port: int, *, name: str = "erlmcp", address: str = "10.0.1.10", passing: int | None = None,
        check: dict[str, object] | None = None, tags: list[str] | None = None) -> dict[str, object]:
    body: dict[str, object] = {"ID": sid, "Name": name, "Address": address, "Port": port, "Tags": tags or ["mcp"]}
    if passing is not None:
        body["Weights"] = {"Passing": passing, "Warning": 1}
    if check is not None:
        body["Check"] = check
    return body


def settings(consul: FakeConsul, **kw: object) -> DiscoverySettings:
    base: dict[str, object] = {"endpoints": [f"127.0.0.1:{consul.port}"], "wait_s": 5, "retry_initial_s": 0.05,
                               "retry_max_s": 0.2, "timeout_s": 1.0}
    base.update(kw)
    return DiscoverySettings(type="consul", **base)  # type: ignore[arg-type]


def T(port: int, weight: int = 1, host: str = "10.0.1.10") -> TargetInfo:  # noqa: N802
    return TargetInfo(host, port, weight)


# ---- the fake speaks Consul's API ---------------------------------------------------------------------------------


async def test_fake_blocking_query_waits_for_a_change(consul: FakeConsul) -> None:
    ep = Endpoint("127.0.0.1", consul.port)
    await agent(consul).put("/v1/agent/service/register", svc("a", 1))
    first = await request(ep, "GET", "/v1/health/service/erlmcp?passing")
    index = int(first.headers["x-consul-index"])
    assert first.status == 200 and index > 0
    [entry] = json.loads(first.body)
    assert entry["Service"]["ID"] == "a" and entry["Node"]["Address"] == "127.0.0.1"
    assert entry["Checks"][0]["CheckID"] == "serfHealth"

    # Blocks while nothing changes, until `wait` passes (plus at most wait/16): same index back.
    t0 = trio.current_time()
    same = await request(ep, "GET", f"/v1/health/service/erlmcp?passing&index={index}&wait=300ms", timeout=3)
    assert 0.3 <= trio.current_time() - t0 < 0.3 * 17 / 16 + 0.5
    assert int(same.headers["x-consul-index"]) == index

    async def change() -> None:
        await trio.sleep(0.2)
        await agent(consul).put("/v1/agent/service/register", svc("b", 2))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(change)
        t0 = trio.current_time()
        moved = await request(ep, "GET", f"/v1/health/service/erlmcp?index={index}&wait=5s", timeout=6)
        assert trio.current_time() - t0 < 2, "a change ends the blocking query at once"
    assert int(moved.headers["x-consul-index"]) > index
    assert sorted(e["Service"]["ID"] for e in json.loads(moved.body)) == ["a", "b"]


async def test_fake_passing_filter_register_deregister(consul: FakeConsul) -> None:
    c = agent(consul)
    await c.put("/v1/agent/service/register", svc("a", 1, check={"TTL": "30s"}))  # TTL checks start critical
    await c.put("/v1/agent/service/register", svc("b", 2, check={"TTL": "30s", "Status": "passing"}))
    status, all_ = await c.get_json("/v1/health/service/erlmcp")
    assert status == 200 and sorted(e["Service"]["ID"] for e in all_) == ["a", "b"]
    _, passing = await c.get_json("/v1/health/service/erlmcp?passing")
    assert [e["Service"]["ID"] for e in passing] == ["b"]
    await c.put("/v1/agent/check/pass/service:a")
    await c.put("/v1/agent/check/warn/service:b")
    _, passing = await c.get_json("/v1/health/service/erlmcp?passing")
    assert [e["Service"]["ID"] for e in passing] == ["a"], "warning is not passing"
    assert (await c.get_json("/v1/agent/service/a"))[0] == 200
    await c.put("/v1/agent/service/deregister/a")
    assert (await c.get_json("/v1/agent/service/a"))[0] == 404
    resp = await request(Endpoint("127.0.0.1", consul.port), "PUT", "/v1/agent/service/deregister/nope", body=b"")
    assert resp.status == 404
    resp = await request(Endpoint("127.0.0.1", consul.port), "PUT", "/v1/agent/service/register", body=b'{"Port": 1}')
    assert resp.status == 400


# ---- discovery ----------------------------------------------------------------------------------------------------


async def test_instances_added_removed_reweighted_and_failing_live(consul: FakeConsul, nursery: trio.Nursery) -> None:
    c = agent(consul)
    await c.put("/v1/agent/service/register", svc("n1", 8080, passing=3))
    await c.put("/v1/agent/service/register", svc("other", 9, name="another-service"))
    rec = Recorder()
    await nursery.start(run_consul, "erlmcp-cluster", settings(consul, service="erlmcp"), rec)
    assert rec.latest["erlmcp-cluster"] == [T(8080, 3)]

    await c.put("/v1/agent/service/register", svc("n2", 8080, address="10.0.1.11"))
    await rec.wait_equal("erlmcp-cluster", [T(8080, 3), T(8080, 1, "10.0.1.11")])
    await c.put("/v1/agent/service/register", svc("n2", 8080, address="10.0.1.11", passing=10))  # re-weight
    await rec.wait_equal("erlmcp-cluster", [T(8080, 3), T(8080, 10, "10.0.1.11")])
    await c.put("/v1/agent/service/register", svc("n3", 8081, address="", check={"TTL": "30s"}))  # critical
    await c.put("/v1/agent/check/pass/service:n3")  # now passing; no Service.Address: the node's address
    await rec.wait_equal("erlmcp-cluster", [T(8080, 3), T(8080, 10, "10.0.1.11"), T(8081, 1, "127.0.0.1")])
    await c.put("/v1/agent/check/fail/service:n3")
    await rec.wait_equal("erlmcp-cluster", [T(8080, 3), T(8080, 10, "10.0.1.11")])
    await c.put("/v1/agent/service/deregister/n1")
    await rec.wait_equal("erlmcp-cluster", [T(8080, 10, "10.0.1.11")])

    queries = [t for m, t in consul.requests if t.startswith("/v1/health/service/erlmcp")]
    assert queries[0] == "/v1/health/service/erlmcp?passing"
    assert all("passing&index=" in q and "wait=5s" in q for q in queries[1:]), "blocking queries after the first"


async def test_idle_service_does_not_spin(consul: FakeConsul, nursery: trio.Nursery) -> None:
    await agent(consul).put("/v1/agent/service/register", svc("n1", 1))
    rec = Recorder()
    await nursery.start(run_consul, "erlmcp", settings(consul, wait_s=0.2), rec)
    await trio.sleep(1.0)
    queries = [t for _, t in consul.requests if t.startswith("/v1/health/")]
    assert 3 <= len(queries) <= 7, f"one query per wait period, got {len(queries)}"
    assert len(rec.reports) == 1, "a query that returns the same list reports nothing"


async def test_tag_and_warning_instances(consul: FakeConsul, nursery: trio.Nursery) -> None:
    c = agent(consul)
    await c.put("/v1/agent/service/register", svc("a", 1, tags=["mcp", "v2"]))
    await c.put("/v1/agent/service/register", svc("b", 2, tags=["mcp"]))
    await c.put("/v1/agent/service/register", svc("c", 3, tags=["v2"], check={"TTL": "30s", "Status": "warning"}))
    v2 = Recorder()
    await nursery.start(run_consul, "v2", settings(consul, service="erlmcp", tag="v2"), v2)
    assert v2.latest["v2"] == [T(1)]
    lenient = Recorder()  # passing_only false: warning instances too (Weights.Warning), never critical ones
    await nursery.start(run_consul, "all", settings(consul, service="erlmcp", passing_only=False), lenient)
    assert lenient.latest["all"] == [T(1), T(2), T(3)]
    await c.put("/v1/agent/check/fail/service:c")
    await lenient.wait_equal("all", [T(1), T(2)])


async def test_agent_lost_keeps_targets_and_changes_resume(consul: FakeConsul, nursery: trio.Nursery,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.discovery")
    await agent(consul).put("/v1/agent/service/register", svc("n1", 1))
    rec = Recorder()
    await nursery.start(run_consul, "erlmcp", settings(consul), rec)
    assert rec.latest["erlmcp"] == [T(1)]
    port = consul.port
    await consul.stop()  # the blocking query in flight is cut
    await trio.sleep(0.8)
    assert rec.latest["erlmcp"] == [T(1)] and len(rec.reports) == 1
    lost = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(lost) == 1 and "keeping 1 last known targets" in lost[0].getMessage()

    consul.register(svc("n2", 2))  # changed while we could not see it
    await nursery.start(consul.serve, port)
    await rec.wait_equal("erlmcp", [T(1), T(2)])
    assert len([r for r in caplog.records if "connected again" in r.getMessage()]) == 1
    await agent(consul).put("/v1/agent/service/deregister/n1")
    await rec.wait_equal("erlmcp", [T(2)])


async def test_index_going_backwards_resets(consul: FakeConsul, nursery: trio.Nursery) -> None:
    await agent(consul).put("/v1/agent/service/register", svc("n1", 1))
    rec = Recorder()
    await nursery.start(run_consul, "erlmcp", settings(consul, wait_s=0.3), rec)
    consul.index = 2  # e.g. a snapshot restore: the agent's index is now lower than ours
    consul.service_index.clear()
    consul.register(svc("n2", 2))  # index 3, far below what the client has seen
    await rec.wait_equal("erlmcp", [T(1), T(2)])
    with trio.fail_after(TIMEOUT):  # the index came back lower than ours: the next query is a non-blocking one
        while not any("index=" not in t for _, t in consul.requests[1:] if t.startswith("/v1/health/")):
            await trio.sleep(0.02)


async def test_first_attempt_failing_still_starts(nursery: trio.Nursery) -> None:
    rec = Recorder()
    s = DiscoverySettings(type="consul", endpoints=[f"127.0.0.1:{free_port()}"], retry_initial_s=0.05,
                          retry_max_s=0.1)
    with trio.fail_after(TIMEOUT):
        await nursery.start(run_consul, "x", s, rec)
    assert rec.reports == []


# ---- self-registration --------------------------------------------------------------------------------------------


async def test_registration_appears_and_disappears(consul: FakeConsul) -> None:
    """The gateway registers with an HTTP check on its status server; the agent runs it, the instance turns
    passing and is discovered; stopping deregisters it."""
    app = StatusApp(BaseStatusSource(), version="test")
    rec = Recorder()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            _, status_port = await nursery.start(serve_status, app, "127.0.0.1", 0)
            await nursery.start(run_consul, "gateways", settings(consul, service="mcp-gateway"), rec)
            assert rec.latest["gateways"] == []
            reg = RegistrationSettings(backend="consul", address=f"127.0.0.1:{consul.port}", service="mcp-gateway",
                                       id="mcp-gateway-1", tags=["tcp", "mcp"], check_interval="100ms",
                                       check_timeout="1s", refresh_s=0.2, retry_initial_s=0.05, retry_max_s=0.1)
            gw = GatewaySettings(listen="127.0.0.1:18080", status_listen=f"127.0.0.1:{status_port}")
            async with trio.open_nursery() as reg_nursery:
                link = await reg_nursery.start(run_registration, reg, gw)
                assert link.details()["registered"] is True
                registered = consul.services["mcp-gateway-1"]
                assert registered["Service"] == "mcp-gateway" and registered["Port"] == 18080
                assert registered["Address"] == "127.0.0.1" and registered["Tags"] == ["tcp", "mcp"]
                check = consul.checks["service:mcp-gateway-1"]
                assert check["HTTP"] == f"http://127.0.0.1:{status_port}/status/ready" and check["Interval"] == "100ms"
                await rec.wait_equal("gateways", [TargetInfo("127.0.0.1", 18080, 100)])  # the check passed

                consul.deregister("mcp-gateway-1")  # the agent lost it (e.g. restarted without state)
                await rec.wait_equal("gateways", [])
                await rec.wait_equal("gateways", [TargetInfo("127.0.0.1", 18080, 100)])  # registered again
                reg_nursery.cancel_scope.cancel()
            assert "mcp-gateway-1" not in consul.services
            assert ("PUT", "/v1/agent/service/deregister/mcp-gateway-1") in consul.requests
            await rec.wait_equal("gateways", [])
            nursery.cancel_scope.cancel()


async def test_registration_waits_for_the_agent(nursery: trio.Nursery) -> None:
    port = free_port()
    reg = RegistrationSettings(backend="consul", address=f"127.0.0.1:{port}", id="gw", check="",
                               retry_initial_s=0.05, retry_max_s=0.1)
    gw = GatewaySettings(listen="127.0.0.1:18081")
    link = await nursery.start(run_registration, reg, gw)
    assert link.details()["registered"] is False and link.state == "down"
    consul = FakeConsul()
    await nursery.start(consul.serve, port)
    with trio.fail_after(TIMEOUT):
        while "gw" not in consul.services:
            await trio.sleep(0.02)
    assert "Check" not in consul.services["gw"] and not consul.checks  # check: "" registers none
