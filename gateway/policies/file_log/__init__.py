"""file-log: Kong's JSON log line per request, appended to a file by every worker."""

from gateway.policies.file_log.handler import FileLog
from gateway.policies.file_log.schema import FileLogConfig

name = "file-log"
priority = FileLog.priority
schema = FileLogConfig
consumer_scoped = True


def build(config: FileLogConfig, plugin_id: str, shared: object) -> FileLog:
    return FileLog(config)
