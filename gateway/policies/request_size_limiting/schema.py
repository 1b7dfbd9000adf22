"""Kong's request-size-limiting config."""

from typing import Literal

import msgspec

UNIT_BYTES = {"bytes": 1, "kilobytes": 1024, "megabytes": 1024 * 1024}


class RequestSizeLimitingConfig(msgspec.Struct, forbid_unknown_fields=True):
    allowed_payload_size: int = 128  # any integer, as Kong's (a negative one refuses every request)
    size_unit: Literal["megabytes", "kilobytes", "bytes"] = "megabytes"
    require_content_length: bool = False

    @property
    def limit_bytes(self) -> int:
        return self.allowed_payload_size * UNIT_BYTES[self.size_unit]
