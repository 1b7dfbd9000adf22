"""ai-prompt-decorator: Kong's fixed chat messages put before and after those of a chat request."""

from gateway.policies.ai_prompt_decorator.handler import AiPromptDecorator
from gateway.policies.ai_prompt_decorator.schema import AiPromptDecoratorConfig

name = "ai-prompt-decorator"
priority = AiPromptDecorator.priority
schema = AiPromptDecoratorConfig
consumer_scoped = True


def build(config: AiPromptDecoratorConfig, plugin_id: str, shared: object) -> AiPromptDecorator:
    return AiPromptDecorator(config)
