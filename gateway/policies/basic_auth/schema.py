"""Kong's basic-auth plugin config (kong/plugins/basic-auth/schema.lua)."""

import msgspec

from gateway.config.consumers import HeaderText


class BasicAuthConfig(msgspec.Struct, forbid_unknown_fields=True):
    anonymous: str | None = None
    hide_credentials: bool = False
    realm: HeaderText = "service"
