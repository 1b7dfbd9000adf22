"""tcp-log: Kong's JSON log entry per request, one line each, written to a collector over TCP (or TLS)."""

from gateway.policies.tcp_log.handler import TcpLog
from gateway.policies.tcp_log.schema import TcpLogConfig

name = "tcp-log"
priority = TcpLog.priority
schema = TcpLogConfig
consumer_scoped = True


def build(config: TcpLogConfig, plugin_id: str, shared: object) -> TcpLog:
    return TcpLog(config)
