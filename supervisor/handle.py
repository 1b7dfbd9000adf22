"""The owner's side of a supervisor: requests travel to its loop through the inbox and wait for the reply."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Hashable, Sequence
from typing import TYPE_CHECKING, cast

import trio

from supervisor.actions import Action, Reply
from supervisor.core import ChildCounts, ChildInfo, SupervisorCore
from supervisor.errors import RestartIntensityExceeded, SupervisorNotRunning
from supervisor.reasons import NORMAL
from supervisor.spec import ChildSpec

if TYPE_CHECKING:  # (refs asks a supervisor child's Handle to kill it)
    from supervisor.refs import ChildRef

Request = Callable[[SupervisorCore], list[Action]]


class Handle:
    """The owner's side of a running supervisor: OTP's dynamic supervisor API, plus stop()."""

    def __init__(self, name: str, inbox: trio.MemorySendChannel[object], stopped: trio.Event,
                 running: Callable[[], Collection[ChildRef]] = tuple,
                 kill: Callable[[], None] = lambda: None, ending: trio.Event | None = None) -> None:
        self.name = name
        self._inbox = inbox
        self._stopped = stopped
        self._running = running
        self._kill = kill
        self._ending = ending if ending is not None else stopped  # set as it gives up, or once it has stopped
        self.gave_up: RestartIntensityExceeded | None = None  # set by the runtime as it begins giving up

    async def start_child(self, spec_or_args: ChildSpec | Sequence[object]) -> ChildRef:
        """Add and start a child (simple_one_for_one: the template with extra args); its ref."""
        return cast("ChildRef", await self._call(lambda core: core.start_child(spec_or_args)))

    async def terminate_child(self, id_or_ref: object) -> None:
        """Stop a child by id (simple_one_for_one: by ref), keeping its spec unless temporary."""
        await self._call(lambda core: core.terminate_child(id_or_ref))

    async def restart_child(self, child_id: Hashable) -> ChildRef:
        """Start again a stopped child whose spec is kept; its new ref."""
        return cast("ChildRef", await self._call(lambda core: core.restart_child(child_id)))

    async def delete_child(self, child_id: Hashable) -> None:
        """Forget the spec of a stopped child."""
        await self._call(lambda core: core.delete_child(child_id))

    async def which_children(self) -> list[ChildInfo[ChildRef]]:
        """Every child with its id, ref (os_pid, started_at, value), state, type and restart count."""
        return cast("list[ChildInfo[ChildRef]]", await self._call(lambda core: [Reply(core.which_children())]))

    def running_children(self) -> list[ChildRef]:
        """The children whose task or process runs at this moment, one being started or stopped included, read
        without a request: answered at once while the supervisor is busy (which_children waits, as OTP's does).
        For signalling them; what the policy holds is which_children's."""
        return [ref for ref in self._running() if ref.reason is None]

    async def count_children(self) -> ChildCounts:
        """Counts of specs, running children, supervisors and workers."""
        return cast(ChildCounts, await self._call(lambda core: [Reply(core.count_children())]))

    async def ending(self) -> RestartIntensityExceeded | None:
        """Until the supervisor gives up (its restart intensity exceeded) or has stopped. Giving up, it answers as
        it begins stopping its children, with the error `serve` raises once they have stopped; stopped, None."""
        await self._ending.wait()
        return self.gave_up

    async def stop(self) -> None:
        """Stop all children in reverse start order, then the supervisor, which exits normally."""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            self._inbox.send_nowait(Call(lambda core: core.shutdown(NORMAL)))
        await self._stopped.wait()

    def kill(self) -> None:
        """Kill the supervisor and its subtree at once, OTP's exit(Sup, kill): every child is killed where it stands
        (SIGKILL, a supervisor child killed the same way), with no orderly shutdown; `serve` then raises
        ChildExit(killed). Returns at once, while the children die (stop() waits)."""
        self._kill()

    async def _call(self, request: Request) -> object:
        call = Call(request)
        try:
            self._inbox.send_nowait(call)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise SupervisorNotRunning(self.name) from None
        return await call.result()


class Call:
    """A request from the owner, answered by the Reply action it leads to."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self._value: object = None
        self._done = trio.Event()

    def resolve(self, value: object) -> None:
        if not self._done.is_set():
            self._value = value
            self._done.set()

    async def result(self) -> object:
        await self._done.wait()
        if isinstance(self._value, BaseException):
            raise self._value
        return self._value
