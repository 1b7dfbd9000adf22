"""Kong's ai-prompt-guard (kong/plugins/ai-prompt-guard/filters/guard-prompt.lua, after parse-request).

The prompt checked: for a chat request ("messages" an array) the contents of the user messages (of every message
with match_all_roles), latest first, each followed by a space; with allow_all_conversation_history only the latest
one, alone. For a completions request, "prompt". A message whose role is not a string, or a checked one whose
content is not a string (OpenAI's array of parts too), or a body with neither, is a bad format. Then the deny
patterns in order (one that finds the prompt refuses it), and, when there are allow patterns, one must find it.

Every refusal is the same 400 {"error":{"message":"bad request"}} (Kong does not tell the client the guard is there).
The patterns run as Kong's ngx.re.find(prompt, pattern, "jo") runs them, on PCRE2 (gateway.policies.pcre2): over the
prompt's UTF-8 bytes, without UTF, under Kong's match limit. A pattern that fails on a prompt (the match limit
reached) is logged and answered 500, as Kong's kong.response.exit(500); one that does not compile is refused by
check-config, where Kong would answer 500 to every request it checks.
"""

from __future__ import annotations

import logging

from gateway.http.server import Exchange
from gateway.policies.ai_prompt_guard.schema import AiPromptGuardConfig
from gateway.policies.llm_request import bad_request, field, parse_request
from gateway.policies.pcre2 import PcreMatchError, Regex, utf8

log = logging.getLogger("gateway.policies")


class AiPromptGuard:
    name = "ai-prompt-guard"
    priority = 771  # Kong's

    def __init__(self, config: AiPromptGuardConfig) -> None:
        self.deny = [Regex(p) for p in config.deny_patterns or ()]  # (the schema refused those that cannot compile)
        self.allow = [Regex(p) for p in config.allow_patterns or ()]
        self.latest_only = config.allow_all_conversation_history
        self.all_roles = config.match_all_roles
        self.max_size = config.max_request_body_size

    async def access(self, ex: Exchange) -> bool:
        doc = await parse_request(ex, self.max_size)
        prompt = self.prompt(doc if doc is not None else {})
        if prompt is None:  # "ai-prompt-guard only supports llm/v1/chat or llm/v1/completions prompts"
            return await bad_request(ex, "bad request")
        try:
            allowed = self.allowed(utf8(prompt))
        except PcreMatchError as e:  # Kong: "regex failed, that's an error by the administrator"
            log.error("ai-prompt-guard: bad regex pattern '%s', failed to execute: %s", e.pattern, e)
            await ex.respond_error_page(500)  # kong.response.exit(500): no body, so nginx's error page
            return True
        if not allowed:  # "prompt pattern is blocked" / "prompt doesn't match any allowed pattern"
            return await bad_request(ex, "bad request")
        return False

    def prompt(self, doc: object) -> str | None:
        """The text the patterns are matched against, or None for a request of neither format."""
        messages = field(doc, "messages")
        if isinstance(messages, (list, dict)):
            parts: list[str] = []
            for message in reversed(messages) if isinstance(messages, list) else ():  # an object has no items
                role = field(message, "role")
                if not isinstance(role, str):
                    return None
                if role == "user" or self.all_roles:
                    content = field(message, "content")
                    if not isinstance(content, str):
                        return None
                    parts.append(content)
                    if self.latest_only:
                        break
                    parts.append(" ")  # Kong's separator, after each one
            return "".join(parts)
        prompt = field(doc, "prompt")
        return prompt if isinstance(prompt, str) else None

    def allowed(self, subject: bytes) -> bool:
        """Whether the prompt passes the deny, then the allow patterns; PcreMatchError when one of them fails."""
        for pattern in self.deny:
            if pattern.search(subject):
                return False
        if not self.allow:
            return True
        return any(pattern.search(subject) for pattern in self.allow)
