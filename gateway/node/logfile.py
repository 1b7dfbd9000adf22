"""gateway.log_file across log rotation: SIGUSR1 reopens it in every process that writes it, as nginx's reopen does
for its error_log (ngx_reopen_files, then ngx_log_redirect_stderr: stderr follows the reopened file).

A daemonised gateway's processes all log to their stderr (and stdout), which `gateway start` pointed at the log file
once. After logrotate renames it, they would keep writing into the renamed file. So the root, when its stderr is the
log file, names it in GATEWAY_LOG_FILE for its children; each process then opens the path again and dup2()s the new
descriptor onto 2 (and 1, when that was the same file): lines written before go to the old file, later ones to the
new, none lost (the swap is one system call; Python's line-buffered stderr writes whole lines to whatever fd 2 is).
A child also does it when it starts, as a fork of a zygote whose stderr predates the last rotation.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from gateway.node.files import LOG_MODE

LOG_FILE_ENV = "GATEWAY_LOG_FILE"
REOPEN_SIGNAL = signal.SIGUSR1  # nginx's reopen


def adopt(path: str) -> bool:
    """In the root, before any child starts: name `path` to the children if this process's stderr is that file
    (a daemonised start); else (a terminal, systemd's journal) there is nothing to reopen."""
    os.environ.pop(LOG_FILE_ENV, None)
    try:
        ours, theirs = os.fstat(2), os.stat(path)
    except OSError:
        return False
    if (ours.st_dev, ours.st_ino) != (theirs.st_dev, theirs.st_ino):
        return False
    os.environ[LOG_FILE_ENV] = os.path.abspath(path)
    return True


def reopen() -> str | None:
    """Open the log file again by its path and put it on fd 2 (and fd 1 where that was the same file); the path, or
    None when this process does not write the log file. Safe in a signal handler: it logs nothing and touches
    no Python stream."""
    path = os.environ.get(LOG_FILE_ENV)
    if not path:
        return None
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, LOG_MODE)
    except OSError:
        return None  # (the directory is gone: keep writing where we did rather than nowhere)
    try:
        targets = [2]
        with contextlib.suppress(OSError):
            out, err = os.fstat(1), os.fstat(2)
            if (out.st_dev, out.st_ino) == (err.st_dev, err.st_ino):
                targets.append(1)
        for target in targets:
            os.dup2(fd, target)
    finally:
        os.close(fd)
    return path


def _on_signal(signum: int, frame: FrameType | None) -> None:
    reopen()


def follow() -> None:
    """In a child of the root, first thing: write to the log file as it is now, and reopen it on SIGUSR1 (which would
    otherwise kill a process that does not handle it). A Trio receiver opened later for SIGUSR1 takes it over: see
    `also_on_signal`."""
    reopen()
    signal.signal(REOPEN_SIGNAL, _on_signal)


@contextlib.contextmanager
def also_on_signal() -> Iterator[None]:
    """While open, SIGUSR1 reopens the log file before it reaches the handler installed until now (a Trio signal
    receiver that reopens the access log); restored on the way out, unless that handler has since been replaced."""
    previous: Callable[[int, FrameType | None], Any] | int | None = signal.getsignal(REOPEN_SIGNAL)

    def handler(signum: int, frame: FrameType | None) -> None:
        reopen()
        if callable(previous):
            previous(signum, frame)

    signal.signal(REOPEN_SIGNAL, handler)
    try:
        yield
    finally:
        if signal.getsignal(REOPEN_SIGNAL) is handler:
            signal.signal(REOPEN_SIGNAL, previous)  # type: ignore[arg-type]
