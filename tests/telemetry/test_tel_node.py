"""Observability of the real process tree (`gateway start --workers 2`), after one scripted mix of requests: 200, 404,
429, 500 and 502 answers, a reload, a log rotation (rename + SIGUSR1) and a `kill -9` of a worker in the middle.

The scenario runs once for the module (it takes ~20 s); each test checks one outcome against what the client got:
the metrics scraped from /metrics (parsed with prometheus-client's parser), the access-log lines, the spans an OTLP
receiver got (decoded with opentelemetry-proto), and the status page in headless Chromium showing a target the test
broke as DOWN (a screenshot is kept: test-artifacts/status-page.png).
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trio
from backends import EchoBackend, free_port
from e2e_helpers import GatewayNode, request, wait_for
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from prometheus_client.parser import text_string_to_metric_families

LIMIT = 4  # rate-limiting on /limited: per day, so no window boundary falls inside the test
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLUSH_WAIT_S = 1.6  # metrics are flushed every second: what a SIGKILL may take with it is older than this


def _config(a: int, b: int, dead: int, collector: int) -> dict[str, Any]:
    return {
        "upstreams": [{"name": "up", "targets": [{"target": f"127.0.0.1:{a}"}, {"target": f"127.0.0.1:{b}"}],
                       "healthchecks": {"passive": {"unhealthy": {"tcp_failures": 1}}}}],
        "services": [
            {"name": "api", "url": "http://up", "routes": [
                {"name": "api", "paths": ["/api"]},
                {"name": "limited", "paths": ["/limited"],
                 "plugins": [{"name": "rate-limiting", "config": {"day": LIMIT}}]}]},
            {"name": "dead", "url": f"http://127.0.0.1:{dead}", "routes": [{"name": "dead", "paths": ["/dead"]}]},
        ],
        "plugins": [
            {"name": "prometheus", "config": {"status_code_metrics": True, "latency_metrics": True,
                                              "bandwidth_metrics": True, "upstream_health_metrics": True}},
            {"name": "opentelemetry", "config": {"traces_endpoint": f"http://127.0.0.1:{collector}/v1/traces",
                                                 "sampling_rate": 1, "queue": {"max_coalescing_delay": 0.1}}},
        ],
    }


class Scenario:
    """What the client sent and got, and what the gateway reported."""

    def __init__(self) -> None:
        self.sent: collections.Counter[tuple[str, int]] = collections.Counter()  # (route or "-", status) -> n
        self.request_ids: list[str] = []
        self.metrics = ""
        self.log_lines: list[dict[str, Any]] = []
        self.spans: list[Span] = []
        self.upstream_parents: list[tuple[str, str]] = []  # (trace id, parent span id) each upstream saw
        self.restart_reason = ""
        self.page_text = ""
        self.page_state = ""
        self.broken = ""
        self.errors: list[str] = []


async def _mix(node: GatewayNode, sc: Scenario, rounds: int) -> None:
    """Each round: 3 x 200, a 500, a 404, a 502, and /limited (200 until the daily limit, then 429)."""
    for _ in range(rounds):
        for target, route in (("/api/a", "api"), ("/api/b", "api"), ("/api/c?status=500", "api"), ("/api/d", "api"),
                              ("/nowhere", "-"), ("/dead", "dead"), ("/limited", "limited")):
            reply = await request(node.port, "GET", target)
            sc.sent[(route, reply.status)] += 1
            if reply.headers.get("x-request-id"):
                sc.request_ids.append(reply.headers["x-request-id"])


async def _scenario(workdir: Path) -> Scenario:
    sc = Scenario()
    a, b, collector = EchoBackend("a"), EchoBackend("b"), EchoBackend("otlp")
    dead = free_port()
    async with trio.open_nursery() as nursery:
        await nursery.start(a.serve)
        await nursery.start(collector.serve)
        b_scope = trio.CancelScope()

        async def serve_b(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with b_scope:
                await b.serve(task_status=task_status)

        await nursery.start(serve_b)
        node = GatewayNode(workdir, _config(a.port, b.port, dead, collector.port), access_log=True,
                           tracing_instrumentations="all", tracing_sampling_rate=1)
        try:
            await node.start(workers=2)
            log = node.dir / "run" / "access.log"
            await _mix(node, sc, 3)
            # log rotation as logrotate does it: move the file, SIGUSR1 to the root; the next lines go to a new file
            log.rename(log.with_name("access.log.1"))
            os.kill(node.root, signal.SIGUSR1)  # type: ignore[arg-type]
            await trio.sleep(0.5)
            await _mix(node, sc, 2)
            reload = await node.acli("reload", "--config", str(node.config))
            assert reload.returncode == 0, reload.stderr
            await _mix(node, sc, 2)
            # the counts of the worker about to be killed are on file (/metrics reads the files) before the kill
            await wait_for(lambda: _counted(node, sum(sc.sent.values())), 2 * FLUSH_WAIT_S + 5, interval=0.1,
                           what="every request so far counted in /metrics")
            await trio.sleep(0.3)  # (that flush, of every family, is over: it takes milliseconds)
            victim = (await node.worker_pids())[0]
            os.kill(victim, signal.SIGKILL)
            await wait_for(lambda: _restarted(node, victim), 15, what="worker restart")
            await _mix(node, sc, 3)
            await trio.sleep(FLUSH_WAIT_S + 0.5)
            sc.metrics = await trio.to_thread.run_sync(_get, f"http://127.0.0.1:{node.status_port}/metrics")
            sc.log_lines = [json.loads(line) for path in (log.with_name("access.log.1"), log)
                            for line in path.read_text().splitlines()]
            await wait_for(lambda: len([s for s in _spans(collector) if s.kind == Span.SPAN_KIND_SERVER])
                           >= _proxied(sc), 10, what="spans")
            await trio.sleep(0.5)  # a request's other spans may be in the next export
            sc.spans = _spans(collector)
            for backend in (a, b):
                for seen in backend.requests:
                    _, trace_id, parent, _ = seen.header("traceparent").split("-")
                    sc.upstream_parents.append((trace_id, parent))
            # break target b: its server goes away; the next tries to it fail (TCP) and passive checks mark it down
            b_scope.cancel()
            sc.broken = f"up|127.0.0.1:{b.port}"
            for _ in range(6):
                await request(node.port, "GET", "/api/x")
            sc.page_state, sc.page_text = await trio.to_thread.run_sync(
                _page, f"http://127.0.0.1:{node.status_port}/status", sc.broken)
        finally:
            await node.stop()
            node.cleanup()
            nursery.cancel_scope.cancel()
    return sc


async def _restarted(node: GatewayNode, victim: int) -> bool:
    """The killed worker's replacement is listed (both workers of the generation run, the victim is not one)."""
    pids = await node.worker_pids()
    return len(pids) == 2 and victim not in pids


async def _counted(node: GatewayNode, requests: int) -> bool:
    """Whether /metrics (the metric files: each worker flushes its counts every second) counts `requests` requests."""
    text = await trio.to_thread.run_sync(_get, f"http://127.0.0.1:{node.status_port}/metrics")
    return sum(s.value for s in _samples(text, "gateway_requests_total")) >= requests


def _proxied(sc: Scenario) -> int:
    """Request spans ("kong", SERVER) expected: one per request (tracing_sampling_rate 1: a 404 too)."""
    return sum(sc.sent.values())


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read().decode()


def _spans(collector: EchoBackend) -> list[Span]:
    out: list[Span] = []
    for seen in collector.requests:
        export = ExportTraceServiceRequest.FromString(seen.body)
        for rs in export.resource_spans:
            for ss in rs.scope_spans:
                out += list(ss.spans)
    return out


def _page(url: str, broken: str) -> tuple[str, str]:
    """Load the status page in headless Chromium until the broken target's row says DOWN; screenshot it."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            cell = page.locator(f'tr[data-target="{broken}"] td.state')
            cell.filter(has_text="DOWN").wait_for(timeout=20000)  # the page refreshes itself every 2 s
            page.get_by_text("per second over the last").wait_for(timeout=10000)  # a refresh later: rates too
            # written aside, then renamed into place: a second test process (pytest-xdist) may run this module's
            # scenario at the same time, and the check of its size must never see the other's half-written file
            shot = ARTIFACTS / f".status-page.{os.getpid()}.png"
            page.screenshot(path=str(shot), full_page=True)
            os.replace(shot, ARTIFACTS / "status-page.png")
            return cell.inner_text(), page.locator("main").inner_text()
        finally:
            browser.close()


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (scripts/setup installs it as root)")
    return trio.run(_scenario, tmp_path_factory.mktemp("tel-node"))


def _samples(text: str, name: str) -> list[Any]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples if s.name == name]


# ---- metrics ---------------------------------------------------------------------------------------------------------


def test_kong_request_counts_equal_what_the_clients_got(scenario: Scenario) -> None:
    got = {(s.labels["route"], int(s.labels["code"])): s.value
           for s in _samples(scenario.metrics, "kong_http_requests_total")}
    want = {key: n for key, n in scenario.sent.items() if key[0] != "-"}
    assert got == want
    sources = {(s.labels["route"], s.labels["code"]): s.labels["source"]
               for s in _samples(scenario.metrics, "kong_http_requests_total")}
    assert sources[("api", "200")] == "service" and sources[("api", "500")] == "service"
    assert sources[("limited", "429")] == "kong" and sources[("dead", "502")] == "kong"


def test_gateway_request_counts_include_requests_no_route_matched(scenario: Scenario) -> None:
    got = {(s.labels["route"], int(s.labels["code"])): s.value
           for s in _samples(scenario.metrics, "gateway_requests_total")}
    assert got == dict(scenario.sent)
    assert scenario.sent[("-", 404)] == 10 and scenario.sent[("limited", 429)] == 10 - LIMIT
    assert scenario.sent[("dead", 502)] == 10 and scenario.sent[("api", 500)] == 10


def test_latency_histograms_count_every_routed_request(scenario: Scenario) -> None:
    per_route = collections.Counter()
    for (route, _), n in scenario.sent.items():
        per_route[route] += n
    for family in ("kong_request_latency_ms_count", "kong_kong_latency_ms_count"):
        got = {s.labels["route"]: s.value for s in _samples(scenario.metrics, family)}
        assert got == {route: n for route, n in per_route.items() if route != "-"}, family
    upstream = {s.labels["route"]: s.value for s in _samples(scenario.metrics, "kong_upstream_latency_ms_count")}
    # every proxied request: Kong's waiting time, also of a failed try (latencies.proxy is -1 only when a plugin
    # or the router answered)
    assert upstream == {"api": per_route["api"], "limited": LIMIT, "dead": per_route["dead"]}
    buckets = [s for s in _samples(scenario.metrics, "kong_request_latency_ms_bucket") if s.labels["route"] == "api"]
    assert [s.labels["le"] for s in buckets][:3] == ["25", "50", "80"]  # Kong's upstream buckets, as Kong writes them


def test_bandwidth_is_counted_both_ways(scenario: Scenario) -> None:
    # a counter, as Kong's: prometheus_client's parser names its samples kong_bandwidth_bytes_total (Prometheus keeps
    # the name as written, kong_bandwidth_bytes)
    got = {(s.labels["route"], s.labels["direction"]): s.value
           for s in _samples(scenario.metrics, "kong_bandwidth_bytes_total")}
    assert got[("api", "ingress")] >= 40 * scenario.sent[("api", 200)]  # at least a request line and a Host each
    assert got[("api", "egress")] > got[("api", "ingress")]


def test_the_killed_worker_is_counted_as_restarted_with_its_exit_reason(scenario: Scenario) -> None:
    restarts = _samples(scenario.metrics, "gateway_supervisor_restarts_total")
    assert [(s.labels["supervisor"], s.labels["reason"], s.value) for s in restarts] == [
        ("workers", "killed by signal SIGKILL", 1.0)]


def test_per_target_tries_and_kong_node_families(scenario: Scenario) -> None:
    tries = collections.Counter()
    for s in _samples(scenario.metrics, "gateway_upstream_requests_total"):
        tries[s.labels["upstream"], s.labels["code"]] += s.value
    assert tries[("up", "200")] == scenario.sent[("api", 200)] + LIMIT
    assert tries[("up", "500")] == scenario.sent[("api", 500)]
    dead = [k for k in tries if k[0].startswith("dead:")]
    assert dead and all(code == "connect_failure" for _, code in dead)
    accepted = [s.value for s in _samples(scenario.metrics, "kong_nginx_connections_total")
                if s.labels["state"] == "accepted"]
    assert accepted and accepted[0] >= sum(scenario.sent.values())
    health = {(s.labels["target"], s.labels["state"]): s.value
              for s in _samples(scenario.metrics, "kong_upstream_target_health")}
    assert sum(v for (_, state), v in health.items() if state == "healthy") == 2  # both up when scraped


# ---- logs ------------------------------------------------------------------------------------------------------------


def test_every_request_has_exactly_one_access_log_line(scenario: Scenario) -> None:
    lines = scenario.log_lines
    assert len(lines) == sum(scenario.sent.values())
    got = collections.Counter((line["route"]["name"] if "route" in line else "-", line["response"]["status"])
                              for line in lines)
    assert got == scenario.sent
    logged_ids = [line["request"]["id"] for line in lines if line["request"]["id"]]
    assert len(set(logged_ids)) == len(logged_ids)
    assert set(scenario.request_ids) <= set(logged_ids)


# ---- traces ----------------------------------------------------------------------------------------------------------


def test_spans_reach_the_otlp_receiver_with_their_parent_links(scenario: Scenario) -> None:
    spans = scenario.spans
    servers = {s.span_id: s for s in spans if s.kind == Span.SPAN_KIND_SERVER}
    clients = [s for s in spans if s.kind == Span.SPAN_KIND_CLIENT]
    assert len(servers) == sum(scenario.sent.values())
    assert all(c.parent_span_id in servers and servers[c.parent_span_id].trace_id == c.trace_id for c in clients)
    by_id = {(c.trace_id.hex(), c.span_id.hex()) for c in clients}
    assert scenario.upstream_parents and all(seen in by_id for seen in scenario.upstream_parents)
    dead_tries = [c for c in clients if c.status.code == c.status.STATUS_CODE_ERROR
                  and any(kv.key == "http.status_code" and kv.value.int_value == 502 for kv in c.attributes)]
    # retries 5 (the default): six tries each, as Kong, the last marked failed too (retries used up, a 5xx)
    assert len(dead_tries) == 6 * scenario.sent[("dead", 502)]
    assert all(c.name == "kong.balancer" for c in clients) and all(s.name == "kong" for s in servers.values())


# ---- the status page -------------------------------------------------------------------------------------------------


def test_the_status_page_shows_the_broken_target_down(scenario: Scenario) -> None:
    assert scenario.page_state == "DOWN"
    assert f"target {scenario.broken} is DOWN" in scenario.page_text
    assert "worker-1" in scenario.page_text and "keeper" in scenario.page_text
    assert (ARTIFACTS / "status-page.png").stat().st_size > 10_000
