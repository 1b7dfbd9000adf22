"""What /metrics serves in the root: every process's metric files, and Kong's node-level families derived from
them (connections, requests, node info), as Kong's prometheus plugin exports them when it is configured.

Before each scrape (`prepare`, in the server's Trio thread): the root's own counts are flushed and the gauge files
of processes that have exited are removed, so a dead worker's connections or a dead keeper's breaker states do not
linger, while its counters keep counting in the sums.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric

from gateway.metrics import RECORDER, FilesCollector, sweep_dead_processes
from gateway.telemetry.node_id import node_id

CONNECTION_STATES = ("active", "reading", "writing", "waiting")
# Kong's metrics kept in its shared dict, which /metrics shows only while a prometheus plugin is enabled (its
# metric_data(local_only)); its node families and target health are local metrics, always shown
PLUGIN_FAMILIES = frozenset({"kong_http_requests", "kong_kong_latency_ms", "kong_upstream_latency_ms",
                             "kong_request_latency_ms", "kong_bandwidth_bytes"})


class GatewayCollector:
    """A prometheus_client collector over a multiprocess directory."""

    def __init__(self, path: str, node: str = "", version: str = "",
                 kong_enabled: Callable[[], bool] = lambda: False) -> None:
        self.path = path
        self.node_id = node_id(node) if node else ""
        self.version = version
        self.kong_enabled = kong_enabled
        self._files = FilesCollector(None, path)

    def prepare(self) -> None:
        """Flush this process's counts and forget the live gauges of exited processes (cheap; Trio thread)."""
        RECORDER.flush()
        sweep_dead_processes(self.path)

    def families(self) -> list[Metric]:
        """Every process's families as the files hold them (what the status page reads)."""
        return list(self._files.collect())

    def collect(self) -> Iterator[Metric]:
        families = self.families()
        if self.kong_enabled():
            yield from families
        else:
            yield from (family for family in families if family.name not in PLUGIN_FAMILIES)
        yield from self._kong_node(families)

    def _kong_node(self, families: list[Metric]) -> Iterator[Metric]:
        values = _sums(families)
        node = self.node_id
        connections = GaugeMetricFamily("kong_nginx_connections_total", "Number of connections by subsystem",
                                        labels=["node_id", "subsystem", "state"])
        requests_total = values.get(("gateway_requests", "total"), 0.0)
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
        # DB-less, as Kong's "off" strategy: there is no datastore to lose, and Kong reports it reachable.
        yield GaugeMetricFamily("kong_datastore_reachable", "Datastore reachable from Kong, 0 is unreachable", 1)


def _sums(families: list[Metric]) -> dict[tuple[str, str], float]:
    """The totals the node families need: requests and accepted connections, connections by state."""
    out: dict[tuple[str, str], float] = {}
    for family in families:
        if family.name in ("gateway_requests", "gateway_connections_accepted"):
            total = sum(s.value for s in family.samples if s.name.endswith("_total"))
            out[(family.name, "total")] = total
        elif family.name == "gateway_connections":
            for sample in family.samples:
                key = (family.name, sample.labels.get("state", ""))
                out[key] = out.get(key, 0.0) + sample.value
    return out


def server_statistics(families: list[Metric]) -> dict[str, int]:
    """Kong's kong.nginx.get_statistics() summed over the processes' metric files (Kong's /status "server"): the
    connections by state, accepted (= handled: the gateway drops none it accepted), and the requests answered."""
    values = _sums(families)
    accepted = int(values.get(("gateway_connections_accepted", "total"), 0.0))
    stats = {f"connections_{state}": int(values.get(("gateway_connections", state), 0.0))
             for state in CONNECTION_STATES}
    stats.update(connections_accepted=accepted, connections_handled=accepted,
                 total_requests=int(values.get(("gateway_requests", "total"), 0.0)))
    return stats


def gateway_registry(path: str, **kwargs: Any) -> tuple[CollectorRegistry, GatewayCollector]:
    """The registry /metrics encodes, and its collector (whose `prepare` runs before each scrape)."""
    registry = CollectorRegistry()
    collector = GatewayCollector(path, **kwargs)
    registry.register(collector)
    return registry, collector
