"""syslog: Kong's JSON log entry per request, to the host's syslog daemon (gateway.syslog_socket, /dev/log)."""

from gateway.config.schema import GatewaySettings
from gateway.policies.syslog.handler import Syslog
from gateway.policies.syslog.schema import SyslogConfig

name = "syslog"
priority = Syslog.priority
schema = SyslogConfig
consumer_scoped = True


def build(config: SyslogConfig, plugin_id: str, shared: object, gateway: GatewaySettings) -> Syslog:
    return Syslog(config, gateway.syslog_socket)
