"""Kong's statsd lines, without I/O: what log.lua makes of a serialized request (`Formatter`) and how
statsd_logger.lua writes them (`create_statsd_message`, the UDP packet combining of `Packer`).

A message is the part of Kong's serializer table that log.lua reads (gateway.telemetry.entry.summary):

    {"service": {"id", "name", "host"}, "route": {"id", "name"}, "consumer": {"id", "username", "custom_id"},
     "request": {"size"}, "response": {"status", "size"}, "latencies": {"request", "proxy", "kong"},
     "workspace", "workspace_name"}

(service, route and consumer absent when the request had none; a name absent when the entity has none.)

Lines, in the order of the config's metrics, as log.lua sends them:

    <prefix>.<scope>.request.count:1|c             scope: service.<service identifier, dots as _>; service.unnamed
    <prefix>.<scope>.latency:<ms>|ms                      when it has none; global.unmatched without a service
    <prefix>.<scope>.status.<status>:1|c
    <prefix>.<scope>.user.uniques:<consumer>|s
    <prefix>.<scope>.user.<consumer>.request.count:1|c
    <prefix>.<scope>.user.<consumer>.status.<status>:1|c
    <prefix>.<scope>.workspace.<workspace>.status.<status>:1|c
    <prefix>.route.<route id>.user.<consumer>.status.<status>:1|c

With `tag_style` the name carries no scope and the six per-status and per-user metrics are not sent (log.lua skips
them); the tags are service, route (name or id), workspace, consumer, node, status, in that order: the order
get_tags adds them (Kong's come out in Lua's hash order). A request without the service identifier gets no tags.
`shdict_usage` sends nothing: the gateway has no nginx shared dicts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.policies.statsd.schema import Metric, StatsdConfig

STAT_TYPES = {"gauge": "g", "counter": "c", "timer": "ms", "histogram": "h", "meter": "m", "set": "s"}
# metrics log.lua computes with a function of their own (always a counter, or a set); skipped in tag mode
_OWN = frozenset({"unique_users", "request_per_user", "status_count", "status_count_per_user",
                  "status_count_per_workspace", "status_count_per_user_per_route", "shdict_usage"})
# the others: the stat's name and where its value is in the message
_STATS: dict[str, tuple[str, Callable[[dict[str, Any]], Any]]] = {
    "request_count": ("request.count", lambda m: 1),
    "request_size": ("request.size", lambda m: m["request"]["size"]),
    "response_size": ("response.size", lambda m: m["response"]["size"]),
    "latency": ("latency", lambda m: m["latencies"].get("request")),
    "upstream_latency": ("upstream_latency", lambda m: m["latencies"].get("proxy")),
    "kong_latency": ("kong_latency", lambda m: m["latencies"].get("kong")),
}
_CONSUMER_FIELDS = {"consumer_id": "id", "custom_id": "custom_id", "username": "username"}
_WORKSPACE_FIELDS = {"workspace_id": "workspace", "workspace_name": "workspace_name"}


def service_id(service: dict[str, Any] | None, identifier: str) -> str | None:
    """log.lua's get_service_id: the service's id, name, host, or name else host; None without one."""
    if service is None:
        return None
    if identifier == "service_name_or_host":
        return service.get("name") or service.get("host")
    return service.get(identifier.removeprefix("service_"))  # type: ignore[no-any-return]


def rate_suffix(sample_rate: float | None) -> str:
    """`|@<rate>` as Lua writes the number (%.14g), or nothing for no rate or 1."""
    if sample_rate is None or sample_rate == 1:
        return ""
    return f"|@{sample_rate:.14g}"


class _Metric:
    """One configured metric, resolved once: its identifiers (the metric's or the config's defaults), its statsd
    type and rate as written."""

    __slots__ = ("name", "kind", "rate", "consumer", "service", "workspace")

    def __init__(self, metric: Metric, config: StatsdConfig) -> None:
        self.name = metric.name
        self.kind = STAT_TYPES[metric.stat_type]
        self.rate = rate_suffix(metric.sample_rate)
        self.consumer = _CONSUMER_FIELDS[metric.consumer_identifier or config.consumer_identifier_default]
        self.service: str = metric.service_identifier or config.service_identifier_default
        self.workspace = _WORKSPACE_FIELDS[metric.workspace_identifier or config.workspace_identifier_default]


class Formatter:
    """A config's statsd lines for a message; everything that depends on the config alone is computed here."""

    def __init__(self, config: StatsdConfig, hostname: str) -> None:
        self.hostname = hostname  # dots already as "_"
        self.tag_style = config.tag_style
        self.prefix = config.prefix
        if config.hostname_in_prefix and config.tag_style is None:
            self.prefix += f".node.{hostname}"
        metrics = [_Metric(m, config) for m in config.metrics]
        if config.tag_style is not None:
            metrics = [m for m in metrics if m.name not in _OWN]
        self.metrics = [m for m in metrics if m.name != "shdict_usage"]
        self.ranges = config.status_ranges()
        self._allowed: dict[int, bool] = {}

    def allows(self, status: int) -> bool:
        """log.lua's is_in_range: no ranges allow every status; otherwise the first range that holds it."""
        allowed = self._allowed.get(status)
        if allowed is None:
            ranges = self.ranges
            allowed = ranges is None or any(first <= status <= last for first, last in ranges)
            if len(self._allowed) < 1000:
                self._allowed[status] = allowed
        return allowed

    def lines(self, message: dict[str, Any]) -> list[str]:
        """The statsd lines of one message, in the order of the metrics."""
        if self.tag_style is not None:
            return self._tagged(message)
        prefix = self.prefix
        service = message.get("service")
        consumer = message.get("consumer")
        status = message["response"]["status"]
        scopes: dict[str, str] = {}
        out = []
        for m in self.metrics:
            scope = scopes.get(m.service)
            if scope is None:
                scope = scopes[m.service] = _scope(service, m.service)
            name = m.name
            stat = _STATS.get(name)
            if stat is not None:
                value = stat[1](message)
                if value is not None and value != -1:
                    out.append(f"{prefix}.{scope}.{stat[0]}:{value}|{m.kind}{m.rate}")
                continue
            if name == "status_count":
                out.append(f"{prefix}.{scope}.status.{status}:1|c{m.rate}")
                continue
            if name == "status_count_per_workspace":
                workspace = message.get(m.workspace)
                if workspace is not None:
                    out.append(f"{prefix}.{scope}.workspace.{workspace}.status.{status}:1|c{m.rate}")
                continue
            user = consumer.get(m.consumer) if consumer is not None else None
            if user is None:
                continue
            if name == "unique_users":
                out.append(f"{prefix}.{scope}.user.uniques:{user}|s")
            elif name == "request_per_user":
                out.append(f"{prefix}.{scope}.user.{user}.request.count:1|c{m.rate}")
            elif name == "status_count_per_user":
                out.append(f"{prefix}.{scope}.user.{user}.status.{status}:1|c{m.rate}")
            elif name == "status_count_per_user_per_route":
                route = message.get("route")
                if route is not None and route.get("id") is not None:
                    out.append(f"{prefix}.route.{route['id']}.user.{user}.status.{status}:1|c{m.rate}")
        return out

    def _tagged(self, message: dict[str, Any]) -> list[str]:
        prefix = self.prefix
        style = self.tag_style
        out = []
        for m in self.metrics:
            stat_name, value_of = _STATS[m.name]
            value = value_of(message)
            if value is None or value == -1:
                continue
            tags = self._tags(message, m)
            if tags is None:  # create_statsd_message without tags: the plain form
                out.append(f"{prefix}.{stat_name}:{value}|{m.kind}{m.rate}")
            elif style == "dogstatsd":
                pairs = ",".join(f"{k}:{v}" for k, v in tags)
                out.append(f"{prefix}.{stat_name}:{value}|{m.kind}{m.rate}|#{pairs}")
            else:
                pairs = ",".join(f"{k}={v}" for k, v in tags)
                if style == "influxdb":
                    out.append(f"{prefix}.{stat_name},{pairs}:{value}|{m.kind}{m.rate}")
                elif style == "librato":
                    out.append(f"{prefix}.{stat_name}#{pairs}:{value}|{m.kind}{m.rate}")
                else:  # signalfx
                    out.append(f"{prefix}.{stat_name}[{pairs}]:{value}|{m.kind}{m.rate}")
        return out

    def _tags(self, message: dict[str, Any], m: _Metric) -> list[tuple[str, Any]] | None:
        """log.lua's get_tags, in the order it adds them; None when the service has no such identifier."""
        service = service_id(message.get("service"), m.service)
        if service is None:
            return None
        tags: list[tuple[str, Any]] = [("service", service)]
        route = message.get("route")
        if route is not None:
            route_name = route.get("name") or route.get("id")
            if route_name is not None:
                tags.append(("route", route_name))
        workspace = message.get(m.workspace)
        if workspace is not None:
            tags.append(("workspace", workspace))
            consumer = message.get("consumer")
            user = consumer.get(m.consumer) if consumer is not None else None
            if user is not None:  # (log.lua adds it only with a workspace, as here)
                tags.append(("consumer", user))
        tags.append(("node", self.hostname))
        tags.append(("status", message["response"]["status"]))
        return tags


def _scope(service: dict[str, Any] | None, identifier: str) -> str:
    """log.lua's get_scope_name."""
    if service is None:
        return "global.unmatched"
    name = service_id(service, identifier)
    return "service." + (name.replace(".", "_") if name else "unnamed")


class Packer:
    """statsd_logger.lua's buffer-and-send: with a packet size, lines are combined with "\\n" into datagrams of up to
    that many bytes (its count: each buffered line and a newline, but not the newline after the first line of a
    new buffer). A line alone larger than the packet size goes in a datagram of its own, with the next call (the
    "truncated" case). Without a packet size (0), each line is its own datagram."""

    def __init__(self, packet_size: float) -> None:
        self.packet_size = packet_size
        self._buffer: list[bytes] = []
        self._size = 0

    def add(self, line: bytes) -> bytes | None:
        """The datagram to send now, if any, once `line` is taken."""
        if self.packet_size <= 0:
            return line
        size = len(line)
        new_size = self._size + size
        if new_size <= self.packet_size:
            self._buffer.append(line)
            self._size = new_size + 1  # and the "\n"
            return None
        truncated = self._size == 0  # the line alone is too large: buffered, sent with the next call
        datagram = b"\n".join(self._buffer)
        self._buffer = [line]
        self._size = size
        return None if truncated else datagram

    def flush(self) -> bytes | None:
        """What is buffered, as the last datagram (statsd_logger.lua's close_socket)."""
        if self.packet_size <= 0 or self._size <= 0:
            return None
        datagram = b"\n".join(self._buffer)
        self._buffer, self._size = [], 0
        return datagram
