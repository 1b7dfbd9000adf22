"""What routing, the 2026-07-28 header check and the audit see of a body is what the server will execute.

JSON parsers (the `mcp` SDK's pydantic_core.from_json, msgspec, Python's json) keep the last of a repeated member, so a
body longer than `peek_bytes` that names one call in its first bytes and another after them is refused, never routed
or confirmed on its decoy (README.md, MCP: Per-tool limits, Routing on method and tool, Protocol revisions); and a call
read leniently (NaN, Infinity) has its audit line like any other (README.md, Audit log)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx2
import pytest
import trio
from backends import Client, service
from mcp import Client as SdkClient
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_helpers import JSON_HEADERS, TEST_KEY, FakeMcp, bounded, mcp_config, session_keys
from oauth_helpers import ToolServer, call
from sdk_tools_server import sdk_tools_server

RPC_HEADERS = [("content-type", "application/json"), ("accept", "application/json, text/event-stream")]
PEEK = {"peek_bytes": 1024}
PAD = b"x" * 4000  # past PEEK


@pytest.fixture
def http_codec() -> str:
    return "llhttp"


def dangerous_route_config(tool_port: int, rest_port: int, **rest_route: Any) -> dict[str, Any]:
    """`tools/call dangerous` has its own route (request-termination 403 stands in for its ACL or limit); every other
    call on /mcp goes to a plain catch-all route on another service."""
    return {"_format_version": "3.0", "services": [
        {"name": "tools", "url": f"http://127.0.0.1:{tool_port}", "routes": [
            {"name": "dangerous", "paths": ["/mcp"], "strip_path": False, "mcp_tools": ["dangerous"],
             "plugins": [{"name": "request-termination", "config": {"status_code": 403}}]}]},
        {"name": "rest", "url": f"http://127.0.0.1:{rest_port}", "routes": [
            {"name": "rest", "paths": ["/mcp"], "strip_path": False, "mcp": True, **rest_route}]}]}


async def two_servers(nursery: trio.Nursery) -> tuple[FakeMcp, FakeMcp]:
    tools, rest = FakeMcp("tools"), FakeMcp("rest")
    await nursery.start(tools.serve)
    await nursery.start(rest.serve)
    return tools, rest


async def post(port: int, body: bytes | list[bytes], headers: list[tuple[str, str]] | None = None) -> Any:
    async with await Client.connect(port, host="localhost") as client:
        return await client.request("POST", "/mcp", headers or JSON_HEADERS, body)


# A tools/call naming `whoami` within the first peek_bytes, padded past them, then `dangerous`: the server runs
# `dangerous`, the last `params`.
DECOY_TOOL = (b'{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"whoami","arguments":{}},"pad":"'
              + PAD + b'","params":{"name":"dangerous","arguments":{}}}')
# A `ping` within the first peek_bytes, `tools/call` (the last `method`, the one run) after them.
DECOY_METHOD = (b'{"jsonrpc":"2.0","id":4,"method":"ping","params":{"name":"dangerous","arguments":{}},"pad":"'
                + PAD + b'","method":"tools/call"}')


def long_call(tool: str, rpc_id: int = 5) -> bytes:
    """A tools/call of `tool`, named once, whose arguments run past peek_bytes."""
    return (b'{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"%s","arguments":{"q":"'
            % (rpc_id, tool.encode()) + PAD + b'"}}}')


@bounded(20)
async def test_a_tool_named_again_past_peek_bytes_is_refused_not_routed_past_its_tool_route(gateway, nursery):
    """README.md (Per-tool limits): "a body whose call cannot be known is refused rather than routed past it"; a
    body longer than peek_bytes is read whole and its call must be the one its first bytes name (it once went to the
    catch-all route as `whoami`, and the server ran `dangerous`): 400, JSON-RPC -32600 with the call's id."""
    tools, rest = await two_servers(nursery)
    port = await gateway(dangerous_route_config(tools.port, rest.port), mcp=PEEK)
    assert json.loads(DECOY_TOOL)["params"]["name"] == "dangerous"  # what every JSON parser reads
    reply = await post(port, DECOY_TOOL)
    assert (reply.status, reply.json()["id"], reply.json()["error"]["code"]) == (400, 3, -32600), reply.body[:200]
    assert "tool" in reply.json()["error"]["message"]
    assert rest.requests == [] and tools.requests == []


@bounded(20)
async def test_a_method_named_again_past_peek_bytes_is_refused_not_routed_past_its_tool_route(gateway, nursery):
    """Same promise (README.md, Routing on method and tool): `ping` in the first peek_bytes, `tools/call` (the one a
    server runs) after them, is refused with 400 (-32600), never routed as a ping to the catch-all route."""
    tools, rest = await two_servers(nursery)
    port = await gateway(dangerous_route_config(tools.port, rest.port), mcp=PEEK)
    assert json.loads(DECOY_METHOD)["method"] == "tools/call"
    reply = await post(port, DECOY_METHOD)
    assert (reply.status, reply.json()["id"], reply.json()["error"]["code"]) == (400, 4, -32600), reply.body[:200]
    assert "method" in reply.json()["error"]["message"]
    assert rest.requests == [] and tools.requests == []


@bounded(20)
async def test_a_long_call_naming_its_tool_once_is_routed_on_it_whole(gateway, nursery):
    """README.md (Routing on method and tool): a call longer than peek_bytes whose tool is within them is routed on
    that tool, and its bytes reach the server unchanged, also when the body arrives in pieces (chunked)."""
    tools, rest = await two_servers(nursery)
    port = await gateway(dangerous_route_config(tools.port, rest.port), mcp=PEEK)
    body = long_call("whoami")
    assert (await post(port, [body[:600], body[600:2000], body[2000:]])).status == 200
    assert [seen.body for seen in rest.requests] == [body]
    assert (await post(port, long_call("dangerous"))).status == 403  # its own route's policies
    assert tools.requests == []


@bounded(20)
async def test_a_route_without_request_buffering_gets_no_call_past_its_tool_route(gateway, nursery):
    """`request_buffering: false` (the body streams to the upstream) is no way past the check: the routing decision
    is made on the whole body before any route is chosen, so the decoy is refused and a call named once still goes
    through whole."""
    tools, rest = await two_servers(nursery)
    port = await gateway(dangerous_route_config(tools.port, rest.port, request_buffering=False), mcp=PEEK)
    assert (await post(port, [DECOY_TOOL[:600], DECOY_TOOL[600:]])).status == 400
    body = long_call("whoami")
    assert (await post(port, [body[:600], body[600:]])).status == 200
    assert [seen.body for seen in rest.requests] == [body]


@bounded(20)
async def test_a_body_too_long_to_confirm_is_refused_where_a_tool_route_could_take_it(gateway, nursery):
    """A body past the 1 MiB the gateway reads to confirm its call cannot be known (a member repeated after that
    would be the one run): where a tool route could take it, 413 with JSON-RPC -32600 and the call's id."""
    tools, rest = await two_servers(nursery)
    port = await gateway(dangerous_route_config(tools.port, rest.port), mcp=PEEK)
    body = b'{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"whoami","pad":"' + \
        b"x" * 1_200_000 + b'"}}'
    reply = await call(port, "/mcp", RPC_HEADERS, "POST", host="localhost", body=body)
    assert (reply.status, reply.json()["id"], reply.json()["error"]["code"]) == (413, 6, -32600)
    assert rest.requests == [] and tools.requests == []


DECOY_HEADERS = [*JSON_HEADERS, ("mcp-protocol-version", "2026-07-28"), ("mcp-method", "tools/call"),
                 ("mcp-name", "whoami")]


@bounded(20)
async def test_mcp_headers_confirmed_by_a_decoy_prefix_are_refused_before_routing(gateway, nursery):
    """README.md (Protocol revisions): "whatever routes or limits on the headers sees what the server will execute
    ... a plain route the headers pick is never reached by another call than they name". `Mcp-Name: whoami` agrees
    with the first peek_bytes, not with the call the server runs (`dangerous`): 400, -32020 with the call's id."""
    tools, rest = await two_servers(nursery)
    port = await gateway(dangerous_route_config(tools.port, rest.port), mcp=PEEK)
    reply = await post(port, DECOY_TOOL, DECOY_HEADERS)
    assert (reply.status, reply.json()["id"], reply.json()["error"]["code"]) == (400, 3, -32020), reply.body[:200]
    assert rest.requests == [] and tools.requests == []


@bounded(20)
async def test_mcp_headers_on_an_mcp_route_are_checked_against_the_whole_body(gateway, nursery):
    """README.md (Protocol revisions): the check is made on `mcp: true` routes too (no route on method or tool here):
    a decoy prefix confirms nothing (400, -32020), while headers naming the call a long body makes pass."""
    server = FakeMcp("server")
    await nursery.start(server.serve)
    port = await gateway(mcp_config([server.port]), mcp=PEEK)
    reply = await post(port, DECOY_TOOL, DECOY_HEADERS)
    assert (reply.status, reply.json()["error"]["code"]) == (400, -32020)
    body = long_call("whoami")
    assert (await post(port, [body[:600], body[600:]], DECOY_HEADERS)).status == 200
    assert [seen.body for seen in server.requests] == [body]


async def sdk_call_size(url: str, n: int) -> str:
    """tools/call size with an n-character argument, by the SDK client in its default mode (2026-07-28)."""
    async with httpx2.AsyncClient(timeout=httpx2.Timeout(20, read=30)) as http:
        async with SdkClient(streamable_http_client(url, http_client=http)) as client:
            assert client.protocol_version == "2026-07-28"
            try:
                result = await client.call_tool("size", {"s": "y" * n})
            except MCPError as e:
                return f"error {e.error.code}: {e.error.message}"
            return result.content[0].text  # type: ignore[union-attr]


@bounded(60)
async def test_an_sdk_tool_call_past_a_mebibyte_reaches_the_server_on_a_plain_mcp_route(gateway):
    """The SDK's default client (every POST with Mcp-Method / Mcp-Name) calls a tool with a 2 MB argument, which the
    SDK server takes directly (DEFAULT_MAX_REQUEST_BODY_SIZE 4 MiB, mcp/server/transport_security.py:15; Kong:
    `nginx_http_client_max_body_size = 0`, kong_defaults.lua:90). On a plain `mcp: true` route, where no route or
    plugin acts on the headers, it reaches the server, which checks them itself (it got 400 -32020, "the body is
    longer than 1048576 bytes: the gateway cannot confirm the headers")."""
    with sdk_tools_server() as sport:
        assert await sdk_call_size(f"http://127.0.0.1:{sport}/mcp", 2_000_000) == "2000000"  # directly
        port = await gateway(mcp_config([sport]), mcp=session_keys(TEST_KEY))
        assert await sdk_call_size(f"http://127.0.0.1:{port}/mcp", 2_000_000) == "2000000"


# ---- the audit log --------------------------------------------------------------------------------------------

async def audit_lines(path: Path, count: int, wait: float = 3.0) -> list[dict[str, Any]]:
    with trio.move_on_after(wait):
        while not path.exists() or path.read_bytes().count(b"\n") < count:
            await trio.sleep(0.02)
    return [json.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


NAN_CALL = b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"search","arguments":{"n":NaN}}}'
PROXY = {"mode": "passthrough-listener", "logging": {"log_audits": True}}


async def test_a_call_limited_by_tool_is_audited_also_when_it_carries_nan(nursery, gateway, tmp_path):
    """README.md (Audit log): "`limited` (rate limiting, 429) ... Calls are logged when something read them from the
    body (ai-mcp-proxy, rate limiting by tool)". Rate limiting reads a body with NaN as Python's parsers do (the SDK
    server runs it) and refuses it with 429: it is logged as it was read (it once left no line)."""
    server = ToolServer(["search"])
    await nursery.start(server.serve)
    audit = tmp_path / "audit.log"
    port = await gateway({"services": [service("mcp", f"http://127.0.0.1:{server.port}", [
        {"name": "mcp", "paths": ["/mcp"], "strip_path": False}])],
        "plugins": [{"name": "ai-mcp-proxy", "config": PROXY},
                    {"name": "rate-limiting", "config": {"day": 1, "limit_by": "mcp-tool"}}]},
        mcp={"audit_log": str(audit)})
    first = await call(port, "/mcp", RPC_HEADERS, "POST",
                       body=b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search"}}')
    assert first.status == 200
    limited = await call(port, "/mcp", RPC_HEADERS, "POST", body=NAN_CALL)
    assert limited.status == 429 and limited.json()["id"] == 2
    lines = await audit_lines(audit, 2)
    assert [(d["tool"], d["decision"], d["rpc_id"]) for d in lines] == [("search", "allowed", 1),
                                                                       ("search", "limited", 2)], lines


async def test_a_call_ai_mcp_proxy_refuses_for_nan_is_audited_as_refused(nursery, gateway, tmp_path):
    """README.md (Audit log): "`refused` (answered by the gateway for another reason)". ai-mcp-proxy cannot judge a
    body with NaN and answers 400; the call a server would have run is still logged, as refused."""
    server = ToolServer(["search"])
    await nursery.start(server.serve)
    audit = tmp_path / "audit.log"
    port = await gateway({"services": [service("mcp", f"http://127.0.0.1:{server.port}", [
        {"name": "mcp", "paths": ["/mcp"], "strip_path": False}])],
        "plugins": [{"name": "ai-mcp-proxy", "config": PROXY}]}, mcp={"audit_log": str(audit)})
    assert (await call(port, "/mcp", RPC_HEADERS, "POST", body=NAN_CALL)).status == 400
    lines = await audit_lines(audit, 1)
    assert [(d["tool"], d["decision"], d["rpc_id"], d["status"]) for d in lines] == [("search", "refused", 2, 400)]
    assert server.called == []
