"""Kong's udp-log plugin config (kong/plugins/udp-log/schema.lua)."""

from typing import Annotated

import msgspec

from gateway.policies.tcp_log.schema import Port, check_host


class UdpLogConfig(msgspec.Struct, forbid_unknown_fields=True):
    host: str
    port: Port
    timeout: Annotated[float, msgspec.Meta(gt=0, le=2**31 - 2)] = 10000  # ms, to send a datagram
    custom_fields_by_lua: dict[str, str] | None = None

    def __post_init__(self) -> None:
        check_host("host", self.host)
        if self.custom_fields_by_lua:
            raise ValueError("custom_fields_by_lua: the gateway runs no Lua; remove it")
