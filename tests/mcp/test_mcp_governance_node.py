"""MCP governance end to end: `gateway start --workers 2` in front of stateful `mcp` SDK servers, an OAuth 2.1
authorization server of the test's own (RFC 8414 metadata, registration, PKCE, RS256 tokens, JWKS), and the SDK's
own client with its OAuth support: the discovery round trip from a 401 to a token, tokens checked against the
JWKS, the token kept from the servers, per-tool access and tools/list filtered (event-stream and JSON answers), and a
per-tool limit exact across both workers."""

from __future__ import annotations

import json
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest
import trio
from backends import Client as HttpClient
from e2e_helpers import GatewayNode
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata
from mcp.shared.exceptions import MCPError
from mcp_helpers import JSON_HEADERS, SdkServers, bounded
from oauth_server import AuthServer

LIMIT = 120  # calls of `whoami` per day on /mcp, across both workers
ACL = {"mode": "passthrough-listener", "logging": {"log_audits": True},
       "default_acl": [{"scope": "tools", "allow": ["alice", "bob"]}],
       "tools": [{"name": "echo_headers", "description": "alice only", "acl": {"allow": ["alice"]}},
                 {"name": "slow", "description": "not bob", "acl": {"deny": ["bob"]}}]}
CONSUMERS = [{"username": "alice"}, {"username": "bob"}]


class Storage:
    """The SDK client's token storage, in memory."""

    def __init__(self) -> None:
        self.tokens: Any = None
        self.client: Any = None

    async def get_tokens(self) -> Any:
        return self.tokens

    async def set_tokens(self, tokens: Any) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> Any:
        return self.client

    async def set_client_info(self, client: Any) -> None:
        self.client = client


@asynccontextmanager
async def oauth_client(url: str, login: str, fresh_connections: bool = False):
    """An SDK client that follows the MCP authorization flow on its own; the "user" `login` approves at once."""
    pending: dict[str, str] = {}

    async def redirect(authorization_url: str) -> None:
        async with httpx2.AsyncClient() as browser:
            answer = await browser.get(f"{authorization_url}&login={login}")
        assert answer.status_code == 302, answer.text
        query = parse_qs(urlsplit(answer.headers["location"]).query)
        pending.update(code=query["code"][0], state=query["state"][0])

    async def callback() -> AuthorizationCodeResult:
        return AuthorizationCodeResult(code=pending["code"], state=pending["state"])

    storage = Storage()
    provider = OAuthClientProvider(url, OAuthClientMetadata(redirect_uris=["http://127.0.0.1:9/callback"],
                                                            client_name="governance-test"),
                                   storage, redirect, callback)
    limits = httpx2.Limits(max_keepalive_connections=0) if fresh_connections else httpx2.Limits()
    async with httpx2.AsyncClient(auth=provider, timeout=httpx2.Timeout(20, read=60), limits=limits) as http:
        async with Client(streamable_http_client(url, http_client=http), mode="legacy") as client:
            yield client, storage


@pytest.fixture(scope="module")
def sdk_servers():  # noqa: ANN201 - two event-stream SDK servers and one answering JSON, for the whole module
    servers = SdkServers()
    json_servers = SdkServers()
    try:
        servers.start("alpha", "beta")
        json_servers.start("gamma", extra=("--json-response",))
        yield servers, json_servers
    finally:
        servers.stop_all()
        json_servers.stop_all()


@pytest.fixture
def world(tmp_path: Path, sdk_servers):  # noqa: ANN001, ANN201 - a gateway node factory; nodes stopped by pid
    servers, json_servers = sdk_servers
    made: list[GatewayNode] = []
    try:
        def node(as_url: str) -> GatewayNode:
            gw = GatewayNode(tmp_path / "gw", {})
            base = f"http://127.0.0.1:{gw.port}"

            def route(name: str, path: str, limit: bool, strip: bool = False) -> dict[str, Any]:
                plugins = [
                    {"name": "ai-mcp-oauth2", "config": {
                        "resource": base + path, "authorization_servers": [as_url], "jwks_endpoint": as_url + "/jwks",
                        "scopes_supported": ["mcp:tools"], "consumer_claim": ["sub"], "consumer_by": ["username"]}},
                    {"name": "ai-mcp-proxy", "config": ACL}]
                if limit:
                    plugins.append({"name": "rate-limiting", "config": {"day": LIMIT, "limit_by": "mcp-tool"}})
                return {"name": name, "paths": [path], "strip_path": strip, "plugins": plugins}

            gw.doc.update({
                "services": [{"name": "sse", "url": "http://sse-cluster", "routes": [route("sse", "/mcp", True)]},
                             {"name": "json", "url": "http://json-cluster/mcp",  # the servers serve /mcp
                              "routes": [route("json", "/mcp-json", False, strip=True)]}],
                "upstreams": [{"name": "sse-cluster", "targets": [
                                  {"target": f"127.0.0.1:{servers.ports[n]}"} for n in ("alpha", "beta")]},
                              {"name": "json-cluster", "targets": [
                                  {"target": f"127.0.0.1:{json_servers.ports['gamma']}"}]}],
                "consumers": CONSUMERS})
            gw.config.write_text(json.dumps(gw.doc, indent=1))
            made.append(gw)
            return gw

        node.servers = servers  # type: ignore[attr-defined]
        yield node
    finally:
        for gw in made:
            gw.cleanup()


def test_the_sdk_client_authorizes_and_tools_are_governed_across_two_workers(world):
    async def scenario() -> None:
        auth = AuthServer()
        async with trio.open_nursery() as nursery:
            await nursery.start(auth.serve)
            gw = world(auth.issuer)
            await gw.start(workers=2)
            base = f"http://127.0.0.1:{gw.port}"

            # No token: 401 naming the metadata, which is served without one.
            async with await HttpClient.connect(gw.port, host=f"127.0.0.1:{gw.port}") as http:
                init = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                    "protocolVersion": "2025-06-18", "capabilities": {},
                    "clientInfo": {"name": "t", "version": "1"}}}).encode()
                refused = await http.request("POST", "/mcp", JSON_HEADERS, init)
                assert refused.status == 401
                metadata_url = f"{base}/.well-known/oauth-protected-resource/mcp"
                assert refused.header("www-authenticate") == \
                    f'Bearer resource_metadata="{metadata_url}", scope="mcp:tools"'
                metadata = await http.request("GET", "/.well-known/oauth-protected-resource/mcp")
                assert metadata.json()["resource"] == f"{base}/mcp"
                assert metadata.json()["authorization_servers"] == [auth.issuer]
                # A token for another resource (aud) is refused, though signed by the right key.
                other = auth.mint("alice", f"{base}/mcp-json", "mcp:tools")
                wrong = await http.request("POST", "/mcp", [*JSON_HEADERS, ("authorization", f"Bearer {other}")],
                                           init)
                assert wrong.status == 401 and 'error="invalid_token"' in wrong.header("www-authenticate")

            # The SDK's OAuth client follows the discovery round trip from that 401 to a token.
            async with oauth_client(f"{base}/mcp", "alice") as (alice, storage):
                assert auth.issued[-1]["aud"] == f"{base}/mcp" and auth.issued[-1]["sub"] == "alice"
                assert storage.tokens.scope == "mcp:tools"  # the scope the 401 and the metadata named
                tools = await alice.list_tools(cache_mode="bypass")
                assert sorted(t.name for t in tools.tools) == ["echo_headers", "slow", "whoami"]
                seen = json.loads((await alice.call_tool("echo_headers", {})).content[0].text)
                assert "authorization" not in {k.lower() for k in seen}  # the token stayed at the gateway
                assert seen["x-consumer-username"] == "alice"

            async with oauth_client(f"{base}/mcp", "bob") as (bob, _):
                tools = await bob.list_tools(cache_mode="bypass")  # an event-stream answer, filtered
                assert [t.name for t in tools.tools] == ["whoami"]
                with pytest.raises(MCPError) as refusal:
                    await bob.call_tool("slow", {"steps": 1, "delay": 0})
                assert refusal.value.code == -32602 and "'slow' is not allowed" in refusal.value.message
                assert (await bob.call_tool("whoami", {})).content[0].text in ("alpha", "beta")

            async with oauth_client(f"{base}/mcp-json", "bob") as (bob_json, _):
                tools = await bob_json.list_tools(cache_mode="bypass")  # a JSON answer, filtered
                assert [t.name for t in tools.tools] == ["whoami"]
                with pytest.raises(MCPError):
                    await bob_json.call_tool("echo_headers", {})

            nursery.cancel_scope.cancel()
            return gw

    gw = trio.run(bounded(120)(scenario))
    audit = audit_lines(gw, 4)
    assert [(a["consumer"], a["tool"], a["decision"], a["route"]) for a in audit] == [
        ("alice", "echo_headers", "allowed", "sse"), ("bob", "slow", "denied", "sse"),
        ("bob", "whoami", "allowed", "sse"), ("bob", "echo_headers", "denied", "json")]
    assert all(a["session"] and a["status"] == 200 and a["latency_ms"] > 0 for a in audit)
    assert audit[0]["upstream"] in {f"127.0.0.1:{p}" for p in world.servers.ports.values()}
    assert audit[1]["upstream"] is None and audit[1]["reason"] == "tool 'slow' is not allowed"


def audit_lines(gw: GatewayNode, count: int) -> list[dict[str, Any]]:
    """The gateway's audit lines (run/mcp-audit.log), once `count` are there (workers write them as they go)."""
    path = gw.dir / "run" / "mcp-audit.log"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (not path.exists() or path.read_bytes().count(b"\n") < count):
        time.sleep(0.05)
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def test_a_per_tool_limit_is_exact_across_two_workers(world):
    async def scenario() -> tuple[int, int, int]:
        auth = AuthServer()
        async with trio.open_nursery() as nursery:
            await nursery.start(auth.serve)
            gw = world(auth.issuer)
            await gw.start(workers=2)
            url = f"http://127.0.0.1:{gw.port}/mcp"
            outcomes = {"ok": 0, "limited": 0, "other": 0}

            async def caller(login: str, calls: int) -> None:
                # A new connection per request: the kernel spreads them over both workers' listeners.
                async with oauth_client(url, login, fresh_connections=True) as (client, _):
                    for _ in range(calls):
                        try:
                            await client.call_tool("whoami", {})
                            outcomes["ok"] += 1
                        except MCPError as e:
                            outcomes["limited" if e.code == -32029 else "other"] += 1

            async with trio.open_nursery() as callers:
                for login in ("alice", "bob", "alice", "bob"):
                    callers.start_soon(caller, login, 45)
            # Another tool has its own count.
            async with oauth_client(url, "alice") as (client, _):
                assert json.loads((await client.call_tool("echo_headers", {})).content[0].text)
            nursery.cancel_scope.cancel()
            return outcomes["ok"], outcomes["limited"], outcomes["other"], gw

    ok, limited, other, gw = trio.run(bounded(150)(scenario))
    print(f"\nper-tool limit {LIMIT}/day across 2 workers: {ok} admitted, {limited} limited, {other} other")
    assert other == 0
    assert LIMIT * 0.99 <= ok <= LIMIT * 1.01, ok
    assert ok + limited == 180
    audit = audit_lines(gw, 181)
    whoami = [a for a in audit if a["tool"] == "whoami"]
    assert len(audit) == 181 and len(whoami) == 180  # a line for every call, from both workers
    assert sum(a["decision"] == "allowed" for a in whoami) == ok
    assert sum(a["decision"] == "limited" and a["status"] == 429 for a in whoami) == limited
    assert len({a["worker"] for a in audit}) == 2
