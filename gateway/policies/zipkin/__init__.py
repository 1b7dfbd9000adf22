"""zipkin: Kong's plugin: trace context propagation (w3c, b3, b3-single, jaeger) and Zipkin v2 JSON spans."""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any

from gateway.policies.zipkin.handler import Zipkin, ZipkinWithHeader
from gateway.policies.zipkin.schema import ZipkinConfig

name = "zipkin"
priority = Zipkin.priority
schema = ZipkinConfig
consumer_scoped = True
# gateway.status.collect's node id namespace (kong_node_info's node_id), named here so that a worker need not import
# the status server
_NODE_NAMESPACE = uuid.UUID("fd02801f-0957-4a15-a55a-c8d9606f30b5")


def node_id(gateway: Any) -> str:
    """Kong's kong.node.get_id(): the gateway's node id, as /metrics gives it (host and run directory)."""
    run_dir = os.path.dirname(os.path.abspath(gateway.pid_file)) if gateway is not None else ""
    return str(uuid.uuid5(_NODE_NAMESPACE, f"{socket.gethostname()}:{run_dir}"))


def build(config: ZipkinConfig, plugin_id: str, shared: object, gateway: Any = None) -> Zipkin:
    cls = ZipkinWithHeader if config.http_response_header_for_traceid else Zipkin
    return cls(config, plugin_id, node_id(gateway))
