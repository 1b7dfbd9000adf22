"""Kong's bot-detection plugin config (kong/plugins/bot-detection/schema.lua)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import msgspec

from gateway.policies.pcre2 import pattern_problem, unavailable

Regex = Annotated[str, msgspec.Meta(min_length=1)]  # Kong's strings are at least one character


class BotDetectionConfig(msgspec.Struct, forbid_unknown_fields=True):
    # null: nil, skipped as an empty list is (handler.lua:40, 48: `if conf.allow then`; gateway.config.decode)
    NULL_AS: ClassVar[dict[str, Any]] = {"allow": [], "deny": []}

    allow: list[Regex] = []  # User-Agent regexes let through even if they look like bots (PCRE, as Kong's)
    deny: list[Regex] = []  # User-Agent regexes refused (403)

    def __post_init__(self) -> None:
        if (why := unavailable()) is not None:  # Kong's own bot patterns need it too
            raise ValueError(why)
        for field in ("allow", "deny"):
            for i, rule in enumerate(getattr(self, field)):
                problem = pattern_problem(rule)  # Kong's is_regex: ngx.re.match compiles it
                if problem is not None:
                    raise ValueError(f"{field}[{i}]: not a valid regex: {problem}")
