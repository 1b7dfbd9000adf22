"""Kong's request-termination plugin config (kong/plugins/request-termination/schema.lua)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from gateway.policies.schema_types import HeaderName


class RequestTerminationConfig(msgspec.Struct, forbid_unknown_fields=True):
    status_code: Annotated[int, msgspec.Meta(ge=100, le=599)] = 503
    message: str | None = None
    content_type: str | None = None
    body: str | None = None
    echo: bool = False
    trigger: HeaderName | None = None

    def __post_init__(self) -> None:
        for name in ("message", "content_type", "body"):  # Kong's len_min 1, implied for every string field
            if getattr(self, name) == "":
                raise ValueError(f"{name}: length must be at least 1")
        # Kong's custom_validator, with its messages
        if self.message and (self.content_type or self.body):
            raise ValueError("message cannot be used with content_type or body")
        if self.content_type and not self.body:
            raise ValueError("content_type requires a body")
        if self.echo and (self.content_type or self.body):
            raise ValueError("echo cannot be used with content_type and body")
