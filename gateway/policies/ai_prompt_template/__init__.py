"""ai-prompt-template: Kong's named request templates, which a request calls with {template://NAME} and fills with
its "properties"."""

from gateway.policies.ai_prompt_template.handler import AiPromptTemplate
from gateway.policies.ai_prompt_template.schema import AiPromptTemplateConfig

name = "ai-prompt-template"
priority = AiPromptTemplate.priority
schema = AiPromptTemplateConfig
consumer_scoped = True


def build(config: AiPromptTemplateConfig, plugin_id: str, shared: object) -> AiPromptTemplate:
    return AiPromptTemplate(config)
