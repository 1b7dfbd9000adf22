#!/usr/bin/env python3
"""A small JSON-RPC-over-HTTP backend for the demo: answers MCP-shaped requests and names itself.

    demo_backend.py --port 9001 --name alpha

POST /mcp (or any path): JSON-RPC `initialize`, `tools/list`, `tools/call` (tool `whoami` returns the name);
GET /health: {"status": "healthy"}; GET /events?count=10&interval=1: a text/event-stream of `count` ticks.
A POST with an X-Load-Id header (the tests' load generator, tests/loadgen.py) is answered `echo_answer`: the id,
the request's length and hash, and the filler it asks for, so the client can check the answer is its own, whole
(with `pace` among the call's arguments, the answer goes in 16 KB pieces that many seconds apart).
It uses h11 directly, independent of the gateway's own HTTP code.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
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
        load_id = next((v.decode("latin-1") for k, v in request.headers if k == b"x-load-id"), None)
        if load_id is not None and request.method == b"POST":
            status, data = 200, echo_answer(load_id, body)
        else:
            status, payload = _answer(request.method, path, body, name)
            data = json.dumps(payload).encode()
        headers = [("content-type", "application/json"), ("content-length", str(len(data))), ("x-backend", name)]
        if load_id is not None:
            headers.append(("x-load-id", load_id))
        head = conn.send(h11.Response(status_code=status, headers=headers))
        if load_id is not None and (pace := _pace(body)):  # 16 KB pieces `pace` s apart: a kill can land mid-body
            await stream.send_all(head)
            for i in range(0, len(data), 16384):
                await trio.sleep(pace)
                await stream.send_all(conn.send(h11.Data(data=data[i:i + 16384])))
            await stream.send_all(conn.send(h11.EndOfMessage()))
        else:
            await stream.send_all(head + conn.send(h11.Data(data=data)) + conn.send(h11.EndOfMessage()))
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return
        conn.start_next_cycle()


_ID_CHARS = re.compile(r"[A-Za-z0-9._-]{1,100}\Z")


def echo_answer(load_id: str, body: bytes) -> bytes:
    """The answer to a load request (tests/loadgen.py checks answers against this function, and the other echoing
    backends of the tests answer with it): the JSON-RPC id of the body, the X-Load-Id, the body's length and
    SHA-256, and `params.arguments.reply` bytes of the id repeated."""
    if not _ID_CHARS.match(load_id):
        load_id = "invalid"
    try:
        msg = json.loads(body)
        rpc_id = json.dumps(msg.get("id"), separators=(",", ":")).encode()
        reply = min(int(msg["params"]["arguments"]["reply"]), 1 << 20)
    except (ValueError, TypeError, KeyError, AttributeError):
        rpc_id, reply = b"null", 0
    unit = (load_id + ".").encode()
    fill = (unit * (max(reply, 0) // len(unit) + 1))[:max(reply, 0)]
    return (b'{"jsonrpc":"2.0","id":%s,"result":{"load_id":"%s","request_len":%d,"request_sha256":"%s","fill":"%s"}}'
            % (rpc_id, load_id.encode(), len(body), hashlib.sha256(body).hexdigest().encode(), fill))


def _pace(body: bytes) -> float:
    """A load request's `params.arguments.pace` (at most 0.1 s), else 0."""
    try:
        return max(0.0, min(float(json.loads(body)["params"]["arguments"].get("pace", 0)), 0.1))
    except (ValueError, TypeError, KeyError, AttributeError):
        return 0.0


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


def port(text: str) -> int:
    """A TCP port, 1-65535 (an argparse type)."""
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"expected a port of 1-65535, got {text!r}")
    return int(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=port, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--name", default="backend")
    args = p.parse_args()
    try:
        trio.run(partial(trio.serve_tcp, partial(_guarded, name=args.name), args.port, host=args.host))
    except KeyboardInterrupt:
        pass
    except OSError as e:  # the port in use, an address not of this host
        raise SystemExit(f"demo_backend.py: cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None


async def _guarded(stream: trio.SocketStream, name: str) -> None:
    try:
        await handle(stream, name)
    except (trio.BrokenResourceError, h11.RemoteProtocolError, trio.ClosedResourceError):
        pass


if __name__ == "__main__":
    main()
