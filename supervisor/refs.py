"""Running children as the runtime sees them: what OTP calls a child's pid, and Trio task children."""

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

import trio

from supervisor.errors import ChildExit
from supervisor.handle import Handle
from supervisor.reasons import KILLED, NORMAL, SHUTDOWN
from supervisor.spec import BRUTAL_KILL, INFINITY, Shutdown

ExitCallback = Callable[["ChildRef", object], None]


class ChildRef(ABC):
    """One incarnation of a child, from its start to its exit."""

    os_pid: int | None = None

    def __init__(self, child_id: Hashable) -> None:
        self.id = child_id
        self.started_at: float | None = None
        self.value: object = None
        self.reason: object = None
        self._started = False
        self._done = trio.Event()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id!r} os_pid={self.os_pid}>"

    @property
    def exited(self) -> bool:
        """Has this incarnation ended (its exit reason known)?"""
        return self._done.is_set()

    @abstractmethod
    async def run(self, on_exit: ExitCallback, *, task_status: trio.TaskStatus[object]) -> None:
        """Start the child, report readiness through `task_status`, and call `on_exit` when it ends."""

    @abstractmethod
    def stop(self) -> None:
        """Ask the child to stop (OTP's exit(Child, shutdown))."""

    @abstractmethod
    def kill(self) -> None:
        """Stop the child unconditionally (OTP's exit(Child, kill))."""

    async def terminate(self, shutdown: Shutdown) -> object:
        """Stop the child as its shutdown value says and return its exit reason."""
        if shutdown == BRUTAL_KILL:
            self.kill()
        else:
            self.stop()
            if shutdown != INFINITY:
                with trio.move_on_after(shutdown / 1000):
                    await self._done.wait()
                if not self._done.is_set():
                    self.kill()
        await self._done.wait()
        return self.reason

    def _mark_started(self, task_status: trio.TaskStatus[object], value: object) -> None:
        self._started = True
        self.started_at = trio.current_time()
        self.value = value
        task_status.started(value)

    def _finish(self, on_exit: ExitCallback, reason: object) -> None:
        self.reason = reason
        self._done.set()
        if self._started:
            on_exit(self, reason)


class TaskRef(ChildRef):
    """A child that is a Trio task: `async def child(*args, task_status)`.

    Returning is a normal exit, raising ChildExit(reason) exits with that reason, any other exception
    is an abnormal exit with the exception as reason. Stopping cancels the task, which then exits with
    reason shutdown (killed for brutal_kill). A task cannot be killed outright: one that ignores
    cancellation past its shutdown timeout is waited for.
    """

    def __init__(self, child_id: Hashable, start: Callable[..., Awaitable[Any]], args: tuple[object, ...]) -> None:
        super().__init__(child_id)
        self._start = start
        self._args = args
        self._scope = trio.CancelScope(shield=True)
        self._killed = False

    async def run(self, on_exit: ExitCallback, *, task_status: trio.TaskStatus[object]) -> None:
        reason: object = NORMAL
        # Shielded: only this supervisor stops its children, in its own order.
        with self._scope:
            try:
                await self._start(*self._args, task_status=_Status(self, task_status))
            except Exception as exc:
                if not self._started:
                    raise
                reason = exc.reason if isinstance(exc, ChildExit) else exc
            except BaseException as exc:  # SystemExit, a group holding one: an exit like any other (OTP restarts a
                if _cancelled_only(exc):  # permanent child whatever it died of); a Cancelled is this scope's stop
                    raise
                # Before its start: a start error (is_start_error). An interrupt is the operator's: it goes on up,
                # its exit reported.
                if not self._started or isinstance(exc, KeyboardInterrupt):
                    self._finish(on_exit, exc)
                    raise
                reason = exc
        if self._scope.cancelled_caught:
            reason = KILLED if self._killed else SHUTDOWN
        self._finish(on_exit, reason)

    def stop(self) -> None:
        self._scope.cancel()

    def kill(self) -> None:
        self._killed = True
        self._scope.cancel()


class SupervisorRef(TaskRef):
    """A supervisor child run as a task (`serve`, which reports its Handle as started).

    Killing it kills the supervisor and its subtree at once (Handle.kill), as OTP's exit(Sup, kill) takes the
    supervisor's linked children with it; cancelling alone would run its orderly shutdown, each grandchild given its
    full shutdown time.
    """

    def kill(self) -> None:
        if isinstance(self.value, Handle):
            self.value.kill()
        super().kill()


class _Status:
    """The task_status a task child sees: records readiness on its ref before passing it on."""

    def __init__(self, ref: TaskRef, task_status: trio.TaskStatus[object]) -> None:
        self._ref = ref
        self._task_status = task_status

    def started(self, value: object = None) -> None:
        self._ref._mark_started(self._task_status, value)


def _cancelled_only(exc: BaseException) -> bool:
    """Is `exc` a trio.Cancelled, or a group of nothing else?"""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)[1] is None
    return isinstance(exc, trio.Cancelled)


def is_start_error(exc: BaseException) -> bool:
    """Is what a child's start raised a start error (OTP's do_start_child_i: whatever the start function does is
    caught, `What -> {error, What}`)? Anything but a cancellation of the start and the operator's interrupt."""
    if isinstance(exc, BaseExceptionGroup):
        return not _cancelled_only(exc) and exc.split(KeyboardInterrupt)[0] is None
    return not isinstance(exc, (trio.Cancelled, KeyboardInterrupt))
