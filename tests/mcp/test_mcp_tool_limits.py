"""rate-limiting by MCP tool and method (in-process, one worker): each tool has its own count, taken from the body
(never from a header alone), bodies padded past the peek are still counted, batches count per element, what is
not a call is not counted, and a limited call gets a JSON-RPC error with its id and Retry-After. A call the gateway
cannot attribute (a batch too long to count, a member that may be repeated past the bytes read, a tool past
peek_bytes where a tool route could take it) is refused, never forwarded uncounted or through another route."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
import trio
from backends import Client, Reply, service
from mcp_helpers import JSON_HEADERS, FakeMcp, mcp_config
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


async def test_a_long_tool_name_and_a_short_name_spelling_its_digest_have_counts_of_their_own(nursery, gateway):
    """A name past 128 characters is counted under its digest, in a namespace no short name reaches: a client
    calling a tool named after that digest spends none of the long-named tool's calls (a session-30 finding: the
    digest was written as the short name `sha256:<hex>`)."""
    _, port = await setup(nursery, gateway, day=1)
    long_name = "t" * 200
    digest_spelled = "sha256:" + hashlib.sha256(long_name.encode()).hexdigest()
    assert (await rpc(port, tool_call(digest_spelled))).status == 200
    assert (await rpc(port, tool_call(long_name))).status == 200
    assert (await rpc(port, tool_call(long_name))).status == 429


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


# ---- what cannot be attributed is refused (a review found four ways past a limit) -------------------------------


async def test_a_batch_too_long_to_count_is_refused_and_never_runs(nursery, gateway):
    """A batch of more than 1,000 elements (which a JSON-RPC server runs whole) is refused (400), never forwarded
    uncounted: it went up with nothing counted, and the server ran 1,001 calls of a tool limited to 3 a day."""
    server, port = await setup(nursery, gateway)
    reply = await rpc(port, [tool_call("search", i) for i in range(1001)])
    assert reply.status == 400 and reply.json()["error"]["code"] == -32600
    assert "batch of more than 1000" in reply.json()["error"]["message"]
    assert server.called == []


async def test_a_batchs_calls_are_counted_beside_elements_that_are_not_objects(nursery, gateway):
    """JSON-RPC 2.0 runs a batch's valid elements and answers the others with errors: the calls are counted (a 1 in
    the batch once made the gateway count nothing, and the call ran past the limit)."""
    server, port = await setup(nursery, gateway)
    assert (await rpc(port, tool_call("search", 1))).status == 200
    assert (await rpc(port, [tool_call("search", 2), 1, "x"])).status == 200  # the second search of three
    assert (await rpc(port, tool_call("search", 3))).status == 200
    reply = await rpc(port, [tool_call("search", 4), 1])
    assert reply.status == 429 and [a["id"] for a in reply.json()] == [4]
    assert server.called == ["search"] * 3


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
async def test_a_call_carrying_a_number_msgspec_refuses_is_counted(nursery, gateway, number):
    """Python's JSON parsers (the `mcp` SDK's and this server's) read NaN, Infinity and 1e400, which msgspec refuses:
    the gateway reads such a body as they do and counts its call (it once counted nothing and forwarded it)."""
    server, port = await setup(nursery, gateway)
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","arguments":{"n":%s}}}' % number
    assert [(await rpc(port, body)).status for _ in range(4)] == [200, 200, 200, 429]
    assert server.called == ["search"] * 3


PAD = b"x" * 1_200_000  # past ratekeys.WHOLE_LIMIT (1 MiB)


@pytest.mark.parametrize(("limit_by", "body"), [
    ("mcp-tool", b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"book","_meta":{"pad":"'
     + PAD + b'"},"name":"search","arguments":{}}}'),
    ("mcp-method", b'{"jsonrpc":"2.0","id":2,"method":"ping","params":{"name":"search","_meta":{"pad":"'
     + PAD + b'"}},"method":"tools/call"}')])
async def test_a_body_longer_than_the_counted_mebibyte_is_refused(nursery, gateway, limit_by, body):
    """JSON parsers keep the last of a repeated member: in a body longer than the 1 MiB the gateway reads, the method
    or tool seen first may not be the one the server runs (it once counted `book` or `ping`, and `search` ran past
    its limit), so such a body is refused (413). Within 1 MiB the last member is the one counted."""
    server, port = await setup(nursery, gateway, limit_by=limit_by, day=1)
    reply = await rpc(port, body)
    assert reply.status == 413 and reply.json()["error"]["code"] == -32600
    repeated = body.replace(PAD, b"")
    assert [(await rpc(port, repeated)).status for _ in range(2)] == [200, 429]
    assert server.called == ["search"]


TOOL_CALL = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":{"q":"%s"},"name":"special"}}'


async def test_a_tool_routes_limit_holds_for_a_call_whose_tool_lies_past_peek_bytes(gateway, nursery):
    """A tools/call whose tool (or a body whose method) is not within peek_bytes, where a tool route could take it, is
    read whole and routed on its tool, so the tool route's limit counts it (429), never routed as another call (it
    once went through the plain route, past the tool route's limit); a body that is not JSON-RPC there gets 400
    (-32700 not JSON, -32600 not a message)."""
    server = FakeMcp("server")
    await nursery.start(server.serve)
    tool_route = {"name": "special", "paths": ["/mcp"], "strip_path": False, "mcp_tools": ["special"],
                  "plugins": [{"name": "rate-limiting", "config": {"minute": 1}}]}
    port = await gateway(mcp_config([server.port], extra_routes=[tool_route]))
    async with await Client.connect(port, host="localhost") as client:
        assert (await client.request("POST", "/mcp", JSON_HEADERS, TOOL_CALL % b"x")).status == 200
        assert (await client.request("POST", "/mcp", JSON_HEADERS, TOOL_CALL % b"x")).status == 429
    padded = TOOL_CALL % (b"x" * 70_000)
    late_method = b'{"jsonrpc":"2.0","id":1,"params":{"name":"special","arguments":{"q":"' + b"x" * 70_000 + \
        b'"}},"method":"tools/call"}'
    for body in (padded, late_method):
        async with await Client.connect(port, host="localhost") as client:
            reply = await client.request("POST", "/mcp", JSON_HEADERS, body)
        assert (reply.status, reply.json()["message"]) == (429, "API rate limit exceeded"), body[:40]
    for body, code in [(b"{nope", -32700), (b'"a string"', -32600)]:
        async with await Client.connect(port, host="localhost") as client:
            reply = await client.request("POST", "/mcp", JSON_HEADERS, body)
        assert (reply.status, reply.json()["error"]["code"]) == (400, code), body[:40]
    assert len(server.requests) == 1
