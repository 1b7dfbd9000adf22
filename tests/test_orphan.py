"""A child of the root notices the root's end through a pidfd (gateway.node.orphan), with no wake-up meanwhile."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from backends import free_port
from e2e_helpers import blocking_get

ROOT = Path(__file__).resolve().parent.parent


def _watcher(seconds: float) -> subprocess.Popen[str]:
    """A process whose child runs stop_when_orphaned on it: the child prints 'stopped' when SIGTERM comes."""
    code = textwrap.dedent(f"""
        import os, signal, sys, time
        pid = os.fork()
        if pid == 0:
            import trio
            from gateway.node.orphan import stop_when_orphaned
            parent = os.getppid()
            async def main():
                with trio.open_signal_receiver(signal.SIGTERM) as signals:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(stop_when_orphaned, parent)
                        print("watching", flush=True)
                        async for _ in signals:
                            print("stopped", flush=True)
                            os._exit(0)
            trio.run(main)
        else:
            time.sleep({seconds})
            os._exit(0)
    """)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def test_a_child_stops_itself_soon_after_its_parent_exits() -> None:
    proc = _watcher(0.5)
    out, _ = proc.communicate(timeout=30)  # the pipe closes when the child has exited too
    assert out.split() == ["watching", "stopped"]


def test_a_watching_child_makes_no_wake_ups_while_its_parent_lives() -> None:
    trace = subprocess.run(["strace", "-V"], capture_output=True)
    if trace.returncode != 0:
        pytest.skip("strace is not installed")
    proc = _watcher(30)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "watching"
        child = int(open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()[0])
        out = subprocess.run(["timeout", "-s", "INT", "1.5", "strace", "-f", "-qq", "-e", "trace=epoll_wait,wait4,"
                              "getppid,clock_nanosleep", "-p", str(child)], capture_output=True, text=True)
        calls = [line for line in out.stderr.splitlines() if "(" in line and "resumed" not in line]
        assert len(calls) <= 2, calls  # the one pending epoll_wait (and its restart), no polling
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(p) for p in f.read().split()]
        except (OSError, ValueError):
            pass
    return out


def _can_unshare_pid() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, timeout=10)
    return probe.returncode == 0


def test_the_root_runs_as_pid_1_of_a_container_and_its_children_start(tmp_path: Path) -> None:
    """Kong's own image runs nginx as the container's PID 1: build/dockerfiles/entrypoint.sh line 68, `exec
    /usr/local/openresty/nginx/sbin/nginx -p "$PREFIX" -c nginx.conf` (deb.Dockerfile: ENTRYPOINT ["/entrypoint.sh"],
    STOPSIGNAL SIGQUIT), and nginx's master starts its workers there (src/os/unix/ngx_process_cycle.c,
    ngx_master_process_cycle -> ngx_start_worker_processes). An operator replacing that command with `gateway start
    --foreground` makes the root PID 1; its children then have getppid() == 1 legitimately (it is their parent, and
    GATEWAY_ROOT_PID says 1), where gateway/node/orphan.py parent_or_exit took `parent == 1` for "the root is gone":
    the keeper exited 1 before ready and the gateway could not start at all. Here a PID namespace (unshare --pid, as a
    container runtime makes one) puts the root at PID 1; it must serve."""
    if not _can_unshare_pid():
        pytest.skip("needs root and unshare --pid (a PID namespace, as a container has)")
    port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(json.dumps({
        "_format_version": "3.0",
        "gateway": {"listen": f"127.0.0.1:{port}", "status_listen": None, "drain_timeout": 1},
        "services": [{"name": "s", "url": "http://127.0.0.1:9", "routes": [{"name": "r", "paths": ["/"]}]}],
        "plugins": [{"name": "request-termination", "config": {"status_code": 200, "message": "pid 1"}}],
    }))
    log_path = tmp_path / "root.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "--kill-child",
                                 sys.executable, "-m", "gateway", "start", "--foreground", "--config", str(config),
                                 "--workers", "1"],
                                cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        code = 0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                code = blocking_get(port, timeout=2)
                break
            except OSError:
                time.sleep(0.1)
        output = log_path.read_text(errors="replace")[-2000:]
        assert proc.poll() is None, f"the gateway as PID 1 exited ({proc.returncode}):\n{output}"
        assert code == 200, output
    finally:
        for pid in _children(proc.pid):  # the namespace's PID 1 (the root): its death ends every process in it
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            proc.kill()
        except ProcessLookupError:
            pass
        proc.wait(10)
