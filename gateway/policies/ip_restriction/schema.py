"""Kong's ip-restriction plugin config (kong/plugins/ip-restriction/schema.lua)."""

from typing import Annotated

import msgspec

from gateway.config.errors import inline
from gateway.http.realip import parse_network


class IpRestrictionConfig(msgspec.Struct, forbid_unknown_fields=True):
    allow: list[str] | None = None
    deny: list[str] | None = None
    status: Annotated[int, msgspec.Meta(ge=400, le=599)] | None = None  # Kong's kong.response.error bounds
    message: Annotated[str, msgspec.Meta(min_length=1)] | None = None  # Kong's strings: len_min 1

    def __post_init__(self) -> None:
        if not self.allow and not self.deny:
            raise ValueError("at least one of allow and deny must be non-empty (IPs or CIDRs)")
        for field in ("allow", "deny"):
            for i, entry in enumerate(getattr(self, field) or ()):
                try:
                    parse_network(entry, brackets=True)
                except ValueError:
                    raise ValueError(f"{field}[{i}]: invalid ip or cidr range: '{inline(entry)}'") from None
