"""Kong's key-auth plugin config (kong/plugins/key-auth/schema.lua)."""

import re

import msgspec

from gateway.config.consumers import HeaderText
from gateway.config.errors import inline

_HEADER_NAME = re.compile(r"^[a-zA-Z0-9-_]+$")  # kong.tools.http.validate_header_name (PCRE "$": a final "\n" passes)


class KeyAuthConfig(msgspec.Struct, forbid_unknown_fields=True):
    key_names: list[str] = msgspec.field(default_factory=lambda: ["apikey"])  # may be empty, as Kong's array
    hide_credentials: bool = False
    anonymous: str | None = None
    key_in_header: bool = True
    key_in_query: bool = True
    key_in_body: bool = False
    run_on_preflight: bool = True
    realm: HeaderText | None = None

    def __post_init__(self) -> None:
        """Each key name is a header name (Kong's typedefs.header_name), refused with Kong's own words."""
        for i, name in enumerate(self.key_names):
            if not name:
                raise ValueError(f"key_names[{i}]: length must be at least 1")
            if not _HEADER_NAME.match(name):
                raise ValueError(f"key_names[{i}]: bad header name '{inline(name)}', allowed characters are A-Z, a-z, "
                                 "0-9, '_', and '-'")
