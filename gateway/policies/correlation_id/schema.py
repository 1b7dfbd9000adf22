"""Kong's correlation-id plugin config (kong/plugins/correlation-id/schema.lua)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

# Kong's header_name is any string; the gateway takes what HTTP allows in a header name (RFC 9110 token)
HeaderToken = Annotated[str, msgspec.Meta(pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")]


class CorrelationIdConfig(msgspec.Struct, forbid_unknown_fields=True):
    header_name: HeaderToken = "Kong-Request-ID"
    generator: Literal["uuid", "uuid#counter", "tracker"] = "uuid#counter"
    echo_downstream: bool = False
