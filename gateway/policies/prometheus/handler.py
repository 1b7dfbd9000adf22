"""Kong's prometheus plugin: the kong_* families for the requests it applies to (its log step, gateway.telemetry).

Requests no route matched are not counted here, as in Kong (gateway_requests_total counts them). The families are
exported by the status server's /metrics, summed over every worker (gateway.metrics).
"""

from __future__ import annotations

from typing import Any

from gateway.http.kong_headers import PROXIED
from gateway.policies.prometheus.schema import PrometheusConfig
from gateway.telemetry.entry import request_size


class Prometheus:
    name = "prometheus"
    priority = 13  # Kong's
    entries = False  # its log step takes the raw facts (gateway.telemetry.phase)

    def __init__(self, config: PrometheusConfig) -> None:
        self.config = config
        self.per_consumer = config.per_consumer
        self.status = config.status_code_metrics
        self.latency = config.latency_metrics
        self.bandwidth = config.bandwidth_metrics

    def log(self, ex: Any, started: float, ended: float, status: int) -> None:
        """Append what Kong's exporter observes: objects that exist already (clock readings, the status, the
        request), counted, subtracted and bucketed in bulk at the flush (gateway.metrics.RouteObservations)."""
        route = ex.route
        if route is None:
            return
        obs = route.facts.obs  # the log phase has put it on the recorder's dirty list already
        tries = ex.tries
        head = tries[-1].head_at if tries else 0.0
        if self.per_consumer and ex.consumer is not None:
            self._by_consumer(obs, ex, status, head)
        else:
            if self.status:
                (obs.from_service if head else obs.from_kong).append(status)
            if self.bandwidth:
                obs.requests.append(ex.request)
                obs.bodies.append(ex.body_received)
                obs.sent.append(ex.sent)
        if self.latency:
            obs.starts.append(started)
            obs.ends.append(ended)
            if tries:  # proxied: Kong's upstream latency is its waiting time, also when the try failed (a 504)
                last = tries[-1]
                obs.kong_ends.append(last.started)
                obs.sents.append(last.started)
                obs.heads.append(head or last.ended or ended)
            else:
                self._answered(obs, ex, ended)

    @staticmethod
    def _answered(obs: Any, ex: Any, ended: float) -> None:
        """The latencies of an answer of the gateway's own: Kong's kong latency ends as its head goes (kong/init.lua
        header_filter: KONG_RESPONSE_LATENCY, or KONG_PROXY_LATENCY of a proxy-cache hit), not when the client has
        read it; a hit is proxied to Kong (its KONG_PROXIED), with an upstream latency (KONG_WAITING_TIME) of 0."""
        at = ex.answered_at or ended  # (none: no head went, a 499, or the connection loop's error page follows)
        obs.kong_ends.append(at)
        state = ex.state
        if state and PROXIED in state:
            obs.sents.append(at)
            obs.heads.append(at)

    def _by_consumer(self, obs: Any, ex: Any, status: int, head: float) -> None:
        """per_consumer with an authenticated consumer: the consumer label is its username."""
        who = ex.consumer.username or ""
        if self.status:
            obs.by_consumer.append((status, "service" if head else "kong", who))
        if self.bandwidth:
            obs.bytes_by_consumer[("ingress", who)] += request_size(ex)  # Kong's: the entry's request.size
            obs.bytes_by_consumer[("egress", who)] += ex.sent
