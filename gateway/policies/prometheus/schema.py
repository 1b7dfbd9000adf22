"""Kong's prometheus plugin config (kong/plugins/prometheus/schema.lua): switches for the metric families."""

from typing import Any, ClassVar

import msgspec


class PrometheusConfig(msgspec.Struct, forbid_unknown_fields=True):
    # null: nil, which Kong tests for truth: off (handler.lua:31-57, exporter.lua:231-235; gateway.config.decode)
    NULL_AS: ClassVar[dict[str, Any]] = dict.fromkeys(
        ("per_consumer", "status_code_metrics", "latency_metrics", "bandwidth_metrics", "upstream_health_metrics",
         "ai_metrics", "wasm_metrics"), False)

    per_consumer: bool = False  # the consumer label of kong_http_requests_total and kong_bandwidth_bytes
    status_code_metrics: bool = False  # kong_http_requests_total
    latency_metrics: bool = False  # kong_kong_latency_ms, kong_upstream_latency_ms, kong_request_latency_ms
    bandwidth_metrics: bool = False  # kong_bandwidth_bytes
    upstream_health_metrics: bool = False  # kong_upstream_target_health (on when any instance turns it on)
    ai_metrics: bool = False
    wasm_metrics: bool = False

    def __post_init__(self) -> None:
        if self.ai_metrics:
            raise ValueError("ai_metrics: the gateway has no AI plugins, so there are no AI metrics to collect; "
                             "remove it (or set it to false)")
        if self.wasm_metrics:
            raise ValueError("wasm_metrics: the gateway runs no Wasm filters; remove it (or set it to false)")
