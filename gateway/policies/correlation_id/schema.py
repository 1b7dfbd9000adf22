"""Kong's correlation-id plugin config (kong/plugins/correlation-id/schema.lua)."""

from __future__ import annotations

from typing import Literal

import msgspec

from gateway.policies.schema_types import HeaderName


class CorrelationIdConfig(msgspec.Struct, forbid_unknown_fields=True):
    header_name: HeaderName = "Kong-Request-ID"
    generator: Literal["uuid", "uuid#counter", "tracker"] = "uuid#counter"
    echo_downstream: bool = False
