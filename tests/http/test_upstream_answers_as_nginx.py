"""An upstream's answers as nginx 1.27.1 reads them behind Kong 3.9.3 (a differential review against nginx in Kong's
proxy configuration): a later HTTP version's connection kept and read on, versions of more digits than the parsers
take, and X-Accel-Charset as nginx's charset filter takes it. The codecs are pinned sans-I/O, the header walk and
Kong's charset step too (forward._client_headers, KongHeaders.add); one exchange checks what reaches a client."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import trio
from backends import ScriptedBackend, request, service
from kong_nginx import answer_events

from gateway.http.codec import END, ProtocolError, Response
from gateway.http.codecs import codec_classes
from gateway.http.kong_headers import KongHeaders
from gateway.pipeline.forward import _client_headers

TIMEOUT = 10
NEXT = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"




def _two_exchanges(codec: str, first: bytes, method: bytes = b"GET") -> tuple[list[Any], bool, list[Any]]:
    """`first` answered on a fresh connection, whether the codec keeps it, and the events of a plain 1.1 answer to
    the next request on it (none when not kept)."""
    client = codec_classes(codec)[1]()
    events = answer_events(client, first, method)
    if not client.keep_alive:
        return events, False, []
    client.start_next_cycle()
    return events, True, answer_events(client, NEXT)


# --- a later version's connection ---------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["llhttp", "h11"])
@pytest.mark.parametrize("line", [b"HTTP/2.0 200 OK", b"HTTP/3.0 200 OK"])
def test_a_later_x0_answer_keeps_its_connection_and_the_next_answer_on_it_is_read(codec, line):
    """nginx keeps an upstream connection after a `HTTP/2.0 200` answer with a length (ngx_http_proxy_module.c:
    1870-1872 closes below 1.1 only; ngx_http_parse.c:1705-1745 reads any major of 1-3 digits), so the next request
    on it gets the upstream's next answer. llhttp reads an `x.0` as 1.0 without keep-alive and ends its parser with
    it: the llhttp codec, which kept the connection, refused that next answer ("Data after `Connection: close`",
    a 502 for a valid answer)."""
    events, kept, following = _two_exchanges(codec, line + b"\r\nContent-Length: 5\r\n\r\nhello")
    assert [type(ev) for ev in events] == [Response, bytes, type(END)] and events[1] == b"hello"
    assert kept
    assert isinstance(following[0], Response) and following[1:] == [b"ok", END]


@pytest.mark.parametrize("codec", ["llhttp", "h11"])
def test_a_later_x0_answer_with_bytes_after_it_is_not_kept(codec):
    """Bytes after the answer's body (nobody asked for them) keep the connection out of the pool, as after a 1.1
    answer."""
    client = codec_classes(codec)[1]()
    events = answer_events(client, b"HTTP/2.0 200 OK\r\nContent-Length: 5\r\n\r\nhelloJUNK")
    assert events[1:] == [b"hello", END]
    assert not client.keep_alive


# --- versions of more digits ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["llhttp", "h11"])
@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
@pytest.mark.parametrize(("version", "read_as", "kept"), [
    (b"1.10", b"1.9", True),  # minor 10: 1010, a later 1.x
    (b"10.1", b"9.1", True),  # major 10: 10001
    (b"999.1", b"9.1", True),  # the longest major nginx reads
    (b"10.0", b"9.0", True),  # later than 1.1 still, though llhttp reads an x.0 as 1.0
    (b"1.01", b"1.1", True),  # leading zeros of a minor: 1.1
    (b"1.0999", b"1.9", True),
    (b"1.00", b"1.0", False),  # 1.0: closed, as nginx closes below 1.1
])
def test_a_version_nginx_reads_with_more_digits_is_read_as_it_compares_with_1_1(codec, method, version, read_as,
                                                                                 kept):
    """ngx_http_parse_status_line reads a major of up to 3 digits (not 0 first) and a minor of up to 3 after its
    leading zeros (ngx_http_parse.c:1705-1745), and nginx compares major * 1000 + minor with 1.1 alone
    (ngx_http_proxy_module.c:1870-1872): such an answer is relayed, its connection kept unless below 1.1. llhttp and
    h11 read one digit a side: both codecs refused it (502)."""
    body = b"" if method == b"HEAD" else b"hello"
    events, got_kept, following = _two_exchanges(
        codec, b"HTTP/" + version + b" 200 OK\r\nContent-Length: 5\r\n\r\n" + body, method)
    response = events[0]
    assert isinstance(response, Response), events
    assert (response.status, response.reason, response.http_version) == (200, b"OK", read_as)
    assert events[1:] == ([END] if method == b"HEAD" else [b"hello", END])
    assert got_kept == kept
    if kept:
        assert isinstance(following[0], Response) and following[1:] == [b"ok", END]


@pytest.mark.parametrize("codec", ["llhttp", "h11"])
@pytest.mark.parametrize("version", [b"1000.1", b"1.1000", b"01.1", b"1"])
def test_a_version_nginx_cannot_read_is_a_502(codec, version):
    """A major of 4 digits or with a leading zero, a minor of 4 significant digits, no minor: nginx's "upstream
    sent no valid HTTP/1.0 header", relayed as an HTTP/0.9 body (ngx_http_proxy_module.c:1834-1847), which the
    gateway does not speak: a 502."""
    client = codec_classes(codec)[1]()
    events = answer_events(client, b"HTTP/" + version + b" 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert isinstance(events[-1], ProtocolError) and events[-1].status == 502
    assert not client.keep_alive


# --- X-Accel-Charset ------------------------------------------------------------------------------------------------


def _content_type(lines: list[tuple[bytes, bytes]], charset: str = "UTF-8") -> bytes | None:
    """The Content-Type a client gets of an upstream's 200 with header `lines`, through the header walk and Kong's
    charset step (kong.conf's nginx_http_charset `charset`)."""
    kong = KongHeaders.from_setting("off", charset)
    ex: Any = SimpleNamespace(settings=SimpleNamespace(kong_headers=kong), request=SimpleNamespace(headers=[]),
                              state=None, status=200, request_id=b"rid", tries=None, started=0.0, phases=None)
    unused: Any = None  # the target and connection: only an MCP session id needs them
    out, _, _ = _client_headers(lines, b"rid", None, unused, unused, ex)
    kong.add(ex, out, 200)
    assert all(name != b"x-accel-charset" for name, _ in out)  # hidden, as ever
    return next((value for name, value in out if name == b"content-type"), None)


@pytest.mark.parametrize("charset", ["UTF-8", "off"])
@pytest.mark.parametrize("ctype", [b"text/plain", b"text/html", b"application/json", b"text/html; charset=UTF-8",
                                   b"text/plain; format=flowed"])
def test_an_x_accel_charset_nginx_does_not_know_leaves_the_content_type_as_sent(charset, ctype):
    """nginx's upstream takes X-Accel-Charset as r->headers_out.override_charset (ngx_http_upstream.c:309,
    5149-5162), and the charset filter, which knows only the charsets its configuration names (UTF-8), declines one
    it does not know ("unknown charset ... to override", ngx_http_charset_filter_module.c:329-343): the
    Content-Type goes as the upstream sent it, without Kong's `charset UTF-8`. The gateway added `; charset=UTF-8`.
    (Checked against nginx 1.22 with `charset UTF-8;`, and `charset off;`.)"""
    lines = [(b"x-accel-charset", b"koi8-r"), (b"content-type", ctype)]
    assert _content_type(lines, charset) == ctype


@pytest.mark.parametrize("charset", ["UTF-8", "off"])
@pytest.mark.parametrize(("ctype", "override", "expected"), [
    (b"text/plain", b"utf-8", b"text/plain; charset=utf-8"),  # as spelled, not as the setting
    (b"text/plain", b"Utf-8", b"text/plain; charset=Utf-8"),
    (b"application/json", b"UTF-8", b"application/json; charset=UTF-8"),  # whatever charset_types say
    (b"text/plain; format=flowed", b"utf-8", b"text/plain; format=flowed; charset=utf-8"),  # after a parameter
    (b"text/html; charset=UTF-8", b"utf-8", b"text/html; charset=utf-8"),  # the same charset: rewritten
    (b'text/html; charset="utf-8"', b"utf-8", b"text/html; charset=utf-8"),
    (b"text/html; charset=latin1", b"utf-8", b"text/html; charset=latin1"),  # another: "no charset_map"
    (b"text/plain; charset=", b"utf-8", b"text/plain; charset="),  # an empty one: no charset added to it
])
def test_an_x_accel_charset_nginx_knows_is_the_answers_charset(charset, ctype, override, expected):
    """A known override is the destination charset before the `charset` setting (even `off`: Kong's admin server's
    `charset UTF-8;` names UTF-8, nginx_kong.lua:413) and charset_types are read (ngx_http_destination_charset,
    ngx_http_charset_filter_module.c:329-343); with no charset of its own (source_charset off) the value gets
    `; charset=<override>` when it names none (ngx_http_header_filter_module.c:487-493), with the same one it is cut
    before it and gets the override's (235-288). (Each checked against nginx 1.22.)"""
    lines = [(b"content-type", ctype), (b"x-accel-charset", override)]
    assert _content_type(lines, charset) == expected


def test_the_last_x_accel_charset_line_is_the_one_and_an_empty_one_overrides_nothing():
    """ngx_http_upstream_process_charset sets override_charset for each line, and the filter reads it only when it
    is not empty (ngx_http_charset_filter_module.c:329-330)."""
    assert _content_type([(b"x-accel-charset", b"koi8-r"), (b"x-accel-charset", b"utf-8"),
                          (b"content-type", b"application/json")]) == b"application/json; charset=utf-8"
    assert _content_type([(b"x-accel-charset", b"utf-8"), (b"content-type", b"text/plain"),
                          (b"x-accel-charset", b"koi8-r")]) == b"text/plain"
    assert _content_type([(b"x-accel-charset", b"koi8-r"), (b"content-type", b"text/plain"),
                          (b"x-accel-charset", b"")]) == b"text/plain; charset=UTF-8"


async def test_a_proxied_answer_with_an_unknown_x_accel_charset_keeps_its_content_type(nursery, gateway):
    """The running gateway, end to end: the upstream's `X-Accel-Charset: koi8-r` and `Content-Type: text/plain`
    reach the client as `text/plain`, X-Accel-Charset hidden (ngx_http_charset_filter_module.c:329-343)."""
    backend = ScriptedBackend([b"HTTP/1.1 200 OK\r\nX-Accel-Charset: koi8-r\r\nContent-Type: text/plain\r\n"
                               b"Content-Length: 5\r\n\r\nhello"])
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}")]})
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/x")
    assert (reply.status, reply.header("content-type"), reply.header("x-accel-charset")) == (200, "text/plain", None)
