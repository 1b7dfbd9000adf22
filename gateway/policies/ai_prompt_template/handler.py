"""Kong's ai-prompt-template (kong/plugins/ai-prompt-template/filters/render-prompt-template.lua, templater.lua).

The body is read as JSON whatever its Content-Type (kong.request.get_body("application/json")). Its "messages" (or,
without them, "prompt") may be a reference "{template://NAME}": the template of that name is rendered with the
request's "properties" (an object of strings) and sent upstream as the whole body, Content-Type unchanged. Each
{{name}} ([A-Za-z0-9_]+) becomes the property's JSON-escaped text (lua-cjson's, without the quotes: a property
cannot break out of a JSON string); placeholders left are an error. Anything else is forwarded unchanged, unless
allow_untemplated_requests is false.

Each refusal is a 400 {"error":{"message": ...}} with Kong's text: "this LLM route only supports application/json
requests" (not JSON, or too large to read), "cannot run 'messages' and 'prompt' templates at the same time", "only
'llm/v1/chat' and 'llm/v1/completions' formats are supported for templating", "this LLM route only supports
templated requests", "could not find template name [NAME]", "properties must be an object", "property values must
be a string, got TYPE", "missing template parameters: [a], [b]".
"""

from __future__ import annotations

import re
from typing import Any

from gateway.http.server import Exchange
from gateway.policies.ai_prompt_template.schema import AiPromptTemplateConfig
from gateway.policies.llm_request import (
    bad_request,
    decode_json,
    encode_string,
    field,
    lua_truthy,
    lua_type,
    raw_body,
    set_body,
    utf8,
)
from gateway.telemetry.entry import ORIGINAL_REQUEST

PLACEHOLDER = re.compile(r"\{\{([A-Za-z0-9_]+)\}\}")  # Lua's "{{([%w_]+)}}" (C locale: ASCII)
PREFIX = "{template://"


def template_name(reference: Any) -> str | None:
    """NAME of a "{template://NAME}" reference, else None."""
    if isinstance(reference, str) and reference.startswith(PREFIX) and reference.endswith("}") and \
            len(reference) > len(PREFIX):
        return reference[len(PREFIX):-1]
    return None


def render(template: str, properties: Any) -> tuple[str | None, str | None]:
    """templater.render: (the rendered template, None) or (None, the error)."""
    if not isinstance(properties, (dict, list)):
        return None, "properties must be an object"
    if isinstance(properties, list):  # an array's keys are numbers
        if properties:
            return None, "properties must be an object"
        properties = {}
    values = {}
    for key, value in properties.items():
        if not isinstance(value, str):
            return None, f"property values must be a string, got {lua_type(value)}"
        values[key] = encode_string(value)[1:-1]
    result = PLACEHOLDER.sub(lambda m: values.get(m[1], m[0]), template)
    missing = list(dict.fromkeys(PLACEHOLDER.findall(result)))
    if missing:
        return None, "missing template parameters: " + ", ".join(f"[{name}]" for name in missing)
    return result, None


class AiPromptTemplate:
    name = "ai-prompt-template"
    priority = 773  # Kong's

    def __init__(self, config: AiPromptTemplateConfig) -> None:
        self.templates: dict[str, str] = {}
        for t in config.templates or ():
            self.templates.setdefault(t.name, t.template)  # type: ignore[arg-type]  # checked by the schema
        self.allow_untemplated = config.allow_untemplated_requests
        self.max_size = config.max_request_body_size
        self.log_original = config.log_original_request

    async def access(self, ex: Exchange) -> bool:
        raw = await raw_body(ex, self.max_size)
        if self.log_original and raw is not None:  # kong.log.set_serialize_value, before the body changes
            if ex.state is None:
                ex.state = {}
            ex.state[ORIGINAL_REQUEST] = raw
        doc = decode_json(raw) if raw is not None else None
        if doc is None:
            return await bad_request(ex, "this LLM route only supports application/json requests")
        messages, prompt = field(doc, "messages"), field(doc, "prompt")
        if lua_truthy(messages) and lua_truthy(prompt):
            return await bad_request(ex, "cannot run 'messages' and 'prompt' templates at the same time")
        reference = messages if lua_truthy(messages) else prompt
        if not lua_truthy(reference):
            return await bad_request(ex, "only 'llm/v1/chat' and 'llm/v1/completions' formats are supported for "
                                         "templating")
        name = template_name(reference)
        if name is None:
            if self.allow_untemplated:
                return False
            return await bad_request(ex, "this LLM route only supports templated requests")
        template = self.templates.get(name)
        if template is None:
            return await bad_request(ex, f"could not find template name [{name}]")
        properties = field(doc, "properties")
        rendered, error = render(template, properties if lua_truthy(properties) else {})
        if rendered is None:
            return await bad_request(ex, error or "")
        set_body(ex, utf8(rendered))
        return False
