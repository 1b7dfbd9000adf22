"""http-log: Kong's JSON log entries sent to a collector over HTTP in batches."""

from gateway.policies.http_log.handler import HttpLog
from gateway.policies.http_log.schema import HttpLogConfig

name = "http-log"
priority = HttpLog.priority
schema = HttpLogConfig
consumer_scoped = True


def build(config: HttpLogConfig, plugin_id: str, shared: object) -> HttpLog:
    return HttpLog(config)
