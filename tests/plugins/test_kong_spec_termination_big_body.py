"""request-termination on a consumer and response-transformer on a large JSON body, against Kong's spec tests
spec/03-plugins/14-request-termination/03-integration_spec.lua and
spec/03-plugins/15-response-transformer/05-big_response_body_spec.lua.

03-integration_spec adds the plugin through the Admin API while Kong runs; the gateway has none, so the plugin is in
the declarative config from the start (what it answers is the same)."""

from __future__ import annotations

import json
from typing import Any

import h11
import trio
from backends import MAX_EVENT, Client, Reply, ScriptedBackend, _Backend
from plugin_helpers import TIMEOUT, body_json, http_codec, plugin, start  # noqa: F401 - http_codec: fixture

BIG = 1024 * 1024  # Kong's create_big_data(1024 * 1024)


async def call(port: int, host: str, target: str, headers: list[tuple[str, str]], method: str = "GET",
               body: bytes = b"") -> Reply:
    """One request with this Host on a new connection."""
    with trio.fail_after(TIMEOUT):
        async with await Client.connect(port, host) as client:
            return await client.request(method, target, headers=headers, body=body)


# --- 14-request-termination/03-integration_spec -----------------------------------------------------------------


async def test_request_termination_on_a_consumer_answers_503_to_that_consumer(nursery, gateway):
    """03-integration_spec "can be applied on a consumer": key-auth on every route, request-termination (its
    defaults) on consumer bob; bob's request gets 503 {"message": "Service unavailable"}."""
    backend, port = await start(nursery, gateway, [{"hosts": ["api1.request-termination.test"]}],
                                consumers=[{"username": "bob", "keyauth_credentials": [{"key": "kong"}]}],
                                plugins=[plugin("key-auth"), {"name": "request-termination", "consumer": "bob"}])
    reply = await call(port, "api1.request-termination.test", "/request", [("apikey", "kong")])
    assert reply.status == 503
    assert body_json(reply) == {"message": "Service unavailable"}
    assert not backend.requests


# --- 15-response-transformer/05-big_response_body_spec -----------------------------------------------------------


class PostEcho(_Backend):
    """mock_upstream's POST /post, in the part the spec reads: a JSON answer carrying the request's JSON body, under
    `params` (so that removing it is seen; mock_upstream has it under post_data) and as text under post_data."""

    async def handle_conn(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_EVENT)
        while (seen := await self._read_request(stream, conn)) is not None:
            text = seen.body.decode()
            body = json.dumps({"params": json.loads(text), "post_data": {"text": text}, "url": seen.target}).encode()
            await stream.send_all(conn.send(h11.Response(status_code=200, headers=[
                ("content-type", "application/json"), ("content-length", str(len(body)))])))
            await stream.send_all(conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
            conn.start_next_cycle()


async def _post_big(nursery: trio.Nursery, gateway: Any) -> Any:
    """Kong's setup (add json p1:v1, remove json params on a POST route) and one POST of a 1 MiB JSON field: the
    answer's JSON."""
    backend = PostEcho()
    await nursery.start(backend.serve)
    transformer = plugin("response-transformer", add={"json": ["p1:v1"]}, remove={"json": ["params"]})
    port = await gateway({"services": [{"name": "svc", "url": f"http://127.0.0.1:{backend.port}", "routes": [
        {"hosts": ["response.test"], "methods": ["POST"], "plugins": [transformer]}]}]})
    body = json.dumps({"mock_json": {"big_field": "*" * BIG}}).encode()
    reply = await call(port, "response.test", "/post", [("content-type", "application/json")], "POST", body)
    assert reply.status == 200
    assert len(reply.body) > BIG  # the whole body went through the transformer, not a cut of it
    return body_json(reply)


async def test_response_transformer_adds_a_json_field_to_a_large_body(nursery, gateway):
    """05-big_response_body_spec "add new parameters on large POST"."""
    doc = await _post_big(nursery, gateway)
    assert doc["p1"] == "v1"
    assert json.loads(doc["post_data"]["text"])["mock_json"]["big_field"] == "*" * BIG  # the rest of it as it came


async def test_response_transformer_removes_a_json_field_from_a_large_body(nursery, gateway):
    """05-big_response_body_spec "remove parameters on large POST"."""
    doc = await _post_big(nursery, gateway)
    assert "params" not in doc


async def test_response_transformer_answers_502_for_a_json_body_too_large_to_transform(nursery, gateway):
    """Kong's response-transformer reads the whole body, whatever its size, and transforms it
    (kong/plugins/response-transformer/handler.lua:34-41, `local body = kong.response.get_raw_body()` ... `return
    kong.response.set_raw_body(json_body)`; kong/pdk/response.lua:570-600, get_raw_body buffers every chunk, with no
    limit, until eof): a key the config removes never reaches the client. The gateway reads a body whole for its
    filters up to RESPONSE_BODY_LIMIT (8 MiB, gateway.pipeline.phases); past it, one a filter must change is not
    passed on: a 502 takes its place, as the MCP edit refuses an answer too large to filter (forward.AnswerTooLarge).
    (It was sent on unfiltered: a `remove.json` secret leaked on any answer over 8 MiB.)"""
    body = json.dumps({"secret": "s3cr3t-hash", "pad": "a" * (9 << 20)}).encode()
    big = ScriptedBackend([b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
                           % len(body), body])
    await nursery.start(big.serve)
    transformer = plugin("response-transformer", remove={"json": ["secret"]})
    port = await gateway({"services": [{"name": "svc", "url": f"http://127.0.0.1:{big.port}", "routes": [
        {"paths": ["/"], "plugins": [transformer]}]}]})
    reply = await call(port, "big.test", "/big", [])
    assert reply.status == 502
    assert b"s3cr3t-hash" not in reply.body
