"""Kong's prometheus plugin: the kong_* families for the requests it applies to (its log step, gateway.telemetry).

Requests no route matched are not counted here, as in Kong (gateway_requests_total counts them). The families are
exported by the status server's /metrics, summed over every worker (gateway.metrics).
"""

from __future__ import annotations

from gateway.metrics import (
    KONG_LATENCY,
    KONG_LATENCY_BUCKETS,
    KONG_REQUEST_LATENCY,
    KONG_UPSTREAM_LATENCY,
    RECORDER,
    UPSTREAM_LATENCY_BUCKETS,
    Recorder,
)
from gateway.policies.prometheus.schema import PrometheusConfig
from gateway.telemetry.entry import Entry


class Prometheus:
    name = "prometheus"
    priority = 13  # Kong's

    def __init__(self, config: PrometheusConfig, recorder: Recorder = RECORDER) -> None:
        self.config = config
        self.recorder = recorder
        self.per_consumer = config.per_consumer
        self.status = config.status_code_metrics
        self.latency = config.latency_metrics
        self.bandwidth = config.bandwidth_metrics

    def log(self, entry: Entry) -> None:
        route = entry.ex.route
        if route is None:
            return
        facts = route.facts
        rec = self.recorder
        consumer = entry.consumer_username if self.per_consumer else ""
        if self.status:
            source = "service" if entry.source == "service" else "kong"
            rec.kong_requests[(facts.service, facts.route, entry.status, source, consumer)] += 1
        if self.latency:
            kong, proxy, request, _ = entry.latencies()
            labels = facts.labels
            rec.observe(KONG_REQUEST_LATENCY, UPSTREAM_LATENCY_BUCKETS, labels, request)
            if proxy >= 0:
                rec.observe(KONG_UPSTREAM_LATENCY, UPSTREAM_LATENCY_BUCKETS, labels, proxy)
            rec.observe(KONG_LATENCY, KONG_LATENCY_BUCKETS, labels, kong)
        if self.bandwidth:
            ingress = entry.request_size()
            egress = entry.ex.sent
            if ingress > 0:
                rec.bandwidth[(facts.service, facts.route, "ingress", consumer)] += ingress
            if egress > 0:
                rec.bandwidth[(facts.service, facts.route, "egress", consumer)] += egress
