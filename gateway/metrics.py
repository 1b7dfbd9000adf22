"""Prometheus metrics for the whole gateway, summed across worker processes (prometheus_client's multiprocess mode).

The root points PROMETHEUS_MULTIPROC_DIR at run/metrics before it starts any child, so every process's metrics
land in files there and the status server's /metrics reads them all. On the hot path a worker only adds to a plain
dict; a task hands the sums to prometheus_client every FLUSH_S (its multiprocess values are file-backed).
"""

from __future__ import annotations

import os
import shutil
from collections import defaultdict

import trio
from prometheus_client import CollectorRegistry, Counter, multiprocess

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
FLUSH_S = 1.0
_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}

REQUESTS = Counter("gateway_requests_total", "Requests answered by the gateway, by route and status class",
                   ["route", "code"])
LOCAL_SHARE = Counter("gateway_ratelimit_local_share_total",
                      "Requests a worker admitted on its local share of a rate limit (the state keeper exited, "
                      "hung, or was silent on the key for 1 s), by plugin", ["plugin"])
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


class RequestStats:
    """Per-worker counts since the last flush."""

    def __init__(self) -> None:
        self.counts: defaultdict[tuple[str, int], int] = defaultdict(int)

    def record(self, route: str, status: int) -> None:
        self.counts[(route, status // 100)] += 1

    def flush(self) -> None:
        counts, self.counts = self.counts, defaultdict(int)
        for (route, klass), n in counts.items():
            REQUESTS.labels(route, _CLASSES.get(klass, "other")).inc(n)

    async def flush_forever(self) -> None:
        try:
            while True:
                await trio.sleep(FLUSH_S)
                self.flush()
        finally:
            self.flush()


def prepare_multiprocess_dir(run_dir: str) -> str:
    """An empty run/metrics, exported to every child the root starts from now on."""
    path = os.path.join(run_dir, "metrics")
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path, exist_ok=True)
    os.environ[MULTIPROC_ENV] = path
    return path


def multiprocess_registry() -> CollectorRegistry:
    """A registry that reads every process's metric files (for /metrics in the root)."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry
