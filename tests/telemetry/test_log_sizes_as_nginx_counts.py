"""The access log's request.size and response.size as nginx counts them in Kong 3.9.3: Kong's serializer writes
request.size = var.request_length and response.size = var.bytes_sent (kong/pdk/log.lua:902, 910), uri =
ctx.request_uri or var.request_uri (:860); the statsd, datadog and prometheus bandwidth metrics read the same sizes.

- $bytes_sent is c->sent (nginx release-1.27.1 src/http/ngx_http_variables.c:1784), which every c->send adds to
  (src/os/unix/ngx_send.c:44): the `100 Continue` of ngx_http_test_expect (ngx_http_request_body.c:964-966) too.
- $request_length counts a request head as nginx parses it (src/http/ngx_http_request.c): the request line once
  parsed (1124), each header line as parsed (1454; a line a header handler then refuses, a second Host, is counted
  first: 1487), the blank line as the head ends (1519); $request_uri is set once the URI is parsed too (1276-1290).
  A head nginx refuses is logged with what it had counted by then.
- A body read counts (ngx_http_request_body.c:120, 397); one discarded after the answer does not
  (ngx_http_read_discarded_request_body, :782-840, never touches request_length).

nginx source: `git -C /work/.mirror/nginx+nginx/repo show release-1.27.1:<path>`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import trio
from backends import EchoBackend, log_lines, service
from exchange_double import RecordingClient, exchange_of

from gateway.http import server
from gateway.http.codec import ProtocolError, ServerCodec
from gateway.http.codec_h11 import H11Server
from gateway.http.codec_llhttp import LlhttpServer
from gateway.http.server import Exchange, ServerSettings
from gateway.http.timers import ConnTimer, Phase
from gateway.telemetry.entry import Entry, request_size, summary

CODECS = pytest.mark.parametrize("codec_cls", [H11Server, LlhttpServer], ids=["h11", "llhttp"])
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
TIMEOUT = 5




def _written(ex: Exchange) -> int:
    return sum(map(len, ex.conn.writes))  # type: ignore[attr-defined]


# ---- response.size: the 100 Continue ---------------------------------------------------------------------------------

EXPECT = b"POST /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"


@CODECS
async def test_a_100_continue_sent_as_the_body_is_awaited_counts_in_response_size(
        codec_cls: type[ServerCodec]) -> None:
    """ngx_http_test_expect writes the 100 with c->send (ngx_http_request_body.c:964-966), which adds it to c->sent
    (ngx_send.c:44), $bytes_sent (ngx_http_variables.c:1784): Kong's response.size has its 25 bytes."""
    ex = exchange_of(codec_cls, EXPECT, [b"abc"])
    assert await ex.receive_body() == b"abc"
    assert ex.conn.writes == [CONTINUE]  # type: ignore[attr-defined]
    assert ex.sent == len(CONTINUE)
    await ex.respond(200, b"ok")
    assert ex.sent == _written(ex)


@CODECS
async def test_a_100_continue_in_the_answers_own_write_counts_in_response_size(codec_cls: type[ServerCodec]) -> None:
    """The 100 an answer before the body goes with (the discard's ngx_http_test_expect) is counted alike."""
    ex = exchange_of(codec_cls, EXPECT, [b"abc"])
    await ex.respond(404, b"{}")
    assert ex.conn.writes[0].startswith(CONTINUE)  # type: ignore[attr-defined]
    assert ex.sent == _written(ex)


async def test_the_access_log_has_the_100_continue_in_response_size(gateway: Any, nursery: trio.Nursery,
                                                                    tmp_path: Path) -> None:
    """End to end: the log line's response.size is every byte the client read, the 100 included."""
    backend = EchoBackend()
    await nursery.start(backend.serve)
    log = tmp_path / "access.log"
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{backend.port}")]}, access_log=str(log))
    read = 0
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(EXPECT.replace(b"/x", b"/x?reflect=1"))
        got = b""
        while CONTINUE not in got:
            got += await stream.receive_some(65536)
        await stream.send_all(b"abc")
        while not got.endswith(b"abc"):  # (the answer's body, the request's: its last bytes)
            got += await stream.receive_some(65536)
        read = len(got)
        await stream.aclose()
    (line,) = await log_lines(log, 1)
    assert line["response"]["size"] == read


# ---- request.size and uri of a refused head --------------------------------------------------------------------------


def _refused(codec_cls: type[ServerCodec], raw: bytes, cut: bool = False) -> ProtocolError:
    """The error a server codec refuses `raw` with (`cut`: the client closed after it)."""
    codec = codec_cls()
    try:
        codec.receive_data(raw)
        codec.next_event()
        if cut:
            codec.receive_data(b"")
            codec.next_event()
    except ProtocolError as e:
        return e
    raise AssertionError("the head was not refused")


def _logged(codec_cls: type[ServerCodec], raw: bytes, cut: bool = False) -> tuple[int, bytes]:
    """(request.size, uri) the log gives the refused head `raw`."""
    target, size = server._as_counted(_refused(codec_cls, raw, cut))
    return size, target


@CODECS
@pytest.mark.parametrize("raw", [
    b"GET / HTTP/1.1\r\nHost: h\r\nX\x01Y: 1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX Y: 1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n",
], ids=["control-in-name", "space-in-name", "nul-in-value"])
def test_a_header_line_nginx_cannot_parse_is_not_counted(codec_cls: type[ServerCodec], raw: bytes) -> None:
    """ngx_http_parse_header_line's NGX_HTTP_PARSE_INVALID_HEADER (ngx_http_parse.c:893-895, 962-965, 985-987)
    comes before ngx_http_request.c:1454 counts the line: the request line and `Host: h` are counted."""
    assert _logged(codec_cls, raw) == (16 + 9, b"/")


@CODECS
@pytest.mark.parametrize(("raw", "size"), [
    (b"GET / HTTP/1.1\r\nHost: h\r\nHost: h\r\nX: 1\r\n\r\n", 16 + 9 + 9),
    (b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\nX: y\r\n\r\n", 16 + 9 + 19 + 19),
    (b"GET / HTTP/1.1\r\nHost: a..b\r\nX: 1\r\n\r\n", 16 + 12),
    (b"GET / HTTP/1.1\r\nX@Y: 1\r\nHost: h\r\nHost: i\r\n\r\n", 16 + 8 + 9 + 9),
], ids=["second-host", "second-length", "invalid-host", "after-an-ignored-line"])
def test_a_header_line_a_handler_refuses_is_counted(codec_cls: type[ServerCodec], raw: bytes, size: int) -> None:
    """ngx_http_request.c:1454 counts a line before its header handler runs (1487): ngx_http_process_host and
    ngx_http_process_unique_header_line refuse a second Host or Content-Length, and a Host that is no host, with
    it counted; a line nginx ignores (an invalid name) is counted too; nothing after it."""
    assert _logged(codec_cls, raw) == (size, b"/")


@CODECS
@pytest.mark.parametrize("raw", [
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: abc\r\n\r\n",
    b"TRACE / HTTP/1.1\r\nHost: h\r\nAccept: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nAccept: x\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
], ids=["bad-length", "trace", "no-host", "no-header-line", "length-and-chunked"])
def test_a_check_of_the_whole_head_counts_all_of_it(codec_cls: type[ServerCodec], raw: bytes) -> None:
    """ngx_http_process_request_header's checks (a Content-Length ngx_atoof refuses, no Host, TRACE, ...) come after
    ngx_http_request.c:1519 counted the blank line: the whole head."""
    assert _logged(codec_cls, raw) == (len(raw), b"/")


@CODECS
@pytest.mark.parametrize("raw", [
    b"GET / HTTP/1.x\r\nHost: h\r\n\r\n",
    b"GET / HTTP/2.0\r\nHost: h\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
    b"G@T / HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /\x01 HTTP/1.1\r\nHost: h\r\n\r\n",
], ids=["bad-version", "version-2", "asterisk", "bad-method", "control-in-target"])
def test_a_refused_request_line_counts_nothing_and_has_no_uri(codec_cls: type[ServerCodec], raw: bytes) -> None:
    """ngx_http_parse_request_line refused the line: ngx_http_request.c:1124 (request_length) and
    ngx_http_process_request_uri ($request_uri) were never reached."""
    assert _logged(codec_cls, raw) == (0, b"")


@CODECS
@pytest.mark.parametrize("target", [b"/a%", b"/%2e%2e/x", b"/../x", b"http://h/a%zz"])
def test_a_uri_nginx_cannot_parse_counts_the_line_but_has_no_uri(codec_cls: type[ServerCodec], target: bytes) -> None:
    """The line was parsed and counted (ngx_http_request.c:1124); ngx_http_parse_complex_uri refused its URI before
    ngx_http_process_request_uri set $request_uri (1276-1290)."""
    line = b"GET %s HTTP/1.1\r\n" % target
    assert _logged(codec_cls, line + b"Host: h\r\n\r\n") == (len(line), b"")


@CODECS
@pytest.mark.parametrize(("raw", "size", "uri"), [
    (b"GET / HTTP/1.1\r\nHost: h\r\nX: 1", 16 + 9, b"/"),
    (b"GET / HTTP/1.1\r\nHo", 16, b"/"),
    (b"GET / HT", 0, b""),
], ids=["mid-line", "mid-first-line", "mid-request-line"])
def test_a_head_cut_by_the_client_counts_the_lines_that_ended(codec_cls: type[ServerCodec], raw: bytes, size: int,
                                                              uri: bytes) -> None:
    """A client that closes mid-head: nginx's 400 (ngx_http_read_request_header) with the lines it had parsed."""
    assert _logged(codec_cls, raw, cut=True) == (size, uri)


@CODECS
def test_a_head_cut_in_its_method_has_no_method(codec_cls: type[ServerCodec]) -> None:
    """nginx sets r->method at the space after the method (ngx_http_parse_request_line), so a head cut at `GE` has
    none, and ngx.req.get_method() (Kong's request.method, without its error page's KONG_UNEXPECTED) is ""."""
    codec = codec_cls()
    codec.receive_data(b"GE")
    codec.next_event()
    assert codec.request_line_so_far() == (b"", b"")
    assert _refused(codec_cls, b"GE", cut=True).method == b""


def test_a_refused_head_of_no_whole_request_line_has_no_size() -> None:
    """What the connection loop logs of a head no codec could size (no bytes noted), without a request line: 0,
    never an estimate of a line nginx did not count."""
    settings = ServerSettings(LlhttpServer)
    client: Any = RecordingClient([])
    ex = server._refused(client, LlhttpServer(), ConnTimer(math.inf, Phase.BUSY), settings, 408, b"", b"", 1.0)
    assert request_size(ex) == 0


@pytest.mark.parametrize(("raw", "size", "uri"), [
    (b"GET / HTTP/1.1\r\nHost: h\r\nX\x01Y: 1\r\n\r\n", 25, "/"),
    (b"GET /a% HTTP/1.1\r\nHost: h\r\n\r\n", 18, ""),
], ids=["header-line", "uri"])
async def test_the_access_log_gives_a_refused_head_nginxs_size_and_uri(gateway: Any, tmp_path: Path, raw: bytes,
                                                                       size: int, uri: str) -> None:
    """End to end: the connection loop logs the refused head as the codec sized it."""
    log = tmp_path / "access.log"
    port = await gateway({"services": [service("s", "http://127.0.0.1:9")]}, access_log=str(log))
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(raw)
        while await stream.receive_some(65536):
            pass
        await stream.aclose()
    (line,) = await log_lines(log, 1)
    assert (line["response"]["status"], line["request"]["size"], line["request"]["uri"]) == (400, size, uri)


async def test_a_head_that_timed_out_counts_its_request_line(gateway: Any, tmp_path: Path) -> None:
    """A 408 head (ngx_http_close_request(r, 408)): its request line, parsed (ngx_http_request.c:1124); the header
    line not yet ended is not counted (nor is a blank line it never sent)."""
    log = tmp_path / "access.log"
    port = await gateway({"services": [service("s", "http://127.0.0.1:9")]}, access_log=str(log),
                         header_timeout_s=0.3)
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: h")
        (line,) = await log_lines(log, 1)
        await stream.aclose()
    assert (line["response"]["status"], line["request"]["size"], line["request"]["uri"]) == (408, 16, "/")


# ---- request.size: a body discarded after the answer -----------------------------------------------------------------

POST = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n"
CHUNKED = b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"


@CODECS
@pytest.mark.parametrize(("head", "body"), [
    (POST, b"hello"),
    (CHUNKED, b"5\r\nhello\r\n0\r\n\r\n"),
], ids=["length", "chunked"])
@pytest.mark.parametrize("came", ["with-the-head", "after-the-answer"])
async def test_a_body_discarded_after_the_answer_is_not_in_request_size(codec_cls: type[ServerCodec], head: bytes,
                                                                        body: bytes, came: str) -> None:
    """Kong's exit (a 404 of no route, a plugin's 401) discards the body: ngx_http_read_discarded_request_body
    (ngx_http_request_body.c:782-840) reads it without touching request_length, so request.size is the head."""
    if codec_cls is LlhttpServer and head is CHUNKED and came == "with-the-head":
        pytest.skip("llhttp counts the framing of chunks that came in the head's read as it parses them (README)")
    ex = exchange_of(codec_cls, head + body, []) if came == "with-the-head" else exchange_of(codec_cls, head, [body])
    await ex.respond(404, b"{}")
    assert await server._drain_request(ex)
    assert ex.request_done
    assert request_size(ex) == len(head)


@CODECS
async def test_a_body_that_came_with_an_expect_head_answered_first_is_not_in_request_size(
        codec_cls: type[ServerCodec]) -> None:
    """An answer before the body of an Expect: 100-continue request takes what of the body came with the head (to
    hold it for the drain): discarded, not read, so not counted."""
    ex = exchange_of(codec_cls, EXPECT + b"ab", [b"c"])
    await ex.respond(401, b"{}")
    assert await server._drain_request(ex)
    assert request_size(ex) == len(EXPECT)


@CODECS
async def test_the_metrics_read_the_size_of_the_request_as_answered(codec_cls: type[ServerCodec]) -> None:
    """statsd's and datadog's request_size (the serializer's summary) and prometheus' ingress bandwidth (the
    request's size and the body bytes read) follow: the discarded body is in none of them."""
    ex = exchange_of(codec_cls, POST, [b"hel", b"lo"])
    await ex.respond(404, b"{}")
    assert await server._drain_request(ex)
    entry = Entry(ex, 0.0, 0.0, 404)
    assert summary(entry)["request"]["size"] == len(POST)
    assert ex.request.size + ex.body_received == len(POST)


@CODECS
async def test_a_body_read_before_the_answer_stays_in_request_size(codec_cls: type[ServerCodec]) -> None:
    """A body read counts (ngx_http_request_body.c:120, 397), whatever came of it after."""
    ex = exchange_of(codec_cls, POST + b"he", [b"llo"])
    body, _ = ex.take_buffered_body()
    assert body == b"he"
    await ex.respond(413, b"{}")
    assert await server._drain_request(ex)
    assert request_size(ex) == len(POST) + 2


async def test_the_access_log_leaves_a_discarded_body_out_of_request_size(gateway: Any, tmp_path: Path) -> None:
    """End to end: no route (Kong's kong.response.error(404)), the body drained after it, the log's request.size
    is the head alone."""
    log = tmp_path / "access.log"
    port = await gateway({"services": [service("s", "http://127.0.0.1:9", [{"paths": ["/only"]}])]},
                         access_log=str(log))
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(POST + b"hello")
        got = b""
        while b"}" not in got:
            got += await stream.receive_some(65536)
        await stream.aclose()
    (line,) = await log_lines(log, 1)
    assert (line["response"]["status"], line["request"]["size"]) == (404, len(POST))
