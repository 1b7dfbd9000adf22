"""The template process of a fork server (a zygote): it has imported what its children run, runs no event loop, and
forks one child per request from its supervisor, so a start costs a fork instead of an interpreter start and imports.

The supervisor's side is `supervisor.forkserver.ForkServer`. They talk over a SOCK_SEQPACKET socket pair (the control
socket, inherited by every incarnation of the zygote), one JSON message per packet:

    zygote -> supervisor    {"hello": PID}, once, before the zygote reports ready
    supervisor -> zygote    {"argv": [...], "env": {...}, "cwd": "...", "fds": [N, ...]}, with SCM_RIGHTS
                            descriptors: a reply socket, then one per entry of "fds" (the number it gets in the child)
    zygote -> reply socket  {"pid": PID} or {"error": "why not"}

Who is the parent: the supervisor is a child subreaper (PR_SET_CHILD_SUBREAPER) and the zygote forks twice, so the
child is re-parented to the supervisor before it runs. The supervisor waits for it, reads its exit status and signals
it like any child it started itself, and a child that watches its parent pid watches the supervisor. A child runs
only after its pid went out on the reply socket (it waits for the zygote's go-ahead on a pipe), so a supervisor that
gave up waiting for the reply never has a child it does not know about.

A child starts clean: the descriptors it was given at the numbers asked for and every other one closed except 0-2,
the environment and working directory of the request, signal handlers and mask as in a fresh interpreter, no logging
handlers, `random` re-seeded (and anything else registered with os.register_at_fork). It exits with os._exit once its
entry returns, as multiprocessing's forked children do. Standard library only: the zygote imports what its users
preload, nothing else.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import gc
import json
import os
import signal
import socket
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, Final

from supervisor.ready import notify_ready

MAX_MESSAGE: Final = 1 << 20  # bytes of one request (argv and environment)
MAX_FDS: Final = 64  # descriptors passed with one request
GO: Final = b"go"

Entry = Callable[[], int | None]
Resolve = Callable[[Sequence[str]], Entry | None]  # argv -> what the child runs, or None: not from this template


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def serve(control_fd: int, resolve: Resolve, ready: Callable[[], None] = notify_ready,
          spare_name: str | None = None) -> int:
    """Run the zygote until its supervisor is gone (the control socket closes); returns the exit code (0).

    `resolve(argv)` says what a child started with `argv` runs (a callable returning its exit code), or None when
    this template cannot run it (the supervisor then executes argv itself). `spare_name`: the process name of the
    spare waiting for a request (set_process_name), so that `ps` tells it from the zygote.
    """
    control = socket.socket(fileno=control_fd)
    control.setblocking(True)
    zygote = _Zygote(control, resolve, os.getppid(), spare_name)
    control.send(encode({"hello": os.getpid()}))
    ready()
    gc.freeze()  # what the template imported stays out of the collector's way, so its pages stay shared
    zygote.spare = zygote.fork_spare()
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(control, MAX_MESSAGE, MAX_FDS)
        except ConnectionResetError:
            return 0
        if not data and not fds:
            return 0  # the supervisor closed its end: it is gone
        if fds:
            zygote.answer(data, fds)


class _Spare:
    """A child forked ahead of need, already re-parented to the supervisor, waiting for what to run."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock


class _Zygote:
    """The request loop's state: one spare child kept ready, so a request costs a message, not a fork."""

    def __init__(self, control: socket.socket, resolve: Resolve, supervisor: int, spare_name: str | None) -> None:
        self.control = control
        self.resolve = resolve
        self.supervisor = supervisor
        self.spare_name = spare_name
        self.spare: _Spare | None = None

    def answer(self, data: bytes, fds: list[int]) -> None:
        """Hand a request to a spare child and tell the supervisor its pid (or why not) on the request's reply socket;
        the spare runs once that reply went out. Then fork the next spare."""
        reply = socket.socket(fileno=fds[0])
        passed = fds[1:]
        try:
            try:
                argv, _, _, _ = _parse(data, len(passed))
                if self.resolve(argv) is None:
                    raise ValueError(f"this template does not run {' '.join(argv[:4])} ...")
            except (ValueError, TypeError, KeyError) as e:
                _send(reply, {"error": str(e)})
                return
            spare = self._assign(data, passed)
            if spare is None:
                _send(reply, {"error": "fork failed"})
                return
            with spare.sock:
                if _send(reply, {"pid": spare.pid}):
                    with contextlib.suppress(OSError):
                        spare.sock.send(GO)
                # else: the supervisor gave up waiting; without the go-ahead the spare exits without running
        finally:
            for fd in passed:
                with contextlib.suppress(OSError):
                    os.close(fd)
            reply.close()
            if self.spare is None:
                self.spare = self.fork_spare()

    def _assign(self, data: bytes, passed: list[int]) -> _Spare | None:
        """The spare, now holding the request and its descriptors (a new one if the spare died meanwhile)."""
        for _ in range(2):
            spare, self.spare = self.spare or self.fork_spare(), None
            if spare is None:
                return None
            try:
                socket.send_fds(spare.sock, [data], passed)
            except OSError:  # it died (killed by someone): its socket is closed
                spare.sock.close()
                continue
            return spare
        return None

    def fork_spare(self) -> _Spare | None:
        """Fork twice: the intermediate exits at once, so the spare is re-parented to the supervisor (the subreaper)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid_r, pid_w = os.pipe()  # the intermediate tells us the spare's pid
        try:
            middle = os.fork()
        except OSError:
            for fd in (pid_r, pid_w):
                os.close(fd)
            ours.close()
            theirs.close()
            return None
        if middle == 0:
            code = 1
            try:
                child = os.fork()
                if child == 0:
                    for fd in (pid_r, pid_w, ours.fileno(), self.control.fileno()):
                        os.close(fd)
                    if self.spare_name:
                        set_process_name(self.spare_name)
                    _wait_for_work(theirs, self.resolve, self.supervisor)  # never returns
                os.write(pid_w, b"%d" % child)
                code = 0
            finally:
                os._exit(code)
        os.close(pid_w)
        theirs.close()
        with os.fdopen(pid_r, "rb") as pipe:
            data = pipe.read()
        os.waitpid(middle, 0)
        if not data:
            ours.close()
            return None
        return _Spare(int(data), ours)


def _parse(data: bytes, count: int) -> tuple[list[str], dict[str, str], str, list[int]]:
    request = json.loads(data)
    argv, env, cwd, targets = request["argv"], request["env"], request["cwd"], request["fds"]
    if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
        raise ValueError("argv must be a non-empty list of strings")
    if not (isinstance(env, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())):
        raise ValueError("env must map strings to strings")
    if not isinstance(cwd, str):
        raise ValueError("cwd must be a string")
    if not (isinstance(targets, list) and all(isinstance(t, int) and t > 2 for t in targets)):
        raise ValueError("fds must be descriptor numbers above 2")
    if len(targets) != count or len(set(targets)) != count:
        raise ValueError(f"fds names {len(targets)} distinct descriptors, {count} were passed")
    return argv, env, cwd, targets


def _send(reply: socket.socket, message: dict[str, Any]) -> bool:
    try:
        reply.send(encode(message))
    except OSError:
        return False  # the supervisor gave up waiting and closed its end
    return True


def _wait_for_work(sock: socket.socket, resolve: Resolve, supervisor: int) -> None:
    """A spare's life: wait for a request and the go-ahead, then run it; exit quietly if either never comes."""
    try:
        try:
            data, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, MAX_FDS)
            go = sock.recv(len(GO)) if data else b""
        except OSError:
            os._exit(0)
        if go != GO or os.getppid() != supervisor:
            os._exit(0)  # the zygote is gone, the supervisor never learned our pid, or it is not our parent
        argv, env, cwd, targets = _parse(data, len(fds))
        entry = resolve(argv)
        assert entry is not None  # the zygote resolved it before handing it over
    except BaseException:
        traceback.print_exc()
        _flush()
        os._exit(1)
    _run_child(entry, argv, env, cwd, fds, targets)


def _run_child(entry: Entry, argv: list[str], env: dict[str, str], cwd: str, passed: list[int],
               targets: list[int]) -> None:
    code: int = 1
    try:
        _install_fds(passed, targets)
        os.environ.clear()
        os.environ.update(env)
        os.chdir(cwd)
        sys.argv = list(argv)
        _reset_signals()
        _reset_logging()
        code = _exit_code(entry())
    except SystemExit as e:
        code = _exit_code(e.code)
    except KeyboardInterrupt:
        _flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # as the interpreter does: die of the signal
        os.kill(os.getpid(), signal.SIGINT)
    except BaseException:
        traceback.print_exc()
    finally:
        _flush()
        os._exit(code)


def _exit_code(value: object) -> int:
    """The process exit status for an entry's return value or a SystemExit code, as the interpreter maps them."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    print(value, file=sys.stderr)
    return 1


def _install_fds(passed: list[int], targets: list[int]) -> None:
    """Put each passed descriptor at its target number; close every other one except stdin, stdout and stderr."""
    floor = max([2, *passed, *targets]) + 1
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor) for fd in passed]
    for src, dst in zip(moved, targets, strict=True):
        os.dup2(src, dst)  # inheritable, as subprocess's pass_fds leaves them
    keep = sorted({0, 1, 2, *targets})
    for low, high in zip(keep, [*keep[1:], os.sysconf("SC_OPEN_MAX")], strict=True):
        os.closerange(low + 1, high)


def _reset_signals() -> None:
    """Handlers and mask as a fresh interpreter has them (the zygote ignores SIGINT, for one)."""
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGCHLD, signal.SIGUSR1, signal.SIGUSR2,
                   signal.SIGALRM):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())


def _reset_logging() -> None:
    """No handlers on the root logger, so the child's own logging set-up (e.g. basicConfig) takes effect."""
    logging = sys.modules.get("logging")
    if logging is None:
        return
    for handler in list(logging.root.handlers):
        logging.root.removeHandler(handler)
    logging.root.setLevel(logging.WARNING)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def set_process_name(name: str) -> None:
    """The name `ps -o comm`, top and /proc/PID/comm show (15 bytes at most): forked children share the zygote's
    command line, so this is what tells them apart there."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
