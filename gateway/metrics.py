"""Prometheus metrics for the whole gateway, summed across processes (prometheus_client's multiprocess mode).

The root points PROMETHEUS_MULTIPROC_DIR at run/metrics before it starts any child, so every process's metrics land
in files there and the status server's /metrics reads them all (gateway.status.collect). The counters and histograms
of processes that have exited keep counting in the sums, so totals survive worker crashes and reloads: as they exit,
the root folds their files into one archive per type (`retire_dead_processes`; a scrape folds too), so the files
follow the live processes whether or not anything scrapes; gauges are of live processes only (a dead process's live
gauge files are removed then). The state keeper's
target health and breaker states, whose label sets go with the config, are not in those files, which cannot forget
one: the keeper publishes them whole (`StateGauge`). The files' pages are allocated when a file is made or grown
(`AllocatedDict`): on a full disk a process leaves out of them what they have no room for and serves on, where
prometheus_client's sparse files would kill it (SIGBUS) at its next metric update.

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

import contextlib
import errno
import json
import logging
import mmap
import os
import re
import shutil
import struct
import threading
import time
from bisect import bisect_left
from collections import Counter as Counter_
from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from functools import partial
from operator import attrgetter, sub
from typing import Any

import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client import values as prometheus_values
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict

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

# --- the files: every page allocated before it is written -----------------------------------------------------------

INITIAL_FILE_SIZE = 1 << 16  # prometheus_client's first size of a file (mmap_dict._INITIAL_MMAP_SIZE)
_USED = struct.Struct("i")  # a file's header: how many of its bytes are used
_VALUE = struct.Struct("dd")  # an entry's value and timestamp


class AllocatedDict(MmapedDict):
    """prometheus_client's MmapedDict (one process's values of one type, an mmap'ed file) with the file's pages
    allocated on its filesystem (posix_fallocate) when it is created and each time it grows, before any is written.
    prometheus_client's leaves the file sparse (truncate): on a full filesystem the first write to a page never
    allocated is a SIGBUS, which kills the process; here a full disk is an OSError at creation or growth (and a file
    it created but could not allocate is removed)."""

    def __init__(self, filename: str) -> None:
        self._fname = filename
        self._positions: dict[str, int] = {}
        self._f = open(filename, "a+b")  # noqa: SIM115 - closed by close()
        size = 0
        try:
            size = os.fstat(self._f.fileno()).st_size  # not 0: a file an exited process of this pid left
            self._capacity = size or INITIAL_FILE_SIZE
            os.posix_fallocate(self._f.fileno(), 0, self._capacity)  # (also the holes of a file left sparse)
            self._m = mmap.mmap(self._f.fileno(), self._capacity)
        except BaseException:
            self._f.close()
            if not size:
                with contextlib.suppress(OSError):
                    os.remove(filename)
            raise
        self._used = _USED.unpack_from(self._m, 0)[0]
        if self._used == 0:
            self._used = 8
            self._m[0:4] = _USED.pack(self._used)
        else:
            for key, _, _, pos in self._read_all_values():
                self._positions[key] = pos

    def _init_value(self, key: str) -> None:
        """Append `key`'s entry (zeros), first growing the file, allocated, if it has no room (as MmapedDict's, which
        grows it sparse)."""
        encoded = key.encode("utf-8")
        padded = encoded + b" " * (8 - (len(encoded) + 4) % 8)
        entry = struct.pack(f"i{len(padded)}sdd", len(encoded), padded, 0.0, 0.0)
        end = self._used + len(entry)
        if end > self._capacity:
            capacity = self._capacity
            while end > capacity:
                capacity *= 2
            os.posix_fallocate(self._f.fileno(), 0, capacity)  # OSError (ENOSPC) where the filesystem is full
            old, self._m = self._m, mmap.mmap(self._f.fileno(), capacity)
            old.close()
            self._capacity = capacity
        self._m[self._used:end] = entry
        self._used = end
        self._m[0:4] = _USED.pack(end)
        self._positions[key] = end - 16


class ValuesDict(AllocatedDict):
    """The AllocatedDict prometheus_client's multiprocess values write to (`prometheus_values.MmapedDict`, set below):
    a label set its file has no room for (the filesystem full when the file is created, or grown for it) stays out of
    the file for the life of the process, its value kept only by the value object, in memory, so not in /metrics;
    the label sets already in the file are still written to it. Each label set left out counts in
    kong_nginx_metric_errors_total, the first failure of a file is logged: Kong logs and counts a metric update its
    shared dict has no room for (kong/plugins/prometheus/prometheus.lua:462-464, log_error_kv). A write to a label
    set in the file costs what MmapedDict's does."""

    def __init__(self, filename: str) -> None:
        self._left_out: set[str] = set()
        try:
            super().__init__(filename)
        except OSError as error:  # no file: every label set stays out
            self._f = self._m = None
            self._positions, self._used, self._capacity = {}, 0, 0
            _log_no_room(filename, error)

    def read_value(self, key: str) -> tuple[float, float]:
        pos = self._positions.get(key)
        if pos is None and (pos := self._place(key)) is None:
            return 0.0, 0.0
        return _VALUE.unpack_from(self._m, pos)

    def write_value(self, key: str, value: float, timestamp: float) -> None:
        pos = self._positions.get(key)
        if pos is None and (pos := self._place(key)) is None:
            return
        self._m[pos:pos + 16] = _VALUE.pack(value, timestamp)  # (one slice: a reader never sees a half-written value)

    def _place(self, key: str) -> int | None:
        """The position of a new label set's entry, or None if the file has no room for it (then never again)."""
        if key in self._left_out:
            return None
        if self._f is not None:
            try:
                self._init_value(key)
                return self._positions[key]
            except OSError as error:
                if not self._left_out:
                    _log_no_room(self._fname, error)
        self._left_out.add(key)
        # counted at the next flush (Recorder.flush): the value's lock, held here, is not reentrant
        RECORDER.count(METRIC_ERRORS, ())
        return None


_LEFT_OUT = ("the metrics of this process that are not in that file yet stay out of /metrics until it restarts "
             "(each counted in kong_nginx_metric_errors_total)")


def _log_no_room(filename: str, error: OSError, consequence: str = _LEFT_OUT) -> None:
    """One error line: which metrics file could not be written, where, why ("disk full"), and what follows."""
    reason = "disk full" if error.errno in (errno.ENOSPC, errno.EDQUOT) else error.strerror
    log.error("metrics: cannot write %s in %s (%s): %s; free space on that filesystem", os.path.basename(filename),
              os.path.dirname(filename), reason, consequence)


# Every multiprocess value of prometheus_client makes its files with the name MmapedDict of its module, looked up
# when it opens one: ours, set before this module declares its families.
prometheus_values.MmapedDict = ValuesDict  # type: ignore[misc, assignment]  # (called with a file name only)

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
METRIC_ERRORS = Counter("kong_nginx_metric_errors_total", "Number of nginx-lua-prometheus errors")
# Kong's nginx timers, summed over the workers: running = Trio tasks runnable at the sample, pending = the worker's
# other living tasks (sampled at each flush: gateway.telemetry.service.WorkerTelemetry.sample)
KONG_NGINX_TIMERS = Gauge("kong_nginx_timers", "Number of nginx timers", ["state"], multiprocess_mode="livesum")

# --- the gateway's own ----------------------------------------------------------------------------------------------

REQUESTS = Counter("gateway_requests_total", "Requests answered by the gateway (routed or not), by route and status",
                   ["route", "code"])
# nginx's stub status `requests` (ngx_stat_requests), which kong_nginx_requests_total and /status total_requests are:
# counted as a request's first bytes come (ngx_http_create_request), so one in progress is in it already
REQUESTS_STARTED = Counter("gateway_requests_started_total", "Client requests begun (their first bytes came), "
                           "answered or not yet")
TARGET_REQUESTS = Counter("gateway_upstream_requests_total", "Tries of upstream targets, by outcome: the response "
                          "status, or connect_failure / timeout / error", ["upstream", "target", "code"])
TARGET_LATENCY = Histogram("gateway_upstream_latency_ms", "Time from sending a request to a target to its response "
                           "head, by target", ["upstream", "target"], buckets=TARGET_LATENCY_BUCKETS)
TARGET_ACTIVE = Gauge("gateway_upstream_active_requests", "Requests in progress on a target (sum over workers, "
                      "sampled every second)", ["upstream", "target"], multiprocess_mode="livesum")
CONNECTIONS = Gauge("gateway_connections", "Client connections by state: active, reading (a request head), "
                    "writing (a request in progress), waiting (no byte yet, or idle keep-alive)", ["state"],
                    multiprocess_mode="livesum")
ACCEPTED = Counter("gateway_connections_accepted_total", "Client connections accepted")
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
SHED = Counter("gateway_connections_shed_total",
               "Connections a worker answered with a fast 503 and closed at once: at its max_connections, or out of "
               "file descriptors (nofile)", ["reason"])
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
# The tool label comes from what clients send: so that they cannot mint a series per request, a process labels the
# first MAX_TOOL_LABELS names it sees that have the shape the MCP spec gives tool names (1 to 128 of A-Z a-z 0-9
# _ - .); any other name counts as OTHER_TOOL.
MAX_TOOL_LABELS = 256
OTHER_TOOL = "(other)"  # not a tool name's shape: no tool can be mistaken for it
_TOOL_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
_tool_labels: set[str] = set()


def tool_label(name: str) -> str:
    """The `tool` label of a tools/call for `name` (see MAX_TOOL_LABELS)."""
    if name in _tool_labels:
        return name
    if len(_tool_labels) < MAX_TOOL_LABELS and _TOOL_NAME.fullmatch(name):
        _tool_labels.add(name)
        return name
    return OTHER_TOOL


# --- the state keeper's current state -------------------------------------------------------------------------------

STATE_SUFFIX = ".state"  # not .db: prometheus_client's reader of the files passes them by
# family -> (directory, pid, rows) last written (rows None: the last publish failed)
_published: dict[str, tuple[str, int, list[list[Any]] | None]] = {}


class StateGauge(Gauge):
    """A gauge of what one process holds now (the state keeper's target health and breaker states), whose label
    sets come and go with the config. Its values live in memory, where remove() works, not in the multiprocess
    files, which keep every label set a process ever wrote until it exits (prometheus_client cannot remove one
    there). Its owner `publish`es the family as it is to a file of its own, which /metrics reads whole
    (`read_states`): a label set removed is gone from the next scrape, as Kong's exporter resets
    upstream_target_health at each."""

    def _metric_init(self) -> None:
        self._value = prometheus_values.MutexValue(self._type, self._name, self._name, self._labelnames,
                                                   self._labelvalues, self._documentation)

    def remove(self, *labelvalues: Any) -> None:
        """Forget a label set (in memory: no multiprocess warning)."""
        with self._lock:
            self._metrics.pop(tuple(str(value) for value in labelvalues), None)

    def publish(self) -> None:
        """Write the family's label sets and values to `<name>_<pid>.state` in the multiprocess directory when they
        changed since this process last wrote it (outside multiprocess mode: nothing). Written aside and renamed
        over, so a scrape reads the old rows or the new, never a part."""
        path = os.environ.get(MULTIPROC_ENV)
        if not path:
            return
        (family,) = self.collect()
        rows = sorted([*sample.labels.values(), sample.value] for sample in family.samples)
        pid = os.getpid()
        if _published.get(self._name) == (path, pid, rows):
            return
        target = os.path.join(path, f"{self._name}_{pid}{STATE_SUFFIX}")
        try:
            with open(target + ".new", "w", encoding="utf-8") as f:
                json.dump({"help": self._documentation, "labels": list(self._labelnames), "rows": rows}, f)
            os.replace(target + ".new", target)
        except OSError as error:  # (a full disk) the last rows written stay; tried again at the next publish
            with contextlib.suppress(OSError):
                os.remove(target + ".new")
            RECORDER.count(METRIC_ERRORS, ())
            if _published.get(self._name) != (path, pid, None):  # logged once until a publish succeeds
                _log_no_room(target, error, f"/metrics shows {self._name} as last written until a publish can")
                _published[self._name] = (path, pid, None)
            return
        _published[self._name] = (path, pid, rows)


def read_states(path: str) -> list[Metric]:
    """The families StateGauges published, each as its last publish left it (a file of an exited process is removed
    by `sweep_dead_processes`); a label set in two files (a keeper and its successor, for a moment) at its max."""
    try:
        names = sorted(os.listdir(path))
    except OSError:
        return []
    docs: dict[str, tuple[str, list[str]]] = {}  # family -> (help, label names)
    values: defaultdict[str, dict[tuple[str, ...], float]] = defaultdict(dict)
    for name in names:
        if not name.endswith(STATE_SUFFIX):
            continue
        try:
            with open(os.path.join(path, name), encoding="utf-8") as f:
                doc = json.load(f)
        except (OSError, ValueError):  # removed meanwhile (its process exited)
            continue
        family = name[:-len(STATE_SUFFIX)].rpartition("_")[0]
        docs.setdefault(family, (doc["help"], doc["labels"]))
        seen = values[family]
        for *labels, value in doc["rows"]:
            key = tuple(labels)
            seen[key] = max(value, seen.get(key, value))
    out = []
    for family, (documentation, labelnames) in docs.items():
        metric = Metric(family, documentation, "gauge")
        for labels, value in values[family].items():
            metric.add_sample(family, dict(zip(labelnames, labels, strict=True)), value)
        out.append(metric)
    return out


KONG_TARGET_HEALTH = StateGauge("kong_upstream_target_health", "Health status of targets of upstream. States = "
                                "healthchecks_off|healthy|unhealthy|dns_error, value is 1 when state is populated.",
                                ["upstream", "target", "address", "state", "subsystem"])
BREAKER_STATE = StateGauge("gateway_circuit_breaker_state", "Circuit breaker state per target: 1 for the current "
                           "state (closed, open, half_open)", ["target", "state"])

HistogramRow = list  # per label set: counts per bucket (the last is +Inf), then the sum


def bucket_row(bounds: Sequence[float]) -> HistogramRow:
    return [0] * (len(bounds) + 1) + [0.0]


def bulk_row(upper_bounds: Sequence[float], values: list[float]) -> HistogramRow:
    """A histogram row of many observations at once: bucketed and summed by C loops (bisect, Counter, sum), which
    is why the request path only appends raw values to a list."""
    row: HistogramRow = [0] * len(upper_bounds) + [0.0]
    for index, n in Counter_(map(partial(bisect_left, upper_bounds), values)).items():
        row[index] = n
    row[-1] = sum(values)
    return row


class Observed:
    """Raw observations of one labelled thing (a route, a target) since the last flush. The request path appends to
    its lists (the cheapest thing Python does) and, the first time after a flush, puts it on the recorder's dirty
    list; the flush counts and buckets the lists in bulk."""

    __slots__ = ("dirty",)

    def __init__(self) -> None:
        self.dirty = False

    def flush(self) -> None:
        raise NotImplementedError


class RouteObservations(Observed):
    """One route: statuses (gateway_requests_total) and what its prometheus plugin observes (Kong's families).

    The request path appends objects that already exist (clock readings, statuses, the request): no arithmetic,
    no allocation; the flush subtracts and sums them in bulk."""

    __slots__ = ("name", "service", "route", "labels", "statuses", "from_service", "from_kong", "by_consumer",
                 "starts", "ends", "sents", "heads", "kong_ends", "requests", "bodies", "sent", "bytes_by_consumer")

    def __init__(self, name: str, service: str, route: str) -> None:
        super().__init__()
        self.name = name  # gateway_requests_total's route label
        self.service = service  # Kong's labels: service name (or host), route name (or id)
        self.route = route
        self.labels = (service, route, WORKSPACE)
        self.statuses: list[int] = []
        self.from_service: list[int] = []  # kong_http_requests_total: statuses the upstream answered ...
        self.from_kong: list[int] = []  # ... and the gateway's own
        self.by_consumer: list[tuple[int, str, str]] = []  # (status, source, consumer) with per_consumer
        self.starts: list[float] = []  # request latency: ends - starts; kong latency: kong_ends - starts
        self.ends: list[float] = []
        self.kong_ends: list[float] = []  # when the request went upstream (or the gateway answered)
        self.sents: list[float] = []  # upstream latency: heads - sents
        self.heads: list[float] = []
        self.requests: list[Any] = []  # bandwidth: the Requests (their sizes, `_size`), bodies' sizes, bytes sent
        self.bodies: list[int] = []
        self.sent: list[int] = []
        self.bytes_by_consumer: defaultdict[tuple[str, str], int] = defaultdict(int)  # (direction, consumer)

    def flush(self) -> None:
        statuses, self.statuses = self.statuses, []
        for status, n in Counter_(statuses).items():
            REQUESTS.labels(self.name, str(status)).inc(n)
        service, route = self.service, self.route
        for source, values in (("service", self.from_service), ("kong", self.from_kong)):
            for status, n in Counter_(values).items():
                KONG_REQUESTS.labels(service, route, str(status), source, WORKSPACE, "").inc(n)
        self.from_service, self.from_kong = [], []
        if self.by_consumer:
            by_consumer, self.by_consumer = self.by_consumer, []
            for (status, source, who), n in Counter_(by_consumer).items():
                KONG_REQUESTS.labels(service, route, str(status), source, WORKSPACE, who).inc(n)
        if self.starts:
            starts, ends, kong_ends, self.starts, self.ends, self.kong_ends = self.starts, self.ends, \
                self.kong_ends, [], [], []
            _observe_ms(KONG_REQUEST_LATENCY.labels(*self.labels), KONG_REQUEST_LATENCY, starts, ends)
            _observe_ms(KONG_LATENCY.labels(*self.labels), KONG_LATENCY, starts, kong_ends)
        if self.sents:
            sents, heads, self.sents, self.heads = self.sents, self.heads, [], []
            _observe_ms(KONG_UPSTREAM_LATENCY.labels(*self.labels), KONG_UPSTREAM_LATENCY, sents, heads)
        if self.requests:
            requests, bodies, sent = self.requests, self.bodies, self.sent
            self.requests, self.bodies, self.sent = [], [], []
            ingress = sum(map(_size, requests)) + sum(bodies)
            KONG_BANDWIDTH.labels(service, route, "ingress", WORKSPACE, "").inc(ingress)
            KONG_BANDWIDTH.labels(service, route, "egress", WORKSPACE, "").inc(sum(sent))
        if self.bytes_by_consumer:
            by_consumer_bytes, self.bytes_by_consumer = self.bytes_by_consumer, defaultdict(int)
            for (direction, who), n in by_consumer_bytes.items():
                KONG_BANDWIDTH.labels(service, route, direction, WORKSPACE, who).inc(n)


# A Request's bytes as the codec read them but its body's data (gateway.http.codec.Request.size: the head as the
# client sent it, whatever plugins changed since, and a chunked body's framing): with the body's data, nginx's
# $request_length, which Kong's ingress bandwidth counts (kong/pdk/log.lua request.size). A routed request's head
# was always read by a codec (gateway.telemetry.entry.request_size sizes those the connection loop refused).
_size = attrgetter("size")


def _observe_ms(child: Any, family: Histogram, starts: list[float], ends: list[float]) -> None:
    """Observe ends[i] - starts[i] (seconds on the Trio clock) in ms, all at once: the bounds are scaled to
    seconds rather than every value to ms."""
    row = bulk_row([bound / 1000.0 for bound in family._upper_bounds], list(map(sub, ends, starts)))
    row[-1] *= 1000.0
    add_observations(child, row)


_SOURCES = ("kong", "service")


class TargetObservations(Observed):
    """One upstream target: the outcome of each try, and the time to each response head."""

    __slots__ = ("upstream", "target", "codes", "sents", "heads")

    def __init__(self, upstream: str, target: str) -> None:
        super().__init__()
        self.upstream = upstream
        self.target = target
        self.codes: list[int | str] = []  # the status, or connect_failure / timeout / error
        self.sents: list[float] = []  # latency: heads - sents (Trio clock)
        self.heads: list[float] = []

    def flush(self) -> None:
        codes, self.codes = self.codes, []
        for code, n in Counter_(codes).items():
            TARGET_REQUESTS.labels(self.upstream, self.target, str(code)).inc(n)
        if self.sents:
            sents, heads, self.sents, self.heads = self.sents, self.heads, [], []
            _observe_ms(TARGET_LATENCY.labels(self.upstream, self.target), TARGET_LATENCY, sents, heads)


class Recorder:
    """One process's counts since the last flush. Everything here is a plain dict, list or int: no locks, no files,
    no bucketing on the request path."""

    def __init__(self) -> None:
        self.dirty: list[Observed] = []  # routes and targets observed since the last flush
        self.unrouted: list[int] = []  # statuses of requests no route matched
        # (family, label values) -> raw observations (rarer histograms: lease round trips)
        self.histograms: dict[tuple[Histogram, tuple[str, ...]], list[float]] = {}
        # (counter, label values) -> amount: everything else that is counted
        self.counts: defaultdict[tuple[Counter, tuple[str, ...]], float] = defaultdict(float)
        # called at each flush to set gauges (connections, active requests): no work on the request path
        self.samplers: list[Callable[[], None]] = []

    def request(self, route: str, status: int) -> None:
        """A request counted by route name (tests, and callers without a route's observations)."""
        self.count(REQUESTS, (route, str(status)))

    def count(self, counter: Counter, labels: tuple[str, ...], amount: float = 1) -> None:
        self.counts[(counter, labels)] += amount

    def observe(self, family: Histogram, labels: tuple[str, ...], value: float) -> None:
        key = (family, labels)
        values = self.histograms.get(key)
        if values is None:
            values = self.histograms[key] = []
        values.append(value)

    def flush(self) -> None:
        """Hand everything counted since the last flush to prometheus_client."""
        dirty, self.dirty = self.dirty, []
        unrouted, self.unrouted = self.unrouted, []
        histograms, self.histograms = self.histograms, {}
        counts, self.counts = self.counts, defaultdict(float)
        try:
            for obs in dirty:
                obs.dirty = False
                obs.flush()
            for status, n in Counter_(unrouted).items():
                REQUESTS.labels("-", str(status)).inc(n)
            for (family, labels), values in histograms.items():
                add_observations(family.labels(*labels) if labels else family, bulk_row(family._upper_bounds,
                                                                                        values))
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


# The files of exited processes of these types (additive: their values sum across processes) are folded into one
# archive per type, "<type>_archive.db", which scrapes read as one more process's file: the totals are kept and the
# number of files stays bounded however many workers come and go. Gauges of other modes than "sum" are not (the
# live ones are removed, and the gateway has no others).
ARCHIVED = frozenset({"counter", "histogram", "summary", "gauge_sum"})
ARCHIVE = "archive"
# Folding and reading the files exclude each other; both happen in the root only (its status server, and its tidying
# as processes exit: gateway.node.root), so a lock of its own suffices.
FILES_LOCK = threading.Lock()


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


def release_metric_files() -> None:
    """For a fork template (the zygote): close the metric files its imports opened and forget its pid, so each forked
    child opens files of its own on its first metric update. prometheus_client would do this itself on seeing a new
    pid, but by closing the inherited files, which a child started with only its own descriptors no longer has."""
    check = getattr(prometheus_values.ValueClass, "_MmapedValue__check_for_pid_change", None)
    if check is None or check.__closure__ is None:  # not in multiprocess mode: nothing is open
        return
    cells = dict(zip(check.__code__.co_freevars, check.__closure__, strict=True))
    files, pid = cells["files"].cell_contents, cells["pid"].cell_contents
    for f in files.values():
        f.close()
    files.clear()
    pid["value"] = None  # never a pid: the next update anywhere reopens


def sweep_dead_processes(path: str) -> list[int]:
    """Remove the live-gauge and published-state files of processes that have exited (their counters stay);
    returns their pids."""
    dead: list[int] = []
    try:
        names = os.listdir(path)
    except OSError:
        return dead
    for name in names:
        state = name.endswith(STATE_SUFFIX)
        if not (state or (name.startswith("gauge_live") and name.endswith(".db"))):
            continue
        pid_text = name.rpartition(".")[0].rpartition("_")[2]
        if not pid_text.isdigit():
            continue
        pid = int(pid_text)
        if pid == os.getpid() or _alive(pid):
            continue
        with contextlib.suppress(FileNotFoundError):  # (removed meanwhile by another sweep)
            if state:
                os.remove(os.path.join(path, name))
            else:
                multiprocess.mark_process_dead(pid, path)
        if pid not in dead:
            dead.append(pid)
    return dead


def fold_dead_processes(path: str) -> list[int]:
    """Fold the files of ARCHIVED types of processes that have exited into the archives (`fold_files`), holding
    FILES_LOCK (it waits for a scrape reading the files: call it in a thread); returns their pids. Only the root
    may fold (the lock is its own)."""
    with FILES_LOCK:
        return _fold_dead(path)


def retire_dead_processes(path: str) -> list[int]:
    """`sweep_dead_processes` and `fold_dead_processes` at once, holding FILES_LOCK (no scrape reads a file the
    sweep removes: call it in a thread): what the root runs as processes exit, so run/metrics follows the live
    processes whether or not anything scrapes. Returns the pids whose files were removed or folded."""
    with FILES_LOCK:
        swept = sweep_dead_processes(path)
        return sorted({*swept, *_fold_dead(path)})


def _fold_dead(path: str) -> list[int]:
    """fold_dead_processes, FILES_LOCK held."""
    try:
        names = os.listdir(path)
    except OSError:
        return []
    files: defaultdict[int, list[str]] = defaultdict(list)
    for name in names:
        kind, _, pid = name[:-3].rpartition("_")
        if name.endswith(".db") and kind in ARCHIVED and pid.isdigit():
            files[int(pid)].append(name)
    dead = [pid for pid in files if pid != os.getpid() and not _alive(pid)]
    if dead:
        try:
            fold_files(path, [name for pid in dead for name in files[pid]])
        except OSError as error:  # the files stay as they were, counted as before, folded at a later try
            _log_no_room(os.path.join(path, f"*_{ARCHIVE}.db"), error, "the files of exited processes stay, "
                         "counted as they are, until a later fold can take them")
            return []
        except Exception:
            log.exception("metrics: folding the files of exited processes failed")
            return []
    return dead


def fold_files(path: str, names: list[str]) -> None:
    """Add the values of `names` (files of exited processes) of each ARCHIVED type to that type's archive and delete
    them; the others are left. The new archives are written aside and renamed over the old, then the files are
    deleted; the caller holds FILES_LOCK, so a scrape sees the files or the archives that hold them, never both."""
    groups: defaultdict[str, list[str]] = defaultdict(list)
    for name in names:
        kind = name[:-3].rpartition("_")[0]
        if kind in ARCHIVED:
            groups[kind].append(os.path.join(path, name))
    written: list[tuple[str, str]] = []
    try:
        for kind, files in groups.items():
            archive = os.path.join(path, f"{kind}_{ARCHIVE}.db")
            totals: dict[str, float] = {}
            for source in [archive, *files]:
                try:
                    if os.path.getsize(source) < 8:  # created, never sized: nothing in it
                        continue
                except FileNotFoundError:  # no archive yet
                    continue
                for key, value, _, _ in MmapedDict.read_all_values_from_file(source):
                    totals[key] = totals.get(key, 0.0) + value
            aside = archive + ".new"  # not *.db: no scrape reads it
            with contextlib.suppress(FileNotFoundError):
                os.remove(aside)  # (left by a fold that failed: MmapedDict would add to it)
            values = AllocatedDict(aside)  # a full disk: OSError, not SIGBUS
            written.append((aside, archive))
            try:
                for key, total in totals.items():
                    values.write_value(key, total, 0.0)
            finally:
                values.close()
    except BaseException:
        for aside, _ in written:
            with contextlib.suppress(FileNotFoundError):
                os.remove(aside)
        raise
    for aside, archive in written:
        os.replace(aside, archive)
    for files in groups.values():
        for source in files:
            os.remove(source)


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


class FilesCollector(multiprocess.MultiProcessCollector):
    """prometheus_client's collector over every process's metric files, minus a file another process is creating at
    that instant: it is created empty and sized a moment later, and reading it then raises struct.error, which
    would fail a scrape made while a worker or the keeper restarts."""

    def __init__(self, registry: CollectorRegistry | None, path: str) -> None:
        super().__init__(registry, path=path)
        self.files_path = path

    def collect(self):  # noqa: ANN201 - prometheus_client's Collector interface
        with FILES_LOCK:  # no fold meanwhile: it would count a dead process's values twice, or not at all
            files = []
            for name in os.listdir(self.files_path):
                if name.endswith(".db"):
                    path = os.path.join(self.files_path, name)
                    try:
                        if os.path.getsize(path) >= 8:  # the header: how much of the file is used
                            files.append(path)
                    except OSError:  # removed meanwhile (a dead process's live gauges)
                        pass
            return self.merge(files, accumulate=True)


def read_families(path: str, names: Collection[str]) -> list[Metric]:
    """The families `names` of this module (counters, and gauges summed over processes) summed over every process's
    files as /metrics sums them, reading only the files of their types and decoding only their entries: so what
    Kong's /status needs (a few node counters) does not cost what every route's histograms in the other files do."""
    declared = {m._name: m for m in globals().values() if isinstance(m, MetricWrapperBase) and m._name in names}
    kinds = {_file_kind(m) for m in declared.values()}
    prefixes = tuple(json.dumps([name])[:-1] + ", " for name in declared)  # each entry's key: '["name", ...'
    sums: dict[tuple[str, str, tuple[tuple[str, str], ...]], float] = {}
    with FILES_LOCK:  # no fold meanwhile (as FilesCollector.collect)
        for file_name in os.listdir(path):
            if not (file_name.endswith(".db") and file_name[:-3].rpartition("_")[0] in kinds):
                continue
            file_path = os.path.join(path, file_name)
            try:
                if os.path.getsize(file_path) < 8:  # created, not yet sized
                    continue
                entries = list(MmapedDict.read_all_values_from_file(file_path))
            except OSError:  # removed meanwhile (a dead process's live gauges)
                continue
            for key, value, _, _ in entries:
                if key.startswith(prefixes):
                    family, sample, labels, _ = json.loads(key)
                    index = (family, sample, tuple(labels.items()))
                    sums[index] = sums.get(index, 0.0) + value
    out = {name: Metric(name, m._documentation, str(m._type)) for name, m in declared.items()}
    for (family, sample, labels), value in sums.items():
        out[family].add_sample(sample, dict(labels), value)
    return list(out.values())


def _file_kind(metric: MetricWrapperBase) -> str:
    """The type part of the names of the files a family's values are in ("counter", "gauge_livesum")."""
    if metric._type == "counter":
        return "counter"
    mode = getattr(metric, "_multiprocess_mode", "")
    if metric._type == "gauge" and mode in ("livesum", "sum"):
        return f"gauge_{mode}"
    raise ValueError(f"read_families: {metric._name} is a {metric._type} ({mode or 'no mode'}), whose values do not "
                     "add up across processes: read it with FilesCollector")


def declared_labels() -> dict[str, tuple[str, ...]]:
    """Each family of this module by name: its label names in the order it declares them, which is Kong's for
    Kong's families (the merge of the files sorts them; /metrics writes them in this order)."""
    return {m._name: m._labelnames for m in globals().values() if isinstance(m, MetricWrapperBase)}


def multiprocess_registry(path: str) -> CollectorRegistry:
    """A registry that reads every process's metric files (for /metrics in the root)."""
    registry = CollectorRegistry()
    FilesCollector(registry, path)
    return registry


def wall_offset() -> float:
    """time.time() - trio.current_time(): turns Trio clock readings into Unix time."""
    return time.time() - trio.current_time()
