"""Kong's udp-log plugin config (kong/plugins/udp-log/schema.lua)."""

from typing import Annotated

import msgspec

from gateway.config.errors import show
from gateway.policies.tcp_log.schema import Port, is_host


class UdpLogConfig(msgspec.Struct, forbid_unknown_fields=True):
    host: str
    port: Port
    timeout: Annotated[float, msgspec.Meta(gt=0, le=2**31 - 2)] = 10000  # ms, to send a datagram
    custom_fields_by_lua: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if not is_host(self.host):
            raise ValueError(f"host: expected a host name or an IP address, got {show(self.host)}")
        if self.custom_fields_by_lua:
            raise ValueError("custom_fields_by_lua: the gateway runs no Lua; remove it")
