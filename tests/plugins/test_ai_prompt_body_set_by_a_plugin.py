"""ai-prompt-* plugins after a plugin that set the request body: Kong reads that body whole, whatever its size.

kong.service.request.set_raw_body (kong/pdk/service/request.lua:481-500) calls ngx.req.set_body_data, which puts the
new body in one memory buffer (dropping any temporary file); kong.request.get_raw_body (kong/pdk/request.lua:719-720,
764) then returns it from get_body_data without looking at max_request_body_size. request-transformer (priority 801,
kong/plugins/request-transformer/access.lua:449-451) runs before the prompt plugins (773, 772, 771), so what it sets is
what parse-request / render-prompt-template read (a body any plugin set is in memory: Exchange.replace_body).
"""

from __future__ import annotations

import json

from plugin_helpers import call, http_codec, plugin, seen, start  # noqa: F401

JSON_HEADERS = [("content-type", "application/json")]
PAD = "x" * 12000  # the transformed body is over 10 KiB: in a file, had the client sent it


async def test_guard_reads_a_body_request_transformer_grew_past_the_buffer(nursery, gateway):
    """guard-prompt.lua:127-135 checks the body parse-request read (parse-request.lua:41, get_body ->
    get_raw_body -> get_body_data: the set body, in memory); "I like brie" matches no deny pattern: Kong proxies
    the transformed body (200)."""
    _, port = await start(nursery, gateway, plugins=[
        plugin("request-transformer", add={"body": [f"pad:{PAD}"]}),
        plugin("ai-prompt-guard", deny_patterns=["edam"])])
    reply = await call(port, "/chat", JSON_HEADERS, method="POST", body=b'{"prompt": "I like brie"}')
    assert reply.status == 200, (reply.status, reply.body)
    assert json.loads(seen(reply)["body"]) == {"prompt": "I like brie", "pad": PAD}


async def test_template_renders_a_body_request_transformer_grew_past_the_buffer(nursery, gateway):
    """render-prompt-template.lua:71 get_body("application/json", nil, max) reads the set body (in memory) and
    renders the template (lines 97-108); the gateway answers 400 "this LLM route only supports application/json
    requests"."""
    _, port = await start(nursery, gateway, plugins=[
        plugin("request-transformer", add={"body": [f"pad:{PAD}"]}),
        plugin("ai-prompt-template", templates=[{"name": "t", "template": '{"prompt": "{{a}}"}'}])])
    body = b'{"prompt": "{template://t}", "properties": {"a": "brie"}}'
    reply = await call(port, "/chat", JSON_HEADERS, method="POST", body=body)
    assert reply.status == 200, (reply.status, reply.body)
    assert seen(reply)["body"] == '{"prompt": "brie"}'
