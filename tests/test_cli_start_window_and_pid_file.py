"""The pid file names the root from before its first child starts to its exit, and where the last reload put it.

nginx installs its signal handlers and writes its pid file before it starts a worker (release-1.27.1
src/core/nginx.c:345, :363, then ngx_master_process_cycle at :384 starts the workers), so `nginx -s stop` / `kong stop`
(kong/cmd/utils/nginx_signals.lua reads that pid file) during a start stops it; its reload with a new `pid` path
writes the new file and removes the old one (src/core/ngx_cycle.c:335-345), so the reloaded config's pid file finds
the master.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_helpers import GatewayNode

from gateway.cli import main
from gateway.node import control
from gateway.node.locate import alive
from gateway.node.root import descendants

SERVICES = {"services": [{"name": "s", "url": "http://127.0.0.1:9", "routes": [{"paths": ["/"]}]}]}


@pytest.fixture
def node(tmp_path: Path) -> Iterator[GatewayNode]:
    gw = GatewayNode(tmp_path / "gw", SERVICES, workers=1)
    try:
        yield gw
    finally:
        moved = gw.dir / "run2" / "gateway.pid"  # (where a reload below moves the pid file)
        if gw.root is None and moved.exists():
            gw.root = int(moved.read_text())
        gw.cleanup()


def _starting(node: GatewayNode) -> tuple[subprocess.Popen[bytes], int]:
    """A foreground root started as `gateway start` starts it, back as soon as its pid file and admin socket are
    there, its ready line not yet written (asserted): (the root, the read end of its --ready-fd pipe)."""
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "start", "--foreground", "--config", str(node.config),
                             "--workers", "1", "--ready-fd", str(write_fd)], cwd=node.dir, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(write_fd,),
                            start_new_session=True)
    os.close(write_fd)
    node.proc, node.root = proc, proc.pid
    node.pids.add(proc.pid)
    run = node.dir / "run"
    deadline = time.monotonic() + 20
    while not ((run / "gateway.pid").exists() and (run / "admin.sock").exists()):
        assert time.monotonic() < deadline and proc.poll() is None, "no pid file within 20 s of the start"
        time.sleep(0.005)
    assert not select.select([read_fd], [], [], 0)[0], "the pid file came only once the gateway was ready"
    return proc, read_fd


def _line(fd: int) -> str:
    with os.fdopen(fd, "rb") as pipe:
        return pipe.readline().decode().strip()


def test_stop_during_a_start_ends_the_start_and_every_process_it_had_started(node, monkeypatch, capsys):
    """nginx's pid file names the master before it starts a worker (src/core/nginx.c:363, :384), so a stop during
    the start reaches it: `gateway stop` stops the starting root (exit 0), whose start ends as Ctrl-C ends it (its
    ready pipe says "interrupted before it was ready", exit 130) with no process of it left."""
    proc, ready = _starting(node)
    started = descendants(proc.pid)
    monkeypatch.chdir(node.dir)
    code = main(["stop", "--timeout", "3"])
    assert (code, capsys.readouterr().err) == (0, "")
    assert not alive(proc.pid)
    assert proc.wait(5) == 130
    assert _line(ready) == "error interrupted before it was ready (every process it had started is stopped)"
    deadline = time.monotonic() + 3
    while [pid for pid in started if alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not [pid for pid in started if alive(pid)]
    assert not (node.dir / "run" / "gateway.pid").exists()


def test_status_during_a_start_answers_once_it_is_ready(node, monkeypatch, capsys):
    """The pid file names the starting root (src/core/nginx.c:363), so `gateway status` finds it, and waits for the
    start to end (as a busy supervisor's which_children is waited for): the tree once every worker accepts, not "not
    running" nor, after its 5 s wait, that it does not answer."""
    proc, ready = _starting(node)
    monkeypatch.chdir(node.dir)
    code = main(["status"])
    out = capsys.readouterr().out
    assert code == 0
    assert f"pid {proc.pid}" in out and "worker-1" in out, out
    assert select.select([ready], [], [], 0)[0] and _line(ready).startswith("ready ")  # (it answered once ready)


def test_status_during_a_start_longer_than_its_wait_says_it_is_starting(node, monkeypatch, capsys):
    """A start that outlasts the client's wait (a large config's takes seconds) is told as what it is: `gateway
    status` says the gateway is starting (exit 1: not ready), and the start goes on."""
    proc, ready = _starting(node)
    monkeypatch.chdir(node.dir)
    monkeypatch.setattr(control, "ADMIN_TIMEOUT_S", 0.5)
    code = main(["status"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith(f"gateway: starting (pid {proc.pid}, for "), err
    assert err.rstrip().endswith("not every worker accepts yet; ask again once it is ready (`stop` ends the start)")
    assert _line(ready).startswith("ready ")


async def test_a_reload_that_moves_the_pid_file_writes_the_new_one_and_removes_the_old(node, monkeypatch, capsys):
    """nginx's reload with a new `pid` path creates it and deletes the old one (src/core/ngx_cycle.c:335-345): the
    reload is no "next start" note, the new pid file names the root, the old one is gone, and `gateway stop --config`
    of the file it runs from stops it, the new pid file removed at its exit."""
    await node.start(workers=1)
    assert node.root is not None
    doc = json.loads(node.config.read_text())
    doc["gateway"]["pid_file"] = "run2/gateway.pid"
    node.config.write_text(json.dumps(doc))
    monkeypatch.chdir(node.dir)
    assert main(["reload"]) == 0
    assert capsys.readouterr().err == ""  # (no "note: gateway.pid_file changed; it takes effect at the next start")
    assert (node.dir / "run2" / "gateway.pid").read_text() == f"{node.root}\n"
    assert not (node.dir / "run" / "gateway.pid").exists()
    assert main(["stop", "--config", str(node.config), "--timeout", "5"]) == 0
    assert not alive(node.root)
    assert not (node.dir / "run2" / "gateway.pid").exists()
