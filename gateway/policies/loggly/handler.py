"""Kong's loggly: every request's serialized entry, as JSON, in an RFC 5424 syslog message of its own over UDP to
Loggly, `<PRI>1 <UTC time> <hostname> kong - - [<key>@41058 tag="kong"] {json}`. The facility is user; the severity
the configured one for the response's class (below 400, 4xx, 5xx); an entry whose severity is less severe than
`log_level` is not sent (nor serialized). Off the request path; as in Kong, nothing is sent twice (what is sent
while the port is closed is lost: gateway.telemetry.udp_sender)."""

from __future__ import annotations

import socket
import time

from gateway.policies.loggly.schema import LogglyConfig
from gateway.telemetry.batch import QUEUES, BatchQueue, QueueConfig, Queues
from gateway.telemetry.entry import Entry
from gateway.telemetry.syslog_sender import Priorities
from gateway.telemetry.udp_sender import UdpSender

QUEUE = QueueConfig(max_batch_size=1, max_coalescing_delay=0, max_retry_time=-1)  # a datagram each, at once, once
HOSTNAME = socket.gethostname()  # Kong's kong.node.get_hostname(), read once


class Loggly:
    name = "loggly"
    priority = 6  # Kong's
    entries = True  # its log step takes the whole Entry (gateway.telemetry.phase)

    def __init__(self, config: LogglyConfig, queues: Queues = QUEUES) -> None:
        self.pris = Priorities("user", config.log_level, config.successful_severity,
                               config.client_errors_severity, config.server_errors_severity)
        tags = " ".join(f'tag="{tag}"' for tag in config.tags)
        self.structured = f" {HOSTNAME} kong - - [{config.key}@41058 {tags}] ".encode()
        self.sender = UdpSender(config.host, config.port, timeout=config.timeout / 1000)
        name = ":".join(str(x) for x in ("loggly", config.host, config.port, config.timeout))
        self.queue: BatchQueue = queues.queue_for(name, QUEUE, self.send, self.message,
                                                  settings=[config.key, config.tags])

    def log_entry(self, entry: Entry) -> None:
        pri = self.pris.of(entry.status)
        if pri is not None:
            self.queue.put((pri, entry))

    def message(self, item: tuple[int, Entry]) -> bytes:
        """A (PRI, entry) the queue took, as Kong's merge() writes it, stamped as it is made: the queue then holds
        bytes, not the request."""
        pri, entry = item
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())  # Kong's os.date("!%Y-%m-%dT%XZ")
        return b"<%d>1 %s%s%s" % (pri, stamp.encode(), self.structured, entry.json())

    async def send(self, batch: list[bytes]) -> None:
        for datagram in batch:
            await self.sender.send(datagram)
