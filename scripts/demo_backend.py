#!/usr/bin/env python3
"""A small JSON-RPC-over-HTTP backend for the demo: answers MCP-shaped requests and names itself.

    demo_backend.py --port 9001 --name alpha

POST /mcp (or any path): JSON-RPC `initialize`, `tools/list`, `tools/call` (tool `whoami` returns the name);
GET /health: {"status": "healthy"}; GET /events?count=10&interval=1: a text/event-stream of `count` ticks.
It uses h11 directly, independent of the gateway's own HTTP code.
"""

from __future__ import annotations

import argparse
import json
from functools import partial

import h11
import trio

MAX_BODY = 1 << 20


async def handle(stream: trio.SocketStream, name: str) -> None:
    conn = h11.Connection(h11.SERVER)
    while True:
        request, body = None, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                conn.receive_data(data)
                if not data and conn.their_state is not h11.DONE:
                    return
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    return
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)) or event is h11.PAUSED:
                break
        if request is None:
            return
        path, _, query = request.target.decode().partition("?")
        if request.method == b"GET" and path == "/events":
            params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
            await _events(stream, conn, name, int(params.get("count", 10)), float(params.get("interval", 1)))
            return
        status, payload = _answer(request.method, path, body, name)
        data = json.dumps(payload).encode()
        headers = [("content-type", "application/json"), ("content-length", str(len(data))), ("x-backend", name)]
        await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)) + conn.send(
            h11.Data(data=data)) + conn.send(h11.EndOfMessage()))
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return
        conn.start_next_cycle()


def _answer(method: bytes, path: str, body: bytes, name: str) -> tuple[int, dict]:
    if method == b"GET" and path == "/health":
        return 200, {"status": "healthy", "name": name}
    if method != b"POST":
        return 200, {"name": name, "path": path}
    try:
        msg = json.loads(body)
    except ValueError:
        return 400, {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "Parse error"}}
    rpc_id = msg.get("id") if isinstance(msg, dict) else None
    method_name = msg.get("method") if isinstance(msg, dict) else None
    if method_name == "initialize":
        result = {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
                  "serverInfo": {"name": name, "version": "0.1"}}
    elif method_name == "tools/list":
        result = {"tools": [{"name": "whoami", "description": "the name of the server that answers",
                             "inputSchema": {"type": "object"}}]}
    elif method_name == "tools/call":
        result = {"content": [{"type": "text", "text": name}]}
    else:
        return 200, {"jsonrpc": "2.0", "id": rpc_id, "error": {"code": -32601, "message": "Method not found"}}
    return 200, {"jsonrpc": "2.0", "id": rpc_id, "result": result}


async def _events(stream: trio.SocketStream, conn: h11.Connection, name: str, count: int, interval: float) -> None:
    headers = [("content-type", "text/event-stream"), ("cache-control", "no-cache"), ("x-backend", name)]
    await stream.send_all(conn.send(h11.Response(status_code=200, headers=headers)))
    for i in range(count):
        await stream.send_all(conn.send(h11.Data(data=f"id: {i}\ndata: tick {i} from {name}\n\n".encode())))
        await trio.sleep(interval)
    await stream.send_all(conn.send(h11.EndOfMessage()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--name", default="backend")
    args = p.parse_args()
    try:
        trio.run(partial(trio.serve_tcp, partial(_guarded, name=args.name), args.port, host=args.host))
    except KeyboardInterrupt:
        pass


async def _guarded(stream: trio.SocketStream, name: str) -> None:
    try:
        await handle(stream, name)
    except (trio.BrokenResourceError, h11.RemoteProtocolError, trio.ClosedResourceError):
        pass


if __name__ == "__main__":
    main()
