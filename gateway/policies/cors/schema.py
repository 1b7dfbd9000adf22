"""Kong's cors plugin config (kong/plugins/cors/schema.lua)."""

from __future__ import annotations

import re
from typing import Literal

import msgspec

from gateway.config.errors import show
from gateway.policies.pcre2 import pattern_problem, unavailable
from gateway.policies.schema_types import KongString

Method = Literal["GET", "HEAD", "PUT", "PATCH", "POST", "DELETE", "OPTIONS", "TRACE", "CONNECT"]
METHODS: list[Method] = ["GET", "HEAD", "PUT", "PATCH", "POST", "DELETE", "OPTIONS", "TRACE", "CONNECT"]
PLAIN = re.compile(r"^[A-Za-z0-9.:/-]+$")  # Kong's test of an origin that is no regex (always a valid one)


class CorsConfig(msgspec.Struct, forbid_unknown_fields=True):
    origins: list[KongString] | None = None  # "*", plain origins or regexes; none: every origin
    headers: list[KongString] | None = None
    exposed_headers: list[KongString] | None = None
    methods: list[Method] | None = msgspec.field(default_factory=lambda: list(METHODS))  # null: all (Kong's handler)
    max_age: float | None = None  # any number, sent as Lua's tostring writes it (Kong's schema has no bounds)
    credentials: bool = False
    private_network: bool = False
    preflight_continue: bool = False
    allow_origin_absent: bool = True

    def __post_init__(self) -> None:
        for i, origin in enumerate(self.origins or ()):
            if origin == "*" or PLAIN.match(origin):
                continue
            if (why := unavailable()) is not None:
                raise ValueError(f"origins[{i}]: {why}")
            problem = pattern_problem(origin)  # Kong's is_regex: ngx.re.match compiles it
            if problem is not None:
                raise ValueError(f"origins[{i}]: {show(origin)} is not a valid regex ({problem})")
