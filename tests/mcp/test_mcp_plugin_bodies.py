"""Plugins that read the request body on a route matched by MCP method or tool read the client's body, as Kong's do
(kong.request.get_raw_body: the one body nginx read), though the router's peek read it first; what they set as the
body is what the upstream gets, with its length (README.md, MCP: Routing on method and tool).

The hand-back between the MCP readers and the Exchange is shown sans-I/O on a real codec and Exchange over a socket
pair; the plugins through in-process gateways (the `gateway` fixture, one per codec), backends in the test's nursery,
all on loopback."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import socket
from email.utils import formatdate
from typing import Any

import trio
from backends import Client, EchoBackend

from gateway.http.codec import Request
from gateway.http.codec_llhttp import LlhttpServer
from gateway.http.net import Conn
from gateway.http.server import Exchange, ServerSettings
from gateway.http.timers import ConnTimer, Phase
from gateway.mcp import body as mcp_body
from gateway.mcp.step import McpRequest, read_peek

TIMEOUT = 10
MCP_SETTINGS = {"allowed_hosts": ["gateway.test"]}  # Client's default Host
MCP_HEADERS = [("content-type", "application/json"), ("accept", "application/json, text/event-stream")]
CALL = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "search", "arguments": {"q": "brie"}}}


def plugin(name: str, **config: object) -> dict:
    return {"name": name, "config": config}


def mcp_routes(route_plugins: list[dict]) -> list[dict]:
    """A route on MCP tool `search` (the router peeks at the body to match it) carrying `route_plugins`, and the
    endpoint's other calls on a plain `mcp: true` route."""
    return [{"name": "tools", "paths": ["/mcp"], "strip_path": False, "mcp_tools": ["search"],
             "plugins": route_plugins},
            {"name": "mcp", "paths": ["/mcp"], "strip_path": False, "mcp": True}]


def peeked_exchange(conn: Conn, body: bytes) -> Exchange:
    """A POST of `body` (come whole with its head) on a real codec and Exchange."""
    codec = LlhttpServer()
    codec.receive_data(b"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                       % len(body) + body)
    req = codec.next_event()
    assert type(req) is Request
    return Exchange(req, conn, codec, ConnTimer(math.inf, Phase.BUSY), ServerSettings(LlhttpServer))


async def peek(ex: Exchange) -> McpRequest:
    """What the pipeline does for a route on MCP tool: the router's peek (gateway.mcp.step.peek_for_routing reads with
    read_peek), kept on the exchange for the readers after it."""
    mcp = McpRequest()
    await read_peek(ex, mcp, 1024)
    return mcp_body.attach(ex, mcp)


async def post(port: int, body: bytes, headers: list[tuple[str, str]] | None = None) -> Any:
    with trio.fail_after(TIMEOUT):
        async with await Client.connect(port) as client:
            return await client.request("POST", "/mcp", headers=MCP_HEADERS + (headers or []), body=body)


# --- the hand-back, sans-I/O -----------------------------------------------------------------------------------------


async def test_a_plugin_reading_the_body_after_the_peek_reads_it_from_its_start(
        conn_pair: tuple[Conn, socket.socket]) -> None:
    """kong/pdk/request.lua get_raw_body (ngx.req.get_body_data): every plugin reads the body nginx read, whoever
    looked at it before. The router's peek holds what it read in the McpRequest; Exchange.read_body takes it back
    first (it read nothing before: request-transformer and key-auth's key_in_body saw an empty body), and the
    forwarder then takes the same bytes from the Exchange."""
    body = json.dumps(CALL).encode()
    ex = peeked_exchange(conn_pair[0], body)
    mcp = await peek(ex)
    assert mcp.info is not None and mcp.info.tool == "search"
    assert await ex.read_body(65536) == (body, True)
    assert mcp.take_body(ex) == (body, True)


async def test_the_body_a_plugin_sets_after_the_peek_is_the_one_forwarded(
        conn_pair: tuple[Conn, socket.socket]) -> None:
    """kong/plugins/request-transformer/access.lua:449-451 `set_raw_body(body)` / `set_header(CONTENT_LENGTH,
    #body)`: the upstream gets the body set, with its length. The forwarder's take_body gave the peek's bytes
    instead (the client's body under the plugin's Content-Length: h11 refused it, llhttp sent it, a desync)."""
    ex = peeked_exchange(conn_pair[0], json.dumps(CALL).encode())
    mcp = await peek(ex)
    raw, _ = await ex.read_body(65536)
    changed = json.dumps({**json.loads(raw), "k": "v"}).encode()
    ex.replace_body(changed)
    assert mcp.take_body(ex) == (changed, True)


async def test_an_mcp_reader_after_a_plugin_set_the_body_reads_the_body_set(
        conn_pair: tuple[Conn, socket.socket]) -> None:
    """Kong runs plugins in priority order on one body: one after a plugin that set it (ai-mcp-proxy, rate limiting by
    MCP tool after request-transformer) reads what was set, not the messages decoded from the client's body before."""
    ex = peeked_exchange(conn_pair[0], json.dumps(CALL).encode())
    mcp = await peek(ex)
    assert mcp_body.buffered(ex, 65536) == (mcp, True)
    assert mcp_body.messages(mcp) is not None  # (decoded, and kept for the next MCP reader)
    await ex.read_body(65536)
    other = {**CALL, "params": {"name": "other", "arguments": {}}}
    ex.replace_body(json.dumps(other).encode())
    assert mcp_body.buffered(ex, 65536) == (mcp, True)
    decoded = mcp_body.messages(mcp)
    assert decoded is not None
    assert [message.name for message in decoded[0]] == ["other"]


# --- the plugins, through a gateway ----------------------------------------------------------------------------------


async def test_request_transformer_adds_to_the_body_of_a_request_routed_on_its_mcp_tool(nursery, gateway):
    """kong/plugins/request-transformer/access.lua:434 `local body, err = get_raw_body()` reads the client's body,
    :307-313 adds `k` to its JSON table, :449-451 `set_raw_body(body)` / `set_header(CONTENT_LENGTH, #body)`: the
    upstream gets the client's JSON with "k":"v" and a matching Content-Length. The router's peek had taken the body:
    the plugin built {"k":"v"} (Content-Length: 9) and the forwarder sent the client's body under it (h11: 500;
    llhttp: the rest read by the upstream as a next request)."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    port = await gateway({"services": [{"name": "svc", "url": f"http://127.0.0.1:{echo.port}", "routes": mcp_routes(
        [plugin("request-transformer", add={"body": ["k:v"]})])}]}, mcp=MCP_SETTINGS)
    reply = await post(port, json.dumps(CALL).encode())
    assert reply.status == 200, (reply.status, reply.body)
    [seen] = echo.requests
    assert json.loads(seen.body) == {**CALL, "k": "v"}
    assert seen.header("content-length") == str(len(seen.body))


async def test_key_auth_finds_a_key_in_the_body_of_a_request_routed_on_its_mcp_tool(nursery, gateway):
    """kong/plugins/key-auth/handler.lua:134-139 (`if not v and conf.key_in_body then ... body = get_body() ...
    v = body[name]`), get_body at :90-91 `kong.request.get_body()`: the client's JSON body holds `apikey`, so Kong
    authenticates bob and proxies the body as it came. The router's peek held the body and key-auth read an empty
    one: 401 "No API key found in request"."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    port = await gateway({"services": [{"name": "svc", "url": f"http://127.0.0.1:{echo.port}", "routes": mcp_routes(
        [plugin("key-auth", key_in_body=True)])}],
        "consumers": [{"username": "bob", "keyauth_credentials": [{"key": "bob-secret-key"}]}]}, mcp=MCP_SETTINGS)
    body = json.dumps({**CALL, "apikey": "bob-secret-key"}).encode()
    reply = await post(port, body)
    assert reply.status == 200, (reply.status, reply.body)
    [seen] = echo.requests
    assert seen.body == body


async def test_hmac_auth_digests_the_body_of_a_request_routed_on_its_mcp_tool(nursery, gateway):
    """kong/plugins/hmac-auth/access.lua:222-223 validate_body: `local body, err = kong_request.get_raw_body()`, the
    Digest header must be its SHA-256: the client's body, which the router's peek had read first (the plugin
    digested an empty body: 401 "HMAC signature does not match")."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    port = await gateway({"services": [{"name": "svc", "url": f"http://127.0.0.1:{echo.port}", "routes": mcp_routes(
        [plugin("hmac-auth", validate_request_body=True)])}],
        "consumers": [{"username": "bob", "hmacauth_credentials": [{"username": "bob", "secret": "secret"}]}]},
        mcp=MCP_SETTINGS)
    body = json.dumps(CALL).encode()
    date = formatdate(usegmt=True)
    signature = base64.b64encode(hmac.new(b"secret", f"date: {date}".encode(), hashlib.sha1).digest()).decode()
    reply = await post(port, body, [
        ("date", date), ("digest", "SHA-256=" + base64.b64encode(hashlib.sha256(body).digest()).decode()),
        ("authorization", f'hmac username="bob", algorithm="hmac-sha1", headers="date", signature="{signature}"')])
    assert reply.status == 200, (reply.status, reply.body)
    [seen] = echo.requests
    assert seen.body == body
