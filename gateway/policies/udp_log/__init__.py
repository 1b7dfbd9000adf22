"""udp-log: Kong's JSON log entry per request, one datagram each, sent to a collector over UDP."""

from gateway.policies.udp_log.handler import UdpLog
from gateway.policies.udp_log.schema import UdpLogConfig

name = "udp-log"
priority = UdpLog.priority
schema = UdpLogConfig
consumer_scoped = True


def build(config: UdpLogConfig, plugin_id: str, shared: object) -> UdpLog:
    return UdpLog(config)
