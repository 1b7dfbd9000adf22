"""Kong's file-log plugin config (kong/plugins/file-log/schema.lua)."""

import re

import msgspec

# Kong's match, [[^[^%s*&%%\`][^*&%%\`]*[^%s*&%%\`]$]]: two characters at least, none of * & % \ `, and no white
# space (Lua's %s: space, \t, \n, \v, \f, \r) first or last
_FILENAME = re.compile(r"[^ \t\n\v\f\r*&%\\`][^*&%\\`]*[^ \t\n\v\f\r*&%\\`]")


class FileLogConfig(msgspec.Struct, forbid_unknown_fields=True):
    path: str
    reopen: bool = False  # close and reopen the file for every write
    custom_fields_by_lua: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if _FILENAME.fullmatch(self.path) is None:
            raise ValueError("path: not a valid filename")  # Kong's message
        if self.custom_fields_by_lua:
            raise ValueError("custom_fields_by_lua: the gateway runs no Lua; remove it")
