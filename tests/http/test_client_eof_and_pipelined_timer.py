"""A client that closes (or half-closes) mid-request gets no answer, its request logged 400, as nginx 1.27.1 (Kong
3.9.3's) terminates it; a next request's head that began in the read of the one before it waits under
header_timeout, as nginx starts that request at once, not under keepalive_timeout."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from backends import EchoBackend, log_lines, read_head, read_to_end, service

from gateway.http.codec import NEED_DATA, ProtocolError
from gateway.http.codecs import codec_classes

GET = b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n"
PARTIALS = {
    "mid-request-line": b"GET /x HTT",
    "mid-headers": b"GET /x HTTP/1.1\r\nHost: t\r\n",
    "mid-length-body": b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc",
    "mid-chunked-body": b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
}


def _error_at_eof(codec: str, partial: bytes) -> ProtocolError:
    """What the server codec raises for `partial` followed by the client's close (each read's events taken)."""
    server = codec_classes(codec)[0]()
    with pytest.raises(ProtocolError) as caught:
        for data in (partial, b""):
            server.receive_data(data)
            while server.next_event() is not NEED_DATA:
                pass
    return caught.value


def _after_first_answer(codec: str, pipelined: bytes) -> Any:
    """A server codec that read GET with `pipelined` after it, answered it and is waiting for the next request."""
    server = codec_classes(codec)[0]()
    server.receive_data(GET + pipelined)
    while server.next_event() is not NEED_DATA:
        pass
    server.response_head(200, [(b"content-length", b"0")])
    server.end()
    server.start_next_cycle()
    assert server.next_event() is NEED_DATA
    return server


async def _echo_gateway(nursery: trio.Nursery, gateway: Any, route: dict[str, Any] | None = None,
                        **settings: Any) -> int:
    echo = EchoBackend()
    await nursery.start(echo.serve)
    return await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}", [route or {"paths": ["/"]}])]},
                         **settings)


async def _half_close_and_read(port: int, data: bytes, first: bytes = b"", pause: float = 0.0) -> bytes:
    """Send `first` and read its answer's head, send `data`, wait `pause`, half-close: what came after the head."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        with trio.fail_after(4):
            if first:
                await stream.send_all(first)
                await read_head(stream)
            await stream.send_all(data)
            await trio.sleep(pause)
            await stream.send_eof()
            received, _ = await read_to_end(stream)
    finally:
        await trio.aclose_forcefully(stream)
    return received


async def _logged(log: Any, n: int) -> list[int]:
    return [line["response"]["status"] for line in await log_lines(log, n)]


# --- the codecs -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("partial", PARTIALS.values(), ids=PARTIALS.keys())
def test_a_request_cut_by_the_clients_close_is_a_cut_400(http_codec: str, partial: bytes) -> None:
    """The codecs mark a request the client's EOF cut (its head or its body) as cut, nothing sent wrong in itself:
    nginx's "client prematurely closed connection" (ngx_http_request.c:1594-1603, ngx_http_request_body.c:386-393),
    a 400 no one is answered."""
    error = _error_at_eof(http_codec, partial)
    assert (error.status, error.cut) == (400, True)


def test_a_bad_head_before_the_clients_close_is_no_cut(http_codec: str) -> None:
    """A head refused for what it says stays a 400 to answer (nginx parses the bytes it read before it sees EOF)."""
    error = _error_at_eof(http_codec, b"GET /x HTTP/1.1\r\nHost: t\r\n\x00bad: x\r\n\r\n")
    assert (error.status, error.cut) == (400, False)


BROKEN_BEFORE_EOF = {  # bytes nginx refuses as it reads them, their line or head not ended when the client closes
    "nul-in-header-name": b"GET /x HTTP/1.1\r\nHost: t\r\nX\x00Y: z",  # sw_name: ch <= 0x20
    "space-in-header-name": b"GET /x HTTP/1.1\r\nHost: t\r\nX Y: z",
    "header-line-starting-with-colon": b"GET /x HTTP/1.1\r\nHost: t\r\n:a",  # sw_start: ':'
    "nul-in-header-value": b"GET /x HTTP/1.1\r\nHost: t\r\nX: a\x00b",  # sw_value: '\\0'
    "control-in-target": b"GET /x\x01y HTTP/1.1\r\nHost: t",  # sw_check_uri: ch < 0x20
    "control-in-unended-target": b"GET /x\x01y",
    "bad-chunk-size": b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz",  # sw_chunk_start
    "bad-chunk-end": b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n1\r\naX",  # sw_after_data
}


@pytest.mark.parametrize("partial", BROKEN_BEFORE_EOF.values(), ids=BROKEN_BEFORE_EOF.keys())
def test_bytes_refused_before_the_clients_close_are_no_cut(http_codec: str, partial: bytes) -> None:
    """nginx refuses these bytes as it parses them (ngx_http_parse_request_line, ngx_http_parse_header_line,
    ngx_http_parse_chunked), with a 400 it answers before it reads the client's EOF: no cut, whatever the codec."""
    error = _error_at_eof(http_codec, partial)
    assert (error.status, error.cut) == (400, False)


@pytest.mark.parametrize("partial", BROKEN_BEFORE_EOF.values(), ids=BROKEN_BEFORE_EOF.keys())
def test_bytes_refused_before_their_line_ends_are_refused_at_once(http_codec: str, partial: bytes) -> None:
    """...and before the line they are in ends (llhttp refuses them at the byte; the h11 codec checks a head and
    a chunk line as they come, h11 itself only once they end)."""
    server = codec_classes(http_codec)[0]()
    server.receive_data(partial)
    with pytest.raises(ProtocolError) as caught:
        while server.next_event() is not NEED_DATA:
            pass
    assert caught.value.status == 400


@pytest.mark.parametrize(("pipelined", "begun"), [(b"GET /b HTT", True), (b"G", True), (b"", False),
                                                  (b"\r\n", False)], ids=["part", "one-byte", "none", "crlf"])
def test_the_codecs_tell_a_next_head_begun_in_the_last_read(http_codec: str, pipelined: bytes, begun: bool) -> None:
    """head_begun: bytes of the next head came with the request before it (nginx's b->pos < b->last in
    ngx_http_set_keepalive, ngx_http_request.c:3118-3195); the empty lines before a request line are no head."""
    assert _after_first_answer(http_codec, pipelined).head_begun is begun


# --- end to end -----------------------------------------------------------------------------------------------------


async def test_a_client_that_half_closes_mid_head_is_closed_without_an_answer(nursery, gateway, tmp_path):  # noqa: ANN001
    """nginx 1.27.1 ngx_http_request.c:1594-1603: a read of 0 bytes mid-head is "client prematurely closed
    connection": c->error = 1 and ngx_http_finalize_request(r, 400), which with c->error terminates the request
    (ngx_http_request.c:2531-2541) without sending anything; the 400 is the log's alone (ngx_http_request.c:3741).
    It was a 400 page."""
    log = tmp_path / "access.log"
    port = await _echo_gateway(nursery, gateway, header_timeout_s=2, access_log=str(log))
    received = await _half_close_and_read(port, PARTIALS["mid-headers"])
    assert (received, await _logged(log, 1)) == (b"", [400])


async def test_a_client_that_half_closes_after_a_broken_header_line_gets_its_400(nursery, gateway):  # noqa: ANN001
    """nginx answered the bad line as it read it, long before the client's close (ngx_http_request.c:1541-1548)."""
    port = await _echo_gateway(nursery, gateway)
    received = await _half_close_and_read(port, BROKEN_BEFORE_EOF["nul-in-header-name"], pause=0.3)
    assert received.startswith(b"HTTP/1.1 400 "), received


async def test_a_client_that_half_closes_mid_head_of_a_second_request_is_closed_without_an_answer(
        nursery, gateway, tmp_path):  # noqa: ANN001
    """The same for a kept connection's next request (ngx_http_keepalive_handler creates it with its first bytes and
    reads its head as a first one's, ngx_http_request.c:3315-3441). It was a 400 page."""
    log = tmp_path / "access.log"
    port = await _echo_gateway(nursery, gateway, header_timeout_s=2, access_log=str(log))
    first = b"GET /a?status=204 HTTP/1.1\r\nHost: t\r\n\r\n"  # (an answer without a body: its head is all of it)
    received = await _half_close_and_read(port, b"GET /b HTTP/1.1\r\n", first=first)
    assert (received, await _logged(log, 2)) == (b"", [204, 400])


async def test_a_client_that_half_closes_mid_body_is_closed_without_an_answer(nursery, gateway, tmp_path):  # noqa: ANN001
    """nginx 1.27.1 ngx_http_request_body.c:386-393: a read of 0 bytes mid-body (proxy_request_buffering on, Kong's)
    sets c->error = 1 and returns 400, and ngx_http_finalize_request terminates the request without an answer
    (ngx_http_request.c:2531-2541), logged 400. It was a 400 page."""
    log = tmp_path / "access.log"
    port = await _echo_gateway(nursery, gateway, client_body_timeout_s=2, access_log=str(log))
    received = await _half_close_and_read(port, PARTIALS["mid-length-body"])
    assert (received, await _logged(log, 1)) == (b"", [400])


async def test_a_client_that_half_closes_mid_unbuffered_body_is_closed_without_an_answer(nursery, gateway,  # noqa: ANN001
                                                                                        tmp_path):
    """request_buffering false (proxy_request_buffering off): while the body goes upstream the client's reads are
    ngx_http_upstream_read_request_handler's (ngx_http_upstream.c:2244, 2349-2367), whose ngx_http_read_unbuffered_
    request_body returns the 400 of a read of 0 (ngx_http_request_body.c:386-393, c->error set);
    ngx_http_upstream_finalize_request passes it on unanswered (ngx_http_upstream.c:4627-4632: no header sent) and
    ngx_http_finalize_request terminates it: no answer, logged 400, not 499. It was a 400 page."""
    log = tmp_path / "access.log"
    route = {"paths": ["/"], "request_buffering": False}
    port = await _echo_gateway(nursery, gateway, route, client_body_timeout_s=2, access_log=str(log))
    received = await _half_close_and_read(port, PARTIALS["mid-length-body"], pause=0.3)  # (its upstream has it)
    assert (received, await _logged(log, 1)) == (b"", [400])


async def test_a_pipelined_partial_head_gets_header_timeout_not_keepalive_timeout(nursery, gateway,  # noqa: ANN001
                                                                                  tmp_path):
    """nginx 1.27.1 ngx_http_set_keepalive (ngx_http_request.c:3118-3195): bytes of a next request already read
    with the previous one start a request at once ("reading client pipelined request line"), whose reads wait under
    client_header_timeout (ngx_http_read_request_header, :1580-1583), not keepalive_timeout; when it fires the
    request is closed and logged 408. It waited keepalive_timeout (idle) and logged nothing."""
    log = tmp_path / "access.log"
    port = await _echo_gateway(nursery, gateway, header_timeout_s=1, keepalive_timeout_s=4, access_log=str(log))
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        with trio.fail_after(6):
            await stream.send_all(GET + b"GET /b HTTP/1.1\r\nHost: t\r\n")
            await read_head(stream)
            start = trio.current_time()
            await read_to_end(stream)
            closed_after = trio.current_time() - start
    finally:
        await trio.aclose_forcefully(stream)
    assert (closed_after < 2.0, await _logged(log, 2)) == (True, [200, 408])
