"""What a request holds of its body goes when the request ends, whoever answered it, and its connection keeps nothing of
it afterwards, as nginx's request pool takes its temporary body file with it (release-1.27.1
src/http/ngx_http_request_body.c:587 `ngx_create_temp_file(&tf->file, tf->path, tf->pool, ...)`, whose close is a
cleanup of that pool: src/core/ngx_file.c:187-209; the pool is destroyed in ngx_http_free_request,
src/http/ngx_http_request.c:3789).

The connection loop runs on one end of a socket pair (gateway.http.server.handle_connection, timed by the worker's
timer sweeper); the plugins' case through an in-process gateway (the `gateway` fixture), its backend in the test's
nursery, on loopback."""

from __future__ import annotations

import gc
import os
import socket
from typing import Any

import pytest
import trio
import trio.testing
from backends import Client, EchoBackend

from gateway.http.codecs import codec_classes
from gateway.http.net import Conn
from gateway.http.server import HELD_FILE, Exchange, ServerSettings, handle_connection
from gateway.http.timers import ConnTimer, Phase
from gateway.pipeline.request_buffer import MEMORY_LIMIT, read_within

TIMEOUT = 5
BODY = b"x" * (4 * MEMORY_LIMIT)  # read whole in access: past the memory limit, into a file
CHUNKED = b"%x\r\n%b\r\n0\r\n\r\n" % (len(BODY), BODY)


@pytest.fixture
def http_codec() -> str:
    """The body is released by the connection loop, whatever parsed it: one codec is enough."""
    return "llhttp"


class Loop:
    """The connection loop on one end of a socket pair, its handler a plugin's: the chunked body read whole in access
    (request-size-limiting's read_within, kept for the proxying in a file), then a 403 of another plugin's instead of
    the proxying. `held` are those bodies; `client` is the other end."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.settings = ServerSettings(codec_classes("llhttp")[0])
        self.held: list[Any] = []
        ours, theirs = socket.socketpair()
        self.client = trio.socket.from_stdlib_socket(theirs)
        self.done = trio.Event()
        nursery.start_soon(self.settings.connections.timers.expire_forever)
        nursery.start_soon(self._run, Conn(ours))

    async def _handler(self, ex: Exchange) -> None:
        assert await read_within(ex, len(BODY))
        self.held.append(ex.state[HELD_FILE])  # type: ignore[index]
        await ex.respond(403, b"no", b"text/plain")

    async def _run(self, conn: Conn) -> None:
        try:
            await handle_connection(conn, self._handler, self.settings)
        finally:
            conn.close()
            self.done.set()

    def timer(self) -> ConnTimer:
        return next(iter(self.settings.connections.timers.live))

    async def request(self, connection: bytes = b"keep-alive") -> bytes:
        """A PUT of BODY, chunked, its body still coming when the handler reads it; the answer's first bytes (its head
        and body come in one write)."""
        await self.client.send(b"PUT / HTTP/1.1\r\nHost: gw.test\r\nConnection: %b\r\n"
                               b"Transfer-Encoding: chunked\r\n\r\n%b" % (connection, CHUNKED[:1000]))
        with trio.fail_after(TIMEOUT):
            await trio.testing.wait_all_tasks_blocked()
            rest = memoryview(CHUNKED)[1000:]
            while rest:
                rest = rest[await self.client.send(rest):]
            return await self.client.recv(65536)


async def test_a_body_file_is_closed_when_another_plugin_answers_on_a_kept_connection(nursery: trio.Nursery) -> None:
    """The answer was a plugin's, so nothing sent the file; the connection stays open for its next request, and
    the file must not wait for it (nor for the connection's end)."""
    loop = Loop(nursery)
    with loop.client:
        assert (await loop.request()).startswith(b"HTTP/1.1 403")
        await trio.testing.wait_all_tasks_blocked()
        [held] = loop.held
        assert held.file.closed
        assert not loop.done.is_set()


async def test_a_body_file_is_closed_when_the_connection_ends_with_the_answer(nursery: trio.Nursery) -> None:
    """The request that ends its connection (Connection: close) leaves the loop on another path: its body file
    goes all the same."""
    loop = Loop(nursery)
    with loop.client:
        assert (await loop.request(b"close")).startswith(b"HTTP/1.1 403")
        with trio.fail_after(TIMEOUT):
            await loop.done.wait()
    [held] = loop.held
    assert held.file.closed


async def test_the_connection_keeps_nothing_of_a_request_once_it_is_over(nursery: trio.Nursery) -> None:
    """While the connection waits for its next request its timer holds no Exchange (a stale heap entry of the
    timer, its last body read's client_body_timeout, could keep the request alive that long), and once the
    connection ends the timer holds neither (no Conn <-> ConnTimer cycle left for the cyclic collector)."""
    loop = Loop(nursery)
    with loop.client:
        assert (await loop.request()).startswith(b"HTTP/1.1 403")
        await trio.testing.wait_all_tasks_blocked()
        timer = loop.timer()
        assert (timer.phase, timer.exchange) == (Phase.IDLE, None)
    with trio.fail_after(TIMEOUT):
        await loop.done.wait()
    assert (timer.exchange, timer.client) == (None, None)


def spooled_files() -> int:
    """Open descriptors of this process on unlinked files: the gateway's unnamed temporary body files."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += "(deleted)" in os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    return count


async def test_a_spooled_body_file_is_closed_when_a_later_plugin_answers(nursery, gateway):
    """request-size-limiting reads a chunked body whole in access (read_within: past 8 KiB into a temporary file, held
    for the proxying); when a later plugin answers (here request-termination's 403; rate-limiting's 429 or acl's 403
    alike) nothing sent it, and the file stayed open with the Exchange, which the connection's timer kept (a stale
    heap entry of its last body read, for client_body_timeout) and then a Conn <-> ConnTimer <-> Exchange cycle until
    a cyclic GC pass: a descriptor and the body's disk space per such request for a minute or more."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    port = await gateway({"services": [{"name": "svc", "url": f"http://127.0.0.1:{echo.port}", "routes": [
        {"paths": ["/"], "plugins": [{"name": "request-size-limiting", "config": {"allowed_payload_size": 10}},
                                     {"name": "request-termination", "config": {"status_code": 403}}]}]}]})
    gc.collect()  # (what earlier tests' gateways left)
    before = spooled_files()
    body = b"x" * 100_000
    with trio.fail_after(TIMEOUT):
        for _ in range(3):
            async with await Client.connect(port) as client:
                reply = await client.request("PUT", "/", body=[body[:50_000], body[50_000:]])  # chunked
            assert reply.status == 403
        await trio.testing.wait_all_tasks_blocked(0.05)
    assert spooled_files() == before, f"{spooled_files() - before} body files still open after their requests"
