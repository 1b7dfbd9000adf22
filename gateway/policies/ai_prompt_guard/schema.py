"""Kong's ai-prompt-guard config (kong/plugins/ai-prompt-guard/schema.lua), with Kong's validation messages.

llm_format: Kong also takes "bedrock" and "gemini", which convert a native Bedrock or Gemini request into Kong's
OpenAI-like one for ai-proxy (kong/llm/adapters); without ai-proxy, which this gateway does not build, the converted
messages carry their content as parts, which the guard refuses (400) whatever the patterns: they are refused here.
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec

from gateway.config.errors import inline, show
from gateway.policies.pcre2 import pattern_problem, unavailable

LLM_FORMATS = ("openai", "bedrock", "gemini")


def check_length(name: str, items: list[str] | None, most: int, item_most: int) -> None:
    """Kong's len_max on an array, and len_min 1 / len_max on its strings (their bytes, as Lua's #)."""
    if items is None:
        return
    if len(items) > most:
        raise ValueError(f"{name}: length must be at most {most}")
    for i, item in enumerate(items):
        size = len(item.encode("utf-8", "surrogateescape"))
        if size < 1:
            raise ValueError(f"{name}[{i}]: length must be at least 1")
        if size > item_most:
            raise ValueError(f"{name}[{i}]: length must be at most {item_most}")


def check_body_size(size: int) -> None:
    if size <= 0:
        raise ValueError("max_request_body_size: value must be greater than 0")


def check_llm_format(llm_format: str) -> None:
    if llm_format not in LLM_FORMATS:
        raise ValueError(f"llm_format: expected one of: {', '.join(LLM_FORMATS)}")
    if llm_format != "openai":
        raise ValueError(f"llm_format: {llm_format!r} is not supported: Kong converts {inline(llm_format)} "
                         "requests for ai-proxy, which this gateway does not build; the prompt plugins read OpenAI "
                         "requests (\"openai\", the default)")


class AiPromptGuardConfig(msgspec.Struct, forbid_unknown_fields=True):
    # null: nil, read as openai (kong/llm/plugin/shared-filters/parse-request.lua:57-58 `if llm_format and
    # llm_format ~= "openai"`; gateway.config.decode)
    NULL_AS: ClassVar[dict[str, Any]] = {"llm_format": "openai"}

    allow_patterns: list[str] | None = None  # PCRE2 (ngx.re.find "jo"): see the handler
    deny_patterns: list[str] | None = None
    allow_all_conversation_history: bool = False  # true: only the latest user message is checked
    max_request_body_size: int = 8 * 1024
    match_all_roles: bool = False
    llm_format: str = "openai"

    def __post_init__(self) -> None:
        check_length("allow_patterns", self.allow_patterns, 10, 500)
        check_length("deny_patterns", self.deny_patterns, 10, 500)
        if (self.allow_patterns or self.deny_patterns) and (why := unavailable()) is not None:
            raise ValueError(why)
        for name, patterns in (("allow_patterns", self.allow_patterns), ("deny_patterns", self.deny_patterns)):
            for i, pattern in enumerate(patterns or ()):
                if (problem := pattern_problem(pattern)) is not None:
                    raise ValueError(f"{name}[{i}]: {show(pattern)} is not a valid regex ({problem}): Kong would "
                                     "answer 500 to every request the guard checks")
        check_body_size(self.max_request_body_size)
        check_llm_format(self.llm_format)
        if not self.allow_patterns and not self.deny_patterns:
            raise ValueError("at least one of these fields must be non-empty: 'config.allow_patterns', "
                             "'config.deny_patterns'")
        if self.match_all_roles and self.allow_all_conversation_history:
            raise ValueError("allow_all_conversation_history: value must be false (failed conditional validation "
                             "given value of field 'config.match_all_roles')")
