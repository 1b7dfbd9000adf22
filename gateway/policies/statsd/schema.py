"""Kong's statsd plugin config (kong/plugins/statsd/schema.lua), with Kong's queue (typedefs.queue)."""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

import msgspec

from gateway.config.errors import inline
from gateway.policies.http_log.schema import warn_retry_count
from gateway.policies.tcp_log.schema import Port, check_host
from gateway.telemetry.batch import QueueConfig, apply_legacy_queue

MetricName = Literal["kong_latency", "latency", "request_count", "request_per_user", "request_size", "response_size",
                     "status_count", "status_count_per_user", "unique_users", "upstream_latency",
                     "status_count_per_workspace", "status_count_per_user_per_route", "shdict_usage"]
StatType = Literal["counter", "gauge", "histogram", "meter", "set", "timer"]
ConsumerIdentifier = Literal["consumer_id", "custom_id", "username"]
ServiceIdentifier = Literal["service_id", "service_name", "service_host", "service_name_or_host"]
WorkspaceIdentifier = Literal["workspace_id", "workspace_name"]
TagStyle = Literal["dogstatsd", "influxdb", "librato", "signalfx"]

# the schema's pattern for a range (constants.REGEX_STATUS_CODE_RANGE), and what log.lua reads of one at run time
# (REGEX_SPLIT_STATUS_CODES_BY_DASH, unanchored: "2000-2999" reads as 000-299 there, and so here)
_RANGE = re.compile(r"[0-9]+-[0-9]+")
_RANGE_READ = re.compile(r"(\d\d\d)-(\d\d\d)", re.ASCII)
MAX_UDP_PACKET = 65507  # 65,535 - 8 bytes of UDP header - 20 of IP header (schema.lua)


class Metric(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, frozen=True):
    """One entry of `metrics`: which metric, as which statsd type; the identifiers default to the config's."""

    name: MetricName
    stat_type: StatType
    sample_rate: Annotated[float, msgspec.Meta(gt=0)] | None = None  # written as |@rate when not 1; not sampled
    consumer_identifier: ConsumerIdentifier | None = None
    service_identifier: ServiceIdentifier | None = None
    workspace_identifier: WorkspaceIdentifier | None = None

    def __post_init__(self) -> None:
        if self.sample_rate is None and self.stat_type in ("counter", "gauge"):  # Kong's conditional entity check
            raise ValueError(f"sample_rate: required field missing (a {self.stat_type} needs one)")


def _counter(name: MetricName) -> Metric:
    return Metric(name, "counter", 1)


# Kong's DEFAULT_METRICS, in its order (the order the lines are sent in)
DEFAULT_METRICS = (
    _counter("request_count"), Metric("latency", "timer"), _counter("request_size"), _counter("status_count"),
    _counter("response_size"), Metric("unique_users", "set"), _counter("request_per_user"),
    Metric("upstream_latency", "timer"), Metric("kong_latency", "timer"), _counter("status_count_per_user"),
    _counter("status_count_per_workspace"), _counter("status_count_per_user_per_route"),
    Metric("shdict_usage", "gauge", 1),
)


class StatsdConfig(msgspec.Struct, forbid_unknown_fields=True):
    # null: nil, which Kong tests for truth: off (statsd_logger.lua:97, 128; log.lua:254, 449; gateway.config.decode)
    NULL_AS: ClassVar[dict[str, Any]] = {"use_tcp": False, "hostname_in_prefix": False}

    host: str = "localhost"
    port: Port = 8125
    prefix: Annotated[str, msgspec.Meta(min_length=1)] = "kong"
    metrics: list[Metric] = msgspec.field(default_factory=lambda: list(DEFAULT_METRICS))
    # "200-299" ranges of the statuses that are sent (none: every status; an empty list: none, as in Kong)
    allow_status_codes: list[str] | None = None
    udp_packet_size: Annotated[float, msgspec.Meta(ge=0, le=MAX_UDP_PACKET)] = 0  # combine lines up to it; 0: don't
    use_tcp: bool = False
    hostname_in_prefix: bool = False  # <prefix>.node.<hostname>. without tag_style
    consumer_identifier_default: ConsumerIdentifier = "custom_id"
    service_identifier_default: ServiceIdentifier = "service_name_or_host"
    workspace_identifier_default: WorkspaceIdentifier = "workspace_id"
    tag_style: TagStyle | None = None
    queue: QueueConfig = msgspec.field(default_factory=QueueConfig)
    # Kong 3.x's deprecated forms: queue_size and flush_timeout still map onto the queue (Kong's
    # Queue.get_plugin_params); retry_count "no longer works" in Kong: taken and ignored (warn_retry_count).
    retry_count: int | None = None
    queue_size: Annotated[int, msgspec.Meta(ge=1)] | None = None
    flush_timeout: Annotated[float, msgspec.Meta(ge=0)] | None = None

    def __post_init__(self) -> None:
        check_host("host", self.host)
        for i, codes in enumerate(self.allow_status_codes or ()):
            if not _RANGE.fullmatch(codes):
                raise ValueError(f"allow_status_codes[{i}]: invalid value: {inline(codes)} (expected a range such as "
                                 "200-299)")
            if not _RANGE_READ.search(codes):  # Kong's log phase fails on it for every request that reaches it
                raise ValueError(f"allow_status_codes[{i}]: invalid value: {inline(codes)} (Kong reads a range as two "
                                 "3-digit codes, such as 200-299)")
        warn_retry_count("statsd", self.retry_count)
        # Kong's get_plugin_params: a legacy value other than its old default replaces the queue's
        apply_legacy_queue(self.queue, self.queue_size, self.flush_timeout)

    def status_ranges(self) -> tuple[tuple[int, int], ...] | None:
        """The allowed statuses as (first, last) ranges, read as log.lua reads them; None: every status."""
        if self.allow_status_codes is None:
            return None
        ranges = []
        for codes in self.allow_status_codes:
            m = _RANGE_READ.search(codes)
            assert m is not None  # checked above
            ranges.append((int(m[1]), int(m[2])))
        return tuple(ranges)
