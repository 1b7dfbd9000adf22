"""Kong's file-log: every request's serialized entry as one JSON line appended to `path` (gateway.telemetry.lines:
O_APPEND, whole lines, written off the request path; SIGUSR1 or `reopen: true` follow log rotation)."""

from __future__ import annotations

from gateway.policies.file_log.schema import FileLogConfig
from gateway.telemetry.entry import Entry
from gateway.telemetry.lines import LineWriter, writer_for


class FileLog:
    name = "file-log"
    priority = 9  # Kong's
    entries = True  # its log step takes the whole Entry (gateway.telemetry.phase)

    def __init__(self, config: FileLogConfig, writer: LineWriter | None = None) -> None:
        self.writer = writer if writer is not None else writer_for(config.path)
        self.reopen = config.reopen  # this instance's lines open the file anew (another's to the file may not)

    def log_entry(self, entry: Entry) -> None:
        self.writer.defer(Entry.json_line, entry, self.reopen)
