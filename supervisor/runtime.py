"""The Trio runtime: runs a SupervisorCore as a task that owns a nursery of children.

One loop per supervisor takes events from an inbox (child exits, retries, the owner's requests) one at a
time and carries out the policy's actions, starting and stopping children one by one as OTP does. The
loop and the children are shielded from outside cancellation: cancelling `serve` becomes a request to
shut down, so children are still stopped in reverse start order with their shutdown values. Only
Handle.kill (OTP's exit(Sup, kill)) ends the loop where it stands, every child killed with it.
"""

import contextlib
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, cast

import trio

from supervisor.actions import Action, Exit, Initialized, Reply, Report, ReportKind, RetryLater, Start, Terminate
from supervisor.core import SupervisorCore
from supervisor.errors import ChildExit, RestartIntensityExceeded, SupervisorNotRunning
from supervisor.handle import Call, Handle
from supervisor.process import Process, ProcessRef
from supervisor.reasons import KILLED, SHUTDOWN
from supervisor.refs import ChildRef, SupervisorRef, TaskRef, is_start_error
from supervisor.spec import ChildType, SupervisorSpec

logger = logging.getLogger("supervisor")

_LOG_LEVELS = {
    ReportKind.STARTED: logging.INFO,
    ReportKind.CHILD_TERMINATED: logging.ERROR,
    ReportKind.START_ERROR: logging.ERROR,
    ReportKind.SHUTDOWN_ERROR: logging.ERROR,
    ReportKind.MAX_INTENSITY: logging.ERROR,
}


async def serve(spec: SupervisorSpec, *, task_status: trio.TaskStatus[Handle] = trio.TASK_STATUS_IGNORED) -> None:
    """Run a supervisor: task_status.started(handle) once all children have started.

    Returns after Handle.stop(). Raises StartError if a child fails to start (before started() is
    called), RestartIntensityExceeded (exit reason shutdown) when it gives up after too many
    restarts, Cancelled, once every child is stopped, when it is cancelled, and ChildExit(killed)
    after Handle.kill().
    """
    reason = await _Runtime(spec).run(task_status)
    if isinstance(reason, BaseException):
        raise reason


@dataclass(frozen=True)
class _Exited:
    ref: ChildRef
    reason: object


@dataclass(frozen=True)
class _Retry:
    key: Hashable


class _Runtime:
    """One supervisor's loop, nursery and inbox."""

    def __init__(self, spec: SupervisorSpec) -> None:
        self._name = spec.name
        self._core = SupervisorCore(spec.flags, spec.children, trio.current_time, spec.name,
                                    lambda pid: not (isinstance(pid, ChildRef) and pid.exited), spec.place)
        self._send, self._inbox = trio.open_memory_channel[object](math.inf)
        self._stopped = trio.Event()
        self._ending = trio.Event()  # Handle.ending: set as the policy gives up, or once the loop has ended
        self._running: set[ChildRef] = set()  # refs started and not yet exited (Handle.running_children)
        self._handle = Handle(spec.name, self._send, self._stopped, self._running.copy, self._kill, self._ending)
        self._call: Call | None = None
        self._loop_scope = trio.CancelScope(shield=True)

    async def run(self, task_status: trio.TaskStatus[Handle]) -> object:
        """Run until the policy exits; return the exit reason."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._watch_cancellation)
                reason: object = ChildExit(KILLED)  # unless the loop ends on its own (see _kill)
                with self._loop_scope:
                    reason = await self._loop(task_status)
                nursery.cancel_scope.cancel()
        finally:
            self._stopped.set()
            self._ending.set()
        return reason

    def _kill(self) -> None:
        """OTP's exit(Sup, kill): the supervisor dies at once and its children with it, without its orderly shutdown
        (so a supervisor child's brutal_kill, or the kill after its shutdown timeout, takes its subtree at once)."""
        for ref in list(self._running):  # (one being started or stopped included)
            ref.kill()
        self._loop_scope.cancel()

    async def _watch_cancellation(self) -> None:
        """Turn cancellation from outside into a shutdown request."""
        try:
            await trio.sleep_forever()
        finally:
            self._post(Call(lambda core: core.shutdown(SHUTDOWN)))

    async def _loop(self, task_status: trio.TaskStatus[Handle]) -> object:
        try:
            exit_action = await self._execute(self._core.init(), task_status)
            while exit_action is None:
                exit_action = await self._execute(self._dispatch(await self._inbox.receive()), task_status)
        except BaseException:
            # A bug, not a policy decision, or Handle.kill: take the children down rather than hang the nursery.
            for child in self._core.which_children():
                if isinstance(child.pid, ChildRef):
                    child.pid.kill()
            raise
        finally:
            self._close_inbox()
        return exit_action.reason

    def _dispatch(self, message: object) -> list[Action]:
        match message:
            case _Exited(ref, reason):
                return self._core.exited(ref, reason)
            case _Retry(key):
                return self._core.retry(key)
            case Call():
                self._call = message
                return message.request(self._core)
        raise TypeError(f"unexpected message {message!r}")

    async def _execute(self, actions: list[Action], task_status: trio.TaskStatus[Handle]) -> Exit | None:
        """Carry out actions, and those the answers lead to, until none are left or the policy exits."""
        pending = deque(actions)
        while pending:
            match pending.popleft():
                case Start() as start:
                    pending.extend(await self._start(start))
                case Terminate() as terminate:
                    batch = [terminate]
                    while pending and isinstance(pending[0], Terminate):
                        batch.append(cast(Terminate, pending.popleft()))
                    pending.extend(await self._terminate(batch))
                case Report() as report:
                    self._log(report)
                    if report.kind is ReportKind.MAX_INTENSITY:  # the policy's shutdown follows: it is giving up
                        self._handle.gave_up = RestartIntensityExceeded(self._name, report.child_id, report.reason)
                        self._ending.set()
                case Reply(value):
                    if self._call is not None:
                        self._call.resolve(value)
                case RetryLater(key):
                    self._post(_Retry(key))
                case Initialized():
                    task_status.started(self._handle)
                case Exit() as exit_action:
                    return exit_action
        return None

    async def _start(self, start: Start) -> list[Action]:
        ref = _make_ref(start)
        self._running.add(ref)
        try:
            await self._nursery.start(ref.run, self._on_exit)
        except BaseException as exc:
            self._running.discard(ref)
            if not is_start_error(exc):
                raise
            return self._core.start_failed(start.key, exc)
        return self._core.started(start.key, ref)

    async def _terminate(self, batch: list[Terminate]) -> list[Action]:
        actions: list[Action] = []

        async def terminate(action: Terminate) -> None:
            reason = await cast(ChildRef, action.pid).terminate(action.shutdown)
            actions.extend(self._core.terminated(action.pid, reason))

        async with trio.open_nursery() as nursery:
            for action in batch:
                nursery.start_soon(terminate, action)
        return actions

    def _on_exit(self, ref: ChildRef, reason: object) -> None:
        self._running.discard(ref)
        self._post(_Exited(ref, reason))

    def _post(self, message: object) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            self._send.send_nowait(message)

    def _close_inbox(self) -> None:
        """Refuse further requests and fail those still queued."""
        while True:
            try:
                message = self._inbox.receive_nowait()
            except trio.WouldBlock:
                break
            if isinstance(message, Call):
                message.resolve(SupervisorNotRunning(self._name))
        if self._call is not None:
            self._call.resolve(SupervisorNotRunning(self._name))
        self._inbox.close()

    def _log(self, report: Report) -> None:
        logger.log(
            _LOG_LEVELS[report.kind],
            "supervisor %s: %s: child=%r pid=%r reason=%s",
            self._name,
            report.kind.value,
            report.child_id,
            report.pid,
            report.reason,
        )


def _make_ref(start: Start) -> ChildRef:
    if isinstance(start.spec.start, Process):
        return ProcessRef(start.spec.id, start.spec.start, start.args)
    task_ref = SupervisorRef if start.spec.type is ChildType.SUPERVISOR else TaskRef
    return task_ref(start.spec.id, cast(Callable[..., Awaitable[Any]], start.spec.start), start.args)
