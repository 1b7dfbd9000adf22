"""The metrics machinery: the recorder's flush, files of exited processes, Kong's node families, restarts counted
from the supervisor's reports, and the prometheus plugin's switches."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import trio
from backends import Client, EchoBackend
from prometheus_client import CollectorRegistry, Histogram

from gateway import metrics
from gateway.http.codec import Request
from gateway.metrics import (
    KONG_BANDWIDTH,
    MCP_TOOL_CALLS,
    OTHER_TOOL,
    RECORDER,
    SUPERVISOR_RESTARTS,
    Recorder,
    RouteObservations,
    add_observations,
    sweep_dead_processes,
    tool_label,
)
from gateway.status.collect import gateway_registry
from gateway.telemetry.supervision import install_restart_counter
from supervisor import ChildSpec, Restart, SupervisorSpec, SupFlags, serve


def test_a_histogram_row_lands_in_prometheus_buckets():
    registry = CollectorRegistry()
    hist = Histogram("t_latency_ms", "test", ["route"], buckets=(1, 5, 10), registry=registry)
    rec = Recorder()
    for value in (0.5, 0.7, 4, 11, 50):
        rec.observe(hist, ("r",), value)
    rec.flush()
    get = registry.get_sample_value
    assert [get("t_latency_ms_bucket", {"route": "r", "le": le}) for le in ("1.0", "5.0", "10.0", "+Inf")] == \
        [2, 3, 3, 5]
    assert get("t_latency_ms_count", {"route": "r"}) == 5 and get("t_latency_ms_sum", {"route": "r"}) == 66.2
    add_observations(hist.labels("r"), [1, 0, 0, 0, 2.0])  # rows add up across flushes
    assert get("t_latency_ms_count", {"route": "r"}) == 6


WRITER = textwrap.dedent("""
    import os, sys
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
    from gateway.metrics import ACCEPTED, CONNECTIONS, RECORDER, REQUESTS_STARTED
    RECORDER.request("api", 200)
    RECORDER.request("api", 503)
    REQUESTS_STARTED.inc(2)
    ACCEPTED.inc(3)
    CONNECTIONS.labels("active").set(2)
    RECORDER.flush()
""")


def _run_writer(path: str) -> int:
    proc = subprocess.run([sys.executable, "-c", WRITER, path], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return 0


def test_an_exited_process_keeps_its_counts_but_not_its_gauges(tmp_path):
    path = str(tmp_path)
    _run_writer(path)
    _run_writer(path)
    registry, collector = gateway_registry(path, node="n", version="9", kong_enabled=lambda: True)
    before = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in collector.families() for s in f.samples}
    assert before[("gateway_connections", (("state", "active"),))] == 4  # both still on file
    assert sweep_dead_processes(path)  # both writers have exited
    get = registry.get_sample_value
    assert get("gateway_requests_total", {"route": "api", "code": "200"}) == 2
    assert get("gateway_requests_total", {"route": "api", "code": "503"}) == 2
    assert get("gateway_connections", {"state": "active"}) is None
    node = {"node_id": collector.node_id, "subsystem": "http"}
    assert get("kong_nginx_connections_total", {**node, "state": "accepted"}) == 6
    assert get("kong_nginx_connections_total", {**node, "state": "active"}) == 0
    assert get("kong_nginx_requests_total", node) == 4
    assert get("kong_node_info", {"node_id": collector.node_id, "version": "9"}) == 1
    assert get("kong_datastore_reachable") == 1


def test_a_scrape_skips_a_metric_file_another_process_is_creating_at_that_instant(tmp_path):
    _run_writer(str(tmp_path))
    (tmp_path / "counter_99999.db").write_bytes(b"")  # created, not yet sized: reading it would raise struct.error
    registry, _ = gateway_registry(str(tmp_path))
    assert registry.get_sample_value("gateway_requests_total", {"route": "api", "code": "200"}) == 1


KONG_WRITER = textwrap.dedent("""
    import os, sys
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
    from gateway.metrics import KONG_REQUESTS
    KONG_REQUESTS.labels("s", "r", "200", "service", "default", "").inc()
""")


def test_kong_request_families_only_with_a_prometheus_plugin_and_node_families_always(tmp_path):
    """Kong's exporter: metric_data(local_only) without an enabled plugin leaves out what its shared dict holds
    (requests, latencies, bandwidth) and keeps its local metrics (connections, node info)."""
    _run_writer(str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", KONG_WRITER, str(tmp_path)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    labels = {"service": "s", "route": "r", "code": "200", "source": "service", "workspace": "default",
              "consumer": ""}
    for enabled in (False, True):
        registry, collector = gateway_registry(str(tmp_path), node="n", kong_enabled=lambda e=enabled: e)
        get = registry.get_sample_value
        assert get("kong_nginx_requests_total", {"node_id": collector.node_id, "subsystem": "http"}) == 2
        assert get("kong_http_requests_total", labels) == (1 if enabled else None)
        assert get("gateway_requests_total", {"route": "api", "code": "200"}) == 1


async def test_a_crashed_child_is_counted_with_its_exit_reason():
    install_restart_counter()
    crashes = []

    async def child(task_status=trio.TASK_STATUS_IGNORED) -> None:  # noqa: ANN001
        task_status.started()
        if not crashes:
            crashes.append(1)
            raise RuntimeError("boom")
        await trio.sleep_forever()

    labels = ("sup@7", "c1")
    RECORDER.flush()
    before = SUPERVISOR_RESTARTS.labels("sup", "c1", "boom")._value.get()
    spec = SupervisorSpec(SupFlags("one_for_one", 5, 10), [ChildSpec("c1", child, restart=Restart.PERMANENT)],
                          name=labels[0])
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(serve, spec)
        with trio.fail_after(5):
            while not crashes or (await handle.which_children())[0].restart_count < 1:
                await trio.sleep(0.01)
        await handle.stop()
    RECORDER.flush()
    after = {k: c._value.get() for k, c in SUPERVISOR_RESTARTS._metrics.items() if k[0] == "sup"}
    assert after == {("sup", "c1", "boom"): before + 1}  # "sup@7" is counted as "sup"; the reason as reported


def test_a_routes_ingress_bandwidth_is_its_requests_sizes_as_read_and_their_bodies():
    """nginx's $request_length (prometheus' ingress bandwidth: kong/plugins/prometheus/handler.lua:46, kong/pdk/
    log.lua:909): what the codec read of each request (Request.size: its head as sent, whatever its headers are now)
    and the body's data."""
    wire = b"POST /mcp HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\n"
    request = Request(b"POST", b"/mcp", [(b"host", b"a"), (b"content-length", b"2")], b"1.1", True, b"a", False,
                      size=len(wire))
    request.headers.append((b"x-added", b"by a plugin"))
    obs = RouteObservations("ingress-r", "ingress-svc", "ingress-route")
    obs.requests += [request, request]
    obs.bodies += [2, 2]
    obs.sent += [10, 20]
    obs.flush()
    ingress = KONG_BANDWIDTH.labels("ingress-svc", "ingress-route", "ingress", "default", "")._value.get()
    egress = KONG_BANDWIDTH.labels("ingress-svc", "ingress-route", "egress", "default", "")._value.get()
    assert (ingress, egress) == (2 * (len(wire) + 2), 30)


@pytest.fixture
def fresh_tool_labels(monkeypatch):  # noqa: ANN001,ANN201
    monkeypatch.setattr(metrics, "_tool_labels", set())
    monkeypatch.setattr(metrics, "MAX_TOOL_LABELS", 3)


def test_a_tool_name_is_its_own_label(fresh_tool_labels):
    assert [tool_label(name) for name in ("get_weather", "fs.read-file", "get_weather")] == \
        ["get_weather", "fs.read-file", "get_weather"]


def test_a_name_not_shaped_as_a_tool_name_counts_as_other(fresh_tool_labels):
    for name in ("", "a b", "x" * 129, "tool/with/slash", "naïve", '"quoted"'):
        assert tool_label(name) == OTHER_TOOL, name


def test_names_past_the_bound_count_as_other_and_the_first_keep_their_labels(fresh_tool_labels):
    assert [tool_label(f"t{i}") for i in range(5)] == ["t0", "t1", "t2", OTHER_TOOL, OTHER_TOOL]
    assert tool_label("t1") == "t1"


async def test_tools_calls_are_counted_by_tool_and_clients_cannot_mint_series(nursery, gateway, fresh_tool_labels):
    backend = EchoBackend()  # answers every POST 200
    await nursery.start(backend.serve)
    port = await gateway({"services": [{"name": "mcp", "url": f"http://127.0.0.1:{backend.port}", "routes": [
        {"name": "mcp", "paths": ["/mcp"], "strip_path": False, "mcp": True}]}]})
    RECORDER.flush()
    before = {key: child._value.get() for key, child in MCP_TOOL_CALLS._metrics.items()}
    headers = [("content-type", "application/json"), ("accept", "application/json, text/event-stream")]
    async with await Client.connect(port, host="localhost") as client:
        with trio.fail_after(30):
            for i in range(20):
                body = json.dumps({"jsonrpc": "2.0", "id": i, "method": "tools/call",
                                   "params": {"name": f"tool-{i}", "arguments": {}}}).encode()
                named = [*headers, ("mcp-method", "tools/call"), ("mcp-name", f"tool-{i}")]  # read by the gateway
                assert (await client.request("POST", "/mcp", named, body)).status == 200
    RECORDER.flush()
    added = {key[0]: child._value.get() - before.get(key, 0) for key, child in MCP_TOOL_CALLS._metrics.items()
             if key[1] == "ok" and child._value.get() != before.get(key, 0)}
    assert added == {"tool-0": 1, "tool-1": 1, "tool-2": 1, OTHER_TOOL: 17}
