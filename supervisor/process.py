"""OS-process children: started with trio.lowlevel.open_process (or forked by a spawner), ready once they say so on a
pipe."""

import os
import signal
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import trio

from supervisor.ready import READY_FD_ENV
from supervisor.reasons import KILLED, NORMAL, SHUTDOWN
from supervisor.refs import ChildRef, ExitCallback


class OsProcess(Protocol):
    """What ProcessRef needs of a started process (trio.Process has it, so does forkserver.ForkedProcess)."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...

    def send_signal(self, signum: int) -> None: ...

    def kill(self) -> None: ...


class Spawner(Protocol):
    """Starts a process some other way than exec (e.g. supervisor.forkserver.ForkServer); None means "use exec"."""

    async def spawn(self, argv: Sequence[str], env: Mapping[str, str], cwd: str | None,
                    pass_fds: Sequence[int]) -> OsProcess | None: ...


@dataclass(frozen=True)
class Process:
    """How to start an OS-process child; `env` replaces the inherited environment when given.

    With a `spawner`, the child is started by it when it can (e.g. forked from a pre-imported template process) and
    with exec otherwise; the child sees the same argv, environment and descriptors either way.
    """

    argv: Sequence[str]
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    start_timeout: float = 5.0
    pass_fds: Sequence[int] = ()  # file descriptors the child inherits (e.g. listening sockets)
    spawner: Spawner | None = field(default=None, compare=False)


_managed: set[int] = set()  # pids of running OS-process children, whoever started them


def managed_pids() -> set[int]:
    """Pids of the OS-process children some ProcessRef is waiting for (a subreaper's stray sweep leaves them)."""
    return set(_managed)


# A child that cannot start may say why on its readiness pipe, `error <why>` (one line), instead of `ready`
START_ERROR = "error"


class ProcessStartError(Exception):
    """An OS-process child did not become ready; `said`: why, in its own words, when it wrote `error <why>`."""

    def __init__(self, message: str, said: str | None = None) -> None:
        super().__init__(message)
        self.said = said


class ProcessRef(ChildRef):
    """A running OS process. Stopping sends SIGTERM, killing sends SIGKILL.

    Exit reasons: after the SIGTERM this supervisor sent, exit code 0 or death by SIGTERM is shutdown; death by
    its SIGKILL is killed; otherwise exit code 0 is normal and anything else is abnormal, e.g. "exit code 3" or
    "killed by signal SIGKILL".
    """

    def __init__(self, child_id: Hashable, spec: Process, args: tuple[object, ...]) -> None:
        super().__init__(child_id)
        self._spec = spec
        self._argv = [*spec.argv, *map(str, args)]
        self._process: OsProcess | None = None
        self._sent: set[signal.Signals] = set()
        self.started_by: str | None = None  # "fork" (by the spec's spawner) or "exec"

    async def run(self, on_exit: ExitCallback, *, task_status: trio.TaskStatus[object]) -> None:
        read_fd, write_fd = os.pipe()
        env = {**(os.environ if self._spec.env is None else self._spec.env), READY_FD_ENV: str(write_fd)}
        async with trio.lowlevel.FdStream(read_fd) as pipe:
            try:
                process = await self._spawn(env, (write_fd, *self._spec.pass_fds))
            finally:
                os.close(write_fd)
            self._process = process
            self.os_pid = process.pid
            _managed.add(process.pid)
            try:
                info = await self._wait_ready(process, pipe)
            except BaseException:
                with trio.CancelScope(shield=True):
                    process.kill()
                    await process.wait()
                _managed.discard(process.pid)
                raise
        self._mark_started(task_status, info)
        # Shielded: only this supervisor stops its children, in its own order.
        with trio.CancelScope(shield=True):
            returncode = await process.wait()
        _managed.discard(process.pid)
        self._finish(on_exit, self._exit_reason(returncode))

    async def _spawn(self, env: Mapping[str, str], fds: tuple[int, ...]) -> OsProcess:
        if self._spec.spawner is not None:
            process = await self._spec.spawner.spawn(self._argv, env, self._spec.cwd, fds)
            if process is not None:
                self.started_by = "fork"
                return process
        self.started_by = "exec"
        return await trio.lowlevel.open_process(self._argv, env=env, cwd=self._spec.cwd, pass_fds=fds)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, signum: signal.Signals) -> None:
        if self._process is not None and self._process.returncode is None:
            self._sent.add(signum)
            self._process.send_signal(signum)

    async def _wait_ready(self, process: OsProcess, pipe: trio.lowlevel.FdStream) -> str:
        """The ready info the child wrote, or ProcessStartError if it exits, lingers or writes garbage."""
        line = None
        with trio.move_on_after(self._spec.start_timeout):
            line = await _read_line(pipe)
            if line is None:
                await process.wait()
        if line == "ready" or (line is not None and line.startswith("ready ")):
            return line[len("ready ") :]
        if line is not None and line.startswith(START_ERROR + " "):
            said = line[len(START_ERROR) + 1 :]
            raise ProcessStartError(f"cannot start: {said}", said)
        if line is not None:
            raise ProcessStartError(f"bad readiness line {line!r}")
        if process.returncode is not None:
            raise ProcessStartError(f"exited before ready: {describe_exit(process.returncode)}")
        raise ProcessStartError(f"not ready within {self._spec.start_timeout} s")

    def _exit_reason(self, returncode: int) -> object:
        if signal.SIGTERM in self._sent and returncode in (0, -signal.SIGTERM):
            return SHUTDOWN  # asked to stop, and it did: whether it trapped SIGTERM or died of it
        if returncode == 0:
            return NORMAL
        if returncode == -signal.SIGKILL and signal.SIGKILL in self._sent:
            return KILLED
        return describe_exit(returncode)


def describe_exit(returncode: int) -> str:
    """A readable exit status: "exit code 3" or "killed by signal SIGKILL"."""
    if returncode >= 0:
        return f"exit code {returncode}"
    try:
        return f"killed by signal {signal.Signals(-returncode).name}"
    except ValueError:
        return f"killed by signal {-returncode}"


async def _read_line(pipe: trio.lowlevel.FdStream) -> str | None:
    """The first line read from `pipe`, or None if it closes first."""
    data = b""
    while b"\n" not in data:
        chunk = await pipe.receive_some()
        if not chunk:
            return None
        data += chunk
    return data.split(b"\n", 1)[0].decode(errors="replace")
