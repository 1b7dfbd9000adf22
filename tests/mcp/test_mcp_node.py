"""MCP sessions through the supervised gateway (real processes): two workers, then `gateway stop` and a start again.

No session key is configured: the workers share the generated key file (run/mcp-session.key), so a session id
sealed by one worker opens in the other, and in the workers of the restarted gateway.

The gateway is started as `gateway start` starts it (e2e_helpers.GatewayNode.start: its root, in a session of its
own, back once every worker accepts) and stopped by `gateway stop`; the SDK servers, which keep nothing but the
sessions of each test's clients, serve every test of the module.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from backends import Client as HttpClient
from e2e_helpers import GatewayNode
from mcp_helpers import JSON_HEADERS, SdkServers, bounded, mcp_config, sdk_client, sdk_servers, whoami

NAMES = ["alpha", "beta", "gamma"]


class Node(GatewayNode):
    """The supervised gateway in a scratch directory (run/ there holds pid file, admin socket, key file)."""

    def __init__(self, workdir: Path, doc: dict) -> None:
        # (a stop's drain lasts drain_timeout: the clients' GET streams stay open; no request is in flight then)
        super().__init__(workdir, doc, status_listen=None, drain_timeout=0.3)

    async def stop(self) -> None:  # type: ignore[override]
        """`gateway stop`, which succeeds."""
        out = await self.acli("stop", "--config", str(self.config), "--timeout", "10", timeout=30)
        assert out.returncode == 0, out.stderr


@pytest.fixture(scope="module")
def servers() -> Iterator[SdkServers]:
    """The SDK servers alpha, beta and gamma, for every test here."""
    with sdk_servers(*NAMES) as sdk:
        yield sdk


@pytest.fixture
def cluster(tmp_path, servers):
    node = Node(tmp_path, mcp_config([servers.ports[n] for n in NAMES]))
    try:
        yield servers, node
    finally:
        node.cleanup()


def test_session_survives_workers_and_a_restart(cluster):
    servers, node = cluster
    trio.run(node.start, 2)
    assert len(trio.run(node.worker_pids)) == 2
    key_file = node.dir / "run" / "mcp-session.key"
    url = f"http://127.0.0.1:{node.port}/mcp"

    async def scenario() -> tuple[str, list[str], list[str]]:
        # A new connection per request, so the kernel spreads them over both workers' listeners.
        async with sdk_client(url, fresh_connections=True) as (client, ids):
            first = client.server_info.name
            before = [await whoami(client) for _ in range(20)]
            await node.stop()
            await node.start(2)
            after = [await whoami(client) for _ in range(20)]
            assert len(set(ids.seen)) == 1  # one session id, sealed once, used throughout
            sid = ids.seen[0]
        # The id also opens on a fresh connection of its own (whichever worker takes it).
        async with await HttpClient.connect(node.port, host="localhost") as http:
            reply = await http.request("POST", "/mcp", [*JSON_HEADERS, ("mcp-session-id", sid),
                                                        ("mcp-protocol-version", "2025-06-18")],
                                       b'{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"whoami"}}')
        # The client's DELETE on leaving ended the session upstream: the upstream itself says so now.
        assert reply.status == 404
        return first, before, after

    first, before, after = trio.run(bounded(60)(scenario))
    assert first in NAMES
    assert before == [first] * 20
    assert after == [first] * 20
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    trio.run(node.stop)


def test_sessions_of_many_clients_across_workers(cluster):
    servers, node = cluster
    trio.run(node.start, 2)
    url = f"http://127.0.0.1:{node.port}/mcp"
    firsts: list[str] = []

    async def session() -> None:
        async with sdk_client(url, fresh_connections=True) as (client, _):
            first = client.server_info.name
            firsts.append(first)
            for _ in range(5):
                assert await whoami(client) == first

    async def scenario() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(6):
                nursery.start_soon(session)

    trio.run(bounded(40)(scenario))
    assert len(firsts) == 6
    trio.run(node.stop)


def plain_kong_config(ports: list[int]) -> dict:
    """What a new user writes: one service, one route /mcp with no MCP key, an upstream of three servers."""
    return {"_format_version": "3.0",
            "services": [{"name": "mcp", "url": "http://mcp-cluster",
                          "routes": [{"name": "mcp", "paths": ["/mcp"], "strip_path": False}]}],
            "upstreams": [{"name": "mcp-cluster", "targets": [{"target": f"127.0.0.1:{p}"} for p in ports]}]}


@pytest.fixture
def plain_cluster(tmp_path, servers):
    node = Node(tmp_path, plain_kong_config([servers.ports[n] for n in NAMES]))
    try:
        yield servers, node
    finally:
        node.cleanup()


def test_plain_route_pins_ten_concurrent_sessions_across_workers_and_a_restart(plain_cluster):
    servers, node = plain_cluster
    trio.run(node.start, 2)
    url = f"http://127.0.0.1:{node.port}/mcp"
    firsts: list[str] = []
    sids: list[str] = []

    async def session(calls: list[str], restarted: trio.Event, started: list[int]) -> None:
        async with sdk_client(url, fresh_connections=True) as (client, ids):
            first = client.server_info.name
            firsts.append(first)
            calls.extend([await whoami(client) for _ in range(5)])
            started.append(1)
            await restarted.wait()  # the gateway is stopped and started again meanwhile
            calls.extend([await whoami(client) for _ in range(5)])
            assert calls == [first] * 10
            assert len(set(ids.seen)) == 1
            sids.append(ids.seen[0])

    async def scenario() -> None:
        restarted = trio.Event()
        started: list[int] = []
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(session, [], restarted, started)
            while len(started) < 10:
                await trio.sleep(0.05)
            await node.stop()
            await node.start(2)
            restarted.set()
        # A tampered id is refused with the spec's 404, so the client initialises again.
        tampered = sids[0][:-2] + ("AA" if not sids[0].endswith("AA") else "BB")
        async with await HttpClient.connect(node.port, host="localhost") as http:
            reply = await http.request("POST", "/mcp", [*JSON_HEADERS, ("mcp-session-id", tampered),
                                                        ("mcp-protocol-version", "2025-06-18")],
                                       b'{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"whoami"}}')
        assert reply.status == 404
        assert reply.json()["error"]["message"] == "Session not found"

    trio.run(bounded(90)(scenario))
    assert len(firsts) == 10 and len(set(sids)) == 10
    assert len(set(firsts)) >= 2, firsts  # round-robin spread the sessions over the servers
    trio.run(node.stop)
