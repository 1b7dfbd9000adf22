"""ai-prompt-* plugins: a Content-Length body between 8 KiB and 10 KiB is one Kong keeps in memory and reads whole.

nginx (src/http/ngx_http_request_body.c, ngx_http_read_client_request_body, lines 175-195 at the mirrored HEAD) sizes
the body buffer to the body itself when the body has a Content-Length and what is left to read is under
client_body_buffer_size + 25% (Kong's 8k: 10240 bytes); the save filter (lines 1340-1349) writes to a temporary file
only when that buffer fills with more to come, which it never does then. So ngx.req.get_body_data() returns such a
body, and kong.request.get_raw_body(max) (kong/pdk/request.lua:719-720, 764) returns it without looking at
max_request_body_size (it was taken as "in a file", and with the default max_request_body_size, 8192, not read: the
guard and the decorator refused with 400, the template with "only supports application/json requests").
"""

from __future__ import annotations

import json

from plugin_helpers import body_json, call, http_codec, plugin, seen, start  # noqa: F401

JSON_HEADERS = [("content-type", "application/json")]


def sized_body(doc: dict, size: int, key: str = "pad") -> bytes:
    """`doc` with a padding key so the JSON body is exactly `size` bytes."""
    base = json.dumps({**doc, key: ""}).encode()
    body = json.dumps({**doc, key: "x" * (size - len(base))}).encode()
    assert len(body) == size
    return body


async def test_guard_reads_a_9000_byte_content_length_body_whole_with_default_max_size(nursery, gateway):
    """kong/llm/plugin/shared-filters/parse-request.lua:41 get_body(..., conf.max_request_body_size) ->
    kong/pdk/request.lua:719-720,764 (get_body_data: the in-memory body is returned whatever its size); nginx keeps a
    9000-byte Content-Length body in memory (ngx_http_request_body.c:175-195). guard-prompt.lua:69-70 then checks the
    prompt, which matches no deny pattern: Kong proxies it (200)."""
    _, port = await start(nursery, gateway, plugins=[plugin("ai-prompt-guard", deny_patterns=["edam"])])
    body = sized_body({"prompt": "I like brie"}, 9000)
    reply = await call(port, "/chat", JSON_HEADERS, method="POST", body=body)
    assert reply.status == 200, (reply.status, reply.body)
    assert seen(reply)["body"] == body.decode()


async def test_decorator_decorates_a_9000_byte_content_length_chat_with_default_max_size(nursery, gateway):
    """decorate-prompt.lua:66-81: the body parse-request read (in memory, see the module docstring) is decorated and
    sent; the gateway answers 400 "this LLM route only supports llm/chat type requests"."""
    _, port = await start(nursery, gateway, plugins=[
        plugin("ai-prompt-decorator", prompts={"append": [{"role": "system", "content": "Be brief."}]})])
    body = sized_body({"messages": [{"role": "user", "content": "I like brie"}]}, 9000)
    reply = await call(port, "/chat", JSON_HEADERS, method="POST", body=body)
    assert reply.status == 200, (reply.status, reply.body)
    assert json.loads(seen(reply)["body"])["messages"][-1] == {"role": "system", "content": "Be brief."}


async def test_template_renders_a_9000_byte_content_length_body_with_default_max_size(nursery, gateway):
    """render-prompt-template.lua:71 kong.request.get_body("application/json", nil, conf.max_request_body_size):
    the in-memory 9000-byte body is read, and the template rendered (lines 97-108)."""
    _, port = await start(nursery, gateway, plugins=[
        plugin("ai-prompt-template", templates=[{"name": "t", "template": '{"prompt": "{{a}}"}'}])])
    body = sized_body({"prompt": "{template://t}", "properties": {"a": "brie"}}, 9000)
    reply = await call(port, "/chat", JSON_HEADERS, method="POST", body=body)
    assert reply.status == 200, (reply.status, reply.body)
    assert seen(reply)["body"] == '{"prompt": "brie"}'
