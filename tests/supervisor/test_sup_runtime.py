"""The Trio runtime with in-memory task children."""

import logging
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing

from supervisor import (
    ChildError,
    ChildExit,
    ChildRef,
    ChildSpec,
    ChildState,
    Handle,
    RestartIntensityExceeded,
    StartError,
    SupervisorNotRunning,
    SupervisorSpec,
    SupFlags,
    serve,
)


class Workers:
    """Task children that record their starts and stops, and crash or fail to start on demand."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.failing: set[str] = set()
        self._crash: dict[str, trio.Event] = {}

    def spec(self, name: str, **options: object) -> ChildSpec:
        return ChildSpec(name, partial(self.run, name), **options)

    async def run(self, name: str, *, task_status: trio.TaskStatus[str]) -> None:
        if name in self.failing:
            raise RuntimeError(f"{name} cannot start")
        self.events.append(("start", name))
        crash = self._crash[name] = trio.Event()
        task_status.started(name)
        try:
            await crash.wait()
        except trio.Cancelled:
            self.events.append(("stop", name))
            raise
        self.events.append(("crash", name))
        raise RuntimeError(f"{name} crashed")

    async def crash(self, name: str) -> None:
        self._crash[name].set()
        await trio.testing.wait_all_tasks_blocked()

    def take(self) -> list[tuple[str, str]]:
        events, self.events = self.events, []
        return events


def sup(workers: Workers, *names: str, name: str = "root", **flags: object) -> SupervisorSpec:
    return SupervisorSpec(SupFlags(**flags), [workers.spec(n) for n in names], name)


def events(kind: str, *names: str) -> list[tuple[str, str]]:
    return [(kind, name) for name in names]


async def test_children_start_in_order_and_stop_in_reverse_order() -> None:
    workers = Workers()
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(serve, sup(workers, "a", "b", "c"))
        assert workers.take() == events("start", "a", "b", "c")
        await handle.stop()
    assert workers.take() == events("stop", "c", "b", "a")


async def test_which_children_gives_ids_refs_start_times_and_restart_counts(autojump_clock: object) -> None:
    workers = Workers()
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(serve, sup(workers, "a", "b"))
        await trio.sleep(10)
        await workers.crash("b")
        children = await handle.which_children()
        assert [(c.id, c.state, c.restart_count) for c in children] == [
            ("a", ChildState.RUNNING, 0),
            ("b", ChildState.RUNNING, 1),
        ]
        a, b = (c.pid for c in children)
        assert isinstance(b, ChildRef) and b.value == "b" and b.os_pid is None
        assert b.started_at - a.started_at == pytest.approx(10)
        await handle.stop()


async def test_restart_is_logged_with_child_id_reason_and_pid(caplog: pytest.LogCaptureFixture) -> None:
    workers = Workers()
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(serve, sup(workers, "a"))
        (old,) = await handle.which_children()
        with caplog.at_level(logging.INFO, logger="supervisor"):
            await workers.crash("a")
        await handle.stop()
    terminated = [r for r in caplog.records if "child_terminated" in r.getMessage()]
    assert len(terminated) == 1
    assert terminated[0].name == "supervisor" and terminated[0].levelno == logging.ERROR
    assert "'a'" in terminated[0].getMessage() and "a crashed" in terminated[0].getMessage()
    assert old.pid in terminated[0].args
    assert any("started" in r.getMessage() and "'a'" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ("one_for_one", [("crash", "b"), ("start", "b")]),
        ("one_for_all", [("crash", "b"), *events("stop", "c", "a"), *events("start", "a", "b", "c")]),
        ("rest_for_one", [("crash", "b"), ("stop", "c"), *events("start", "b", "c")]),
    ],
)
async def test_strategies_restart_task_children(strategy: str, expected: list[tuple[str, str]]) -> None:
    workers = Workers()
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(serve, sup(workers, "a", "b", "c", strategy=strategy))
        workers.take()
        await workers.crash("b")
        assert workers.take() == expected
        await handle.stop()


async def test_root_supervisor_exceeding_intensity_stops_its_children_and_raises(autojump_clock: object) -> None:
    workers = Workers()

    async def crash_twice() -> None:
        await trio.testing.wait_all_tasks_blocked()
        await workers.crash("b")
        await workers.crash("b")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(crash_twice)
        with pytest.raises(RestartIntensityExceeded, match="'b'.*b crashed") as error:
            await serve(sup(workers, "a", "b", "c", intensity=1))
    assert error.value.reason == "shutdown"
    assert workers.take()[-3:] == [("crash", "b"), *events("stop", "c", "a")]


async def test_crashes_further_apart_than_the_period_never_escalate(autojump_clock: object) -> None:
    workers = Workers()
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(serve, sup(workers, "a", intensity=1, period=5))
        for _ in range(4):
            await workers.crash("a")
            await trio.sleep(6)
        assert (await handle.count_children()).active == 1
        await handle.stop()


async def test_start_failure_stops_started_children_in_reverse_order_and_fails_serve() -> None:
    workers = Workers()
    workers.failing.add("c")
    async with trio.open_nursery() as nursery:
        with pytest.raises(StartError, match="failed to start child 'c': .*c cannot start") as error:
            await nursery.start(serve, sup(workers, "a", "b", "c", "d"))
    assert error.value.child_id == "c"
    assert workers.take() == [*events("start", "a", "b"), *events("stop", "b", "a")]


async def test_cancelling_serve_stops_children_in_reverse_order() -> None:
    workers = Workers()
    async with trio.open_nursery() as nursery:
        await nursery.start(serve, sup(workers, "a", "b", "c"))
        workers.take()
        nursery.cancel_scope.cancel()
    assert workers.take() == events("stop", "c", "b", "a")


@pytest.mark.parametrize(("restart", "restarted"), [("permanent", True), ("transient", False)])
async def test_nested_supervisor_giving_up_exits_with_shutdown_for_its_parent(restart: str, restarted: bool) -> None:
    workers = Workers()
    inner = sup(workers, "w", name="inner", intensity=0)
    outer = SupervisorSpec(
        SupFlags(intensity=5),
        [ChildSpec("inner", partial(serve, inner), restart=restart, type="supervisor"), workers.spec("x")],
        "outer",
    )
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(serve, outer)
        workers.take()
        await workers.crash("w")
        assert workers.take() == [("crash", "w"), *(events("start", "w") if restarted else [])]
        inner_info, x_info = await handle.which_children()
        expected_state = ChildState.RUNNING if restarted else ChildState.STOPPED
        assert (inner_info.state, inner_info.restart_count) == (expected_state, int(restarted))
        assert x_info.state is ChildState.RUNNING
        await handle.stop()


async def test_nested_supervisor_handle_is_its_value_and_parent_stop_stops_the_tree() -> None:
    workers = Workers()
    inner = sup(workers, "w1", "w2", name="inner")
    outer = SupervisorSpec(children=[workers.spec("a"), ChildSpec("inner", partial(serve, inner), type="supervisor")])
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(serve, outer)
        inner_handle = (await handle.which_children())[1].pid.value
        assert isinstance(inner_handle, Handle)
        assert [c.id for c in await inner_handle.which_children()] == ["w1", "w2"]
        workers.take()
        await handle.stop()
    assert workers.take() == events("stop", "w2", "w1", "a")


async def test_dynamic_api_through_the_handle() -> None:
    workers = Workers()
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(serve, sup(workers, "a"))
        ref = await handle.start_child(workers.spec("d"))
        assert ref.value == "d"
        with pytest.raises(ChildError) as error:
            await handle.start_child(workers.spec("d"))
        assert error.value.reason == ("already_started", ref)
        with pytest.raises(ChildError, match="running"):
            await handle.delete_child("d")
        await handle.terminate_child("d")
        assert (await handle.count_children()).active == 1
        new_ref = await handle.restart_child("d")
        assert new_ref is not ref
        await handle.terminate_child("d")
        await handle.delete_child("d")
        with pytest.raises(ChildError, match="not_found"):
            await handle.restart_child("d")
        await handle.stop()
    assert workers.take() == [*events("start", "a", "d"), ("stop", "d"), ("start", "d"), ("stop", "d"), ("stop", "a")]


async def test_simple_one_for_one_children_get_extra_args_and_all_stop_at_shutdown() -> None:
    stopped: list[int] = []

    async def child(prefix: str, n: int, *, task_status: trio.TaskStatus[int]) -> None:
        task_status.started(n)
        try:
            await trio.sleep_forever()
        finally:
            stopped.append(n)

    template = ChildSpec("conn", partial(child, "p"), shutdown=1000)
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(serve, SupervisorSpec(SupFlags("simple_one_for_one"), [template]))
        refs = [await handle.start_child([n]) for n in range(3)]
        assert [r.value for r in refs] == [0, 1, 2]
        await handle.terminate_child(refs[1])
        assert [c.id for c in await handle.which_children()] == [None, None]
        await handle.stop()
    assert sorted(stopped) == [0, 1, 2]


async def test_transient_task_exiting_with_a_shutdown_tuple_is_not_restarted() -> None:
    async def child(*, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        raise ChildExit(("shutdown", "done"))

    spec = SupervisorSpec(children=[ChildSpec("t", child, restart="transient")])
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(serve, spec)
        await trio.testing.wait_all_tasks_blocked()
        assert [c.state for c in await handle.which_children()] == [ChildState.STOPPED]
        await handle.stop()


async def test_task_returning_before_started_fails_to_start() -> None:
    async def child(*, task_status: trio.TaskStatus[None]) -> None:
        return

    async with trio.open_nursery() as nursery:
        with pytest.raises(StartError, match="without calling task_status.started"):
            await nursery.start(serve, SupervisorSpec(children=[ChildSpec("t", child)]))


async def test_task_ignoring_cancellation_is_waited_for_and_reported_as_killed(
    autojump_clock: object, caplog: pytest.LogCaptureFixture
) -> None:
    async def stubborn(*, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(10)

    async with trio.open_nursery() as nursery:
        handle = await nursery.start(serve, SupervisorSpec(children=[ChildSpec("s", stubborn, shutdown=100)]))
        began = trio.current_time()
        await handle.stop()
        assert trio.current_time() - began == pytest.approx(10)
    assert any("shutdown_error" in r.getMessage() and "reason=killed" in r.getMessage() for r in caplog.records)


async def test_requests_after_the_supervisor_exited_fail() -> None:
    workers = Workers()
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(serve, sup(workers, "a"))
        await handle.stop()
    with pytest.raises(SupervisorNotRunning):
        await handle.which_children()
    await handle.stop()


async def test_log_messages_are_only_formatted_when_emitted(caplog: pytest.LogCaptureFixture) -> None:
    formatted = []

    class Failure(Exception):
        def __str__(self) -> str:
            formatted.append(self)
            return "failure"

    runs = []

    async def child(*, task_status: trio.TaskStatus[None]) -> None:
        runs.append(1)
        task_status.started()
        if len(runs) == 1:
            raise Failure
        await trio.sleep_forever()

    caplog.set_level(logging.CRITICAL, logger="supervisor")
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(serve, SupervisorSpec(children=[ChildSpec("c", child)]))
        await trio.testing.wait_all_tasks_blocked()
        assert len(runs) == 2
        await handle.stop()
    assert formatted == []


async def test_running_children_are_answered_at_once_while_the_supervisor_is_busy_stopping_one(
    autojump_clock: object,
) -> None:
    """which_children waits while the supervisor stops a child (OTP's supervisor answers between operations);
    running_children, for signalling them, reads the children whose task runs at once, the one being stopped
    included, and leaves out each as soon as it has exited."""

    async def slow_to_stop(*, task_status: trio.TaskStatus[str]) -> None:
        task_status.started("slow")
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(10)

    workers = Workers()
    spec = SupervisorSpec(SupFlags(), [workers.spec("a"), ChildSpec("slow", slow_to_stop, shutdown=60000)], "root")
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(serve, spec)
        nursery.start_soon(handle.terminate_child, "slow")
        await trio.sleep(1)  # "slow" is stopping: the supervisor is busy for 9 s more
        with trio.move_on_after(1) as waited:
            await handle.which_children()
        assert waited.cancelled_caught
        began = trio.current_time()
        assert sorted(ref.value for ref in handle.running_children()) == ["a", "slow"]
        assert trio.current_time() == began
        await trio.sleep(10)
        assert [ref.value for ref in handle.running_children()] == ["a"]
        await handle.stop()
    assert handle.running_children() == []


# --- exits of any kind, and terminate_child of a child gone (OTP's supervisor.erl) ---

ROOT = str(Path(__file__).resolve().parents[2])
ENV = {**os.environ, "PYTHONPATH": ROOT}


def run_bounded(code: str, timeout: float = 6.0) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter; a hang is killed (by pid, subprocess.run's own kill) and fails the test."""
    try:
        return subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the supervisor hung (killed after {timeout} s); stdout so far: {e.stdout!r}")


SYSTEM_EXIT_CHILD = """\
import trio
from functools import partial
from supervisor import ChildSpec, SupervisorSpec, SupFlags, serve

starts = []

async def child(name, *, task_status):
    starts.append(name)
    task_status.started(name)
    await trio.sleep(0.05)
    if name == "a" and starts.count("a") == 1:
        raise SystemExit(3)  # e.g. a library calling sys.exit() inside a task child
    await trio.sleep_forever()

async def main():
    children = [ChildSpec("a", partial(child, "a")), ChildSpec("b", partial(child, "b"))]
    spec = SupervisorSpec(SupFlags(intensity=5), children)
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(serve, spec)
        await trio.sleep(0.5)
        print("starts", starts, flush=True)
        await handle.stop()
    print("stopped", flush=True)

trio.run(main)
"""


def test_task_child_exiting_with_a_base_exception_is_restarted_not_a_hang() -> None:
    """OTP doc (supervisor, child_spec restart): "A `permanent` child process is always restarted." Whatever a child
    dies of, the supervisor gets its 'EXIT' and restart_child/3 -> do_restart/3 (supervisor.erl 727-736) restarts it.

    So a permanent task child that raises SystemExit (a library's sys.exit()) after started() is restarted, and the
    supervisor stops normally afterwards. (It once escaped the child's ref unreported: no restart, and a stop that
    waited for ever for the child's exit. Run in an interpreter of its own, so that a hang fails instead of hanging.)
    """
    result = run_bounded(SYSTEM_EXIT_CHILD)
    assert "starts ['a', 'b', 'a']" in result.stdout, result.stdout + result.stderr
    assert "stopped" in result.stdout


async def test_simple_one_for_one_terminate_child_of_a_child_that_already_exited_is_ok() -> None:
    """OTP find_child/2 (supervisor.erl 1151-1164), simple_one_for_one: a pid that is no (longer a) child and is not
    alive is answered with the template, so handle_call({terminate_child, Pid}) (466-472) replies `ok`; the doc:
    "If the specified process is alive, but is not a child of the specified supervisor, the function returns
    {error,not_found}" -- only a *live* stranger is not_found. Terminating a dynamic child that has just finished on its
    own (the usual race) is therefore `ok`, not ChildError('not_found').
    """

    async def job(*, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()  # and ends at once: a normal exit of a transient child, which is then forgotten

    template = ChildSpec("job", job, restart="transient")
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(serve, SupervisorSpec(SupFlags("simple_one_for_one"), [template]))
        ref = await handle.start_child([])
        with trio.fail_after(5):
            while ref.reason is None or (await handle.count_children()).workers:
                await trio.sleep(0.01)
        try:
            await handle.terminate_child(ref)  # OTP: ok
        finally:
            await handle.stop()
