"""Kong's standard-webhooks plugin config (kong/plugins/standard-webhooks/schema.lua, Kong 3.8)."""

from typing import Annotated

import msgspec


class StandardWebhooksConfig(msgspec.Struct, forbid_unknown_fields=True):
    secret_v1: Annotated[str, msgspec.Meta(min_length=1)]  # the HMAC-SHA256 key, used as written
    tolerance_second: Annotated[int, msgspec.Meta(ge=0)] = 300  # how old a webhook-timestamp may be
