"""Kong's bot-detection plugin config (kong/plugins/bot-detection/schema.lua)."""

from __future__ import annotations

import re
from typing import Annotated

import msgspec

from gateway.config.patterns import regex_problem

Regex = Annotated[str, msgspec.Meta(min_length=1)]  # Kong's strings are at least one character


class BotDetectionConfig(msgspec.Struct, forbid_unknown_fields=True):
    allow: list[Regex] = []  # User-Agent regexes let through even if they look like bots
    deny: list[Regex] = []  # User-Agent regexes refused (403)

    def __post_init__(self) -> None:
        for field in ("allow", "deny"):
            for i, rule in enumerate(getattr(self, field)):
                problem = regex_problem(rule, re.ASCII)
                if problem is not None:
                    raise ValueError(f"{field}[{i}]: not a valid regex: {problem}")
