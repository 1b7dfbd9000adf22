"""Kong's tcp-log: every request's serialized entry, JSON and a newline, written to a TCP (or TLS) collector off the
request path. Kong writes each entry from a timer of its own and drops it when the collector cannot be reached;
here the worker's queue for the collector writes the lines waiting together, at once (no coalescing delay), and
retries what failed as Kong's queue does (from 10 ms, doubling, for 60 s; meanwhile at most 10,000 entries wait,
the oldest dropped first and counted in gateway_log_queue_dropped_total), so a collector's restart loses nothing."""

from __future__ import annotations

from typing import Any

from gateway.policies.tcp_log.schema import TcpLogConfig
from gateway.telemetry.batch import QUEUES, BatchQueue, QueueConfig, Queues
from gateway.telemetry.entry import Entry
from gateway.telemetry.tcp_sender import TcpSender

QUEUE = QueueConfig(max_batch_size=1000, max_coalescing_delay=0)  # Kong's queue defaults otherwise


class TcpLog:
    name = "tcp-log"
    priority = 7  # Kong's
    entries = True  # its log step takes the whole Entry (gateway.telemetry.phase)

    def __init__(self, config: TcpLogConfig, queues: Queues = QUEUES) -> None:
        self.sender = TcpSender(config.host, config.port, tls=config.tls, sni=config.tls_sni,
                                timeout=config.timeout / 1000, keepalive=config.keepalive / 1000)
        # instances writing to the same collector with the same settings share a queue (and its connection)
        name = ":".join(str(x) for x in ("tcp-log", config.host, config.port, config.tls, config.tls_sni,
                                         config.timeout, config.keepalive))
        self.queue: BatchQueue = queues.queue_for(name, QUEUE, self.send, Entry.json_line, coalesce=False)

    def log_entry(self, entry: Entry) -> None:
        self.queue.put(entry)

    async def send(self, batch: list[Any]) -> None:
        """The lines waiting (the queue formatted each entry as one JSON line ending in a newline)."""
        await self.sender.send(b"".join(batch))
