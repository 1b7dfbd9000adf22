"""Odd answers from an upstream, read as nginx 1.27.1's proxy module (Kong 3.x's) reads them: by both client codecs
alike, fed whole and byte by byte (sans-I/O), then once through a gateway for the whole path; and an upstream's
X-Accel-Limit-Rate, which nginx acts on. nginx source: `git -C /work/.mirror/nginx+nginx/repo show
release-1.27.1:src/http/<file>`."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import h11
import pytest
import trio
from backends import ScriptedBackend, raw_exchange, request, service

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
def test_a_chunk_size_then_whitespace_then_an_extension_is_read(codec: str) -> None:
    """`2 ;a`: nginx reads the extension (sw_chunk_extension takes anything to the line end), so does llhttp's
    lenient response parser; the h11 codec gives h11, which takes whitespace after a size only before the line end,
    the line as `1` CRLF (gateway.http.chunked)."""
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\no\r\n1 ;a=b\r\nk\r\n0\r\n\r\n"
    events, _ = read_alike(codec, raw)
    assert events == [(200, b"OK", [(b"transfer-encoding", b"chunked")], b"1.1", True), b"ok", END]


# --- heads nginx reads and relays, which llhttp or h11 refuse: read again with stand-ins, put back as nginx read them


def head_of(headers: list[tuple[bytes, bytes]], reason: bytes = b"OK") -> tuple[object, ...]:
    return (200, reason, [*headers, (b"content-length", b"2")], b"1.1", True)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("value", [b"foo\x01bar", b"\x0bv\x0c", b"\x1b[1m", b"a\x7f"])
def test_a_control_byte_in_an_upstream_header_value_is_relayed(codec: str, value: bytes) -> None:
    """ngx_http_parse_header_line's sw_value ends a value at CR or LF and refuses NUL, nothing else
    (src/http/ngx_http_parse.c:996-1025), and ngx_http_proxy_process_header keeps every line it reads
    (src/http/modules/ngx_http_proxy_module.c:1881-1945): the value reaches the client as it came."""
    raw = b"HTTP/1.1 200 OK\r\nX-A: " + value + b"\r\nContent-Length: 2\r\n\r\nok"
    assert read_alike(codec, raw) == ([head_of([(b"x-a", value)]), b"ok", END], True)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("name", [b"X-User@Domain", b"X(Y)", b"X-Caf\xe9", b"X[1]{2}\"/"])
def test_an_upstream_header_name_nginx_calls_invalid_is_relayed(codec: str, name: bytes) -> None:
    """A byte of a name other than a letter, a digit, `-` and `_` (but a control byte, a space or `:`) only sets
    r->invalid_header (src/http/ngx_http_parse.c:961-969 `r->invalid_header = 1; break;`), which
    ngx_http_proxy_process_header never reads (src/http/modules/ngx_http_proxy_module.c:1881-1945): nginx relays
    the line."""
    raw = b"HTTP/1.1 200 OK\r\n" + name + b": v\r\nContent-Length: 2\r\n\r\nok"
    assert read_alike(codec, raw) == ([head_of([(name.lower(), b"v")]), b"ok", END], True)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("ending", [b"\r\r\n", b" \r\r\r\n"])
def test_an_upstream_header_line_ended_by_more_crs_before_its_lf_is_read(codec: str, ending: bytes) -> None:
    """sw_almost_done takes more CRs before the LF (src/http/ngx_http_parse.c:1046-1054 `case LF: goto done;
    case CR: break;`): `X-A: foo` CR CR LF is the field X-A: foo."""
    raw = b"HTTP/1.1 200 OK\r\nX-A: foo" + ending + b"Content-Length: 2\r\n\r\nok"
    assert read_alike(codec, raw) == ([head_of([(b"x-a", b"foo")]), b"ok", END], True)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("reason", [b"O\x01K", b"OK\x00", b"O\x0bK", b"\x7f"])
def test_an_upstream_reason_phrase_with_a_control_byte_is_relayed(codec: str, reason: bytes) -> None:
    """ngx_http_parse_status_line's sw_status_text takes any byte but CR and LF (src/http/ngx_http_parse.c:1795-1805),
    and the client gets the upstream's status line (src/http/ngx_http_upstream.c:2945 `r->headers_out.status_line =
    u->headers_in.status_line;`)."""
    raw = b"HTTP/1.1 200 " + reason + b"\r\nContent-Length: 2\r\n\r\nok"
    assert read_alike(codec, raw) == ([head_of([], reason), b"ok", END], True)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\n", b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\n", b"HTTP/1.1 200 OK\r\nX A: v\r\n",
    b"HTTP/1.1 200 OK\r\nX\x7fA: v\r\n", b"HTTP/1.1 200 OK\r\nX-A: v\r\n w\r\n", b"HTTP/1.1 200 OK\r\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\x01\r\n", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\x01\r\n"])
def test_what_nginx_refuses_in_an_upstream_head_stays_502(codec: str, head: bytes) -> None:
    """What nginx refuses is still refused: NUL or a CR without LF in a value (sw_value, sw_almost_done), a space or
    DEL in a name (sw_name: `if (ch <= 0x20 || ch == 0x7f) return NGX_HTTP_PARSE_INVALID_HEADER;`), a folded line
    (sw_start: a space is no name), a status line's second CR (ngx_http_parse_status_line's sw_almost_done), and a
    length or coding with a control byte (no number; not `chunked`: ngx_http_upstream_process_content_length,
    _transfer_encoding). No stand-in is ever given to a framing field."""
    assert read_alike(codec, head + b"\r\nok") == ([("error", 502)], False)


CHUNKED_OK = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n"
CHUNKED_HEAD = (200, b"OK", [(b"transfer-encoding", b"chunked")], b"1.1", True)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("trailers", [b"X-T: a\x01b\r\n\r\n", b"Bad Name: x\r\n\r\n", b"X-T\x00: v\r\n\r\n",
                                      b"NoColon\r\nX: y\r\n\r\n", b"X: a\nY: b\r\n\r\n", b"\n",
                                      b"Content-Length: 5\r\n\r\n", b"X: a\r\n b\r\n\r\n"])
def test_upstream_trailer_lines_nginx_skips_end_the_response_on_a_kept_connection(codec: str, trailers: bytes) -> None:
    """ngx_http_parse_chunked skips each trailer line to its LF and ends the body at an empty line (sw_trailer,
    sw_trailer_header: src/http/ngx_http_parse.c:2311-2345): a line llhttp or h11 refuses loses nothing (trailers
    are not relayed anyway), and the connection is kept, as nginx keeps it (the llhttp codec reads the rest of such
    a section without llhttp), but after a section that ends at a bare LF, where a parser that ends lines at CRLF
    alone would read on (ChunkedFraming.lf_end)."""
    assert read_alike(codec, CHUNKED_OK + trailers) == ([CHUNKED_HEAD, b"ok", END], trailers != b"\n")


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("trailers", [b"X: a\rb\r\n\r\n", b"X: a\r\r\n\r\n", b"X: \x01\r\n\r\r\n"])
def test_a_cr_without_lf_in_an_upstream_trailer_section_is_still_502(codec: str, trailers: bytes) -> None:
    """sw_trailer_header_almost_done and sw_trailer_almost_done take only LF after a CR (src/http/ngx_http_parse.c:
    2323-2345 `goto invalid;`): "upstream sent invalid chunked response", after the body bytes before it."""
    assert read_alike(codec, CHUNKED_OK + trailers) == ([CHUNKED_HEAD, b"ok", ("error", 502)], False)


@pytest.mark.parametrize("codec", CODECS)
def test_a_relayed_field_and_reason_are_written_to_the_client_as_they_came(codec: str) -> None:
    """nginx's header filter copies the upstream's status line and each field's key and value as read
    (src/http/ngx_http_header_filter_module.c): both server codecs write what the client codecs put back."""
    server = codec_classes(codec)[0]()
    server.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert type(server.next_event()) is Request and server.next_event() is END
    head = server.response_head(200, [(b"x-user@domain", b"v"), (b"x-a", b"foo\x01bar"), (b"content-length", b"2")],
                                reason=b"O\x01K")
    assert head.startswith(b"HTTP/1.1 200 O\x01K\r\nx-user@domain: v\r\nx-a: foo\x01bar\r\ncontent-length: 2\r\n")


def test_the_h11_codec_never_writes_a_field_that_would_split_its_head() -> None:
    """h11's refusal of a field stands when it holds NUL, CR or LF, or its name a space or `:`: what would end a
    line or the head for the client (nginx's parsers never give such a field)."""
    for field in [(b"x-a", b"a\r\nx-b: b"), (b"x-a", b"a\nb"), (b"x-a", b"a\x00"), (b"x a", b"v"), (b"x:a", b"v")]:
        server = codec_classes("h11")[0]()
        server.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert type(server.next_event()) is Request and server.next_event() is END
        with pytest.raises(h11.LocalProtocolError):
            server.response_head(200, [(b"x-user@domain", b"v"), field, (b"content-length", b"0")])


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


GET_CLOSE = b"GET %b HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
RELAYED_AS_NGINX = {  # path: (the upstream's answer, what the client gets: its status line, a header line, its body)
    "/value": (b"HTTP/1.1 200 OK\r\nX-A: foo\x01bar\r\nContent-Length: 2\r\n\r\nok", b"200 OK",
               b"x-a: foo\x01bar", b"ok"),
    "/name": (b"HTTP/1.1 200 OK\r\nX-User@Domain: v\r\nContent-Length: 2\r\n\r\nok", b"200 OK",
              b"x-user@domain: v", b"ok"),
    "/crcr": (b"HTTP/1.1 200 OK\r\nX-A: foo\r\r\nContent-Length: 2\r\n\r\nok", b"200 OK", b"x-a: foo", b"ok"),
    "/reason": (b"HTTP/1.1 200 O\x01K\r\nContent-Length: 2\r\n\r\nok", b"200 O\x01K", b"content-length: 2",
                b"ok"),
    "/trailer": (CHUNKED_OK + b"X-T: a\x01b\r\nBad Name: x\r\n\r\n", b"200 OK", b"transfer-encoding: chunked",
                 b"2\r\nok\r\n0\r\n\r\n"),
}


async def test_answers_nginx_relays_reach_the_client_as_through_nginx(nursery, gateway):
    """Each answer above through a gateway, whose upstream keeps its connection open: relayed as it came (the
    reason, a control byte in a value, a name nginx calls invalid) or as nginx reads it (more CRs before a line's
    LF; trailer lines skipped), where the gateway answered 502 (the reason, the value, the name, the CRs) or cut the
    response (the trailers). Raw bytes are read: a strict client parser would refuse what nginx sends."""
    services = []
    for i, (path, (answer, *_)) in enumerate(RELAYED_AS_NGINX.items()):
        backend = ScriptedBackend([answer], hold=TIMEOUT)
        await nursery.start(backend.serve)
        services.append(service(f"s{i}", f"http://127.0.0.1:{backend.port}", routes=[{"paths": [path]}]))
    port = await gateway({"services": services})
    for path, (_, status_line, line, body) in RELAYED_AS_NGINX.items():
        with trio.fail_after(TIMEOUT / 2):
            data, _ = await raw_exchange(port, GET_CLOSE % path.encode(), timeout=TIMEOUT / 2)
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 " + status_line + b"\r\n"), (path, data)
        assert b"\r\n" + line + b"\r\n" in head.lower() + b"\r\n", (path, data)
        assert rest == body, (path, data)


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
