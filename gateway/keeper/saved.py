"""The keeper's state file: what must survive the keeper's own restart (a kill -9, a crash), read by the next one.

It holds the operators' target overrides (drained, weight), the targets health checks hold unhealthy (Kong keeps
those in its kong_healthchecks shared dict, which outlives a worker), and the breakers that are not closed (open,
half-open, forced open), with when each opened as wall-clock time (the keeper's clock starts again in a new
process). The keeper rewrites it when one of those may have changed (keeper/process.py: at once, then at most every
SAVE_EVERY_S); a new keeper begins from it (Keeper.restore). It belongs to one run of the gateway: the root removes
it at start.
"""

from __future__ import annotations

import logging
from typing import Annotated, Literal

import msgspec

log = logging.getLogger("gateway.keeper")

VERSION = 1  # a file of another version is ignored, as one that cannot be read
MAX_BYTES = 64 << 20  # a larger file is ignored: thousands of targets take a few MB


class SavedTarget(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One target's p.TargetState: an operator's override, or its health verdict when that is unhealthy."""

    drained: bool = False
    weight: Annotated[int, msgspec.Meta(ge=0, le=65535)] | None = None
    healthy: bool = True


class SavedBreaker(msgspec.Struct, forbid_unknown_fields=True):
    """A breaker away from closed; a half-open one is saved open (its timeout has run out: it half-opens again)."""

    state: Literal["open", "forced_open"]
    opened: float  # when it opened, in seconds since the epoch


class SavedState(msgspec.Struct, forbid_unknown_fields=True):
    version: int = VERSION
    targets: dict[str, SavedTarget] = {}  # by target key, "<upstream>|<host:port>"
    breakers: dict[str, SavedBreaker] = {}  # by target key


def encode(saved: SavedState) -> bytes:
    """The file's text (JSON)."""
    return msgspec.json.encode(saved)


def decode(data: bytes) -> SavedState:
    """Parse the file's text; raises ValueError (msgspec's errors are ValueErrors) for anything else."""
    saved = msgspec.json.decode(data, type=SavedState)
    if saved.version != VERSION:
        raise ValueError(f"version {saved.version}, this keeper reads version {VERSION}")
    return saved


def read_saved(path: str) -> SavedState | None:
    """The state file at `path`, or None: missing (a gateway just started), or unreadable, which is logged and
    ignored (the keeper starts from the config, as a new gateway does: never a crash loop over a bad file)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        log.error("state keeper: cannot read its state file %s (%s); starting from the config", path, e.strerror)
        return None
    try:
        if len(data) > MAX_BYTES:
            raise ValueError(f"larger than {MAX_BYTES} bytes")
        return decode(data)
    except ValueError as e:
        log.error("state keeper: its state file %s is not valid (%s); starting from the config", path, e)
        return None
