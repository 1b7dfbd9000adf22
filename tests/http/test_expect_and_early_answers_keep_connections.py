"""An answer the gateway gives before it has read the request body (no route's 404, key-auth's 401,
request-size-limiting's 413/417) keeps the connection, as Kong's answers through kong.response.exit do: ngx.print then
ngx.exit (kong/pdk/response.lua:754, 809), whose last buffer goes through lua-nginx-module's
ngx_http_lua_send_chain_link(r, ctx, NULL) (v0.10.26, src/ngx_http_lua_util.c:611-619), which calls
ngx_http_discard_request_body (nginx 1.27.1, src/http/ngx_http_request_body.c:630-700): a client that sent
`Expect: 100-continue` gets its `HTTP/1.1 100 Continue` there (ngx_http_test_expect, :653, 938-976; written to the
socket at once, so before the final head, which waits in the write filter), the body is read and dropped within
lingering_time / lingering_timeout, and the connection serves the next request. The gateway's 100 goes in the
answer's own write, and only while more of the body is to come (README: "a 100 Continue goes only when the gateway
has to wait for the body"); the reading and dropping is the connection loop's (server._drain_request)."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from backends import EchoBackend, service
from exchange_double import exchange_of

from gateway.http import server
from gateway.http.codec import ServerCodec
from gateway.http.codec_h11 import H11Server
from gateway.http.codec_llhttp import LlhttpServer

CODECS = pytest.mark.parametrize("codec_cls", [H11Server, LlhttpServer], ids=["h11", "llhttp"])
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
TIMEOUT = 5


# ---- unit level: Exchange.send_head ---------------------------------------------------------------------------------



def _post(*headers: bytes) -> bytes:
    return b"POST /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n"


@CODECS
async def test_an_answer_before_a_body_still_to_come_goes_after_a_100_continue_in_one_write(
        codec_cls: type[ServerCodec]) -> None:
    """The discard's ngx_http_test_expect (ngx_http_request_body.c:653, 938-976) sends `100 Continue` before the
    final head; the connection is kept (no `Connection: close`) and the body is read after the answer."""
    ex = exchange_of(codec_cls, _post(b"Content-Length: 3"), [b"abc"])
    await ex.respond(404, b"{}")
    writes = ex.conn.writes  # type: ignore[attr-defined]
    assert len(writes) == 1 and writes[0].startswith(CONTINUE + b"HTTP/1.1 404 "), writes
    assert b"connection: close" not in writes[0].lower()
    assert (await ex.receive_body(), await ex.receive_body()) == (b"abc", None)
    assert ex.conn.writes == writes  # type: ignore[attr-defined]  # (never a 100 after the final answer)
    assert ex._codec.keep_alive


@CODECS
@pytest.mark.parametrize("raw", [
    b"GET /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
    _post(b"Content-Length: 0"),
    _post(b"Content-Length: 3") + b"abc",
    _post(b"Transfer-Encoding: chunked") + b"3\r\nabc\r\n0\r\n\r\n",
], ids=["no-length", "length-0", "whole-with-head", "chunked-whole-with-head"])
async def test_an_answer_to_an_expect_request_with_no_body_to_come_has_no_100_and_keeps_the_connection(
        codec_cls: type[ServerCodec], raw: bytes) -> None:
    """No body to wait for: no 100 (RFC 9110 10.1.1 lets a server that has the content omit it; nginx sends one
    there too, the README says so), and the request is over with its answer: nothing is left to read, the
    connection goes on; what came of the body is still there for a read."""
    ex = exchange_of(codec_cls, raw)
    await ex.respond(401, b"{}")
    writes = ex.conn.writes  # type: ignore[attr-defined]
    assert len(writes) == 1 and writes[0].startswith(b"HTTP/1.1 401 "), writes
    assert b"connection: close" not in writes[0].lower()
    assert ex.request_done and ex._codec.keep_alive
    body = await ex.receive_body()
    assert (body or b"", await ex.receive_body()) == (b"abc" if b"abc" in raw else b"", None)


@CODECS
async def test_an_answer_that_ends_the_connection_invites_no_body_with_a_100(codec_cls: type[ServerCodec]) -> None:
    """An answer the connection closes with (here the last of keepalive_requests) has no 100 before it: the body
    it would invite is only read by the lingering close."""
    ex = exchange_of(codec_cls, _post(b"Content-Length: 3"))
    ex.close_after = True
    await ex.respond(404, b"{}")
    (write,) = ex.conn.writes  # type: ignore[attr-defined]
    assert write.startswith(b"HTTP/1.1 404 ") and b"connection: close" in write.lower()


@CODECS
async def test_an_answer_to_an_expect_request_whose_body_came_broken_closes_without_a_100(
        codec_cls: type[ServerCodec]) -> None:
    """A chunked body broken in what came with the head cannot be discarded (nginx: the discard filter's 400, the
    connection closed): the answer says close, and no 100 invites the rest."""
    ex = exchange_of(codec_cls, _post(b"Transfer-Encoding: chunked") + b"zz\r\n")
    await ex.respond(404, b"{}")
    (write,) = ex.conn.writes  # type: ignore[attr-defined]
    assert write.startswith(b"HTTP/1.1 404 ") and b"connection: close" in write.lower()
    assert ex.close_after


# ---- end to end: a gateway in this process --------------------------------------------------------------------------

async def _routes(nursery: trio.Nursery, gateway: Any) -> int:
    """A gateway with /b/ proxied, /k/ behind key-auth, /l/ under request-size-limiting (10 bytes), /r/ under its
    require_content_length; anything else has no route."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    return await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}", [
        {"name": "b", "paths": ["/b/"]},
        {"name": "k", "paths": ["/k/"], "plugins": [{"name": "key-auth"}]},
        {"name": "l", "paths": ["/l/"], "plugins": [{"name": "request-size-limiting",
                                                      "config": {"allowed_payload_size": 10, "size_unit": "bytes"}}]},
        {"name": "r", "paths": ["/r/"], "plugins": [{"name": "request-size-limiting",
                                                      "config": {"require_content_length": True}}]},
    ])]})


def _req(method: str, target: str, *headers: str, body: bytes = b"", version: str = "HTTP/1.1") -> bytes:
    head = f"{method} {target} {version}\r\nHost: a\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n"
    return head.encode() + body


NEXT = _req("GET", "/b/next")


class _Reader:
    """Reads answers off a client's stream: (interim statuses, status, lower-cased headers) of each."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream, self.buf = stream, b""

    async def _fill(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            raise EOFError(self.buf)
        self.buf += data

    async def answer(self) -> tuple[list[int], int, dict[bytes, bytes]]:
        interim: list[int] = []
        while True:
            while b"\r\n\r\n" not in self.buf:
                await self._fill()
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            lines = head.split(b"\r\n")
            status = int(lines[0].split()[1])
            headers = {k.strip().lower(): v.strip().lower() for k, _, v in (h.partition(b":") for h in lines[1:])}
            if status >= 200:
                break
            interim.append(status)
        length = int(headers.get(b"content-length", b"0"))
        while len(self.buf) < length:
            await self._fill()
        self.buf = self.buf[length:]
        return interim, status, headers

    async def early(self, seconds: float = 0.3) -> bytes:
        """What came within `seconds` (the client waiting for its 100 before it sends the body)."""
        with trio.move_on_after(seconds):
            await self._fill()
        return self.buf


@pytest.mark.parametrize("first,status", [
    (_req("GET", "/nowhere", "Expect: 100-continue"), 404),
    (_req("POST", "/nowhere", "Expect: 100-continue", "Content-Length: 0"), 404),
    (_req("POST", "/nowhere", "Expect: 100-continue", "Content-Length: 3", body=b"abc"), 404),
    (_req("POST", "/k/x", "Expect: 100-continue", "Content-Length: 3", body=b"abc"), 401),
    (_req("POST", "/l/x", "Expect: 100-continue", "Content-Length: 20", body=b"x" * 20), 417),
], ids=["404-no-body", "404-length-0", "404-body-with-head", "key-auth-401-body-with-head", "size-limit-417"])
async def test_an_expect_request_answered_before_its_body_keeps_the_connection_for_a_pipelined_one(
        nursery: trio.Nursery, gateway: Any, first: bytes, status: int) -> None:
    """Kong's kong.response.exit discards the body and keeps the connection (ngx_http_lua_util.c:611-619 ->
    ngx_http_discard_request_body): the request pipelined after it is answered. (It was: `Connection: close`
    and the pipelined GET dropped, whenever Expect: 100-continue came and the body was not read.)"""
    port = await _routes(nursery, gateway)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    with trio.fail_after(TIMEOUT):
        await stream.send_all(first + NEXT)
        reader = _Reader(stream)
        _, got, headers = await reader.answer()
        assert (got, headers.get(b"connection")) == (status, None)
        assert (await reader.answer())[1] == 200
    await stream.aclose()


@pytest.mark.parametrize("target,status", [("/nowhere", 404), ("/k/x", 401), ("/l/x", 417)])
async def test_a_client_waiting_for_its_100_gets_it_before_the_early_answer_and_keeps_the_connection(
        nursery: trio.Nursery, gateway: Any, target: str, status: int) -> None:
    """The client waits for `100 Continue` (curl does, for a large body): Kong sends it, then the answer (the
    discard's ngx_http_test_expect, ngx_http_request_body.c:653, 938-976), reads the body and serves the next
    request. (It was: the answer with `Connection: close`, and a FIN before the body.)"""
    port = await _routes(nursery, gateway)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    with trio.fail_after(TIMEOUT):
        await stream.send_all(_req("POST", target, "Expect: 100-continue", "Content-Length: 30"))
        reader = _Reader(stream)
        assert (await reader.early()).startswith(CONTINUE + b"HTTP/1.1 %d " % status)
        await stream.send_all(b"x" * 30 + NEXT)
        interim, got, headers = await reader.answer()
        assert (interim, got, headers.get(b"connection")) == ([100], status, None)
        assert (await reader.answer())[1] == 200
    await stream.aclose()


@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
async def test_a_request_size_limiting_413_keeps_the_connection(nursery: trio.Nursery, gateway: Any,
                                                                http_codec: str, version: str) -> None:
    """request-size-limiting answers kong.response.error(413) (kong/plugins/request-size-limiting/handler.lua:31-39):
    the same exit, which discards the body and keeps the connection (an HTTP/1.0 client's that asked for
    keep-alive too). nginx's keepalive = 0 for a 413 (ngx_http_special_response.c:428-438) is not on this path: the
    head went out through ngx.print, and ngx.exit(413) after it is ngx.exit(200) (lua-nginx-module v0.10.26,
    ngx_http_lua_control.c:436-450). (It was: `Connection: close`, the pipelined GET dropped.)"""
    if version == "HTTP/1.0" and http_codec == "h11":
        pytest.skip("h11 has no HTTP/1.0 keep-alive (README)")
    port = await _routes(nursery, gateway)
    keep = ("Connection: keep-alive",) if version == "HTTP/1.0" else ()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    with trio.fail_after(TIMEOUT):
        await stream.send_all(_req("POST", "/l/x", *keep, "Content-Length: 20", body=b"x" * 20, version=version) + NEXT)
        reader = _Reader(stream)
        _, got, headers = await reader.answer()
        assert (got, headers.get(b"connection", b"keep-alive")) == (413, b"keep-alive")
        assert (await reader.answer())[1] == 200
    await stream.aclose()


async def test_a_request_size_limiting_411_keeps_the_connection(nursery: trio.Nursery, gateway: Any) -> None:
    """require_content_length's 411 is kong.response.error(411) too (request-size-limiting/handler.lua:49-50): the
    pipelined request after it is answered. (It was: `Connection: close`, the pipelined GET dropped.)"""
    port = await _routes(nursery, gateway)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    with trio.fail_after(TIMEOUT):
        await stream.send_all(_req("GET", "/r/x") + NEXT)
        reader = _Reader(stream)
        _, got, headers = await reader.answer()
        assert (got, headers.get(b"connection")) == (411, None)
        assert (await reader.answer())[1] == 200
    await stream.aclose()


async def test_a_413_to_a_body_still_coming_keeps_the_connection_once_the_body_is_read(
        nursery: trio.Nursery, gateway: Any) -> None:
    """A body that comes after the 413 is read and dropped (the discard's ngx_http_read_discarded_request_body), then
    the next request is served on the same connection."""
    port = await _routes(nursery, gateway)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    with trio.fail_after(TIMEOUT):
        await stream.send_all(_req("POST", "/l/x", "Content-Length: 100000"))
        reader = _Reader(stream)
        assert (await reader.answer())[1] == 413
        await stream.send_all(b"x" * 100000 + NEXT)
        assert (await reader.answer())[1] == 200
    await stream.aclose()


async def _until_closed(stream: trio.SocketStream, sending: bool) -> None:
    """Read until the gateway ends the connection (EOF or reset), the client sending body bytes every 0.05 s
    meanwhile (`sending`) or nothing."""
    async def send() -> None:
        while sending:
            await stream.send_all(b"x" * 1024)
            await trio.sleep(0.05)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            while await stream.receive_some(65536):
                pass
            nursery.cancel_scope.cancel()
    except* (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


@pytest.mark.parametrize("sending", [False, True], ids=["client-stops", "client-trickles"])
async def test_the_body_dropped_after_an_early_answer_is_read_within_the_lingering_bounds(
        nursery: trio.Nursery, gateway: Any, monkeypatch: pytest.MonkeyPatch, sending: bool) -> None:
    """A 1 GiB body declared after a 417 (the client sent its 100's body and more) is read and dropped only while
    the client keeps sending (lingering_timeout) and for at most lingering_time, then the connection closes, as
    nginx's discard is bounded (ngx_http_discarded_request_body_handler, ngx_http_request_body.c:700-770;
    ngx_http_finalize_connection arms lingering_time for a discard). Bounds shortened here: 0.3 s and 1 s."""
    monkeypatch.setattr(server, "LINGER_TIMEOUT_S", 0.3)
    monkeypatch.setattr(server, "LINGER_TIME_S", 1.0)
    port = await _routes(nursery, gateway)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    started = trio.current_time()
    with trio.fail_after(TIMEOUT):
        await stream.send_all(_req("POST", "/l/x", "Expect: 100-continue", f"Content-Length: {1 << 30}"))
        reader = _Reader(stream)
        assert (await reader.early()).startswith(CONTINUE + b"HTTP/1.1 417 ")
        await _until_closed(stream, sending)
    took = trio.current_time() - started
    assert (0.3 if not sending else 1.0) < took < 3.0, took
    await trio.aclose_forcefully(stream)
