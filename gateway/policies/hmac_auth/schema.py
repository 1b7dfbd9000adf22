"""Kong's hmac-auth plugin config (kong/plugins/hmac-auth/schema.lua)."""

from typing import Annotated, Any, ClassVar, Literal

import msgspec

from gateway.config.consumers import HeaderText

Algorithm = Literal["hmac-sha1", "hmac-sha256", "hmac-sha384", "hmac-sha512"]


class HmacAuthConfig(msgspec.Struct, forbid_unknown_fields=True):
    # null: nil, skipped as an empty list is (access.lua:68 `if conf.enforce_headers and ...`; gateway.config.decode)
    NULL_AS: ClassVar[dict[str, Any]] = {"enforce_headers": []}

    hide_credentials: bool = False
    clock_skew: Annotated[float, msgspec.Meta(gt=0)] = 300.0  # seconds a Date (or X-Date) may be off
    anonymous: str | None = None
    validate_request_body: bool = False
    enforce_headers: list[Annotated[str, msgspec.Meta(min_length=1)]] = []  # names the signature must cover
    algorithms: list[Algorithm] = msgspec.field(
        default_factory=lambda: ["hmac-sha1", "hmac-sha256", "hmac-sha384", "hmac-sha512"])
    realm: HeaderText | None = None
