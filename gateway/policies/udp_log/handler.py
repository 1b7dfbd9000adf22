"""Kong's udp-log: every request's serialized entry, as JSON (no newline), in a datagram of its own to a collector,
off the request path (the worker's queue for the collector sends them). As in Kong, nothing is sent twice: a
datagram to a closed port is lost (the kernel tells the next send, which the sender then makes once more, as Kong's
fresh socket per entry never hears of it; gateway.telemetry.udp_sender), and an entry too large for a datagram
(over 65,507 bytes) is dropped and logged."""

from __future__ import annotations

from typing import Any

from gateway.policies.udp_log.schema import UdpLogConfig
from gateway.telemetry.batch import QUEUES, BatchQueue, QueueConfig, Queues
from gateway.telemetry.entry import Entry
from gateway.telemetry.udp_sender import UdpSender

QUEUE = QueueConfig(max_batch_size=1, max_coalescing_delay=0, max_retry_time=-1)  # a datagram each, at once, once


class UdpLog:
    name = "udp-log"
    priority = 8  # Kong's
    entries = True  # its log step takes the whole Entry (gateway.telemetry.phase)

    def __init__(self, config: UdpLogConfig, queues: Queues = QUEUES) -> None:
        self.sender = UdpSender(config.host, config.port, timeout=config.timeout / 1000)
        # instances sending to the same collector with the same settings share a queue (and its socket)
        name = ":".join(str(x) for x in ("udp-log", config.host, config.port, config.timeout))
        self.queue: BatchQueue = queues.queue_for(name, QUEUE, self.send, Entry.json)

    def log_entry(self, entry: Entry) -> None:
        self.queue.put(entry)

    async def send(self, batch: list[Any]) -> None:
        """One entry's JSON (the queue formatted it), as one datagram."""
        for datagram in batch:
            await self.sender.send(datagram)
