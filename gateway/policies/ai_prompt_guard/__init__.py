"""ai-prompt-guard: Kong's check of a chat or completions prompt against allow and deny regexes (400 when refused)."""

from gateway.policies.ai_prompt_guard.handler import AiPromptGuard
from gateway.policies.ai_prompt_guard.schema import AiPromptGuardConfig

name = "ai-prompt-guard"
priority = AiPromptGuard.priority
schema = AiPromptGuardConfig
consumer_scoped = True


def build(config: AiPromptGuardConfig, plugin_id: str, shared: object) -> AiPromptGuard:
    return AiPromptGuard(config)
