"""Children forked from a zygote (supervisor.zygote / supervisor.forkserver): real processes, as with exec.

The zygote here is a small Python program that can run one child program (CHILD) by fork; the same program is what
exec runs, so a test can tell the two apart only by `started_by` and by what a fork makes different (speed).
"""

import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from supervisor import ChildInfo, ChildSpec, Handle, Process, SupervisorSpec, SupFlags, serve
from supervisor import forkserver as fs
from supervisor.forkserver import ForkServer

ROOT = str(Path(__file__).resolve().parents[2])
ENV = {**os.environ, "PYTHONPATH": ROOT}

CHILD = """\
import json, os, random, sys, time
from supervisor.ready import notify_ready
mode = sys.argv[1]
if mode == "marker":  # leave a trace that this process ran
    open(os.path.join(sys.argv[2], str(os.getpid())), "w").close()
info = {"pid": os.getpid(), "ppid": os.getppid(), "random": random.random(), "fds": os.listdir("/proc/self/fd"),
        "ready_fd": int(os.environ["SUPERVISOR_READY_FD"]), "mark": os.environ.get("MARK"), "cwd": os.getcwd(),
        "argv": sys.argv}
notify_ready(json.dumps(info))
if mode == "exit3":
    sys.exit(3)
time.sleep(30)
"""

ZYGOTE = f"""\
import os, sys, time
from supervisor.zygote import serve
CHILD = {CHILD!r}

def resolve(argv):
    if argv[:3] != [sys.executable, "-c", CHILD]:
        return None
    def entry():
        sys.argv = ["-c", *argv[3:]]
        exec(compile(CHILD, "<child>", "exec"), {{"__name__": "__main__"}})
    return entry

if len(sys.argv) > 2 and os.path.exists(sys.argv[2]):
    time.sleep(1)  # a slow start, as a real zygote's imports
sys.exit(serve(int(sys.argv[1]), resolve))
"""


def zygote(server: ForkServer, slow_if: Path | None = None) -> ChildSpec:
    """The zygote; it starts slowly (1 s) when the file `slow_if` exists."""
    fd = server.zygote_fd
    argv = [sys.executable, "-c", ZYGOTE, str(fd), *([str(slow_if)] if slow_if else [])]
    return ChildSpec("zygote", Process(argv, env=ENV, pass_fds=(fd,)))


def child(child_id: str, server: ForkServer | None, *args: str, code: str = CHILD, **options: object) -> ChildSpec:
    return ChildSpec(child_id, Process([sys.executable, "-c", code, *args], env={**ENV, "MARK": child_id},
                                       spawner=server), **options)


@pytest.fixture
def server():
    server = ForkServer()
    assert server.enabled, "these tests need Linux (pidfd_open, PR_SET_CHILD_SUBREAPER)"
    yield server
    server.close()


async def children(handle: Handle, predicate: Callable[[list[ChildInfo]], bool] = lambda cs: True) -> list[ChildInfo]:
    with trio.fail_after(10):
        while not predicate(found := await handle.which_children()):
            await trio.sleep(0.01)
    return found


def info(ref: object) -> dict:
    return json.loads(ref.value)  # type: ignore[attr-defined]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_a_child_is_forked_from_the_zygote_and_is_the_supervisors_own_child(server):
    spec = SupervisorSpec(children=[zygote(server), child("a", server, "sleep")])
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(serve, spec)
        zyg, a = await handle.which_children()
        assert zyg.pid.started_by == "exec" and a.pid.started_by == "fork"
        seen = info(a.pid)
        assert seen["pid"] == a.pid.os_pid and seen["ppid"] == os.getpid()  # re-parented to us before it ran
        assert seen["mark"] == "a" and seen["cwd"] == os.getcwd() and seen["argv"] == ["-c", "sleep"]
        await handle.stop()
    assert gone(a.pid.os_pid) and gone(zyg.pid.os_pid)


async def test_exit_reasons_of_forked_children_are_those_of_exec(server, caplog):
    spec = SupervisorSpec(SupFlags(intensity=5), [zygote(server), child("a", server, "sleep"),
                                                  child("b", server, "exit3", restart="temporary")])
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(serve, spec)
        _, a = await children(handle, lambda cs: len(cs) == 2)  # b exited (temporary: gone from the list)
        os.kill(a.pid.os_pid, signal.SIGKILL)
        _, again = await children(handle, lambda cs: cs[1].restart_count == 1 and cs[1].pid is not None)
        assert again.pid.started_by == "fork" and again.pid.os_pid != a.pid.os_pid
        await handle.stop()
    terminated = [r.getMessage() for r in caplog.records if "child_terminated" in r.getMessage()]
    assert any("child='a'" in m and "reason=killed by signal SIGKILL" in m for m in terminated)
    assert any("child='b'" in m and "reason=exit code 3" in m for m in terminated)
    assert not any("shutdown_error" in r.getMessage() for r in caplog.records)


async def test_a_forked_child_gets_its_descriptors_at_the_same_numbers_and_no_others(server):
    r, w = os.pipe()
    spec = SupervisorSpec(children=[zygote(server), ChildSpec("a", Process(
        [sys.executable, "-c", CHILD, "sleep"], env=ENV, pass_fds=(w,), spawner=server))])
    try:
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(serve, spec)
            _, a = await handle.which_children()
            seen = info(a.pid)
            fds = {int(fd) for fd in seen["fds"]}
            assert w in fds
            assert server.zygote_fd not in fds  # the zygote's control socket stays in the zygote
            assert len(fds - {0, 1, 2, w, seen["ready_fd"]}) == 1  # the one os.listdir had open
            await handle.stop()
    finally:
        os.close(r)
        os.close(w)


async def test_forked_children_do_not_share_random_state(server):
    spec = SupervisorSpec(children=[zygote(server), child("a", server, "sleep"), child("b", server, "sleep")])
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(serve, spec)
        _, a, b = await handle.which_children()
        assert a.pid.started_by == b.pid.started_by == "fork"
        assert info(a.pid)["random"] != info(b.pid)["random"]
        await handle.stop()


async def test_without_a_zygote_or_for_an_argv_it_does_not_know_children_are_started_with_exec(server):
    other = "from supervisor.ready import notify_ready; notify_ready(); import time; time.sleep(30)"
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(serve, SupervisorSpec(children=[child("early", server, "sleep")]))
        (early,) = await handle.which_children()
        assert early.pid.started_by == "exec"  # no zygote yet
        await handle.start_child(zygote(server))
        ref = await handle.start_child(child("other", server, code=other))
        assert ref.started_by == "exec"  # the zygote cannot run this argv
        ref = await handle.start_child(child("late", server, "sleep"))
        assert ref.started_by == "fork"
        await handle.stop()


async def test_losing_the_zygote_falls_back_to_exec_and_its_children_live_on(server, tmp_path):
    slow = tmp_path / "slow"
    async with trio.open_nursery() as nursery:
        # The zygote under a supervisor of its own, as in the gateway (root), so that restarting it (which takes that
        # supervisor's time, as in OTP) does not hold up the children's supervisor (workers@G).
        zygotes = await nursery.start(serve, SupervisorSpec(SupFlags(intensity=5), [zygote(server, slow)]))
        handle = await nursery.start(serve, SupervisorSpec(children=[child("a", server, "sleep")]))
        (zyg,) = await zygotes.which_children()
        (a,) = await handle.which_children()
        assert a.pid.started_by == "fork"
        slow.touch()
        os.kill(zyg.pid.os_pid, signal.SIGKILL)
        with trio.fail_after(5):
            while server.zygote_pid() is not None:
                await trio.sleep(0.01)
        ref = await handle.start_child(child("b", server, "sleep"))
        assert ref.started_by == "exec"  # the new zygote is still starting
        assert not gone(a.pid.os_pid) and info(a.pid)["ppid"] == os.getpid()
        with trio.fail_after(5):
            while server.zygote_pid() is None:
                await trio.sleep(0.01)
        ref = await handle.start_child(child("c", server, "sleep"))
        assert ref.started_by == "fork"
        await handle.stop()
        await zygotes.stop()


async def test_a_zygote_that_answers_too_late_forks_nothing_that_runs(server, tmp_path, monkeypatch):
    monkeypatch.setattr(fs, "REPLY_TIMEOUT_S", 0.3)
    monkeypatch.setattr(fs, "STRAY_SWEEP_S", 0.2)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        handle = await nursery.start(serve, SupervisorSpec(children=[zygote(server)]))
        (zyg,) = await handle.which_children()
        os.kill(zyg.pid.os_pid, signal.SIGSTOP)
        try:
            a = await handle.start_child(child("a", server, "marker", str(tmp_path)))
            assert a.started_by == "exec"
        finally:
            os.kill(zyg.pid.os_pid, signal.SIGCONT)
        # The zygote now reads a's request and forks, but nobody listens for the pid: that child must not run. The
        # next request is answered after it, so by then that child exists (and exits without running) ...
        b = await handle.start_child(child("b", server, "marker", str(tmp_path)))
        assert b.started_by == "fork"
        # ... and nothing is left of it: no zombie once the stray sweep went by.
        with trio.fail_after(5):
            while any(fs._is_zombie(pid) for pid in fs._own_children()):
                await trio.sleep(0.05)
        await handle.stop()
        nursery.cancel_scope.cancel()
    assert sorted(os.listdir(tmp_path)) == sorted([str(a.os_pid), str(b.os_pid)])


async def test_the_zygote_exits_normally_when_the_fork_server_closes(server, caplog):
    spec = SupervisorSpec(children=[ChildSpec("zygote", zygote(server).start, restart="temporary")])
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(serve, spec)
        (zyg,) = await handle.which_children()
        server.close()
        await children(handle, lambda cs: cs == [])
        await handle.stop()
    assert gone(zyg.pid.os_pid)
    assert zyg.pid.reason == "normal"
