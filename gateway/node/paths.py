"""Where the gateway's files and sockets are: relative paths in the config are relative to the working directory."""

from __future__ import annotations

import os


def absolute_endpoint(endpoint: str) -> str:
    """ipc://run/x.sock -> ipc:///abs/run/x.sock, so every process (whatever its cwd later) agrees on the path."""
    if endpoint.startswith("ipc://") and not endpoint.startswith("ipc:///"):
        return "ipc://" + os.path.abspath(endpoint[len("ipc://"):])
    return endpoint


KEEPER_STATE = "keeper.state.json"  # the state keeper's state file (gateway/keeper/saved.py), in the run directory


def keeper_state_file(run_dir: str) -> str:
    """The state keeper's state file: what survives its restart, for one run of the gateway (the root removes it
    at start)."""
    return os.path.join(run_dir, KEEPER_STATE)
