"""zipkin: Kong's plugin: trace context propagation (all of Kong's formats) and Zipkin v2 JSON spans."""

from __future__ import annotations

from typing import Any

from gateway.http.realip import ClientAddress
from gateway.policies.zipkin.handler import Zipkin, ZipkinWithHeader
from gateway.policies.zipkin.schema import ZipkinConfig
from gateway.telemetry.node_id import gateway_node_id

name = "zipkin"
priority = Zipkin.priority
schema = ZipkinConfig
consumer_scoped = True


def build(config: ZipkinConfig, plugin_id: str, shared: object, gateway: Any = None) -> Zipkin:
    cls = ZipkinWithHeader if config.http_response_header_for_traceid else Zipkin
    client = None
    if gateway is not None and gateway.trusted_ips:  # kong.client.get_forwarded_port() reads realip's header
        client = ClientAddress(gateway.trusted_ips, gateway.real_ip_header, gateway.real_ip_recursive)
    return cls(config, plugin_id, gateway_node_id(gateway), client=client)
