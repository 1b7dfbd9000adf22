"""An upstream's answer as nginx 1.27.1 reads it behind Kong 3.9.3, where the client codecs read it otherwise: a
`Connection: close` in a chunked answer's trailer section leaves the connection as the head said (nginx skips trailer
lines unread), and a tab before or after `chunked` in Transfer-Encoding is nginx's 502 (its header parser keeps the
tab in the value). The codecs are pinned sans-I/O; the trailer's kept connection once through a gateway too. nginx
source: `git -C /work/.mirror/nginx+nginx/repo show release-1.27.1:src/http/ngx_http_parse.c` (and
ngx_http_upstream.c)."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from backends import Client, service
from conftest import CODECS
from kong_nginx import answer_events, events_after

from gateway.http.codec import END, ProtocolError, Response
from gateway.http.codecs import codec_classes

CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nb\r\nhello world\r\n0\r\n"
NEXT = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"


def _body(events: list[Any]) -> bytes:
    return b"".join(ev for ev in events if type(ev) is bytes)


# --- a Connection field in an upstream's trailer section -------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("trailer", [b"Connection: close", b"Connection: x, close", b"Proxy-Connection: close",
                                     b"connection: CLOSE", b"X-T: 1\r\nConnection: close"])
def test_a_connection_close_in_an_upstreams_trailer_section_keeps_its_connection(codec: str, trailer: bytes) -> None:
    """nginx skips a chunked answer's trailer lines whatever they hold (ngx_http_parse_chunked's sw_trailer and
    sw_trailer_header, ngx_http_parse.c:2311-2345) and keeps the connection as the head said; llhttp read the
    trailer's `close` as the head's and ended its parser with the answer, so the llhttp codec, which kept the
    connection, refused the next answer on it ("Data after `Connection: close`", a 502 for a valid answer)."""
    client = codec_classes(codec)[1]()
    events = answer_events(client, CHUNKED + trailer + b"\r\n\r\n")
    assert events[1:] == [b"hello world", END] and events[0].keep_alive and client.keep_alive, events
    client.start_next_cycle()
    following = answer_events(client, NEXT)
    assert isinstance(following[0], Response) and following[1:] == [b"abc", END], following
    assert client.keep_alive


@pytest.mark.parametrize("codec", CODECS)
def test_a_connection_close_trailer_split_over_reads_keeps_its_connection(codec: str) -> None:
    """The same wherever the reads cut the answer, the next answer read on the connection
    (ngx_http_parse.c:2311-2345)."""
    answer = CHUNKED + b"Connection: close\r\n\r\n"
    for cut in range(1, len(answer)):
        client = codec_classes(codec)[1]()
        events = answer_events(client, answer[:cut])
        client.receive_data(answer[cut:])
        events += events_after(client)
        assert _body(events) == b"hello world" and events[-1] is END and client.keep_alive, (cut, events)
        client.start_next_cycle()
        assert answer_events(client, NEXT)[1:] == [b"abc", END], cut


@pytest.mark.parametrize("codec", CODECS)
def test_a_keep_alive_trailer_does_not_keep_a_connection_the_head_closed(codec: str) -> None:
    """nginx reads an answer's Connection in its head alone (ngx_http_upstream_process_connection,
    ngx_http_upstream.c:5167-5190; trailer lines are skipped, ngx_http_parse.c:2311-2345): a head's
    `Connection: close` closes the connection whatever the trailer section says."""
    client = codec_classes(codec)[1]()
    events = answer_events(client, CHUNKED.replace(b"OK\r\n", b"OK\r\nConnection: close\r\n", 1)
                           + b"Connection: keep-alive\r\n\r\n")
    assert events[1:] == [b"hello world", END] and not client.keep_alive, events


@pytest.mark.parametrize("codec", CODECS)
def test_bytes_after_a_connection_close_trailer_still_drop_the_connection(codec: str) -> None:
    """Bytes after the section are nobody's answer: the connection is not kept (README: "no byte of a broken
    upstream answer ever reaching another request")."""
    client = codec_classes(codec)[1]()
    events = answer_events(client, CHUNKED + b"Connection: close\r\n\r\n" + NEXT)
    assert events[1:] == [b"hello world", END] and not client.keep_alive, events


async def test_two_requests_share_an_upstream_connection_after_a_connection_close_trailer(nursery, gateway) -> None:  # noqa: ANN001
    """Through the gateway: a chunked answer whose trailer section says `Connection: close`, then a plain one, on one
    upstream connection, both relayed whole, as through Kong (nginx skips the trailer lines and keeps the connection:
    ngx_http_parse.c:2311-2345, ngx_http_proxy_module.c:2392). The llhttp codec answered the second 502."""
    accepted = 0
    answers = [CHUNKED + b"Connection: close\r\n\r\n"]  # then NEXT to every request

    async def serve(stream: trio.SocketStream) -> None:
        nonlocal accepted
        accepted += 1
        buf = b""
        async with stream:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buf += data
                _, _, buf = buf.partition(b"\r\n\r\n")
                await stream.send_all(answers.pop(0) if answers else NEXT)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    up = listeners[0].socket.getsockname()[1]
    nursery.start_soon(trio.serve_listeners, serve, listeners)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{up}", [{"paths": ["/"]}])]})

    async with await Client.connect(port) as client:
        with trio.fail_after(3):
            first = await client.request("GET", "/a")
            second = await client.request("GET", "/b")
    assert (first.status, first.body, second.status, second.body) == (200, b"hello world", 200, b"abc"), second
    assert accepted == 1, f"{accepted} upstream connections for two answers on a kept one"


# --- a tab around Transfer-Encoding's `chunked` ------------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
@pytest.mark.parametrize("value", [b"\tchunked", b" \tchunked", b"\t chunked", b"chunked \t", b"\tchunked\t",
                                   b"ch\tunked"])
def test_a_tab_around_an_upstreams_chunked_is_a_502(codec: str, method: bytes, value: bytes) -> None:
    """ngx_http_parse_header_line skips spaces alone before a value and ends it at a space (ngx_http_parse.c:972-
    1013), so a tab is the value's: `\\tchunked` is no `chunked`, and nginx 1.27.1 answers 502 "upstream sent unknown
    Transfer-Encoding" (ngx_http_upstream_process_transfer_encoding, ngx_http_upstream.c:5220-5230), to a HEAD too,
    its connection not kept; both codecs skipped the tab (llhttp and h11 read it as whitespace) and relayed a chunked
    answer."""
    client = codec_classes(codec)[1]()
    body = b"" if method == b"HEAD" else b"b\r\nhello world\r\n0\r\n\r\n"
    events = answer_events(client, b"HTTP/1.1 200 OK\r\nTransfer-Encoding:" + value + b"\r\n\r\n" + body, method)
    assert isinstance(events[-1], ProtocolError) and events[-1].status == 502, events
    assert "Transfer-Encoding" in str(events[-1]) and not client.keep_alive


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("before", [b"", b"HTTP/1.1 100 Continue\r\n\r\n"])
def test_a_tab_before_an_upstreams_chunked_is_a_502_however_the_answer_is_cut(codec: str, before: bytes) -> None:
    """The tab is found in the head's bytes (llhttp gives the value without the whitespace before it) wherever the
    reads cut the head, after an interim answer too (ngx_http_upstream.c:5220-5230)."""
    answer = before + b"HTTP/1.1 200 OK\r\nX-A: 1\r\nTransfer-Encoding:\tchunked\r\n\r\nb\r\nhello world\r\n0\r\n\r\n"
    for cut in range(1, len(answer)):
        client = codec_classes(codec)[1]()
        events = answer_events(client, answer[:cut])
        client.receive_data(answer[cut:])
        events += events_after(client)
        assert isinstance(events[-1], ProtocolError) and events[-1].status == 502, (cut, events)


@pytest.mark.parametrize("codec", CODECS)
def test_a_tab_elsewhere_leaves_a_chunked_answer_read(codec: str) -> None:
    """A tab in another header's value, in the body or in a trailer line is no Transfer-Encoding's: the answer is
    chunked as nginx reads it (`Transfer-Encoding:  chunked  `, spaces around it dropped: ngx_http_parse.c:972-1013),
    its connection kept."""
    client = codec_classes(codec)[1]()
    events = answer_events(client, b"HTTP/1.1 200 OK\r\nX-A:\ta\t\r\nTransfer-Encoding:  chunked  \r\n\r\n"
                                   b"b\r\nhello\tworld\r\n0\r\nX-T:\tchunked\r\n\r\n")
    assert events[1:] == [b"hello\tworld", END] and client.keep_alive, events
