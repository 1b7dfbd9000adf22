"""ai-prompt-* plugins: which bodies Kong keeps in memory and reads whole, whatever max_request_body_size.

nginx 1.27.1 (src/http/ngx_http_request_body.c, ngx_http_read_client_request_body) first takes the body bytes that
came with the head (the preread, line 102: what the header buffer holds past the head, 1k for a head that fits
client_header_buffer_size). Then a Content-Length body gets one buffer the size of what is left when that is under
client_body_buffer_size + 25% (Kong's 8k: 10240 bytes, lines 175-187); a chunked one an 8k buffer (line 192) for its
raw bytes, chunk-size lines and CRLFs included. The save filter (lines 1338-1344) writes to a temporary file only
when that buffer fills with more to come. So ngx.req.get_body_data() returns a body kept in memory, and
kong.request.get_raw_body(max) (kong/pdk/request.lua:719-720, 764) returns it without looking at
max_request_body_size; one in a file is read only up to max (lines 737-738).
"""
from __future__ import annotations

import json

import h11
import trio
from backends import Client
from plugin_helpers import TIMEOUT, body_json, call, http_codec, plugin, seen, start  # noqa: F401

from gateway.http.codec import FIRST_BUFFER_BYTES
from gateway.policies.llm_request import header_buffer_reach, in_memory

JSON_HEADERS = [("content-type", "application/json")]
BAD_REQUEST = {"error": {"message": "bad request"}}


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


def test_a_content_length_body_stays_in_memory_while_what_is_left_after_the_preread_is_under_10_kib():
    """ngx_http_request_body.c:175-187 `if (!r->headers_in.chunked && rb->rest < size)`, size 8k + 8k/4 and rb->rest
    what the preread left: a buffer that size, which never fills with more to come."""
    head, preread = 200, 1024
    assert in_memory(False, preread + 10239, preread)
    assert not in_memory(False, preread + 10240, preread)
    assert in_memory(False, head + 10239, head)  # nothing came with the head
    assert not in_memory(False, head + 10240, head)


def test_a_chunked_body_stays_in_memory_while_its_raw_bytes_after_the_preread_fit_8_kib():
    """ngx_http_request_body.c:192 a client_body_buffer_size buffer for the raw chunked bytes; the save filter
    (1338-1344) writes it to a file when it is full with the body not ended (rb->rest > 0), not when its last byte
    ends the body."""
    assert in_memory(True, FIRST_BUFFER_BYTES + 8192, FIRST_BUFFER_BYTES)
    assert not in_memory(True, FIRST_BUFFER_BYTES + 8193, FIRST_BUFFER_BYTES)


def test_a_head_past_the_first_buffer_is_followed_by_its_preread_in_a_large_buffer():
    """ngx_http_alloc_large_header_buffer (src/http/ngx_http_request.c) moves the line that does not end in the 1k
    buffer into an 8k one: the head's lines from there on, then the body bytes read with them, share that buffer."""
    assert header_buffer_reach([100, 900, 24], 8192) == FIRST_BUFFER_BYTES  # the head fits the first buffer
    assert header_buffer_reach([100, 900, 50, 2], 8192) == 1000 + 8192
    assert header_buffer_reach([100, 900, 8000, 300, 2], 8192) == 1000 + 8000 + 8192


async def test_guard_reads_a_content_length_body_nginx_keeps_in_memory_thanks_to_its_preread(nursery, gateway):
    """A 10,500-byte body sent with a ~100-byte head: nginx's preread (ngx_http_request_body.c:102) is the ~900 bytes
    that fill the 1k header buffer, and the ~9,600 left are under 10 KiB (lines 180-181): in memory, read whatever
    max_request_body_size (8192), and the guard checks it (guard-prompt.lua:69-70): "I like brie" passes. Sent after
    its head, nothing is preread: 10,500 bytes left, a file over max_request_body_size, no table, 400 "bad request"
    (guard-prompt.lua:73, 138)."""
    _, port = await start(nursery, gateway, plugins=[plugin("ai-prompt-guard", deny_patterns=["edam"])])
    body = sized_body({"prompt": "I like brie"}, 10500)
    reply = await call(port, "/chat", JSON_HEADERS, method="POST", body=body)
    assert reply.status == 200, (reply.status, reply.body)
    assert seen(reply)["body"] == body.decode()
    with trio.fail_after(TIMEOUT):
        async with await Client.connect(port) as client:
            headers = [("host", "gw"), *JSON_HEADERS, ("content-length", str(len(body)))]
            await client.stream.send_all(client.conn.send(h11.Request(method="POST", target="/chat", headers=headers)))
            await trio.sleep(0.1)  # the gateway reads the head alone
            await client.stream.send_all(client.conn.send(h11.Data(data=body)) + client.conn.send(h11.EndOfMessage()))
            reply = await client.read_response()
    assert (reply.status, body_json(reply)) == (400, BAD_REQUEST)


async def test_guard_sizes_a_chunked_body_by_its_raw_bytes(nursery, gateway):
    """nginx fills its 8k buffer with the raw chunked bytes (ngx_http_request_body.c:192, 1338-1344): 5,000 bytes of
    JSON in one chunk stay in memory and are read whatever max_request_body_size (1000); the same in 5-byte chunks
    are 10,005 raw bytes, in a file over max_request_body_size, which get_raw_body does not read
    (kong/pdk/request.lua:737-738): no table, 400 "bad request" (guard-prompt.lua:73, 138)."""
    _, port = await start(nursery, gateway, plugins=[plugin("ai-prompt-guard", deny_patterns=["edam"],
                                                            max_request_body_size=1000)])
    body = sized_body({"prompt": "I like brie"}, 5000)
    reply = await call(port, "/chat", JSON_HEADERS, method="POST", body=[body])  # type: ignore[arg-type]
    assert seen(reply)["body"] == body.decode()
    pieces = [body[i:i + 5] for i in range(0, len(body), 5)]
    reply = await call(port, "/chat", JSON_HEADERS, method="POST", body=pieces)  # type: ignore[arg-type]
    assert (reply.status, body_json(reply)) == (400, BAD_REQUEST)
