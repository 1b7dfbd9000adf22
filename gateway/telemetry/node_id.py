"""Kong's kong.node.get_id(): the id of this gateway node, the same in every process of it (/metrics' node_id label,
zipkin's spans, request-termination's echo). Kong keeps a random UUID in its prefix; here it is a UUIDv5 of the host
name and the run directory, so it is stable across restarts and differs between two gateways on one host."""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any

_NAMESPACE = uuid.UUID("fd02801f-0957-4a15-a55a-c8d9606f30b5")  # Kong's declarative config namespace


def node_id(name: str) -> str:
    """The node id of `name` ("<host>:<run directory>")."""
    return str(uuid.uuid5(_NAMESPACE, name))


def gateway_node_id(gateway: Any) -> str:
    """The node id of the gateway whose settings (the `gateway` section) are `gateway`: its run directory is its pid
    file's. None: the id of a gateway without one (tests)."""
    run_dir = os.path.dirname(os.path.abspath(gateway.pid_file)) if gateway is not None else ""
    return node_id(f"{socket.gethostname()}:{run_dir}")
