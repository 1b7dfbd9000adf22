"""etcd discovery and self-registration against a real etcd (Debian's etcd-server), started per test module.

The session fixture installs etcd-server with apt-get when `etcd` is missing and we are root (as scripts/setup
does); it skips, saying why, only when that is impossible. Each etcd listens on 127.0.0.1 on free ports with its
data in a temporary directory and is stopped by pid.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest
import trio
from backends import free_port
from e2e_helpers import GatewayNode
from etcd_server import EtcdProcess, find_etcd

from gateway.config import parse_config
from gateway.config.discovery import DiscoverySettings, RegistrationSettings
from gateway.config.schema import GatewaySettings
from gateway.discovery import TargetInfo, run_discovery, run_etcd, run_registration
from gateway.discovery.etcd import Compacted, EtcdClient, b64
from gateway.discovery.registration import deregister_service, register_service, resolve_registration

TIMEOUT = 10


# ---- etcd process -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def etcd_binary() -> str:
    path, why = find_etcd()
    if path is None:
        pytest.skip(why)
    return path


@pytest.fixture
def etcd(etcd_binary: str, tmp_path: Path) -> Iterator[EtcdProcess]:
    """An etcd of the test's own (the test may stop and restart it)."""
    proc = EtcdProcess(etcd_binary, tmp_path)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def shared_etcd(etcd_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdProcess]:
    """One etcd for the tests that leave it running (each uses its own key prefix)."""
    proc = EtcdProcess(etcd_binary, tmp_path_factory.mktemp("etcd"))
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


class CuttableProxy:
    """A TCP proxy to etcd that can cut every connection and refuse new ones (a network partition), or take new ones
    and answer none (`hold`: a hung member) until `release` closes them (the member restarted)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.open = True
        self._scopes: set[trio.CancelScope] = set()
        self._holding: trio.Event | None = None

    def hold(self) -> None:
        self._holding = trio.Event()

    def release(self) -> None:
        if self._holding is not None:
            self._holding.set()
            self._holding = None

    async def serve(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    def cut(self) -> None:
        self.open = False
        for scope in list(self._scopes):
            scope.cancel()

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client:
            if (holding := self._holding) is not None:
                await holding.wait()
                return
            if not self.open:
                return
            try:
                upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
            except OSError:
                return
            async with upstream:
                with trio.CancelScope() as scope:
                    self._scopes.add(scope)
                    try:
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(self._pump, client, upstream, nursery)
                            nursery.start_soon(self._pump, upstream, client, nursery)
                    finally:
                        self._scopes.discard(scope)

    @staticmethod
    async def _pump(src: trio.SocketStream, dst: trio.SocketStream, nursery: trio.Nursery) -> None:
        try:
            while data := await src.receive_some(65536):
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        nursery.cancel_scope.cancel()


# ---- helpers ------------------------------------------------------------------------------------------------------


class Recorder:
    """on_change target: keeps every report and lets a test wait for one that satisfies a predicate."""

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


def settings(etcd: EtcdProcess, prefix: str, **kw: object) -> DiscoverySettings:
    return DiscoverySettings(type="etcd", endpoints=[etcd.endpoint], prefix=prefix, retry_initial_s=0.05,
                             retry_max_s=0.2, timeout_s=1.0, **kw)  # type: ignore[arg-type]


def T(port: int, weight: int = 100, host: str = "10.0.0.1") -> TargetInfo:  # noqa: N802 - reads like a literal
    return TargetInfo(host, port, weight)


# ---- discovery ----------------------------------------------------------------------------------------------------


async def test_initial_targets_then_add_remove_reweight_live(shared_etcd: EtcdProcess, nursery: trio.Nursery) -> None:
    etcd = shared_etcd
    client = EtcdClient([etcd.endpoint])
    prefix = "/gateway/upstreams/mcp/"
    await client.put(prefix + "a", b'{"target": "10.0.0.1:8001", "weight": 50}')
    await client.put(prefix + "b", b"10.0.0.1:8002")  # plain host:port: default weight
    await client.put("/gateway/upstreams/mcp-other/x", b"10.0.0.9:9")  # a sibling prefix is not ours
    rec = Recorder()
    await nursery.start(run_etcd, "mcp", settings(etcd, prefix), rec)
    assert rec.latest["mcp"] == [T(8001, 50), T(8002)], "started() only after the initial range was reported"

    await client.put(prefix + "c", b'{"target": "10.0.0.1:8003", "weight": 7, "tags": ["x"]}')
    await rec.wait_equal("mcp", [T(8001, 50), T(8002), T(8003, 7)])
    await client.put(prefix + "a", b'{"target": "10.0.0.1:8001", "weight": 200}')  # re-weight
    await rec.wait_equal("mcp", [T(8001, 200), T(8002), T(8003, 7)])
    await client.delete(prefix + "b")
    await rec.wait_equal("mcp", [T(8001, 200), T(8003, 7)])
    await client.put(prefix + "a", b'{"target": "10.0.0.1:8001", "weight": 200}')  # same value: no report
    await client.put(prefix + "bad", b"not a target")  # ignored (logged), the rest stands
    await client.put(prefix + "d", b'"[::1]:8004"')
    await rec.wait_equal("mcp", [T(8004, host="::1"), T(8001, 200), T(8003, 7)])
    assert [r for _, r in rec.reports].count([T(8001, 200), T(8003, 7)]) == 1
    assert all(u == "mcp" for u, _ in rec.reports)


async def test_etcd_lost_keeps_targets_and_changes_resume(etcd: EtcdProcess, nursery: trio.Nursery,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.discovery")
    client = EtcdClient([etcd.endpoint])
    prefix = "/svc/a/"
    await client.put(prefix + "1", b"10.0.0.1:1")
    rec = Recorder()
    await nursery.start(run_etcd, "a", settings(etcd, prefix), rec)
    assert rec.latest["a"] == [T(1)]

    await trio.to_thread.run_sync(etcd.stop)
    await trio.sleep(0.8)  # several retries (0.05 .. 0.2 s apart) fail meanwhile
    assert rec.latest["a"] == [T(1)] and len(rec.reports) == 1, "the last known targets are kept"
    lost = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(lost) == 1, "logged once per state change, not once per attempt"
    assert "keeping 1 last known targets" in lost[0].getMessage()

    await trio.to_thread.run_sync(etcd.start)
    back = [r for r in caplog.records if "connected again" in r.getMessage()]
    with trio.fail_after(TIMEOUT):
        while not back:
            await trio.sleep(0.05)
            back = [r for r in caplog.records if "connected again" in r.getMessage()]
    assert len(back) == 1
    await client.put(prefix + "2", b"10.0.0.1:2")
    await rec.wait_equal("a", [T(1), T(2)])
    await client.delete(prefix + "1")
    await rec.wait_equal("a", [T(2)])


async def test_rotates_to_a_live_endpoint(shared_etcd: EtcdProcess, nursery: trio.Nursery) -> None:
    client = EtcdClient([shared_etcd.endpoint])
    await client.put("/p/1", b"10.0.0.1:1")
    rec = Recorder()
    # The first endpoint is a port nothing listens on: the source moves on to the next one.
    s = DiscoverySettings(type="etcd", endpoints=[f"127.0.0.1:{free_port()}", shared_etcd.endpoint], prefix="/p/",
                          retry_initial_s=0.05, retry_max_s=0.1, timeout_s=1.0)
    await nursery.start(run_etcd, "p", s, rec)
    await rec.wait_equal("p", [T(1)])
    await client.put("/p/2", b"10.0.0.1:2")
    await rec.wait_equal("p", [T(1), T(2)])


async def test_changes_made_while_cut_off_are_reported_on_reconnect(shared_etcd: EtcdProcess,
                                                                    nursery: trio.Nursery) -> None:
    client = EtcdClient([shared_etcd.endpoint])
    await client.put("/cut/1", b"10.0.0.1:1")
    await client.put("/cut/2", b"10.0.0.1:2")
    proxy = CuttableProxy(shared_etcd.client_port)
    port = await nursery.start(proxy.serve)
    rec = Recorder()
    s = DiscoverySettings(type="etcd", endpoints=[f"127.0.0.1:{port}"], prefix="/cut/", retry_initial_s=0.05,
                          retry_max_s=0.1, timeout_s=1.0)
    await nursery.start(run_etcd, "cut", s, rec)
    assert rec.latest["cut"] == [T(1), T(2)]
    proxy.cut()  # the watch stream breaks; etcd itself keeps running and changes meanwhile
    await client.delete("/cut/1")
    await client.put("/cut/2", b'{"target": "10.0.0.1:2", "weight": 9}')
    await client.put("/cut/3", b"10.0.0.1:3")
    await trio.sleep(0.3)
    assert rec.latest["cut"] == [T(1), T(2)], "nothing new is known while cut off"
    proxy.open = True
    await rec.wait_equal("cut", [T(2, 9), T(3)])  # one report with everything that changed meanwhile
    assert rec.reports[-2][1] == [T(1), T(2)]


async def test_compacted_watch_reads_the_prefix_again(shared_etcd: EtcdProcess, nursery: trio.Nursery) -> None:
    etcd = shared_etcd
    client = EtcdClient([etcd.endpoint])
    for i in range(5):
        await client.put("/c/k", f"10.0.0.1:{i + 1}".encode())
    revision = await client.put("/c/k", b"10.0.0.1:9")
    await client.call("/v3/kv/compaction", {"revision": str(revision)})
    # A watch from a compacted revision is cancelled by etcd with compact_revision: the client re-reads.
    with pytest.raises(Compacted):
        async for _ in client.watch_prefix("/c/", 2):
            pass
    rec = Recorder()
    await nursery.start(run_etcd, "c", settings(etcd, "/c/"), rec)
    assert rec.latest["c"] == [T(9)]


async def test_run_discovery_runs_one_source_per_upstream(etcd: EtcdProcess, nursery: trio.Nursery) -> None:
    client = EtcdClient([etcd.endpoint])
    await client.put("/gateway/upstreams/dyn/1", b"10.0.0.1:1")
    config = parse_config(f"""
upstreams:
  - name: dyn
    discovery: {{type: etcd, endpoints: ["{etcd.endpoint}"], retry_initial_s: 0.05, retry_max_s: 0.1}}
  - name: fixed
    discovery: {{type: static}}
    targets: [{{target: "10.0.0.2:2", weight: 5}}]
  - name: plain
    targets: [{{target: "10.0.0.3:3"}}]
""")
    rec = Recorder()
    status = await nursery.start(run_discovery, config, rec)
    assert rec.latest == {"dyn": [T(1)], "fixed": [T(2, 5, "10.0.0.2")]}
    assert status.check()[0] == "healthy"
    await client.put("/gateway/upstreams/dyn/2", b"10.0.0.1:2")
    await rec.wait_equal("dyn", [T(1), T(2)])
    await trio.to_thread.run_sync(etcd.stop)
    with trio.fail_after(TIMEOUT):
        while status.check()[0] == "healthy":
            await trio.sleep(0.05)
    state, details = status.check()
    assert state == "unhealthy" and details["dyn"]["state"] == "down" and details["fixed"]["state"] == "ok"
    assert details["dyn"]["targets"] == 2


async def test_a_first_answer_after_the_start_is_reported(shared_etcd: EtcdProcess, nursery: trio.Nursery) -> None:
    """run_discovery starts once each source made its first attempt or after `first_wait_s` (the discovery process
    reports ready then: a hung etcd holds a first attempt for its whole `timeout_s`, past the process's start
    timeout); the source goes on, and its first answer is reported when it comes."""
    client = EtcdClient([shared_etcd.endpoint])
    await client.put("/late/1", b"10.0.0.1:1")
    proxy = CuttableProxy(shared_etcd.client_port)
    port = await nursery.start(proxy.serve)
    proxy.hold()
    config = parse_config(f"""
upstreams:
  - name: late
    discovery: {{type: etcd, endpoints: ["127.0.0.1:{port}"], prefix: /late/, timeout_s: 30, retry_initial_s: 0.05,
                 retry_max_s: 0.1}}
""")
    rec = Recorder()
    with trio.fail_after(1):
        await nursery.start(partial(run_discovery, config, rec, first_wait_s=0.2))
    assert rec.latest == {}
    proxy.release()
    await rec.wait_equal("late", [T(1)])


async def test_a_gateway_starts_and_reloads_while_etcd_hangs_then_follows_it(shared_etcd: EtcdProcess,
                                                                               nursery: trio.Nursery,
                                                                               tmp_path: Path) -> None:
    """README "Health checks and discovery": a gateway starts on its config's targets while etcd is down, and
    discovery is applied live. The discovery process was ready only after etcd's first answer, which a hung etcd
    holds for `timeout_s`: past `worker_start_timeout_s`, `gateway start` failed ("discovery: not ready within
    2.0 s"), and a reload's new discovery process failed to start, leaving none. Now both go through, and once etcd
    answers its targets reach the keeper."""
    client = EtcdClient([shared_etcd.endpoint])
    await client.put("/hung/a", b"127.0.0.1:1001")
    proxy = CuttableProxy(shared_etcd.client_port)
    port = await nursery.start(proxy.serve)
    proxy.hold()
    doc = {"services": [{"name": "s", "host": "up", "routes": [{"name": "r", "paths": ["/"]}]}],
           "upstreams": [{"name": "up", "discovery": {"type": "etcd", "endpoints": [f"127.0.0.1:{port}"],
                                                      "prefix": "/hung/", "timeout_s": 8, "retry_initial_s": 0.05,
                                                      "retry_max_s": 0.1}}]}
    gw = GatewayNode(tmp_path / "gw", doc, worker_start_timeout_s=2)
    try:
        await gw.start(workers=1)
        assert (await gw.admin("reload"))["generation"] == 2
        assert await gw.targets() == {}
        proxy.release()
        with trio.fail_after(3):
            while "up|127.0.0.1:1001" not in await gw.targets():
                await trio.sleep(0.05)
    finally:
        gw.cleanup()

# ---- self-registration ----------------------------------------------------------------------------------------------


async def test_registration_appears_and_disappears(shared_etcd: EtcdProcess) -> None:
    etcd = shared_etcd
    client = EtcdClient([etcd.endpoint])
    reg = RegistrationSettings(backend="etcd", address=f"http://{etcd.endpoint}", service="mcp-gateway",
                               id="gw-1", tags=["mcp"], ttl_s=2, retry_initial_s=0.05, retry_max_s=0.1)
    gw = GatewaySettings(listen="127.0.0.1:8080", status_listen="127.0.0.1:8100")
    rec = Recorder()
    disc = DiscoverySettings(type="etcd", endpoints=[etcd.endpoint], prefix="/gateway/upstreams/mcp-gateway/",
                             retry_initial_s=0.05, retry_max_s=0.1)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(run_etcd, "gateways", disc, rec)
            assert rec.latest["gateways"] == []
            async with trio.open_nursery() as reg_nursery:
                link = await reg_nursery.start(run_registration, reg, gw)
                value = json.loads(await client.get("/gateway/upstreams/mcp-gateway/gw-1") or b"null")
                assert value == {"target": "127.0.0.1:8080", "weight": 100, "id": "gw-1", "service": "mcp-gateway",
                                 "tags": ["mcp"], "check": "http://127.0.0.1:8100/status/ready"}
                assert link.details()["registered"] is True
                await rec.wait_equal("gateways", [TargetInfo("127.0.0.1", 8080, 100)])  # discoverable by others
                await trio.sleep(2.2)  # longer than the lease: kept alive
                assert await client.get("/gateway/upstreams/mcp-gateway/gw-1") is not None
                await client.delete("/gateway/upstreams/mcp-gateway/gw-1")  # someone removes it: it comes back
                await rec.wait_equal("gateways", [])
                await rec.wait_equal("gateways", [TargetInfo("127.0.0.1", 8080, 100)])
                reg_nursery.cancel_scope.cancel()  # gateway stops: deregisters
            assert await client.get("/gateway/upstreams/mcp-gateway/gw-1") is None
            await rec.wait_equal("gateways", [])
            nursery.cancel_scope.cancel()


async def test_registration_comes_back_after_its_lease_is_revoked(shared_etcd: EtcdProcess) -> None:
    """Its lease gone (expired while etcd was unreachable, or revoked), the gateway registers again. Revoking the
    old lease answers 404 "requested lease not found", which was taken for "not etcd": it retried that forever."""
    client = EtcdClient([shared_etcd.endpoint])
    key = "/gateway/upstreams/mcp-gateway/gw-revoked"
    reg = RegistrationSettings(backend="etcd", address=shared_etcd.endpoint, service="mcp-gateway", id="gw-revoked",
                               ttl_s=2, retry_initial_s=0.05, retry_max_s=0.1)
    gw = GatewaySettings(listen="127.0.0.1:8081")
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(run_registration, reg, gw)
            doc = await client.call("/v3/kv/range", {"key": b64(key)})
            lease = int(doc["kvs"][0]["lease"])
            await client.lease_revoke(lease)  # the key goes with it
            assert await client.get(key) is None
            while await client.get(key) is None:
                await trio.sleep(0.05)
            doc = await client.call("/v3/kv/range", {"key": b64(key)})
            assert int(doc["kvs"][0]["lease"]) != lease
            nursery.cancel_scope.cancel()
    assert await client.get(key) is None


async def test_deregistering_after_the_lease_expired_is_done_quietly(shared_etcd: EtcdProcess) -> None:
    """etcd answers a revoke of an expired lease 404 "requested lease not found": its key went with it."""
    client = EtcdClient([shared_etcd.endpoint])
    settings = RegistrationSettings(backend="etcd", address=shared_etcd.endpoint, service="mcp-gateway",
                                    id="gw-expired", ttl_s=2)
    reg = resolve_registration(settings, GatewaySettings(listen="127.0.0.1:8082"))
    with trio.fail_after(TIMEOUT):
        await register_service(reg, client=client)
        await client.lease_revoke(reg.lease)  # as if it had expired
        await deregister_service(reg, client=client)
    assert reg.lease is None and await client.get(reg.key) is None
