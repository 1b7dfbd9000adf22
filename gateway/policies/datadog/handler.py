"""Kong's datadog: for every request, each configured metric as a DogStatsD line in a datagram of its own to the
agent, `<prefix>.<stat>:<value>|<type>[|@<rate>]|#<tags>`. The tags: `<service_name_tag>:<service name (or host),
dots as "_">`, `<status_tag>:<status>`, `<consumer_tag>:<the consumer's id, custom_id or username>` when the metric
names a consumer_identifier and the consumer has it, then the metric's own tags. Values from Kong's serializer:
request.count 1, latency (request), upstream_latency (proxy, -1 when no upstream answered), kong_latency,
request.size and response.size. Sent through Kong's queue off the request path; a datagram sent while the agent's
port is closed is lost, and the batch's other datagrams still go (gateway.telemetry.udp_sender): Kong's send_statsd
logs a failure and goes on, and its queue never sends the batch again. A batch with no socket to send it on (the
agent's name does not resolve; no host or port, from the config or the environment) fails, and the queue retries it:
Kong's statsd_logger:new fails (datadog/statsd_logger.lua:23-35) and datadog/handler.lua:51-56 returns false.
"""

from __future__ import annotations

import os
from typing import Any

from gateway.policies.datadog.schema import DatadogConfig, DatadogMetric
from gateway.policies.statsd.lines import rate_suffix
from gateway.telemetry.batch import QUEUES, BatchQueue, Queues
from gateway.telemetry.entry import Entry, summary
from gateway.telemetry.sender import SendError
from gateway.telemetry.udp_sender import UdpSender

_TYPES = {"gauge": "g", "counter": "c", "timer": "ms", "histogram": "h", "meter": "m", "set": "s",
          "distribution": "d"}
_STATS = {"request_size": "request.size", "response_size": "response.size", "latency": "latency",
          "upstream_latency": "upstream_latency", "kong_latency": "kong_latency", "request_count": "request.count"}


class _Metric:
    """What one configured metric needs per request, built at config load."""

    __slots__ = ("name", "stat", "suffix", "consumer", "tags")

    def __init__(self, metric: DatadogMetric, prefix: str) -> None:
        self.name = metric.name
        self.stat = f"{prefix}.{_STATS[metric.name]}:"
        self.suffix = "|" + _TYPES[metric.stat_type] + rate_suffix(metric.sample_rate)
        self.consumer = metric.consumer_identifier
        self.tags = metric.tags or []


class Datadog:
    name = "datadog"
    priority = 10  # Kong's
    entries = True  # its log step takes the whole Entry (gateway.telemetry.phase)

    def __init__(self, config: DatadogConfig, plugin_id: str, queues: Queues = QUEUES) -> None:
        agent = _agent(config.host, config.port)
        self.sender = UdpSender(*agent) if isinstance(agent, tuple) else None
        self.no_agent = agent if isinstance(agent, str) else ""  # why there is no sender
        self.metrics = [_Metric(m, config.prefix) for m in config.metrics]
        self.tag_names = (config.service_name_tag + ":", config.status_tag + ":", config.consumer_tag + ":")
        # Kong names the queue after the plugin instance
        self.queue: BatchQueue = queues.queue_for(f"datadog:{plugin_id}", config.queue, self.send, self.lines,
                                                  settings=(config.host, config.port))

    def log_entry(self, entry: Entry) -> None:
        self.queue.put(entry)

    def lines(self, entry: Entry) -> list[bytes]:
        """The request's datagrams, one per metric (the queue's formatter: it holds these, not the request)."""
        doc = summary(entry)
        latencies = doc["latencies"]
        values = {"request_size": doc["request"]["size"], "response_size": doc["response"]["size"],
                  "latency": latencies["request"], "upstream_latency": latencies["proxy"],
                  "kong_latency": latencies["kong"], "request_count": 1}
        service = doc.get("service")
        service_name = (service.get("name") or service.get("host") or "").replace(".", "_") if service else ""
        name_tag, status_tag, consumer_tag = self.tag_names
        common = f"{name_tag}{service_name},{status_tag}{doc['response']['status']}"
        consumer = doc.get("consumer")
        out = []
        for metric in self.metrics:
            tags = [common]
            if metric.consumer is not None and consumer is not None:
                who = _consumer_id(consumer, metric.consumer)
                if who is not None:
                    tags.append(consumer_tag + who)
            tags += metric.tags
            out.append(f"{metric.stat}{values[metric.name]}{metric.suffix}|#{','.join(tags)}".encode())
        return out

    async def send(self, batch: list[Any]) -> None:
        """Each datagram of the batch; one that fails is logged and the next is sent. SendError (the queue retries
        the batch) when there is no agent to send to or no socket could be made."""
        if self.sender is None:
            raise SendError(self.no_agent)
        await self.sender.send_each([line for lines in batch for line in lines], "datadog")


def _agent(host: str | None, port: int | None) -> tuple[str, int] | str:
    """The agent's (host, port): the config's, a null one from the gateway's environment as Kong reads it
    (statsd_logger.lua:23-29: KONG_DATADOG_AGENT_HOST, tonumber(KONG_DATADOG_AGENT_PORT)); else why there is none."""
    host = host or os.environ.get("KONG_DATADOG_AGENT_HOST") or None
    if port is None:
        text = os.environ.get("KONG_DATADOG_AGENT_PORT", "").strip()
        port = int(text) if text.isdigit() and 0 < int(text) < 65536 else None
    if host is None:
        return ("datadog: no agent host to send the metrics to: the plugin's host is null and KONG_DATADOG_AGENT_HOST "
                "is not set in the gateway's environment; set one of them")
    if port is None:
        return ("datadog: no agent port to send the metrics to: the plugin's port is null and KONG_DATADOG_AGENT_PORT "
                "is not a port number in the gateway's environment; set one of them")
    return host, port


def _consumer_id(consumer: dict[str, Any], identifier: str) -> str | None:
    if identifier == "consumer_id":
        return str(consumer["id"]).replace("-", "_") if consumer.get("id") else None
    value = consumer.get(identifier)
    return str(value) if value is not None else None
