"""MCP session affinity while discovery changes the upstream's targets under a request in flight.

A sealed session id names its target; discovery (a real etcd here) may replace the target list while the gateway
reads the session's request body (Kong's request buffering: the whole body before any upstream). The request must
still reach the server that holds its session, wherever that target now sits in the list (README "MCP": the
upstream's id put back and the request sent to that target; 404 once the target left).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from backends import parse_raw_response
from e2e_helpers import EtcdProcess, node_factory, running_etcd, wait_for
from mcp_helpers import INIT_BODY, TEST_KEY, FakeMcp, session_keys

from gateway.discovery.etcd import EtcdClient

PREFIX = "/affinity/upstreams/mcp-cluster/"
TOOLS_LIST = b'{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{}}'


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdProcess]:
    with running_etcd(tmp_path) as proc:
        yield proc


def _config(endpoint: str) -> dict[str, Any]:
    """One MCP route over the upstream `mcp-cluster`, whose targets are the keys under PREFIX in etcd."""
    return {"services": [{"name": "mcp", "url": "http://mcp-cluster", "read_timeout": 10000,
                          "routes": [{"name": "mcp", "paths": ["/mcp"], "strip_path": False, "mcp": True}]}],
            "upstreams": [{"name": "mcp-cluster", "discovery": {
                "type": "etcd", "endpoints": [endpoint], "prefix": PREFIX,
                "retry_initial_s": 0.1, "retry_max_s": 0.5, "timeout_s": 2}}]}


def _post(port: int, body: bytes, session_id: str | None = None) -> bytes:
    """A whole MCP POST on a connection the gateway closes after answering."""
    head = (f"POST /mcp HTTP/1.1\r\nHost: localhost:{port}\r\ncontent-type: application/json\r\n"
            f"accept: application/json, text/event-stream\r\ncontent-length: {len(body)}\r\nconnection: close\r\n")
    if session_id:
        head += f"mcp-session-id: {session_id}\r\n"
    return head.encode() + b"\r\n" + body


async def _read_to_close(stream: trio.SocketStream) -> tuple[int, dict[str, str], bytes]:
    data = b""
    with trio.fail_after(10):
        while chunk := await stream.receive_some(65536):
            data += chunk
    return parse_raw_response(data)


async def _exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        return await _read_to_close(stream)


async def _registered(gw: Any, port: int) -> bool:
    """Does the gateway's keeper list the registry's target of `port`?"""
    return f"mcp-cluster|127.0.0.1:{port}" in await gw.targets()


async def _until_registered(gw: Any, *ports: int) -> None:
    """Wait until the workers have the registry's targets of `ports`: discovery reports ready after FIRST_WAIT_S
    without them when the registry answers slowly (a loaded host), and a request before them gets Kong's 503."""
    async def all_there() -> bool:
        return all([await _registered(gw, port) for port in ports])

    await wait_for(all_there, 5, what="the keeper has the registry's targets")
    await trio.sleep(0.5)  # and the worker has them too


async def _session_call_across_a_change(etcd: EtcdProcess, nursery: trio.Nursery, tmp_path: Path,
                                        change: str) -> tuple[int, bytes, str, str]:
    """Open a session on `high` (the second of [mid, high] by address), send its next call but for the body's last
    bytes, apply `change` in etcd ("add low": [low, mid, high]; "remove mid": [high]), then finish the body:
    (status, body, the session's server, the gateway's log)."""
    servers = [FakeMcp(f"server-{i}") for i in range(3)]
    for server in servers:
        await nursery.start(server.serve)
    low, mid, high = sorted(servers, key=lambda s: s.port)  # the runtime's order: by address
    client = EtcdClient([etcd.endpoint], timeout=2)
    await client.put(PREFIX + "mid", f"127.0.0.1:{mid.port}".encode())
    await client.put(PREFIX + "high", f"127.0.0.1:{high.port}".encode())
    with node_factory(tmp_path) as make:
        gw = make(_config(etcd.endpoint), mcp=session_keys(TEST_KEY))
        await gw.start(workers=1)

        async def has_target(port: int, present: bool) -> bool:
            return await _registered(gw, port) is present

        await _until_registered(gw, mid.port, high.port)
        session_id = None
        for _ in range(10):  # round robin: one of the first initializes lands on `high`
            status, headers, body = await _exchange(gw.port, _post(gw.port, json.dumps(INIT_BODY).encode()))
            assert status == 200, body
            if json.loads(body)["result"]["name"] == high.name:
                session_id = headers["mcp-session-id"]
                break
        assert session_id is not None
        call = _post(gw.port, TOOLS_LIST, session_id)
        stream = await trio.open_tcp_stream("127.0.0.1", gw.port)
        async with stream:
            await stream.send_all(call[:-5])  # the head and most of the body: the worker is reading it
            if change == "add low":
                await client.put(PREFIX + "low", f"127.0.0.1:{low.port}".encode())
                await wait_for(lambda: has_target(low.port, True), 5, what="the keeper has the new target")
            else:
                await client.delete(PREFIX + "mid")
                await wait_for(lambda: has_target(mid.port, False), 5, what="the keeper dropped the target")
            await trio.sleep(0.5)  # and the worker has the new list too
            await stream.send_all(call[-5:])
            status, _, body = await _read_to_close(stream)
        return status, body, high.name, gw.log()


async def test_a_session_call_reaches_its_server_when_a_target_is_added_before_it_while_its_body_is_read(
        etcd: EtcdProcess, nursery: trio.Nursery, tmp_path: Path) -> None:
    status, body, server, _ = await _session_call_across_a_change(etcd, nursery, tmp_path, "add low")
    assert status == 200, body
    assert json.loads(body)["result"]["name"] == server


async def test_a_session_call_reaches_its_server_when_a_target_before_it_leaves_while_its_body_is_read(
        etcd: EtcdProcess, nursery: trio.Nursery, tmp_path: Path) -> None:
    status, body, server, log = await _session_call_across_a_change(etcd, nursery, tmp_path, "remove mid")
    assert "Traceback" not in log, log[-1500:]
    assert status == 200, body
    assert json.loads(body)["result"]["name"] == server


async def test_a_session_on_the_only_target_is_still_served_once_its_weight_is_0(
        etcd: EtcdProcess, nursery: trio.Nursery, tmp_path: Path) -> None:
    """Weight 0 stops new sessions (Kong's 503, no peer), not the ones a target has, even when it is the upstream's
    only target (the upstream's total weight 0 made every target unusable, and the session got 404)."""
    server = FakeMcp("only")
    await nursery.start(server.serve)
    client = EtcdClient([etcd.endpoint], timeout=2)
    await client.put(PREFIX + "only", f"127.0.0.1:{server.port}".encode())
    with node_factory(tmp_path) as make:
        gw = make(_config(etcd.endpoint), mcp=session_keys(TEST_KEY))
        await gw.start(workers=1)
        await _until_registered(gw, server.port)
        status, headers, body = await _exchange(gw.port, _post(gw.port, json.dumps(INIT_BODY).encode()))
        assert status == 200, body
        session_id = headers["mcp-session-id"]
        await client.put(PREFIX + "only", json.dumps({"target": f"127.0.0.1:{server.port}", "weight": 0}).encode())

        async def weighed_0() -> bool:
            status, _, _ = await _exchange(gw.port, _post(gw.port, json.dumps(INIT_BODY).encode()))
            return status == 503  # no new session: the worker has the new weight

        await wait_for(weighed_0, 5, what="new sessions refused")
        status, _, body = await _exchange(gw.port, _post(gw.port, TOOLS_LIST, session_id))
    assert status == 200, body
    assert json.loads(body)["result"]["name"] == "only"
