"""Kong's statsd: metrics of every request whose status is allowed, as statsd lines (gateway.policies.statsd.lines)
to a statsd server over UDP (a datagram per line, or lines combined up to `udp_packet_size`) or TCP (each line and a
newline), off the request path through Kong's queue (`queue`; Kong's queue of a statsd instance is its own, named by
the plugin's id, and so is it here).

As in Kong: a batch whose socket could not be made (over UDP, a host name that does not resolve; over TCP, a
connection that could not be made) is retried as the queue says (Kong's logger fails to connect, statsd/log.lua:370-374
returns false and its queue retries the batch); over UDP a line sent while the server's port is closed is lost, the
batch is never sent again (gateway.telemetry.udp_sender). Over TCP the batch's lines go in one write, so a write that
fails is retried too, where Kong logs it and goes on: after a connection was made, that is rare."""

from __future__ import annotations

import socket

from gateway.policies.statsd.lines import Formatter, Packer
from gateway.policies.statsd.schema import StatsdConfig
from gateway.telemetry.batch import QUEUES, BatchQueue, Queues
from gateway.telemetry.entry import Entry, summary
from gateway.telemetry.tcp_sender import TcpSender
from gateway.telemetry.udp_sender import UdpSender

HOSTNAME = socket.gethostname().replace(".", "_")  # Kong's node hostname with dots as "_", read once
TCP_TIMEOUT_S = 1.0  # statsd_logger.lua: sock:settimeout(1000) to connect and send
TCP_KEEPALIVE_S = 60.0  # sock:setkeepalive() with no arguments: lua_socket_keepalive_timeout's default
SEPARATOR = b"\xff"  # between an entry's lines in the queue: never in UTF-8, so a value's "\n" stays in its line


class Statsd:
    name = "statsd"
    priority = 11  # Kong's
    entries = True  # its log step takes the whole Entry (gateway.telemetry.phase)

    def __init__(self, config: StatsdConfig, plugin_id: str, queues: Queues = QUEUES,
                 hostname: str = HOSTNAME) -> None:
        self.formatter = Formatter(config, hostname)
        self.packet_size = config.udp_packet_size
        self.sender: UdpSender | TcpSender
        if config.use_tcp:
            self.sender = TcpSender(config.host, config.port, timeout=TCP_TIMEOUT_S, keepalive=TCP_KEEPALIVE_S)
        else:
            self.sender = UdpSender(config.host, config.port)
        # the instance's own queue, as Kong names it by the plugin's id; another config of it gets another queue
        self.queue: BatchQueue = queues.queue_for(f"statsd:{plugin_id}", config.queue, self.send, self.format,
                                                  settings=[config, hostname], sized=False)  # Kong queues tables

    def log_entry(self, entry: Entry) -> None:
        if self.formatter.metrics and self.formatter.allows(entry.status):
            self.queue.put(entry)

    def format(self, entry: Entry) -> bytes:
        """An entry's lines, made when the queue takes it: the queue then holds bytes, not the request."""
        return SEPARATOR.join(line.encode() for line in self.formatter.lines(summary(entry)))

    async def send(self, batch: list[bytes]) -> None:
        """The lines of a batch's entries, as statsd_logger.lua sends them (one logger for the whole batch)."""
        lines = [line for item in batch if item for line in item.split(SEPARATOR)]
        if not lines:
            return
        if isinstance(self.sender, TcpSender):
            await self.sender.send(b"".join(line + b"\n" for line in lines))  # raises SendError: retried
            return
        packer = Packer(self.packet_size)
        datagrams = [datagram for line in lines if (datagram := packer.add(line)) is not None]
        datagram = packer.flush()
        if datagram is not None:
            datagrams.append(datagram)
        await self.sender.send_each(datagrams, "statsd")  # raises SendError when no socket could be made: retried
