"""The supervisor library against OTP's supervisor.erl (lib/stdlib/src/supervisor.erl) where a review found them apart:
a supervisor child's kill, a start that raises SystemExit, requests naming no child, and the root's stop order after
a reload."""

import os
import signal
import sys
from collections.abc import Hashable
from functools import partial

import pytest
import trio

from gateway.config import parse_config
from gateway.node import tree
from supervisor import (
    BRUTAL_KILL,
    KILLED,
    SHUTDOWN,
    Action,
    ChildError,
    ChildExit,
    ChildSpec,
    ChildState,
    Process,
    Reply,
    Start,
    StartError,
    SupervisorCore,
    SupervisorSpec,
    SupFlags,
    Terminate,
    serve,
)

# The worker's shutdown time in the nested trees: what an orderly shutdown of its supervisor waits out; a kill "at
# once" is held to under a third of it (milliseconds, a few seconds on a busy host)
WORKER_SHUTDOWN_MS = 12000
AT_ONCE_S = 4.0

# A child that ignores SIGTERM, says it is ready (the SUPERVISOR_READY_FD protocol, by hand: no imports), then sleeps.
IGNORING_SIGTERM = (
    "import os, signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "os.write(int(os.environ['SUPERVISOR_READY_FD']), b'ready\\n')\n"
    "time.sleep(30)\n"
)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _nested(outer_shutdown: object) -> SupervisorSpec:
    """outer → inner (a supervisor child with `outer_shutdown`) → w, an OS process that ignores SIGTERM, given
    WORKER_SHUTDOWN_MS for its shutdown."""
    inner = SupervisorSpec(
        children=[ChildSpec("w", Process([sys.executable, "-c", IGNORING_SIGTERM], start_timeout=20),
                            shutdown=WORKER_SHUTDOWN_MS)],
        name="inner",
    )
    return SupervisorSpec(children=[ChildSpec("inner", partial(serve, inner), type="supervisor",
                                              shutdown=outer_shutdown)], name="outer")


async def _terminate_inner_timed(outer: SupervisorSpec) -> tuple[float, int]:
    """Run `outer`, terminate_child("inner"): how long that took, and the grandchild's OS pid."""
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(serve, outer)
        (info,) = await handle.which_children()
        (worker,) = await info.pid.value.which_children()
        os_pid = worker.pid.os_pid
        began = trio.current_time()
        try:
            with trio.fail_after(WORKER_SHUTDOWN_MS / 1000 + 8):
                await handle.terminate_child("inner")
            return trio.current_time() - began, os_pid
        finally:
            if not _gone(os_pid):
                os.kill(os_pid, signal.SIGKILL)
            with trio.move_on_after(WORKER_SHUTDOWN_MS / 1000 + 8):
                await handle.stop()
            nursery.cancel_scope.cancel()


async def test_brutal_kill_of_a_nested_supervisor_kills_its_subtree_at_once() -> None:
    """OTP's supervisor.erl, shutdown/1: `shutdown(#child{pid=Pid, shutdown=brutal_kill} = Child) -> Mon =
    monitor(process, Pid), exit(Pid, kill)`; its documentation: "`brutal_kill` means that the child process is
    unconditionally terminated using exit(Child,kill)". A killed supervisor dies at once and its linked children with
    it, without its own orderly shutdown (which would give its worker, ignoring SIGTERM, WORKER_SHUTDOWN_MS)."""
    elapsed, os_pid = await _terminate_inner_timed(_nested(BRUTAL_KILL))
    assert elapsed < AT_ONCE_S, f"brutal_kill of a supervisor child took {elapsed:.1f}s (its subtree's shutdown)"
    assert _gone(os_pid)


async def test_the_kill_after_a_nested_supervisors_shutdown_timeout_kills_its_subtree_at_once() -> None:
    """OTP's supervisor.erl, shutdown/1 for an integer shutdown: exit(Pid, shutdown), then on `after Time ->
    exit(Pid, kill)`; its documentation: "If no exit signal is received within the specified number of
    milliseconds, the child process is unconditionally terminated using exit(Child,kill)". So a supervisor child
    given 200 ms is gone after about 200 ms with its subtree, not after its worker's WORKER_SHUTDOWN_MS."""
    elapsed, os_pid = await _terminate_inner_timed(_nested(200))
    assert elapsed < AT_ONCE_S, f"the kill after 200 ms took {elapsed:.1f}s (its subtree's shutdown)"
    assert _gone(os_pid)


async def test_a_killed_supervisor_exits_with_reason_killed() -> None:
    """OTP: exit(Sup, kill) ends the supervisor with exit reason `killed` (an untrappable exit signal: no terminate
    callback, so no orderly shutdown). Here Handle.kill(): `serve` raises ChildExit(killed)."""
    async def child(*, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        await trio.sleep_forever()

    with trio.fail_after(5):
        with pytest.RaisesGroup(pytest.RaisesExc(ChildExit, check=lambda e: e.reason == KILLED),
                                allow_unwrapped=True, flatten_subgroups=True):
            async with trio.open_nursery() as nursery:
                handle = await nursery.start(serve, SupervisorSpec(children=[ChildSpec("a", child)], name="sup"))
                handle.kill()


async def test_task_child_raising_system_exit_before_it_started_is_a_start_error() -> None:
    """OTP's supervisor.erl, do_start_child_i/3: `case catch apply(M, F, A) of ... What -> {error, What}`: whatever
    the start function does (an error, a throw, an exit(Reason)) is a start error; init_children then stops the
    children already started, in reverse, and the supervisor fails to start ({shutdown, {failed_to_start_child, Id,
    Reason}}). SystemExit is Python's exit(Reason)."""
    stopped: list[str] = []

    async def good(name: str, *, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            stopped.append(name)

    async def exits(*, task_status: trio.TaskStatus[None]) -> None:
        sys.exit(3)

    spec = SupervisorSpec(
        children=[ChildSpec("a", partial(good, "a")), ChildSpec("b", partial(good, "b")), ChildSpec("x", exits)],
        name="sup",
    )
    failed = pytest.RaisesExc(StartError, check=lambda e: e.child_id == "x" and isinstance(e.reason, SystemExit))
    with pytest.RaisesGroup(failed, allow_unwrapped=True, flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            with trio.fail_after(5):
                await nursery.start(serve, spec)
    assert stopped == ["b", "a"]


async def test_terminate_child_with_an_unhashable_id_is_not_found_and_the_supervisor_lives_on() -> None:
    """OTP's supervisor.erl: `handle_call({terminate_child, Id}, _From, State) -> case find_child(Id, State) of ...
    error -> {reply, {error, not_found}, State}`: any term is a child id (validId(_Id) -> true), and one that names no
    child is answered not_found while the supervisor and its children go on. A list is such an id here."""
    async def good(*, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        handle = await nursery.start(serve, SupervisorSpec(children=[ChildSpec("a", good)], name="sup"))
        with trio.fail_after(5):
            with pytest.raises(ChildError) as refused:
                await handle.terminate_child(["a"])
            assert refused.value.reason == "not_found"
            assert [(c.id, c.state) for c in await handle.which_children()] == [("a", ChildState.RUNNING)]
            await handle.stop()


# The policy alone (sans-I/O): a runtime that starts and stops each child at once.


def _drive(core: SupervisorCore, actions: list[Action], stopped: list[Hashable] | None = None) -> list[object]:
    """Carry out `actions` and those the answers lead to; the replies. Terminated children's ids go to `stopped`."""
    replies: list[object] = []
    pending = list(actions)
    while pending:
        action = pending.pop(0)
        if isinstance(action, Start):
            pending += core.started(action.key, f"{action.spec.id}{action.args or ''}#{len(replies)}")
        elif isinstance(action, Terminate):
            if stopped is not None:
                stopped.append(action.child_id)
            pending += core.terminated(action.pid, KILLED if action.shutdown == BRUTAL_KILL else SHUTDOWN)
        elif isinstance(action, Reply):
            replies.append(action.value)
    return replies


def _core(*ids: str, strategy: str = "one_for_one") -> SupervisorCore:
    core = SupervisorCore(SupFlags(strategy), [ChildSpec(i, None) for i in ids], lambda: 100.0, name="test")
    _drive(core, core.init())
    return core


@pytest.mark.parametrize("request_name", ["terminate_child", "restart_child", "delete_child"])
def test_a_request_naming_a_child_by_an_unhashable_id_is_answered_not_found(request_name: str) -> None:
    """OTP's supervisor.erl, handle_call for terminate_child, restart_child and delete_child: find_child(Id, State)
    finds nothing, `{reply, {error, not_found}, State}`; the supervisor carries on."""
    core = _core("a")
    (reply,) = _drive(core, getattr(core, request_name)(["a"]))
    assert isinstance(reply, ChildError) and reply.reason == "not_found"
    assert [(c.id, c.state) for c in core.which_children()] == [("a", ChildState.RUNNING)]


def test_simple_one_for_one_terminate_child_with_an_unhashable_id_is_answered_not_found() -> None:
    """OTP's supervisor.erl answers a simple_one_for_one terminate_child for what is not a running child with an
    error (`{error, simple_one_for_one}` for a non-pid, find_child's `{error, not_found}` for a pid it lacks) and
    carries on; a list, which no child is, is not_found here, as any other non-child."""
    core = _core("t", strategy="simple_one_for_one")
    (reply,) = _drive(core, core.terminate_child(["t"]))
    assert isinstance(reply, ChildError) and reply.reason == "not_found"


def test_simple_one_for_one_start_child_with_args_that_are_no_sequence_is_refused_and_the_supervisor_goes_on() -> None:
    """OTP's supervisor.erl, `handle_call({start_child, EArgs}, _From, State) when ?is_simple(State)`: Args = A ++
    EArgs, and do_start_child_i's `catch apply(M, F, Args)` turns the bad argument list into an error reply, the
    state unchanged. Here a TypeError is the answer (as for a ChildSpec given instead of args), and the next
    start_child starts its child."""
    core = _core("t", strategy="simple_one_for_one")
    (refused,) = _drive(core, core.start_child(5))  # type: ignore[arg-type]
    assert isinstance(refused, TypeError)
    (pid,) = _drive(core, core.start_child([1]))
    assert [c.pid for c in core.which_children()] == [pid]


def test_a_child_spec_with_an_unhashable_id_is_refused() -> None:
    """OTP takes any term as a child id; here ids are dict keys, so one that cannot be hashed is refused where the
    spec is made (TypeError), not in the supervisor's loop."""
    with pytest.raises(TypeError, match="not hashable"):
        ChildSpec(["a"], None)


def test_a_supervisor_with_places_stops_its_children_from_the_highest_place_down() -> None:
    """OTP's supervisor.erl stops children "in reversed start order" (terminate_children/2), and start_child adds a
    child last (save_child). SupervisorSpec.place, for a supervisor whose start_child calls add children in the
    middle of its tree, orders the shutdown by place instead, ties (two children at one place) in reverse start
    order."""
    places = {"a": 0, "g": 1, "z": 2}
    core = SupervisorCore(SupFlags(), [ChildSpec(i, None) for i in ("a", "g1", "z")], lambda: 100.0,
                          place=lambda child_id: places[str(child_id)[0]])
    _drive(core, core.init())
    _drive(core, core.start_child(ChildSpec("g2", None)))  # started last, drawn in the middle
    stopped: list[Hashable] = []
    _drive(core, core.shutdown(), stopped)
    assert stopped == ["z", "g2", "g1", "a"]


def test_the_roots_stop_after_a_reload_deregisters_before_the_workers_drain_and_stops_satellites_after() -> None:
    """gateway/node/tree.py draws the root with `registration` after `workers@G`, so that the root's shutdown (OTP:
    reverse start order) takes the gateway out of the registry before its workers drain (the README: "deregisters on
    stop, as the guide's Erlang client does"), and stops health and discovery once the workers are done. A reload
    adds workers@G+1 with start_child and restarts health and discovery on the new config (gateway/node/root.py,
    _reload and _restart_satellites), all after `registration` in start order; the root's places keep the drawn
    order for its stop."""
    config = parse_config("services: []\n", "<test config>")
    ids = ["zygote", "keeper", "health", "discovery", "status", "workers@1", "registration"]
    spec = tree.root_spec(config, [ChildSpec(i, None) for i in ids])
    core = SupervisorCore(spec.flags, spec.children, lambda: 100.0, spec.name, place=spec.place)
    _drive(core, core.init())
    _drive(core, core.start_child(ChildSpec("workers@2", None)))  # the reload's new generation
    for retired in ("workers@1", "health", "discovery"):
        _drive(core, core.terminate_child(retired))
        _drive(core, core.delete_child(retired))
    for satellite in ("health", "discovery"):
        _drive(core, core.start_child(ChildSpec(satellite, None)))
    stopped: list[Hashable] = []
    _drive(core, core.shutdown(), stopped)
    assert stopped == ["registration", "workers@2", "status", "discovery", "health", "keeper", "zygote"]
