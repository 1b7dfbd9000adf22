"""Kong's syslog plugin config (kong/plugins/syslog/schema.lua)."""

from typing import Literal

import msgspec

Severity = Literal["debug", "info", "notice", "warning", "err", "crit", "alert", "emerg"]
Facility = Literal["auth", "authpriv", "cron", "daemon", "ftp", "kern", "lpr", "mail", "news", "syslog", "user",
                   "uucp", "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7"]


class SyslogConfig(msgspec.Struct, forbid_unknown_fields=True):
    log_level: Severity = "info"  # the least severe message sent; a request whose severity is below it is not
    successful_severity: Severity = "info"  # responses below 400
    client_errors_severity: Severity = "info"  # 400 to 499
    server_errors_severity: Severity = "info"  # 500 and above
    facility: Facility = "user"
    custom_fields_by_lua: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if self.custom_fields_by_lua:
            raise ValueError("custom_fields_by_lua: the gateway runs no Lua; remove it")
