"""/metrics and Kong's Status API /status against Kong (kong/plugins/prometheus/exporter.lua, kong/api/routes/
health.lua): Kong's text whatever a scraper's Accept asks for, and /status's "server" numbers at a cost that does not
grow with every route's metric series."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import trio
from backends import request

from gateway.metrics import read_families
from gateway.status import BaseStatusSource, StatusApp, serve_status
from gateway.status.collect import gateway_registry, server_statistics

# What Prometheus 2.x sends by default (scrape_protocols: OpenMetricsText1.0.0, OpenMetricsText0.0.1,
# PrometheusText0.0.4): it asks for OpenMetrics first.
PROMETHEUS_2_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
                       "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")

KONG_FAMILIES = textwrap.dedent("""
    import os, sys
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
    from gateway.metrics import KONG_BANDWIDTH, KONG_REQUEST_LATENCY, KONG_REQUESTS
    KONG_REQUESTS.labels("s", "r", "200", "service", "default", "").inc(3)
    KONG_REQUEST_LATENCY.labels("s", "r", "default").observe(12.5)
    KONG_BANDWIDTH.labels("s", "r", "ingress", "default", "").inc(264)
""")

# Route 0's series are written by the families; every other route's are route 0's entries with its names in place of
# "s0" and "r0", appended in the same order: byte for byte the files a loop doing route 0's calls for every route
# writes (compared at 1, 3, 137 and 5000 routes), in 2 s instead of 13-20 s (each new label set's value objects cost
# prometheus_client ~70 µs apiece, some 265,000 of them).
MANY_ROUTES = textwrap.dedent("""
    import os, sys
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
    from gateway.metrics import (KONG_BANDWIDTH, KONG_LATENCY, KONG_REQUEST_LATENCY, KONG_REQUESTS,
                                 KONG_UPSTREAM_LATENCY, REQUESTS, REQUESTS_STARTED)
    s, r = "s0", "r0"
    KONG_REQUESTS.labels(s, r, "200", "service", "default", "").inc()
    REQUESTS.labels(r, "200").inc()
    REQUESTS_STARTED.inc()
    for family in (KONG_LATENCY, KONG_UPSTREAM_LATENCY, KONG_REQUEST_LATENCY):
        family.labels(s, r, "default").observe(12.5)
    KONG_BANDWIDTH.labels(s, r, "ingress", "default", "").inc(264)
    KONG_BANDWIDTH.labels(s, r, "egress", "default", "").inc(512)
    files = {KONG_REQUESTS.labels(s, r, "200", "service", "default", "")._value._file,  # counter_<pid>.db
             KONG_LATENCY.labels(s, r, "default")._sum._file,  # histogram_<pid>.db
             KONG_BANDWIDTH.labels(s, r, "ingress", "default", "")._value._file}  # gauge_sum_<pid>.db
    for file in files:
        route_0 = [(k, v, t) for k, v, t, _ in file._read_all_values() if '"s0"' in k or '"r0"' in k]
        for i in range(1, int(sys.argv[2])):
            for key, value, timestamp in route_0:
                file.write_value(key.replace('"s0"', f'"s{i}"').replace('"r0"', f'"r{i}"'), value, timestamp)
    for _ in range(1, int(sys.argv[2])):
        REQUESTS_STARTED.inc()
""")

NODE_COUNTERS = textwrap.dedent("""
    import os, sys
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
    from gateway.metrics import ACCEPTED, CONNECTIONS, KONG_NGINX_TIMERS, KONG_REQUESTS, REQUESTS, REQUESTS_STARTED
    for state, n in (("active", 5), ("reading", 1), ("writing", 3), ("waiting", 1)):
        CONNECTIONS.labels(state).set(n)
    ACCEPTED.inc(40)
    REQUESTS.labels("a", "200").inc(90)
    REQUESTS.labels("b", "503").inc(10)
    REQUESTS.labels("-", "404").inc(2)
    REQUESTS_STARTED.inc(102)
    KONG_REQUESTS.labels("s", "a", "200", "service", "default", "").inc(90)
    KONG_NGINX_TIMERS.labels("running").set(4)
""")


def _write(path: Path, script: str, *args: str) -> None:
    """Run `script` in a process of its own writing its metric files to `path` (it exits: its files stay)."""
    proc = subprocess.run([sys.executable, "-c", script, str(path), *args], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture
def metrics_dir(tmp_path: Path) -> Path:
    path = tmp_path / "metrics"
    path.mkdir()
    return path


async def test_metrics_is_kongs_text_whatever_a_prometheus_2_scraper_accepts(nursery: trio.Nursery,
                                                                              metrics_dir: Path) -> None:
    """kong/plugins/prometheus/exporter.lua:577 collect(): Content-Type "text/plain; charset=UTF-8" and Kong's own
    text whatever the Accept; prometheus.lua fix_histogram_bucket_labels writes bounds le="25" (not "25.0", a
    different series before Prometheus 3.0). Prometheus 2.x asks for OpenMetrics first and still gets that text,
    kong_bandwidth_bytes typed counter as Kong types it."""
    _write(metrics_dir, KONG_FAMILIES)
    registry, collector = gateway_registry(str(metrics_dir), node="n", version="3.9", kong_enabled=lambda: True)
    app = StatusApp(BaseStatusSource(), registry, check_timeout=0.3, prepare=collector.prepare)
    _, port = await nursery.start(serve_status, app, "127.0.0.1", 0)
    reply = await request(port, "GET", "/metrics", headers=[("Accept", PROMETHEUS_2_ACCEPT)])
    assert reply.status == 200 and reply.header("content-type") == "text/plain; charset=UTF-8"
    lines = reply.body.decode().splitlines()
    assert 'kong_request_latency_ms_bucket{service="s",route="r",workspace="default",le="25"} 1' in lines
    assert "# TYPE kong_bandwidth_bytes counter" in lines
    assert "# EOF" not in lines


async def test_status_answers_at_once_however_many_services_have_metrics(nursery: trio.Nursery,
                                                                          metrics_dir: Path) -> None:
    """kong/api/routes/health.lua:43 GET /status: server = kong.nginx.get_statistics(), nginx's connection and
    request counters, whose cost does not depend on how many services or routes there are. With 5000 routes' Kong
    histograms in the files (one worker's worth), /status reads the node counters' families only and answers at
    once (it took seconds of the root's CPU when it merged every family)."""
    _write(metrics_dir, MANY_ROUTES, "5000")
    registry, collector = gateway_registry(str(metrics_dir), node="n", version="3.9", kong_enabled=lambda: True)
    app = StatusApp(BaseStatusSource(), registry, check_timeout=0.3, prepare=collector.prepare,
                    families=collector.families)
    _, port = await nursery.start(serve_status, app, "127.0.0.1", 0)
    started, cpu_started = trio.current_time(), time.process_time()
    reply = None
    with trio.move_on_after(15):
        reply = await request(port, "GET", "/status")
    took, cpu = trio.current_time() - started, time.process_time() - cpu_started
    assert reply is not None, f"GET /status: no answer in {took:.1f} s"
    assert reply.status == 200 and reply.json()["server"]["total_requests"] == 5001  # (with this one)
    # the CPU it took (the status server is in this process, its file reading in its threads): a busy host's other
    # work does not count; merging every family took 4 s
    assert cpu < 1.0, f"GET /status took {cpu:.1f} CPU s ({took:.1f} s)"


def test_status_server_numbers_are_those_every_family_gives(metrics_dir: Path) -> None:
    """kong/api/routes/health.lua:43 (nginx's stub_status counters): reading only the node counters' files gives the
    numbers merging every process's families gives: connections by state and requests summed over the processes,
    accepted = handled."""
    for _ in range(2):
        _write(metrics_dir, NODE_COUNTERS)
    registry, collector = gateway_registry(str(metrics_dir), node="n")
    expected = {"connections_active": 10, "connections_reading": 2, "connections_writing": 6,
                "connections_waiting": 2, "connections_accepted": 80, "connections_handled": 80,
                "total_requests": 204}
    assert registry.server_statistics() == expected
    assert server_statistics(collector.families()) == expected  # (this folds the files into the archives)
    assert registry.server_statistics() == expected


def test_reading_a_family_whose_values_do_not_add_up_is_refused(metrics_dir: Path) -> None:
    """read_families sums each sample over the processes' files, right for counters and summed gauges only: a
    histogram (its buckets want FilesCollector's merge) is refused by name, not summed wrongly."""
    with pytest.raises(ValueError, match="kong_request_latency_ms is a histogram"):
        read_families(str(metrics_dir), ["kong_request_latency_ms"])
