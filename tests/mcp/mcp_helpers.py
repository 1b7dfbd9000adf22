"""Helpers for the MCP tests: real `mcp` SDK servers as subprocesses, a scripted fake MCP backend, SDK clients.

SDK servers are `scripts/mcp_demo_server.py` (tools whoami, slow, echo_headers) on free 127.0.0.1 ports; they are
stopped by pid in `finally` blocks. The fake backend (h11, in the test's nursery) plays an MCP server whose answers
the tests choose, and records what it received.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import h11
import httpx2
import trio
from backends import Seen, _Backend, free_port, stop_process, wait_port
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

ROOT = Path(__file__).resolve().parent.parent.parent
SERVER_SCRIPT = ROOT / "scripts" / "mcp_demo_server.py"

INIT_BODY = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
             "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                        "clientInfo": {"name": "test", "version": "1"}}}
JSON_HEADERS = [("content-type", "application/json"), ("accept", "application/json, text/event-stream")]


def bounded(seconds: float):  # noqa: ANN201 - a decorator
    """Fail an async test that runs longer than `seconds` (every test here is bounded in time)."""

    def decorate(fn):  # noqa: ANN001, ANN202
        @functools.wraps(fn)
        async def run(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            with trio.fail_after(seconds):
                return await fn(*args, **kwargs)

        return run

    return decorate


class SdkServers:
    """`mcp` SDK servers (scripts/mcp_demo_server.py) as subprocesses, by name."""

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[str, int] = {}

    def start(self, *names: str, extra: tuple[str, ...] = ()) -> None:
        for name in names:
            port = free_port()
            self.ports[name] = port
            self.procs[name] = subprocess.Popen(
                [sys.executable, str(SERVER_SCRIPT), "--port", str(port), "--name", name, *extra],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for name in names:
            wait_port(self.ports[name], timeout=60.0)  # the SDK's imports take seconds on a busy machine

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None:
            stop_process(proc)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    def name_of(self, port: int) -> str:
        return next(n for n, p in self.ports.items() if p == port)


@contextmanager
def sdk_servers(*names: str, extra: tuple[str, ...] = ()) -> Iterator[SdkServers]:
    """SDK servers started by name (with `extra` arguments), all stopped at the end."""
    sdk = SdkServers()
    try:
        sdk.start(*names, extra=extra)
        yield sdk
    finally:
        sdk.stop_all()


def mcp_config(ports: list[int], *, route: dict[str, Any] | None = None, upstream: dict[str, Any] | None = None,
               extra_routes: list[dict[str, Any]] | None = None, **service_fields: Any) -> dict[str, Any]:
    """A Kong-format config: one service over an upstream of `ports`, one MCP route on /mcp (not stripped)."""
    return {
        "_format_version": "3.0",
        "services": [{"name": "mcp", "url": "http://mcp-cluster", "read_timeout": 10000, **service_fields,
                      "routes": [{"name": "mcp", "paths": ["/mcp"], "strip_path": False, "mcp": True, **(route or {})},
                                 *(extra_routes or [])]}],
        "upstreams": [{"name": "mcp-cluster", **(upstream or {}),
                       "targets": [{"target": f"127.0.0.1:{p}"} for p in ports]}],
    }


def session_keys(*pairs: tuple[str, str]) -> dict[str, Any]:
    return {"session_keys": [{"id": kid, "secret": secret} for kid, secret in pairs]}


TEST_KEY = ("k1", "test-secret-0123456789abcdef")


class SessionIds:
    """An httpx2 event hook that records every Mcp-Session-Id the client was given."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.statuses: list[int] = []

    async def __call__(self, response: httpx2.Response) -> None:
        self.statuses.append(response.status_code)
        sid = response.headers.get("mcp-session-id")
        if sid:
            self.seen.append(sid)


@asynccontextmanager
async def sdk_client(url: str, mode: str = "legacy", fresh_connections: bool = False, **kwargs: Any):
    """An `mcp.Client` over streamable HTTP with its own httpx2 client; yields (client, SessionIds)."""
    ids = SessionIds()
    limits = httpx2.Limits(max_keepalive_connections=0) if fresh_connections else httpx2.Limits()
    async with httpx2.AsyncClient(timeout=httpx2.Timeout(20, read=60), limits=limits,
                                  event_hooks={"response": [ids]}) as http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode, **kwargs) as client:
            yield client, ids


async def whoami(client: Client) -> str:
    result = await client.call_tool("whoami", {})
    assert not result.is_error, result
    return result.content[0].text  # type: ignore[union-attr]


class FakeMcp(_Backend):
    """A scripted MCP upstream. POST `initialize` gets `Mcp-Session-Id: <sid_prefix>-<n>`; any other POST gets a
    JSON-RPC result describing what arrived (backend name, headers, body); GET gets an SSE stream of `events` events
    `gap` seconds apart (with x-accel-buffering and cache-control headers); DELETE gets 204."""

    def __init__(self, name: str, events: int = 2, gap: float = 0.1, sid_prefix: str | None = None) -> None:
        super().__init__(name)
        self.events = events
        self.gap = gap
        self.sid_prefix = sid_prefix or f"up-{name}"
        self.sessions = 0

    async def handle_conn(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
        while True:
            seen = await self._read_request(stream, conn)
            if seen is None:
                return
            if seen.method == "GET":
                await self._events(stream, conn)
                return
            await self._answer(stream, conn, seen)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _answer(self, stream: trio.SocketStream, conn: h11.Connection, seen: Seen) -> None:
        headers = [(b"content-type", b"application/json")]
        if seen.method == "DELETE":
            await stream.send_all(conn.send(h11.Response(status_code=204, headers=[])) +
                                  conn.send(h11.EndOfMessage()))
            return
        try:
            msg = json.loads(seen.body)
        except ValueError:
            msg = None
        rpc_id = msg.get("id") if isinstance(msg, dict) else None
        if isinstance(msg, dict) and msg.get("method") == "initialize":
            self.sessions += 1
            headers.append((b"mcp-session-id", f"{self.sid_prefix}-{self.sessions}".encode()))
        body = json.dumps({"jsonrpc": "2.0", "id": rpc_id, "result": {
            "name": self.name, "headers": seen.headers, "batch": isinstance(msg, list),
            "body_len": len(seen.body)}}).encode()
        headers.append((b"content-length", b"%d" % len(body)))
        await stream.send_all(conn.send(h11.Response(status_code=200, headers=headers)) +
                              conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))

    async def _events(self, stream: trio.SocketStream, conn: h11.Connection) -> None:
        await stream.send_all(conn.send(h11.Response(status_code=200, headers=[
            (b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no")])))
        for i in range(self.events):
            await trio.sleep(self.gap)
            data = b"id: %d\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"n\",\"params\":{\"i\":%d}}\n\n"
            await stream.send_all(conn.send(h11.Data(data=data % (i, i))))
        await stream.send_all(conn.send(h11.EndOfMessage()))


def header(headers: list[list[str]] | list[tuple[str, str]], name: str) -> str | None:
    for k, v in headers:
        if k.lower() == name:
            return v
    return None
