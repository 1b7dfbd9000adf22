"""Kong's ai-prompt-decorator (kong/plugins/ai-prompt-decorator/filters/decorate-prompt.lua, after parse-request).

A chat request's "messages" get the configured prepend messages before them and the append ones after, each as
{"role", "content"}; the request goes upstream as lua-cjson writes the table (gateway.policies.llm_request.encode)
with Content-Type application/json, and that table is what an ai-prompt-guard after it checks.

A body without messages (none, an empty array, an object, not JSON: Kong reads an empty table then) is answered
400 {"error":{"message":"this LLM route only supports llm/chat type requests"}}. As in Kong, "messages" that are a
non-empty string, a number, true or null fail the plugin (a Lua error there: Kong's 500).
"""

from __future__ import annotations

from typing import Any

from gateway.http.server import Exchange
from gateway.policies.ai_prompt_decorator.schema import AiPromptDecoratorConfig
from gateway.policies.base import LuaError
from gateway.policies.llm_request import (
    MISSING,
    bad_request,
    encode,
    field,
    length,
    parse_request,
    set_body,
    set_in_use,
)


class AiPromptDecorator:
    name = "ai-prompt-decorator"
    priority = 772  # Kong's

    def __init__(self, config: AiPromptDecoratorConfig) -> None:
        prompts = config.prompts
        self.prepend = [{"role": p.role, "content": p.content} for p in prompts.prepend or ()] if prompts else []
        self.append = [{"role": p.role, "content": p.content} for p in prompts.append or ()] if prompts else []
        self.max_size = config.max_request_body_size

    async def access(self, ex: Exchange) -> bool:
        doc = await parse_request(ex, self.max_size)
        if doc is None:
            doc = {}
        messages = field(doc, "messages")
        if length(messages if messages is not MISSING and messages is not False else []) < 1:
            return await bad_request(ex, "this LLM route only supports llm/chat type requests")
        if not isinstance(messages, list):  # a string: Kong's ipairs over it fails
            raise LuaError(f"bad argument #1 to 'ipairs' (table expected, got {type(messages).__name__})")
        decorated: Any = dict(doc)
        decorated["messages"] = [dict(m) for m in self.prepend] + messages + [dict(m) for m in self.append]
        set_body(ex, encode(decorated), b"application/json")
        set_in_use(ex, decorated)
        return False
