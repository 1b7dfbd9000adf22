"""loggly: Kong's JSON log entry per request, in an RFC 5424 syslog message over UDP to Loggly."""

from gateway.policies.loggly.handler import Loggly
from gateway.policies.loggly.schema import LogglyConfig

name = "loggly"
priority = Loggly.priority
schema = LogglyConfig
consumer_scoped = True


def build(config: LogglyConfig, plugin_id: str, shared: object) -> Loggly:
    return Loggly(config)
