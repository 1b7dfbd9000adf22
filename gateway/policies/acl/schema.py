"""Kong's acl plugin config (kong/plugins/acl/schema.lua)."""

from typing import Annotated

import msgspec

Group = Annotated[str, msgspec.Meta(min_length=1)]  # Kong's strings are at least one character


class AclConfig(msgspec.Struct, forbid_unknown_fields=True):
    allow: list[Group] | None = None
    deny: list[Group] | None = None
    hide_groups_header: bool = False
    always_use_authenticated_groups: bool = False

    def __post_init__(self) -> None:
        if self.allow and self.deny:
            raise ValueError("allow and deny: set only one of them (Kong's acl takes either an allow or a deny list)")
        if not self.allow and not self.deny:
            raise ValueError("set allow (groups that may pass) or deny (groups that may not)")
