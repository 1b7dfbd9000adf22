"""What a reload keeps and what it resets, as `kong reload` (nginx -s reload plus Kong.init in the new cycle) does.

Kept: the settings the root applies only at start (gateway.node.start_only). nginx's reload keeps what its master set
up (release-1.27.1 src/core/ngx_cycle.c ngx_init_cycle: the old cycle's shared zones, :413, and listening sockets,
:503, are reused) and Kong's keeps its node id (kong/init.lua:223-244 reset_kong_shm preserves "kong:node_id";
spec/02-integration/02-cmd/03-reload_spec.lua:154 "clears the 'kong' shm but preserves 'node_id'"); the README:
"Settings the root applies only at start keep their old values". Reset: everything else in Kong's `kong` shm,
/status/ready's draining flag with it (kong/status/ready.lua:26, 128; flush_all at kong/init.lua:261, run by Kong.init
at :658).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import trio
from backends import request
from e2e_helpers import Backend, GatewayNode

from gateway.config import parse_config
from gateway.node.start_only import START_ONLY, START_ONLY_ENV, changed, hand_down, inherited, keep
from gateway.status import CheckResult, StatusApp, serve_status

STARTED = {"admin": "ipc://run/admin.sock", "bus": "ipc://run/bus.sock", "pid_file": "run/gateway.pid",
           "log_file": "run/gateway.log", "status_listen": "127.0.0.1:8100", "restart_intensity": 5,
           "restart_period_s": 60, "registration": {"backend": "consul", "address": "127.0.0.1:8500", "weight": 7}}
RELOADED = {"admin": "ipc://new/admin.sock", "bus": "ipc://new/bus.sock", "pid_file": "new/gateway.pid",
            "log_file": "new/gateway.log", "status_listen": "127.0.0.1:8200", "restart_intensity": 9,
            "restart_period_s": 30, "registration": {"backend": "etcd", "address": "127.0.0.1:2379"}}


def _config(settings: dict[str, Any]) -> Any:
    return parse_config(json.dumps({"_format_version": "3.0", "gateway": {**settings, "drain_timeout": 7}}))


def test_the_start_only_keys_are_the_roots_start_settings() -> None:
    """The keys the reload note names (README, Processes: "it takes effect at the next start") are those the root
    sets up once: its admin socket, the bus the keeper binds, the run directory, the log, the status server, its own
    restart intensity and the registration; the tests below give each of them."""
    assert set(START_ONLY) == set(STARTED) == set(RELOADED)


def test_a_reloaded_config_keeps_the_running_start_only_values_and_names_the_changed_keys() -> None:
    """The root's reloaded config keeps the running start-only values (its status server's node id reads pid_file)
    and the reload names each key it left; the other settings are the new file's."""
    running, loaded = _config(STARTED), _config({**RELOADED, "restart_intensity": 5})
    loaded.gateway.drain_timeout = 9.0
    assert changed(running.gateway, loaded.gateway) == [k for k in START_ONLY if k != "restart_intensity"]
    keep(loaded, running.gateway)
    assert {k: getattr(loaded.gateway, k) for k in START_ONLY} == {k: getattr(running.gateway, k) for k in START_ONLY}
    assert loaded.gateway.drain_timeout == 9.0


def test_a_child_of_the_root_reads_the_start_values_of_every_start_only_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker of a later generation, or a satellite restarted by a reload, reads the reloaded file but gets the
    start values the root handed down (nginx's new workers use the master's sockets and zones), registration's
    nested settings included; its other settings are the file's."""
    monkeypatch.setenv(START_ONLY_ENV, "")  # (restored afterwards: hand_down sets it in this process)
    started = _config(STARTED)
    hand_down(started.gateway)
    child = inherited(_config(RELOADED))
    assert {k: getattr(child.gateway, k) for k in START_ONLY} == {k: getattr(started.gateway, k) for k in START_ONLY}
    assert child.gateway.drain_timeout == 7.0


def test_a_process_no_root_started_reads_its_file_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    """`gateway run` and the tests' in-process gateways have no root: nothing is handed down, the file rules."""
    monkeypatch.delenv(START_ONLY_ENV, raising=False)
    assert inherited(_config(RELOADED)).gateway.bus == "ipc://new/bus.sock"


class _Ready:
    """A status source whose every readiness check passes."""

    async def readiness(self) -> dict[str, bool]:
        return {"config": True}

    async def workers(self) -> CheckResult:
        return CheckResult("healthy")

    bus = discovery = upstreams = memory = workers


async def test_a_reload_clears_the_status_ready_draining_flag(nursery: trio.Nursery) -> None:
    """Kong's POST /status/ready status=draining sets kong:status:ready false in the kong shm (kong/status/ready.lua:
    128); `kong reload` flushes that shm but for its preserve_keys, which do not hold it (kong/init.lua:223-261), so
    the next GET finds it nil and answers 200 {"message": "ready"} (ready.lua:106-118)."""
    app = StatusApp(_Ready())  # type: ignore[arg-type]
    _, port = await nursery.start(serve_status, app, "127.0.0.1", 0)
    assert (await request(port, "POST", "/status/ready?status=draining")).status == 204
    assert (await request(port, "GET", "/status/ready")).json() == {"message": "draining"}
    app.reloaded()
    ready = await request(port, "GET", "/status/ready")
    assert (ready.status, ready.json()) == (200, {"message": "ready"})


async def _until(check: Any, seconds: float, what: str) -> None:
    with trio.move_on_after(seconds):
        while not await check():
            await trio.sleep(0.1)
        return
    raise AssertionError(f"not within {seconds}s: {what}")


async def test_a_reload_moving_bus_and_pid_file_keeps_the_running_keeper_and_run_directory(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    """A reload whose file moves gateway.bus and gateway.pid_file (start-only: README, Processes) leaves the node as
    it runs, as `kong reload` keeps the master's shared zones and kong:node_id (kong/init.lua:224): the new
    generation's workers store in the running keeper's cache, the restarted health checker's verdicts reach it, the
    node id (request-termination's echo, the Status API's) is the one before, nothing is written in the new pid file's
    directory (access log, MCP session key), and /status/ready, drained before, is ready (the kong shm flush)."""
    backend = Backend("b")
    await nursery.start(backend.serve)
    active = {"active": {"type": "http", "http_path": "/health", "timeout": 1,
                         "healthy": {"interval": 0.2, "successes": 1},
                         "unhealthy": {"interval": 0.2, "http_failures": 1}}}
    doc: dict[str, Any] = {
        "upstreams": [{"name": "u", "healthchecks": active, "targets": [{"target": backend.target}]}],
        "services": [{"name": "s", "url": "http://u", "routes": [{"name": "cached", "paths": ["/doc"]}]}],
        "routes": [{"name": "echo", "paths": ["/echo"]}],
        "plugins": [{"name": "proxy-cache", "service": "s",
                     "config": {"strategy": "memory", "cache_ttl": 300, "content_type": ["application/json"]}},
                    {"name": "request-termination", "route": "echo", "config": {"echo": True, "status_code": 200}}],
    }
    gw = GatewayNode(tmp_path / "gw", doc, access_log=True)
    try:
        await gw.start(workers=1)

        async def node_ids() -> tuple[str, str]:
            echo = await request(gw.port, "GET", "/echo")
            health = await request(gw.status_port, "GET", "/upstreams/u/health")
            return echo.json()["kong"]["node_id"], health.json()["node_id"]

        before, status_before = await node_ids()
        assert before == status_before
        assert (await request(gw.status_port, "POST", "/status/ready?status=draining")).status == 204
        other = gw.dir / "elsewhere"
        other.mkdir()
        gw.doc["gateway"] |= {"bus": f"ipc://{gw.dir / 'run' / 'bus2.sock'}", "pid_file": str(other / "gw.pid")}
        gw.config.write_text(json.dumps(gw.doc, indent=1))
        assert (await gw.admin("reload"))["restart_needed"] == ["bus"]  # (the pid file moves, as in nginx)

        async def old_generation_gone() -> bool:
            return not (await gw.status())["retiring"]

        await _until(old_generation_gone, 8, "the old generation drained")
        ready = await request(gw.status_port, "GET", "/status/ready")
        assert (ready.status, ready.json()) == (200, {"message": "ready"})
        assert await node_ids() == (before, before)
        assert (await request(gw.port, "GET", "/doc")).status == 200

        async def cached_in_keeper() -> bool:
            return [e["entries"] for e in await gw.admin("proxy-cache")] == [1]

        await _until(cached_in_keeper, 3, "the new worker's response in the running keeper's cache")
        backend.health_status = 500

        async def target_unhealthy() -> bool:
            health = (await request(gw.status_port, "GET", "/upstreams/u/health")).json()
            return [t["health"] for t in health["data"]] == ["UNHEALTHY"]

        await _until(target_unhealthy, 5, "the restarted health checker's verdict in the running keeper")
        assert os.listdir(other) == ["gw.pid"]  # the pid file alone: the run directory stays the start's
    finally:
        gw.cleanup()
