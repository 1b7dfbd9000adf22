"""The gateway's own files failing under it: an MCP audit FIFO with no reader, a rotated audit log, a run directory
that turned read-only. None of them may stop a worker or the gateway: each is logged, and what it held is dropped
(lines) or left behind (files), as nginx does."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio
from e2e_helpers import HoldingBackend, admin_now, blocking_get, gateway_in_front_of, has_exited, request_in_flight

from gateway.config import parse_config
from gateway.http.server import ConnectionSet
from gateway.mcp.audit import AuditLog, Record
from gateway.node import control, root
from gateway.telemetry.service import WorkerTelemetry

NOT_WAITED_S = 1.0  # a flush that takes longer than this waited for the FIFO


def _record(rpc_id: int) -> Record:
    return Record(1767225600.0, "mcp", "alice", None, "127.0.0.1", None, None, "search", "allowed", None, 200,
                  rpc_id, "127.0.0.1:1", 0.1)


def _flush_in_time(audit: AuditLog, fifo: Path) -> bool:
    """Whether `audit.flush()` returned within NOT_WAITED_S; if not, a reader comes and frees it (bounding the test)."""
    thread = threading.Thread(target=audit.flush, daemon=True)
    thread.start()
    thread.join(NOT_WAITED_S)
    if not thread.is_alive():
        return True
    os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
    thread.join(5)
    return False


def _read_lines(fd: int) -> int:
    """The lines a FIFO reader has waiting."""
    try:
        return os.read(fd, 65536).count(b"\n")
    except BlockingIOError:
        return 0


def test_an_audit_fifo_without_a_reader_is_not_waited_for(tmp_path: Path) -> None:
    """README (MCP governance): a file that cannot be written is logged once and its lines dropped, never waited
    for. The audit log is written by the access log's writer (gateway.telemetry.lines), which opens with O_NONBLOCK:
    a FIFO with no reader is ENXIO, the batch is dropped (the worker never blocks in open(2)), and a later batch
    opens it once a reader came."""
    fifo = tmp_path / "audit.fifo"
    os.mkfifo(fifo)
    audit = AuditLog(str(fifo))
    audit.put(_record(1))
    assert _flush_in_time(audit, fifo), "the audit log waited in open(2) for a reader of its FIFO"
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        audit.put(_record(2))
        assert audit.flush() == 1 and _read_lines(reader) == 1  # (the reader came: the next batch reaches it)
    finally:
        os.close(reader)


def test_an_audit_fifo_whose_reader_left_keeps_its_descriptor_and_is_not_waited_for(tmp_path: Path) -> None:
    """src/http/modules/ngx_http_log_module.c ngx_http_log_write: a failed write (EPIPE: the reader left) is logged
    and the descriptor kept, never reopened; the FIFO's next reader gets the next lines. Reopening it would block
    in open(2) until a reader came."""
    fifo = tmp_path / "audit.fifo"
    os.mkfifo(fifo)
    audit = AuditLog(str(fifo))
    first = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    audit.put(_record(1))
    assert audit.flush() == 1 and _read_lines(first) == 1
    os.close(first)
    audit.put(_record(2))
    assert audit.flush() == 0  # EPIPE: dropped
    audit.put(_record(3))
    assert _flush_in_time(audit, fifo), "after its reader left, the audit log waited in open(2) for another"
    second = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        audit.put(_record(4))
        assert audit.flush() == 1 and _read_lines(second) == 1
    finally:
        os.close(second)


async def test_sigusr1_reopens_the_mcp_audit_log(nursery: trio.Nursery, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """logrotate renames the file, then `kill -USR1`: nginx's reopen reopens every file of the cycle
    (src/os/unix/ngx_process_cycle.c ngx_reopen_files), so the next line goes to a new file, none to the renamed one.
    The worker's SIGUSR1 receiver (WorkerTelemetry.run) reopens the audit log as it does the access log."""
    path = tmp_path / "audit.log"
    telemetry = WorkerTelemetry(parse_config('_format_version: "3.0"\ngateway: {access_log: false}\n'),
                                ConnectionSet())
    await nursery.start(telemetry.run)
    audit = AuditLog(str(path))
    audit.put(_record(1))
    assert audit.flush() == 1
    path.rename(tmp_path / "audit.log.1")
    with caplog.at_level(logging.INFO, logger="gateway.telemetry"):
        os.kill(os.getpid(), signal.SIGUSR1)
        with trio.fail_after(2):
            while not any("reopening log files" in r.getMessage() for r in caplog.records):
                await trio.sleep(0.01)
    audit.put(_record(2))
    assert audit.flush() == 1
    assert (tmp_path / "audit.log.1").read_bytes().count(b"\n") == 1, "the line after SIGUSR1 went to the renamed file"
    assert path.read_bytes().count(b"\n") == 1


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """`directory` made read-only in place (a read-only bind mount of itself: what a filesystem remounted ro after an
    I/O error, or a directory that lost its write permission, does to unlink(2); as root, chmod would not); skipped
    where mounting is not permitted. Descriptors already open for writing (the log file) go on writing."""
    done = subprocess.run(["mount", "--bind", str(directory), str(directory)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount {directory} (needs root and mount permission): {done.stderr.strip()}")
    try:
        remount = subprocess.run(["mount", "-o", "remount,bind,ro", str(directory)], capture_output=True, text=True)
        if remount.returncode != 0:
            pytest.skip(f"cannot remount {directory} read-only: {remount.stderr.strip()}")
        yield
    finally:
        subprocess.run(["umount", str(directory)], capture_output=True)


def test_a_run_directory_file_that_cannot_be_removed_is_logged_and_left(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """src/core/ngx_cycle.c ngx_delete_pidfile: `unlink() "%s" failed` is logged at alert and nginx carries on. The
    root's _remove (a retired generation's config copy, the pid file at exit) logs one line naming the file and the
    error, and returns, so the caller's next steps run."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    copy = run_dir / "config.gen1.yaml"
    copy.write_text("_format_version: '3.0'\n")
    with read_only(run_dir), caplog.at_level(logging.ERROR, logger="gateway.node"):
        root._remove(str(copy))
        root._remove(str(run_dir / "gone.yaml"))  # (not there: nothing to say)
    assert copy.exists()
    assert [r.getMessage() for r in caplog.records] == [
        f"cannot remove {copy}: Read-only file system; it is left behind (remove it once its directory is writable "
        "again)"]


async def test_a_read_only_run_directory_when_a_retired_generation_ends_leaves_the_gateway_serving(
        tmp_path: Path) -> None:
    """A reload's old generation drains a request while the run directory turns read-only; when it ends the root
    cannot remove config.gen1.yaml (Node._retire). nginx never stops serving because it cannot delete a file
    (src/core/ngx_cycle.c ngx_delete_pidfile logs `unlink() failed` and carries on): the root logs it and goes on,
    generation 2 serving."""
    backend = HoldingBackend(10)
    with contextlib.contextmanager(gateway_in_front_of)(backend, tmp_path) as gw:
        await gw.start(workers=1)
        assert gw.root is not None
        thread, codes = request_in_flight(gw.port, backend)  # held by generation 1's worker
        reply = admin_now(gw, "reload")
        assert reply.ok, reply
        with read_only(gw.dir / "run"):
            backend.release()  # generation 1's last request ends: it exits, the root cleans up after it
            thread.join(5)
            assert codes == [200]
            with trio.fail_after(3):
                while "generation 1 has stopped" not in gw.log() and not has_exited(gw.root):
                    await trio.sleep(0.02)
            alive = not has_exited(gw.root)
            status = blocking_get(gw.port, "/") if alive else 0
        assert alive, f"the root exited: {gw.log().strip().splitlines()[-1]}"
        assert status == 200
        assert "cannot remove" in gw.log() and "config.gen1.yaml: Read-only file system" in gw.log()


def test_an_error_after_the_gateway_was_up_is_not_reported_as_a_failure_to_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`gateway: cannot start: ...` is for a gateway that never accepted; one whose workers all accepted (the root's
    ready callback) and that later fails says it stopped, and why."""

    class UpThenFails:
        def __init__(self, config_path: str, workers: int | None, ready: Callable[[str], None]) -> None:
            self.ready = ready

        async def run(self) -> int:
            self.ready("pid 1, 1 workers")
            raise OSError(errno.EROFS, "Read-only file system", "run/gateway.pid")

    monkeypatch.chdir(tmp_path)
    (tmp_path / "gateway.yaml").write_text('_format_version: "3.0"\ngateway: {listen: "127.0.0.1:8000"}\n')
    monkeypatch.setattr(root, "Node", UpThenFails)
    assert control.start_foreground("gateway.yaml", None, None) == control.EXIT_FAILURE
    err = capsys.readouterr().err
    assert "cannot start" not in err
    assert err == ("gateway: stopped after it had started, on an error: run/gateway.pid: Read-only file system; "
                   "fix that and start it again\n")
