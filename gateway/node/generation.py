"""One generation of workers: its supervisor (workers@G) runs in the root's nursery, beside the root supervisor rather
than inside its loop, so that retiring it never keeps the root supervisor busy.

The root supervisor's child workers@G is the generation's link (`Generation.link`): it starts the generation's
supervisor and ends as that ends, with its error (the root restarts it: OTP's escalation, as if the supervisor were
the child itself). Stopped by the root (a stop, or a restart strategy), it waits for the supervisor's shutdown, as a
supervisor child's `infinity` shutdown does. Retired, it lets go at once: the root supervisor's terminate_child
returns, and the generation's shutdown is awaited by a task of the root's nursery (Node._retire), as nginx's master
signals its old workers and goes on with its loop (ngx_process_cycle.c, ngx_master_process_cycle).
Giving up (its restart intensity exceeded), the supervisor is handed over the same way as it begins stopping its
workers: the link ends with its error at once, so the root restarts workers@G on the same listener slots while the
survivors drain beside it, retiring (`on_give_up`), as nginx's master respawns a dead worker at once and never stops
the others (release-1.27.1 src/os/unix/ngx_process_cycle.c:593-598, ngx_reap_children).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable

import trio

from supervisor import ChildSpec, ChildType, Handle, Restart, SupervisorSpec, serve
from supervisor.refs import ChildRef


class _Run:
    """One incarnation of the generation's supervisor: its handle once started, and how it ended."""

    def __init__(self) -> None:
        self.handle: Handle | None = None
        self.error: Exception | None = None
        self.done = trio.Event()


class _Started:
    """The task_status `serve` reports to: records the handle on the run before passing the start on."""

    def __init__(self, run: _Run, task_status: trio.TaskStatus[None]) -> None:
        self._run = run
        self._task_status = task_status

    def started(self, value: Handle) -> None:
        self._run.handle = value
        self._task_status.started()


class Generation:
    """Generation `number`'s workers supervisor, run in the root's nursery (`nursery`, set once it is open);
    `drain_timeout`: how long its retirement may take before what is left of it is killed; `on_give_up`: given the
    survivors of each give-up, a retiring Generation of their own (without it, their supervisor's shutdown alone
    stops them)."""

    def __init__(self, number: int, spec: SupervisorSpec, drain_timeout: float) -> None:
        self.number = number
        self.spec = spec
        self.drain_timeout = drain_timeout
        self.nursery: trio.Nursery | None = None
        self.on_give_up: Callable[[Generation], None] | None = None
        self.retiring = False
        self.gave_up = False  # the survivors of a give-up: they left the root supervisor with their link
        self._run: _Run | None = None

    @property
    def id(self) -> str:
        return self.spec.name

    def child_spec(self) -> ChildSpec:
        """The root supervisor's child workers@G: permanent, a supervisor (its shutdown: as long as the drain)."""
        return ChildSpec(self.id, self.link, restart=Restart.PERMANENT, type=ChildType.SUPERVISOR)

    @property
    def handle(self) -> Handle | None:
        """The running incarnation's supervisor (a restart by the root makes a new one)."""
        return self._run.handle if self._run is not None else None

    def workers(self) -> list[ChildRef]:
        """Its workers running now, asked of no one (for signals: never waits for a busy supervisor)."""
        handle = self.handle
        return handle.running_children() if handle is not None else []

    def signal_workers(self, signum: signal.Signals) -> None:
        """Send `signum` to each of its workers that has started (one still starting may not handle it yet)."""
        for ref in self.workers():
            if ref.os_pid and ref.started_at is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(ref.os_pid, signum)

    async def link(self, *, task_status: trio.TaskStatus[Handle] = trio.TASK_STATUS_IGNORED) -> None:
        """The root's child: start the supervisor in the root's nursery, then end as it ends (see the module)."""
        assert self.nursery is not None, "Generation.nursery is set before the root supervisor starts it"
        run = _Run()
        await self.nursery.start(self._supervise, run)
        assert run.handle is not None
        self._run = run
        task_status.started(run.handle)
        try:
            gave_up = await run.handle.ending()
            if gave_up is None:
                await run.done.wait()
        except trio.Cancelled:  # the root supervisor stops this child
            if not self.retiring:
                with trio.CancelScope(shield=True):
                    await run.handle.stop()
            raise
        if self.retiring:
            await trio.sleep_forever()  # its shutdown began first: the root's terminate_child, on its way, ends this
        if gave_up is not None:
            self._hand_over(run)
            raise gave_up
        if run.error is not None:
            raise run.error

    def _hand_over(self, run: _Run) -> None:
        """`run`'s supervisor gave up and is stopping its workers: they go on as a retiring Generation of their own,
        passed to `on_give_up`, while the root restarts this one."""
        survivors = Generation(self.number, self.spec, self.drain_timeout)
        survivors.nursery = self.nursery
        survivors.retiring = survivors.gave_up = True
        survivors._run = run
        self._run = None
        if self.on_give_up is not None:
            self.on_give_up(survivors)

    async def _supervise(self, run: _Run, *, task_status: trio.TaskStatus[None]) -> None:
        """The supervisor itself: a start failure is raised to `link` (nursery.start); how it ends later is kept
        on `run`, for `link` to end the same way."""
        try:
            await serve(self.spec, task_status=_Started(run, task_status))  # type: ignore[arg-type]
        except Exception as e:
            if run.handle is None:
                raise
            run.error = e
        finally:
            run.done.set()

    async def stop(self) -> None:
        """Stop its supervisor (which collects its workers) and wait for it: the retirement's end."""
        handle = self.handle
        if handle is not None:
            await handle.stop()
        await self.wait_stopped()

    async def wait_stopped(self) -> None:
        """Until its supervisor has stopped (at once if it never started)."""
        if self._run is not None:
            await self._run.done.wait()

    def kill(self) -> None:
        """SIGKILL every worker still running (a retirement past its deadline)."""
        for ref in self.workers():
            ref.kill()
