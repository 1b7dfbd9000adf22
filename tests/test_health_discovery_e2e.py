"""Health checking and discovery in the running gateway: real processes (`gateway start --workers 2` in a scratch
directory), backends in the test's nursery whose /health and answers a test switches, a real etcd, the fake Consul.

Each test prints what it measured (requests per backend per phase, seconds to flip, failures) with `-s`.
"""

from __future__ import annotations

import collections
import json
import os
import signal
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from consul_server import FakeConsul
from e2e_helpers import (
    Backend,
    GatewayNode,
    Load,
    _is_gateway,
    conns_per_worker,
    counts,
    delta,
    request,
    running_etcd,
    started_backends,
    upstream_conn_workers,
    wait_for,
)

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="needs Linux /proc")


# ---- fixtures and config helpers ----------------------------------------------------------------------------------


@pytest.fixture
async def backends(nursery: trio.Nursery):  # noqa: ANN201 - a factory
    return partial(started_backends, nursery)


@pytest.fixture
def gateway(tmp_path: Path):  # noqa: ANN201 - a factory; every gateway made is stopped by pid at the end
    made: list[GatewayNode] = []

    def make(doc: dict[str, Any], **settings: Any) -> GatewayNode:
        gw = GatewayNode(tmp_path / f"gw{len(made)}", doc, **settings)
        made.append(gw)
        return gw

    try:
        yield make
    finally:
        for gw in made:
            gw.cleanup()


def upstream(name: str, targets: list[Backend], weights: list[int] | None = None, **fields: Any) -> dict[str, Any]:
    weights = weights or [100] * len(targets)
    return {"name": name, **fields,
            "targets": [{"target": b.target, "weight": w} for b, w in zip(targets, weights, strict=True)]}


def service(name: str, path: str = "/", host: str | None = None) -> dict[str, Any]:
    """A service whose url names upstream `host` (default: its own name), with one prefix route."""
    return {"name": name, "url": f"http://{host or name}", "read_timeout": 10000,
            "routes": [{"name": f"r-{name}", "paths": [path], "strip_path": False}]}


# Probes every 0.5 s (the tests wait for verdicts: two probes take about a second); each probe may take 1 s.
ACTIVE = {"active": {"type": "http", "http_path": "/health", "timeout": 1,
                     "healthy": {"interval": 0.5, "successes": 2},
                     "unhealthy": {"interval": 0.5, "http_failures": 2}}}
ALIAS = {"check": {"type": "http", "path": "/health", "interval": 500, "rise": 2, "fall": 2, "timeout": 1000}}


async def per_worker_backends(conns: dict[int, list[Any]], path: str, n: int = 10) -> dict[int, collections.Counter]:
    """Send n requests through each worker (on a connection it accepted): {pid: Counter(backend name)}."""
    out = {}
    for pid, (conn, *_) in conns.items():
        seen: collections.Counter[str] = collections.Counter()
        for _ in range(n):
            reply = await conn.request("POST", path, b"{}")
            seen[f"{reply.headers.get('x-backend', '-')}:{reply.status}"] += 1
        out[pid] = seen
    return out


class Phases:
    """Backend hits per phase of a scenario, for the report."""

    def __init__(self, backends: list[Backend]) -> None:
        self.backends = backends
        self.mark = counts(backends)
        self.rows: dict[str, dict[str, int]] = {}

    def start(self) -> None:
        self.mark = counts(self.backends)

    def end(self, name: str) -> dict[str, int]:
        row = self.rows[name] = delta(counts(self.backends), self.mark)
        self.mark = counts(self.backends)
        return row

    async def at_least(self, seconds: float, timeout: float = 15, **more_than: int) -> None:
        """At least `seconds` of this phase, then until each named backend has more than its number of requests in it
        (a busy machine serves fewer requests a second; bounded by `timeout`)."""
        await trio.sleep(seconds)
        await wait_for(lambda: all(delta(counts(self.backends), self.mark)[name] > hits
                                   for name, hits in more_than.items()), timeout,
                       what=f"more than {more_than} requests in the phase")

    async def each_more_than(self, hits: int, at_least_s: float, timeout: float = 15) -> None:
        """At least `at_least_s`, then until every backend has more than `hits` in this phase."""
        await self.at_least(at_least_s, timeout, **{b.name: hits for b in self.backends})


async def quiet(backend: Backend, seconds: float, timeout: float) -> None:
    """Until `backend` has nothing in flight and has had no new request for `seconds` (bounded by `timeout`)."""
    await wait_for(lambda: backend.in_flight == 0 and (not backend.arrived
                                                       or trio.current_time() - backend.arrived[-1] > seconds),
                   timeout, interval=0.02, what=f"{backend.name} quiet for {seconds} s")


def report(title: str, **values: Any) -> None:
    print(f"\n[{title}] " + "; ".join(f"{k}={v}" for k, v in values.items()))


# ---- 1. active checks ---------------------------------------------------------------------------------------------


async def test_active_checks_take_a_failing_target_out_and_bring_it_back(backends, gateway, nursery) -> None:
    a, b, c, d = await backends("a", "b", "c", "d")
    gw = gateway({
        "upstreams": [upstream("kong", [a, b], healthchecks=ACTIVE),      # Kong's active block
                      upstream("nginx", [c, d], healthchecks=ALIAS)],     # nginx/HAProxy `check:` alias
        "services": [service("kong", "/"), service("nginx", "/alias")],
    })
    await gw.start()
    workers = await gw.worker_pids()
    loads = [Load(gw.port, concurrency=3, keepalive=False, path="/"),
             Load(gw.port, concurrency=3, keepalive=False, path="/alias")]
    for load in loads:
        nursery.start_soon(load.run)
    phases = Phases([a, b, c, d])

    # until each backend had more than 20 requests and every worker has a connection to b (at least 0.3 s)
    await trio.sleep(0.3)
    await wait_for(lambda: min(counts([a, b, c, d]).values()) > 20
                   and set(upstream_conn_workers(b, workers)) == set(workers), 15, what="traffic to every backend")
    before = phases.end("before")
    assert all(before[n] > 20 for n in "abcd"), before
    assert set(upstream_conn_workers(b, workers)) == set(workers), "every worker sent to b before it failed"

    # b and d start failing their health checks (their normal answers stay 200)
    b.health_status = d.health_status = 503
    t0 = trio.current_time()
    flip = await wait_for(lambda: _health_is(gw, False, ("kong", b), ("nginx", d)), 10, interval=0.1,
                          what="b and d unhealthy")
    last_b, last_d = max(b.arrived) - t0, max(d.arrived) - t0
    await trio.sleep(0.3)
    phases.start()
    conns = await conns_per_worker(gw.port, workers)
    via_workers = {"kong": await per_worker_backends(conns, "/"), "nginx": await per_worker_backends(conns, "/alias")}
    await phases.at_least(0.5, a=20, c=20)
    down = phases.end("b, d unhealthy")
    assert down["b"] == 0 and down["d"] == 0, down
    assert down["a"] > 20 and down["c"] > 20, down
    for pid in workers:
        assert set(via_workers["kong"][pid]) == {"a:200"}, via_workers
        assert set(via_workers["nginx"][pid]) == {"c:200"}, via_workers

    # they recover: back after healthy.successes (rise) = 2 good probes
    b.health_status = d.health_status = 200
    t1 = trio.current_time()
    b_hits, d_hits = b.hits, d.hits
    back = await wait_for(lambda: b.hits > b_hits and d.hits > d_hits, 10, what="b and d get traffic again")
    first_b = min(t for t in b.arrived if t > t1) - t1
    first_d = min(t for t in d.arrived if t > t1) - t1
    await trio.sleep(0.3)
    phases.start()
    via_workers_up = {"kong": await per_worker_backends(conns, "/"),
                      "nginx": await per_worker_backends(conns, "/alias")}
    await phases.at_least(0.5, a=20, b=20, c=20, d=20)
    up = phases.end("b, d recovered")
    results = [await load.stop() for load in loads]
    for conn_list in conns.values():
        for conn in conn_list:
            await conn.aclose()
    for pid in workers:
        assert set(via_workers_up["kong"][pid]) == {"a:200", "b:200"}, via_workers_up
        assert set(via_workers_up["nginx"][pid]) == {"c:200", "d:200"}, via_workers_up
    assert up["b"] > 20 and up["d"] > 20, up
    assert 0.5 < up["a"] / up["b"] < 2 and 0.5 < up["c"] / up["d"] < 2, up
    assert all(r.failed == 0 for r in results), [r.errors for r in results]
    assert flip < 6 and back < 6
    # 2 failed probes 0.5 s apart take b out (the first within 0.5 s of the switch); 2 good ones bring it back
    assert last_b < 4 and last_d < 4 and first_b < 4 and first_d < 4
    report("active checks", before=before, after_flip_window=down, after_recovery_window=up,
           keeper_says_unhealthy_after_s=round(flip, 2), last_request_b_s=round(last_b, 2),
           last_request_d_s=round(last_d, 2), first_request_b_after_recovery_s=round(first_b, 2),
           first_request_d_after_recovery_s=round(first_d, 2),
           load_ok=sum(r.ok for r in results), load_failed=sum(r.failed for r in results))


async def test_a_target_name_is_resolved_into_its_addresses_each_checked_and_sent_the_name(backends, gateway,
                                                                                          nursery) -> None:
    """Kong's balancer: `localhost:<port>` becomes the target 127.0.0.1:<port> (localhost's IPv4 address) of the name
    localhost (keyed `localhost/127.0.0.1:<port>`) for the keeper, the checker and every worker, and requests and
    probes still carry the name."""
    (a,) = await backends("a")
    gw = gateway({"upstreams": [{"name": "named", "targets": [{"target": f"localhost:{a.port}"}],
                                 "healthchecks": ACTIVE}],
                  "services": [service("named", "/")]}, dns_valid_ttl_s=1)
    await gw.start()
    resolved = await wait_for(lambda: _has_targets(gw, {f"named|localhost/127.0.0.1:{a.port}"}), 10, interval=0.1,
                              what="the name resolved into its address")
    await wait_for(lambda: a.health_hits >= 1, 10, what="a probe of the address")
    for _ in range(4):
        reply = await request(gw.port, "GET", "/x")
        assert reply.status == 200
    assert a.hosts == {"localhost", f"localhost:{a.port}"}  # the probes' Host has no port (lua-resty-healthcheck)
    a.health_status = 503  # the address's own verdict
    await wait_for(lambda: _key_healthy_is(gw, False, f"named|localhost/{a.target}"), 10, interval=0.1,
                   what="the address unhealthy")
    report("dns targets", resolved_after_s=round(resolved, 2))


async def _has_targets(gw: GatewayNode, keys: set[str]) -> bool:
    return set(await gw.targets()) == keys


async def _key_healthy_is(gw: GatewayNode, healthy: bool, key: str) -> bool:
    """The keeper's verdict on the target `key` is `healthy`."""
    return (await gw.targets())[key]["healthy"] is healthy


async def _health_is(gw: GatewayNode, healthy: bool, *which: tuple[str, Backend]) -> bool:
    """The keeper's verdict on each (upstream, backend) is `healthy`."""
    targets = await gw.targets()
    return all(targets[f"{name}|{b.target}"]["healthy"] is healthy for name, b in which)


# ---- 2. passive checks --------------------------------------------------------------------------------------------


async def test_passive_checks_count_failures_from_every_worker_together(backends, gateway, nursery) -> None:
    a, f = await backends("a", "f")
    f.status = 500  # every real answer of f is a 500
    threshold = 4
    passive = {"passive": {"unhealthy": {"http_failures": threshold, "http_statuses": [500]}}}
    gw = gateway({"upstreams": [upstream("pas", [a, f], healthchecks=passive)], "services": [service("pas")]})
    await gw.start()
    w1, w2 = workers = await gw.worker_pids()
    conns = await conns_per_worker(gw.port, workers)
    failures = {w1: 0, w2: 0}

    async def fail_through(pid: int, until: int) -> None:
        """Requests through worker `pid` until f has answered it `until` times in all (with 500)."""
        for _ in range(4 * until + 4):
            if failures[pid] >= until:
                return
            reply = await conns[pid][0].request("POST", "/", b"{}")
            if reply.headers.get("x-backend") == "f":
                assert reply.status == 500
                failures[pid] += 1
            else:
                assert reply.status == 200
        raise AssertionError(f"worker {pid} did not reach f: {failures}")

    # Neither worker alone reaches the threshold: 2 failures through one, 1 through the other ...
    await fail_through(w1, 2)
    await fail_through(w2, 1)
    await trio.sleep(0.3)  # outcomes leave workers every 10 ms: the keeper has all three by now
    assert (await gw.targets())[f"pas|{f.target}"]["healthy"] is True, "3 < 4 failures: still healthy"
    # ... and the fourth, through the second worker, trips it: the keeper counts both workers' outcomes together.
    await fail_through(w2, 2)
    t0 = trio.current_time()
    flip = await wait_for(lambda: _health_is(gw, False, ("pas", f)), 5, interval=0.05, what="f unhealthy")
    f_before = f.hits
    via_workers = await per_worker_backends(conns, "/", 10)
    load = Load(gw.port, concurrency=4, keepalive=False)
    nursery.start_soon(load.run)
    await trio.sleep(0.5)
    await wait_for(lambda: load.result.ok > 50, 15, what="more than 50 requests of load")
    result = await load.stop()
    for conn in (c for cl in conns.values() for c in cl):
        await conn.aclose()
    assert f.hits == f_before == threshold, (f.hits, f_before)
    assert all(set(v) == {"a:200"} for v in via_workers.values()), via_workers
    assert result.failed == 0 and result.ok > 50, result.errors
    report("passive checks", f_failures_per_worker=failures, keeper_flip_after_4th_failure_s=round(flip, 2),
           per_worker_after=via_workers, f_hits_after_flip=f.hits - f_before, load_ok=result.ok,
           load_failed=result.failed, elapsed_s=round(trio.current_time() - t0, 2))


# ---- 3. every target unhealthy: 503, or panic mode -----------------------------------------------------------------


async def test_all_targets_unhealthy_503_and_panic_mode_uses_them_all(backends, gateway) -> None:
    a, b, c, d = await backends("a", "b", "c", "d")
    gw = gateway({
        "upstreams": [upstream("calm", [a, b], healthchecks=ACTIVE),
                      upstream("panicky", [c, d], healthchecks=ACTIVE, panic_mode=True)],
        "services": [service("calm", "/"), service("panicky", "/panic")],
    })
    await gw.start()
    workers = await gw.worker_pids()
    for backend in (a, b, c, d):
        backend.health_status = 503
    flip = await wait_for(lambda: _health_is(gw, False, ("calm", a), ("calm", b), ("panicky", c), ("panicky", d)),
                          10, interval=0.1, what="all four unhealthy")
    await trio.sleep(0.2)
    mark = counts([a, b, c, d])
    conns = await conns_per_worker(gw.port, workers)
    calm_replies = {}
    for pid, (conn, *_) in conns.items():
        reply = await conn.request("POST", "/", b"{}")
        calm_replies[pid] = (reply.status, reply.headers.get("content-type"), reply.json())
    panic = await per_worker_backends(conns, "/panic", 10)
    for conn in (c for cl in conns.values() for c in cl):
        await conn.aclose()
    fresh = [await request(gw.port, "POST", "/", b"{}") for _ in range(4)]
    seen = delta(counts([a, b, c, d]), mark)
    for status, ctype, doc in calm_replies.values():
        assert status == 503 and ctype == "application/json; charset=utf-8", calm_replies
        assert doc["message"] == "failure to get a peer from the ring-balancer"
    assert all(r.status == 503 for r in fresh)
    assert seen["a"] == seen["b"] == 0, seen
    for pid in workers:  # panic mode: each worker spreads over both unhealthy targets
        assert set(panic[pid]) == {"c:200", "d:200"}, panic
    assert seen["c"] + seen["d"] == 20, seen
    report("all unhealthy / panic", all_unhealthy_after_s=round(flip, 2), calm=calm_replies,
           panic_per_worker=panic, backend_hits=seen)


# ---- 4. /health, /ready, /live on status_listen -------------------------------------------------------------------


async def _get_json(port: int, path: str) -> tuple[int, Any]:
    reply = await request(port, "GET", path, timeout=5)
    return reply.status, reply.json()


async def test_status_health_503_while_the_keeper_is_down_and_200_after_its_restart(backends, gateway, nursery) -> None:
    (a,) = await backends("a")
    gw = gateway({"upstreams": [upstream("web", [a])], "services": [service("web")]})
    await gw.start()
    status, doc = await _get_json(gw.status_port, "/health")
    assert set(doc["checks"]) == {"workers", "bus", "discovery", "upstreams", "memory"}
    assert all(set(check) == {"status", "details"} for check in doc["checks"].values()), doc
    if doc["checks"]["memory"]["status"] != "healthy":
        pytest.skip(f"this host's memory check is {doc['checks']['memory']} (/health is 503 by design)")
    assert status == 200 and doc["status"] == "healthy", doc
    assert doc["checks"]["workers"]["details"]["running"] == 2
    assert doc["checks"]["upstreams"]["details"] == {"web": {"healthy": 1, "total": 1}}
    ready = await _get_json(gw.status_port, "/ready")
    live = await _get_json(gw.status_port, "/live")
    assert ready[0] == 200 and ready[1]["ready"] is True, ready
    assert live[0] == 200 and live[1]["alive"] is True, live

    loads = [Load(gw.port, concurrency=2, keepalive=True), Load(gw.port, concurrency=2, keepalive=False)]
    for load in loads:
        nursery.start_soon(load.run)
    await wait_for(lambda: all(load.result.ok > 20 for load in loads), 15, what="load under way")
    # kill -9: the supervisor restarts the keeper in about 0.4-1.5 s. A /health whose keeper question was
    # queued meanwhile is answered by the new keeper within its 0.5 s timeout, so a fast restart may never show
    # as 503: the 503s seen are reported, and the bus must be healthy again on the new keeper.
    keeper = await gw.child_pid("keeper")
    assert keeper
    os.kill(keeper, signal.SIGKILL)
    t0 = trio.current_time()
    seen: list[tuple[int, dict[str, str]]] = []

    async def healthy_on_new_keeper() -> bool:
        code, body = await _get_json(gw.status_port, "/health")
        seen.append((code, {k: v["status"] for k, v in body["checks"].items() if v["status"] != "healthy"}))
        return code == 200 and body["checks"]["bus"]["details"]["keeper"] != incarnation

    incarnation = doc["checks"]["bus"]["details"]["keeper"]
    back_after_kill = await wait_for(healthy_on_new_keeper, 20, interval=0.02, what="/health 200 on a new keeper")
    after_kill = [s for s in seen if s[0] != 200]

    # A keeper that hangs (SIGSTOP) is certainly down for the status server: 503 with the bus unhealthy; then it
    # is killed, and the supervisor's replacement makes /health 200 again.
    hung = await gw.child_pid("keeper")
    assert hung and hung != keeper
    os.kill(hung, signal.SIGSTOP)
    t1 = trio.current_time()
    down: dict[str, Any] = {}

    async def bus_unhealthy() -> bool:
        code, body = await _get_json(gw.status_port, "/health")
        down.update(code=code, body=body)
        return code == 503 and body["checks"]["bus"]["status"] == "unhealthy"

    try:
        went_down = await wait_for(bus_unhealthy, 10, interval=0.02, what="/health 503 (bus unhealthy), keeper hung")
        ready_meanwhile = await _get_json(gw.status_port, "/ready")
        live_meanwhile = await _get_json(gw.status_port, "/live")
    finally:
        os.kill(hung, signal.SIGKILL)
    t2 = trio.current_time()
    came_back = await wait_for(lambda: _health_code(gw.status_port, 200), 20, interval=0.05,
                               what="/health 200 again after the keeper restarted")
    results = [await load.stop() for load in loads]
    status = await gw.status()
    new_keeper = next(c for c in status["tree"]["children"] if c["id"] == "keeper")
    assert new_keeper["pid"] not in (keeper, hung) and new_keeper["restarts"] == 2, new_keeper
    assert live_meanwhile[0] == 200 and ready_meanwhile[0] == 200, (live_meanwhile, ready_meanwhile)
    assert down["body"]["checks"]["workers"]["status"] == "healthy", down
    assert all(r.failed == 0 for r in results), [r.errors for r in results]
    _, after = await _get_json(gw.status_port, "/health")
    assert after["checks"]["bus"]["status"] == "healthy", after
    report("status /health", kill9_health_200_on_new_keeper_after_s=round(back_after_kill, 2),
           kill9_non_200_seen=after_kill, hung_keeper_503_after_s=round(went_down, 2),
           health_200_after_kill_of_hung_keeper_s=round(came_back, 2), total_s=round(trio.current_time() - t0, 2),
           bus_while_down=down["body"]["checks"]["bus"], load_ok=sum(r.ok for r in results),
           load_failed=sum(r.failed for r in results), t_kill_to_hang_s=round(t1 - t0, 2),
           hang_to_kill_s=round(t2 - t1, 2))


async def _health_code(port: int, want: int) -> bool:
    try:
        return (await request(port, "GET", "/health", timeout=5)).status == want
    except (OSError, ConnectionError, trio.TooSlowError):
        return False


# ---- 5. etcd discovery under load ---------------------------------------------------------------------------------


@pytest.fixture
def etcd(tmp_path: Path):  # noqa: ANN201
    with running_etcd(tmp_path) as proc:
        yield proc


def etcd_value(b: Backend, weight: int = 100) -> bytes:
    return json.dumps({"target": b.target, "weight": weight}).encode()


async def test_etcd_discovery_add_remove_reweight_and_outage_under_load(backends, gateway, etcd, nursery) -> None:
    from gateway.discovery.etcd import EtcdClient

    a, b, c = await backends("a", "b", "c")
    for backend in (a, b, c):
        backend.delay = 0.005  # requests are in flight at every moment
    prefix = "/e2e/upstreams/disc/"
    client = EtcdClient([etcd.endpoint], timeout=2)
    await client.put(prefix + "a", etcd_value(a))
    await client.put(prefix + "b", etcd_value(b))
    gw = gateway({
        "upstreams": [{"name": "disc", "discovery": {"type": "etcd", "endpoints": [etcd.endpoint], "prefix": prefix,
                                                     "retry_initial_s": 0.1, "retry_max_s": 0.5, "timeout_s": 2}}],
        "services": [service("disc")],
    })
    await gw.start()
    loads = [Load(gw.port, concurrency=3, keepalive=True), Load(gw.port, concurrency=3, keepalive=False)]
    for load in loads:
        nursery.start_soon(load.run)
    phases = Phases([a, b, c])
    timings: dict[str, float] = {}

    await phases.at_least(0.3, a=20, b=20)
    initial = phases.end("initial a,b")
    assert initial["a"] > 20 and initial["b"] > 20 and initial["c"] == 0, initial

    # add c: traffic within moments
    await client.put(prefix + "c", etcd_value(c))
    timings["c first request after put"] = await wait_for(lambda: c.hits > 0, 5, interval=0.01, what="c traffic")
    await phases.each_more_than(20, 0.3)
    added = phases.end("added c")
    assert min(added.values()) > 20, added

    # re-weight: a 300, b 100, c 100 -> a gets 60 %
    await client.put(prefix + "a", etcd_value(a, 300))
    await trio.sleep(0.5)
    phases.start()
    await phases.at_least(0.5, b=60, c=60)
    weighted = phases.end("a weight 300")
    share_a = weighted["a"] / sum(weighted.values())
    assert 0.5 < share_a < 0.7, weighted
    assert 0.6 < weighted["b"] / weighted["c"] < 1.6, weighted

    # remove b while requests to it are in flight (each of its answers takes 0.2 s)
    b.delay = 0.2
    await wait_for(lambda: b.in_flight >= 3, 10, interval=0.01, what="requests in flight at b")
    in_flight_at_b = b.in_flight
    removed_at = trio.current_time()
    await client.delete(prefix + "b")
    await quiet(b, 0.3, 5)  # b drained of requests
    timings["b last request after delete"] = max(b.arrived) - removed_at
    phases.start()
    await phases.at_least(0.5, a=20, c=20)
    removed = phases.end("removed b")
    assert removed["b"] == 0 and removed["a"] > 20 and removed["c"] > 20, removed

    # etcd goes away: the last known targets keep serving
    failed_before_outage = sum(load.result.failed for load in loads)
    await trio.to_thread.run_sync(etcd.stop)
    await phases.at_least(1.0, a=20, c=20)  # the watch fails and its retries (0.1 s, then up to 0.5 s) fail
    outage = phases.end("etcd down")
    failed_in_outage = sum(load.result.failed for load in loads) - failed_before_outage
    assert outage["b"] == 0 and outage["a"] > 20 and outage["c"] > 20, outage

    # etcd is back: changes apply again (b returns, c leaves)
    await trio.to_thread.run_sync(etcd.start)
    restarted_at = trio.current_time()
    await client.put(prefix + "b", etcd_value(b))
    await client.delete(prefix + "c")
    b.delay = 0.005
    hits_b = b.hits
    await wait_for(lambda: b.hits > hits_b, 10, interval=0.01, what="b traffic after etcd restart")
    timings["b back after etcd restart"] = trio.current_time() - restarted_at
    await quiet(c, 0.3, 5)  # c's removal applied
    phases.start()
    await phases.at_least(0.5, a=20, b=5)
    back = phases.end("etcd back: b added, c removed")
    results = [await load.stop() for load in loads]
    assert back["c"] == 0 and back["a"] > 20 and back["b"] > 5, back
    assert in_flight_at_b > 0
    assert failed_in_outage == 0
    assert all(r.failed == 0 for r in results), [r.errors for r in results]
    report("etcd discovery", phases=phases.rows, share_a_at_weight_300=round(share_a, 3),
           in_flight_at_b_when_deleted=in_flight_at_b, timings_s={k: round(v, 2) for k, v in timings.items()},
           load_ok=[r.ok for r in results], load_failed=[r.failed for r in results],
           failed_during_outage=failed_in_outage)


# ---- 6. Consul discovery under load -------------------------------------------------------------------------------


async def test_consul_discovery_add_remove_and_agent_outage_under_load(backends, gateway, nursery) -> None:
    a, b, c = await backends("a", "b", "c")
    for backend in (a, b, c):
        backend.delay = 0.005
    consul = FakeConsul()
    consul_port = await nursery.start(consul.serve)

    def register(backend: Backend, weight: int = 100) -> None:
        consul.register({"ID": f"disc-{backend.name}", "Name": "disc-svc", "Address": "127.0.0.1",
                         "Port": backend.port, "Weights": {"Passing": weight, "Warning": 1}})

    register(a)
    register(b)
    gw = gateway({
        "upstreams": [{"name": "disc", "discovery": {
            "type": "consul", "endpoints": [f"127.0.0.1:{consul_port}"], "service": "disc-svc", "wait_s": 10,
            "retry_initial_s": 0.1, "retry_max_s": 0.5, "timeout_s": 2}}],
        "services": [service("disc")],
    })
    await gw.start()
    loads = [Load(gw.port, concurrency=3, keepalive=True), Load(gw.port, concurrency=3, keepalive=False)]
    for load in loads:
        nursery.start_soon(load.run)
    phases = Phases([a, b, c])
    timings: dict[str, float] = {}

    await phases.at_least(0.3, a=20, b=20)
    initial = phases.end("initial a,b")
    assert initial["a"] > 20 and initial["b"] > 20 and initial["c"] == 0, initial

    register(c)
    timings["c first request after register"] = await wait_for(lambda: c.hits > 0, 5, interval=0.01,
                                                               what="c traffic")
    await phases.each_more_than(20, 0.3)
    added = phases.end("added c")
    assert min(added.values()) > 20, added

    register(a, 300)
    await trio.sleep(0.5)
    phases.start()
    await phases.at_least(0.5, b=60, c=60)
    weighted = phases.end("a weight 300")
    share_a = weighted["a"] / sum(weighted.values())
    assert 0.5 < share_a < 0.7, weighted

    b.delay = 0.2
    await wait_for(lambda: b.in_flight >= 3, 10, interval=0.01, what="requests in flight at b")
    in_flight_at_b = b.in_flight
    consul.deregister("disc-b")
    await quiet(b, 0.3, 5)  # b drained of requests
    phases.start()
    await phases.at_least(0.5, a=20, c=20)
    removed = phases.end("deregistered b")
    assert removed["b"] == 0 and removed["a"] > 20 and removed["c"] > 20, removed

    failed_before_outage = sum(load.result.failed for load in loads)
    await consul.stop()  # blocking queries are cut; the agent is gone
    await phases.at_least(1.0, a=20, c=20)  # the blocking query fails and its retries (0.1 s, then up to 0.5 s) fail
    outage = phases.end("consul down")
    failed_in_outage = sum(load.result.failed for load in loads) - failed_before_outage
    assert outage["b"] == 0 and outage["a"] > 20 and outage["c"] > 20, outage

    await nursery.start(consul.serve, consul_port)  # the agent is back (its registry kept)
    restarted_at = trio.current_time()
    register(b)
    consul.deregister("disc-c")
    b.delay = 0.005
    hits_b = b.hits
    await wait_for(lambda: b.hits > hits_b, 10, interval=0.01, what="b traffic after consul restart")
    timings["b back after consul restart"] = trio.current_time() - restarted_at
    await quiet(c, 0.3, 5)  # c's removal applied
    phases.start()
    await phases.at_least(0.5, a=20, b=5)
    back = phases.end("consul back: b added, c removed")
    results = [await load.stop() for load in loads]
    assert back["c"] == 0 and back["a"] > 20 and back["b"] > 5, back
    assert in_flight_at_b > 0 and failed_in_outage == 0
    assert all(r.failed == 0 for r in results), [r.errors for r in results]
    report("consul discovery", phases=phases.rows, share_a_at_weight_300=round(share_a, 3),
           in_flight_at_b_when_deregistered=in_flight_at_b,
           timings_s={k: round(v, 2) for k, v in timings.items()}, load_ok=[r.ok for r in results],
           load_failed=[r.failed for r in results], failed_during_outage=failed_in_outage)


# ---- 7. self-registration -----------------------------------------------------------------------------------------


async def test_self_registration_in_consul_appears_on_start_and_goes_on_stop(backends, gateway, nursery) -> None:
    (a,) = await backends("a")
    consul = FakeConsul()
    consul_port = await nursery.start(consul.serve)
    gw = gateway({"upstreams": [upstream("web", [a])], "services": [service("web")]},
                 registration={"backend": "consul", "address": f"127.0.0.1:{consul_port}", "service": "mcp-gw-e2e",
                               "id": "gw-e2e", "tags": ["e2e"], "check_interval": "1s", "check_timeout": "1s"})
    assert "gw-e2e" not in consul.services
    t0 = trio.current_time()
    await gw.start()
    appeared = await wait_for(lambda: "gw-e2e" in consul.services, 5, what="the gateway registered") \
        + (trio.current_time() - t0)
    svc = consul.services["gw-e2e"]
    assert (svc["Service"], svc["Address"], svc["Port"], svc["Tags"]) == ("mcp-gw-e2e", "127.0.0.1", gw.port, ["e2e"])
    check = consul.checks["service:gw-e2e"]
    # the check is the gateway's readiness (not /health, degraded by any dead backend target, which would take every
    # gateway out of the registry at once): the agent's check passes, so others discover it
    assert check["HTTP"] == f"http://127.0.0.1:{gw.status_port}/status/ready"
    await wait_for(lambda: consul.checks["service:gw-e2e"]["Status"] == "passing", 5, what="check passing")
    entries = consul.health_entries("mcp-gw-e2e", passing=True)
    assert [(e["Service"]["Address"], e["Service"]["Port"]) for e in entries] == [("127.0.0.1", gw.port)]
    root = gw.root_pid()
    t1 = trio.current_time()
    out = await gw.stop()
    stop_s = trio.current_time() - t1
    assert out.returncode == 0, out.stderr
    assert "gw-e2e" not in consul.services, "deregistered before the root exited"
    assert ("PUT", "/v1/agent/service/deregister/gw-e2e") in consul.requests
    assert root and not _is_gateway(root)  # exited (a zombie until whoever adopted it reaps it)
    report("self-registration", registered_within_s_of_start_command=round(appeared, 2),
           stop_s=round(stop_s, 2))


# ---- 8. draining a target through the admin channel ---------------------------------------------------------------


async def test_drained_target_gets_no_new_requests_and_finishes_in_flight_ones(backends, gateway, nursery) -> None:
    a, b = await backends("a", "b")
    gw = gateway({"upstreams": [upstream("pool", [a, b])], "services": [service("pool")]})
    await gw.start()
    workers = await gw.worker_pids()
    slow: dict[str, Any] = {}

    async def slow_request() -> None:
        reply = await request(gw.port, "POST", "/slow?s=2", b"{}", timeout=30)
        slow.update(status=reply.status, backend=reply.headers.get("x-backend"), done=trio.current_time())

    nursery.start_soon(slow_request)
    await wait_for(lambda: a.in_flight + b.in_flight == 1, 5, interval=0.01, what="the slow request arrived")
    holder, other = (a, b) if a.in_flight else (b, a)
    result = await gw.admin("targets", action="drain", target=f"pool|{holder.target}")
    drained_at = trio.current_time()
    assert result["key"] == f"pool|{holder.target}" and result["drained"] is True, result
    await trio.sleep(0.1)
    phases = Phases([a, b])
    loads = [Load(gw.port, concurrency=3, keepalive=True), Load(gw.port, concurrency=3, keepalive=False)]
    for load in loads:
        nursery.start_soon(load.run)
    conns = await conns_per_worker(gw.port, workers)
    via_workers = await per_worker_backends(conns, "/", 10)
    await phases.at_least(0.5, **{other.name: 50})
    results = [await load.stop() for load in loads]
    during = phases.end("drained")
    await wait_for(lambda: "done" in slow, 20, what="the slow request finished")
    listed = {t["key"]: t for t in await gw.admin("targets")}
    await gw.admin("targets", action="enable", target=f"pool|{holder.target}")
    await trio.sleep(0.1)
    enabled = await per_worker_backends(conns, "/", 10)
    for conn in (c for cl in conns.values() for c in cl):
        await conn.aclose()
    assert during[holder.name] == 0 and during[other.name] > 50, during
    assert all(set(v) == {f"{other.name}:200"} for v in via_workers.values()), via_workers
    assert slow["status"] == 200 and slow["backend"] == holder.name, slow
    assert slow["done"] > drained_at + 0.5, "the slow request was still in flight when the drain applied"
    assert listed[f"pool|{holder.target}"]["drained"] is True
    assert all(r.failed == 0 for r in results), [r.errors for r in results]
    assert all(set(v) == {"a:200", "b:200"} for v in enabled.values()), enabled
    report("drain", drained=holder.name, hits_while_drained=during, per_worker_while_drained=via_workers,
           slow_request=slow["status"], slow_finished_after_drain_s=round(slow["done"] - drained_at, 2),
           load_ok=sum(r.ok for r in results), per_worker_after_enable=enabled)


async def test_a_retry_does_not_go_to_a_target_drained_after_its_request_started(backends, gateway, nursery) -> None:
    """Kong asks its balancer again for every try: a try after a drain picks from the targets as they are then."""
    a, b = await backends("a", "b")
    for backend in (a, b):
        backend.delay = 60.0  # accepts and never answers within read_timeout
    gw = gateway({"upstreams": [upstream("pool", [a, b], algorithm="round-robin")],
                  "services": [{**service("pool"), "retries": 3, "read_timeout": 500}]})
    await gw.start(workers=1)
    reply: dict[str, Any] = {}

    async def slow_get() -> None:
        reply["status"] = (await request(gw.port, "GET", "/x", timeout=30)).status

    nursery.start_soon(slow_get)
    await wait_for(lambda: a.hits + b.hits == 1, 5, interval=0.01, what="the first try arrived")
    await gw.admin("targets", action="drain", target=f"pool|{b.target}")
    before = b.hits  # (the admin call takes well under a try)
    await wait_for(lambda: "status" in reply, 20, what="the request ended")
    assert reply["status"] == 504 and a.hits + b.hits == 4
    assert b.hits == before, f"the drained target got {b.hits - before} tries after its drain"


# ---- 9. the keeper restarted: verdicts on discovered targets hold, and workers agree with it ----------------------


async def test_keeper_restart_keeps_health_of_discovered_targets_and_re_added_targets_start_fresh(
        backends, gateway, nursery) -> None:
    """A restarted keeper hears the checker's and discovery's re-sent views in either order; a target that left
    and came back is a new target for the keeper, and every worker must agree (no stale drained/unhealthy mark)."""
    a, b, c = await backends("a", "b", "c")
    consul = FakeConsul()
    consul_port = await nursery.start(consul.serve)
    for backend in (a, b, c):
        consul.register({"ID": f"disc-{backend.name}", "Name": "disc-svc", "Address": "127.0.0.1",
                         "Port": backend.port, "Weights": {"Passing": 100, "Warning": 1}})
    gw = gateway({
        "upstreams": [{"name": "disc", "healthchecks": ACTIVE, "discovery": {
            "type": "consul", "endpoints": [f"127.0.0.1:{consul_port}"], "service": "disc-svc", "wait_s": 10,
            "retry_initial_s": 0.1, "retry_max_s": 0.5}}],
        "services": [service("disc")],
    })
    await gw.start()
    load = Load(gw.port, concurrency=3, keepalive=False)
    nursery.start_soon(load.run)
    phases = Phases([a, b, c])
    b.health_status = 503
    await wait_for(lambda: _health_is(gw, False, ("disc", b)), 10, interval=0.1, what="b unhealthy")
    await trio.sleep(0.2)
    phases.start()
    keeper = await gw.child_pid("keeper")
    assert keeper
    os.kill(keeper, signal.SIGKILL)
    restarted = await wait_for(lambda: _new_keeper(gw, keeper), 10, interval=0.05, what="a new keeper")
    await trio.sleep(0.5)  # a whole check interval (ACTIVE: 0.5 s) of the new keeper's, for the checker to report
    during_restart = phases.end("keeper restart")
    await phases.at_least(0.5, a=20)
    after_restart = phases.end("after restart")
    keeper_says_b = (await gw.targets())[f"disc|{b.target}"]["healthy"]

    b.health_status = 200  # b recovers: the new keeper must publish it, or workers keep skipping it for ever
    hits_b = b.hits
    recovered = await wait_for(lambda: b.hits > hits_b, 8, interval=0.02, what="b traffic after its recovery")
    phases.end("b recovering")

    await gw.admin("targets", action="drain", target=f"disc|{c.target}")
    await trio.sleep(0.3)
    phases.start()
    await trio.sleep(0.5)
    drained = phases.end("c drained")
    consul.deregister("disc-c")
    await wait_for(lambda: _has_no_target(gw, f"disc|{c.target}"), 10, what="c gone from the keeper's targets")
    await trio.sleep(0.2)  # and from the workers'
    consul.register({"ID": "disc-c", "Name": "disc-svc", "Address": "127.0.0.1", "Port": c.port,
                     "Weights": {"Passing": 100, "Warning": 1}})
    hits_c = c.hits
    back_c = await wait_for(lambda: c.hits > hits_c, 5, interval=0.02, what="re-added c gets traffic")
    listed = (await gw.targets())[f"disc|{c.target}"]
    result = await load.stop()
    assert keeper_says_b is False, "the checker's verdict, re-sent before discovery's list, was kept"
    assert after_restart["b"] == 0 and after_restart["a"] > 20, after_restart
    # A new keeper publishes no health verdict until the checker's first report: whichever of discovery's list and
    # that report reaches it first, the workers keep b out all along.
    assert during_restart["b"] == 0, during_restart
    assert drained["c"] == 0, drained
    assert listed["drained"] is False and listed["healthy"] is True
    assert result.failed == 0, result.errors
    report("keeper restart with discovery", phases=phases.rows, new_keeper_after_s=round(restarted, 2),
           keeper_says_b_healthy=keeper_says_b, b_traffic_after_recovery_s=round(recovered, 2),
           re_added_c_traffic_after_s=round(back_c, 2), load_ok=result.ok, load_failed=result.failed)


async def _has_no_target(gw: GatewayNode, key: str) -> bool:
    return key not in await gw.targets()


async def _new_keeper(gw: GatewayNode, old: int) -> bool:
    doc = await gw.status()
    keeper = next(c for c in doc["tree"]["children"] if c["id"] == "keeper")
    return bool(keeper["pid"]) and keeper["pid"] != old and keeper["state"] == "running"


# ---- 10. new workers (crash replacement, reload) serve discovered targets from their first request ---------------


async def test_new_workers_know_the_discovered_targets_before_they_accept(backends, gateway, nursery) -> None:
    """An upstream whose targets come only from discovery: a replacement worker (kill -9) and the workers of a new
    generation (reload) must not answer 503 "no available target" while they wait for the keeper's snapshot."""
    a, b = await backends("a", "b")
    consul = FakeConsul()
    consul_port = await nursery.start(consul.serve)
    for backend in (a, b):
        consul.register({"ID": f"disc-{backend.name}", "Name": "disc-svc", "Address": "127.0.0.1",
                         "Port": backend.port, "Weights": {"Passing": 100, "Warning": 1}})
    gw = gateway({
        "upstreams": [{"name": "disc", "discovery": {
            "type": "consul", "endpoints": [f"127.0.0.1:{consul_port}"], "service": "disc-svc", "wait_s": 10,
            "retry_initial_s": 0.1, "retry_max_s": 0.5}}],
        "services": [service("disc")],
    })
    await gw.start()
    concurrency = 6
    load = Load(gw.port, concurrency=concurrency, keepalive=False)
    nursery.start_soon(load.run)
    await wait_for(lambda: load.result.ok > 50, 15, what="load under way")
    victim = (await gw.worker_pids())[0]
    os.kill(victim, signal.SIGKILL)
    await wait_for(lambda: _replaced(gw, victim), 10, interval=0.05, what="a replacement worker")
    await trio.sleep(0.5)
    after_kill = await load.stop()
    kill_statuses = dict(load.statuses)
    load = Load(gw.port, concurrency=concurrency, keepalive=False)
    keepalive = Load(gw.port, concurrency=2, keepalive=True)
    nursery.start_soon(load.run)
    nursery.start_soon(keepalive.run)
    await wait_for(lambda: load.result.ok > 50 and keepalive.result.ok > 20, 15, what="load under way")
    old_generation = await gw.worker_pids()
    await gw.admin("reload")  # (the `gateway reload` command sends the same; test_node.py runs it)
    # the old generation drains and exits under the load; the new one serves it
    await wait_for(lambda: not any(_is_gateway(pid) for pid in old_generation), 15, what="the old workers gone")
    await trio.sleep(0.3)
    reload_results = [await load.stop(), await keepalive.stop()]
    # kill -9 can fail what the killed worker had accepted (at most one request per client), never with a 503
    assert set(kill_statuses) == {200} and after_kill.failed <= concurrency, after_kill.errors
    assert all(r.failed == 0 for r in reload_results), [r.errors for r in reload_results]
    assert a.hits > 50 and b.hits > 50
    report("new workers with discovery", kill_ok=after_kill.ok, kill_failed=dict(after_kill.errors),
           reload_ok=[r.ok for r in reload_results], reload_failed=[dict(r.errors) for r in reload_results])


async def _replaced(gw: GatewayNode, victim: int) -> bool:
    pids = await gw.worker_pids()
    return victim not in pids and len(pids) == 2


# ---- 11. the accept loop ends cleanly when a drain closes its listener under load --------------------------------


async def test_drain_under_new_connection_load_ends_the_accept_loop_cleanly() -> None:
    """Found by test 10's reload: a drain that closed the listener while the accept loop sat in a checkpoint (the
    connection-limit semaphore) made the next wait_readable fail on fd -1, and the draining worker exited with
    status 1, cutting its in-flight requests. Many short drains under connection churn, in process."""
    import random

    from gateway.http.codecs import codec_classes
    from gateway.http.net import bind_listener
    from gateway.http.server import ServerSettings, serve_listener

    async def handler(ex: Any) -> None:
        await ex.respond_error(404, "none")

    async def churn(port: int, stop: trio.Event) -> None:
        while not stop.is_set():
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await stream.send_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                while await stream.receive_some(4096):
                    pass
                await stream.aclose()
            except (OSError, trio.BrokenResourceError):
                await trio.sleep(0.001)

    settings = ServerSettings(codec_classes("h11")[0], 10, 75, 16384, 10000)
    errors = []
    for _ in range(40):
        listener = bind_listener("127.0.0.1", 0, reuse_port=False)
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            for _ in range(6):
                nursery.start_soon(churn, listener.getsockname()[1], stop)

            async def serve(listener: Any = listener, stop: trio.Event = stop) -> None:
                try:
                    await serve_listener(listener, handler, settings)
                except Exception as e:  # noqa: BLE001 - what we are looking for
                    errors.append(repr(e))
                stop.set()

            nursery.start_soon(serve)
            await trio.sleep(0.02 + random.random() * 0.03)
            trio.lowlevel.notify_closing(listener)  # what the worker's drain does
            listener.close()
            with trio.fail_after(5):
                await trio.sleep(0.01)
                stop.set()
    assert errors == []
