"""The supervisor policy as a sans-I/O state machine: OTP's supervisor.erl without processes or clocks.

A runtime drives it. It calls `init()`, reports each child's unsolicited exit with `exited()`, passes
on the owner's requests (`start_child()`, `terminate_child()`, ..., `shutdown()`), and carries out the
returned actions in order. Each `Start` must be answered with `started()` or `start_failed()` and each
`Terminate` with `terminated()`. While such an answer is due the policy is busy, as an OTP supervisor
is while it starts or stops a child, and it refuses other events; the runtime queues them meanwhile.

Pids are opaque to the policy: whatever the runtime passed to `started()`. Restart times come from the
injected clock, counted in whole seconds (see `supervisor.intensity`).
"""

import itertools
from collections import deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Generic, TypeVar

from supervisor.actions import (
    Action,
    Exit,
    Initialized,
    Reply,
    Report,
    ReportKind,
    RetryLater,
    Start,
    Terminate,
)
from supervisor.errors import ChildError, RestartIntensityExceeded, StartError
from supervisor.intensity import RestartWindow
from supervisor.reasons import KILLED, SHUTDOWN, is_abnormal
from supervisor.spec import BRUTAL_KILL, ChildSpec, ChildType, Restart, Strategy, SupFlags


class Phase(Enum):
    """The supervisor's life: not started, starting its children, running, exited."""

    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    EXITED = "exited"


class ChildState(Enum):
    """A child's process: running, about to be restarted after a failed restart, or none (OTP's undefined)."""

    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPED = "stopped"


PidT = TypeVar("PidT")


@dataclass(frozen=True)
class ChildInfo(Generic[PidT]):
    """One entry of which_children(); `id` is None for simple_one_for_one children, as in OTP. `pid` is what the
    runtime passed to started() (the runtime's handle says which type: a ChildRef)."""

    id: Hashable | None
    pid: PidT | None
    state: ChildState
    type: ChildType
    restart_count: int


@dataclass(frozen=True)
class ChildCounts:
    """count_children(): specs, running children, and children per type."""

    specs: int
    active: int
    supervisors: int
    workers: int


@dataclass(eq=False)
class _Child:
    key: Hashable
    spec: ChildSpec
    args: tuple[object, ...] = ()
    state: ChildState = ChildState.STOPPED
    pid: object | None = None
    restart_count: int = 0
    last_failure: object = None
    last_pid: object | None = None  # the pid it exited as (a dynamic child being restarted is found by it)


class _JobKind(Enum):
    INIT = "init"
    RESTART = "restart"
    SHUTDOWN = "shutdown"
    START_CHILD = "start_child"
    RESTART_CHILD = "restart_child"
    TERMINATE_CHILD = "terminate_child"


class _Op(Enum):
    START = "start"
    TERMINATE = "terminate"


@dataclass
class _Job:
    """A sequence of starts and terminations in progress, done one at a time unless `concurrent`."""

    kind: _JobKind
    steps: deque[tuple[_Op, _Child]]
    concurrent: bool = False
    exit_reason: object = None
    reply: object = None
    waiting: int = 0
    starting: _Child | None = None


class SupervisorCore:
    """OTP supervisor semantics over events and actions; see the module docstring for the protocol."""

    def __init__(
        self,
        flags: SupFlags,
        specs: Sequence[ChildSpec],
        clock: Callable[[], float],
        name: str = "supervisor",
        pid_alive: Callable[[object], bool] = lambda pid: True,
        place: Callable[[Hashable], int] | None = None,
    ) -> None:
        self.flags = flags
        self.name = name
        self._pid_alive = pid_alive  # False for a pid whose process has exited (OTP's is_process_alive)
        self._place = place  # SupervisorSpec.place
        self.phase = Phase.NEW
        self._clock = clock
        self._window = RestartWindow(flags.intensity, flags.period)
        self._simple = flags.strategy is Strategy.SIMPLE_ONE_FOR_ONE
        self._children: dict[Hashable, _Child] = {}
        self._by_pid: dict[object, _Child] = {}
        self._keys = itertools.count()
        self._job: _Job | None = None
        if self._simple:
            if len(specs) != 1:
                raise ValueError("simple_one_for_one takes exactly one child spec")
            self._template = specs[0]
        else:
            for spec in specs:
                if spec.id in self._children:
                    raise ValueError(f"duplicate child id {spec.id!r}")
                self._children[spec.id] = _Child(spec.id, spec)

    # Lifecycle events.

    def init(self) -> list[Action]:
        """Start the children left to right; Initialized, or Exit(StartError) after stopping the started ones."""
        self._expect_idle(Phase.NEW)
        self.phase = Phase.STARTING
        return self._run(_Job(_JobKind.INIT, deque((_Op.START, child) for child in self._children.values())))

    def shutdown(self, reason: object = SHUTDOWN) -> list[Action]:
        """Stop all children in reverse start order (simple_one_for_one: all at once; with a `place`, from the
        highest place down), then Exit(reason)."""
        self._expect_idle(Phase.RUNNING)
        return self._begin_shutdown(reason)

    def exited(self, pid: object, reason: object) -> list[Action]:
        """A child exited on its own; restart it (and its siblings) as its restart type and the strategy say."""
        self._expect_idle(Phase.RUNNING)
        child = self._by_pid.get(pid)
        if child is None:
            return []
        del self._by_pid[pid]
        child.last_failure = reason
        child.last_pid = pid
        report = Report(ReportKind.CHILD_TERMINATED, child.spec.id, reason, pid)
        restart = child.spec.restart
        if restart is Restart.PERMANENT or (restart is Restart.TRANSIENT and is_abnormal(reason)):
            return [report, *self._restart(child)]
        self._delete(child)
        return [report] if is_abnormal(reason) else []

    def retry(self, key: Hashable) -> list[Action]:
        """Try again to restart a child whose restart failed; this counts as another restart."""
        self._expect_idle(Phase.RUNNING)
        child = self._children.get(key)
        if child is None or child.state is not ChildState.RESTARTING:
            return []
        return self._restart(child)

    # Answers to Start and Terminate.

    def started(self, key: Hashable, pid: object) -> list[Action]:
        """The child started by Start(key) is running as `pid`."""
        job, child = self._take_starting(key)
        child.state = ChildState.RUNNING
        child.pid = pid
        self._by_pid[pid] = child
        if job.kind is _JobKind.RESTART:
            child.restart_count += 1
        elif job.kind is _JobKind.START_CHILD:
            self._children[child.key] = child
        job.reply = pid
        return [Report(ReportKind.STARTED, child.spec.id, pid=pid), *self._advance()]

    def start_failed(self, key: Hashable, reason: object) -> list[Action]:
        """The child started by Start(key) failed to start."""
        job, child = self._take_starting(key)
        report = Report(ReportKind.START_ERROR, child.spec.id, reason)
        if job.kind is _JobKind.INIT:
            return [report, *self._begin_shutdown(StartError(child.spec.id, reason))]
        job.steps.clear()
        if job.kind is _JobKind.RESTART:
            child.state = ChildState.RESTARTING
            child.last_failure = reason
            return [report, RetryLater(child.key), *self._finish()]
        job.reply = StartError(child.spec.id, reason)
        return [report, *self._finish()]

    def terminated(self, pid: object, reason: object) -> list[Action]:
        """The child running as `pid` has stopped after a Terminate, with exit reason `reason`."""
        job = self._expect_job()
        child = self._by_pid[pid]
        job.waiting -= 1
        self._delete(child)
        actions: list[Action] = []
        if not _clean_shutdown(child.spec, reason):
            actions.append(Report(ReportKind.SHUTDOWN_ERROR, child.spec.id, reason, pid))
        return actions + self._advance()

    # The owner's requests; each answers with a Reply action.

    def start_child(self, spec_or_args: ChildSpec | Sequence[object]) -> list[Action]:
        """Add and start a child: a ChildSpec, or for simple_one_for_one the extra args for the template."""
        self._expect_idle(Phase.RUNNING)
        if self._simple:
            if isinstance(spec_or_args, ChildSpec):
                return [Reply(TypeError("simple_one_for_one start_child takes extra args, not a ChildSpec"))]
            try:
                args = tuple(spec_or_args)
            except TypeError:
                return [Reply(TypeError(f"simple_one_for_one start_child takes a sequence of extra args, "
                                        f"not {spec_or_args!r}"))]
            child = _Child(next(self._keys), self._template, args)
        elif not isinstance(spec_or_args, ChildSpec):
            return [Reply(TypeError(f"start_child takes a ChildSpec, not {spec_or_args!r}"))]
        elif (existing := self._children.get(spec_or_args.id)) is not None:
            if existing.state is ChildState.RUNNING:
                return [Reply(ChildError(("already_started", existing.pid)))]
            return [Reply(ChildError("already_present"))]
        else:
            child = _Child(spec_or_args.id, spec_or_args)
        return self._run(_Job(_JobKind.START_CHILD, deque([(_Op.START, child)])))

    def terminate_child(self, id_or_pid: object) -> list[Action]:
        """Stop a child but keep its spec (temporary and simple_one_for_one children are removed)."""
        self._expect_idle(Phase.RUNNING)
        if self._simple:
            child = _find(self._by_pid, id_or_pid)
            if child is None:
                # OTP's find_child: a child being restarted is found by the pid it exited as; with no process to
                # stop it is forgotten, and its queued retry finds nothing
                restarting = next((c for c in self._children.values() if c.state is ChildState.RESTARTING
                                   and c.last_pid == id_or_pid), None)
                if restarting is not None:
                    self._delete(restarting)
                    return [Reply(None)]
                if id_or_pid != self._template.id and not self._pid_alive(id_or_pid):
                    return [Reply(None)]  # a child that has already exited: find_child answers the template, ok
                reason = "simple_one_for_one" if id_or_pid == self._template.id else "not_found"
                return [Reply(ChildError(reason))]
        elif (child := _find(self._children, id_or_pid)) is None:
            return [Reply(ChildError("not_found"))]
        return self._run(_Job(_JobKind.TERMINATE_CHILD, deque([(_Op.TERMINATE, child)])))

    def restart_child(self, child_id: Hashable) -> list[Action]:
        """Start again a child whose spec is kept but which is not running."""
        self._expect_idle(Phase.RUNNING)
        child, error = self._stopped_child(child_id)
        if child is None:
            return [Reply(error)]
        return self._run(_Job(_JobKind.RESTART_CHILD, deque([(_Op.START, child)])))

    def delete_child(self, child_id: Hashable) -> list[Action]:
        """Forget the spec of a child that is not running."""
        self._expect_idle(Phase.RUNNING)
        child, error = self._stopped_child(child_id)
        if child is not None:
            del self._children[child.key]
        return [Reply(error)]

    # Queries.

    def which_children(self) -> list[ChildInfo[object]]:
        """Every child in start order, with its pid (None unless running), state, type and restart count."""
        return [
            ChildInfo(None if self._simple else c.spec.id, c.pid, c.state, c.spec.type, c.restart_count)
            for c in self._children.values()
        ]

    def count_children(self) -> ChildCounts:
        """How many specs, running children, supervisors and workers there are."""
        children = self._children.values()
        specs = 1 if self._simple else len(self._children)
        active = sum(c.state is ChildState.RUNNING for c in children)
        supervisors = sum(c.spec.type is ChildType.SUPERVISOR for c in children)
        return ChildCounts(specs, active, supervisors, len(self._children) - supervisors)

    # Internals.

    def _restart(self, child: _Child) -> list[Action]:
        if not self._window.add(self._clock()):
            self._delete(child)
            error = RestartIntensityExceeded(self.name, child.spec.id, child.last_failure)
            return [Report(ReportKind.MAX_INTENSITY, child.spec.id, child.last_failure), *self._begin_shutdown(error)]
        child.state = ChildState.STOPPED
        child.pid = None
        group = self._restart_group(child)
        steps = deque((_Op.TERMINATE, c) for c in reversed(group) if c is not child)
        steps.extend((_Op.START, c) for c in group if c.spec.restart is not Restart.TEMPORARY)
        return self._run(_Job(_JobKind.RESTART, steps))

    def _restart_group(self, child: _Child) -> list[_Child]:
        """The children restarted with `child`, in start order, as the strategy says."""
        children = list(self._children.values())
        match self.flags.strategy:
            case Strategy.ONE_FOR_ALL:
                return children
            case Strategy.REST_FOR_ONE:
                return children[children.index(child) :]
            case _:
                return [child]

    def _begin_shutdown(self, reason: object) -> list[Action]:
        children = list(reversed(self._children.values()))
        if (place := self._place) is not None:
            children.sort(key=lambda child: place(child.spec.id), reverse=True)  # (stable: ties stay reversed)
        steps = deque((_Op.TERMINATE, child) for child in children)
        return self._run(_Job(_JobKind.SHUTDOWN, steps, concurrent=self._simple, exit_reason=reason))

    def _run(self, job: _Job) -> list[Action]:
        self._job = job
        return self._advance()

    def _advance(self) -> list[Action]:
        """Hand out the job's next I/O (all remaining terminations if concurrent), or finish the job."""
        job = self._expect_job()
        actions: list[Action] = []
        while job.steps and (job.waiting == 0 or job.concurrent):
            op, child = job.steps.popleft()
            if op is _Op.START:
                job.waiting += 1
                job.starting = child
                actions.append(Start(child.key, child.spec, child.args))
            elif child.state is ChildState.RUNNING:
                job.waiting += 1
                shutdown = child.spec.shutdown
                assert shutdown is not None  # ChildSpec.__post_init__ sets the default
                actions.append(Terminate(child.spec.id, child.pid, shutdown))
            else:
                self._delete(child)
        if job.waiting == 0:
            actions += self._finish()
        return actions

    def _finish(self) -> list[Action]:
        job = self._expect_job()
        self._job = None
        match job.kind:
            case _JobKind.INIT:
                self.phase = Phase.RUNNING
                return [Initialized()]
            case _JobKind.SHUTDOWN:
                self.phase = Phase.EXITED
                return [Exit(job.exit_reason)]
            case _JobKind.RESTART:
                return []
            case _:
                return [Reply(job.reply)]

    def _delete(self, child: _Child) -> None:
        """OTP's del_child: a stopped temporary or dynamic child is forgotten, any other keeps its spec."""
        self._by_pid.pop(child.pid, None)
        if self._simple or child.spec.restart is Restart.TEMPORARY:
            self._children.pop(child.key, None)
        else:
            child.state = ChildState.STOPPED
            child.pid = None

    def _stopped_child(self, child_id: Hashable) -> tuple[_Child, None] | tuple[None, ChildError]:
        if self._simple:
            return None, ChildError("simple_one_for_one")
        child = _find(self._children, child_id)
        if child is None:
            return None, ChildError("not_found")
        if child.state is ChildState.RUNNING:
            return None, ChildError("running")
        if child.state is ChildState.RESTARTING:
            return None, ChildError("restarting")
        return child, None

    def _take_starting(self, key: Hashable) -> tuple[_Job, _Child]:
        job = self._expect_job()
        child = job.starting
        if child is None or child.key != key:
            raise RuntimeError(f"supervisor {self.name!r}: no start of {key!r} is pending")
        job.starting = None
        job.waiting -= 1
        return job, child

    def _expect_job(self) -> _Job:
        if self._job is None:
            raise RuntimeError(f"supervisor {self.name!r}: no start or termination is pending")
        return self._job

    def _expect_idle(self, phase: Phase) -> None:
        if self._job is not None:
            raise RuntimeError(f"supervisor {self.name!r} is busy with {self._job.kind.value}")
        if self.phase is not phase:
            raise RuntimeError(f"supervisor {self.name!r} is {self.phase.value}, not {phase.value}")


def _find(table: Mapping[Any, _Child], key: object) -> _Child | None:
    """The child `key` names, or None; OTP takes any term as an id (validId(_Id) -> true) and answers not_found for
    one that names no child, so a key the dict cannot hash (a list) names none rather than crashing the loop."""
    try:
        return table.get(key)
    except TypeError:
        return None


def _clean_shutdown(spec: ChildSpec, reason: object) -> bool:
    """Whether a terminated child stopped the way OTP expects (anything else is a shutdown_error)."""
    expected = KILLED if spec.shutdown == BRUTAL_KILL else SHUTDOWN
    return reason == expected or (spec.restart is not Restart.PERMANENT and not is_abnormal(reason))
