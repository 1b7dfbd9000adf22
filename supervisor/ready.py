"""The child side of the readiness protocol for OS-process children.

The supervisor passes the write end of a pipe to the child and names its descriptor in the
SUPERVISOR_READY_FD environment variable. The child writes one line, "ready" or "ready <info>",
once it is initialised; its start has succeeded from then on.
"""

import os
from typing import Final

READY_FD_ENV: Final = "SUPERVISOR_READY_FD"


def notify_ready(info: str = "") -> None:
    """Tell the supervisor this process is initialised, with optional one-line `info` (e.g. JSON)."""
    if "\n" in info:
        raise ValueError("ready info must fit on one line")
    fd = os.environ.pop(READY_FD_ENV, None)
    if fd is None:
        return
    with os.fdopen(int(fd), "w") as pipe:
        pipe.write(f"ready {info}\n" if info else "ready\n")
