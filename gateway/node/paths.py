"""Where the gateway's files and sockets are: relative paths in the config are relative to the working directory."""

from __future__ import annotations

import os


def absolute_endpoint(endpoint: str) -> str:
    """ipc://run/x.sock -> ipc:///abs/run/x.sock, so every process (whatever its cwd later) agrees on the path."""
    if endpoint.startswith("ipc://") and not endpoint.startswith("ipc:///"):
        return "ipc://" + os.path.abspath(endpoint[len("ipc://"):])
    return endpoint
