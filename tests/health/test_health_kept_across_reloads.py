"""A target's health across reloads, and an operator's verdict on a target name, as Kong 3.9.3 and
lua-resty-healthcheck 3.1.0 keep them.

Kong's reconfigure stops each rebuilt upstream's checker with delayed_clear(CLEAR_HEALTH_STATUS_DELAY = 300 s)
(kong/runloop/handler.lua 3.9.3:693-697, kong/runloop/balancer/healthcheckers.lua:27-35, kong/constants.lua), which
only stamps a purge_time on each target in the kong_healthchecks shm; the new checker of the same name (ws_id:upstream
name, healthcheckers.lua:274-281) loads that list back (healthcheck.lua:1665-1688), and add_target of a target still
in it clears its purge_time and keeps its verdict and counters (healthcheck.lua:456-469). The periodic cleanup drops
the targets whose purge_time passed (healthcheck.lua:1741-1767); a DNS change's remove_target drops one at once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
from e2e_helpers import Backend, GatewayNode, request, wait_for

from gateway.bus import protocol as p
from gateway.config import parse_config
from gateway.discovery.types import TargetInfo
from gateway.health import Event, HealthBoard, State
from gateway.health.board import CLEAR_HEALTH_STATUS_DELAY_S
from gateway.keeper.state import Keeper

T, U = "10.0.1.10:8080", "10.0.1.11:8080"
CHECKS = "{active: {healthy: {interval: 1, successes: 2}, unhealthy: {interval: 1, http_failures: 3}}}"


def board(targets: list[str], healthchecks: str = CHECKS) -> HealthBoard:
    listed = ", ".join(f'{{target: "{t}"}}' for t in targets)
    return HealthBoard.from_config(parse_config(f"upstreams:\n  - name: u\n    healthchecks: {healthchecks}\n"
                                                f"    targets: [{listed}]\n"))


def reloaded(old: HealthBoard, targets: list[str], now: float, healthchecks: str = CHECKS) -> HealthBoard:
    """The board a reload to `targets` builds at `now`, from `old`."""
    new = board(targets, healthchecks)
    new.adopt(old, {("u", t) for t in targets}, now)
    return new


def taken_out(b: HealthBoard) -> None:
    for _ in range(3):
        b.probed("u", T, Event.HTTP_FAILURE)
    assert b.state("u", T) is State.UNHEALTHY


# ---- the board ------------------------------------------------------------------------------------------------------


def test_a_target_a_reload_drops_and_the_next_puts_back_keeps_its_verdict_and_counts() -> None:
    """add_target of a target with a purge_time (healthcheck.lua:456-469): its state becomes what get_target_status
    says (mostly_unhealthy -> unhealthy: healthcheck.lua:643-651) and its counter key in the shm is left as it was,
    so one success after the one counted before the reloads brings it back (successes: 2)."""
    old = board([T, U])
    taken_out(old)
    old.probed("u", T, Event.SUCCESS)
    assert old.state("u", T) is State.MOSTLY_UNHEALTHY
    back = reloaded(reloaded(old, [U], 0.0), [T, U], 10.0)
    assert back.state("u", T) is State.UNHEALTHY and not back.healthy("u", T)
    assert back.probed("u", T, Event.SUCCESS) is True, "the success counted before the reloads still counts"


def test_a_dropped_targets_machine_is_forgotten_300_s_after_the_reload_that_dropped_it() -> None:
    """delayed_clear's purge_time is ngx.now() + CLEAR_HEALTH_STATUS_DELAY (healthcheck.lua:616-634); a target put
    back after it was purged is added afresh, healthy (healthcheck.lua:482-489)."""
    old = board([T, U])
    taken_out(old)
    dropped = reloaded(old, [U], 0.0)
    dropped.purge(CLEAR_HEALTH_STATUS_DELAY_S - 0.1)
    assert not reloaded(dropped, [T, U], CLEAR_HEALTH_STATUS_DELAY_S - 0.1).healthy("u", T)
    assert reloaded(dropped, [T, U], CLEAR_HEALTH_STATUS_DELAY_S).healthy("u", T), "expired at the reload"
    dropped.purge(CLEAR_HEALTH_STATUS_DELAY_S)
    assert dropped.retired == {}


def test_an_upstream_whose_checks_a_reload_turned_off_gets_its_verdicts_back_when_one_turns_them_on() -> None:
    """An upstream without checks gets no checker (healthcheckers.lua:253-254), but its old checker's targets stay in
    the shm with their purge_time, and a checker of the same name made by a later reload loads them back."""
    old = board([T, U])
    taken_out(old)
    unchecked = reloaded(old, [T, U], 0.0, "{}")
    assert unchecked.targets == {} and unchecked.healthy("u", T)
    assert not reloaded(unchecked, [T, U], 20.0).healthy("u", T)


def test_a_target_discovery_removes_starts_afresh_when_it_comes_back() -> None:
    """A DNS change removes an address with remove_target (balancer/healthcheckers.lua 3.9.3:112 -> healthcheck.lua
    :539-575), which deletes its state from the shm at once: nothing of it is kept for a later reload."""
    old = board([T, U])
    taken_out(old)
    old.retain("u", {U})
    assert reloaded(old, [T, U], 1.0).healthy("u", T)


# ---- the keeper -----------------------------------------------------------------------------------------------------

PASSIVE = "    healthchecks:\n      passive:\n        unhealthy: {http_failures: 1}\n"
A, B = "up|127.0.0.1:9001", "up|127.0.0.1:9002"


def config(*targets: str) -> Any:
    listed = ", ".join(f"{{target: '{t.partition('|')[2]}'}}" for t in targets)
    return parse_config(f"upstreams:\n  - name: up\n    targets: [{listed}]\n" + PASSIVE)


def test_the_keepers_snapshot_after_a_reload_that_puts_a_target_back_carries_its_verdict() -> None:
    """populate_healthchecker applies the re-added target's state to the new balancer (healthcheckers.lua:47-66):
    one taken out by passive checks, removed by a reload and put back by the next, gets no traffic."""
    k = Keeper(config(A, B), workers=1)
    k.handle(b"w1", p.PassiveOutcomes(items=[("up", "127.0.0.1:9001", 500)]), 0.0, 0.0)
    assert k.targets[A].healthy is False
    k.reload(config(B), now=5.0)
    k.reload(config(A, B), now=6.0)
    assert {s.key: s.healthy for s in k.snapshot().targets} == {A: False, B: True}


def test_the_keepers_tick_forgets_the_retired_machines_whose_time_is_up() -> None:
    """lua-resty-healthcheck's active check timer removes the targets whose purge_time passed
    (healthcheck.lua:1741-1767): the keeper's tick does."""
    k = Keeper(config(A, B), workers=1)
    k.handle(b"w1", p.PassiveOutcomes(items=[("up", "127.0.0.1:9001", 500)]), 0.0, 0.0)
    k.reload(config(B), now=5.0)
    k.tick(5.0 + CLEAR_HEALTH_STATUS_DELAY_S - 1)
    assert set(k.health.retired) == {("up", "127.0.0.1:9001")}
    k.tick(5.0 + CLEAR_HEALTH_STATUS_DELAY_S)
    assert k.health.retired == {}


NAMED = "upstreams:\n  - name: up\n    targets: [{target: 'svc.test:80'}, {target: 'other.test:80'}]\n" + PASSIVE
ADDRESSES = [TargetInfo("127.0.0.2", 80, 100, "svc.test", "svc.test:80"),
             TargetInfo("127.0.0.3", 80, 100, "svc.test", "svc.test:80"),
             TargetInfo("127.0.0.4", 80, 100, "other.test", "other.test:80")]
S2, S3, O4 = "up|svc.test/127.0.0.2:80", "up|svc.test/127.0.0.3:80", "up|other.test/127.0.0.4:80"


@pytest.mark.parametrize("action", ["unhealthy", "healthy"])
def test_an_operator_marks_every_address_of_a_target_name_in_one_change(action: str) -> None:
    """PUT /upstreams/{u}/targets/{name:port}/unhealthy (and /healthy) without an address: kong/api/routes/
    upstreams.lua 3.9.3:13-52 -> kong/db/dao/targets.lua:299-319 post_health(ip = nil) -> kong/runloop/balancer/
    init.lua:412-429 set_all_target_statuses_for_hostname(hostname, port), every address of that name and port."""
    k = Keeper(parse_config(NAMED), workers=1)
    k.discover("up", ADDRESSES)
    if action == "healthy":
        k.admin("targets", {"action": "unhealthy", "target": "up|svc.test:80"}, 0.0, 0.0)
    result, broadcasts = k.admin("targets", {"action": action, "target": "up|svc.test:80"}, 0.0, 0.0)
    healthy = action == "healthy"
    assert [t["key"] for t in result] == [S2, S3] and all(t["healthy"] is healthy for t in result)
    assert broadcasts == [p.TargetsChanged(targets=[k.targets[S2], k.targets[S3]])]
    assert {key: k.targets[key].healthy for key in (S2, S3, O4)} == {S2: healthy, S3: healthy, O4: True}
    assert k.health.healthy("up", "svc.test/127.0.0.2:80") is healthy


def test_an_operators_verdict_on_a_name_with_no_address_here_is_refused() -> None:
    """Kong answers 404 for a target that is not the upstream's (upstreams.lua 3.9.3:43-45); an address key still
    marks its one address (post_health with an ip: set_target_status)."""
    k = Keeper(parse_config(NAMED), workers=1)
    k.discover("up", ADDRESSES)
    with pytest.raises(KeyError, match="no target 'up|nothing.test:80'"):
        k.admin("targets", {"action": "unhealthy", "target": "up|nothing.test:80"}, 0.0, 0.0)
    result, _ = k.admin("targets", {"action": "unhealthy", "target": S3}, 0.0, 0.0)
    assert result["key"] == S3 and {key: k.targets[key].healthy for key in (S2, S3)} == {S2: True, S3: False}


# ---- end to end -----------------------------------------------------------------------------------------------------


def _doc(targets: list[str]) -> dict[str, Any]:
    return {"upstreams": [{"name": "u", "targets": [{"target": t} for t in targets],
                           "healthchecks": {"passive": {"unhealthy": {"http_failures": 1}}}}],
            "services": [{"name": "s", "url": "http://u", "routes": [{"name": "r", "paths": ["/"]}]}]}


async def _reload(gw: GatewayNode, doc: dict[str, Any]) -> None:
    gw.config.write_text(json.dumps({**gw.doc, **doc}, indent=1))
    await gw.admin("reload")


async def _verdict(gw: GatewayNode, key: str, healthy: bool) -> bool:
    state = (await gw.targets()).get(key)
    return state is not None and state["healthy"] is healthy


async def test_a_target_removed_and_put_back_by_reloads_gets_no_traffic_while_unhealthy(
        tmp_path: Path, nursery: trio.Nursery) -> None:
    """End to end, through the keeper's reload_config and the workers' balancers: the target passive checks took out,
    removed by one reload and put back by the next, stays out (healthcheckers.lua:47-66, healthcheck.lua:456-469)."""
    a, b = Backend("a"), Backend("b")
    await nursery.start(a.serve)
    await nursery.start(b.serve)
    a.status = 500
    key = f"u|{a.target}"
    gw = GatewayNode(tmp_path / "gw", _doc([a.target, b.target]))
    try:
        with trio.fail_after(30):
            await gw.start(workers=1)
            for _ in range(4):
                await request(gw.port, "GET", "/x")
            await wait_for(lambda: _verdict(gw, key, False), 5, what="a taken out by passive checks")
            await _reload(gw, _doc([b.target]))
            await _reload(gw, _doc([a.target, b.target]))
            await trio.sleep(0.3)
            hits = a.hits
            statuses = [(await request(gw.port, "GET", "/x")).status for _ in range(6)]
            state = (await gw.targets()).get(key)
            assert a.hits == hits and statuses == [200] * 6 and state is not None and state["healthy"] is False, \
                (a.hits - hits, statuses, state)
    finally:
        gw.cleanup()


class AtBackend(Backend):
    """A Backend on a given loopback address and port (the addresses of one DNS name share a port)."""

    def __init__(self, name: str, host: str, port: int) -> None:
        super().__init__(name)
        self.host, self.port = host, port

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    async def serve(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        async with trio.open_nursery() as nursery:
            task_status.started(self.port)
            await trio.serve_listeners(self._on_conn, listeners, handler_nursery=nursery)


async def test_gateway_admin_marks_a_name_target_unhealthy_and_no_address_of_it_gets_traffic(
        tmp_path: Path, nursery: trio.Nursery) -> None:
    """`targets unhealthy target=u|svc.test:PORT` over the admin channel, as Kong's PUT
    /upstreams/{u}/targets/{name:port}/unhealthy (balancer/init.lua:412-429): every address of the name is out."""
    from backends import free_port
    from dns_server import serve_names

    from gateway.bus.admin_client import admin_call
    from gateway.node.control import ADMIN_TIMEOUT_S

    port = free_port()
    b2, b3 = AtBackend("b2", "127.0.0.2", port), AtBackend("b3", "127.0.0.3", port)
    await nursery.start(b2.serve)
    await nursery.start(b3.serve)
    names = await serve_names(nursery, {"svc.test": ["127.0.0.2", "127.0.0.3"]})
    gw = GatewayNode(tmp_path / "gw", _doc([f"svc.test:{port}"]), **names.settings)
    endpoint = f"ipc://{gw.dir / 'run' / 'admin.sock'}"
    args = {"action": "unhealthy", "target": f"u|svc.test:{port}"}
    try:
        with trio.fail_after(30):
            await gw.start(workers=1)
            await wait_for(lambda: _has(gw, f"u|svc.test/127.0.0.3:{port}"), 5, what="both addresses")
            reply = await trio.to_thread.run_sync(lambda: admin_call(endpoint, "targets", args, ADMIN_TIMEOUT_S))
            assert reply.ok, reply.error
            await trio.sleep(0.3)
            statuses = [(await request(gw.port, "GET", "/x")).status for _ in range(4)]
            assert statuses == [503] * 4 and b2.hits + b3.hits == 0, (statuses, await gw.targets())
    finally:
        gw.cleanup()


async def _has(gw: GatewayNode, key: str) -> bool:
    return key in await gw.targets()
