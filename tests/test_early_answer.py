"""An upstream that answers before it has read the request body (an early 413 or 401, the rest of the body left
unread, the connection kept open) has that answer relayed, as nginx does: ngx_http_upstream_connect makes
ngx_http_upstream_process_header the read handler from the connect on (src/http/ngx_http_upstream.c,
"u->read_event_handler = ngx_http_upstream_process_header;"), so the head is read while the body is still blocked in
ngx_http_upstream_send_request (NGX_AGAIN), and ngx_http_upstream_send_request_handler stops writing once the head was
sent on ("if (u->header_sent && !u->conf->preserve_output) ... dummy_handler"). The bodies here are far larger than
the loopback socket buffers take while the upstream reads nothing."""

from __future__ import annotations

import socket

import pytest
import trio
from backends import _Backend, service

from gateway.http.codecs import codec_classes
from gateway.http.net import Conn
from gateway.http.pool import Answered, Pool, UpstreamConn

BODY = 32 << 20
WRITE_TIMEOUT_MS = 1500
ANSWER = b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n\r\nbig!"
ANSWER_CLOSE = b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbig!"


class EarlyAnswer(_Backend):
    """Reads a request head; to one for /upload answers 413 at once and reads nothing more (the connection stays
    open, kept alive as far as the answer says), to one for /refuse the same and closes; any other request is read
    whole and answered 200."""

    def __init__(self) -> None:
        super().__init__("early")
        self.heads: list[bytes] = []

    async def serve(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # small: the gateway's writes block sooner
        await sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        self.port = sock.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started(self.port)
            await trio.serve_listeners(self._on_conn, [trio.SocketListener(sock)], handler_nursery=nursery)

    async def handle_conn(self, stream: trio.SocketStream) -> None:
        data = b""
        while True:
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                data += chunk
            head, _, data = data.partition(b"\r\n\r\n")
            self.heads.append(head.split(b"\r\n", 1)[0])
            if b" /upload " in head:
                await stream.send_all(ANSWER)
                await trio.sleep(30)
                return
            if b" /refuse " in head:  # answered, then closed
                await stream.send_all(ANSWER_CLOSE)
                return
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


async def _read_response(stream: trio.SocketStream, received: bytes = b"") -> tuple[bytes, bytes]:
    """(the response read, what came after it) of a response with a Content-Length, b"" at EOF or after 5 s."""
    with trio.move_on_after(5):
        while True:
            head, sep, rest = received.partition(b"\r\n\r\n")
            if sep:
                length = int(next((line.split(b":", 1)[1] for line in head.split(b"\r\n")
                                   if line.lower().startswith(b"content-length:")), b"0"))
                if len(rest) >= length:
                    return head + sep + rest[:length], rest[length:]
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            received += chunk
    return received, b""


async def _upload(stream: trio.SocketStream, method: bytes = b"POST") -> bytes:
    """Send a BODY-byte request on `stream` (never minding whether the gateway reads it all) and return the response
    to it; the upload goes on meanwhile, and is given up once the response is in."""

    async def send() -> None:
        try:
            await stream.send_all(b"%b /upload HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % (method, BODY))
            piece = b"x" * (1 << 20)
            for _ in range(BODY >> 20):
                await stream.send_all(piece)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        response, _ = await _read_response(stream)
        nursery.cancel_scope.cancel()
    return response


async def _start(nursery: trio.Nursery, gateway, buffering: bool = True, **fields) -> tuple[EarlyAnswer, int]:  # noqa: ANN001
    backend = EarlyAnswer()
    await nursery.start(backend.serve)
    fields.setdefault("retries", 0)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{backend.port}",
                                               [{"paths": ["/"], "request_buffering": buffering}],
                                               write_timeout=WRITE_TIMEOUT_MS, **fields)]})
    return backend, port


@pytest.mark.parametrize("buffering", [True, False], ids=["buffered", "unbuffered"])
async def test_an_answer_that_comes_before_the_body_was_read_is_relayed(nursery, gateway, buffering):
    """ngx_http_upstream_process_header reads the head while the body is still going out, and the answer goes to the
    client (not a 504 after write_timeout), whether the body was buffered first or streamed."""
    backend, port = await _start(nursery, gateway, buffering)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    response = await _upload(stream)
    await trio.aclose_forcefully(stream)
    assert response.startswith(b"HTTP/1.1 413 ") and response.endswith(b"\r\n\r\nbig!"), response[:80]


async def test_a_resendable_request_answered_early_is_not_sent_again(nursery, gateway):
    """proxy_next_upstream acts on a failure only (ngx_http_upstream_next); an upstream that answered has not failed,
    so a PUT it answered before reading its body goes nowhere else, however many retries the service allows."""
    backend, port = await _start(nursery, gateway, retries=2)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    response = await _upload(stream, b"PUT")
    await trio.aclose_forcefully(stream)
    assert (response[:13], backend.heads) == (b"HTTP/1.1 413 ", [b"PUT /upload HTTP/1.1"]), response[:80]


async def test_the_connection_of_an_early_answer_is_not_reused(nursery, gateway):
    """The rest of that request was never sent, so the upstream would read the next request as its body: the
    connection is closed, never pooled, even though the answer kept it alive."""
    backend, port = await _start(nursery, gateway)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    response = await _upload(stream)
    await stream.send_all(b"GET /small HTTP/1.1\r\nHost: a\r\n\r\n")
    second, _ = await _read_response(stream)
    await trio.aclose_forcefully(stream)
    assert (response[:13], second[:12]) == (b"HTTP/1.1 413 ", b"HTTP/1.1 200"), (response[:80], second[:80])
    assert backend.connections == 2


async def test_a_buffered_body_answered_early_leaves_the_client_connection_open(nursery, gateway):
    """With the body read whole before the upstream was asked, nothing is left unread on the client's side: the
    connection carries the client's next request, as nginx keeps it alive."""
    backend, port = await _start(nursery, gateway)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    response = await _upload(stream)
    await stream.send_all(b"GET /small HTTP/1.1\r\nHost: a\r\n\r\n")
    second, _ = await _read_response(stream)
    await trio.aclose_forcefully(stream)
    assert response.startswith(b"HTTP/1.1 413 ") and b"\r\nconnection: close\r\n" not in response.lower(), \
        response[:200]
    assert second.startswith(b"HTTP/1.1 200 ") and second.endswith(b"ok"), second[:80]


async def test_a_streamed_body_answered_early_ends_the_client_connection_after_the_answer(nursery, gateway):
    """The client is still sending a body nobody will read: ngx_http_finalize_connection turns keep-alive off while
    the request body is being read (r->reading_body) and closes after a lingering close; the gateway says so in the
    answer (Connection: close), so no request can follow on that connection."""
    backend, port = await _start(nursery, gateway, buffering=False)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    response = await _upload(stream)
    await trio.aclose_forcefully(stream)
    assert response.startswith(b"HTTP/1.1 413 ") and b"\r\nconnection: close\r\n" in response.lower(), response[:200]


async def _slow_upload(port: int, path: bytes) -> bytes:
    """The head of a 12-byte upload and its first 6 bytes, then nothing more: what the client gets meanwhile."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        await stream.send_all(b"POST %b HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\nabcdef" % path)
        with trio.fail_after(10):  # (the client's body timeout, 60 s, would answer otherwise)
            response, _ = await _read_response(stream)
        return response
    finally:
        await trio.aclose_forcefully(stream)


async def test_an_answer_while_a_slow_client_is_still_sending_its_body_is_relayed_at_once(nursery, gateway):
    """request_buffering: false, a client between two pieces of its body: nginx reads the upstream whenever it is
    readable (the read handler is ngx_http_upstream_process_header from the connect on), while ngx_http_upstream_
    send_request waits for the client's body (NGX_AGAIN), so the upstream's early answer reaches the client at once,
    not once the client sent the rest (a client that waits for an answer before it sends more)."""
    backend, port = await _start(nursery, gateway, buffering=False)
    response = await _slow_upload(port, b"/upload")
    assert response.startswith(b"HTTP/1.1 413 ") and response.endswith(b"\r\n\r\nbig!"), response[:80]
    assert b"\r\nconnection: close\r\n" in response.lower()  # the rest of the body is never read


async def test_an_upstream_that_answers_and_closes_while_the_client_still_sends_is_relayed_not_502(nursery, gateway):
    """The same with an upstream that closes after its answer: the answer is relayed, as by nginx, not the next
    piece of the body written into a closed connection (a 502)."""
    backend, port = await _start(nursery, gateway, buffering=False)
    response = await _slow_upload(port, b"/refuse")
    assert response.startswith(b"HTTP/1.1 413 ") and response.endswith(b"\r\n\r\nbig!"), response[:80]


@pytest.mark.parametrize("codec", ["h11", "llhttp"])
async def test_a_connection_answered_before_its_request_was_sent_is_never_pooled(codec):
    """Even when the request's end was framed already (a body sent from memory in one write), the answer that
    came first (UpstreamConn.heard) makes that request the connection's last: Pool.put closes it."""
    pool = Pool(codec_classes(codec)[1])
    ours, theirs = socket.socketpair()
    uc = UpstreamConn(Conn(ours), pool._codec_cls(), ("127.0.0.1", 1), pool)
    uc.codec.request_head(b"POST", b"/upload", [(b"host", b"a"), (b"content-length", b"1")])
    uc.codec.body(b"x")
    uc.codec.end()  # (the request framed to its end: the kernel took its head only, say)
    theirs.sendall(ANSWER)
    with pytest.raises(Answered) as answered:
        uc.heard()
    assert getattr(answered.value.event, "status", None) == 413
    assert uc.codec.take_body() == (b"big!", True)
    pool.put(uc, 0.0)
    assert (uc.conn.closed, pool.idle_count()) == (True, 0)
    theirs.close()
