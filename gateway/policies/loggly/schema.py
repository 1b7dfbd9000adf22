"""Kong's loggly plugin config (kong/plugins/loggly/schema.lua)."""

from typing import Annotated

import msgspec

from gateway.config.errors import show
from gateway.policies.syslog.schema import Severity
from gateway.policies.tcp_log.schema import Port, check_host


class LogglyConfig(msgspec.Struct, forbid_unknown_fields=True):
    key: Annotated[str, msgspec.Meta(min_length=1)]  # the Loggly customer token
    host: str = "logs-01.loggly.com"
    port: Port = 514
    tags: list[str] = msgspec.field(default_factory=lambda: ["kong"])
    log_level: Severity = "info"  # the least severe message sent
    successful_severity: Severity = "info"  # responses below 400
    client_errors_severity: Severity = "info"  # 400 to 499
    server_errors_severity: Severity = "info"  # 500 and above
    timeout: Annotated[float, msgspec.Meta(gt=0)] = 10000  # ms, to send a datagram
    custom_fields_by_lua: dict[str, str] | None = None

    def __post_init__(self) -> None:
        check_host("host", self.host)
        for tag in self.tags:
            if not tag or any(c in tag for c in '"\\]\n'):  # RFC 5424 PARAM-VALUE: these would end it early
                raise ValueError(f"tags: expected text without quotes, backslashes, ']' or line breaks, got "
                                 f"{show(tag)}")
        self.tags = list(dict.fromkeys(self.tags))  # a set in Kong: a tag given twice is kept once, first place
        if self.custom_fields_by_lua:
            raise ValueError("custom_fields_by_lua: the gateway runs no Lua; remove it")
