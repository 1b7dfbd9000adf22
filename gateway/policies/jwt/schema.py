"""Kong's jwt plugin config (kong/plugins/jwt/schema.lua)."""

from typing import Annotated, Any, ClassVar, Literal

import msgspec

from gateway.config.consumers import HeaderText

Name = Annotated[str, msgspec.Meta(min_length=1)]  # Kong's schema strings are at least one character long


class JwtConfig(msgspec.Struct, forbid_unknown_fields=True):
    # null: nil, no check as 0 (handler.lua:245 `if conf.maximum_expiration ~= nil and ... > 0`; gateway.config.decode)
    NULL_AS: ClassVar[dict[str, Any]] = {"maximum_expiration": 0}

    uri_param_names: list[Name] = msgspec.field(default_factory=lambda: ["jwt"])
    cookie_names: list[Name] = []
    header_names: list[Name] = msgspec.field(default_factory=lambda: ["authorization"])
    claims_to_verify: list[Literal["exp", "nbf"]] | None = None  # Kong's has no default: null (verify none)
    key_claim_name: Name = "iss"
    secret_is_base64: bool = False
    anonymous: str | None = None
    run_on_preflight: bool = True
    maximum_expiration: Annotated[float, msgspec.Meta(ge=0, le=31536000)] = 0
    realm: HeaderText | None = None

    def __post_init__(self) -> None:
        # Kong's conditional entity check: a null claims_to_verify passes it (only check_maximum_expiration runs)
        if self.maximum_expiration > 0 and self.claims_to_verify is not None and "exp" not in self.claims_to_verify:
            raise ValueError("maximum_expiration needs claims_to_verify to include exp (as Kong's schema requires)")
