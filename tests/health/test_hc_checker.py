"""The active checker against real sockets: a backend whose /health fails then recovers, TCP checks, timeouts,
the concurrency limit, target updates from discovery, and the nginx aliases end to end. The checker only reports
probes; `LocalKeeper` plays the state keeper's part in process (counting them on a HealthBoard and handing the
verdicts back), as gateway.keeper.state and gateway.health.process do over the bus."""

from __future__ import annotations

from collections.abc import Callable

import h11
import pytest
import trio
from backends import free_port

from gateway.config import parse_config
from gateway.discovery import TargetInfo
from gateway.health import ActivePolicy, Event, HealthBoard, HealthChecker, PassivePolicy, Thresholds, probe
from gateway.health.checker import UpstreamChecks, upstreams_from_config

TIMEOUT = 10


class Gauge:
    def __init__(self) -> None:
        self.active = 0
        self.peak = 0


class HealthBackend:
    """Answers GET <anything> with `status`; `hang` makes it accept and never answer; records requests.
    Connections in progress are counted on `gauge` (shared by several backends to see a whole upstream)."""

    def __init__(self, gauge: Gauge | None = None) -> None:
        self.gauge = gauge or Gauge()
        self.status = 200
        self.hang = False
        self.delay = 0.0
        self.port = 0
        self.requests: list[tuple[str, dict[str, str]]] = []

    async def serve(self, port: int = 0, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started(self.port)
            await trio.serve_listeners(self._conn, listeners, handler_nursery=nursery)

    async def _conn(self, stream: trio.SocketStream) -> None:
        self.gauge.active += 1
        self.gauge.peak = max(self.gauge.peak, self.gauge.active)
        try:
            conn = h11.Connection(h11.SERVER)
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.Request):
                    self.requests.append((event.target.decode(),
                                          {k.decode(): v.decode() for k, v in event.headers}))
                if isinstance(event, h11.EndOfMessage):
                    break
            if self.hang:
                await trio.sleep_forever()
            await trio.sleep(self.delay)
            head = conn.send(h11.Response(status_code=self.status, headers=[("Content-Length", "0")]))
            await stream.send_all(head + conn.send(h11.EndOfMessage()))
        except (trio.BrokenResourceError, h11.ProtocolError):
            pass
        finally:
            self.gauge.active -= 1
            await trio.aclose_forcefully(stream)


class Changes:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, bool]] = []
        self._changed = trio.Event()

    def __call__(self, upstream: str, target: str, healthy: bool) -> None:
        self.events.append((upstream, target, healthy))
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, pred: Callable[[list[tuple[str, str, bool]]], bool]) -> None:
        with trio.fail_after(TIMEOUT):
            while not pred(self.events):
                await self._changed.wait()

    async def wait_event(self, event: tuple[str, str, bool], count: int = 1) -> None:
        await self.wait_for(lambda evs: evs.count(event) >= count)


class LocalKeeper:
    """The keeper's part: each probe counted on the target's state machine with the active thresholds; a flip is
    recorded in `changes` and published back to the checker, whose interval it picks."""

    def __init__(self, ups: list[UpstreamChecks], changes: Changes) -> None:
        self.board = HealthBoard({u.name: u.policy.thresholds for u in ups}, {u.name: PassivePolicy() for u in ups})
        self.changes = changes
        self.checker = HealthChecker(ups, self.probed)

    def probed(self, upstream: str, target: str, event: Event) -> None:
        flip = self.board.probed(upstream, target, event)
        if flip is not None:
            self.changes(upstream, target, flip)
            self.checker.set_health(upstream, target, flip)

    def set_health(self, upstream: str, target: str, healthy: bool) -> None:
        """Another source decided (passive checks): the machine and the checker's interval follow."""
        self.board.set_health(upstream, target, healthy)
        self.checker.set_health(upstream, target, healthy)


async def run_checks(nursery: trio.Nursery, ups: list[UpstreamChecks], changes: Changes) -> LocalKeeper:
    """The checker running with a LocalKeeper."""
    keeper = LocalKeeper(ups, changes)
    await nursery.start(keeper.checker.run)
    return keeper


def policy(**kw: object) -> ActivePolicy:
    base: dict[str, object] = {"type": "http", "http_path": "/health", "timeout_s": 0.5, "healthy_interval_s": 0.05,
                               "unhealthy_interval_s": 0.05,
                               "thresholds": Thresholds(successes=2, http_failures=2, tcp_failures=2, timeouts=2)}
    base.update(kw)
    return ActivePolicy(**base)  # type: ignore[arg-type]


def tgt(port: int, weight: int = 100) -> TargetInfo:
    return TargetInfo("127.0.0.1", port, weight)


async def test_target_goes_down_and_comes_back(nursery: trio.Nursery) -> None:
    backend = HealthBackend()
    port = await nursery.start(backend.serve)
    changes = Changes()
    name = f"127.0.0.1:{port}"
    checker = (await run_checks(nursery, [UpstreamChecks("erl", policy(), [tgt(port)])], changes)).checker
    with trio.fail_after(TIMEOUT):
        while len(backend.requests) < 3:
            await trio.sleep(0.01)
    assert changes.events == [] and checker.healthy("erl", name) is True
    target, headers = backend.requests[0]
    assert target == "/health" and headers["host"] == "127.0.0.1" and "user-agent" not in headers

    backend.status = 503  # /health starts failing
    await changes.wait_event(("erl", name, False))
    assert checker.snapshot() == {"erl": {name: False}}
    assert checker.check() == ("unhealthy", {"erl": {"healthy": 0, "unhealthy": 1, "down": [name]}})
    backend.status = 200  # and recovers
    await changes.wait_event(("erl", name, True))
    assert changes.events == [("erl", name, False), ("erl", name, True)]
    assert checker.check()[0] == "healthy"


async def test_tcp_check_and_connection_failures(nursery: trio.Nursery) -> None:
    port = free_port()
    changes = Changes()
    name = f"127.0.0.1:{port}"
    await run_checks(nursery, [UpstreamChecks("t", policy(type="tcp"), [tgt(port)])], changes)
    await changes.wait_event(("t", name, False))  # refused twice: tcp_failures 2
    backend = HealthBackend()
    await nursery.start(backend.serve, port)
    await changes.wait_event(("t", name, True))  # connects twice: successes 2


async def test_timeouts_count(nursery: trio.Nursery) -> None:
    backend = HealthBackend()
    backend.hang = True
    port = await nursery.start(backend.serve)
    changes = Changes()
    p = policy(timeout_s=0.1, thresholds=Thresholds(successes=1, timeouts=2))
    checker = (await run_checks(nursery, [UpstreamChecks("slow", p, [tgt(port)])], changes)).checker
    t0 = trio.current_time()
    await changes.wait_event(("slow", f"127.0.0.1:{port}", False))
    assert trio.current_time() - t0 < 2
    assert checker.upstreams["slow"].targets[f"127.0.0.1:{port}"].last_event is Event.TIMEOUT


async def test_concurrency_limit(nursery: trio.Nursery) -> None:
    gauge = Gauge()
    backends = [HealthBackend(gauge) for _ in range(5)]
    ports = []
    for b in backends:
        b.delay = 0.15
        ports.append(await nursery.start(b.serve))
    p = policy(concurrency=2, timeout_s=1.0, healthy_interval_s=0.01)
    await run_checks(nursery, [UpstreamChecks("c", p, [tgt(port) for port in ports])], Changes())
    await trio.sleep(0.8)
    assert sum(len(b.requests) for b in backends) >= 6
    assert gauge.peak == 2, "never more than `concurrency` probes of one upstream at once"


async def test_target_updates_from_discovery(nursery: trio.Nursery) -> None:
    a, b = HealthBackend(), HealthBackend()
    pa = await nursery.start(a.serve)
    pb = await nursery.start(b.serve)
    changes = Changes()
    checker = (await run_checks(nursery, [UpstreamChecks("u", policy(), [tgt(pa)])], changes)).checker
    checker.update_targets("u", [tgt(pa), tgt(pb)])
    checker.update_targets("elsewhere", [tgt(pb)])  # an upstream without active checks: ignored
    with trio.fail_after(TIMEOUT):
        while not b.requests:
            await trio.sleep(0.01)
    checker.update_targets("u", [tgt(pb, weight=5), tgt(pa, weight=0)])  # a re-weighted, b stays
    await trio.sleep(0.1)
    seen = len(a.requests)
    await trio.sleep(0.3)
    assert len(a.requests) == seen, "a weight-0 (or removed) target is not probed"
    assert checker.snapshot() == {"u": {f"127.0.0.1:{pb}": True}}
    checker.update_targets("u", [])
    await trio.sleep(0.1)
    seen_b = len(b.requests)
    await trio.sleep(0.2)
    assert len(b.requests) == seen_b and checker.snapshot() == {"u": {}}
    assert changes.events == []


async def test_set_health_from_outside_and_per_state_intervals(nursery: trio.Nursery) -> None:
    """Kong's passive-with-active-recovery pattern: healthy targets are not probed (healthy.interval 0); once
    passive checks mark one unhealthy, probes start at unhealthy.interval and bring it back."""
    backend = HealthBackend()
    port = await nursery.start(backend.serve)
    name = f"127.0.0.1:{port}"
    changes = Changes()
    p = policy(healthy_interval_s=0, unhealthy_interval_s=0.05)
    keeper = await run_checks(nursery, [UpstreamChecks("u", p, [tgt(port)])], changes)
    await trio.sleep(0.2)
    assert backend.requests == [], "healthy targets are not probed with healthy.interval 0"
    keeper.set_health("u", name, False)
    await changes.wait_event(("u", name, True))
    assert 2 <= len(backend.requests) <= 4
    seen = len(backend.requests)
    await trio.sleep(0.2)
    assert len(backend.requests) == seen, "healthy again: probing stops"
    keeper.checker.set_health("u", "127.0.0.1:1", False)  # unknown target: ignored
    assert keeper.checker.healthy("u", "127.0.0.1:1") is None


async def test_a_mostly_healthy_target_is_probed_at_healthy_interval(nursery: trio.Nursery) -> None:
    """Kong's checker_callback probes healthy and mostly_healthy targets at healthy.interval: the failures short of
    unhealthy.http_failures come as fast as healthy probes; once unhealthy, unhealthy.interval (60 s) holds it."""
    backend = HealthBackend()
    backend.status = 503
    port = await nursery.start(backend.serve)
    name = f"127.0.0.1:{port}"
    changes = Changes()
    p = policy(healthy_interval_s=0.05, unhealthy_interval_s=60, thresholds=Thresholds(successes=1, http_failures=3))
    keeper = await run_checks(nursery, [UpstreamChecks("u", p, [tgt(port)])], changes)
    t0 = trio.current_time()
    await changes.wait_event(("u", name, False))
    assert trio.current_time() - t0 < 1 and len(backend.requests) == 3
    assert keeper.checker.healthy("u", name) is False
    await trio.sleep(0.3)
    assert len(backend.requests) == 3, "unhealthy: the next probe is unhealthy.interval away"


async def test_nginx_aliases_end_to_end(nursery: trio.Nursery) -> None:
    backend = HealthBackend()
    port = await nursery.start(backend.serve)
    config = parse_config(f"""
upstreams:
  - name: erlmcp_cluster
    host_header: mcp.internal
    healthchecks:
      active: {{headers: {{X-Probe: ["1"]}}}}
      check: {{interval: 50, rise: 1, fall: 2, timeout: 500, path: /ping, expect_status: [200]}}
    targets: [{{target: "127.0.0.1:{port}"}}]
  - name: no_checks
    targets: [{{target: "127.0.0.1:1"}}]
""")
    ups = upstreams_from_config(config)
    assert [u.name for u in ups] == ["erlmcp_cluster"] and ups[0].targets == [tgt(port)]
    changes = Changes()
    await run_checks(nursery, ups, changes)
    name = f"127.0.0.1:{port}"
    backend.status = 204  # a 2xx, but not the expected 200: a failure with expect_status
    await changes.wait_event(("erlmcp_cluster", name, False))
    backend.status = 200
    await changes.wait_event(("erlmcp_cluster", name, True))  # rise 1
    target, headers = backend.requests[-1]
    assert target == "/ping" and headers["host"] == "mcp.internal" and headers["x-probe"] == "1"


@pytest.mark.parametrize("mode, expected", [
    ("refused", Event.TCP_FAILURE), ("close", Event.TCP_FAILURE), ("garbage", Event.HTTP_FAILURE),
    ("200", Event.SUCCESS), ("503", Event.HTTP_FAILURE), ("418", None), ("silent", Event.TIMEOUT),
])
async def test_probe_outcomes(mode: str, expected: Event | None, nursery: trio.Nursery) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some(65536)
            if mode == "garbage":
                await stream.send_all(b"NOT HTTP AT ALL\r\n\r\n")
            elif mode.isdigit():
                await stream.send_all(f"HTTP/1.1 {mode} X\r\nContent-Length: 0\r\n\r\n".encode())
            elif mode == "silent":
                await trio.sleep_forever()

    if mode == "refused":
        port = free_port()
    else:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, handler, listeners)
    assert await probe("127.0.0.1", port, policy(timeout_s=0.2)) is expected


@pytest.mark.parametrize(("host_header", "expected"), [(None, "127.0.0.1"), ("mcp.internal", "mcp.internal")])
async def test_a_probe_sends_lua_resty_healthchecks_host_without_a_port(host_header: str | None, expected: str,
                                                                         nursery: trio.Nursery) -> None:
    backend = HealthBackend()
    port = await nursery.start(backend.serve)
    assert await probe("127.0.0.1", port, policy(timeout_s=2), host_header) is Event.SUCCESS
    _, headers = backend.requests[-1]
    assert headers["host"] == expected


async def test_an_address_of_a_name_is_probed_with_the_name_as_host(nursery: trio.Nursery) -> None:
    """Kong's balancer probes each address of a target name with that name (gateway.discovery.dns)."""
    backend = HealthBackend()
    port = await nursery.start(backend.serve)
    changes = Changes()
    checker = (await run_checks(nursery, [UpstreamChecks("u", policy(), [])], changes)).checker
    checker.update_targets("u", [TargetInfo("127.0.0.1", port, 100, "mcp.internal")])
    with trio.fail_after(TIMEOUT):
        while not backend.requests:
            await trio.sleep(0.01)
    assert backend.requests[0][1]["host"] == "mcp.internal"


async def _serve_status_by_host(nursery: trio.Nursery, statuses: dict[str, int], hosts: list[str]) -> int:
    """A backend that answers each request with the status its Host has in `statuses` (200 else), noting the Host."""
    async def handler(stream: trio.SocketStream) -> None:
        async with stream:
            head = b""
            with trio.move_on_after(1):
                while b"\r\n\r\n" not in head:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        return
                    head += chunk
            host = next((line[5:].strip().decode() for line in head.split(b"\r\n")[1:]
                         if line.lower().startswith(b"host:")), "")
            hosts.append(host)
            status = statuses.get(host, 200)
            try:
                await stream.send_all(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n".encode())
            except trio.BrokenResourceError:
                pass

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    nursery.start_soon(trio.serve_listeners, handler, listeners)
    return int(listeners[0].socket.getsockname()[1])


async def test_two_names_at_one_address_are_two_targets_each_probed_with_its_name(nursery: trio.Nursery) -> None:
    """lua-resty-healthcheck keys a target by (ip, port, hostname) (`self.targets[ip][port][hostname]`), and Kong
    adds each address with its target's name (kong/runloop/balancer/healthcheckers.lua:47-55 `hc:add_target(ipaddr,
    port, target.name, ...)`): two names at one ip:port are probed each with its own Host and judged apart. Kong's
    spec/02-integration/05-proxy/10-balancer/01-healthchecks_spec.lua:1893 ("targets that resolve to the same IP"):
    target2.test goes UNHEALTHY while target1.test stays healthy."""
    hosts: list[str] = []
    port = await _serve_status_by_host(nursery, {"target2.test": 503}, hosts)
    changes = Changes()
    keeper = await run_checks(nursery, [UpstreamChecks("u", policy(), [])], changes)
    keeper.checker.update_targets("u", [TargetInfo("127.0.0.1", port, 100, "target1.test"),
                                        TargetInfo("127.0.0.1", port, 100, "target2.test")])
    one, two = f"target1.test/127.0.0.1:{port}", f"target2.test/127.0.0.1:{port}"
    await changes.wait_event(("u", two, False))
    assert {"target1.test", "target2.test"} <= set(hosts)
    assert keeper.checker.healthy("u", one) is True and keeper.checker.healthy("u", two) is False
    assert ("u", one, False) not in changes.events
