"""Children of the root stop when the root is gone, so a killed root cannot leave processes holding the port; and
they leave terminal interrupts to the root.

Linux's PR_SET_PDEATHSIG looks right but is tied to the *thread* that forked the child, and Trio starts children
from cached threads that exit when idle: children were signalled ten seconds after start. So each child watches
its parent instead, through a pidfd (readable once the process has exited: no wake-up while it lives; an idle host
of workers is woken by nothing it does not need), and then sends itself SIGTERM, which its normal graceful path
handles. Without pidfds (Linux < 5.3) it polls its parent pid every PARENT_CHECK_S. The root names itself in
GATEWAY_ROOT_PID, so a child started after the root died (and re-parented to init or to another subreaper) knows
at once.

Ctrl-C in a terminal sends SIGINT to the whole process group, children included. A child that drained and exited on
it would be restarted by its supervisor before the root, stopping, got to it; so children block SIGINT (the root,
which alone handles it, stops them in order with SIGTERM). So with SIGHUP (a dropped ssh session hangs up the group;
the root reloads once) and SIGQUIT (Ctrl-\\; the root stops gracefully). `gateway run` (no root) keeps SIGINT.
"""

from __future__ import annotations

import logging
import os
import signal

import trio

from gateway.node import logfile

PARENT_CHECK_S = 0.5
ROOT_PID_ENV = "GATEWAY_ROOT_PID"

log = logging.getLogger("gateway.orphan")


async def stop_when_orphaned(parent: int) -> None:
    """Run in a child's nursery: SIGTERM ourselves when `parent` (our ppid at start) is no longer our parent."""
    try:
        pidfd = os.pidfd_open(parent)
    except OSError:  # it is gone already (ESRCH), or the kernel has no pidfds
        pidfd = -1
    try:
        if pidfd >= 0 and os.getppid() == parent:  # the pidfd is our parent's, not a later process's with its pid
            await trio.lowlevel.wait_readable(pidfd)
        while os.getppid() == parent:
            await trio.sleep(PARENT_CHECK_S)
    finally:
        if pidfd >= 0:
            os.close(pidfd)
    log.warning("process %d: the root process %d is gone; stopping", os.getpid(), parent)
    os.kill(os.getpid(), signal.SIGTERM)


_GROUP_SIGNALS = {signal.SIGINT, signal.SIGHUP, signal.SIGQUIT}


def parent_or_exit() -> int:
    """The parent pid to watch; exit at once if the root already died (we were re-parented). Blocks SIGINT, SIGHUP
    and SIGQUIT (what a terminal or a dropped session sends the whole process group: the root alone acts on them),
    and follows the log file through rotations (SIGUSR1, relayed by the root: gateway.node.logfile): called first
    thing by every child of the root, before any thread starts (they inherit the mask)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, _GROUP_SIGNALS)
    logfile.follow()
    parent = os.getppid()
    root = os.environ.get(ROOT_PID_ENV)
    # re-parented: to another process than the root named (a root that is a container's PID 1 is our parent 1),
    # or, without that name, to init
    if (int(root) != parent) if root is not None and root.isdigit() else parent == 1:
        raise SystemExit(f"the root process {root or ''} is gone".replace("  ", " "))
    return parent
