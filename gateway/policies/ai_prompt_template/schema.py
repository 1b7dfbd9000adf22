"""Kong's ai-prompt-template config (kong/plugins/ai-prompt-template/schema.lua), with Kong's validation messages."""

from __future__ import annotations

import msgspec

from gateway.policies.ai_prompt_guard.schema import check_body_size


class Template(msgspec.Struct, forbid_unknown_fields=True):
    name: str | None = None  # called with {template://NAME}
    template: str | None = None  # the body sent instead, with {{placeholders}}

    def __post_init__(self) -> None:
        for key in ("name", "template"):
            value = getattr(self, key)
            if value is None:
                raise ValueError(f"{key}: required field missing")
            if not value:  # Kong's strings have len_min 1 unless they say otherwise
                raise ValueError(f"{key}: length must be at least 1")


class AiPromptTemplateConfig(msgspec.Struct, forbid_unknown_fields=True):
    templates: list[Template] | None = None
    allow_untemplated_requests: bool = True
    log_original_request: bool = False  # the body as it came, in the log entry's ai.payload.original_request
    max_request_body_size: int = 8 * 1024

    def __post_init__(self) -> None:
        if self.templates is None:
            raise ValueError("templates: required field missing")
        check_body_size(self.max_request_body_size)
