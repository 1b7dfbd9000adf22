"""Appending whole lines to a log file from any number of worker processes, with nothing interleaved or lost.

Every process opens the file with O_APPEND (as Kong's file-log and nginx's access_log do): each write() lands at the
end of the file as one piece, so lines from different workers never interleave. A writer collects lines (or entries
still to format) as requests finish and writes them in one write() per batch from a task that runs as soon as the
request tasks of the moment have run: under load many lines per system call, at rest one per request, never more
than a scheduler round late. Formatting happens in that task, off the request path.

For a file that is not a regular file (a pipe, /dev/stdout) a write is atomic only up to PIPE_BUF, so lines are
written one by one there. Files are opened with O_NONBLOCK, so a worker never waits to open one: a FIFO with no
reader is not opened (ENXIO; opened by a later batch once one came); once open, writes block as nginx's do (a full
pipe is waited for, never given half a line). A failed write
keeps the descriptor of such a file, as nginx keeps it (ngx_http_log_write): the FIFO's next reader gets the next
lines. `reopen()` (SIGUSR1, as nginx's `reopen`) closes every file, which is opened again by the next write: after
logrotate has moved it, the next lines go to a new file. A batch with a line of file-log's `reopen` closes the file
first and keeps the one it opens, as Kong's per-path file cache does. A file that cannot be opened or written is
reported once per reason; its lines are counted as dropped (gateway_log_lines_dropped_total) and lost, never waited
for.

The same writer serves gateway.access_log, the file-log plugin and any other line log (the MCP audit log):
`writer_for(path)` returns the process's one writer for a path, `stdout_writer()` that of standard output (descriptor
1, written line by line and never closed).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable
from typing import Any

import trio
from prometheus_client import Counter

from gateway.metrics import RECORDER

log = logging.getLogger("gateway.telemetry")

FILE_MODE = 0o644  # Kong's file-log: S_IRUSR | S_IWUSR | S_IRGRP | S_IROTH
# O_NONBLOCK: opening a FIFO for writing waits for a reader without it (cleared once open)
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NONBLOCK
MAX_BATCH_BYTES = 1 << 20  # a batch is written in pieces of at most this many bytes (each of whole lines)
STDOUT = "-"  # the path of the writer of standard output (writer_for's paths are absolute: no file is named so)

DROPPED = Counter("gateway_log_lines_dropped_total", "Log lines that could not be written (the file could not be "
                  "opened or written), by file", ["path"])

Formatter = Callable[[Any], bytes]


class LineWriter:
    """One file's pending lines in this process. `put` and `defer` only append to a list."""

    __slots__ = ("path", "_mode", "_reopen", "_fd", "_regular", "_pending", "_owner", "_failed")

    def __init__(self, path: str, owner: Lines, mode: int = FILE_MODE) -> None:
        self.path = path
        self._mode = mode  # of the file, if opening it creates it
        self._reopen = False  # a pending line asked for the file to be opened anew (file-log's `reopen`)
        self._fd = -1
        self._regular = True
        self._pending: list[tuple[Formatter | None, Any]] = []
        self._owner = owner
        self._failed: str | None = None  # the last error reported, so a broken file is logged once per reason

    def put(self, line: bytes, reopen: bool = False) -> None:
        """Queue a formatted line (ending with a newline); with `reopen`, the file is opened anew to write it
        (file-log's `reopen`, decided by the plugin instance that writes, as Kong decides it: kong/plugins/file-log/
        handler.lua:38-59 closes the path's cached file before the write and keeps the one it opens, which the next
        write without `reopen` uses)."""
        if not self._pending:
            self._owner.dirty(self)
        self._pending.append((None, line))
        if reopen:
            self._reopen = True

    def defer(self, formatter: Formatter, item: Any, reopen: bool = False) -> None:
        """Queue `item`, to be formatted by `formatter(item) -> bytes` (one line) when the batch is written."""
        if not self._pending:
            self._owner.dirty(self)
        self._pending.append((formatter, item))
        if reopen:
            self._reopen = True

    @property
    def pending(self) -> int:
        return len(self._pending)

    def flush(self) -> int:
        """Format and write what is pending; returns the number of lines written."""
        pending, self._pending = self._pending, []
        if not pending:
            return 0
        reopen, self._reopen = self._reopen, False
        lines = []
        for formatter, item in pending:
            if formatter is None:
                lines.append(item)
                continue
            try:
                lines.append(formatter(item))
            except Exception:  # one bad entry must not cost the batch
                log.exception("log %s: could not format an entry", self.path)
                RECORDER.count(DROPPED, (self.path,))
        if reopen:
            self.close()
        fd = self._open()
        if fd < 0:
            RECORDER.count(DROPPED, (self.path,), len(lines))
            return 0
        written = 0
        try:
            if self._regular:
                batch: list[bytes] = []
                size = 0
                for line in lines:
                    if size + len(line) > MAX_BATCH_BYTES and batch:
                        written += self._write(fd, batch)
                        batch, size = [], 0
                    batch.append(line)
                    size += len(line)
                written += self._write(fd, batch)
            else:
                for line in lines:
                    written += self._write(fd, [line])
        except OSError as e:
            self._report(f"cannot write: {e.strerror or e}")
            RECORDER.count(DROPPED, (self.path,), len(lines) - written)
            if self._regular:  # (a pipe's descriptor is kept: opening it again could only fail or race its reader)
                self.close()
        else:
            self._failed = None
        return written

    def _write(self, fd: int, lines: list[bytes]) -> int:
        data = b"".join(lines)
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(fd, view):]
            except InterruptedError:
                continue
        return len(lines)

    def _open(self) -> int:
        if self._fd >= 0:
            return self._fd
        if self.path == STDOUT:
            self._fd, self._regular = 1, False
            return 1
        try:
            fd = os.open(self.path, _FLAGS, self._mode)
        except OSError as e:
            self._report(f"cannot open: {e.strerror or errno.errorcode.get(e.errno or 0, e)}")
            return -1
        self._fd = fd
        os.set_blocking(fd, True)  # opened: its writes wait for a full pipe as nginx's do (no line cut in two)
        try:
            self._regular = stat.S_ISREG(os.fstat(fd).st_mode)
        except OSError:
            self._regular = False
        return fd

    def _report(self, why: str) -> None:
        if why != self._failed:
            self._failed = why
            log.error("log file %s: %s; its lines are dropped until it works again", self.path, why)

    def close(self) -> None:
        if self._fd >= 0 and self.path != STDOUT:  # (standard output is the process's: only forgotten here)
            try:
                os.close(self._fd)
            except OSError:
                pass
        self._fd = -1


class Lines:
    """The process's line writers (one per path) and the task that writes their batches."""

    def __init__(self) -> None:
        self.writers: dict[str, LineWriter] = {}
        self._dirty: list[LineWriter] = []
        self._wake: trio.Event | None = None  # set by `run`: without it, lines wait for flush()

    def writer_for(self, path: str, mode: int = FILE_MODE) -> LineWriter:
        """The one writer of `path` in this process (relative paths are taken from the working directory); `mode` is
        that of the file if the writer creates it (the first caller's)."""
        path = os.path.abspath(path)
        writer = self.writers.get(path)
        if writer is None:
            writer = self.writers[path] = LineWriter(path, self, mode)
        return writer

    def stdout_writer(self) -> LineWriter:
        """The one writer of this process's standard output."""
        writer = self.writers.get(STDOUT)
        if writer is None:
            writer = self.writers[STDOUT] = LineWriter(STDOUT, self)
        return writer

    def dirty(self, writer: LineWriter) -> None:
        self._dirty.append(writer)
        if len(self._dirty) == 1 and self._wake is not None:
            self._wake.set()

    def flush(self) -> int:
        """Write every pending line now; returns how many."""
        dirty, self._dirty = self._dirty, []
        return sum(writer.flush() for writer in dirty)

    def reopen(self) -> None:
        """Close every file: the next write opens it again (log rotation)."""
        for writer in self.writers.values():
            writer.close()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write batches as they come, until cancelled; what is pending then is written before returning."""
        self._wake = trio.Event()
        if self._dirty:
            self._wake.set()
        task_status.started()
        try:
            while True:
                await self._wake.wait()  # type: ignore[union-attr]
                self._wake = trio.Event()
                self.flush()
        finally:
            self._wake = None
            self.flush()

    def close(self) -> None:
        self.flush()
        for writer in self.writers.values():
            writer.close()


# The process's writers (workers write the access log and file-log lines; tests may make their own Lines).
LINES = Lines()


def writer_for(path: str) -> LineWriter:
    return LINES.writer_for(path)
