"""What /metrics serves in the root: every process's metric files, and Kong's node-level families derived from
them (connections, requests, node info, workers' memory), as Kong's prometheus plugin exports them when it is
configured; and the text it is written in (`encode_text`: Kong's exporter's spelling).

Before each scrape (`prepare`, in the server's Trio thread): the root's own counts are flushed and the gauge files
of processes that have exited are removed, so a dead worker's connections or a dead keeper's breaker states do not
linger; then, reading the files (in a thread), their counters and histograms are folded into the archives
(gateway.metrics.fold_dead_processes), where they keep counting in the sums. (The root also does both as processes
exit, scrape or not: gateway.node.root.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from gateway.metrics import (
    RECORDER,
    FilesCollector,
    declared_labels,
    fold_dead_processes,
    read_families,
    read_states,
    sweep_dead_processes,
)
from gateway.status.kong import rss_bytes
from gateway.telemetry.node_id import node_id

CONNECTION_STATES = ("active", "reading", "writing", "waiting")
TIMER_STATES = ("running", "pending")
# the workers' families /metrics writes as one of Kong's node families (every state, 0 when no worker has one)
NODE_FAMILIES = frozenset({"kong_nginx_timers"})
# Kong's metrics kept in its shared dict, which /metrics shows only while a prometheus plugin is enabled (its
# metric_data(local_only)), its error counter among them; its node families and target health are local metrics,
# always shown
PLUGIN_FAMILIES = frozenset({"kong_http_requests", "kong_kong_latency_ms", "kong_upstream_latency_ms",
                             "kong_request_latency_ms", "kong_bandwidth_bytes", "kong_nginx_metric_errors"})
# Kong's counters that prometheus_client holds as gauges to keep Kong's name, which has no _total
# (gateway.metrics.KONG_BANDWIDTH): the text says counter, as Kong's does
KONG_COUNTERS = frozenset({"kong_bandwidth_bytes"})
# the families Kong's /status "server" numbers come from (server_statistics); requests are nginx's, counted as they
# begin (gateway_requests_total counts them as they end)
SERVER_FAMILIES = ("gateway_requests_started", "gateway_connections_accepted", "gateway_connections")
_TEXT_TYPES = {"info": "gauge", "stateset": "gauge", "gaugehistogram": "histogram", "unknown": "untyped"}
_OPENMETRICS_ONLY = ("_created", "_gsum", "_gcount")  # written as gauges of their own after the family, as
# prometheus_client's text encoder does


class ConnectionCounts:
    """The status server's own connections and requests, as nginx's stub_status counts every server block's (its
    status server's too): accepted and requests only grow; active, reading and writing are those now open (each
    connection in one of reading, writing or neither: waiting). Changed in the Trio thread, read from any."""

    def __init__(self) -> None:
        self.accepted = 0
        self.requests = 0
        self.active = 0
        self.reading = 0
        self.writing = 0

    def values(self) -> dict[tuple[str, str], float]:
        """The counts keyed as `_sums` keys the metric files' families, to add to theirs."""
        return {("gateway_connections_accepted", "total"): self.accepted,
                ("gateway_requests_started", "total"): self.requests,
                ("gateway_connections", "active"): self.active, ("gateway_connections", "reading"): self.reading,
                ("gateway_connections", "writing"): self.writing,
                ("gateway_connections", "waiting"): max(0, self.active - self.reading - self.writing)}


class GatewayCollector:
    """A prometheus_client collector over a multiprocess directory; with `own` (the status server's ConnectionCounts),
    Kong's node counters count the status server's connections and requests too, as nginx's do."""

    def __init__(self, path: str, node: str = "", version: str = "",
                 kong_enabled: Callable[[], bool] = lambda: False) -> None:
        self.path = path
        self.node_id = node_id(node) if node else ""
        self.version = version
        self.kong_enabled = kong_enabled
        self.worker_pids: list[int] = []  # the workers serving, as the last prepare was told
        self.own: ConnectionCounts | None = None  # the status server's (GatewayRegistry.include)
        self._files = FilesCollector(None, path)

    def prepare(self, worker_pids: Sequence[int] | None = None) -> None:
        """Flush this process's counts, forget the live gauges of exited processes (cheap; Trio thread) and note the
        workers serving (None: as last told), for kong_memory_workers_lua_vms_bytes."""
        RECORDER.flush()
        sweep_dead_processes(self.path)
        if worker_pids is not None:
            self.worker_pids = sorted(worker_pids)

    def families(self) -> list[Metric]:
        """Every process's families as the files hold them (what the status page reads), and the state keeper's
        current target health and breaker states (gateway.metrics.StateGauge), once the files of exited processes
        are folded (a thread: this reads and writes files)."""
        fold_dead_processes(self.path)
        return [*self._files.collect(), *read_states(self.path)]

    def server_statistics(self) -> dict[str, int]:
        """Kong's /status "server" from SERVER_FAMILIES' files alone (a thread): its cost does not grow with the
        per-route histograms, as Kong's nginx counters cost the same whatever the number of routes. Exited processes'
        files are read as they are (the next scrape folds them)."""
        return server_statistics(read_families(self.path, SERVER_FAMILIES), self.own)

    def collect(self) -> Iterator[Metric]:
        families = self.families()
        hidden = NODE_FAMILIES if self.kong_enabled() else NODE_FAMILIES | PLUGIN_FAMILIES
        yield from (family for family in families if family.name not in hidden)
        yield from self._kong_node(families)

    def _kong_node(self, families: list[Metric]) -> Iterator[Metric]:
        values = _sums(families, self.own)
        node = self.node_id
        connections = GaugeMetricFamily("kong_nginx_connections_total", "Number of connections by subsystem",
                                        labels=["node_id", "subsystem", "state"])
        requests_total = values.get(("gateway_requests_started", "total"), 0.0)
        accepted = values.get(("gateway_connections_accepted", "total"), 0.0)
        for state, value in (("accepted", accepted), ("handled", accepted), ("total", requests_total)):
            connections.add_metric([node, "http", state], value)
        for state in CONNECTION_STATES:
            connections.add_metric([node, "http", state], values.get(("gateway_connections", state), 0.0))
        yield connections
        requests = GaugeMetricFamily("kong_nginx_requests_total", "Number of requests total",
                                     labels=["node_id", "subsystem"])
        requests.add_metric([node, "http"], requests_total)
        yield requests
        info = GaugeMetricFamily("kong_node_info", "Kong Node metadata information", labels=["node_id", "version"])
        info.add_metric([node, self.version], 1)
        yield info
        # Kong's is each worker's Lua VM heap; a Python worker has none apart from the process: its RSS, the
        # number the Status API's memory.workers_lua_vms gives (gateway.status.kong.memory_stats)
        memory = GaugeMetricFamily("kong_memory_workers_lua_vms_bytes", "Allocated bytes in worker Lua VM",
                                   labels=["node_id", "pid", "kong_subsystem"])
        for pid in self.worker_pids:
            rss = rss_bytes(pid)
            if rss is not None:  # gone since: Kong's memory stats leave a worker it cannot read out too
                memory.add_metric([node, str(pid), "http"], rss)
        yield memory
        timers = GaugeMetricFamily("kong_nginx_timers", "Number of nginx timers", labels=["state"])
        for state in TIMER_STATES:
            timers.add_metric([state], values.get(("kong_nginx_timers", state), 0.0))
        yield timers
        # DB-less, as Kong's "off" strategy: there is no datastore to lose, and Kong reports it reachable.
        yield GaugeMetricFamily("kong_datastore_reachable", "Datastore reachable from Kong, 0 is unreachable", 1)


def _sums(families: list[Metric], own: ConnectionCounts | None = None) -> dict[tuple[str, str], float]:
    """The totals the node families need: requests begun and accepted connections, connections by state (the status
    server's `own` added)."""
    out: dict[tuple[str, str], float] = {} if own is None else own.values()
    for family in families:
        if family.name in ("gateway_requests_started", "gateway_connections_accepted"):
            total = sum(s.value for s in family.samples if s.name.endswith("_total"))
            out[(family.name, "total")] = out.get((family.name, "total"), 0.0) + total
        elif family.name in ("gateway_connections", "kong_nginx_timers"):
            for sample in family.samples:
                key = (family.name, sample.labels.get("state", ""))
                out[key] = out.get(key, 0.0) + sample.value
    return out


def server_statistics(families: list[Metric], own: ConnectionCounts | None = None) -> dict[str, int]:
    """Kong's kong.nginx.get_statistics() summed over the processes' metric files and the status server's `own`
    counts (Kong's /status "server"): the connections by state, accepted (= handled: the gateway drops none it
    accepted), and the requests begun."""
    values = _sums(families, own)
    accepted = int(values.get(("gateway_connections_accepted", "total"), 0.0))
    stats = {f"connections_{state}": int(values.get(("gateway_connections", state), 0.0))
             for state in CONNECTION_STATES}
    stats.update(connections_accepted=accepted, connections_handled=accepted,
                 total_requests=int(values.get(("gateway_requests_started", "total"), 0.0)))
    return stats


def encode_text(registry: Collector) -> bytes:
    """Prometheus text format 0.0.4 of `registry`'s families, written as Kong's exporter writes them: labels in the
    order each family declares them (`le` last; prometheus_client's sorts them), the bounds and values of kong_*
    families as Lua prints numbers (le="25", not "25.0"; prometheus.lua fix_histogram_bucket_labels), and
    KONG_COUNTERS typed counter. Label values are escaped as the format says (backslash, double quote, newline)."""
    order = declared_labels()
    out: list[str] = []
    for family in registry.collect():
        name, kind = family.name, family.type
        if kind == "counter":
            name += "_total"
        elif kind == "info":
            name += "_info"
        kind = "counter" if name in KONG_COUNTERS else _TEXT_TYPES.get(kind, kind)
        kong = name.startswith("kong_")
        number = _lua_number if kong else floatToGoString
        declared = order.get(family.name, ())
        ordered_keys: dict[tuple[str, ...], tuple[str, ...]] = {}
        openmetrics_only = {family.name + suffix: suffix for suffix in _OPENMETRICS_ONLY}
        extra: dict[str, list[str]] = {}
        out.append(f"# HELP {name} {_escape_help(family.documentation)}\n# TYPE {name} {kind}\n")
        for sample in family.samples:
            labels = sample.labels
            text = ""
            if labels:
                keys = tuple(labels)
                ordered = ordered_keys.get(keys)
                if ordered is None:
                    ordered = ordered_keys[keys] = _in_order(keys, declared)
                if kong and "le" in labels:
                    labels = {**labels, "le": _lua_bound(labels["le"])}
                text = "{" + ",".join(f'{key}="{_escape(labels[key])}"' for key in ordered) + "}"
            line = f"{sample.name}{text} {number(sample.value)}"
            if sample.timestamp is not None:
                line += f" {int(float(sample.timestamp) * 1000):d}"
            suffix = openmetrics_only.get(sample.name)
            if suffix is None:
                out.append(line + "\n")
            else:
                extra.setdefault(suffix, []).append(line + "\n")
        for suffix, lines in sorted(extra.items()):
            out.append(f"# HELP {family.name}{suffix} {_escape_help(family.documentation)}\n"
                       f"# TYPE {family.name}{suffix} gauge\n")
            out.extend(lines)
    return "".join(out).encode()


def _in_order(keys: tuple[str, ...], declared: tuple[str, ...]) -> tuple[str, ...]:
    """A sample's label names in its family's declared order; any other (le) after them as they come."""
    return tuple(key for key in declared if key in keys) + tuple(key for key in keys if key not in declared)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _lua_number(value: float) -> str:
    """A number as Kong's exporter writes it (Lua's tostring): integers without ".0" (exactly, where Lua's %.14g
    would round), others in Python's shortest form; +Inf, -Inf, NaN as the format spells them."""
    if math.isfinite(value) and value == int(value) and abs(value) < 2 ** 63:
        return str(int(value))
    return floatToGoString(value)


def _lua_bound(le: str) -> str:
    """A bucket's upper bound as Kong writes it: "25", "0.5", "+Inf"."""
    try:
        return _lua_number(float(le))
    except ValueError:
        return le


class GatewayRegistry(CollectorRegistry):
    """The registry /metrics encodes, which also gives Kong's /status "server" numbers without collecting every
    family (StatusApp uses its `server_statistics`)."""

    def __init__(self, collector: GatewayCollector) -> None:
        super().__init__()
        self.collector = collector
        self.register(collector)

    def server_statistics(self) -> dict[str, int]:
        """Kong's /status "server" numbers (GatewayCollector.server_statistics; a thread: it reads files)."""
        return self.collector.server_statistics()

    def include(self, own: ConnectionCounts) -> None:
        """Count the status server's connections and requests (`own`) in Kong's node counters, as nginx does."""
        self.collector.own = own


def gateway_registry(path: str, **kwargs: Any) -> tuple[GatewayRegistry, GatewayCollector]:
    """The registry /metrics encodes, and its collector (whose `prepare` runs before each scrape)."""
    collector = GatewayCollector(path, **kwargs)
    return GatewayRegistry(collector), collector
