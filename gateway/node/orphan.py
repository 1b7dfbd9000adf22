"""Children of the root stop when the root is gone, so a killed root cannot leave processes holding the port; and
they leave terminal interrupts to the root.

Linux's PR_SET_PDEATHSIG looks right but is tied to the *thread* that forked the child, and Trio starts children
from cached threads that exit when idle: children were signalled ten seconds after start. So each child watches
its parent pid instead, and on a change sends itself SIGTERM, which its normal graceful path handles. The root
names itself in GATEWAY_ROOT_PID, so a child started after the root died (and re-parented to init or to another
subreaper) knows at once.

Ctrl-C in a terminal sends SIGINT to the whole process group, children included. A child that drained and exited on
it would be restarted by its supervisor before the root, stopping, got to it; so children block SIGINT (the root,
which alone handles it, stops them in order with SIGTERM). `gateway run` (no root) keeps SIGINT.
"""

from __future__ import annotations

import logging
import os
import signal

import trio

PARENT_CHECK_S = 0.5
ROOT_PID_ENV = "GATEWAY_ROOT_PID"

log = logging.getLogger("gateway.orphan")


async def stop_when_orphaned(parent: int) -> None:
    """Run in a child's nursery: SIGTERM ourselves when `parent` (our ppid at start) is no longer our parent."""
    while True:
        await trio.sleep(PARENT_CHECK_S)
        if os.getppid() != parent:
            log.warning("process %d: the root process %d is gone; stopping", os.getpid(), parent)
            os.kill(os.getpid(), signal.SIGTERM)
            return


def parent_or_exit() -> int:
    """The parent pid to watch; exit at once if the root already died (we were re-parented). Blocks SIGINT: called
    first thing by every child of the root, before any thread starts (they inherit the mask)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    parent = os.getppid()
    root = os.environ.get(ROOT_PID_ENV)
    if parent == 1 or (root is not None and root.isdigit() and int(root) != parent):
        raise SystemExit(f"the root process {root or ''} is gone".replace("  ", " "))
    return parent
