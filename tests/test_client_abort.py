"""A client that leaves while its request waits on the upstream ends that request, as nginx does with
proxy_ignore_client_abort off (Kong's setting; ngx_http_upstream_check_broken_connection): the upstream connection
is closed, so its server stops working for no one, least-connections gives the count back, and the log says 499
with nothing sent. The gateway's sweeper looks every CLIENT_CHECK_S (gateway.http.timers)."""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path

import h11
import pytest
import trio
from backends import EchoBackend, _Backend, request, service, upstream, wait_until

from gateway.http.timers import CLIENT_CHECK_S

TIMEOUT = 10
NOTICED_WITHIN = CLIENT_CHECK_S * 2 + 0.5


class SilentBackend(_Backend):
    """Reads a request and answers nothing, or with `head` a head and the first chunk of a body; records when the
    gateway closed the connection (`closed_after`: seconds after the request came)."""

    def __init__(self, head: bool = False) -> None:
        super().__init__("silent")
        self.head = head
        self.closed_after: float | None = None

    async def handle_conn(self, stream: trio.SocketStream) -> None:
        if await self._read_request(stream, h11.Connection(h11.SERVER)) is None:
            return
        came = trio.current_time()
        if self.head:
            await stream.send_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        with trio.move_on_after(TIMEOUT):
            while await stream.receive_some(65536):
                pass
            self.closed_after = trio.current_time() - came


async def _leave(stream: trio.SocketStream, reset: bool) -> None:
    if reset:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await trio.aclose_forcefully(stream)


async def _first_log_line(path: Path) -> dict:
    await wait_until(lambda: path.exists() and path.read_text().strip(), "an access log line")
    return json.loads(path.read_text().splitlines()[0])


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "reset"])
async def test_a_client_that_leaves_before_the_response_head_gets_its_upstream_connection_closed(nursery, gateway,
                                                                                                reset):
    backend = SilentBackend()
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}", read_timeout=60000)]})
    with trio.fail_after(TIMEOUT):
        client = await trio.open_tcp_stream("127.0.0.1", port)
        await client.send_all(b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n")
        await wait_until(lambda: len(backend.requests) == 1, "the request upstream")
        await _leave(client, reset)
        await wait_until(lambda: backend.closed_after is not None, "the upstream connection closed")
    assert backend.closed_after < NOTICED_WITHIN  # type: ignore[operator]


async def test_a_client_that_leaves_before_the_response_head_is_logged_499_with_nothing_sent(nursery, gateway,
                                                                                           tmp_path):
    backend = SilentBackend()
    await nursery.start(backend.serve)
    log = tmp_path / "access.log"
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}", read_timeout=60000)]},
                         access_log=str(log))
    with trio.fail_after(TIMEOUT):
        client = await trio.open_tcp_stream("127.0.0.1", port)
        await client.send_all(b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n")
        await wait_until(lambda: len(backend.requests) == 1, "the request upstream")
        await _leave(client, False)
        response = (await _first_log_line(log))["response"]
    assert (response["status"], response["size"]) == (499, 0)


async def test_a_client_that_leaves_while_the_body_waits_gets_its_upstream_connection_closed(nursery, gateway):
    backend = SilentBackend(head=True)
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}", read_timeout=60000)]})
    with trio.fail_after(TIMEOUT):
        client = await trio.open_tcp_stream("127.0.0.1", port)
        await client.send_all(b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n")
        received = b""
        while b"first" not in received:
            received += await client.receive_some(65536)
        await _leave(client, False)
        await wait_until(lambda: backend.closed_after is not None, "the upstream connection closed")
    assert received.startswith(b"HTTP/1.1 200 ")


async def test_a_client_that_pipelines_its_next_request_while_waiting_is_not_taken_for_gone(nursery, gateway):
    backend = EchoBackend()
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}")]})
    with trio.fail_after(TIMEOUT):
        client = await trio.open_tcp_stream("127.0.0.1", port)
        await client.send_all(b"GET /one?delay=%.1f HTTP/1.1\r\nHost: gw\r\n\r\n" % NOTICED_WITHIN)
        await wait_until(lambda: backend.active == 1, "the first request upstream")
        await client.send_all(b"GET /two HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        received = b""
        while chunk := await client.receive_some(65536):
            received += chunk
    assert received.count(b"HTTP/1.1 200 ") == 2 and b"/two" in received


async def test_least_connections_gives_back_the_count_of_a_request_whose_client_left(nursery, gateway):
    heavy, light = EchoBackend("heavy"), EchoBackend("light")
    for backend in (heavy, light):
        await nursery.start(backend.serve)
    port = await gateway({"services": [service("s", "http://u", read_timeout=60000)],
                          "upstreams": [upstream("u", [heavy.port, light.port], [100, 60],
                                                 algorithm="least-connections")]})
    with trio.fail_after(TIMEOUT):
        client = await trio.open_tcp_stream("127.0.0.1", port)
        await client.send_all(b"GET /x?hold=1 HTTP/1.1\r\nHost: gw\r\n\r\n")  # the heavier target takes it
        await wait_until(lambda: heavy.active == 1, "the request held by the heavy target")
        await _leave(client, False)
        await trio.sleep(NOTICED_WITHIN)
        reply = await request(port, "GET", "/y")
    assert reply.header("x-backend") == "heavy"  # nothing in flight: (0 + 1) / 100 < (0 + 1) / 60
