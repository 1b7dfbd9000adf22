"""Kong's cors plugin config (kong/plugins/cors/schema.lua)."""

from __future__ import annotations

from typing import Literal

import msgspec

from gateway.config.errors import show
from gateway.config.patterns import regex_problem

Method = Literal["GET", "HEAD", "PUT", "PATCH", "POST", "DELETE", "OPTIONS", "TRACE", "CONNECT"]
METHODS: list[Method] = ["GET", "HEAD", "PUT", "PATCH", "POST", "DELETE", "OPTIONS", "TRACE", "CONNECT"]


class CorsConfig(msgspec.Struct, forbid_unknown_fields=True):
    origins: list[str] | None = None  # "*", plain origins or regexes; none: every origin
    headers: list[str] | None = None
    exposed_headers: list[str] | None = None
    methods: list[Method] | None = msgspec.field(default_factory=lambda: list(METHODS))  # null: all (Kong's handler)
    max_age: float | None = None  # any number, sent as Lua's tostring writes it (Kong's schema has no bounds)
    credentials: bool = False
    private_network: bool = False
    preflight_continue: bool = False
    allow_origin_absent: bool = True

    def __post_init__(self) -> None:
        for i, origin in enumerate(self.origins or ()):
            if origin == "*":
                continue
            problem = regex_problem(origin)
            if problem is not None:
                raise ValueError(f"origins[{i}]: {show(origin)} is not a valid regex ({problem})")
