"""Kong's datadog plugin config (kong/plugins/datadog/schema.lua), with Kong's queue (typedefs.queue)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import msgspec

from gateway.config.errors import show
from gateway.policies.http_log.schema import warn_retry_count
from gateway.policies.tcp_log.schema import Port, check_host
from gateway.telemetry.batch import QueueConfig, apply_legacy_queue

StatName = Literal["kong_latency", "latency", "request_count", "request_size", "response_size", "upstream_latency"]
StatType = Literal["counter", "gauge", "histogram", "meter", "set", "timer", "distribution"]
ConsumerIdentifier = Literal["consumer_id", "custom_id", "username"]
# Kong's schema strings are at least 1 character unless they say otherwise (kong/db/schema/init.lua)
NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]


class DatadogMetric(msgspec.Struct, forbid_unknown_fields=True):
    name: StatName
    stat_type: StatType
    tags: list[NonEmpty] | None = None
    sample_rate: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    consumer_identifier: ConsumerIdentifier | None = None

    def __post_init__(self) -> None:
        if self.stat_type in ("counter", "gauge") and self.sample_rate is None:
            raise ValueError(f"sample_rate: required when stat_type is {self.stat_type} (as in Kong)")
        for tag in self.tags or ():
            if not tag or tag.endswith(":"):  # Kong's match "^.*[^:]$"
                raise ValueError(f"tags: expected a tag that does not end with ':', got {show(tag)}")
            if "\n" in tag:
                raise ValueError(f"tags: a tag cannot hold a line break (DogStatsD reads lines), got {show(tag)}")


def _default_metrics() -> list[DatadogMetric]:
    """Kong's DEFAULT_METRICS: each tagged app:kong and with the consumer's custom_id."""
    kinds: list[tuple[StatName, StatType]] = [("request_count", "counter"), ("latency", "timer"),
                                              ("request_size", "timer"), ("response_size", "timer"),
                                              ("upstream_latency", "timer"), ("kong_latency", "timer")]
    return [DatadogMetric(name=name, stat_type=kind, tags=["app:kong"], consumer_identifier="custom_id",
                          sample_rate=1 if kind == "counter" else None) for name, kind in kinds]


class DatadogConfig(msgspec.Struct, forbid_unknown_fields=True):
    # null: nil, read `conf.x or <the default>` (handler.lua:33-38, statsd_logger.lua:75; gateway.config.decode)
    NULL_AS: ClassVar[dict[str, Any]] = {"prefix": "kong", "service_name_tag": "name", "status_tag": "status",
                                         "consumer_tag": "consumer"}
    # null: the agent named by KONG_DATADOG_AGENT_HOST / KONG_DATADOG_AGENT_PORT in the gateway's environment, read
    # when a batch is sent (kong/plugins/datadog/statsd_logger.lua:23-29): valid config whatever the environment
    host: str | None = "localhost"
    port: Port | None = 8125
    prefix: NonEmpty = "kong"
    service_name_tag: NonEmpty = "name"
    status_tag: NonEmpty = "status"
    consumer_tag: NonEmpty = "consumer"
    metrics: list[DatadogMetric] = msgspec.field(default_factory=_default_metrics)
    queue: QueueConfig = msgspec.field(default_factory=QueueConfig)
    # Kong 3.x's deprecated forms: queue_size and flush_timeout still map onto the queue (Kong's
    # Queue.get_plugin_params); retry_count "no longer works" in Kong: taken and ignored (warn_retry_count).
    queue_size: Annotated[int, msgspec.Meta(ge=1)] | None = None
    flush_timeout: Annotated[float, msgspec.Meta(ge=0)] | None = None
    retry_count: int | None = None

    def __post_init__(self) -> None:
        if self.host is not None:
            check_host("host", self.host)
        warn_retry_count("datadog", self.retry_count)
        apply_legacy_queue(self.queue, self.queue_size, self.flush_timeout)
