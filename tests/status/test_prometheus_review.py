"""/metrics and Kong's Status API as Kong answers them (kong/plugins/prometheus/exporter.lua, kong/status/): the state
keeper's target health and breaker states lose what the config drops, the nginx timers family, the metric errors'
HELP, /status/ready with an empty config, and /metrics's methods and trailing slash."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from backends import request
from e2e_helpers import node_factory
from e2e_helpers import request as node_request
from prometheus_client import CollectorRegistry

from gateway.breaker.config import BreakerConfig
from gateway.breaker.keeper import BreakerBoard
from gateway.config import parse_config
from gateway.http.server import ConnectionSet
from gateway.keeper.state import Keeper
from gateway.metrics import KONG_NGINX_TIMERS, METRIC_ERRORS, MULTIPROC_ENV, STATE_SUFFIX, StateGauge, read_states
from gateway.status import BaseStatusSource, StatusApp, serve_status
from gateway.status.collect import encode_text, gateway_registry
from gateway.telemetry.service import WorkerTelemetry

DEAD_PID = 5_000_000  # above any kernel's pid_max (2^22): never a live process
PROMETHEUS = {"name": "prometheus", "config": {"upstream_health_metrics": True}}


def _scrape(path: Path, kong_enabled: bool = True) -> str:
    registry, collector = gateway_registry(str(path), node="n", version="3.9", kong_enabled=lambda: kong_enabled)
    collector.prepare([])
    return encode_text(registry).decode()


def _config(upstreams: list[dict[str, Any]]) -> Any:
    return parse_config(json.dumps({"_format_version": "3.0", "upstreams": upstreams, "plugins": [PROMETHEUS]}))


# --- the state keeper's families: what the config drops leaves the next scrape (exporter.lua metric_data reset) -----


def test_a_state_gauge_publishes_its_current_label_sets_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) \
        -> None:
    """A removed label set is gone from the published family (prometheus_client's multiprocess files would keep it);
    an unchanged family is not written again."""
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    gauge = StateGauge("test_review_state", "a state", ["key"], registry=None)
    gauge.labels("a").set(1)
    gauge.labels("b").set(0)
    gauge.publish()
    (written,) = tmp_path.glob(f"*{STATE_SUFFIX}")
    before = written.stat().st_mtime_ns
    gauge.publish()
    assert written.stat().st_mtime_ns == before
    gauge.remove("b")
    gauge.publish()
    (family,) = read_states(str(tmp_path))
    assert (family.name, family.type, [(s.labels, s.value) for s in family.samples]) == (
        "test_review_state", "gauge", [({"key": "a"}, 1.0)])


def test_a_dead_processs_state_is_swept_and_a_live_duplicate_is_at_its_max(tmp_path: Path) -> None:
    """Two keepers' files (a restart, for a moment) merge at the max; an exited process's file is removed before a
    scrape, as its live gauges are."""
    doc = {"help": "h", "labels": ["key"], "rows": [["a", 1.0]]}
    (tmp_path / f"test_review_merge_{DEAD_PID}{STATE_SUFFIX}").write_text(json.dumps(doc))
    (tmp_path / f"test_review_merge_1{STATE_SUFFIX}").write_text(json.dumps({**doc, "rows": [["a", 0.0]]}))
    assert 'test_review_merge{key="a"} 1.0' in encode_text(gateway_registry(str(tmp_path))[0]).decode()
    body = _scrape(tmp_path)  # pid 1 (init) lives
    assert 'test_review_merge{key="a"} 0.0' in body
    assert not (tmp_path / f"test_review_merge_{DEAD_PID}{STATE_SUFFIX}").exists()


def test_target_health_of_removed_targets_and_upstreams_leaves_metrics(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """04-status_api_spec "remove metrics from deleted targets" / "... upstreams": after a reload drops them, the
    keeper's next flush leaves no kong_upstream_target_health of them."""
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    keeper = Keeper(_config([{"name": "kept", "targets": [{"target": "127.0.0.1:9"}, {"target": "127.0.0.1:10"}]},
                             {"name": "deleted", "targets": [{"target": "127.0.0.1:11"}]}]), workers=1)
    keeper.sample_metrics()
    body = _scrape(tmp_path)
    assert 'upstream="kept",target="127.0.0.1:10"' in body and 'upstream="deleted"' in body
    keeper.configure(_config([{"name": "kept", "targets": [{"target": "127.0.0.1:9"}]}]))
    keeper.sample_metrics()
    health = [line for line in _scrape(tmp_path).splitlines() if line.startswith("kong_upstream_target_health{")]
    assert health == [f'kong_upstream_target_health{{upstream="kept",target="127.0.0.1:9",address="127.0.0.1:9",'
                      f'state="{state}",subsystem="http"}} {int(state == "healthchecks_off")}'
                      for state in ("dns_error", "healthchecks_off", "healthy", "unhealthy")]


def test_breaker_states_of_a_target_the_config_drops_leave_metrics(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    old = BreakerBoard({"up|a:1": BreakerConfig(), "up|b:2": BreakerConfig()})
    old.sample_states()
    assert 'target="up|b:2"' in _scrape(tmp_path)
    board = BreakerBoard({"up|a:1": BreakerConfig()})
    board.adopt(old)
    board.sample_states()
    states = [line for line in _scrape(tmp_path).splitlines() if line.startswith("gateway_circuit_breaker_state{")]
    assert states == [f'gateway_circuit_breaker_state{{target="up|a:1",state="{state}"}} {float(state == "closed")}'
                      for state in ("closed", "forced_open", "half_open", "open")]


# --- kong_nginx_timers and the metric errors' HELP --------------------------------------------------------------------


@pytest.mark.parametrize("kong_enabled", [True, False])
def test_metrics_always_have_kongs_nginx_timers(tmp_path: Path, kong_enabled: bool) -> None:
    """exporter.lua's local gauge nginx_timers {"running"}, {"pending"}, with or without a plugin (0: no worker)."""
    body = _scrape(tmp_path, kong_enabled)
    assert ("# HELP kong_nginx_timers Number of nginx timers\n# TYPE kong_nginx_timers gauge\n"
            'kong_nginx_timers{state="running"} 0\nkong_nginx_timers{state="pending"} 0\n') in body


async def test_a_worker_samples_its_trio_tasks_as_kongs_timers() -> None:
    """At each flush (not per request): running = the tasks runnable, pending = the other living ones."""
    telemetry = WorkerTelemetry(parse_config('_format_version: "3.0"\ngateway: {access_log: false}\n'),
                                ConnectionSet())
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(trio.sleep_forever)
        await trio.sleep(0)
        nursery.start_soon(trio.sleep, 0)  # runnable now
        stats = trio.lowlevel.current_statistics()
        telemetry.sample()
        nursery.cancel_scope.cancel()
    running, pending = (KONG_NGINX_TIMERS.labels(state)._value.get() for state in ("running", "pending"))
    assert (running, pending) == (stats.tasks_runnable, stats.tasks_living - stats.tasks_runnable)
    assert running >= 1 and pending >= 3


def test_metric_errors_help_is_kongs() -> None:
    """prometheus.lua Prometheus.init: counter(error_metric_name, "Number of nginx-lua-prometheus errors")."""
    registry = CollectorRegistry()
    registry.register(METRIC_ERRORS)
    assert ("# HELP kong_nginx_metric_errors_total Number of nginx-lua-prometheus errors\n"
            "# TYPE kong_nginx_metric_errors_total counter\n") in encode_text(registry).decode()


# --- the Status API: /status/ready with an empty config, /metrics's methods -------------------------------------------


@pytest.mark.parametrize(("doc", "expected"), [
    ({}, (503, {"message": "no configuration available (empty configuration present)"})),
    ({"upstreams": [{"name": "u"}]}, (200, {"message": "ready"})),
], ids=["empty", "entities"])
async def test_status_ready_is_503_while_the_config_has_no_entities(nursery: trio.Nursery, doc: dict[str, Any],
                                                                    expected: tuple[int, Any]) -> None:
    """ready.lua is_dbless_ready: the empty config's hash (our /status configuration_hash of zeros) is not ready.
    The gateway's own /ready is its processes' readiness: an empty config is served (404s), so it stays 200."""
    config = parse_config(json.dumps({"_format_version": "3.0", **doc}))
    app = StatusApp(BaseStatusSource(), CollectorRegistry(), check_timeout=0.3, config=lambda: config)
    _, port = await nursery.start(serve_status, app, "127.0.0.1", 0)
    ready = await request(port, "GET", "/status/ready")
    assert (ready.status, ready.json()) == expected
    assert (await request(port, "GET", "/ready")).status == 200


async def test_metrics_answers_methods_and_a_trailing_slash_as_kongs_status_routes(nursery: trio.Nursery) -> None:
    """attach_routes: OPTIONS 204 listing GET, HEAD, OPTIONS; another method 405 {"message": "Method not allowed"};
    default_route: /metrics/ is /metrics."""
    app = StatusApp(BaseStatusSource(), CollectorRegistry(), check_timeout=0.3)
    _, port = await nursery.start(serve_status, app, "127.0.0.1", 0)
    options = await request(port, "OPTIONS", "/metrics")
    assert options.status == 204 and options.header("allow") == "GET, HEAD, OPTIONS"
    for method in ("POST", "DELETE"):
        reply = await request(port, method, "/metrics", headers=[("Content-Type", "application/json")], body=b"{}")
        assert (reply.status, reply.json()) == (405, {"message": "Method not allowed"}), method
    slashed = await request(port, "GET", "/metrics/")
    assert slashed.status == 200 and slashed.header("content-type").startswith("text/plain")


# --- end to end: a reload drops a target and an upstream --------------------------------------------------------------


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Any]:
    with node_factory(tmp_path) as make:
        yield make


async def _metrics(port: int) -> str:
    reply = await node_request(port, "GET", "/metrics")
    assert reply.status == 200
    return reply.body.decode()


async def test_a_reload_removes_target_health_of_dropped_targets_and_upstreams(node: Any) -> None:
    """The keeper in its process, /metrics in the root: the dropped target and upstream are gone within a flush; the
    worker's tasks are there as kong_nginx_timers."""
    doc: dict[str, Any] = {
        "upstreams": [{"name": "kept", "targets": [{"target": "127.0.0.1:9"}, {"target": "127.0.0.1:10"}]},
                      {"name": "deleted", "targets": [{"target": "127.0.0.1:11"}]}],
        "plugins": [PROMETHEUS]}
    gw = node(doc)
    await gw.start(workers=1)
    gone_target, gone_upstream = 'upstream="kept",target="127.0.0.1:10"', 'upstream="deleted"'
    pending = re.compile(r'^kong_nginx_timers\{state="pending"\} [1-9]\d*$', re.MULTILINE)
    with trio.fail_after(10):
        while not (gone_target in (body := await _metrics(gw.status_port)) and gone_upstream in body
                   and pending.search(body)):
            await trio.sleep(0.1)
    doc["upstreams"] = [{"name": "kept", "targets": [{"target": "127.0.0.1:9"}]}]
    gw.config.write_text(json.dumps({**gw.doc, **doc}))
    reload = await gw.acli("reload")
    assert reload.returncode == 0, reload.stderr
    with trio.move_on_after(3):  # the keeper samples at each flush (1 s)
        while gone_target in (body := await _metrics(gw.status_port)) or gone_upstream in body:
            await trio.sleep(0.1)
    assert 'upstream="kept",target="127.0.0.1:9"' in body
    assert [line for line in body.splitlines() if gone_target in line or gone_upstream in line] == []
