"""Kong 3.9.3's spec tests for ai-prompt-decorator (41), ai-prompt-guard (42), ai-prompt-template (43) and
standard-webhooks (44), `it` by `it`: those no test of the gateway covered yet, against a real gateway (in-process,
real sockets) in front of an echo backend."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from plugin_helpers import body_json, call, http_codec, plugin, refused, seen, start  # noqa: F401 - the fixture

from gateway.config import parse_config
from gateway.runtime import compile_config

JSON_HEADERS = [("content-type", "application/json")]
BAD_REQUEST = {"error": {"message": "bad request"}}


async def post(port: int, path: str, body: bytes, headers: list[tuple[str, str]] | None = None) -> Any:
    return await call(port, path, JSON_HEADERS if headers is None else headers, "POST", body)


# --- ai-prompt-guard: 02-integration_spec ----------------------------------------------------------------------------

async def test_guard_allow_only_allows_a_matching_chat_when_history_is_checked(nursery, gateway):
    """spec/03-plugins/42-ai-prompt-guard/02-integration_spec.lua, "allows message with 'allow' only set, without
    history": allow_all_conversation_history false, every user message checked; brie matches in the history."""
    _, port = await start(nursery, gateway, [{"paths": ["~/allow-only-block-history$"], "plugins": [
        plugin("ai-prompt-guard", allow_patterns=[".*cheddar.*", ".*brie.*"], allow_all_conversation_history=False)]}])
    body = json.dumps({"messages": [
        {"role": "system", "content": "You run a cheese shop."},
        {"role": "user", "content": "I think that brie is the best cheese."},
        {"role": "assistant", "content": "No, cheddar is the best cheese."},
        {"role": "user", "content": "Why cheddar?"}]}).encode()
    got = seen(await post(port, "/allow-only-block-history", body))
    assert got["body"] == body.decode()


# --- ai-prompt-guard: 01-unit_spec, every generated `it`, end to end --------------------------------------------------

FIXTURES = {"user": "this is a user request", "system": "this is a system message",
            "assistant": "this is an assistant reply"}


class Chat:
    """01-unit_spec's create_request / append_message: a system message, then messages that are all role "user"
    (the role argument only picks the fixture text, as the spec's append_message does)."""

    def __init__(self) -> None:
        self.messages = [{"role": "system", "content": FIXTURES["system"]}]

    def append(self, role: str, custom: str | None = None) -> Chat:
        text = FIXTURES[role] + (f" with custom content {custom}" if custom else "")
        self.messages.append({"role": "user", "content": text})
        return self

    def body(self) -> bytes:
        return json.dumps({"messages": self.messages}).encode()


def unit_cases() -> list[Any]:
    """The spec's loops: request_type chat and completions (both build messages), has_history, match_all_roles,
    allow/deny describe blocks with and without the other list: (title, config, chat, allowed)."""
    cases = []
    for request_type in ("chat", "completions"):
        cases.append(pytest.param({"allow_patterns": None, "deny_patterns": None}, Chat().append("user", "pattern"),
                                  True, id=f"{request_type}-allows a user request when nothing is set"))
        for has_history in ([False, True] if request_type == "chat" else [False]):
            for match_all_roles in ([False, True] if has_history else [False]):
                role = "system" if match_all_roles else "user"
                desc = (" in history" if has_history else " only the last")
                for other in (True, False):
                    title = desc + (", conf.deny_patterns is also set" if other else "")
                    config = {"allow_patterns": ["pa..ern"], "deny_patterns": ["deny match"] if other else None,
                              "allow_all_conversation_history": not has_history, "match_all_roles": match_all_roles}
                    chat = Chat().append(role, "pattern")
                    if has_history:
                        chat.append("user", "no match")
                    cases.append(pytest.param(config, chat, True,
                                              id=f"{request_type}-mar={match_all_roles}-allows a matching user "
                                                 f"request{title}"))
                    chat = Chat().append("user", "no match")
                    if has_history:
                        chat.append("user", "no match")
                    else:
                        chat.append(role, "pattern").append("user", "no match")
                    cases.append(pytest.param(config, chat, False,
                                              id=f"{request_type}-mar={match_all_roles}-denies an unmatched user "
                                                 f"request{title}"))
                for other in (True, False):
                    title = desc + (", conf.allow_patterns is also set" if other else "")
                    config = {"deny_patterns": ["pa..ern"], "allow_patterns": ["allow match"] if other else None,
                              "allow_all_conversation_history": not has_history}
                    chat = Chat().append(role, "pattern")
                    if has_history:
                        chat.append("user", "no match")
                    cases.append(pytest.param(config, chat, False,
                                              id=f"{request_type}-mar={match_all_roles}-denies a matching user "
                                                 f"request{title}"))
                    chat = Chat().append(role, "allow match")
                    if has_history:
                        chat.append("user", "no match")
                    else:
                        chat.append(role, "pattern").append(role, "allow match")
                    cases.append(pytest.param(config, chat, True,
                                              id=f"{request_type}-mar={match_all_roles}-allows unmatched user "
                                                 f"request{title}"))
    return cases


UNIT_CASES = unit_cases()


async def test_guard_unit_spec_cases_end_to_end(nursery, gateway):
    """spec/03-plugins/42-ai-prompt-guard/01-unit_spec.lua: all 34 generated `it`s ("allows a matching user request
    in history", "denies an unmatched user request only the last, conf.deny_patterns is also set", ...), each as a
    route of one gateway. "allows a user request when nothing is set" cannot be configured (the schema wants a list:
    00-config_spec), so it is checked as refused."""
    routes, expected = [], []
    for i, case in enumerate(UNIT_CASES):
        config, chat, allowed = case.values
        if config.get("allow_patterns") is None and config.get("deny_patterns") is None:
            assert "at least one of these fields must be non-empty: 'config.allow_patterns', " \
                   "'config.deny_patterns'" in refused(plugin("ai-prompt-guard", **config))
            continue
        config = {k: v for k, v in config.items() if v is not None}
        routes.append({"paths": [f"/case{i}"], "plugins": [plugin("ai-prompt-guard", **config)]})
        expected.append((i, case.id, chat, allowed))
    assert len(UNIT_CASES) == 34
    _, port = await start(nursery, gateway, routes)
    wrong = []
    for i, title, chat, allowed in expected:
        reply = await post(port, f"/case{i}", chat.body())
        if (reply.status == 200) != allowed or (not allowed and body_json(reply) != BAD_REQUEST):
            wrong.append((title, reply.status, reply.body[:100]))
    assert not wrong, wrong


# --- ai-prompt-decorator: 01-unit_spec --------------------------------------------------------------------------------

GENERAL_CHAT = {"messages": [{"role": "system", "content": "You are a mathematician."},
                             {"role": "user", "content": "What is 1 + 1?"},
                             {"role": "assistant", "content": "The answer is 2?"},
                             {"role": "user", "content": "Now double it."}]}
PREPEND = [{"role": "system", "content": "Give me answers in French language."},
           {"role": "user", "content": "Consider you are a mathematician."},
           {"role": "assistant", "content": "Okay I am a mathematician. What is your maths question?"}]
APPEND = [{"role": "system", "content": "Give me answers in French language."},
          {"role": "system", "content": "Give me the answer in JSON format."}]


@pytest.mark.parametrize(("prompts", "expected"), [
    ({"prepend": PREPEND}, PREPEND + GENERAL_CHAT["messages"]),
    ({"append": APPEND}, GENERAL_CHAT["messages"] + APPEND),
    ({"prepend": PREPEND, "append": APPEND}, PREPEND + GENERAL_CHAT["messages"] + APPEND),
], ids=["adds messages to the start of the array", "adds messages to the end of the array",
        "adds messages to the start and the end of the array"])
async def test_decorator_unit_spec_chat_v1_operations(nursery, gateway, prompts, expected):
    """spec/03-plugins/41-ai-prompt-decorator/01-unit_spec.lua "chat v1 operations": the request's four messages
    (system, user, assistant, user) with Kong's prompts of every role, in order, nothing else changed."""
    _, port = await start(nursery, gateway, plugins=[plugin("ai-prompt-decorator", prompts=prompts)])
    got = seen(await post(port, "/", json.dumps(GENERAL_CHAT).encode()))
    assert json.loads(got["body"]) == {"messages": expected}


# --- ai-prompt-template: 01-unit_spec / 02-integration_spec -----------------------------------------------------------

CHAT_TEMPLATE = """  {
    "messages": [
      {
        "role": "system",
        "content": "You are a {{program}} expert, in {{language}} programming language."
      },
      {
        "role": "user",
        "content": "Write me a {{program}} program."
      }
    ]
  }
"""


async def test_template_sends_the_rendered_chat_template_byte_for_byte(nursery, gateway):
    """spec/03-plugins/43-ai-prompt-template/01-unit_spec.lua "templates chat messages": the rendered text is the
    template with its placeholders filled, whitespace and all (set_raw_body: the upstream gets exactly that)."""
    _, port = await start(nursery, gateway, plugins=[plugin("ai-prompt-template", templates=[
        {"name": "programmer", "template": CHAT_TEMPLATE}])])
    body = json.dumps({"messages": "{template://programmer}",
                       "properties": {"program": "fibonacci sequence", "language": "python"}}).encode()
    got = seen(await post(port, "/request", body))
    assert got["body"] == CHAT_TEMPLATE.replace("{{program}}", "fibonacci sequence").replace("{{language}}", "python")


async def test_template_unknown_template_without_properties_is_refused(nursery, gateway):
    """02-integration_spec "still errors with a not found template when 'allow_untemplated_requests' is ON": the
    spec's body has no properties at all."""
    _, port = await start(nursery, gateway, plugins=[plugin("ai-prompt-template", templates=[
        {"name": "developer-chat", "template": CHAT_TEMPLATE}])])
    reply = await post(port, "/request", b'{"messages": "{template://not_found}"}')
    assert (reply.status, body_json(reply)) == (400, {"error": {"message": "could not find template name [not_found]"}})


# --- standard-webhooks: 01-unit_spec ----------------------------------------------------------------------------------

@pytest.mark.parametrize("config", [{"secret_v1": None}, {"secret_v1": "abc123", "tolerance_second": None}],
                         ids=["secret is not nullable", "tolerance_second is not nullable"])
def test_webhooks_null_config_fields_are_refused(config):
    """spec/03-plugins/44-standard-webhooks/01-unit_spec.lua "is not nullable" (secret and tolerance_second): Kong's
    "required field missing", naming the field."""
    field = next(k for k, v in config.items() if v is None)
    message = refused(plugin("standard-webhooks", **config))
    assert field in message, message


def test_webhooks_accepts_kongs_valid_config():
    """01-unit_spec "accepts a valid config": secret_v1 abc123, tolerance_second 300 pass check-config."""
    doc = {"services": [{"name": "s", "url": "http://127.0.0.1:1", "routes": [{"paths": ["/"]}]}],
           "plugins": [plugin("standard-webhooks", secret_v1="abc123", tolerance_second=5 * 60)]}
    compile_config(parse_config(json.dumps(doc)))  # no ConfigError


# --- the ai-* plugins not built -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["ai-proxy", "ai-request-transformer", "ai-response-transformer"])
def test_llm_plugins_are_refused_saying_why(name):
    message = refused(plugin(name))
    assert f"plugin '{name}' is not supported (it calls LLM providers" in message, message


# --- edges of the handlers (beyond the specs' `it`s; all pass: Kong's Lua semantics held) -----------------------------
TEMPLATES = [{"name": "c", "template": '{"prompt": "{{a}} {{é}} {{b}}"}'}]


@pytest.mark.parametrize(("body", "status", "message"), [
    (b'{"messages": null, "prompt": "{template://c}"}', 400,
     "cannot run 'messages' and 'prompt' templates at the same time"),
    (b'{"messages": false, "prompt": "{template://c}", "properties": {"a": "1", "b": "2"}}', 200, None),
    (b'{"prompt": "{template://c}", "properties": null}', 400, "properties must be an object"),
    (b'{"prompt": "{template://c}", "properties": ["x"]}', 400, "properties must be an object"),
    (b'{"prompt": "{template://c}", "properties": []}', 400, "missing template parameters: [a], [b]"),
    (b'{"prompt": "{template://c}", "properties": {"a": null}}', 400, "property values must be a string, got userdata"),
    (b'{"prompt": "{template://c}", "properties": {"a": {}}}', 400, "property values must be a string, got table"),
    (b'{"prompt": "{template://c}", "properties": {"a": "\\\\1 \\\\g<0> %1", "b": "{{a}}"}}', 400,
     "missing template parameters: [a]"),
    (b'{"prompt": "{template://c}", "properties": false, "x": 1}', 400, "missing template parameters: [a], [b]"),
    (b'{"prompt": "{template://}"}', 400, "could not find template name []"),
    (b'[1]', 400, "only 'llm/v1/chat' and 'llm/v1/completions' formats are supported for templating"),
    (b'"x"', 400, "this LLM route only supports application/json requests"),
    (b'{"prompt": 5}', 200, None),
    (b'{"prompt": null}', 200, None),
])
async def test_template_reads_messages_prompt_and_properties_as_lua_does(nursery, gateway, body, status, message):
    """render-prompt-template.lua:76-106 and templater.lua:13-62: JSON null is a true value (cjson.null), false is
    not; properties must be a table of string keys and string values; placeholders are ASCII `[%w_]+` only (`{{é}}`
    stays); a property's text is inserted literally (gsub with a table), and a `{{a}}` it brings is a missing one."""
    _, port = await start(nursery, gateway, plugins=[plugin("ai-prompt-template", templates=TEMPLATES)])
    reply = await post(port, "/", body)
    assert reply.status == status, reply.body
    if message:
        assert body_json(reply) == {"error": {"message": message}}


@pytest.mark.parametrize(("name", "config", "body", "headers", "status"), [
    ("ai-prompt-guard", {"deny_patterns": ["x"]}, b'{"messages": [1]}', None, 500),
    ("ai-prompt-guard", {"deny_patterns": ["x"]}, b'{"messages": ["hi"]}', None, 400),
    ("ai-prompt-guard", {"deny_patterns": ["x"]}, b'{"messages": [null]}', None, 500),
    ("ai-prompt-guard", {"deny_patterns": ["x"]}, b'{"messages": [true]}', None, 500),
    ("ai-prompt-guard", {"deny_patterns": ["x"]}, b'{"messages": [[]]}', None, 400),
    ("ai-prompt-guard", {"deny_patterns": ["x"]},
     b'{"messages": [{"role":"assistant","content":1},{"role":"user","content":"a"}]}', None, 200),
    ("ai-prompt-guard", {"allow_patterns": ["^$"]}, b'{"messages": [{"role":"system","content":"s"}]}', None, 200),
    ("ai-prompt-guard", {"allow_patterns": ["^$"]}, b'{"messages": {"a": 1}}', None, 200),
    ("ai-prompt-guard", {"deny_patterns": ["x"]}, b'{"messages": "x", "prompt": "y"}', None, 200),
    ("ai-prompt-guard", {"deny_patterns": ["x"]}, b'{"messages": null, "prompt": "x"}', None, 400),
    ("ai-prompt-guard", {"deny_patterns": ["x"]}, b'messages=a&messages=b',
     [("content-type", "application/x-www-form-urlencoded")], 400),
    ("ai-prompt-decorator", {"prompts": {"append": [{"content": "z"}]}}, b'{"messages": null}', None, 500),
    ("ai-prompt-decorator", {"prompts": {"append": [{"content": "z"}]}}, b'{"messages": 5}', None, 500),
    ("ai-prompt-decorator", {"prompts": {"append": [{"content": "z"}]}}, b'{"messages": true}', None, 500),
    ("ai-prompt-decorator", {"prompts": {"append": [{"content": "z"}]}}, b'{"messages": false}', None, 400),
    ("ai-prompt-decorator", {"prompts": {"append": [{"content": "z"}]}}, b'{"messages": [1], "t": 1e400}', None, 500),
    ("ai-prompt-decorator", {"prompts": {"append": [{"content": "z"}]}}, b'{"messages": ""}', None, 400),
])
async def test_guard_and_decorator_read_odd_messages_as_lua_does(nursery, gateway, name, config, body, headers,
                                                                  status):
    """guard-prompt.lua:41-73 (v.role on a string is nil: 400; on a number, boolean or null a Lua error: 500; an
    object's # is 0: an empty prompt) and decorate-prompt.lua:73-79 (#null, #5, #true raise: 500; false is nil; an
    empty string has # 0: 400; a number cjson cannot write back (1e400 is inf) fails set_body: 500)."""
    _, port = await start(nursery, gateway, plugins=[plugin(name, **config)])
    reply = await post(port, "/", body, headers)
    assert reply.status == status, reply.body


SECRET = "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def wh_sign(ts: int, body: bytes, webhook_id: str = "msg_1") -> str:
    mac = hmac.new(SECRET.encode(), f"{webhook_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


@pytest.mark.parametrize("which", ["rendered", "original"])
async def test_webhooks_checks_the_body_the_template_rendered(nursery, gateway, which):
    """standard-webhooks (760) runs after ai-prompt-template (773): internal.lua:58 get_raw_body reads the body
    set_raw_body set (render-prompt-template.lua:108), so the signature is over the rendered body."""
    tpl = [{"name": "c", "template": '{"prompt": "hi {{a}}"}'}]
    _, port = await start(nursery, gateway, plugins=[plugin("ai-prompt-template", templates=tpl),
                                                     plugin("standard-webhooks", secret_v1=SECRET)])
    original = b'{"prompt": "{template://c}", "properties": {"a": "x"}}'
    rendered = b'{"prompt": "hi x"}'
    ts = int(time.time())
    headers = [("content-type", "application/json"), ("webhook-id", "msg_1"), ("webhook-timestamp", str(ts)),
               ("webhook-signature", wh_sign(ts, rendered if which == "rendered" else original))]
    reply = await post(port, "/", original, headers)
    assert reply.status == (200 if which == "rendered" else 400), reply.body


@pytest.mark.parametrize("which", ["decorated", "original"])
async def test_webhooks_checks_the_body_the_decorator_wrote(nursery, gateway, which):
    """standard-webhooks (760) after ai-prompt-decorator (772): the signature is over the body set_body wrote
    (decorate-prompt.lua:81), compact as lua-cjson writes it."""
    decorator = plugin("ai-prompt-decorator", prompts={"append": [{"content": "z"}]})
    _, port = await start(nursery, gateway, plugins=[decorator, plugin("standard-webhooks", secret_v1=SECRET)])
    original = b'{"messages": [{"role": "user", "content": "a"}]}'
    decorated = b'{"messages":[{"role":"user","content":"a"},{"role":"system","content":"z"}]}'
    ts = int(time.time())
    headers = [("content-type", "application/json"), ("webhook-id", "msg_1"), ("webhook-timestamp", str(ts)),
               ("webhook-signature", wh_sign(ts, decorated if which == "decorated" else original))]
    reply = await post(port, "/", original, headers)
    assert reply.status == (200 if which == "decorated" else 400), reply.body
