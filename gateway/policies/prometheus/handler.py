"""Kong's prometheus plugin: the kong_* families for the requests it applies to (its log step, gateway.telemetry).

Requests no route matched are not counted here, as in Kong (gateway_requests_total counts them). The families are
exported by the status server's /metrics, summed over every worker (gateway.metrics).
"""

from __future__ import annotations

from typing import Any

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
        """Append what Kong's exporter observes: raw values, counted and bucketed in bulk at the flush."""
        route = ex.route
        if route is None:
            return
        obs = route.facts.obs  # the log phase has put it on the recorder's dirty list already
        tries = ex.tries
        last = tries[-1] if tries else None
        head = last.head_at if last is not None else 0.0
        who = ""
        if self.per_consumer:
            consumer = ex.consumer
            if consumer is not None:
                who = consumer.username or ""
        if self.status:
            code = status * 2 + 1 if head else status * 2  # the source: service (the upstream answered) or kong
            if who:
                obs.kong_by_consumer.append((code, who))
            else:
                obs.kong.append(code)
        if self.latency:
            obs.request.append((ended - started) * 1000.0)
            if head:
                sent = last.started  # type: ignore[union-attr]
                obs.upstream.append((head - sent) * 1000.0)
                obs.kong_latency.append((sent - started) * 1000.0)
            else:
                obs.kong_latency.append((ended - started) * 1000.0)
        if self.bandwidth:
            ingress = request_size(ex)
            if who:
                obs.by_consumer[("ingress", who)] += ingress
                obs.by_consumer[("egress", who)] += ex.sent
            else:
                obs.ingress += ingress
                obs.egress += ex.sent
