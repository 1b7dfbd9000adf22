"""Table-driven tests of the pure supervisor policy against OTP's documented behaviour."""

import itertools
from collections import deque
from collections.abc import Hashable, Sequence

import pytest

from supervisor import (
    BRUTAL_KILL,
    KILLED,
    SHUTDOWN,
    Action,
    ChildError,
    ChildSpec,
    ChildState,
    Exit,
    Initialized,
    Reply,
    Report,
    ReportKind,
    RestartIntensityExceeded,
    RetryLater,
    Start,
    StartError,
    SupervisorCore,
    SupFlags,
    Terminate,
    is_abnormal,
)

NOT_EXITED = object()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Driver:
    """Plays the runtime for a SupervisorCore: carries out each action at once and records it."""

    def __init__(
        self,
        strategy: str = "one_for_one",
        children: Sequence[str | ChildSpec] = ("a", "b", "c"),
        intensity: int = 1,
        period: int = 5,
        fail: dict[Hashable, list[object]] | None = None,
    ) -> None:
        self.clock = Clock()
        specs = [child if isinstance(child, ChildSpec) else spec(child) for child in children]
        self.core = SupervisorCore(SupFlags(strategy, intensity, period), specs, self.clock, name="test")
        self.fail = fail or {}
        self.log: list[tuple[str, Hashable]] = []
        self.reports: list[Report] = []
        self.replies: list[object] = []
        self.retries: deque[Hashable] = deque()
        self.terminate_reasons: dict[Hashable, object] = {}
        self.exit_reason: object = NOT_EXITED
        self._pids = itertools.count(1)

    def do(self, actions: list[Action]) -> "Driver":
        pending = deque(actions)
        while pending:
            match pending.popleft():
                case Start(key, child_spec, args):
                    if self.fail.get(child_spec.id):
                        self.log.append(("start_failed", child_spec.id))
                        pending.extend(self.core.start_failed(key, self.fail[child_spec.id].pop(0)))
                    else:
                        self.log.append(("start", child_spec.id))
                        pid = f"{child_spec.id}{list(args) if args else ''}#{next(self._pids)}"
                        pending.extend(self.core.started(key, pid))
                case Terminate(child_id, pid, shutdown):
                    self.log.append(("terminate", child_id))
                    default = KILLED if shutdown == BRUTAL_KILL else SHUTDOWN
                    pending.extend(self.core.terminated(pid, self.terminate_reasons.pop(child_id, default)))
                case Report() as report:
                    self.reports.append(report)
                case Reply(value):
                    self.replies.append(value)
                case RetryLater(key):
                    self.retries.append(key)
                case Initialized():
                    self.log.append(("initialized", self.core.name))
                case Exit(reason):
                    self.exit_reason = reason
        return self

    def started(self) -> "Driver":
        self.do(self.core.init())
        self.log.clear()
        return self

    def failing(self, child_id: Hashable, *reasons: object) -> "Driver":
        self.fail[child_id] = list(reasons)
        return self

    def pid(self, child_id: Hashable) -> object:
        return next(c.pid for c in self.core.which_children() if c.id == child_id)

    def crash(self, child_id: Hashable, reason: object = "crash") -> "Driver":
        return self.do(self.core.exited(self.pid(child_id), reason))

    def run_retries(self) -> "Driver":
        while self.retries:
            self.do(self.core.retry(self.retries.popleft()))
        return self

    def request(self, method: str, *args: object) -> object:
        self.do(getattr(self.core, method)(*args))
        return self.replies.pop()

    def ids(self) -> list[Hashable]:
        return [c.id for c in self.core.which_children()]

    def states(self) -> dict[Hashable, ChildState]:
        return {c.id: c.state for c in self.core.which_children()}

    def report_kinds(self) -> list[ReportKind]:
        return [r.kind for r in self.reports if r.kind is not ReportKind.STARTED]


def spec(child_id: Hashable, restart: str = "permanent", shutdown: object = None) -> ChildSpec:
    return ChildSpec(child_id, start=None, restart=restart, shutdown=shutdown)


def start(*ids: str) -> list[tuple[str, str]]:
    return [("start", i) for i in ids]


def terminate(*ids: str) -> list[tuple[str, str]]:
    return [("terminate", i) for i in ids]


# Start-up and shutdown order.


def test_children_start_left_to_right() -> None:
    driver = Driver(children=["a", "b", "c"])
    driver.do(driver.core.init())
    assert driver.log == [*start("a", "b", "c"), ("initialized", "test")]


def test_shutdown_terminates_children_right_to_left_then_exits_with_the_reason() -> None:
    driver = Driver().started()
    driver.do(driver.core.shutdown())
    assert driver.log == terminate("c", "b", "a")
    assert driver.exit_reason == SHUTDOWN


def test_shutdown_skips_children_that_are_not_running() -> None:
    driver = Driver().started()
    driver.request("terminate_child", "b")
    driver.log.clear()
    driver.do(driver.core.shutdown("normal"))
    assert driver.log == terminate("c", "a")
    assert driver.exit_reason == "normal"


@pytest.mark.parametrize("failing", [0, 1, 2, 3])
def test_start_failure_of_nth_child_stops_earlier_ones_in_reverse_order_and_fails_the_start(failing: int) -> None:
    ids = ["a", "b", "c", "d"]
    driver = Driver(children=ids, fail={ids[failing]: ["boom"]})
    driver.do(driver.core.init())
    earlier = ids[:failing]
    assert driver.log == [*start(*earlier), ("start_failed", ids[failing]), *terminate(*reversed(earlier))]
    assert isinstance(driver.exit_reason, StartError)
    assert (driver.exit_reason.child_id, driver.exit_reason.reason) == (ids[failing], "boom")
    assert driver.report_kinds() == [ReportKind.START_ERROR]


# Restart types against exit reasons.

RESTART_TABLE = [
    # restart, reason, restarted, spec kept, reported
    ("permanent", "normal", True, True, True),
    ("permanent", "shutdown", True, True, True),
    ("permanent", ("shutdown", "bye"), True, True, True),
    ("permanent", "crash", True, True, True),
    ("transient", "normal", False, True, False),
    ("transient", "shutdown", False, True, False),
    ("transient", ("shutdown", "bye"), False, True, False),
    ("transient", "crash", True, True, True),
    ("temporary", "normal", False, False, False),
    ("temporary", "shutdown", False, False, False),
    ("temporary", ("shutdown", "bye"), False, False, False),
    ("temporary", "crash", False, False, True),
]


@pytest.mark.parametrize(("restart", "reason", "restarted", "kept", "reported"), RESTART_TABLE)
def test_restart_type_decides_on_restart_by_exit_reason(
    restart: str, reason: object, restarted: bool, kept: bool, reported: bool
) -> None:
    driver = Driver(children=[spec("a", restart), "b"]).started()
    driver.crash("a", reason)
    assert driver.log == (start("a") if restarted else [])
    assert ("a" in driver.ids()) is kept
    if kept:
        assert driver.states()["a"] is (ChildState.RUNNING if restarted else ChildState.STOPPED)
    assert driver.report_kinds() == ([ReportKind.CHILD_TERMINATED] if reported else [])
    assert driver.states()["b"] is ChildState.RUNNING


@pytest.mark.parametrize(
    ("reason", "abnormal"),
    [("normal", False), ("shutdown", False), (("shutdown", 1), False), ("killed", True), (ValueError(), True)],
)
def test_only_normal_shutdown_and_shutdown_tuples_are_not_abnormal(reason: object, abnormal: bool) -> None:
    assert is_abnormal(reason) is abnormal


# Strategies.

STRATEGY_TABLE = [
    ("one_for_one", "a", start("a")),
    ("one_for_one", "b", start("b")),
    ("one_for_one", "c", start("c")),
    ("one_for_all", "a", [*terminate("c", "b"), *start("a", "b", "c")]),
    ("one_for_all", "b", [*terminate("c", "a"), *start("a", "b", "c")]),
    ("one_for_all", "c", [*terminate("b", "a"), *start("a", "b", "c")]),
    ("rest_for_one", "a", [*terminate("c", "b"), *start("a", "b", "c")]),
    ("rest_for_one", "b", [*terminate("c"), *start("b", "c")]),
    ("rest_for_one", "c", start("c")),
]


@pytest.mark.parametrize(("strategy", "crashed", "expected"), STRATEGY_TABLE)
def test_strategy_terminates_in_reverse_and_restarts_in_start_order(
    strategy: str, crashed: str, expected: list[tuple[str, str]]
) -> None:
    driver = Driver(strategy).started()
    driver.crash(crashed)
    assert driver.log == expected
    assert all(state is ChildState.RUNNING for state in driver.states().values())


@pytest.mark.parametrize("strategy", ["one_for_all", "rest_for_one"])
def test_temporary_sibling_terminated_by_a_group_restart_is_not_restarted_and_its_spec_is_removed(
    strategy: str,
) -> None:
    driver = Driver(strategy, children=["a", spec("t", "temporary"), "c"]).started()
    driver.crash("a")
    assert driver.log == [*terminate("c", "t"), *start("a", "c")]
    assert driver.ids() == ["a", "c"]


def test_transient_sibling_terminated_by_a_group_restart_is_restarted() -> None:
    driver = Driver("one_for_all", children=["a", spec("t", "transient")]).started()
    driver.crash("a")
    assert driver.log == [*terminate("t"), *start("a", "t")]


def test_group_restart_also_starts_siblings_that_were_stopped() -> None:
    driver = Driver("one_for_all").started()
    driver.request("terminate_child", "b")
    driver.log.clear()
    driver.crash("a")
    assert driver.log == [*terminate("c"), *start("a", "b", "c")]


def test_restart_count_counts_restarts_of_each_child() -> None:
    driver = Driver("rest_for_one", intensity=10).started()
    driver.crash("b").crash("c")
    assert {c.id: c.restart_count for c in driver.core.which_children()} == {"a": 0, "b": 1, "c": 2}


def test_exit_of_an_old_pid_is_ignored() -> None:
    driver = Driver().started()
    old = driver.pid("a")
    driver.crash("a")
    driver.log.clear()
    driver.do(driver.core.exited(old, "crash"))
    assert driver.log == []


# Maximum restart intensity.


@pytest.mark.parametrize("intensity", [0, 1, 3])
def test_intensity_restarts_are_allowed_and_one_more_shuts_the_supervisor_down(intensity: int) -> None:
    driver = Driver(intensity=intensity).started()
    for _ in range(intensity):
        driver.crash("b")
    assert driver.log == start("b") * intensity
    assert driver.exit_reason is NOT_EXITED
    driver.log.clear()
    driver.crash("b", "last")
    assert driver.log == terminate("c", "a")
    error = driver.exit_reason
    assert isinstance(error, RestartIntensityExceeded)
    assert (error.reason, error.child_id, error.child_reason) == (SHUTDOWN, "b", "last")
    assert driver.report_kinds()[-1] is ReportKind.MAX_INTENSITY


def test_escalation_exit_reason_is_shutdown_so_a_transient_parent_does_not_restart() -> None:
    assert not is_abnormal(RestartIntensityExceeded("sup", "child", "crash").reason)


WINDOW_TABLE = [
    # period 5, intensity 1: restart times in seconds; whether the last one is one too many
    ((0, 4), True),
    ((0, 5), True),  # a restart at exactly now - period still counts
    ((0, 6), False),
    ((0.1, 5.9), True),  # whole seconds 0 and 5
    ((0.9, 6.0), False),  # whole seconds 0 and 6
    ((4.5, 10.2), False),  # whole seconds 4 and 10
    ((0, 6, 11), True),  # 6 is within 5 s of 11
]


@pytest.mark.parametrize(("times", "escalates"), WINDOW_TABLE)
def test_restart_window_counts_whole_seconds_back_to_now_minus_period(
    times: tuple[float, ...], escalates: bool
) -> None:
    driver = Driver(intensity=1, period=5).started()
    for time in times:
        driver.clock.now = time
        driver.crash("a")
    assert (driver.exit_reason is not NOT_EXITED) is escalates


def test_restarts_outside_the_window_are_forgotten() -> None:
    driver = Driver(intensity=2, period=5).started()
    for time in (0, 1, 7, 8):
        driver.clock.now = time
        driver.crash("a")
    assert driver.exit_reason is NOT_EXITED


# Failed restarts are retried, and each retry counts as a restart.


def test_one_for_one_failed_restart_is_retried_later() -> None:
    driver = Driver(intensity=2).started().failing("b", "boom")
    driver.crash("b")
    assert driver.log == [("start_failed", "b")]
    assert list(driver.retries) == ["b"]
    assert driver.states()["b"] is ChildState.RESTARTING
    driver.log.clear()
    driver.run_retries()
    assert driver.log == start("b")
    assert driver.states()["b"] is ChildState.RUNNING


def test_a_retry_counts_toward_the_intensity() -> None:
    driver = Driver(intensity=1).started().failing("b", "boom")
    driver.crash("b").run_retries()
    assert isinstance(driver.exit_reason, RestartIntensityExceeded)
    assert driver.exit_reason.child_reason == "boom"
    assert driver.log == [("start_failed", "b"), *terminate("c", "a")]


def test_a_child_that_never_starts_again_escalates_after_intensity_retries() -> None:
    driver = Driver(intensity=3).started().failing("b", *["boom"] * 10)
    driver.crash("b").run_retries()
    assert driver.log == [("start_failed", "b")] * 3 + terminate("c", "a")
    assert isinstance(driver.exit_reason, RestartIntensityExceeded)


def test_one_for_all_failed_restart_leaves_later_children_stopped_and_the_retry_restarts_all() -> None:
    driver = Driver("one_for_all", intensity=2).started().failing("b", "boom")
    driver.crash("a")
    assert driver.log == [*terminate("c", "b"), ("start", "a"), ("start_failed", "b")]
    assert driver.states() == {"a": ChildState.RUNNING, "b": ChildState.RESTARTING, "c": ChildState.STOPPED}
    driver.log.clear()
    driver.run_retries()
    assert driver.log == [*terminate("a"), *start("a", "b", "c")]


def test_rest_for_one_retry_restarts_the_failed_child_and_those_after_it() -> None:
    driver = Driver("rest_for_one", intensity=2).started().failing("b", "boom")
    driver.crash("a")
    assert driver.log == [*terminate("c", "b"), ("start", "a"), ("start_failed", "b")]
    driver.log.clear()
    driver.run_retries()
    assert driver.log == start("b", "c")


def test_retry_is_dropped_when_the_child_was_terminated_meanwhile() -> None:
    driver = Driver(intensity=2).started().failing("b", "boom")
    driver.crash("b")
    assert driver.request("terminate_child", "b") is None
    driver.log.clear()
    driver.run_retries()
    assert driver.log == []
    assert driver.states()["b"] is ChildState.STOPPED


def test_restarting_child_cannot_be_restarted_or_deleted() -> None:
    driver = Driver(intensity=2).started().failing("b", "boom")
    driver.crash("b")
    assert [c.pid for c in driver.core.which_children() if c.id == "b"] == [None]
    assert driver.request("restart_child", "b").reason == "restarting"
    assert driver.request("delete_child", "b").reason == "restarting"
    assert driver.request("start_child", spec("b")).reason == "already_present"


# The dynamic API.


def test_start_child_starts_the_child_and_adds_it_last_in_start_order() -> None:
    driver = Driver().started()
    pid = driver.request("start_child", spec("d"))
    assert driver.log == start("d")
    assert pid == driver.pid("d")
    assert driver.ids() == ["a", "b", "c", "d"]
    driver.log.clear()
    driver.do(driver.core.shutdown())
    assert driver.log == terminate("d", "c", "b", "a")


def test_start_child_refuses_the_id_of_a_running_child_as_already_started() -> None:
    driver = Driver().started()
    error = driver.request("start_child", spec("a"))
    assert isinstance(error, ChildError)
    assert error.reason == ("already_started", driver.pid("a"))


def test_start_child_refuses_the_id_of_a_stopped_child_as_already_present() -> None:
    driver = Driver().started()
    driver.request("terminate_child", "a")
    error = driver.request("start_child", spec("a"))
    assert isinstance(error, ChildError)
    assert error.reason == "already_present"


def test_start_child_that_fails_to_start_is_not_added() -> None:
    driver = Driver(fail={"d": ["boom"]}).started()
    error = driver.request("start_child", spec("d"))
    assert isinstance(error, StartError)
    assert (error.child_id, error.reason) == ("d", "boom")
    assert driver.ids() == ["a", "b", "c"]
    assert not driver.retries


@pytest.mark.parametrize(("restart", "kept"), [("permanent", True), ("transient", True), ("temporary", False)])
def test_terminate_child_keeps_the_spec_unless_temporary(restart: str, kept: bool) -> None:
    driver = Driver(children=[spec("a", restart), "b"]).started()
    assert driver.request("terminate_child", "a") is None
    assert driver.log == terminate("a")
    assert ("a" in driver.ids()) is kept


def test_terminate_child_of_a_stopped_child_is_ok_and_does_nothing() -> None:
    driver = Driver().started()
    driver.request("terminate_child", "a")
    driver.log.clear()
    assert driver.request("terminate_child", "a") is None
    assert driver.log == []


def test_restart_child_starts_a_stopped_child_again() -> None:
    driver = Driver().started()
    driver.request("terminate_child", "b")
    driver.log.clear()
    pid = driver.request("restart_child", "b")
    assert driver.log == start("b")
    assert pid == driver.pid("b")


def test_restart_child_that_fails_to_start_stays_stopped_and_is_not_retried() -> None:
    driver = Driver().started().failing("b", "boom")
    driver.request("terminate_child", "b")
    error = driver.request("restart_child", "b")
    assert isinstance(error, StartError)
    assert driver.states()["b"] is ChildState.STOPPED
    assert not driver.retries


def test_delete_child_forgets_a_stopped_child() -> None:
    driver = Driver().started()
    driver.request("terminate_child", "b")
    assert driver.request("delete_child", "b") is None
    assert driver.ids() == ["a", "c"]


API_ERROR_TABLE = [
    ("restart_child", "a", "running"),
    ("restart_child", "zz", "not_found"),
    ("delete_child", "a", "running"),
    ("delete_child", "zz", "not_found"),
    ("terminate_child", "zz", "not_found"),
]


@pytest.mark.parametrize(("method", "child_id", "reason"), API_ERROR_TABLE)
def test_api_errors(method: str, child_id: str, reason: str) -> None:
    driver = Driver().started()
    error = driver.request(method, child_id)
    assert isinstance(error, ChildError)
    assert error.reason == reason


def test_temporary_child_cannot_be_restarted_after_it_exits() -> None:
    driver = Driver(children=[spec("t", "temporary")]).started()
    driver.crash("t", "normal")
    assert driver.request("restart_child", "t").reason == "not_found"


def test_count_children_counts_specs_running_children_and_types() -> None:
    driver = Driver(children=["a", ChildSpec("s", None, type="supervisor"), "c"]).started()
    driver.request("terminate_child", "c")
    counts = driver.core.count_children()
    assert (counts.specs, counts.active, counts.supervisors, counts.workers) == (3, 2, 1, 2)


# simple_one_for_one.


def simple(**kwargs: object) -> Driver:
    return Driver("simple_one_for_one", children=[spec("tpl", **kwargs)], intensity=5).started()


def test_simple_one_for_one_starts_no_children_at_init() -> None:
    driver = Driver("simple_one_for_one", children=["tpl"])
    driver.do(driver.core.init())
    assert driver.log == [("initialized", "test")]


def test_simple_one_for_one_start_child_appends_extra_args_to_the_template() -> None:
    driver = simple()
    actions = driver.core.start_child(["x", 1])
    assert actions == [Start(0, spec("tpl"), ("x", 1))]
    driver.do(actions)
    pid = driver.replies.pop()
    assert driver.core.which_children()[0].id is None
    assert driver.core.which_children()[0].pid == pid


def test_simple_one_for_one_restarts_a_child_with_the_same_args() -> None:
    driver = simple()
    pid = driver.request("start_child", ["x"])
    driver.do(driver.core.exited(pid, "crash"))
    (child,) = driver.core.which_children()
    assert child.pid.startswith("tpl['x']#") and child.pid != pid
    assert child.restart_count == 1


def test_simple_one_for_one_child_that_is_not_restarted_is_forgotten() -> None:
    driver = simple(restart="transient")
    pid = driver.request("start_child", [])
    driver.do(driver.core.exited(pid, "normal"))
    assert driver.core.which_children() == []


def test_simple_one_for_one_terminate_child_takes_a_pid() -> None:
    driver = simple()
    pid = driver.request("start_child", [])
    assert driver.request("terminate_child", "tpl").reason == "simple_one_for_one"
    assert driver.request("terminate_child", "nobody").reason == "not_found"
    assert driver.request("terminate_child", pid) is None
    assert driver.core.which_children() == []


@pytest.mark.parametrize("method", ["restart_child", "delete_child"])
def test_simple_one_for_one_refuses_restart_child_and_delete_child(method: str) -> None:
    driver = simple()
    driver.request("start_child", [])
    assert driver.request(method, "tpl").reason == "simple_one_for_one"


def test_simple_one_for_one_shutdown_terminates_all_children_at_once() -> None:
    driver = simple()
    pids = [driver.request("start_child", [n]) for n in range(3)]
    actions = driver.core.shutdown()
    assert sorted(a.pid for a in actions if isinstance(a, Terminate)) == sorted(pids)
    assert not any(isinstance(a, Exit) for a in actions)
    for pid in pids:
        actions = driver.core.terminated(pid, SHUTDOWN)
    assert actions == [Exit(SHUTDOWN)]


def test_simple_one_for_one_counts_children() -> None:
    driver = simple()
    for n in range(3):
        driver.request("start_child", [n])
    counts = driver.core.count_children()
    assert (counts.specs, counts.active, counts.supervisors, counts.workers) == (1, 3, 0, 3)


def test_simple_one_for_one_start_child_wants_args_not_a_spec() -> None:
    driver = simple()
    assert isinstance(driver.request("start_child", spec("x")), TypeError)



def test_simple_one_for_one_terminate_child_by_old_pid_removes_a_child_being_restarted() -> None:
    """OTP's find_child looks a pid up among the children being restarted too: terminate_child(OldPid) of a child
    whose restart failed is ok and forgets it, and its queued retry finds nothing (it was not_found, and the child
    kept being retried, each retry counted, with no way to stop it)."""
    driver = Driver(strategy="simple_one_for_one", children=[spec("conn")], intensity=5).started()
    ref = driver.request("start_child", ["x"])
    driver.failing("conn", "boom", "boom")
    driver.do(driver.core.exited(ref, "crash"))  # the restart fails: the child is restarting, a retry queued
    assert [c.state.value for c in driver.core.which_children()] == ["restarting"]
    assert driver.request("terminate_child", ref) is None
    assert driver.core.which_children() == []
    driver.log.clear()
    driver.run_retries()
    assert driver.log == []


# Shutdown reports: OTP expects shutdown (killed for brutal_kill); non-permanent children may also stop normally.

SHUTDOWN_REPORT_TABLE = [
    ("permanent", 5000, SHUTDOWN, False),
    ("permanent", 5000, KILLED, True),
    ("permanent", 5000, "normal", True),
    ("permanent", 5000, "crash", True),
    ("permanent", BRUTAL_KILL, KILLED, False),
    ("permanent", BRUTAL_KILL, SHUTDOWN, True),
    ("transient", 5000, "normal", False),
    ("transient", 5000, ("shutdown", "x"), False),
    ("transient", BRUTAL_KILL, "normal", False),
    ("temporary", 5000, "crash", True),
]


@pytest.mark.parametrize(("restart", "shutdown", "reason", "reported"), SHUTDOWN_REPORT_TABLE)
def test_unexpected_exit_reason_while_terminating_is_a_shutdown_error(
    restart: str, shutdown: object, reason: object, reported: bool
) -> None:
    driver = Driver(children=[spec("a", restart, shutdown)]).started()
    driver.terminate_reasons["a"] = reason
    driver.request("terminate_child", "a")
    assert driver.report_kinds() == ([ReportKind.SHUTDOWN_ERROR] if reported else [])


def test_events_are_refused_while_a_termination_is_pending() -> None:
    driver = Driver().started()
    pid = driver.pid("a")
    driver.core.terminate_child("b")
    with pytest.raises(RuntimeError, match="busy"):
        driver.core.exited(pid, "crash")
