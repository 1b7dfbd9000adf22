"""The metric files on a full filesystem (gateway.metrics.AllocatedDict, ValuesDict): their pages are allocated when
a file is created or grown, so a full disk is an error there, never a SIGBUS at a later write; the process keeps
serving without the label sets it has no room for, logs it once and counts it (kong_nginx_metric_errors_total), and
/metrics answers with what the files hold.

Kong keeps its metrics in a shared memory zone allocated whole when nginx starts (kong/conf_loader/init.lua:861
`lua_shared_dict prometheus_metrics 5m`; nginx release-1.27.1 src/os/unix/ngx_shmem.c:17, mmap MAP_ANON), and an
update it has no room for is logged and counted, never fatal (kong/plugins/prometheus/prometheus.lua:462-464,
`self._dict:incr(k, value, 0)`, on error `self._log_error_kv`, which counts in nginx_metric_errors_total: 1019-1022)."""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from backends import EchoBackend, request
from e2e_helpers import GatewayNode, wait_for
from prometheus_client.parser import text_string_to_metric_families

from gateway import metrics
from gateway.metrics import METRIC_ERRORS, RECORDER, AllocatedDict, StateGauge, ValuesDict, fold_dead_processes
from gateway.node.control import read_line

DEAD_PID = 5_000_000  # above any kernel's pid_max (2^22): never a live process
KEY = '["gateway_requests_total", "gateway_requests_total", {"code": "200", "route": "r"}, "h"]'


def _key(n: int) -> str:
    return KEY.replace('"r"', f'"r{n}"')


@pytest.fixture
def disk_full(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Makes every allocation of a metrics file fail as on a full filesystem (posix_fallocate: ENOSPC) once called."""

    def fill() -> None:
        def no_room(fd: int, offset: int, length: int) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(metrics.os, "posix_fallocate", no_room)

    return fill


@pytest.fixture
def errors_counted() -> Iterator[Any]:
    """How many metric errors this process has counted since the test began (RECORDER, flushed to METRIC_ERRORS)."""
    RECORDER.counts.pop((METRIC_ERRORS, ()), None)
    yield lambda: RECORDER.counts.get((METRIC_ERRORS, ()), 0)
    RECORDER.counts.pop((METRIC_ERRORS, ()), None)


def _allocated(path: Path) -> bool:
    stat = os.stat(path)
    return stat.st_blocks * 512 >= stat.st_size


def _no_room_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and "disk full" in r.getMessage()]


# --- the files ------------------------------------------------------------------------------------------------------


def test_a_metrics_file_has_every_page_allocated_when_created_and_when_grown(tmp_path: Path) -> None:
    """As Kong's shared dict is allocated whole at start, a metrics file is never sparse: prometheus_client's
    MmapedDict sizes it with truncate, and a write to a page the filesystem then has no room for is a SIGBUS."""
    path = tmp_path / "counter_1.db"
    values = AllocatedDict(str(path))
    try:
        assert path.stat().st_size == metrics.INITIAL_FILE_SIZE and _allocated(path)
        for n in range(2000):  # ~190 KB of entries: grown twice
            values.write_value(_key(n), n, 0.0)
        assert path.stat().st_size == 4 * metrics.INITIAL_FILE_SIZE and _allocated(path)
    finally:
        values.close()
    assert [(k, v) for k, v, _, _ in metrics.MmapedDict.read_all_values_from_file(str(path))][-1] == (_key(1999),
                                                                                                     1999.0)


def test_prometheus_client_values_write_to_allocated_files() -> None:
    """Every multiprocess value's file is made by ValuesDict (prometheus_client looks MmapedDict up at each file)."""
    from prometheus_client import values

    assert values.MmapedDict is ValuesDict


def test_a_file_the_full_disk_has_no_room_for_is_not_made_and_its_values_are_kept_out(
        tmp_path: Path, disk_full: Any, errors_counted: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A process started on a full disk (a worker restarted after a crash) serves on: its values stay out of the
    files (no file is left behind), each label set counts one metric error, and one line says where and why."""
    disk_full()
    values = ValuesDict(str(tmp_path / "counter_1.db"))
    values.write_value(_key(1), 5.0, 0.0)
    values.write_value(_key(1), 6.0, 0.0)
    values.write_value(_key(2), 1.0, 0.0)
    assert values.read_value(_key(1)) == (0.0, 0.0)
    values.close()
    assert list(tmp_path.iterdir()) == []
    assert errors_counted() == 2
    (line,) = _no_room_lines(caplog)
    assert "counter_1.db" in line and str(tmp_path) in line


def test_a_label_set_the_full_disk_cannot_grow_the_file_for_is_kept_out_and_the_others_written(
        tmp_path: Path, disk_full: Any, errors_counted: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A file full and its filesystem too: the label sets already in it are still written (their pages are
    allocated), a new one stays out and counts one error (once, however often it is written), logged once."""
    path = tmp_path / "counter_1.db"
    values = ValuesDict(str(path))
    disk_full()
    n = 0
    while not errors_counted():  # fill the file's first 64 KiB: the label set that would grow it is kept out
        values.write_value(_key(n), 1.0, 0.0)
        n += 1
    for _ in range(3):
        values.write_value(_key(n - 1), 7.0, 0.0)
        values.write_value(_key(n), 7.0, 0.0)
    values.write_value(_key(0), 42.0, 0.0)
    values.close()
    stored = {k: v for k, v, _, _ in metrics.MmapedDict.read_all_values_from_file(str(path))}
    assert path.stat().st_size == metrics.INITIAL_FILE_SIZE and n > 100
    assert stored[_key(0)] == 42.0 and _key(n - 2) in stored
    assert _key(n - 1) not in stored and _key(n) not in stored
    assert errors_counted() == 2
    assert len(_no_room_lines(caplog)) == 1


# --- folding and publishing ----------------------------------------------------------------------------------------


def test_a_fold_on_a_full_disk_leaves_the_dead_processes_files_as_they_were(
        tmp_path: Path, disk_full: Any, caplog: pytest.LogCaptureFixture) -> None:
    """The archive a scrape folds exited processes' files into cannot be made: the files stay, counted as before
    (a later scrape folds them), no half-written archive is left, and the scrape goes on."""
    dead = tmp_path / f"counter_{DEAD_PID}.db"
    values = AllocatedDict(str(dead))
    values.write_value(KEY, 3.0, 0.0)
    values.close()
    disk_full()
    assert fold_dead_processes(str(tmp_path)) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [dead.name]
    (line,) = _no_room_lines(caplog)
    assert str(tmp_path) in line


def test_a_state_publish_on_a_full_disk_keeps_the_last_rows_and_logs_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, errors_counted: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    """The keeper's target health and breaker states: a publish the disk has no room for leaves the last rows
    published (no .new file), counts an error each time, is logged once, and the next publish with room writes."""
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(tmp_path))
    gauge = StateGauge("test_disk_state", "h", ["target"])
    gauge.labels("a").set(1)
    gauge.publish()
    (published,) = tmp_path.iterdir()
    before = published.read_text()

    def no_room(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(metrics.json, "dump", no_room)
    for target in ("b", "c"):
        gauge.labels(target).set(1)
        gauge.publish()
    assert [p.name for p in tmp_path.iterdir()] == [published.name] and published.read_text() == before
    assert errors_counted() == 2 and len(_no_room_lines(caplog)) == 1
    monkeypatch.undo()
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(tmp_path))
    gauge.publish()
    assert '"c"' in published.read_text()


# --- a gateway whose run/metrics fills up ---------------------------------------------------------------------------

FLUSH_WAIT_S = 1.6  # workers hand their counts to the files every second


class FullDiskNode(GatewayNode):
    """A gateway whose run/metrics is a 1 MiB tmpfs of its own mount namespace (unshare -m: the mount goes with its
    processes), so a test can fill that filesystem (through /proc/<root>/root) as a busy access log fills a disk."""

    async def start(self, workers: int = 2) -> None:
        read_fd, write_fd = os.pipe()
        run = self.dir / "run"
        (run / "metrics").mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "gateway", "start", "--foreground", "--config", str(self.config),
                "--ready-fd", str(write_fd), "--workers", str(workers)]
        script = f'mount -t tmpfs -o size=1m tmpfs "{run / "metrics"}" && exec "$@"'
        with open(run / "gateway.log", "ab") as log:
            self.proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh",
                                          *argv], cwd=self.dir, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         pass_fds=(write_fd,), start_new_session=True)
        os.close(write_fd)
        line = await trio.to_thread.run_sync(read_line, read_fd, 60.0)
        self.root = self.proc.pid  # unshare and sh exec: the same process
        self.pids.add(self.root)
        assert line.startswith("ready"), f"gateway start failed: {line!r}\n{self.log()[-3000:]}"
        await self.status()

    def fill_metrics_filesystem(self) -> None:
        path = Path(f"/proc/{self.root}/root") / str(self.dir / "run" / "metrics").lstrip("/") / "filler"
        with open(path, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:  # ENOSPC: full
                pass


@pytest.fixture
def full_disk_node(tmp_path: Path) -> Iterator[Any]:
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                            f'mount -t tmpfs -o size=64k tmpfs "{tmp_path}"'], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a mount namespace here: {probe.stderr.decode()[:200]}")
    made: list[FullDiskNode] = []

    def make(doc: dict[str, Any]) -> FullDiskNode:
        made.append(FullDiskNode(tmp_path / f"gw{len(made)}", doc))
        return made[-1]

    try:
        yield make
    finally:
        for gw in made:
            gw.cleanup()


async def _restarted(gw: GatewayNode, victim: int) -> bool:
    pids = await gw.worker_pids()
    return len(pids) == 2 and victim not in pids


async def test_a_full_metrics_disk_neither_crash_loops_a_restarted_worker_nor_takes_the_gateway_down_at_a_scrape(
        nursery: trio.Nursery, full_disk_node: Any) -> None:
    """A worker restarted while the filesystem of run/metrics is full (an access log in run/ filled it) serves on
    through its metrics flushes (it died of SIGBUS at its first, and its replacement too, every second); a scrape
    then (the root writing its restart count to a new file, folding the dead worker's) answers with what the files
    hold (it killed the root of SIGBUS, and every worker with it)."""
    backend = EchoBackend()
    await nursery.start(backend.serve)
    gw = full_disk_node({"services": [{"name": "svc", "url": f"http://127.0.0.1:{backend.port}",
                                       "routes": [{"name": "r", "paths": ["/"]}]}],
                         "plugins": [{"name": "prometheus", "config": {"status_code_metrics": True}}]})
    await gw.start(workers=2)
    assert (await request(gw.port, "GET", "/a")).status == 200
    await trio.sleep(FLUSH_WAIT_S)
    gw.fill_metrics_filesystem()
    victim = (await gw.worker_pids())[0]
    os.kill(victim, signal.SIGKILL)  # the OOM killer, say
    await wait_for(lambda: _restarted(gw, victim), 10, what="the replacement worker")
    replacement = set(await gw.worker_pids())
    scrape = await request(gw.status_port, "GET", "/metrics")
    assert scrape.status == 200, gw.log()[-1500:]
    requests = [s.value for f in text_string_to_metric_families(scrape.body.decode())
                if f.name == "kong_http_requests" for s in f.samples if s.name == "kong_http_requests_total"]
    assert requests == [1.0]  # the request before the disk filled, in the files as it was
    await trio.sleep(2 * FLUSH_WAIT_S)  # the replacement's flushes
    assert gw.proc is not None and gw.proc.poll() is None, gw.log()[-1500:]
    assert set(await gw.worker_pids()) == replacement, gw.log()[-1500:]
    assert (await request(gw.port, "GET", "/b")).status == 200
    log = gw.log()
    assert "SIGBUS" not in log and f"{gw.dir / 'run' / 'metrics'} (disk full)" in log
