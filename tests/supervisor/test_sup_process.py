"""OS-process children: real, short-lived Python processes."""

import os
import signal
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
import trio

from supervisor import (
    ChildInfo,
    ChildSpec,
    ChildState,
    Handle,
    Process,
    ProcessStartError,
    StartError,
    SupervisorSpec,
    SupFlags,
    serve,
)

ROOT = str(Path(__file__).resolve().parents[2])
ENV = {**os.environ, "PYTHONPATH": ROOT}

READY = "from supervisor.ready import notify_ready; notify_ready({info!r})\n"
SLEEP = "import time; time.sleep(30)\n"
IGNORE_SIGTERM = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"


def python(code: str, start_timeout: float = 30.0) -> Process:  # an interpreter importing trio: slow when busy
    return Process([sys.executable, "-c", code], env=ENV, start_timeout=start_timeout)


def ready(info: str = "") -> str:
    return READY.format(info=info)


def child(child_id: str, code: str, **options: object) -> ChildSpec:
    return ChildSpec(child_id, python(code), **options)


def messages(caplog: pytest.LogCaptureFixture, kind: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if f": {kind}:" in r.getMessage()]


async def wait_for(handle: Handle, predicate: Callable[[list[ChildInfo]], bool]) -> list[ChildInfo]:
    with trio.fail_after(60):  # restarts start interpreters: seconds each on a busy machine
        while not predicate(children := await handle.which_children()):
            await trio.sleep(0.01)
    return children


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_child_is_started_once_it_calls_notify_ready(caplog: pytest.LogCaptureFixture) -> None:
    spec = SupervisorSpec(children=[child("p", ready('{"port": 8080}') + SLEEP)])
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(serve, spec)
        (info,) = await handle.which_children()
        assert info.pid.value == '{"port": 8080}'
        os_pid = info.pid.os_pid
        assert not gone(os_pid)
        await handle.stop()
    assert gone(os_pid)
    assert messages(caplog, "shutdown_error") == []


@pytest.mark.parametrize(
    ("code", "start_timeout", "message"),
    [
        ("raise SystemExit(3)", 5.0, "exited before ready: exit code 3"),
        (SLEEP, 0.3, "not ready within 0.3 s"),
        ("print('hello', file=open(int(__import__('os').environ['SUPERVISOR_READY_FD']), 'w'))", 5.0, "bad readiness"),
    ],
)
async def test_child_that_does_not_become_ready_fails_the_start(code: str, start_timeout: float, message: str) -> None:
    spec = SupervisorSpec(children=[ChildSpec("p", python(code, start_timeout))])
    async with trio.open_nursery() as nursery:
        with pytest.raises(StartError, match=message):
            await nursery.start(serve, spec)


async def test_a_child_that_says_why_it_cannot_start_fails_the_start_with_its_words() -> None:
    """`error <why>` on the readiness pipe: the start fails with that reason, kept as ProcessStartError.said for
    whoever reports it (the gateway's root prints it as the one line it is)."""
    code = ("print('error gateway.bus: cannot bind', "
            "file=open(int(__import__('os').environ['SUPERVISOR_READY_FD']), 'w'))")
    spec = SupervisorSpec(children=[ChildSpec("p", python(code, 5.0))])
    async with trio.open_nursery() as nursery:
        with pytest.raises(StartError) as raised:
            await nursery.start(serve, spec)
    reason = raised.value.reason
    assert isinstance(reason, ProcessStartError)
    assert reason.said == "gateway.bus: cannot bind"
    assert str(reason) == "cannot start: gateway.bus: cannot bind"


async def test_exit_codes_map_to_normal_and_abnormal_exits(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    marker = tmp_path / "crashed"
    crash_once = f"import os, sys\nif not os.path.exists({str(marker)!r}): open({str(marker)!r}, 'w'); sys.exit(3)\n"
    spec = SupervisorSpec(
        SupFlags(intensity=5),
        [
            child("crashy", ready() + crash_once + SLEEP),
            child("done", ready() + "raise SystemExit(0)", restart="transient"),
        ],
    )
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(serve, spec)
        children = await wait_for(
            handle, lambda cs: cs[0].restart_count == 1 and cs[0].pid and cs[1].state is ChildState.STOPPED
        )
        assert children[0].state is ChildState.RUNNING
        await handle.stop()
    (terminated,) = messages(caplog, "child_terminated")
    assert "child='crashy'" in terminated and "reason=exit code 3" in terminated


async def test_sigkill_from_outside_is_abnormal_and_the_child_is_restarted(caplog: pytest.LogCaptureFixture) -> None:
    spec = SupervisorSpec(children=[child("p", ready() + SLEEP)])
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(serve, spec)
        (info,) = await handle.which_children()
        os.kill(info.pid.os_pid, signal.SIGKILL)
        (restarted,) = await wait_for(handle, lambda cs: cs[0].restart_count == 1 and cs[0].pid is not None)
        assert restarted.pid.os_pid != info.pid.os_pid
        await handle.stop()
    (terminated,) = messages(caplog, "child_terminated")
    assert "reason=killed by signal SIGKILL" in terminated and f"os_pid={info.pid.os_pid}" in terminated


@pytest.mark.parametrize(("shutdown", "least", "most"), [(300, 0.3, 3.0), ("brutal_kill", 0.0, 0.25)])
async def test_child_ignoring_sigterm_is_killed_after_the_shutdown_timeout(
    shutdown: object, least: float, most: float, caplog: pytest.LogCaptureFixture
) -> None:
    spec = SupervisorSpec(children=[child("p", IGNORE_SIGTERM + ready() + SLEEP, shutdown=shutdown)])
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(serve, spec)
        (info,) = await handle.which_children()
        began = trio.current_time()
        await handle.stop()
        assert least <= trio.current_time() - began < most
    assert gone(info.pid.os_pid)
    # OTP reports a child that had to be killed after its timeout; brutal_kill expects the kill.
    assert len(messages(caplog, "shutdown_error")) == (1 if shutdown == 300 else 0)


async def test_tree_of_process_children_with_nested_supervisors() -> None:
    workers = SupervisorSpec(
        SupFlags("one_for_all", intensity=3),
        [child(f"w{n}", ready(f"w{n}") + SLEEP) for n in range(2)],
        "workers",
    )
    root = SupervisorSpec(
        SupFlags("rest_for_one"),
        [child("db", ready("db") + SLEEP), ChildSpec("workers", partial(serve, workers), type="supervisor")],
        "root",
    )
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(serve, root)
        db, sub = await handle.which_children()
        workers_handle = sub.pid.value
        before = [c.pid.os_pid for c in await workers_handle.which_children()]
        os.kill(before[1], signal.SIGKILL)
        after = await wait_for(workers_handle, lambda cs: all(c.pid and c.restart_count == 1 for c in cs))
        assert not {c.pid.os_pid for c in after} & set(before)
        assert all(gone(pid) for pid in before)
        assert [c.restart_count for c in await handle.which_children()] == [0, 0]
        await handle.stop()
    assert all(gone(c.pid.os_pid) for c in [db, *after])


async def test_simple_one_for_one_process_children_get_extra_args_on_their_command_line() -> None:
    code = "import sys\nfrom supervisor.ready import notify_ready\nnotify_ready(sys.argv[1])\n" + SLEEP
    spec = SupervisorSpec(SupFlags("simple_one_for_one"), [child("conn", code)])
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(serve, spec)
        refs = [await handle.start_child([name]) for name in ("x", "y")]
        assert [ref.value for ref in refs] == ["x", "y"]
        await handle.stop()
    assert all(gone(ref.os_pid) for ref in refs)
