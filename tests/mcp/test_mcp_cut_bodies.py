"""Bodies longer than `peek_bytes` whose first bytes do not name their call, where a route on MCP method or tool could
take them: read whole (up to 1 MiB, or peek_bytes if larger) and routed on what the whole body says, never refused
for where a member stands (README.md, MCP: Routing on method and tool, Per-tool limits).

A client POSTs JSON-RPC responses too (its answers to sampling/createMessage, elicitation/create, roots/list), which
have no method at all: MCP 2025-11-25, docs/specification/2025-11-25/basic/transports.mdx lines 94-97 (2025-06-18:
lines 90-93): "The body of the POST request MUST be a single JSON-RPC request, notification, or response. If the
input is a JSON-RPC response or notification: If the server accepts the input, the server MUST return HTTP status
code 202 Accepted with no body." JSON has no member order, so `method` and `params.name` may also follow large
params (RFC 8259 section 4: "An object is an unordered collection").

The routing decisions are shown on `peek_for_routing` with a stand-in exchange (sans-I/O); one gateway, in front of
the `mcp` SDK's demo server, shows a long response reaching the server as the server takes it.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from backends import Client as HttpClient
from mcp_helpers import JSON_HEADERS, TEST_KEY, bounded, mcp_config, sdk_servers, session_keys

from gateway.config.mcp import McpSettings
from gateway.mcp import jsonrpc
from gateway.mcp.step import McpRequest, McpRoute, McpShared, peek_for_routing

PEEK = 1024  # gateway.mcp.peek_bytes; the body is read whole up to 1 MiB
PAD = "x" * 4000  # past PEEK, within 1 MiB
LONG = "x" * 1_100_000  # past 1 MiB


class StandInExchange:
    """What the MCP step uses of an Exchange: the request head, the body arriving in chunks, and the one answer."""

    def __init__(self, body: bytes, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        self.request = SimpleNamespace(method=b"POST", host=b"localhost",
                                       headers=[(b"content-type", b"application/json"), *headers])
        self.chunks = [body[i:i + 16384] for i in range(0, len(body), 16384)]
        self.close_after = False
        self.answer: tuple[int, Any] | None = None

    def take_buffered_body(self) -> tuple[bytes, bool]:
        return b"", False

    async def receive_body(self) -> bytes | None:
        return self.chunks.pop(0) if self.chunks else None

    async def respond(self, status: int, body: bytes, *_: Any, **__: Any) -> None:
        assert self.answer is None, "answered twice"
        self.answer = (status, json.loads(body))


def shared_settings(tmp_path: Path) -> McpShared:
    """The gateway-wide MCP settings with peek_bytes 1024."""
    errors: list[str] = []
    shared = McpShared(McpSettings(peek_bytes=PEEK), str(tmp_path / "gateway.pid"), errors)
    assert errors == []
    return shared


async def route(body: dict[str, Any] | bytes, tmp_path: Path,
                headers: tuple[tuple[bytes, bytes], ...] = ()) -> tuple[McpRequest | None, StandInExchange]:
    """peek_for_routing on `body` (peek_bytes 1024): what the router is given, and the stand-in with any answer."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    ex = StandInExchange(raw, headers)
    return await peek_for_routing(ex, shared_settings(tmp_path)), ex  # type: ignore[arg-type]


async def mcp_step(body: bytes, tmp_path: Path, headers: tuple[tuple[bytes, bytes], ...], tools: tuple[str, ...] = (),
                   held: McpRequest | None = None) -> tuple[McpRequest | None, StandInExchange]:
    """The MCP step of a route (`mcp: true`, or with `mcp_tools`) on `body`, after routing: what goes on to the
    forwarder, and the stand-in with any answer. `held`: what a policy already read of the body."""
    ex = StandInExchange(body, headers)
    step = McpRoute(shared_settings(tmp_path), tools=tools)
    return await step.inbound(ex, held), ex  # type: ignore[arg-type]


def routed_on(mcp: McpRequest | None, ex: StandInExchange) -> tuple[str | None, str | None]:
    assert mcp is not None and ex.answer is None, ex.answer
    info: jsonrpc.RpcInfo = mcp.info  # type: ignore[assignment]
    return info.method, info.tool


async def test_a_response_longer_than_peek_bytes_is_routed_as_a_message_without_a_method(tmp_path):
    """A client's JSON-RPC response (a sampling result) past peek_bytes is read whole and routed without a method,
    where a request without one goes (it got 413 "the JSON-RPC method is not within the first 65536 bytes"):
    transports.mdx lines 94-97, a response is a POST body the server takes with 202."""
    response = {"jsonrpc": "2.0", "id": 99, "result": {"role": "assistant", "model": "m",
                                                       "content": {"type": "text", "text": PAD}}}
    mcp, ex = await route(response, tmp_path)
    assert routed_on(mcp, ex) == (None, None)
    assert mcp is not None and mcp.body == json.dumps(response).encode() and mcp.body_done  # sent on whole


async def test_a_method_after_peek_bytes_of_params_is_routed_on_it(tmp_path):
    """A request or notification whose `method` follows more than peek_bytes of params is routed on that method
    (it got 413); RFC 8259 section 4: an object's members have no order."""
    late = {"jsonrpc": "2.0", "params": {"_meta": {"pad": PAD}}, "method": "notifications/progress"}
    assert routed_on(*await route(late, tmp_path)) == ("notifications/progress", None)


async def test_a_tools_call_whose_name_follows_large_arguments_is_routed_on_its_tool(tmp_path):
    """A tools/call whose params.name follows more than peek_bytes of arguments is routed on its tool, so a route on
    that tool (and its limits) takes it (it got 413)."""
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"arguments": {"q": PAD}, "name": "search"}}
    assert routed_on(*await route(call, tmp_path)) == ("tools/call", "search")
    unordered = {"jsonrpc": "2.0", "id": 2, "params": {"arguments": {"q": PAD}, "name": "book"},
                 "method": "tools/call"}
    assert routed_on(*await route(unordered, tmp_path)) == ("tools/call", "book")


async def test_a_body_without_its_method_in_peek_bytes_and_longer_than_a_mebibyte_gets_413_naming_the_limit(
        tmp_path):
    """Past the 1 MiB read whole (peek_bytes being smaller), a call its first bytes do not name cannot be known:
    413 with JSON-RPC -32600, saying the limit, what is missing and what to do; the connection closes (the rest of
    the body is not read)."""
    late = {"jsonrpc": "2.0", "id": 7, "params": {"arguments": {"q": LONG}, "name": "search"}, "method": "tools/call"}
    mcp, ex = await route(late, tmp_path)
    assert mcp is None and ex.answer is not None and ex.close_after
    status, body = ex.answer
    assert (status, body["error"]["code"]) == (413, -32600)
    message = body["error"]["message"]
    assert "longer than 1048576 bytes" in message and "JSON-RPC method" in message
    assert "first 1024 (gateway.mcp.peek_bytes)" in message and "raise gateway.mcp.peek_bytes" in message
    unnamed_tool = {"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": {"arguments": {"q": LONG},
                                                                                  "name": "search"}}
    mcp, ex = await route(unnamed_tool, tmp_path)
    assert mcp is None and ex.answer is not None
    assert ex.answer[0] == 413 and ex.answer[1]["id"] == 8 and "tool (params.name)" in ex.answer[1]["error"]["message"]


async def test_a_method_named_in_peek_bytes_and_replaced_after_them_is_still_refused(tmp_path):
    """Only what the first bytes leave unnamed is taken from the whole body: a tools/call there whose `method` is
    replaced after them (the server runs the last) is still refused, 400 with -32600 (README.md: "names its method
    or tool again after peek_bytes")."""
    decoy = (b'{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"arguments":{"q":"' + PAD.encode()
             + b'"},"name":"search"},"method":"ping"}')
    mcp, ex = await route(decoy, tmp_path)
    assert mcp is None and ex.answer is not None
    assert (ex.answer[0], ex.answer[1]["id"], ex.answer[1]["error"]["code"]) == (400, 3, -32600)


async def test_mcp_headers_are_checked_against_a_method_and_name_past_peek_bytes(tmp_path):
    """2026-07-28: Mcp-Method / Mcp-Name are confirmed by a method and name that follow more than peek_bytes of
    params (they got 400 -32020 "no JSON-RPC method ... within the bytes the gateway reads"), and still refused
    when the whole body names another tool (SEP-2243: -32020 HeaderMismatch)."""
    late = {"jsonrpc": "2.0", "id": 4, "params": {"arguments": {"q": PAD}, "name": "search"}, "method": "tools/call"}
    named = ((b"mcp-method", b"tools/call"), (b"mcp-name", b"search"))
    mcp, ex = await route(late, tmp_path, named)
    assert routed_on(mcp, ex) == ("tools/call", "search") and mcp is not None and mcp.checked
    mcp, ex = await route(late, tmp_path, ((b"mcp-method", b"tools/call"), (b"mcp-name", b"book")))
    assert mcp is None and ex.answer is not None
    assert (ex.answer[0], ex.answer[1]["id"], ex.answer[1]["error"]["code"]) == (400, 4, -32020)


LONG_CALL = json.dumps({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                        "params": {"name": "search", "arguments": {"q": LONG}}}).encode()
SEARCH_HEADERS = ((b"mcp-method", b"tools/call"), (b"mcp-name", b"search"))


async def test_headers_a_body_too_long_to_confirm_carries_reach_the_server_where_no_route_decides_on_them(
        tmp_path):
    """The SDK's default client sends Mcp-Method / Mcp-Name on every POST (2026-07-28), and its server takes bodies up
    to 4 MiB (mcp/server/transport_security.py:15) and checks the headers against what it runs (mcp/shared/
    inbound.py classify_inbound_request: -32020); Kong proxies any body size (kong_defaults.lua:90
    `nginx_http_client_max_body_size = 0`). On an `mcp: true` route that no method or tool picked, nothing in the
    gateway acts on the headers: a call past the 1 MiB it reads to confirm them goes on unconfirmed, the bytes read
    first and the rest after them (it got 400 -32020)."""
    mcp, ex = await mcp_step(LONG_CALL, tmp_path, SEARCH_HEADERS)
    assert mcp is not None and ex.answer is None and not ex.close_after
    assert not mcp.checked and not mcp.body_done and LONG_CALL.startswith(mcp.body or b"NONE")
    assert mcp.info is not None and (mcp.info.method, mcp.info.tool) == ("tools/call", "search")


async def test_headers_on_a_body_too_long_to_confirm_are_refused_where_a_tool_route_decides(tmp_path):
    """Where the headers choose the route (before routing, as a route on MCP method or tool could take the request)
    or the route is one on a tool, the call they name is routed on: a body too long to confirm them gets 400 -32020
    with its id, saying why and what to do, and the rest of it is not read (the connection closes)."""
    mcp, ex = await route(LONG_CALL, tmp_path, SEARCH_HEADERS)
    assert mcp is None and ex.answer is not None and ex.close_after
    assert (ex.answer[0], ex.answer[1]["id"], ex.answer[1]["error"]["code"]) == (400, 9, -32020)
    assert "route on MCP method or tool" in ex.answer[1]["error"]["message"]
    assert "raise gateway.mcp.peek_bytes" in ex.answer[1]["error"]["message"]
    mcp, ex = await mcp_step(LONG_CALL, tmp_path, SEARCH_HEADERS, tools=("search",))
    assert mcp is None and ex.answer is not None
    assert (ex.answer[0], ex.answer[1]["error"]["code"]) == (400, -32020)


async def test_headers_are_confirmed_against_a_body_a_policy_holds_whole_whatever_its_length(tmp_path):
    """A body a policy read whole (ai-mcp-proxy with a max_request_body_size past 1 MiB) is confirmed against all of
    it: a lying Mcp-Name is refused (400 -32020), an honest one is confirmed (it got 400 as too long to read)."""
    for name, confirmed in ((b"search", True), (b"book", False)):
        held = McpRequest()
        held.body, held.body_done = LONG_CALL, True
        mcp, ex = await mcp_step(LONG_CALL, tmp_path, ((b"mcp-method", b"tools/call"), (b"mcp-name", name)),
                                 held=held)
        if confirmed:
            assert mcp is not None and mcp.checked and ex.answer is None
        else:
            assert mcp is None and ex.answer is not None and ex.answer[:1] == (400,)
            assert (ex.answer[1]["id"], ex.answer[1]["error"]["code"]) == (9, -32020)


# ---- through a gateway, in front of the SDK's server -------------------------------------------------------------

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {"sampling": {}}, "clientInfo": {"name": "raw", "version": "1"}}}
# 70 KB, one small base64 image in a sampling result: past the default peek_bytes (64 KiB), within 1 MiB.
BIG_RESPONSE = json.dumps({"jsonrpc": "2.0", "id": 99, "result": {
    "role": "assistant", "model": "m", "content": {"type": "text", "text": "x" * 70000}}}).encode()


@pytest.fixture
def http_codec() -> str:
    return "llhttp"


@pytest.fixture(scope="module")
def sdk_server():
    with sdk_servers("alpha", extra=("--json-response",)) as sdk:
        yield sdk


async def _session(http: HttpClient, host: str) -> list[tuple[str, str]]:
    """initialize + notifications/initialized; the headers of the session's later requests."""
    init = await http.request("POST", "/mcp", JSON_HEADERS, json.dumps(INIT).encode(), host=host)
    assert init.status == 200, init.body
    sid = init.header("mcp-session-id")
    assert sid
    hs = [*JSON_HEADERS, ("mcp-session-id", sid), ("mcp-protocol-version", "2025-06-18")]
    note = await http.request("POST", "/mcp", hs, b'{"jsonrpc":"2.0","method":"notifications/initialized"}',
                              host=host)
    assert note.status == 202, note.body
    return hs


@bounded(20)
async def test_a_clients_response_longer_than_peek_bytes_reaches_the_server_beside_a_method_route(
        gateway, sdk_server):
    """A client answers a server's request with a 70 KB sampling result, beside a route on MCP method (README's
    example): the server takes it with 202 and no body directly, and so through the gateway (it got 413 and the
    SDK server's tool waited for ever for its result). transports.mdx lines 94-97."""
    sport = sdk_server.ports["alpha"]
    direct_host = f"127.0.0.1:{sport}"
    async with await HttpClient.connect(sport, host=direct_host) as http:
        hs = await _session(http, direct_host)
        direct = await http.request("POST", "/mcp", hs, BIG_RESPONSE, host=direct_host)
    assert direct.status == 202, direct.body

    doc = mcp_config([sport], extra_routes=[{"name": "prompts", "paths": ["/mcp"], "strip_path": False,
                                             "mcp_methods": ["prompts/list", "prompts/get"]}])
    port = await gateway(doc, mcp=session_keys(TEST_KEY))
    host = f"127.0.0.1:{port}"
    async with await HttpClient.connect(port, host=host) as http:
        hs = await _session(http, host)
        via = await http.request("POST", "/mcp", hs, BIG_RESPONSE, host=host)
    assert via.status == 202, (via.status, via.body[:300])
    assert via.body == b""
