"""Odd answers from an upstream, read as nginx 1.27.1's proxy module (Kong 3.x's) reads them: by both client codecs
alike, fed whole and byte by byte (sans-I/O), then once through a gateway for the whole path; and an upstream's
X-Accel-Limit-Rate, which nginx acts on. nginx source: `git -C /work/.mirror/nginx+nginx/repo show
release-1.27.1:src/http/<file>`."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import trio
from backends import ScriptedBackend, request, service

from gateway.http.codec import END, NEED_DATA, ProtocolError, Request, Response
from gateway.http.codecs import codec_classes
from gateway.http.timers import ConnTimer, Phase
from gateway.pipeline.forward import _PacedConn

CODECS = ["h11", "llhttp"]
TIMEOUT = 10


def answered(codec: str, chunks: list[bytes], method: bytes = b"GET") -> tuple[list[object], bool]:
    """(the events a client codec gives of an upstream's `chunks`, each fed as it is, then whether the connection may
    be pooled): a Response as (status, reason, headers, version, keep_alive), body bytes joined, ("error", status)."""
    client = codec_classes(codec)[1]()
    client.request_head(method, b"/", [(b"host", b"up")])
    client.end()
    events: list[object] = []
    for chunk in chunks:
        client.receive_data(chunk)
        while True:
            try:
                ev = client.next_event()
            except ProtocolError as e:
                return [*events, ("error", e.status)], client.keep_alive
            if ev is NEED_DATA:
                break
            if type(ev) is Response:
                ev = (ev.status, ev.reason, ev.headers, ev.http_version, ev.keep_alive)
            elif type(ev) is bytes and events and type(events[-1]) is bytes:
                events[-1] += ev
                continue
            events.append(ev)
    return events, client.keep_alive


def bytewise(data: bytes) -> list[bytes]:
    return [data[i:i + 1] for i in range(len(data))]


def read_alike(codec: str, raw: bytes, method: bytes = b"GET") -> tuple[list[object], bool]:
    """`answered` of `raw` whole, checked to be the same fed byte by byte."""
    whole = answered(codec, [raw], method)
    assert answered(codec, bytewise(raw), method) == whole
    return whole


# --- Transfer-Encoding: a tab after `chunked` -------------------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("coding", [b"chunked\t", b"chunked \t", b"chunked\t ", b"Chunked\t"])
def test_an_upstreams_transfer_encoding_of_chunked_and_a_tab_is_502(codec: str, coding: bytes) -> None:
    """ngx_http_parse.c:996-1013 (ngx_http_parse_header_line, sw_value): only SP, CR, LF and NUL end a value, so the
    tab stays in it; ngx_http_upstream.c:5220-5230 (ngx_http_upstream_process_transfer_encoding): a value that is not
    the 7 bytes `chunked` is "upstream sent unknown Transfer-Encoding", a 502. (llhttp reads `chunked<TAB>` to EOF: a
    codec that took it as chunked would relay the chunk framing as body bytes.)"""
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: %b\r\n\r\n2\r\nok\r\n0\r\n\r\n" % coding
    assert read_alike(codec, raw) == ([("error", 502)], False)


@pytest.mark.parametrize("codec", CODECS)
def test_an_upstreams_chunked_followed_by_spaces_is_chunked(codec: str) -> None:
    """sw_value ends the value at the first space of a run that reaches the line end: `chunked` (nginx strips them)."""
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked  \r\n\r\n2\r\nok\r\n0\r\n\r\n"
    events, keep = read_alike(codec, raw)
    assert events == [(200, b"OK", [(b"transfer-encoding", b"chunked")], b"1.1", True), b"ok", END] and keep


@pytest.mark.parametrize("codec", CODECS)
def test_a_tab_after_any_response_header_value_stays_in_it(codec: str) -> None:
    """The same rule for every field: a trailing tab reaches the client as nginx relays it."""
    raw = b"HTTP/1.1 200 OK\r\nX-A: v\t\r\nX-B: w \t \r\nContent-Length: 0\r\n\r\n"
    events, _ = read_alike(codec, raw)
    assert events[0] == (200, b"OK", [(b"x-a", b"v\t"), (b"x-b", b"w \t"), (b"content-length", b"0")], b"1.1", True)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("coding", [b"chunked\t", b"chunked \t"])
def test_a_requests_transfer_encoding_of_chunked_and_a_tab_is_501_before_any_request(codec: str,
                                                                                    coding: bytes) -> None:
    """ngx_http_request.c:1993-2022 (ngx_http_process_request_header): a Transfer-Encoding that is not `chunked`
    (the tab kept: ngx_http_parse_header_line) is "client sent unknown Transfer-Encoding", finalized 501 once the
    head is read, as the gateway answers any other coding it lacks (`gzip, chunked`): the request is refused whole,
    never handed on and then cut by a 400 as llhttp refuses the coding after the head."""
    raw = b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: %b\r\n\r\n2\r\nok\r\n0\r\n\r\n" % coding
    for chunks in ([raw], bytewise(raw)):
        server = codec_classes(codec)[0]()
        events: list[object] = []
        for chunk in chunks:
            server.receive_data(chunk)
            try:
                while (ev := server.next_event()) is not NEED_DATA:
                    events.append(ev)
            except ProtocolError as e:
                events.append((e.status, e.method, e.target))
                break
        assert events == [(501, b"POST", b"/up")]
        assert not any(type(ev) is Request for ev in events)


# --- status lines and head lines nginx takes --------------------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize(("status_line", "reason"), [(b"HTTP/1.1 403.1 Forbidden", b"Forbidden"),
                                                     (b"HTTP/1.1 403.14", b"")])
def test_an_iis_sub_status_is_read_as_its_status(codec: str, status_line: bytes, reason: bytes) -> None:
    """ngx_http_parse.c:1781 (ngx_http_parse_status_line, sw_space_after_status): `case '.': /* IIS may send 403.1,
    403.2, etc */ state = sw_status_text;`: the status is 403 and the answer is relayed. (nginx keeps `403.1
    Forbidden` as the status line it sends; the gateway sends 403 with the text after the sub-status.)"""
    raw = status_line + b"\r\nContent-Length: 6\r\n\r\ndenied"
    events, keep = read_alike(codec, raw)
    assert events == [(403, reason, [(b"content-length", b"6")], b"1.1", True), b"denied", END] and keep


@pytest.mark.parametrize("codec", CODECS)
def test_an_iis_duplicate_status_line_among_the_header_lines_is_skipped(codec: str) -> None:
    """ngx_http_parse.c:952-959 (ngx_http_parse_header_line, sw_name): `/* IIS may send the duplicate "HTTP/1.1 ..."
    lines */`: a header name `HTTP` followed by `/`, in an upstream's head, makes the line ignored (sw_ignore_line)."""
    raw = b"HTTP/1.1 200 OK\r\nX-A: 1\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    events, keep = read_alike(codec, raw)
    assert events == [(200, b"OK", [(b"x-a", b"1"), (b"content-length", b"2")], b"1.1", True), b"ok", END] and keep


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("version", [b"1.2", b"3.0"])
def test_a_status_line_of_a_later_version_is_relayed_and_its_connection_kept(codec: str, version: bytes) -> None:
    """ngx_http_parse.c:1701-1755 (ngx_http_parse_status_line, sw_first_major_digit .. sw_minor_digit): any major 1-9
    and any minor are taken; ngx_http_proxy_module.c (ngx_http_proxy_process_status_line) closes the connection
    after an answer below 1.1 only. (llhttp's response parser is told to take any `d.d`, as h11 does.)"""
    raw = b"HTTP/%b 200 OK\r\nContent-Length: 2\r\n\r\nok" % version
    events, keep = read_alike(codec, raw)
    assert events == [(200, b"OK", [(b"content-length", b"2")], version, True), b"ok", END] and keep


@pytest.mark.parametrize("codec", CODECS)
def test_a_response_head_with_bare_lf_line_ends_is_read(codec: str) -> None:
    """ngx_http_parse.c:1795-1802 (sw_status_text: `case LF: goto done;`), :996 (sw_value: `case LF: ... goto
    done;`) and :865 (sw_start: `case LF: ... goto header_done;`): lines an upstream ends with LF alone (old CGI
    scripts, hand-written servers) are read as any others."""
    raw = b"HTTP/1.1 200 OK\nContent-Type: text/plain\r\nContent-Length: 2\n\nok"
    events, keep = read_alike(codec, raw)
    assert events == [(200, b"OK", [(b"content-type", b"text/plain"), (b"content-length", b"2")], b"1.1", True),
                      b"ok", END] and keep


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("cut", [5, 22, 30])
def test_a_bare_lf_head_after_an_interim_response_is_read_however_it_is_cut(codec: str, cut: int) -> None:
    """The head to mend may begin in the read that ends an interim response begun in an earlier one: it is found
    past that response's end (cut inside `100 Continue`, at its end, inside the final head)."""
    raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\nContent-Length: 2\n\nok"
    events, keep = answered(codec, [raw[:cut], raw[cut:]])
    assert events == [(201, b"Created", [(b"content-length", b"2")], b"1.1", True), b"ok", END] and keep


@pytest.mark.parametrize("codec", CODECS)
def test_a_bare_lf_head_with_a_fault_nginx_refuses_too_is_still_502(codec: str) -> None:
    """Mending the line ends leaves the rest as strict as before: a NUL in a value (sw_value: `case '\\0':
    return NGX_HTTP_PARSE_INVALID_HEADER`)."""
    raw = b"HTTP/1.1 200 OK\nX-A: a\x00b\nContent-Length: 2\n\nok"
    assert read_alike(codec, raw) == ([("error", 502)], False)


@pytest.mark.parametrize("codec", CODECS)
def test_a_bare_lf_head_answering_head_is_pooled_only_without_bytes_after_it(codec: str) -> None:
    """A response to HEAD ends at its blank line, however its lines end: anything after it was never asked for."""
    head = b"HTTP/1.1 200 OK\nContent-Length: 5\n\n"
    assert read_alike(codec, head, b"HEAD") == ([(200, b"OK", [(b"content-length", b"5")], b"1.1", True), END], True)
    assert answered(codec, [head + b"hello"], b"HEAD")[1] is False


# --- chunk sizes ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS)
def test_a_chunk_size_followed_by_spaces_or_tabs_is_read(codec: str) -> None:
    """ngx_http_parse.c:2243-2245 (ngx_http_parse_chunked, sw_chunk_size): `case ';': case ' ': case '\\t': state =
    sw_chunk_extension;` (and 2224-2225 for the last chunk): a size padded with whitespace, as some servers write
    it, is a size (llhttp's lenient_spaces_after_chunk_size; gateway.http.chunked for the h11 codec)."""
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2 \r\nok\r\n3\t\r\n!!!\r\n1 \t \r\n?\r\n0 \r\n\r\n"
    events, keep = read_alike(codec, raw)
    assert events == [(200, b"OK", [(b"transfer-encoding", b"chunked")], b"1.1", True), b"ok!!!?", END] and keep


@pytest.mark.parametrize("codec", CODECS)
def test_a_requests_chunk_size_followed_by_a_space_is_still_400(codec: str) -> None:
    """Only an upstream's sizes are read so: a request's framing stays as strict as llhttp's request parser."""
    server = codec_classes(codec)[0]()
    server.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2 \r\nok\r\n0\r\n\r\n")
    assert type(server.next_event()) is Request
    with pytest.raises(ProtocolError) as refused:
        while server.next_event() is not NEED_DATA:
            pass
    assert refused.value.status == 400


@pytest.mark.parametrize("codec", CODECS)
def test_a_chunk_size_then_whitespace_then_an_extension_INHERENT(codec: str) -> None:
    """`2 ;a`: nginx reads the extension (sw_chunk_extension takes anything to the line end), so does llhttp's
    lenient response parser; h11 takes whitespace after a size only before the line end, so the h11 codec (not the
    default) refuses the answer there, after the bytes before it. INHERENT: h11's chunk-header grammar."""
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\no\r\n1 ;a=b\r\nk\r\n0\r\n\r\n"
    events, _ = read_alike(codec, raw)
    head = (200, b"OK", [(b"transfer-encoding", b"chunked")], b"1.1", True)
    assert events == ([head, b"ok", END] if codec == "llhttp" else [head, b"o", ("error", 502)])


# --- the whole path ---------------------------------------------------------------------------------------------------

ODD_ANSWERS = {  # path: (the upstream's answer, the client's status and body)
    "/tab": (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\t\r\n\r\n2\r\nok\r\n0\r\n\r\n",
             502, None),
    "/iis": (b"HTTP/1.1 403.1 Forbidden\r\nContent-Length: 6\r\n\r\ndenied", 403, b"denied"),
    "/dup": (b"HTTP/1.1 200 OK\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 200, b"ok"),
    "/v12": (b"HTTP/1.2 200 OK\r\nContent-Length: 2\r\n\r\nok", 200, b"ok"),
    "/lf": (b"HTTP/1.1 200 OK\nContent-Type: text/plain\nContent-Length: 2\n\nok", 200, b"ok"),
    "/pad": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2 \r\nok\r\n3\t\r\n!!!\r\n0 \r\n\r\n", 200,
             b"ok!!!"),
}


async def test_odd_answers_reach_the_client_as_through_nginx(nursery, gateway):
    """Each answer above through a gateway: relayed (its body whole, the connection's end not waited for), or the
    502 nginx answers, at once though the upstream keeps its connection open."""
    services = []
    for i, (path, (answer, _, _)) in enumerate(ODD_ANSWERS.items()):
        backend = ScriptedBackend([answer], hold=TIMEOUT)
        await nursery.start(backend.serve)
        services.append(service(f"s{i}", f"http://127.0.0.1:{backend.port}", routes=[{"paths": [path]}]))
    port = await gateway({"services": services})
    for path, (_, status, body) in ODD_ANSWERS.items():
        with trio.fail_after(TIMEOUT / 2):
            reply = await request(port, "GET", path)
        assert reply.status == status, (path, reply)
        if body is not None:
            assert reply.body == body, (path, reply)


# --- X-Accel-Limit-Rate -----------------------------------------------------------------------------------------------


class _Sink:
    """A client connection that notes when each write came (the Trio clock) and what it held."""

    def __init__(self) -> None:
        self.writes: list[tuple[float, bytes]] = []
        self.peer = ("127.0.0.1", 1)

    async def sendall(self, data: bytes) -> None:
        self.writes.append((trio.current_time(), bytes(data)))


async def test_a_limited_answer_goes_a_second_s_worth_at_a_time(autojump_clock: object) -> None:
    """ngx_http_write_filter_module.c:271-276 and 309-326: before a write, `limit = limit_rate * (ngx_time() -
    start_sec + 1) - sent` (at most that goes; none, a pause of what is over); after it, a pause of `sent * 1000 /
    limit_rate` ms. At 1000 bytes a second from the request's start, 2500 bytes written at once go as 1000 at once,
    1000 a second later, 500 a second after that; the head goes at once, uncounted, and a later write waits its
    turn. The connection's other attributes are its own (the log reads them)."""
    sink = _Sink()
    ex: Any = SimpleNamespace(started=trio.current_time(), timer=ConnTimer(trio.current_time() + 60,
                                                                           Phase.UPSTREAM_BODY))
    paced = _PacedConn(sink, ex, 1000)
    start = trio.current_time()
    await paced.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2600\r\n\r\n" + b"x" * 2500)
    await paced.sendall(b"y" * 100)
    got = [(round(at - start, 3), data.count(b"x") + data.count(b"y"), data.startswith(b"HTTP/")) for at, data in
           sink.writes]
    assert got == [(0.0, 1000, True), (1.0, 1000, False), (2.0, 500, False), (2.5, 100, False)]
    assert paced.peer == ("127.0.0.1", 1)
    assert ex.timer.phase == Phase.UPSTREAM_BODY and ex.timer.at == start + 62.5  # (the pauses held it off)


@pytest.mark.parametrize("http_codec", ["llhttp"])  # (the relay, not the codec)
async def test_x_accel_limit_rate_paces_the_body_unless_the_upstream_turned_buffering_off(nursery, gateway,
                                                                                         http_codec):
    """ngx_http_upstream.c:5092-5103 (ngx_http_upstream_process_limit_rate): unless proxy_ignore_headers names it
    (Kong's template does not), `r->limit_rate = ngx_atoi(value)` (a value that is no number is ignored), which the
    write filter enforces; the field itself is hidden (proxy_hide_header's defaults). ngx_http_upstream.c:3092
    (ngx_http_upstream_send_response): a relay without buffering (X-Accel-Buffering: no, :5111-5145) sets limit_rate
    to 0. 4000 bytes at 2000 B/s: half at once, the rest a second later."""
    body = b"x" * 4000
    limited = b"HTTP/1.1 200 OK\r\nX-Accel-Limit-Rate: 2000\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
    unbuffered = limited.replace(b"\r\n\r\n", b"\r\nX-Accel-Buffering: no\r\n\r\n", 1)
    no_number = limited.replace(b": 2000", b": 2k", 1)
    services = []
    for name, answer in (("limited", limited), ("unbuffered", unbuffered), ("no_number", no_number)):
        backend = ScriptedBackend([answer])
        await nursery.start(backend.serve)
        services.append(service(name, f"http://127.0.0.1:{backend.port}", routes=[{"paths": [f"/{name}"]}]))
    port = await gateway({"services": services})
    for name, least, most in (("limited", 0.9, 2.0), ("unbuffered", 0.0, 0.5), ("no_number", 0.0, 0.5)):
        with trio.fail_after(TIMEOUT):
            reply = await request(port, "GET", f"/{name}")
        assert reply.status == 200 and reply.body == body, name
        assert reply.header("x-accel-limit-rate") is None and reply.header("x-accel-buffering") is None
        took = reply.chunks[-1][0] - reply.chunks[0][0]
        assert least <= took < most, (name, took)


@pytest.mark.parametrize("http_codec", ["llhttp"])  # (the relay, not the codec)
async def test_x_accel_limit_rate_does_not_pace_a_route_without_response_buffering(nursery, gateway, http_codec):
    """A route with `response_buffering: false` is Kong's @unbuffered_response location (kong/runloop/handler.lua:1407
    `if route.response_buffering == false then return exec("@unbuffered_response")`; kong/templates/nginx_kong.lua:295
    `proxy_buffering off;`), and nginx's unbuffered relay lifts the upstream's X-Accel-Limit-Rate
    (ngx_http_upstream.c:3092 in ngx_http_upstream_send_response: `if (!u->buffering) { ... r->limit_rate = 0;`). So
    4000 bytes limited to 2000 B/s arrive at once, the field still hidden."""
    body = b"x" * 4000
    limited = b"HTTP/1.1 200 OK\r\nX-Accel-Limit-Rate: 2000\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
    backend = ScriptedBackend([limited])
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{backend.port}",
                                               [{"paths": ["/"], "response_buffering": False}])]})
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/")
    assert reply.status == 200 and reply.body == body and reply.header("x-accel-limit-rate") is None
    took = reply.chunks[-1][0] - reply.chunks[0][0]
    assert took < 0.5, f"the answer was paced over {took:.2f}s on a route with response_buffering: false"
