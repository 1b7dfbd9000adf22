"""Kong's ai-prompt-decorator config (kong/plugins/ai-prompt-decorator/schema.lua), with Kong's validation
messages. llm_format other than "openai" is refused as for ai-prompt-guard (gateway.policies.ai_prompt_guard.schema):
Kong would send the upstream the request converted to its OpenAI-like format."""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec

from gateway.policies.ai_prompt_guard.schema import check_body_size, check_llm_format

ROLES = ("system", "assistant", "user")


class Prompt(msgspec.Struct, forbid_unknown_fields=True):
    role: str = "system"
    content: str | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role: expected one of: {', '.join(ROLES)}")
        if self.content is None:
            raise ValueError("content: required field missing")
        size = len(self.content.encode("utf-8", "surrogateescape"))
        if size < 1:
            raise ValueError("content: length must be at least 1")
        if size > 500:
            raise ValueError("content: length must be at most 500")


class Prompts(msgspec.Struct, forbid_unknown_fields=True):
    prepend: list[Prompt] | None = None  # put before the request's messages, in this order
    append: list[Prompt] | None = None  # put after them, in this order

    def __post_init__(self) -> None:
        for name in ("prepend", "append"):
            items = getattr(self, name)
            if items is not None and len(items) > 15:
                raise ValueError(f"{name}: length must be at most 15")


class AiPromptDecoratorConfig(msgspec.Struct, forbid_unknown_fields=True):
    # null: nil, read as openai (kong/llm/plugin/shared-filters/parse-request.lua:57-58 `if llm_format and
    # llm_format ~= "openai"`; gateway.config.decode)
    NULL_AS: ClassVar[dict[str, Any]] = {"llm_format": "openai"}

    prompts: Prompts | None = None
    max_request_body_size: int = 8 * 1024
    llm_format: str = "openai"

    def __post_init__(self) -> None:
        check_body_size(self.max_request_body_size)
        check_llm_format(self.llm_format)
        if self.prompts is None or not (self.prompts.prepend or self.prompts.append):
            raise ValueError("at least one of these fields must be non-empty: 'config.prompts.prepend', "
                             "'config.prompts.append'")
