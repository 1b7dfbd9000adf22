"""A bounded HTTP load generator for fault tests: counts every request's outcome, never retries behind your back.

Each of `concurrency` clients sends POSTs for `duration` seconds, either on one kept-alive connection (reconnecting
after a failure) or on a new connection per request. A request is ok when a complete 200 response arrives.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field

import h11
import trio

BODY = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami"}}'


@dataclass
class LoadResult:
    ok: int = 0
    failed: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    failure_times: list[float] = field(default_factory=list)

    def fail(self, why: str, started: float) -> None:
        self.failed += 1
        self.errors[why] += 1
        self.failure_times.append(time.monotonic() - started)


async def one_request(stream: trio.SocketStream, conn: h11.Connection, port: int, close: bool,
                      path: str = "/") -> int:
    """One small JSON-RPC POST to `path` on an open connection; the status of the complete response."""
    headers = [("host", f"127.0.0.1:{port}"), ("content-type", "application/json"),
               ("content-length", str(len(BODY)))]
    if close:
        headers.append(("connection", "close"))
    await stream.send_all(conn.send(h11.Request(method="POST", target=path, headers=headers)) +
                          conn.send(h11.Data(data=BODY)) + conn.send(h11.EndOfMessage()))
    status = 0
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            if not data:
                raise ConnectionError("closed before a complete response")
            conn.receive_data(data)
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.EndOfMessage):
            return status


async def _client(port: int, deadline: float, keepalive: bool, result: LoadResult, started: float) -> None:
    stream: trio.SocketStream | None = None
    conn: h11.Connection | None = None
    while time.monotonic() < deadline:
        try:
            if stream is None:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                conn = h11.Connection(h11.CLIENT)
            with trio.fail_after(10):
                status = await one_request(stream, conn, port, not keepalive)  # type: ignore[arg-type]
            if status == 200:
                result.ok += 1
            else:
                result.fail(f"status {status}", started)
            if keepalive and conn.our_state is h11.DONE and conn.their_state is h11.DONE:  # type: ignore[union-attr]
                conn.start_next_cycle()  # type: ignore[union-attr]
            else:
                await stream.aclose()
                stream = None
        except (OSError, ConnectionError, trio.BrokenResourceError, h11.ProtocolError, trio.TooSlowError) as e:
            result.fail(type(e).__name__, started)
            if stream is not None:
                await stream.aclose()
            stream = None
            await trio.sleep(0.01)
    if stream is not None:
        await stream.aclose()


async def run_load(port: int, *, concurrency: int = 10, duration: float = 3.0, keepalive: bool = True) -> LoadResult:
    """Load the port for `duration` seconds; returns the counts."""
    result = LoadResult()
    started = time.monotonic()
    deadline = started + duration
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(_client, port, deadline, keepalive, result, started)
    return result
