"""A child of the root notices the root's end through a pidfd (gateway.node.orphan), with no wake-up meanwhile."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest


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
