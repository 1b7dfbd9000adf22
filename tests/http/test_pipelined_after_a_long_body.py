"""A request pipelined after a long body (more than the llhttp codec's _REPARSE_WINDOW, 8 KiB, since the last read
that began between two requests) is read from its own bytes, as nginx 1.27.1 reads it: ngx_http_set_keepalive hands
the buffer's rest to ngx_http_process_request_line / _headers (ngx_http_request.c:3099-3190), which never look at the
body before it. A line of that body that reads `Content-Length:<TAB>1` or `Transfer-Encoding: chunked<TAB>` (an HTTP
capture, a log uploaded) is body, not the next head's framing.
nginx source: `git -C /work/.mirror/nginx+nginx/repo show release-1.27.1:src/http/ngx_http_request.c`."""

from __future__ import annotations

import re

import pytest
from backends import EchoBackend, raw_exchange, service

from gateway.http.codec import END, NEED_DATA, ProtocolError, Request
from gateway.http.codec_llhttp import LlhttpServer

# a body over 8 KiB with a tabbed Content-Length line in it, the line in the read that ends the body
LONG_BODY = b"a" * 11000 + b"\r\nContent-Length:\t1\r\n" + b"b" * 8000


def _targets(reads: list[bytes]) -> list[bytes]:
    """The targets of the requests the llhttp server codec parses from `reads`, each answered as it ends."""
    codec = LlhttpServer()
    seen: list[bytes] = []
    for data in reads:
        codec.receive_data(data)
        while (ev := codec.next_event()) is not NEED_DATA:
            if type(ev) is Request:
                seen.append(ev.target)
            elif ev is END:
                codec.start_next_cycle()
    return seen


@pytest.mark.parametrize(("text", "framing"), [
    (b"\r\nContent-Length:\t1\r\n", b"Content-Length: 1\r\n\r\nZ"),
    (b"\r\nTransfer-Encoding: chunked\t\r\n", b"Transfer-Encoding: chunked\r\n\r\n1\r\nZ\r\n0\r\n\r\n"),
], ids=["content-length", "transfer-encoding"])
def test_a_long_bodys_text_does_not_refuse_the_request_pipelined_after_it(text: bytes, framing: bytes) -> None:
    """A 19 KB body holding a line `Content-Length:<TAB>1` (or `Transfer-Encoding: chunked<TAB>`), then a request
    pipelined in the read that ends the body, its own framing clean: both served (ngx_http_request.c:3099-3190, the
    next head parsed from the buffer's rest), not the second refused 400 (or 501) for the body's line."""
    body = b"a" * 11000 + text + b"b" * 8000
    first = b"POST /1 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
    second = b"POST /2 HTTP/1.1\r\nHost: x\r\n" + framing
    try:
        seen = _targets([first + body[:9000], body[9000:] + second])
    except ProtocolError as e:
        pytest.fail(f"the pipelined request was refused {e.status}: {e}")
    assert seen == [b"/1", b"/2"]


@pytest.mark.parametrize("http_codec", ["llhttp"], indirect=True)
async def test_a_long_bodys_text_does_not_refuse_the_pipelined_request_through_the_gateway(nursery, gateway,  # noqa: ANN001
                                                                                          http_codec):  # noqa: ANN001
    """The same through a gateway (two writes 0.2 s apart: two reads): the pipelined request gets its 200, as from
    nginx (ngx_http_set_keepalive), not a 400 'invalid Content-Length'."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}")]})
    first = b"POST /1 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(LONG_BODY)
    second = b"POST /2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 1\r\n\r\nZ"
    received, _ = await raw_exchange(port, [first + LONG_BODY[:9000], LONG_BODY[9000:] + second], pause=0.2)
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", received) == [b"200", b"200"], received[-400:]
