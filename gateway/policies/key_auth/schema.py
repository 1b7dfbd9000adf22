"""Kong's key-auth plugin config (kong/plugins/key-auth/schema.lua)."""

from typing import Annotated

import msgspec

from gateway.config.consumers import HeaderText

HeaderName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]+$")]  # Kong's typedefs.header_name


class KeyAuthConfig(msgspec.Struct, forbid_unknown_fields=True):
    key_names: Annotated[list[HeaderName], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["apikey"])
    hide_credentials: bool = False
    anonymous: str | None = None
    key_in_header: bool = True
    key_in_query: bool = True
    key_in_body: bool = False
    run_on_preflight: bool = True
    realm: HeaderText | None = None
