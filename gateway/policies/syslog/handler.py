"""Kong's syslog: every request's serialized entry, as JSON, to the host's syslog daemon as syslog(3) sends it, with
the `ident` "kong" and the worker's pid. The severity is the configured one for the response's class (below 400,
4xx, 5xx); an entry whose severity is less severe than `log_level` is not sent (nor serialized). Sent off the
request path by the worker's queue for the socket; as in Kong, nothing is sent twice (gateway.telemetry's
syslog_sender says what a failed send does)."""

from __future__ import annotations

import os
import time

from gateway.policies.syslog.schema import SyslogConfig
from gateway.telemetry.batch import QUEUES, BatchQueue, QueueConfig, Queues
from gateway.telemetry.entry import Entry
from gateway.telemetry.syslog_sender import Priorities, SyslogSender, header

QUEUE = QueueConfig(max_batch_size=1, max_coalescing_delay=0, max_retry_time=-1)  # a message each, at once, once
IDENT = b"kong"  # Kong's SENDER_NAME


class Syslog:
    name = "syslog"
    priority = 4  # Kong's
    entries = True  # its log step takes the whole Entry (gateway.telemetry.phase)

    def __init__(self, config: SyslogConfig, socket_path: str, queues: Queues = QUEUES) -> None:
        self.pris = Priorities(config.facility, config.log_level, config.successful_severity,
                               config.client_errors_severity, config.server_errors_severity)
        self.sender = SyslogSender(socket_path)
        self.queue: BatchQueue = queues.queue_for(f"syslog:{socket_path}", QUEUE, self.send, message)

    def log_entry(self, entry: Entry) -> None:
        pri = self.pris.of(entry.status)
        if pri is not None:
            self.queue.put((pri, entry))

    async def send(self, batch: list[bytes]) -> None:
        for datagram in batch:
            await self.sender.send(datagram)


def message(item: tuple[int, Entry]) -> bytes:
    """A (PRI, entry) the queue took as syslog(3)'s message, stamped as it is made: the queue then holds bytes,
    not the request (a daemon that does not keep up would otherwise keep thousands of requests alive)."""
    pri, entry = item
    return header(pri, IDENT, os.getpid(), time.time()) + entry.json()
