"""Prometheus metrics for the whole gateway, summed across processes (prometheus_client's multiprocess mode).

The root points PROMETHEUS_MULTIPROC_DIR at run/metrics before it starts any child, so every process's metrics land
in files there and the status server's /metrics reads them all (gateway.status.collect). Counter and histogram files
of processes that have exited stay and keep counting in the sums, so totals survive worker crashes and reloads;
gauges are of live processes only (the status server removes a dead process's gauge files before each scrape).

On the request path a worker only adds to plain dicts (`Recorder`); a task hands the sums to prometheus_client
every FLUSH_S, whose multiprocess values are file-backed. A worker killed with SIGKILL loses at most its last
FLUSH_S of counts (Kong's counters, synced from worker memory to the shared dict every second, lose the same).

Two sets of families:
- Kong's (kong_*), with the names, labels and buckets of Kong's prometheus plugin (kong/plugins/prometheus/
  exporter.lua), recorded for the requests a `prometheus` plugin applies to, family by family as its config says.
- The gateway's own (gateway_*), always on: requests by route and status, upstream targets, connections,
  breakers, rate limits, the keeper's leases, supervisor restarts, MCP sessions and tool calls.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client import values as prometheus_values

log = logging.getLogger("gateway.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
FLUSH_S = 1.0
WORKSPACE = "default"  # Kong's label for the (only) workspace of a DB-less node

# Kong's buckets (exporter.lua), in ms.
KONG_LATENCY_BUCKETS = (1, 2, 5, 7, 10, 15, 20, 30, 50, 75, 100, 200, 500, 750, 1000, 3000, 6000)
UPSTREAM_LATENCY_BUCKETS = (25, 50, 80, 100, 250, 400, 700, 1000, 2000, 5000, 10000, 30000, 60000)
# Ours, per target: fine enough below 25 ms for the status page's p50 / p99 of a fast local upstream.
TARGET_LATENCY_BUCKETS = (0.5, 1, 2, 3, 5, 7.5, 10, 15, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)

_ROUTE = ["service", "route", "workspace"]

# --- Kong's families ------------------------------------------------------------------------------------------------

KONG_REQUESTS = Counter("kong_http_requests_total", "HTTP status codes per consumer/service/route in Kong",
                        ["service", "route", "code", "source", "workspace", "consumer"])
KONG_LATENCY = Histogram("kong_kong_latency_ms", "Latency added by Kong and enabled plugins for each service/route "
                         "in Kong", _ROUTE, buckets=KONG_LATENCY_BUCKETS)
KONG_UPSTREAM_LATENCY = Histogram("kong_upstream_latency_ms", "Latency added by upstream response for each "
                                  "service/route in Kong", _ROUTE, buckets=UPSTREAM_LATENCY_BUCKETS)
KONG_REQUEST_LATENCY = Histogram("kong_request_latency_ms", "Total latency incurred during requests for each "
                                 "service/route in Kong", _ROUTE, buckets=UPSTREAM_LATENCY_BUCKETS)
# Kong's name has no _total, which prometheus_client adds to every counter: a gauge summed over every process that
# ever ran (mode "sum") exposes the exact name and only ever grows, as Kong's counter does.
KONG_BANDWIDTH = Gauge("kong_bandwidth_bytes", "Total bandwidth (ingress/egress) throughput in bytes",
                       ["service", "route", "direction", "workspace", "consumer"], multiprocess_mode="sum")
KONG_TARGET_HEALTH = Gauge("kong_upstream_target_health", "Health status of targets of upstream. States = "
                           "healthchecks_off|healthy|unhealthy|dns_error, value is 1 when state is populated.",
                           ["upstream", "target", "address", "state", "subsystem"], multiprocess_mode="livemax")
METRIC_ERRORS = Counter("kong_nginx_metric_errors_total", "Number of errors while recording or exporting metrics")

# --- the gateway's own ----------------------------------------------------------------------------------------------

REQUESTS = Counter("gateway_requests_total", "Requests answered by the gateway (routed or not), by route and status",
                   ["route", "code"])
TARGET_REQUESTS = Counter("gateway_upstream_requests_total", "Tries of upstream targets, by outcome: the response "
                          "status, or connect_failure / timeout / error", ["upstream", "target", "code"])
TARGET_LATENCY = Histogram("gateway_upstream_latency_ms", "Time from sending a request to a target to its response "
                           "head, by target", ["upstream", "target"], buckets=TARGET_LATENCY_BUCKETS)
TARGET_ACTIVE = Gauge("gateway_upstream_active_requests", "Requests in progress on a target (sum over workers, "
                      "sampled every second)", ["upstream", "target"], multiprocess_mode="livesum")
CONNECTIONS = Gauge("gateway_connections", "Client connections by state: active, reading (a request head), "
                    "writing (a request in progress), waiting (idle keep-alive)", ["state"],
                    multiprocess_mode="livesum")
ACCEPTED = Counter("gateway_connections_accepted_total", "Client connections accepted")
BREAKER_STATE = Gauge("gateway_circuit_breaker_state", "Circuit breaker state per target: 1 for the current state "
                      "(closed, open, half_open)", ["target", "state"], multiprocess_mode="livemax")
BREAKER_TRANSITIONS = Counter("gateway_circuit_breaker_transitions_total", "Circuit breaker transitions per target",
                              ["target", "from_state", "to_state"])
RATELIMIT_ADMITTED = Counter("gateway_ratelimit_admitted_total", "Requests a rate-limiting plugin admitted (each "
                             "passed every window of the plugin), by plugin and window", ["plugin", "window"])
RATELIMIT_REJECTED = Counter("gateway_ratelimit_rejected_total", "Requests a rate-limiting plugin rejected, by "
                             "plugin and the window that was exhausted", ["plugin", "window"])
LOCAL_SHARE = Counter("gateway_ratelimit_local_share_total",
                      "Requests a worker admitted on its local share of a rate limit (the state keeper exited, "
                      "hung, or was silent on the key for 1 s), by plugin", ["plugin"])
LEASE_BUCKETS = (0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000)
LEASE_ROUND_TRIPS = Histogram("gateway_keeper_lease_round_trip_ms", "Time from a worker's rate-limit lease request "
                              "to the state keeper's grant", [], buckets=LEASE_BUCKETS)
TIMEOUTS = Counter("gateway_timeouts_total",
                   "Connections a timeout ended, by what timed out: client_header, client_body (a stalled upload: "
                   "408), client_send (a client not reading: send_timeout_s), client_keepalive, upstream_write, "
                   "upstream_read", ["kind"])
REDIS_FALLBACK = Counter("gateway_ratelimit_redis_fallback_total",
                         "Tokens a host's state keeper granted on its fallback share of a policy redis limit "
                         "because Redis was unreachable or too slow, by plugin", ["plugin"])
SUPERVISOR_RESTARTS = Counter("gateway_supervisor_restarts_total", "Children that exited on their own and were "
                              "restarted by their supervisor, by supervisor, child and exit reason",
                              ["supervisor", "child", "reason"])
MCP_SESSIONS = Counter("gateway_mcp_sessions_opened_total", "MCP sessions an upstream opened through the gateway "
                       "(a response carrying a new Mcp-Session-Id), by route", ["route"])
MCP_TOOL_CALLS = Counter("gateway_mcp_tool_calls_total", "MCP tools/call requests by tool and outcome (ok: a 2xx "
                         "answer, else the status code)", ["tool", "outcome"])

HistogramRow = list  # per label set: counts per bucket (the last is +Inf), then the sum


def bucket_row(bounds: Sequence[float]) -> HistogramRow:
    return [0] * (len(bounds) + 1) + [0.0]


class Recorder:
    """One process's counts since the last flush. Everything here is a plain dict or int: no locks, no files."""

    def __init__(self) -> None:
        self.requests: defaultdict[tuple[str, int], int] = defaultdict(int)
        # (service, route, status, source, consumer) -> n
        self.kong_requests: defaultdict[tuple[str, str, int, str, str], int] = defaultdict(int)
        # (service, route, direction, consumer) -> bytes
        self.bandwidth: defaultdict[tuple[str, str, str, str], int] = defaultdict(int)
        # (family, label values) -> bucket counts and sum; each family's bounds are its prometheus_client buckets
        self.histograms: dict[tuple[Histogram, tuple[str, ...]], HistogramRow] = {}
        # (counter, label values) -> amount: everything else that is counted
        self.counts: defaultdict[tuple[Counter, tuple[str, ...]], float] = defaultdict(float)
        # called at each flush to set gauges (connections, active requests): no work on the request path
        self.samplers: list[Callable[[], None]] = []

    def request(self, route: str, status: int) -> None:
        self.requests[(route, status)] += 1

    def count(self, counter: Counter, labels: tuple[str, ...], amount: float = 1) -> None:
        self.counts[(counter, labels)] += amount

    def observe(self, family: Histogram, bounds: Sequence[float], labels: tuple[str, ...], value: float) -> None:
        key = (family, labels)
        row = self.histograms.get(key)
        if row is None:
            row = self.histograms[key] = bucket_row(bounds)
        row[bisect_left(bounds, value)] += 1
        row[-1] += value

    def flush(self) -> None:
        """Hand everything counted since the last flush to prometheus_client."""
        requests, self.requests = self.requests, defaultdict(int)
        kong, self.kong_requests = self.kong_requests, defaultdict(int)
        bandwidth, self.bandwidth = self.bandwidth, defaultdict(int)
        histograms, self.histograms = self.histograms, {}
        counts, self.counts = self.counts, defaultdict(float)
        try:
            for (route, status), n in requests.items():
                REQUESTS.labels(route, str(status)).inc(n)
            for (service, route, status, source, consumer), n in kong.items():
                KONG_REQUESTS.labels(service, route, str(status), source, WORKSPACE, consumer).inc(n)
            for (service, route, direction, consumer), n in bandwidth.items():
                KONG_BANDWIDTH.labels(service, route, direction, WORKSPACE, consumer).inc(n)
            for (family, labels), row in histograms.items():
                add_observations(family.labels(*labels) if labels else family, row)
            for (counter, labels), amount in counts.items():
                (counter.labels(*labels) if labels else counter).inc(amount)
            for sampler in self.samplers:
                sampler()
        except Exception:  # a metric must never take the worker down: count it, as Kong's metric errors are
            log.exception("metrics: flush failed")
            METRIC_ERRORS.inc()

    async def flush_forever(self) -> None:
        try:
            while True:
                await trio.sleep(FLUSH_S)
                self.flush()
        finally:
            self.flush()


def add_observations(child: Any, row: HistogramRow) -> None:
    """Add a row of bucket counts and a sum to a prometheus_client histogram child at once (observe() is one at a
    time). Its buckets are stored per bucket, not cumulated, in both value classes (prometheus_client 0.20+)."""
    buckets = child._buckets
    for i, n in enumerate(row[:-1]):
        if n:
            buckets[i].inc(n)
    child._sum.inc(row[-1])


# The process-wide recorder: workers record into it, the keeper and the root count their rare events in it too.
RECORDER = Recorder()


def prepare_multiprocess_dir(run_dir: str) -> str:
    """An empty run/metrics, exported to every child the root starts from now on, and used by the root itself for
    the metric values it makes from now on (prometheus_client chose its value class when it was imported, before
    the root knew its run directory; children made later look the class up again)."""
    path = os.path.join(run_dir, "metrics")
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path, exist_ok=True)
    os.environ[MULTIPROC_ENV] = path
    prometheus_values.ValueClass = prometheus_values.get_value_class()
    return path


def sweep_dead_processes(path: str) -> list[int]:
    """Remove the live-gauge files of processes that have exited (their counters stay); returns their pids."""
    dead = []
    try:
        names = os.listdir(path)
    except OSError:
        return dead
    for name in names:
        if not (name.startswith("gauge_live") and name.endswith(".db")):
            continue
        try:
            pid = int(name.rsplit("_", 1)[1][:-3])
        except ValueError:
            continue
        if pid != os.getpid() and not _alive(pid):
            multiprocess.mark_process_dead(pid, path)
            dead.append(pid)
    return dead


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by its supervisor) is dead for metrics
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def multiprocess_registry(path: str | None = None) -> CollectorRegistry:
    """A registry that reads every process's metric files (for /metrics in the root)."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)
    return registry


def wall_offset() -> float:
    """time.time() - trio.current_time(): turns Trio clock readings into Unix time."""
    return time.time() - trio.current_time()
