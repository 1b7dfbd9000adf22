"""The settings the root applies only when it starts, and their start values in every process of the gateway.

A reload leaves them as they were, as nginx's reload keeps what its master set up (listening sockets, shared zones)
and Kong's keeps its node id (kong/init.lua reset_kong_shm preserves kong:node_id). So the root keeps them in the
configs it reloads, and hands their start values down to its children (the environment they inherit): a new
generation's workers and restarted satellites, which read the reloaded file, still reach the running state keeper
(gateway.bus) and keep the node's run directory (gateway.pid_file: node id, MCP session key, audit and access logs).
"""

from __future__ import annotations

import os

import msgspec

from gateway.config import Config
from gateway.config.schema import GatewaySettings

START_ONLY = ("admin", "bus", "pid_file", "log_file", "status_listen", "restart_intensity", "restart_period_s",
              "registration")
START_ONLY_ENV = "GATEWAY_START_ONLY"  # their start values (JSON), set by the root for its children


def changed(running: GatewaySettings, loaded: GatewaySettings) -> list[str]:
    """The start-only keys whose value in `loaded` (a reloaded config) differs from the running one."""
    return [key for key in START_ONLY if getattr(running, key) != getattr(loaded, key)]


def keep(config: Config, running: GatewaySettings) -> Config:
    """`config` (a reloaded one), its start-only keys set back to the running values, in place."""
    for key in START_ONLY:
        setattr(config.gateway, key, getattr(running, key))
    return config


def hand_down(started: GatewaySettings) -> None:
    """Give the root's children, started from now on, the start values of the start-only keys."""
    os.environ[START_ONLY_ENV] = msgspec.json.encode({key: getattr(started, key) for key in START_ONLY}).decode()


def inherited(config: Config) -> Config:
    """`config` (a child's, read from the file the root gave it) with the start values the root handed down, in
    place; as it is in a process no root started."""
    handed = os.environ.get(START_ONLY_ENV)
    if handed is None:
        return config
    values = msgspec.json.decode(handed)
    for key in START_ONLY:
        setattr(config.gateway, key, msgspec.convert(values[key], _TYPES[key]))
    return config


_TYPES = {f.name: f.type for f in msgspec.structs.fields(GatewaySettings) if f.name in START_ONLY}
