"""End to end with the real `mcp` SDK: three stateful Streamable-HTTP servers behind the in-process gateway.

Session mode (`mode="legacy"`, the initialize handshake) must stay pinned to the server that answered initialize;
stateless 2026-07-28 requests (the SDK's default mode) are balanced; progress notifications stream through.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
import trio
from backends import Client as HttpClient
from mcp.shared.exceptions import MCPError
from mcp_helpers import (
    JSON_HEADERS,
    TEST_KEY,
    SdkServers,
    bounded,
    mcp_config,
    sdk_client,
    sdk_servers,
    session_keys,
    whoami,
)

NAMES = ["alpha", "beta", "gamma"]

pytestmark = pytest.mark.parametrize("http_codec", ["llhttp"])  # the codecs have their own conformance suite


@pytest.fixture(scope="module")
def servers():
    with sdk_servers(*NAMES) as sdk:
        yield sdk


def ports(servers: SdkServers) -> list[int]:
    return [servers.ports[n] for n in NAMES]


@bounded(30)
async def test_session_pinned_for_20_calls(gateway, servers):
    port = await gateway(mcp_config(ports(servers)), mcp=session_keys(TEST_KEY))
    async with sdk_client(f"http://127.0.0.1:{port}/mcp", fresh_connections=True) as (client, ids):
        assert client.protocol_version != "2026-07-28"
        first = client.server_info.name  # the server that answered initialize
        assert first in NAMES
        names = [await whoami(client) for _ in range(20)]
        assert names == [first] * 20
        assert ids.seen and all(sid.startswith("k1.") for sid in ids.seen)  # the gateway's sealed id, not upstream's


@bounded(30)
async def test_ten_concurrent_sessions_stay_pinned(gateway, servers):
    port = await gateway(mcp_config(ports(servers)), mcp=session_keys(TEST_KEY))
    firsts: list[str] = []

    async def session() -> None:
        async with sdk_client(f"http://127.0.0.1:{port}/mcp") as (client, _):
            first = client.server_info.name
            firsts.append(first)
            for _ in range(5):
                assert await whoami(client) == first
                await trio.sleep(0)

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(session)
    assert len(firsts) == 10
    counts = Counter(firsts)
    assert set(counts) == set(NAMES), counts  # round-robin spread the ten sessions over all three


@bounded(30)
async def test_stateless_2026_requests_are_balanced(gateway, servers):
    port = await gateway(mcp_config(ports(servers)), mcp=session_keys(TEST_KEY))
    async with sdk_client(f"http://127.0.0.1:{port}/mcp", mode="auto") as (client, ids):
        assert client.protocol_version == "2026-07-28"
        names = [await whoami(client) for _ in range(9)]
    counts = Counter(names)  # round-robin; the client's own server/discover and tools/list took turns too
    assert set(counts) == set(NAMES) and min(counts.values()) >= 2, counts
    assert ids.seen == []  # no sessions in this revision


@bounded(30)
async def test_progress_streams_in_order_with_keepalives(gateway, servers):
    port = await gateway(mcp_config(ports(servers)), mcp=session_keys(TEST_KEY), sse_keepalive=0.3)
    progress: list[tuple[float, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, message))

    async with sdk_client(f"http://127.0.0.1:{port}/mcp") as (client, _):
        first = client.server_info.name
        result = await client.call_tool("slow", {"steps": 3, "delay": 0.8}, progress_callback=on_progress)
        assert result.content[0].text == first  # type: ignore[union-attr]
    assert progress == [(float(i), f"step {i} of 3 on {first}") for i in (1, 2, 3)]


@bounded(30)
async def test_keepalive_comments_on_the_wire(gateway, servers):
    """A raw client sees the gateway's `: keepalive` comments between the slow tool's progress events."""
    port = await gateway(mcp_config(ports(servers)), mcp=session_keys(TEST_KEY), sse_keepalive=0.3)
    async with await HttpClient.connect(port, host="localhost") as http:
        init = await http.request("POST", "/mcp", JSON_HEADERS, json.dumps({
            "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}
        }).encode(), host=f"127.0.0.1:{port}")
        assert init.status == 200, init.body
        sid = init.header("mcp-session-id")
        assert sid and sid.startswith("k1.")
        hs = [*JSON_HEADERS, ("mcp-session-id", sid), ("mcp-protocol-version", "2025-06-18")]
        note = await http.request("POST", "/mcp", hs, b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
        assert note.status == 202
        call = await http.request("POST", "/mcp", hs, json.dumps({
            "jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "slow", "arguments": {"steps": 2, "delay": 1.0}, "_meta": {"progressToken": "p"}},
        }).encode())
    assert call.status == 200
    assert call.header("content-type").startswith("text/event-stream")
    wire = b"".join(data for _, data in call.chunks)
    assert wire.count(b": keepalive") >= 2, wire
    progress = [i for i in (1, 2) if b'"progress":%d' % i in wire]
    assert progress == [1, 2]
    assert wire.index(b'"progress":1') < wire.index(b'"progress":2') < wire.index(b'"result"')


@bounded(30)
async def test_tampered_session_id_gets_404(gateway, servers):
    port = await gateway(mcp_config(ports(servers)), mcp=session_keys(TEST_KEY))
    async with sdk_client(f"http://127.0.0.1:{port}/mcp") as (client, ids):
        await whoami(client)
        sid = ids.seen[-1]
    tampered = sid[:-3] + ("A" if sid[-3] != "A" else "B") + sid[-2:]
    async with await HttpClient.connect(port, host="localhost") as http:
        for bad in (tampered, "k1.bm90LWEtc2Vzc2lvbg", "0123456789abcdef0123456789abcdef"):
            reply = await http.request("POST", "/mcp", [*JSON_HEADERS, ("mcp-session-id", bad)],
                                       b'{"jsonrpc":"2.0","id":5,"method":"tools/list"}')
            assert reply.status == 404
            assert reply.json() == {"jsonrpc": "2.0", "id": None,
                                    "error": {"code": -32001, "message": "Session not found"}}


@bounded(30)
async def test_delete_ends_the_session_upstream(gateway, servers):
    port = await gateway(mcp_config(ports(servers)), mcp=session_keys(TEST_KEY))
    url = f"http://127.0.0.1:{port}/mcp"
    async with sdk_client(url) as (client, ids):
        await whoami(client)
        sid = ids.seen[-1]
    # Leaving the client sent DELETE with the gateway's id; the upstream ended the session, so it is now unknown
    # there: the upstream's own 404 comes back through the gateway.
    async with await HttpClient.connect(port, host="localhost") as http:
        reply = await http.request("POST", "/mcp", [*JSON_HEADERS, ("mcp-session-id", sid),
                                                    ("mcp-protocol-version", "2025-06-18")],
                                   b'{"jsonrpc":"2.0","id":7,"method":"tools/list"}')
        assert reply.status == 404
        assert reply.json()["error"]["message"] == "Session not found"


@bounded(30)
async def test_explicit_delete(gateway, servers):
    port = await gateway(mcp_config(ports(servers)), mcp=session_keys(TEST_KEY))
    async with await HttpClient.connect(port, host="localhost") as http:
        init = await http.request("POST", "/mcp", JSON_HEADERS, json.dumps({
            "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}
        }).encode())
        sid = init.header("mcp-session-id")
        hs = [*JSON_HEADERS, ("mcp-session-id", sid), ("mcp-protocol-version", "2025-06-18")]
        listed = await http.request("POST", "/mcp", hs, b'{"jsonrpc":"2.0","id":2,"method":"tools/list"}')
        assert listed.status == 200
        deleted = await http.request("DELETE", "/mcp", hs)
        assert deleted.status == 200
        again = await http.request("POST", "/mcp", hs, b'{"jsonrpc":"2.0","id":3,"method":"tools/list"}')
        assert again.status == 404


@bounded(30)
async def test_pinned_server_stopped_then_reinitialise_elsewhere(gateway):
    sdk = SdkServers()
    try:
        sdk.start("one", "two")
        port = await gateway(mcp_config([sdk.ports["one"], sdk.ports["two"]]), mcp=session_keys(TEST_KEY))
        url = f"http://127.0.0.1:{port}/mcp"
        async with sdk_client(url) as (client, _):
            first = client.server_info.name
            assert await whoami(client) == first
            sdk.stop(first)
            await trio.sleep(1.2)  # past the pool's stale check: a pooled connection to it is not reused blindly
            with pytest.raises(MCPError) as err:
                await whoami(client)
            assert err.value.error.message == "Session not found"
        async with sdk_client(url) as (client, _):  # the client's re-initialise: the balancer skips the dead one
            other = client.server_info.name
            assert other != first
            assert await whoami(client) == other
    finally:
        sdk.stop_all()


@bounded(30)
async def test_pinned_server_stopped_the_next_call_at_once_is_session_not_found(gateway):
    """Within the pool's stale check: the pooled connection to the dead server fails, a fresh connect is refused,
    so the client hears "Session not found" (and may re-initialise), not a 502."""
    sdk = SdkServers()
    try:
        sdk.start("one", "two")
        port = await gateway(mcp_config([sdk.ports["one"], sdk.ports["two"]]), mcp=session_keys(TEST_KEY))
        async with sdk_client(f"http://127.0.0.1:{port}/mcp") as (client, _):
            first = client.server_info.name
            assert await whoami(client) == first  # leaves a pooled connection to it
            sdk.stop(first)
            with pytest.raises(MCPError) as err:
                await whoami(client)
            assert err.value.error.message == "Session not found"
    finally:
        sdk.stop_all()


@bounded(30)
async def test_host_is_the_targets_own(gateway, servers):
    """The SDK server answers 421 to a foreign Host: the gateway sends the target's host:port unless preserve_host."""
    doc = mcp_config(ports(servers)[:1])
    allowed = {**session_keys(TEST_KEY), "allowed_hosts": ["mcp.example.com"]}  # the gateway's own Host check
    port = await gateway(doc, mcp=allowed)
    async with await HttpClient.connect(port, host="localhost") as http:
        ok = await http.request("POST", "/mcp", MODERN, json.dumps(_modern_call("echo_headers")).encode(),
                                host="mcp.example.com")
    assert ok.status == 200, ok.body
    seen = _headers_seen(ok)
    assert seen["host"] == f"127.0.0.1:{servers.ports['alpha']}"
    assert seen["x-forwarded-host"] == "mcp.example.com"
    doc["services"][0]["routes"][0]["preserve_host"] = True
    port = await gateway(doc, mcp=allowed)
    async with await HttpClient.connect(port, host="localhost") as http:
        refused = await http.request("POST", "/mcp", MODERN, json.dumps(_modern_call("echo_headers")).encode(),
                                     host="mcp.example.com")
    assert refused.status == 421


@bounded(30)
async def test_origin_policy_with_a_real_server(gateway, servers):
    doc = mcp_config(ports(servers)[:1])
    body = json.dumps(_modern_call("echo_headers")).encode()
    foreign = [*MODERN, ("origin", "https://app.example.com")]
    port = await gateway(doc, mcp=session_keys(TEST_KEY))  # default: pass, no check at the gateway
    async with await HttpClient.connect(port, host="localhost") as http:
        assert (await http.request("POST", "/mcp", foreign, body)).status == 403  # the SDK server refuses it
    port = await gateway(doc, mcp={**session_keys(TEST_KEY),
                                   "origin": {"allow": ["https://app.example.com"], "upstream": "rewrite"}})
    async with await HttpClient.connect(port, host="localhost") as http:
        ok = await http.request("POST", "/mcp", foreign, body)
        assert ok.status == 200, ok.body
        assert _headers_seen(ok)["origin"] == f"http://127.0.0.1:{servers.ports['alpha']}"
        evil = await http.request("POST", "/mcp", [*MODERN, ("origin", "https://evil.example")], body)
        assert evil.status == 403
        assert evil.json()["error"]["message"] == "Origin not allowed"
    port = await gateway(doc, mcp={**session_keys(TEST_KEY),
                                   "origin": {"allow": ["https://app.example.com"], "upstream": "strip"}})
    async with await HttpClient.connect(port, host="localhost") as http:
        ok = await http.request("POST", "/mcp", foreign, body)
        assert ok.status == 200, ok.body
        assert "origin" not in _headers_seen(ok)


MODERN = [*JSON_HEADERS, ("mcp-protocol-version", "2026-07-28"), ("mcp-method", "tools/call"),
          ("mcp-name", "echo_headers")]


def _modern_call(tool: str, arguments: dict | None = None) -> dict:
    return {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": tool, "arguments": arguments or {},
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                  "io.modelcontextprotocol/clientCapabilities": {}}}}


def _headers_seen(reply) -> dict:  # noqa: ANN001
    """The headers the echo_headers tool saw, from a JSON or SSE answer."""
    body = reply.body
    if reply.header("content-type").startswith("text/event-stream"):
        body = next(line[5:].strip() for line in body.splitlines() if line.startswith(b"data:") and b"result" in line)
    result = json.loads(body)["result"]
    return json.loads(result["content"][0]["text"])
