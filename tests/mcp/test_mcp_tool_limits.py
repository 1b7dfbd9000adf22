"""rate-limiting by MCP tool and method (in-process, one worker): each tool has its own count, taken from the body
(never from a header alone), bodies padded past the peek are still counted, batches count per element, what is
not a call is not counted, and a limited call gets a JSON-RPC error with its id and Retry-After."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from backends import Reply, service
from oauth_helpers import ToolServer, call

RPC_HEADERS = [("content-type", "application/json"), ("accept", "application/json, text/event-stream")]


@pytest.fixture
def http_codec() -> str:
    return "llhttp"


async def setup(nursery: trio.Nursery, gateway: Any, **limit: Any) -> tuple[ToolServer, int]:
    server = ToolServer(["search", "book"])
    await nursery.start(server.serve)
    port = await gateway({
        "services": [service("mcp", f"http://127.0.0.1:{server.port}", [
            {"name": "mcp", "paths": ["/mcp"], "strip_path": False}])],
        "plugins": [{"name": "rate-limiting", "config": {"day": 3, "limit_by": "mcp-tool", **limit}}]},
        mcp={"peek_bytes": 1024})
    return server, port


async def rpc(port: int, body: Any, headers: list | None = None) -> Reply:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await call(port, "/mcp", [*RPC_HEADERS, *(headers or [])], "POST", body=raw)


def tool_call(name: str, rpc_id: Any = 1, **arguments: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rpc_id, "method": "tools/call", "params": {"name": name, "arguments": arguments}}


async def test_each_tool_has_its_own_count(nursery, gateway):
    server, port = await setup(nursery, gateway)
    statuses = [(await rpc(port, tool_call("search", i))).status for i in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    assert (await rpc(port, tool_call("book"))).status == 200
    assert server.called == ["search"] * 3 + ["book"]


async def test_a_limited_call_gets_a_json_rpc_error_with_its_id_and_retry_after(nursery, gateway):
    _, port = await setup(nursery, gateway)
    for i in range(3):
        await rpc(port, tool_call("search", i))
    reply = await rpc(port, tool_call("search", "call-42"))
    assert reply.status == 429
    body = reply.json()
    assert body["id"] == "call-42" and body["error"]["code"] == -32029
    assert body["error"]["message"] == "API rate limit exceeded"  # Kong's error_message
    assert body["error"]["data"]["retry_after"] == int(reply.header("retry-after")) > 0
    assert reply.header("x-ratelimit-remaining-day") == "0"


async def test_other_methods_are_not_counted(nursery, gateway):
    _, port = await setup(nursery, gateway)
    for i in range(5):
        assert (await rpc(port, {"jsonrpc": "2.0", "id": i, "method": "tools/list"})).status == 200
    assert (await call(port, "/mcp", [("accept", "text/event-stream")])).status == 200  # a GET stream
    assert (await rpc(port, tool_call("search"))).status == 200


async def test_a_header_naming_another_tool_changes_nothing(nursery, gateway):
    _, port = await setup(nursery, gateway)
    for i in range(3):
        await rpc(port, tool_call("search", i), [("mcp-method", "tools/call"), ("mcp-name", f"other-{i}")])
    assert (await rpc(port, tool_call("search"), [("mcp-name", "fresh")])).status == 429


async def test_a_tool_name_after_large_arguments_is_still_counted(nursery, gateway):
    _, port = await setup(nursery, gateway)  # peek_bytes is 1024: the name lies past it
    padded = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":{"q":"' + b"x" * 4000 + \
        b'"},"name":"search"}}'
    assert [(await rpc(port, padded)).status for _ in range(4)] == [200, 200, 200, 429]


async def test_a_batch_counts_each_call(nursery, gateway):
    _, port = await setup(nursery, gateway)
    reply = await rpc(port, [tool_call("search", 1), tool_call("search", 2), tool_call("book", 3)])
    assert reply.status == 200 and len(reply.json()) == 3
    assert (await rpc(port, tool_call("search", 4))).status == 200
    assert (await rpc(port, tool_call("search", 5))).status == 429


async def test_limit_by_method_counts_methods(nursery, gateway):
    _, port = await setup(nursery, gateway, limit_by="mcp-method")
    assert [(await rpc(port, tool_call(n, i))).status for i, n in enumerate(["search", "book", "x", "y"])] == \
        [200, 200, 200, 429]
    assert (await rpc(port, {"jsonrpc": "2.0", "id": 9, "method": "tools/list"})).status == 200


async def test_a_refused_batch_is_answered_with_an_error_for_each_of_its_requests(nursery, gateway):
    """The whole request is refused (429); a batch is answered with an array, a response per request (JSON-RPC 2.0
    section 6), the notifications none (a governance review: one object, the limited call's, answered three)."""
    server, port = await setup(nursery, gateway, day=2)
    batch = [tool_call("search", i) for i in range(3)] + [{"jsonrpc": "2.0", "method": "notifications/progress"}]
    reply = await rpc(port, batch)
    assert reply.status == 429
    answers = reply.json()
    assert sorted(a["id"] for a in answers) == [0, 1, 2]
    assert {a["error"]["code"] for a in answers} == {-32029}
    assert server.called == []
