"""The supervisor's side of a fork server: OS-process children forked from a zygote (`supervisor.zygote`).

    fork_server = ForkServer()                       # makes this process a child subreaper
    zygote = ChildSpec("zygote", Process([..., "--control-fd", str(fork_server.zygote_fd)],
                                         pass_fds=(fork_server.zygote_fd,)))   # runs supervisor.zygote.serve
    worker = ChildSpec("w", Process(argv, spawner=fork_server))

A child whose `Process` names the fork server is forked from the zygote when one is running, and started with exec
(as without a spawner) when none is, or when the zygote cannot run its argv, fails, or does not answer within
REPLY_TIMEOUT_S. Either way it is this process's own child (see `supervisor.zygote` for how), supervised the same
way: readiness on the SUPERVISOR_READY_FD pipe, exit reasons from its wait status, signals through a pidfd.

As a subreaper this process also inherits orphans of its descendants (e.g. what a zygote killed in the middle of a
fork leaves); `run` reaps the ones nobody waits for.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import select
import signal
import socket
from collections.abc import Mapping, Sequence
from typing import Final

import trio

from supervisor.process import managed_pids
from supervisor.zygote import MAX_FDS, encode

logger = logging.getLogger("supervisor.forkserver")

REPLY_TIMEOUT_S: Final = 2.0  # a zygote slower than this to fork is passed over (exec) for that start
STRAY_SWEEP_S: Final = 5.0  # an unknown zombie child seen in two sweeps this far apart is reaped
PR_SET_CHILD_SUBREAPER: Final = 36


class ForkedProcess:
    """A child forked by the zygote, with the part of trio.Process's interface ProcessRef uses.

    The child is ours (re-parented before it runs): its exit is seen through a pidfd and reaped with waitpid, so its
    status says exit code or signal exactly as for a child started with exec. One task waits at a time.
    """

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._pidfd = pidfd
        _forked.add(pid)

    async def wait(self) -> int:
        if self.returncode is None:
            await trio.lowlevel.wait_readable(self._pidfd)
            self._reap()
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def _reap(self) -> None:
        try:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        except ChildProcessError:  # reaped elsewhere: should not happen, since only we wait for it
            logger.error("the exit status of forked child %d was lost", self.pid)
            self.returncode = 255
        finally:
            _forked.discard(self.pid)
            os.close(self._pidfd)


_forked: set[int] = set()  # forked children not reaped yet


class ForkServer:
    """Forks children from the zygote listening on the other end of `zygote_fd`; see the module's docstring."""

    def __init__(self) -> None:
        self.enabled = _become_subreaper()
        self._control, self._zygote_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._control.setblocking(False)
        self._zygote: tuple[int, int] | None = None  # (pid, pidfd) of the zygote that said hello last
        self._lock = trio.Lock()

    @property
    def zygote_fd(self) -> int:
        """The descriptor every incarnation of the zygote inherits (pass it in its Process's pass_fds)."""
        return self._zygote_end.fileno()

    def close(self) -> None:
        """Close the control socket (a zygote still running sees it close and exits); stop being a subreaper."""
        self._forget_zygote()
        self._control.close()
        self._zygote_end.close()
        if self.enabled:
            _set_subreaper(False)
            self.enabled = False

    def zygote_pid(self) -> int | None:
        """The pid of the running zygote that has said hello, if there is one."""
        self._read_hellos()
        if self._zygote is not None and _readable(self._zygote[1]):
            self._forget_zygote()  # it exited; a new incarnation says hello when it is up
        return self._zygote[0] if self._zygote is not None else None

    async def spawn(self, argv: Sequence[str], env: Mapping[str, str], cwd: str | None,
                    pass_fds: Sequence[int]) -> ForkedProcess | None:
        """Fork `argv` from the zygote with these descriptors (same numbers in the child); None: start it with exec."""
        if not self.enabled or len(pass_fds) >= MAX_FDS:
            return None
        async with self._lock:
            if self.zygote_pid() is None:
                return None
            request = encode({"argv": list(argv), "env": dict(env), "cwd": cwd or os.getcwd(), "fds": list(pass_fds)})
            mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            with mine:
                try:
                    socket.send_fds(self._control, [request], [theirs.fileno(), *pass_fds])
                except OSError as e:
                    logger.warning("fork server: cannot send to the zygote (%s); starting %s with exec", e, argv[3:4])
                    return None
                finally:
                    theirs.close()
                data = b""
                with trio.move_on_after(REPLY_TIMEOUT_S):
                    await trio.lowlevel.wait_readable(mine)
                    data = mine.recv(4096)
            # Closed now: a zygote that answers later finds no one listening, and its child exits without running.
            return self._forked(data, argv)

    def _forked(self, data: bytes, argv: Sequence[str]) -> ForkedProcess | None:
        what = " ".join(argv[3:5]) or argv[0]
        if not data:
            logger.warning("fork server: no answer from the zygote within %gs; starting %s with exec",
                           REPLY_TIMEOUT_S, what)
            return None
        try:
            reply = json.loads(data)
            pid = int(reply["pid"])
        except (ValueError, KeyError, TypeError):
            logger.info("fork server: the zygote did not fork %s (%s); starting it with exec", what,
                        _error(data))
            return None
        try:
            return ForkedProcess(pid, os.pidfd_open(pid))
        except OSError as e:  # cannot happen while it is our child (a zombie keeps its pid): report, do not guess
            logger.error("fork server: cannot watch forked pid %d (%s); starting %s with exec", pid, e, what)
            return None

    def _read_hellos(self) -> None:
        while True:
            try:
                data = self._control.recv(4096)
            except BlockingIOError:
                return
            try:
                pid = int(json.loads(data)["hello"])
                pidfd = os.pidfd_open(pid)
            except (ValueError, KeyError, TypeError, OSError) as e:
                logger.warning("fork server: ignoring a bad hello %r (%s)", data[:100], e)
                continue
            self._forget_zygote()
            self._zygote = (pid, pidfd)

    def _forget_zygote(self) -> None:
        if self._zygote is not None:
            os.close(self._zygote[1])
            self._zygote = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Reap orphans that were re-parented to us and that nobody waits for (two sweeps STRAY_SWEEP_S apart)."""
        task_status.started()
        suspects: set[int] = set()
        while True:
            await trio.sleep(STRAY_SWEEP_S)
            zombies = {pid for pid in _own_children() if _is_zombie(pid)} - _forked - managed_pids()
            for pid in zombies & suspects:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
                    logger.info("fork server: reaped orphaned process %d", pid)
            suspects = zombies - suspects


def _error(data: bytes) -> str:
    try:
        return str(json.loads(data).get("error", data[:200]))
    except (ValueError, AttributeError):
        return repr(data[:200])


def _become_subreaper() -> bool:
    """Make orphaned descendants our children (Linux); False where that is not possible."""
    return hasattr(os, "pidfd_open") and _set_subreaper(True)


def _set_subreaper(on: bool) -> bool:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _readable(fd: int) -> bool:
    """Whether `fd` has something to read now (poll: select() refuses descriptors past 1023)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def _own_children() -> set[int]:
    pids: set[int] = set()
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return pids
    for tid in tasks:
        with contextlib.suppress(OSError, ValueError), open(f"/proc/self/task/{tid}/children") as f:
            pids.update(int(p) for p in f.read().split())
    return pids


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False
