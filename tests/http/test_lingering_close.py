"""nginx's lingering close: an answer given before the request body was read (413 of a size limit, 401 of an
authentication plugin) reaches a client that is still uploading. Closing a socket with unread input sends a reset,
which can destroy the answer in the client's kernel before the client reads it; so the gateway ends its side (FIN)
and reads and drops what the client still sends, bounded in time, before closing."""

from __future__ import annotations

import pytest
import trio
from backends import EchoBackend, parse_raw_response, service

from gateway.http import server

TIMEOUT = 20
BODY = 8 * 1024 * 1024  # far past what the kernel's buffers hold on either side


async def upload(port: int, head: bytes, size: int) -> tuple[bytes, bool]:
    """Send `head` and a body of `size` bytes, then read the answer, as urllib3 (requests) and many clients do:
    (everything received, whether the upload failed on a reset, which such a client reports instead of the answer)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    received = b""
    reset = False
    with trio.fail_after(TIMEOUT):
        try:
            await stream.send_all(head)
            chunk = b"x" * 65536
            for _ in range(size // len(chunk)):
                await stream.send_all(chunk)
        except trio.BrokenResourceError:
            reset = True
        try:
            while data := await stream.receive_some(65536):
                received += data
        except trio.BrokenResourceError:
            pass
    await stream.aclose()
    return received, reset


@pytest.fixture
async def limited(nursery, gateway):  # noqa: ANN201
    echo = EchoBackend()
    await nursery.start(echo.serve)
    return await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}", [{"paths": ["/"]}])],
                          "plugins": [{"name": "request-size-limiting",
                                       "config": {"allowed_payload_size": 1, "size_unit": "kilobytes"}}]})


async def test_a_413_before_the_body_reaches_a_client_still_uploading(limited):
    received, reset = await upload(limited, b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % BODY,
                                   BODY)
    assert not reset
    status, headers, body = parse_raw_response(received)
    assert status == 413 and b"Request size limit exceeded" in body
    assert headers["connection"] == "close"


async def test_a_413_mid_chunked_body_reaches_a_client_still_uploading(limited):
    head = b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10000\r\n"
    received, reset = await upload(limited, head, BODY)  # (one chunk's head: the rest is its data and more)
    assert not reset
    assert parse_raw_response(received)[0] == 413


async def test_lingering_ends_when_the_client_stops_sending(nursery, gateway, monkeypatch):
    """nginx's lingering_timeout: a client that goes quiet without closing is closed after it (its next bytes then
    meet a reset)."""
    monkeypatch.setattr(server, "LINGER_TIMEOUT_S", 0.3)
    echo = EchoBackend()
    await nursery.start(echo.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}", [{"paths": ["/"]}])],
                          "plugins": [{"name": "request-size-limiting",
                                       "config": {"allowed_payload_size": 1, "size_unit": "kilobytes"}}]})
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    with trio.fail_after(TIMEOUT):
        await stream.send_all(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 100_000)
        received = b""
        while data := await stream.receive_some(65536):  # the answer, then the gateway's FIN
            received += data
        assert parse_raw_response(received)[0] == 413
        await stream.send_all(b"x" * 1000)  # still read and dropped: no reset
        await trio.sleep(1.0)  # quiet for longer than lingering_timeout: the gateway closed
        with pytest.raises(trio.BrokenResourceError):
            for _ in range(10):
                await stream.send_all(b"x")
                await trio.sleep(0.05)
    await stream.aclose()
