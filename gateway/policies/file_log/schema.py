"""Kong's file-log plugin config (kong/plugins/file-log/schema.lua)."""

from typing import Annotated

import msgspec

# Kong's match: a path with none of * & % \ `
Path = Annotated[str, msgspec.Meta(pattern=r"^[^*&%\\`]+$", min_length=1)]


class FileLogConfig(msgspec.Struct, forbid_unknown_fields=True):
    path: Path
    reopen: bool = False  # close and reopen the file for every write
    custom_fields_by_lua: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if self.custom_fields_by_lua:
            raise ValueError("custom_fields_by_lua: the gateway runs no Lua; remove it")
