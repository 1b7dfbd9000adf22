"""Kong's jwt plugin config (kong/plugins/jwt/schema.lua)."""

from typing import Annotated, Literal

import msgspec

from gateway.config.consumers import HeaderText


class JwtConfig(msgspec.Struct, forbid_unknown_fields=True):
    uri_param_names: list[str] = msgspec.field(default_factory=lambda: ["jwt"])
    cookie_names: list[str] = []
    header_names: list[str] = msgspec.field(default_factory=lambda: ["authorization"])
    claims_to_verify: list[Literal["exp", "nbf"]] = []
    key_claim_name: str = "iss"
    secret_is_base64: bool = False
    anonymous: str | None = None
    run_on_preflight: bool = True
    maximum_expiration: Annotated[float, msgspec.Meta(ge=0, le=31536000)] = 0
    realm: HeaderText | None = None

    def __post_init__(self) -> None:
        if self.maximum_expiration > 0 and "exp" not in self.claims_to_verify:
            raise ValueError("maximum_expiration needs claims_to_verify to include exp (as Kong's schema requires)")
