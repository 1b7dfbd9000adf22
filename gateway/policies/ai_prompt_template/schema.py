"""Kong's ai-prompt-template config (kong/plugins/ai-prompt-template/schema.lua), with Kong's validation messages.

log_original_request: Kong adds the original body to the log plugins' entry (ai.payload.original_request); the
gateway's log entry does not carry that field yet, so `true` is refused rather than silently not logged."""

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
    log_original_request: bool = False
    max_request_body_size: int = 8 * 1024

    def __post_init__(self) -> None:
        if self.templates is None:
            raise ValueError("templates: required field missing")
        check_body_size(self.max_request_body_size)
        if self.log_original_request:
            raise ValueError("log_original_request: true is not supported: the gateway's log entries do not carry "
                             "Kong's ai.payload.original_request field")
