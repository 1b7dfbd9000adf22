"""The hot-path codec: llhttp (via httptools) for parsing, a few byte joins for framing.

httptools calls back per element; we queue events so callers see h11's pull interface, including its flow control:
after END, events of the next message wait until `start_next_cycle` (h11's PAUSED). A parse error is queued after
the events that preceded it, so a valid pipelined request is still answered before the error is raised.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import NamedTuple

import httptools

from gateway.http.chunked import ChunkedFraming, oversized
from gateway.http.codec import (
    CHUNKED,
    CLOSED,
    END,
    FIRST_BUFFER_BYTES,
    HEAD_TOO_LARGE,
    LENGTH,
    MAX_LINE_BYTES,
    NEED_DATA,
    NGINX_METHOD,
    NO_BODY,
    NO_VALID_STATUS,
    TOO_BIG_HEADER,
    Event,
    Fields,
    HeadBuffers,
    Headers,
    ProtocolError,
    Request,
    Response,
    Transport,
    as_sent,
    check_head_buffers,
    check_request_head,
    check_start,
    check_target,
    estimated_line_lengths,
    first_of_single,
    head_buffers,
    head_line_lengths,
    keep_sent_target,
    length_in_range,
    mend_field,
    mend_request_head,
    nginx_version,
    overflow_error,
    read_before,
    restore_fields,
    sent_target,
    value_goes_on,
    version_missing,
)
from gateway.memo import Derived

REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
# a request's Transfer-Encoding of `chunked` and a tab, which llhttp refuses after the head (nginx's 501; the head's
# check, restore_framing_tabs, is the first to refuse it)
UNKNOWN_CODING = "client sent unknown Transfer-Encoding: a tab after chunked"
_CHUNK_END = b"0\r\n\r\n"
_OWS = b" \t"
_STATUS_101 = re.compile(rb"HTTP/[0-9]\.[0-9] 101[ \r]")  # a status line of 101, as llhttp reads one
# Body pieces (llhttp's on_body calls: one a chunk at least) that one body event joins at most: a read of 1-byte chunks
# is a few dozen events, not thousands of objects, and an event stands for bounded work (the readers count events
# against their checkpoint budget: gateway.http.net.Conn.pace).
_JOIN_MOST = 256


# A ProtocolError refusing a request head: (its bytes as sent, whether a check of the whole head refused it), what the
# access log sizes it by as nginx's $request_length (gateway.http.server.refused_length). (An attribute of its own:
# ProtocolError has no field for it.)
def note_head(error: ProtocolError, head: bytes | bytearray | None, whole: bool = False) -> None:
    """Note on `error`, refusing a request head, the head's bytes as sent from its request line on, as far as they
    came (None: the codec does not have them, nothing noted), and whether a check of the whole head refused it."""
    if head is not None:
        error.refused_head = (bytes(head), whole)


def _has_token(value: bytes, token: bytes) -> bool:
    """Does a comma-separated header value (Connection, Transfer-Encoding) list `token`? Case-insensitive."""
    return any(t.strip(_OWS) == token for t in value.lower().split(b","))


def _wants_keep_alive(version: bytes, headers: Headers) -> bool:
    """HTTP/1.1 persists unless `Connection: close`; HTTP/1.0 only with `Connection: keep-alive` (tokens). (An
    upstream's later 1.x or 2.0 is read as 1.1: ngx_http_proxy_process_status_line closes below 1.1 only.)"""
    keep = version >= b"1.1"
    for name, value in headers:
        if name == b"connection":
            if _has_token(value, b"close"):
                return False
            if _has_token(value, b"keep-alive"):
                keep = True
    return keep


def _later_version_keeps(version: bytes, status: int, headers: Headers) -> bool:
    """Does an upstream's answer (not to HEAD) of a version other than 1.1 leave its connection open? Below 1.1 no;
    a later one (1.2, 2.0) as a 1.1 answer would (ngx_http_proxy_process_status_line closes below 1.1 only), where
    llhttp's should_keep_alive reads an `x.0` as 1.0."""
    return version > b"1.1" and _wants_keep_alive(version, headers) and (
        status == 204 or status == 304 or not _close_delimited(headers))


def _close_delimited(headers: Headers) -> bool:
    """Is a response body with these headers read until EOF (RFC 9112 6.3: no length, chunked not final)?"""
    chunked = False
    for name, value in headers:
        if name == b"content-length":
            return False
        if name == b"transfer-encoding":
            chunked = value.lower().rsplit(b",", 1)[-1].strip(_OWS) == b"chunked"
    return not chunked


def _check_codings(headers: Headers) -> None:
    """nginx's ngx_http_upstream_process_transfer_encoding (>= 1.23): an upstream's one Transfer-Encoding header
    says `chunked` and nothing else, or its answer is a 502 ("upstream sent unknown Transfer-Encoding"). llhttp
    takes any coding (chunked when it is the final one, else read to EOF), which would relay a gzip body with the
    coding that says so dropped; h11 refuses them. The value is a response's as nginx keeps it (a tab after
    `chunked` stays: see LlhttpClient.on_header), so `chunked<TAB>`, which llhttp reads to EOF, is refused too."""
    codings = [value for name, value in headers if name == b"transfer-encoding"]
    if len(codings) > 1:
        raise ProtocolError("upstream sent duplicate header line: Transfer-Encoding", 502)
    if codings and codings[0].lower() != b"chunked":
        raise _unknown_coding(codings[0])


def _unknown_coding(value: bytes) -> ProtocolError:
    """nginx's refusal of an upstream's Transfer-Encoding but `chunked` (ngx_http_upstream.c:5220-5230): a 502."""
    return ProtocolError(f"upstream sent unknown Transfer-Encoding: {value!r}", 502)


def _invalid_length(value: bytes) -> ProtocolError:
    """nginx's refusal of an upstream's Content-Length (ngx_http_upstream.c:4747-4753): a 502, before any byte."""
    return ProtocolError(f'upstream sent invalid "Content-Length" header: "Content-Length: {value.decode("latin-1")}"',
                         502)


def _check_length(value: bytes) -> None:
    """An upstream's Content-Length llhttp took (it refuses non-digits and what overflows 64 bits), within nginx's
    ngx_atoof, which refuses one past its off_t, 2**63 - 1, leading zeros being digits like any other."""
    if not length_in_range(value.rstrip(b" \t").lstrip(b"0") or b"0"):
        raise _invalid_length(value)


# A Content-Length or Transfer-Encoding line with a tab in its value: ngx_http_parse_header_line skips spaces alone
# before a value and ends it at a space (ngx_http_parse.c:972-1013), so the tab is the value's, which ngx_atoof refuses
# and which is no `chunked`; llhttp and h11 skip a tab as whitespace. (Its value as nginx read it: its spaces around it
# dropped.)
_TABBED_VALUE = re.compile(rb"(?im)^(content-length|transfer-encoding): *([^\r\n]*?\t[^\r\n]*?) *\r?$")


def _final_head(data: bytes) -> bytes:
    """The first head in `data` (an upstream's bytes from where a head began, or from within an interim one: the
    rest of that first) that is not an interim one, past the empty lines llhttp skips, as far as it came; b"" when
    `data` ends in an interim one."""
    start = 0
    while True:
        start = len(data) - len(data[start:].lstrip(b"\r\n"))
        end = data.find(b"\r\n\r\n", start)
        final = data.startswith(b"HTTP/", start) and _INTERIM_STATUS.match(data, start) is None
        if end < 0:
            return data[start:] if final else b""
        if final:
            return data[start:end + 2]
        start = end + 4


def _check_tabbed_framing(data: bytes) -> None:
    """nginx's 502 for the final head in `data` (see _final_head) when a tab is in its Content-Length's or
    Transfer-Encoding's value (in a line not ended yet, too: whatever follows, the tab is the value's)."""
    found = _TABBED_VALUE.search(_final_head(data))
    if found is not None:
        raise _invalid_length(found[2]) if found[1].lower() == b"content-length" else _unknown_coding(found[2])


# A request's framing lines, each value as nginx reads it (_TABBED_VALUE's rule: the spaces around it dropped, a tab
# kept), and whether bytes hold one with a tab in its value at all
_FRAMING_LINE = re.compile(rb"(?im)^(content-length|transfer-encoding): *([^\r\n]*?) *\r?$")
_TABBED_FRAMING = re.compile(rb"(?im)^(?:content-length|transfer-encoding):[^\r\n]*\t")


def restore_framing_tabs(head: bytes, headers: Headers) -> None:
    """Put back in `headers` (parsed from `head`, a request head from its request line on) a tab the parsers skipped
    around a Content-Length or Transfer-Encoding value, each value as nginx read it: ngx_http_parse_header_line skips
    spaces alone before a value and ends it at a space (ngx_http_parse.c:972-1013), so check_request_head refuses it
    as nginx does (ngx_http_request.c:1980-2022): a length ngx_atoof refuses, 400; a coding but `chunked`, 501."""
    end = _RESPONSE_HEAD_END.search(head)
    sent: dict[bytes, list[bytes]] = {b"content-length": [], b"transfer-encoding": []}
    for line in _FRAMING_LINE.finditer(head, 0, len(head) if end is None else end.end()):
        sent[line[1].lower()].append(line[2])
    for n, (name, _) in enumerate(headers):
        values = sent.get(name)
        if values:  # (the n-th line of a name is its n-th field)
            value = values.pop(0)
            if b"\t" in value:
                headers[n] = (name, value)


def _declares_body(headers: Headers) -> bool:
    """Does a response head announce body bytes (chunked, or a length above 0; a tab may end it: on_header)?"""
    return any(name == b"transfer-encoding" or (name == b"content-length" and value.strip(b"0\t"))
               for name, value in headers)


def _body_framing(headers: Headers) -> bytes:
    """The header line framing a request's body (check_request_head let one at most through, and a
    Transfer-Encoding only as `chunked`), or b"" when it has none."""
    for name, value in headers:
        if name == b"content-length":
            return b"content-length: " + value if value.strip(b"0") else b""
        if name == b"transfer-encoding":
            return b"transfer-encoding: chunked"
    return b""


# Where a response head ends, its lines ended by LF alone or CRLF (nginx's ngx_http_parse_header_line)
_RESPONSE_HEAD_END = re.compile(rb"\n\r?\n")
# Spaces after the version's one, before the status code: ngx_http_parse_status_line's sw_status skips them
# (ngx_http_parse.c:1757-1760), where llhttp and h11 take one space
_SPACED_STATUS = re.compile(rb"(HTTP/[0-9]+\.[0-9]+ ) +(?=[0-9])")
# IIS's status with a sub-status, `403.1` (nginx's ngx_http_parse_status_line, sw_space_after_status: status 403)
_IIS_STATUS = re.compile(rb"(HTTP/[0-9]+\.[0-9]+ +[0-9]{3})\.[^ \r\n]*")
_INTERIM_STATUS = re.compile(rb"HTTP/[0-9]+\.[0-9]+ +1(?!01)[0-9]{2}(?![0-9])")  # a 1xx but a switch: a head follows
# A version nginx reads with more digits than llhttp and h11 take (one a side): ngx_http_parse_status_line's major of
# up to 3 digits, not 0 first, and minor of up to 3 after its leading zeros (ngx_http_parse.c:1705-1745)
_LONG_VERSION = re.compile(rb"HTTP/([1-9][0-9]{0,2})\.0*([0-9]{1,3}) ")
# A reason phrase (what follows the status code and a space) and the bytes h11 refuses in one, which nginx takes
# (ngx_http_parse_status_line's sw_status_text: any byte but CR and LF; llhttp too)
_REASON = re.compile(rb"(HTTP/[0-9]+\.[0-9]+ +[0-9]{3} )(.*)", re.S)
_NOT_IN_REASON = re.compile(rb"[\x00\x0b\x0c]")


class MendedResponse(NamedTuple):
    """What mend_response_head wrote: the bytes, where the last head mended ends in them, and for each head mended,
    in order, what its stand-ins stand for: its reason (None: as parsed) and header lines as nginx read them."""

    data: bytes
    end: int
    heads: list[tuple[bytes | None, Fields]]


def _mended_status(line: bytes) -> tuple[bytes, bytes | None]:
    """A status line (without its line end) as both parsers take it, and its reason when it holds a stand-in: one
    space before the status code (_SPACED_STATUS), IIS's sub-status dropped, a version of more digits (_LONG_VERSION)
    one digit a side, each at most 9: it compares with 1.1 as nginx's does, all nginx asks of it (it closes the
    connection below 1.1 only, ngx_http_proxy_module.c:1870-1872), so `HTTP/1.10` is read as 1.9, `HTTP/10.1` as
    9.1, `HTTP/1.01` as 1.1."""
    if (version := _LONG_VERSION.match(line)) is not None:
        line = b"HTTP/%d.%d " % (min(int(version[1]), 9), min(int(version[2]), 9)) + line[version.end():]
    if (spaced := _SPACED_STATUS.match(line)) is not None:
        line = spaced[1] + line[spaced.end():]
    if (iis := _IIS_STATUS.match(line)) is not None:
        line = iis[1] + line[iis.end():]
    reason = _REASON.match(line)
    if reason is None or _NOT_IN_REASON.search(reason[2]) is None:
        return line, None
    return reason[1] + _NOT_IN_REASON.sub(b" ", reason[2]), reason[2]


def _mended_field(line: bytes, n: int, read: Fields) -> bytes:
    """A header line of a response head (without its LF) as both parsers take it: more CRs before its LF dropped
    (ngx_http_parse_header_line's sw_almost_done takes them; a line of CRs alone is no blank line), and an invalid
    name or a control byte in a value given stand-ins (mend_field), the field as nginx read it noted in `read`: nginx
    relays it as it came (ngx_http_proxy_process_header keeps every line it reads, invalid_header or not). A
    Content-Length with a tab stays as it came: nginx refuses it (_TABBED_VALUE), and so do both codecs."""
    core = line.rstrip(b"\r") or line.removesuffix(b"\r")
    name, colon, value = core.partition(b":")
    stand_in = mend_field(name, value) if colon and not (b"\t" in value and name.lower() == b"content-length") \
        else None
    if stand_in is None:
        return core
    read[n] = (name.lower(), value.lstrip(b" \t").rstrip(b" "))  # (as LlhttpClient.on_header keeps a value)
    return stand_in[0] + b":" + stand_in[1]


def mend_response_head(data: bytes, interims: bool = True) -> MendedResponse | None:
    """`data` (an upstream's bytes from a status line on, after the empty lines llhttp skips) with its heads, the
    interim ones and the final one (the first head only, without `interims`), written as both parsers take what
    nginx takes in them, and where the last head mended ends in what is returned; None while that head has not
    ended. Only for a head a parser refused (a rare path):
    lines ended by LF alone end in CRLF (ngx_http_parse_status_line and _header_line end a line at LF), and header
    lines ended by more CRs before it too; the spaces before the status code are one (sw_status skips them); IIS's
    `403.1` status is 403 (sw_space_after_status: `case '.'`, the rest its text); IIS's duplicate `HTTP/1.1 ...`
    line among the header lines is dropped, as nginx ignores it
    (ngx_http_parse_header_line's sw_ignore_line, for an upstream's head only); and the bytes nginx takes and a parser
    refuses in a reason phrase, a header name or value get stand-ins (_mended_status, _mended_field), for the codecs
    to put back what they stand for. The bytes after the final head are left as they came."""
    out = [data[:len(data) - len(data.lstrip(b"\r\n"))]]
    pos = len(out[0])
    heads: list[tuple[bytes | None, Fields]] = []
    while True:
        end = _RESPONSE_HEAD_END.search(data, pos)
        if end is None:
            return None
        lines = data[pos:end.end()].split(b"\n")  # ..., the header lines, the blank line, b""
        status, reason = _mended_status(lines[0].removesuffix(b"\r"))
        out.append(status + b"\r\n")
        read: Fields = {}
        fields = [line for line in lines[1:-2] if not line.startswith(b"HTTP/")]
        out += [_mended_field(line, n, read) + b"\r\n" for n, line in enumerate(fields)]
        out.append(b"\r\n")
        heads.append((reason, read))
        pos = end.end()
        if not interims or _INTERIM_STATUS.match(status) is None:
            head = b"".join(out)
            return MendedResponse(head + data[pos:], len(head), heads)


def _first_head(data: bytes, after_interim: bool) -> int | None:
    """Where the head a parser refused begins in `data`, the chunks since the one it began in: past the empty lines
    llhttp skips; when an interim response ended in that chunk (`after_interim`), maybe past the rest of it first
    (each head llhttp took ends at its first CRLF CRLF). None when no status line begins there."""
    start = len(data) - len(data.lstrip(b"\r\n"))
    if not data.startswith(b"HTTP/", start) and after_interim:
        end = data.find(b"\r\n\r\n", start)
        start = end + 4 if end >= 0 else len(data)
        start += len(data) - start - len(data[start:].lstrip(b"\r\n"))
    return start if data.startswith(b"HTTP/", start) else None


class _HeadPending:
    """Stands for the response parser while a head llhttp refused, to be mended, has not ended: whatever comes is
    refused, so that LlhttpClient._reparse_mended sees the head again with it."""

    __slots__ = ()

    def feed_data(self, data: bytes) -> None:
        raise httptools.HttpParserError("the rest of a head to mend")


_HEAD_PENDING = _HeadPending()


def _response_parser(client: LlhttpClient | _Restoring) -> httptools.HttpResponseParser:
    """A response parser for `client` (or its callbacks), lenient where nginx is (and h11 too): any `HTTP/d.d`
    version (HTTP/1.2 and HTTP/3.0 status lines are relayed; ngx_http_parse_status_line takes any major 1-9), and
    spaces or tabs after a chunk size (ngx_http_parse_chunked: they begin an extension; gateway.http.chunked checks
    the h11 codec's alike). Once per upstream connection."""
    parser = httptools.HttpResponseParser(client)
    parser.set_dangerous_leniencies(lenient_version=True, lenient_spaces_after_chunk_size=True)
    return parser


class _Restoring:
    """The callbacks of a parser fed heads mend_response_head wrote: the client's, but that each head's reason and
    header lines are put back as nginx read them (MendedResponse.heads) before the client's on_headers_complete reads
    them. Only a connection that had a head mended pays for it."""

    __slots__ = ("on_message_begin", "on_status", "on_header", "on_body", "on_message_complete", "_client", "_heads")

    def __init__(self, client: LlhttpClient, heads: list[tuple[bytes | None, Fields]]) -> None:
        self.on_message_begin = client.on_message_begin
        self.on_status = client.on_status
        self.on_header = client.on_header
        self.on_body = client.on_body
        self.on_message_complete = client.on_message_complete
        self._client = client
        self._heads = heads

    def on_headers_complete(self) -> None:
        client = self._client
        if self._heads:
            reason, fields = self._heads.pop(0)
            if reason is not None:
                client._reason = reason
            restore_fields(client._headers, fields)  # type: ignore[arg-type]  # a list while a head is parsed
        client.on_headers_complete()


class _TrailersPending:
    """Stands for the response parser once llhttp refused a line of a trailer section nginx skips, until that section
    ends (LlhttpClient._skips_trailers): what comes is read as nginx reads it."""

    __slots__ = ("_client", "_framing")

    def __init__(self, client: LlhttpClient, framing: ChunkedFraming) -> None:
        self._client = client
        self._framing = framing

    def feed_data(self, data: bytes) -> None:
        self._client._read_trailers(self._framing, data)


# a last-chunk line as llhttp reads one (zeros, spaces, an extension, CRLF), at a line start (_skips_trailers)
_LAST_CHUNK = re.compile(rb"(?:^|(?<=\n))0+[ \t]*(?:;[^\r\n]*)?\r\n")


# an ordinary head for the body of an upgrade request that llhttp skipped (LlhttpServer._read_skipped_body)
_BODY_HEAD = b"POST / HTTP/1.1\r\nhost: upgrade\r\n%b\r\n\r\n"
_NO_REQUEST = Request(b"", b"", [], b"1.1", False)  # a server codec's last head, before its first
_CHUNK_LINE = re.compile(rb"[0-9A-Fa-f]+(?:;[^\r\n]*)?\r\n")  # a chunk-size line, told from a trailer line


class _Completions:
    """A throwaway parser's callbacks: how many messages it saw end."""

    __slots__ = ("ended",)

    def __init__(self) -> None:
        self.ended = 0

    def on_message_complete(self) -> None:
        self.ended += 1


def _completed(data: bytes) -> int:
    """How many requests a fresh parser sees end in `data` (which begins between two), up to its first error or
    a request it stops for (Upgrade with Connection: upgrade); past a `Connection: close`, as the server's parser
    reads on after one in a trailer section (LlhttpServer.on_chunk_complete)."""
    counter = _Completions()
    parser = httptools.HttpRequestParser(counter)
    parser.set_dangerous_leniencies(lenient_keep_alive=True)
    try:
        parser.feed_data(data)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):
        pass
    return counter.ended


def _end_of_requests(data: bytes, count: int) -> int:
    """The least prefix of `data` (which begins between two requests) in which `count` requests end (httptools tells
    no offsets): a dozen parses, for the rare paths that need an offset."""
    low, high = 0, len(data)
    while low < high:
        middle = (low + high) // 2
        if _completed(data[:middle]) >= count:
            high = middle
        else:
            low = middle + 1
    return low


def _llhttp_knows(method: bytes) -> bool:
    """Does llhttp take `method` in a request head? It knows a fixed table (GET ... QUERY; PRI only as HTTP/2's
    preface, no header after it), where nginx takes any of A-Z, `_` and `-`."""
    try:
        httptools.HttpRequestParser(_Completions()).feed_data(method + b" / HTTP/1.1\r\nHost: a\r\n\r\n")
    except httptools.HttpParserUpgrade:  # (CONNECT)
        return True
    except httptools.HttpParserError:
        return False
    return True


# whether llhttp knows a method it refused a head for: the few a client sends, each probed once
_LLHTTP_KNOWS: Derived[bytes, bool] = Derived(_llhttp_knows, 256)


def _as_known_method(head: bytes, method: bytes) -> bytes:
    """`head`, whose request line begins with `method` (one llhttp does not know), with GET in its place, padded with
    spaces (which llhttp skips before a target) to keep the line's length (a method of one or two letters aside)."""
    return b"GET" + b" " * (len(method) - 3) + head[len(method):]


# the most bytes since a chunk that began between two requests kept for _reparse_mended and take_upgraded: what a
# connection holds while a request spans reads (a body longer than this before a raw-byte head pipelined after it:
# that head gets 400; one sent with an Upgrade alone: what followed it in its last read is not relayed on a switch)
_REPARSE_WINDOW = 8192


def _pipelined_head(data: bytes) -> int | None:
    """Where in `data` (a chunk that began between two requests) the head after its complete requests begins: the
    least prefix in which as many end as in all of it (httptools tells no offsets), past the empty lines llhttp skips;
    None when that is not a request line's start. Only for a refused head (a raw byte in its target): a dozen parses."""
    count = _completed(data)
    if not count:
        return None
    low = _end_of_requests(data, count)
    while data[low:low + 1] in (b"\r", b"\n"):
        low += 1
    return low if low < len(data) else None


class _Trailers:
    """Where httptools' `on_header` calls land once a head is complete. Trailer fields are dropped, as h11 drops
    them, so they can never leak into the head's header list; but their size is bounded like a head's. One named
    Connection or Proxy-Connection is noted (`connection`): llhttp reads it as the head's (LlhttpServer,
    _UpstreamTrailers)."""

    __slots__ = ("room", "connection")

    def __init__(self) -> None:
        self.room = 0
        self.connection = False

    def append(self, field: tuple[bytes, bytes]) -> None:
        self.room -= len(field[0]) + len(field[1]) + 4
        if self.room < 0:
            raise ProtocolError("trailer section too large", HEAD_TOO_LARGE)
        if field[0] == b"connection" or field[0] == b"proxy-connection":
            self.connection = True


class _UpstreamTrailers(_Trailers):
    """An upstream answer's trailer fields (LlhttpClient's): with one named Connection or Proxy-Connection, which
    llhttp reads as the head's (`close` there ends its parser with the answer: "Data after `Connection: close`"), the
    connection, kept or not as the head said (nginx skips trailer lines unread: ngx_http_parse.c:2311-2345), gets a
    fresh parser for its next exchange (start_next_cycle)."""

    __slots__ = ("_client",)

    def __init__(self, client: LlhttpClient) -> None:
        super().__init__()
        self._client = client

    def append(self, field: tuple[bytes, bytes]) -> None:
        _Trailers.append(self, field)
        if self.connection:
            self.connection = False
            self._client._renew = True


class _BodyFramer:
    """Frames an outgoing body: chunked, fixed length, or nothing (HEAD, 204, 304)."""

    __slots__ = ("_chunked", "_no_body", "open_ended")

    def __init__(self) -> None:
        self._chunked = False
        self._no_body = False
        self.open_ended = False  # the body takes bytes its head did not announce: chunked or ended by close

    def body(self, data: bytes) -> bytes:
        if self._no_body or not data:
            return b""
        if self._chunked:
            return b"%x\r\n%b\r\n" % (len(data), data)
        return data

    def end(self) -> bytes:
        return _CHUNK_END if self._chunked else b""


class _Parsing(_BodyFramer):
    """What both sides share: feeding httptools, the head-size limit, the event queue."""

    __slots__ = ("_parser", "_events", "_headers", "_trailers", "_max_head", "_head_fed", "_head_partial", "_feeding",
                 "_at_start", "_in_head", "_dead", "_tunnel", "_bad_method", "_head_chunks", "_pipelined")

    _MALFORMED = "malformed message"
    _BAD = 400  # the status of a parse error

    def __init__(self, parser: httptools.HttpRequestParser | httptools.HttpResponseParser, max_head: int) -> None:
        super().__init__()
        self._parser = parser
        # A list, not a deque: a deque costs 700 bytes per connection, which 50,000 idle streams feel (issue 19). It
        # holds one message's few events; pipelined requests read in one chunk make it longer, and each pop(0) then
        # moves the rest, far less work than serving the requests they are.
        self._events: list[Event | ProtocolError] = []
        self._headers: Headers | _Trailers = []
        self._trailers = _Trailers()
        self._max_head = max_head
        self._head_fed = 0  # bytes of earlier chunks that belong to the head being parsed (see on_message_begin)
        self._head_partial = False  # the head began mid-chunk, so _head_fed undercounts it
        self._head_chunks: list[bytes] = []  # the earlier chunks of a head that began with one (_head_fed > 0)
        # which head since the last that began a chunk this one is, of those that began after another message in one
        # (the server's: LlhttpServer._restore_framing_tabs finds its bytes past the requests before it)
        self._pipelined = 0
        self._feeding = 0  # length of the chunk being fed
        self._at_start = True  # no message ended yet in the chunk being fed
        self._in_head = False
        self._dead = False  # parser retired: an error, EOF (server) or a HEAD response (client)
        self._tunnel = b""  # what came after the head of a protocol switch (see _upgraded): take_upgraded
        self._bad_method = False  # llhttp refused a request's method (so the parser holds none)

    def on_message_begin(self) -> None:
        self._headers = []
        self._in_head = True
        # A head that begins after another message in the same chunk is counted from the next chunk on.
        if self._at_start:
            self._head_fed = 0
            self._head_partial = False
        else:
            self._pipelined = self._pipelined + 1 if self._head_partial else 1
            self._head_fed = -self._feeding
            self._head_partial = True

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value.rstrip(_OWS)))  # llhttp strips OWS before a value, not after

    def _head_complete(self) -> Headers:
        """Headers of the head just parsed; from here on `on_header` collects (and bounds) trailers."""
        self._in_head = False
        headers = self._headers
        self._trailers.room = self._max_head
        self._headers = self._trailers
        return headers  # type: ignore[return-value]  # a plain list while a head is parsed (on_message_begin)

    def _feed(self, data: bytes) -> None:
        self._feeding = len(data)
        self._at_start = True
        # What follows a refusal may feed the parser again (_upgraded, _reparse_mended): out of the except blocks,
        # where Python would make the exception being handled the __context__ of any raised meanwhile, hiding what a
        # callback raised (httptools' HttpParserCallbackError carries it there).
        error: httptools.HttpParserError | None = None
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            upgrade_at: int = e.args[0]
        except httptools.HttpParserError as e:
            error = e
        else:
            if self._in_head:  # the head goes on in the next chunk: bound it (h11's max_incomplete_event_size)
                if self._head_fed:
                    self._head_chunks.append(data)
                else:  # (kept for _reparse_mended and the head's size, which need its bytes; a split head is rare)
                    self._head_chunks = [data]
                self._head_fed += len(data)
                if self._head_fed > self._max_head:
                    self._fail(self._overflow())
                else:
                    self._head_waits(data)
            return
        if error is None:
            self._upgraded(data, upgrade_at)
            return
        if self._switched_anyway(data):
            return
        if self._in_head and self._reparse_mended(data):
            return
        if not self._in_head and self._skips_trailers(data, error):
            return
        self._bad_method = isinstance(error, httptools.HttpParserInvalidMethodError)
        cause = error.__context__  # what a callback raised
        if not isinstance(cause, ProtocolError):
            cause = self._parser_error(error)
        self._fail(cause)

    def _parser_error(self, error: httptools.HttpParserError) -> ProtocolError:
        """The error llhttp's own refusal (no callback's) stands for."""
        return ProtocolError(f"{self._MALFORMED}: {error}", self._BAD)

    def _reparse_mended(self, data: bytes) -> bool:
        """A request head llhttp refused: parsed again as mend_request_head mends it, if it does (server side)."""
        return False

    def _switched_anyway(self, data: bytes) -> bool:
        """llhttp stopped after a 101 it calls no upgrade (without Upgrade or Connection: upgrade), which answers
        ours: switched all the same (client side)."""
        return False

    def _skips_trailers(self, data: bytes, error: httptools.HttpParserError) -> bool:
        """llhttp refused a line of a trailer section, in `data`, that nginx skips: the message ends with the section
        all the same (client side)."""
        return False

    def _head_waits(self, data: bytes) -> None:
        """The head being parsed goes on after `data`, the chunk just fed: a look at what it holds so far."""

    def _overflow(self) -> ProtocolError:
        """The error for a head that went past the limit before it ended."""
        return ProtocolError("message head too large", 502)

    def take_body(self) -> tuple[bytes, bool]:
        """After the head, before its END: the body bytes parsed so far, and whether the message ended with them
        (next_event's loop in one call, the proxy's path: a body read with its head)."""
        events = self._events
        if len(events) == 2 and events[1] is END and type(body := events[0]) is bytes:  # the usual: all of it
            events.clear()
            self._message_done()
            return body, True
        chunks: list[bytes] = []
        for chunk in events:  # (one slice deleted after: each del of the first would move all the rest)
            if type(chunk) is not bytes:
                break
            chunks.append(chunk)
        del events[:len(chunks)]
        if events and events[0] is END:
            del events[0]
            self._message_done()
            return b"".join(chunks), True
        if events:
            self.next_event()  # raises the error queued after the chunks, as it would
        return b"".join(chunks), False

    def next_event(self) -> Event:
        raise NotImplementedError

    def _join_body(self, first: bytes) -> bytes:
        """`first`, a body piece just taken from the queue, with the pieces queued after it (up to _JOIN_MOST in
        all): one event for the chunks of a read, however small they are."""
        events = self._events
        pieces = [first]
        for piece in events[:_JOIN_MOST - 1]:
            if type(piece) is not bytes:
                break
            pieces.append(piece)
        del events[:len(pieces) - 1]
        return b"".join(pieces)

    def _message_done(self) -> None:
        """The END of the message being parsed was taken (what next_event does when it returns END)."""
        raise NotImplementedError

    def _upgraded(self, data: bytes, offset: int) -> None:
        raise NotImplementedError

    def take_upgraded(self) -> bytes:
        rest, self._tunnel = self._tunnel, b""
        return rest

    def _fail(self, error: ProtocolError) -> None:
        self._events.append(error)
        self._dead = True


class _SentMethod:
    """The callbacks of a parser fed a head mend_request_head wrote, or whose method llhttp does not know, written as
    one it knows (_as_known_method): the server's own but for on_headers_complete, which first puts that head's
    header lines back as nginx read them (`fields`), then is the server's _sent_headers_complete, and gives its
    Request (or refusal) the target as sent when `sent` (sent_target: its bytes 0x80-0xFF were %-escaped)."""

    __slots__ = ("on_message_begin", "on_url", "on_header", "on_body", "on_message_complete", "on_chunk_header",
                 "on_chunk_complete", "_server", "_fields", "_sent")

    def __init__(self, server: LlhttpServer, fields: Fields, sent: bytes | None = None) -> None:
        self.on_message_begin = server.on_message_begin
        self.on_url = server.on_url
        self.on_header = server.on_header
        self.on_body = server.on_body
        self.on_message_complete = server.on_message_complete
        self.on_chunk_header = server.on_chunk_header
        self.on_chunk_complete = server.on_chunk_complete
        self._server = server
        self._fields = fields
        self._sent = sent

    def on_headers_complete(self) -> None:
        server = self._server
        if self._fields:
            restore_fields(server._headers, self._fields)  # type: ignore[arg-type]  # a list while a head is parsed
            self._fields = {}
        sent = self._sent
        if sent is None:
            server._sent_headers_complete()
            return
        self._sent = None  # (the parser's later heads are read as they are)
        try:
            server._sent_headers_complete()
        except ProtocolError as e:
            e.target = as_sent(sent, e.target)
            raise
        keep_sent_target(server._request, sent)


class LlhttpServer(_Parsing):
    """Server side of a client connection.

    A request head is sized as nginx's buffers hold it (check_head_lines) on its bytes as sent, which the codec has
    for a head that began a read (the chunks it kept for it). httptools tells no offsets, so of a head that began in
    the read that ended the request before it (pipelined) the codec knows only the parts: it is sized as
    `method target HTTP/1.1` and `name: value` lines (estimated_line_lengths), and, not yet ended, bounded by its
    whole size only. (nginx itself sizes such a head where the request before it left its buffers.)"""

    __slots__ = ("_url", "_started", "_method", "_answering", "_version", "_persist", "_request_done", "_response_done",
                 "_close", "_max_line", "_buffers", "_head_check", "_stale_method", "_before", "_prev", "_tunnel_mark",
                 "_chunk_at", "_as_sent", "_request")
    _parser: httptools.HttpRequestParser

    _MALFORMED = "malformed request"

    def __init__(self, max_header_bytes: int = 32768, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        # nginx's large header buffers (check_head_lines); a head (or trailers) may take as much as they hold
        self._max_line, self._buffers, bound = head_buffers(max_header_bytes, min(max_line_bytes, max_header_bytes))
        super().__init__(httptools.HttpRequestParser(self), bound)
        self._head_check: HeadBuffers | None = None  # nginx's buffers over a long head that has not ended
        self._url = b""
        self._started = False  # a request is being parsed: EOF now is an error, not CLOSED
        # The request being answered (the last one handed over; `_request` may be one parsed ahead) and the method
        # the client sent it with: a policy may change the method (Exchange.set_method, as ngx.req.set_method)
        self._method = b"GET"
        self._answering = _NO_REQUEST
        self._version = b"1.1"
        # the current request allows another one after it (HTTP/1.1 without close, HTTP/1.0 with keep-alive)
        self._persist = False
        self._request_done = False
        self._response_done = False
        self._close = False
        self._stale_method = b""  # what llhttp's method read when the request being parsed began (see receive_data)
        self._prev = b""  # the chunk being fed (see _reparse_escaped)
        # the bytes before it since the last chunk that began between two requests (b"": it began so itself); None:
        # more than _REPARSE_WINDOW of them
        self._before: bytes | None = b""
        self._tunnel_mark: tuple[bytes, int] | None = None  # when _tunnel is current (_upgraded, take_upgraded)
        self._chunk_at: int | None = None  # a chunk-size line was read: where its chunk's data begins in _events
        self._as_sent = b""  # the method of the head being parsed, when the parser reads another (_SentMethod)
        self._request = _NO_REQUEST  # the last head's: its chunked body's framing adds to its size

    # httptools callbacks -------------------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        _Parsing.on_message_begin(self)
        self._url = b""
        self._started = True
        self._stale_method = self._parser.get_method()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_headers_complete(self) -> None:
        headers = self._head_complete()
        parser = self._parser
        method = parser.get_method()
        url = self._url
        try:
            # a head that began a read and ended in its first FIRST_BUFFER_BYTES fits nginx's first buffer, and its
            # size is where it ended (with empty lines before it, which nginx skips uncounted: a client's stray CRLF
            # sent with its next request)
            size = 0 if self._head_partial or self._head_fed else \
                self._prev.find(b"\r\n\r\n", 0, FIRST_BUFFER_BYTES) + 4
            if size <= 4:  # (a head not in one read alone, or past the first buffer)
                size = self._check_buffers(method, url, headers)
                self._restore_framing_tabs(headers)
            elif b"\t" in self._prev:  # (a tab around a framing value is the value's for nginx)
                self._restore_framing_tabs(headers)
            if parser.get_http_version() == "1.1":
                version = b"1.1"
                keep = parser.should_keep_alive()  # llhttp's token match of Connection: close, free
            else:
                try:
                    version = nginx_version(parser.get_http_version().encode())  # (llhttp takes 0.9 and 2.0 too)
                except ProtocolError:
                    check_target(url)
                    raise
                keep = _wants_keep_alive(version, headers)
            target, host, expect = check_request_head(method, url, headers, version)
        except ProtocolError as e:
            self._refused_whole(e, method, url, headers)
            raise
        request = Request(method, target, headers, version, keep, host, expect,
                          None if target is url else url, size)  # (an absolute-form url: a new origin form)
        self._events.append(request)
        self._request = request

    def _restore_framing_tabs(self, headers: Headers) -> None:
        """restore_framing_tabs for the head just parsed, on its own bytes alone, as nginx parses a pipelined head
        from the buffer's rest (ngx_http_set_keepalive): those it came in when it began a read (_head_as_sent), else
        those past the requests before it since the last read that began between two. Past _REPARSE_WINDOW of them
        (a long body before it) where it begins is not known: its headers stay as llhttp gave them, never read from
        bytes that may be a body."""
        if not self._head_partial:
            head = self._head_as_sent()
        elif self._before is None:
            return
        else:  # (its reads hold a tabbed framing line at all? before the dozen parses that find where it begins)
            reads = self._prev if self._head_fed < 0 else b"".join(self._head_chunks) + self._prev
            if b"\t" not in reads or _TABBED_FRAMING.search(reads) is None:
                return
            whole = self._before + self._prev
            head = whole[_end_of_requests(whole, self._pipelined):].lstrip(b"\r\n")
        if head is not None and b"\t" in head:
            restore_framing_tabs(head, headers)  # (which reads the head's lines alone, up to its blank line)

    def _refused_whole(self, error: ProtocolError, method: bytes, url: bytes, headers: Headers) -> None:
        """What `error`, refusing the head just parsed (`headers` its header lines), says of it: its request line's
        method and target, the header lines nginx had read (read_before), its bytes as sent (note_head)."""
        error.method = method
        error.target = url
        read_before(error, headers)
        note_head(error, self._head_as_sent(), error.headers is headers)

    def _sent_headers_complete(self) -> None:
        """on_headers_complete of a parser whose head's method stands for the client's (_SentMethod): that head's
        Request (or error) carries the client's. The parser's later heads are read as they are."""
        method = self._as_sent
        if not method:
            self.on_headers_complete()
            return
        self._as_sent = b""
        try:
            self.on_headers_complete()
        except ProtocolError as e:
            e.method = method
            raise
        request = self._events[-1]
        assert type(request) is Request
        request.method = method

    def _check_buffers(self, method: bytes, url: bytes, headers: Headers) -> int:
        """The size of the head just parsed, and nginx's buffers for it when it may not fit the first one
        (check_head_buffers): on its bytes when they are known (it began a read: the chunks kept for it and this
        one), else on its parts (the class's docstring)."""
        if self._head_partial:
            lengths = estimated_line_lengths(method, url, headers)
            size = sum(lengths)
            if size <= FIRST_BUFFER_BYTES:
                return size
        else:
            data = b"".join(self._head_chunks) + self._prev if self._head_fed else self._prev
            if data[:1] == b"\r" or data[:1] == b"\n":
                data = data.lstrip(b"\r\n")  # (the empty lines llhttp skips before a request line)
            size = data.find(b"\r\n\r\n") + 4
            if size <= FIRST_BUFFER_BYTES:
                return size
            lengths = head_line_lengths(data[:size])
        check_head_buffers(lengths, self._parser.get_http_version().encode(), self._max_line, self._buffers)
        return size

    def on_body(self, body: bytes) -> None:
        self._events.append(body)

    def _parser_error(self, error: httptools.HttpParserError) -> ProtocolError:
        # llhttp refuses a Transfer-Encoding check_request_head took as `chunked` (it strips OWS) right after the head:
        # one whose `chunked` a tab follows, which nginx keeps in the value (ngx_http_parse_header_line ends a value
        # at SP, CR or LF only) and answers 501 for, before any body (ngx_http_process_request_header: "client sent
        # unknown Transfer-Encoding"). The Request queued for that head is taken back: the request is refused whole.
        events = self._events
        request = events[-1] if events else None
        if type(request) is Request and str(error) == "Request has invalid `Transfer-Encoding`":
            del events[-1]
            refused = ProtocolError(UNKNOWN_CODING, 501)
            refused.method, refused.target = request.method, request.target
            note_head(refused, self._head_as_sent(), True)
            return refused
        return _Parsing._parser_error(self, error)

    def _fail(self, error: ProtocolError) -> None:
        if self._in_head:  # a head refused before it ended: the header lines llhttp gave so far (read_before)
            read_before(error, self._headers)  # type: ignore[arg-type]  # a list while a head is parsed
            note_head(error, self._head_as_sent())
        _Parsing._fail(self, error)

    def _head_as_sent(self) -> bytes | None:
        """The bytes of the head being parsed (or just parsed), from its request line on, and what came after it in
        the chunk fed: when it began a read (see the class's docstring), else None."""
        if self._head_partial:
            return None
        chunks = self._head_chunks if self._head_fed else []
        data = b"".join(chunks) if chunks and chunks[-1] is self._prev else b"".join(chunks) + self._prev
        return data.lstrip(b"\r\n")  # (the empty lines llhttp skips before a request line)

    def _overflow(self) -> ProtocolError:
        url = self._url  # (the request line as sent, if it ended: `method target HTTP/1.1`)
        return overflow_error(len(self._parser.get_method()) + len(url) + 12 if url else 0, self._max_line)

    def _head_waits(self, data: bytes) -> None:
        if self._parser.get_http_version() == "2.0":  # (llhttp's 2.0 once it read the 2): nginx's 505, at once
            try:  # (check_start; the request line taken as `method target HTTP/2.0`)
                check_start(b"%b %b HTTP/2.0" % (self._parser.get_method(), self._url), self._max_line)
            except ProtocolError as e:
                self._fail(e)
                return
        if self._head_fed > FIRST_BUFFER_BYTES and not self._head_partial:  # (a head pipelined after another in the
            check = self._head_check  # same read: its whole size only, see the class's docstring)
            try:
                if check is None or check.head is not self._head_chunks:
                    check = self._head_check = HeadBuffers(self._head_chunks, self._max_line, self._buffers)
                    check.feed(b"".join(self._head_chunks).lstrip(b"\r\n"))
                else:
                    check.feed(data)
            except ProtocolError as e:
                self._fail(e)
                return
        # A request line that ended without a version (HTTP/0.9) is a whole request for nginx; llhttp takes it as
        # 0.9 too but reads header lines after it, so it would wait for a blank line that never comes. Before any
        # header line (and once the target began), a chunk that ends with a line end ends the request line: that
        # line, being `method target`, has no version. (Only for a head split across reads: never per request.)
        if self._headers or not self._url or data[-1:] != b"\n":
            return
        before = self._before
        whole = data if before is None else before + data
        method = self._parser.get_method()
        line = whole[whole.rfind(b"\n", 0, len(whole) - 1) + 1:-1].rstrip(b"\r")
        if line[:len(method) + 1] == method + b" " and line[len(method):].lstrip(b" ") == self._url:
            self._fail(version_missing(self._as_sent or method, self._url))

    def _reparse_mended(self, data: bytes) -> bool:
        # nginx takes what llhttp refuses (mend_request_head). The head's bytes: those of a head that began with a
        # chunk; one that began after other requests is found by parsing again what came since the last chunk that
        # began between two requests (however the requests before it, and this head, were cut into chunks).
        if not self._head_partial:  # (past the empty lines llhttp skips before a request line)
            head = (b"".join(self._head_chunks) + data if self._head_fed else data).lstrip(b"\r\n")
        elif self._before is not None and (start := _pipelined_head(whole := self._before + data)) is not None:
            head = whole[start:]
        else:
            return False
        if not (b"A" <= head[:1] <= b"Z" or head[:1] == b"_" or head[:1] == b"-"):
            # Not a method's first byte: nginx refuses it at once, nothing to mend; and the bytes stay as they came
            # for take_upgraded (a WebSocket frame sent with its handshake).
            return False
        method_end = head.find(b" ")
        if method_end < 0:
            return self._method_goes_on(head)
        method = head[:method_end]
        if value_goes_on(head):  # (its value is put back whole: the head is mended once the line ended)
            return self._waits_for_more(head)
        try:
            mending = mend_request_head(head, self._max_line)
        except ProtocolError as e:  # a version nginx does not speak: 505
            e.method = method
            self._fail(e)
            return True
        mended, fields = (None, {}) if mending is None else mending
        # a method nginx takes and llhttp does not know: read as GET, the Request given the client's (_SentMethod)
        as_sent = method if NGINX_METHOD.fullmatch(method) is not None and not _LLHTTP_KNOWS[method] else b""
        if as_sent:
            mended = _as_known_method(head if mended is None else mended, method)
        elif mended is None:  # (nothing to mend: a head read as GET and refused again keeps the method as sent)
            return False
        sent = None if mending is None else sent_target(head)
        self._as_sent = as_sent
        self._parser = httptools.HttpRequestParser(_SentMethod(self, fields, sent) if as_sent or fields or sent
                                                   else self)
        self._head_chunks = []
        self._before, self._prev = b"", mended
        queued = len(self._events)
        self._feed(mended)
        if len(head) != len(mended):
            self._size_as_sent(queued, len(head) - len(mended))  # (what follows the head is as it came)
        chunks = self._head_chunks
        # The head goes on (the chunk fed is its start, not a later head's that was mended in turn): mended again from
        # its bytes as sent once more of them came (`HTTP/1.1` may go on as `HTTP/1.1000`).
        if self._in_head and not self._head_partial and not self._dead and len(chunks) == 1 and chunks[0] is mended:
            self._head_chunks = [head]
            self._head_fed = len(head)
        return True

    def _size_as_sent(self, queued: int, unfed: int) -> None:
        """The mended head's Request, if it ended in the mended bytes just fed (the first queued past `queued`), sized
        as its head came (`unfed`: its bytes as sent less those fed), as nginx's $request_length counts it
        (ngx_http_request.c:1124,1454,1519). A head that goes on is sized on its bytes as sent (_check_buffers)."""
        for event in self._events[queued:]:
            if type(event) is Request:
                event.size += unfed
                return

    def _method_goes_on(self, head: bytes) -> bool:
        """llhttp refused `head`, a request line not past its method yet: one nginx takes waits for the rest of it,
        the parser left refusing whatever comes (it is sticky), so that the next read mends the head with it."""
        if NGINX_METHOD.fullmatch(head) is None:
            return False
        return self._waits_for_more(head)

    def _waits_for_more(self, head: bytes) -> bool:
        """`head`, refused as it came, waits for more of it within nginx's buffers (a 414 or 494 past them), the
        parser left refusing whatever comes (it is sticky), so that the next read mends the head with it."""
        try:
            HeadBuffers(head, self._max_line, self._buffers).feed(head)
        except ProtocolError as e:
            self._fail(e)
            return True
        self._head_chunks = [head]
        self._head_fed = len(head)
        self._head_partial = False
        return True

    def on_message_complete(self) -> None:
        self._events.append(END)
        self._started = False
        self._at_start = False

    def on_chunk_header(self) -> None:
        self._chunk_at = len(self._events)

    def on_chunk_complete(self) -> None:
        # The chunk's framing, in its request's size (nginx's $request_length counts the bytes as read): its size
        # line as clients write it (`%x` CRLF) when the chunk came in one read (httptools tells no offsets), as it came
        # when it spanned reads (_size_chunk counted it); its data's CRLF, or the last chunk's trailer section (as
        # `name: value` CRLF lines) and blank line.
        at = self._chunk_at
        if at is None:
            framing = 2
        else:
            self._chunk_at = None
            framing = len(b"%x" % sum(map(len, self._events[at:]))) + 4  # type: ignore[arg-type]  # (its data)
        trailers = self._trailers
        self._request.size += framing + self._max_head - trailers.room
        if trailers.connection:
            # llhttp reads a trailer named Connection or Proxy-Connection as the head's, and `close` in it would end
            # the connection's parsing at the message's end ("Data after `Connection: close`"); nginx skips trailer
            # lines unread (ngx_http_parse.c:2311-2343): the connection goes on as the head said (next_event refuses
            # what follows a last request itself).
            trailers.connection = False
            self._parser.set_dangerous_leniencies(lenient_keep_alive=True)

    def request_line_so_far(self) -> tuple[bytes, bytes]:
        if not self._in_head or self._dead:
            return b"", b""
        # llhttp's method is this request's once its target began, or once it changed from the previous one's
        method = self._as_sent or self._parser.get_method()
        if not self._url and method == self._stale_method:
            return b"", b""
        # the request line was whole: its line break came (the head's chunks, this one's last, are kept while it is
        # incomplete; one begun after another request's end may count that one's: a target is then only logged)
        whole = self._headers or any(b"\n" in chunk for chunk in self._head_chunks)
        return method, self._url if whole else b""

    # ServerCodec.head_begun: the `_in_head` slot under a second name, read with no call (handle_connection reads it
    # between any two requests); llhttp skips the empty lines before a request line: no message begins with them
    head_begun: bool = _Parsing.__dict__["_in_head"]

    # sans-I/O interface ----------------------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        if self._dead:
            return
        if data:
            if self._started:  # (what came since the last chunk that began between two requests: bounded)
                if (before := self._before) is not None:
                    before += self._prev
                    self._before = before if len(before) <= _REPARSE_WINDOW else None
            else:
                self._before = b""
            self._prev = data
            self._feed(data)
            if self._chunk_at is not None:
                self._size_chunk(data)
        elif self._started:
            self._fail(ProtocolError("client closed the connection mid-request", cut=True))
        else:  # between requests: the client is done
            self._events.append(CLOSED)
            self._dead = True
            return
        # A head refused past its method, or cut by EOF past its target or its whole method: its method was read
        # (the answer to a HEAD has no body). llhttp stores a method once its token matched; before, it reads as the
        # previous request's (DELETE, 0, for the first): a HEAD is this request's only when the method changed to
        # it. (A whole `HEAD` after a HEAD cannot be told from a cut `H`: its 400 then has a body, which a client
        # that half-closed reads past harmlessly, where a bodiless 400 announcing one would leave it waiting.)
        if self._dead and self._in_head and (not self._bad_method if data else self._url or (
                self._parser.get_method() == b"HEAD" and self._stale_method != b"HEAD")):
            error = self._events[-1]
            if type(error) is ProtocolError and not error.method:
                error.method = self._as_sent or self._parser.get_method()
                if self._headers:  # (a header line came: the request line was whole)
                    error.target = self._url

    def _size_chunk(self, data: bytes) -> None:
        """A chunk-size line was read in `data` and its chunk goes on past it: a size past nginx's off_t is invalid
        (ngx_http_parse_chunked; llhttp takes up to 2**64 - 1), the request a bad one before any of that chunk's
        data. httptools tells no offsets: the line ends where the chunk's data in `data`, all of it after the line,
        begins. The line is counted in its request's size."""
        at, self._chunk_at = self._chunk_at, None
        if at is None or self._dead:
            return
        events = self._events
        after = 0
        for ev in events[at:]:
            if type(ev) is not bytes:
                self._request.size += 3  # a last chunk's trailer section: no data of its own (its line `0` CRLF)
                return
            after += len(ev)
        head = data[: len(data) - after]
        start = head.rfind(b"\n", 0, len(head) - 1) + 1
        if not start and self._before:  # the line began in an earlier read
            head = self._before + head
            start = head.rfind(b"\n", 0, len(head) - 1) + 1
        line = head[start:]
        if oversized(line):
            del events[at:]
            self._fail(ProtocolError("chunk size too large", self._BAD))
            return
        # its size line as it came, counted in its request's size (on_chunk_complete counts the rest); a line that is
        # none is the last chunk's trailer section begun in this read (llhttp gives a field once the next one began):
        # that chunk's line was `0` CRLF
        self._request.size += len(line) if _CHUNK_LINE.fullmatch(line) is not None else 3

    def _upgraded(self, data: bytes, offset: int) -> None:
        # llhttp stops after a request with Upgrade and Connection: upgrade, skipping any body. Like h11 (and nginx,
        # which switches only on a 101: ngx_http_proxy_module.c 2039-2044) we serve it as an ordinary request
        # (answering anything but 101 declines the upgrade) and parse on after it, which httptools allows. What came
        # after its head is also kept as it is: when the answer is a 101 (switch_protocols), those bytes are the
        # new protocol's (take_upgraded), while the events parsed from them, and no chunk since, are all there is.
        events = self._events
        request = events[-2]
        assert type(request) is Request  # the head llhttp parsed before it stopped
        framing = _body_framing(request.headers)
        if framing:
            self._read_skipped_body(data[offset:], framing)
            return
        rest = data[offset:]
        queued = len(events)
        if rest:
            self._before, self._prev = b"", rest
            self._feed(rest)
        self._tunnel = rest
        self._tunnel_mark = (self._prev, len(events) - queued)

    def _read_skipped_body(self, rest: bytes, framing: bytes) -> None:
        """The body llhttp skipped after an upgrade request's head (`rest`: what followed that head), read by its
        framing as nginx reads any request's: a fresh parser takes an ordinary head framed so, its events dropped,
        then `rest`. The bytes kept since a chunk began between two requests start with that head, as if it had
        come in the upgrade request's place, so take_upgraded and _reparse_mended parse them again alike."""
        events = self._events
        del events[-1]  # the END llhttp gave the request, its body skipped
        head = _BODY_HEAD % framing
        request = self._request
        self._parser = httptools.HttpRequestParser(self)
        self._parser.feed_data(head)
        self._pipelined = 0  # (the head after the body is the first after `head`)
        del events[-1]  # that head's Request: the request is the upgrade's, already queued
        self._request = request
        self._before, self._prev = head, rest
        self._tunnel, self._tunnel_mark = b"", None
        if rest:
            self._feed(rest)

    def take_upgraded(self) -> bytes:
        # What followed the request answered: kept by _upgraded when llhttp stopped for it (Connection: upgrade);
        # else (an Upgrade alone, which Kong tunnels too) in the bytes since the last chunk that began between two
        # requests, none having come since its END (the last taken): past as many requests as a fresh parser sees
        # end in them, less those whose events are still queued.
        mark = self._tunnel_mark
        events = self._events
        if mark is not None and mark[0] is self._prev and mark[1] == len(events):
            rest = self._tunnel
        elif (before := self._before) is None:  # (over _REPARSE_WINDOW of them, a long body say: not known)
            rest = b""
        else:
            whole = before + self._prev
            ended = _completed(whole) - sum(ev is END for ev in events)
            # (none: they begin after it, at an upgrade request pipelined after it that llhttp stopped for)
            rest = whole[_end_of_requests(whole, ended):] if ended > 0 else whole
        self._tunnel, self._tunnel_mark = b"", None
        return rest

    def next_event(self) -> Event:
        events = self._events
        if not events:
            return NEED_DATA
        ev = events[0]
        if ev is CLOSED:
            return ev
        if self._request_done:
            if self._persist and not self._close:
                return NEED_DATA  # the next request waits for start_next_cycle (h11's PAUSED)
            if type(ev) is not ProtocolError:  # h11: "Got data when expecting EOF"
                ev = ProtocolError("data after the last request of the connection")
                events[:] = (ev,)
        if type(ev) is ProtocolError:
            raise ev  # and again on every later call: the connection is finished
        del events[0]
        if type(ev) is Request:
            self._answering = ev
            self._method = ev.method
            self._version = ev.http_version
            self._persist = ev.keep_alive
        elif ev is END:
            self._request_done = True
        elif events and type(events[0]) is bytes and type(ev) is bytes:  # (a chunked body's chunks, one a piece)
            ev = self._join_body(ev)
        return ev

    def _message_done(self) -> None:
        self._request_done = True

    def response_head(self, status: int, headers: Headers, reason: bytes = b"", close: bool = False,
                      lines: bytes = b"", framing: int | None = None) -> bytes:
        http11 = self._version == b"1.1"
        keep = self._persist and not close
        said_close = False
        length = chunked = False
        if framing is None:
            fields = []
            for name, value in headers:
                if name == b"content-length":
                    length = True
                elif name == b"transfer-encoding":
                    if not http11:
                        continue  # an HTTP/1.0 client cannot read chunked: close-delimited instead, as h11 does
                    chunked = True
                elif name == b"connection" and _has_token(value, b"close"):
                    keep = False
                    said_close = True
                fields.append(b"%b: %b\r\n" % (name, value))
            block = b"".join(fields)
        else:  # the caller's word: no Connection or Transfer-Encoding field to look for
            length = framing == LENGTH
            block = b"\r\n".join(map(b": ".join, headers)) + b"\r\n" if headers else b""
        head = self._method == b"HEAD"
        if not head and self._answering.method == b"HEAD":  # a policy sent it upstream as HEAD: no body comes
            head = True
            keep = False  # the head alone, then the close that shows its body cut (Exchange.set_method)
        no_body = self._no_body = head or status == 204 or status == 304
        added = b""  # the framing lines of our own, after the header lines given
        if not length and not chunked and status != 204 and status != 304 and self._method != b"HEAD":
            # No length: chunked for HTTP/1.1, else close-delimited; the answer to a client's HEAD has neither (nginx's
            # chunked filter skips HEAD: ngx_http_chunked_filter_module.c:65-70), its connection kept
            if http11:
                added = b"transfer-encoding: chunked\r\n"
                chunked = True
            elif not head:
                keep = False  # (nginx's chunked filter turns an HTTP/1.0 client's keep-alive off here)
        self._chunked = chunked and not no_body
        self.open_ended = not length and not no_body
        self._close = not keep
        self._response_done = False
        if not keep:
            if not said_close:
                added += b"connection: close\r\n"
        elif not http11:  # an HTTP/1.0 client that asked for keep-alive: told it holds (nginx's header filter)
            added += b"connection: keep-alive\r\n"
        return b"HTTP/1.1 %d %b\r\n%b%b%b\r\n" % (status, reason or REASONS.get(status, b""), block, lines, added)

    def informational(self, status: int) -> bytes:
        return b"HTTP/1.1 %d %b\r\n\r\n" % (status, REASONS.get(status, b""))

    def switch_protocols(self, headers: Headers, reason: bytes = b"", lines: bytes = b"") -> bytes:
        self._close = True  # the connection is the new protocol's now: no other HTTP message on it
        self._response_done = True
        parts = [b"HTTP/1.1 101 %b\r\n" % (reason or b"Switching Protocols")]
        parts += [b"%b: %b\r\n" % hv for hv in headers]
        parts.append(lines)
        parts.append(b"\r\n")
        return b"".join(parts)

    def end(self) -> bytes:
        self._response_done = True
        return _CHUNK_END if self._chunked else b""

    @property
    def keep_alive(self) -> bool:
        return self._persist and not self._close and self._request_done and self._response_done

    @property
    def closing(self) -> bool:
        return self._close  # set by response_head: not the client's wish, or the response said close

    def start_next_cycle(self) -> None:
        self._request_done = False
        self._response_done = False
        self._close = False


class LlhttpClient(_Parsing):
    """Client side of an upstream connection.

    A head is bounded as nginx's proxy_buffer_size bounds it (`proxy_buffer_size`, which the pool gives; else
    `max_header_bytes`, which bounds a trailer section): its bytes as they came, status line to blank line; a whole
    head after an interim one, on its parts (_check_head_size). A head llhttp refuses is parsed again as
    mend_response_head writes it, when that mends it (bare LF line ends, IIS's `403.1` and duplicate status line,
    spaces before the status code, a header name nginx calls invalid, a control byte in a value, all of which nginx
    takes and relays): the rare head only, once it has ended. A trailer section llhttp refuses is read as nginx
    reads it (_skips_trailers)."""

    __slots__ = ("_reason", "_method", "_keep", "_request_close", "_in_message", "_skip", "_response_headers",
                 "_request_sent", "_response_done", "_eof", "_head_answered", "_head_chunked", "_upgrade",
                 "_switched", "transport", "_head_buffer", "_chunk", "_renew")
    _parser: httptools.HttpResponseParser

    _MALFORMED = "malformed upstream response"
    _BAD = 502

    def __init__(self, max_header_bytes: int = 65536, proxy_buffer_size: int | None = None) -> None:
        super().__init__(_response_parser(self), max_header_bytes)
        self._trailers = _UpstreamTrailers(self)
        self._head_buffer = proxy_buffer_size or max_header_bytes  # the most bytes a response head takes
        self._chunk = b""  # the read being fed (where a head ends in it: _check_head_size)
        self._reason = b""
        self._method = b"GET"
        self._keep = True  # the last response allows another exchange
        self._request_close = False  # our request said Connection: close
        self._in_message = False
        # parsing a 1xx, which is not an event; None once one ended in this exchange (see _reparse_mended)
        self._skip: bool | None = False
        self._response_headers: Headers = []
        self._request_sent = False
        self._response_done = False
        self._eof = False
        # After the head of a response to HEAD, in the chunk that brought it: llhttp reads on for the body the head
        # announces, and a chunk-size line it takes without a word must not go unnoticed (see receive_data).
        self._head_answered = False
        self._head_chunked = False  # that response said chunked: llhttp ending its "body" means bytes came after
        # the request asked to switch protocols: a 101 may answer it, until its final answer (on_headers_complete)
        self._upgrade = False
        self._switched: Response | None = None  # that 101, until llhttp stops for the switch (_upgraded)
        self.transport: Transport | None = None
        # the parser is done with the connection, which is kept: a fresh one for the next exchange (start_next_cycle)
        self._renew = False

    def request_head(self, method: bytes, target: bytes, headers: Headers, framing: int | None = None) -> bytes:
        self._method = method
        self._request_sent = False
        if framing is None:
            # Two comprehensions (the names, the lines) cost a third of a loop that tests each name as it formats it,
            # with the dozen headers a proxied request carries.
            names = {hv[0] for hv in headers}
            framing = CHUNKED if b"transfer-encoding" in names else LENGTH if b"content-length" in names else NO_BODY
            self._request_close = b"connection" in names and any(
                _has_token(v, b"close") for n, v in headers if n == b"connection")
            if b"upgrade" in names and b"connection" in names and any(
                    _has_token(v, b"upgrade") for n, v in headers if n == b"connection"):
                self._upgrade = True  # (a 426, say, leaves the connection as any answer leaves it)
        else:
            self._request_close = False  # the caller's word: no Connection field
        self._chunked = framing == CHUNKED
        self._no_body = framing == NO_BODY
        if not headers:
            return b"%b %b HTTP/1.1\r\n\r\n" % (method, target)
        # map and join format the lines in C: no bytecode per header
        return b"%b %b HTTP/1.1\r\n%b\r\n\r\n" % (method, target, b"\r\n".join(map(b": ".join, headers)))

    def end(self) -> bytes:
        self._request_sent = True
        return _CHUNK_END if self._chunked else b""

    # httptools callbacks -------------------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        _Parsing.on_message_begin(self)
        self._reason = b""
        self._in_message = True

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        # A value as nginx keeps it: its trailing spaces dropped, not a tab (ngx_http_parse_header_line's sw_value
        # ends it at SP, CR, LF or NUL only), so that `Transfer-Encoding: chunked<TAB>`, which llhttp does not read
        # as chunked, is no `chunked` to _check_codings. (Before a value llhttp skips both, as h11 does.)
        self._headers.append((name.lower(), value.rstrip(b" ")))

    def on_headers_complete(self) -> None:
        if self._dead:  # a response after the one to a HEAD, in the same chunk: unsolicited
            self._keep = False
            return
        headers = self._head_complete()
        if self._head_fed + self._feeding > self._head_buffer:  # (a head is at most the bytes since it began)
            self._check_head_size(headers)
        parser = self._parser
        status = parser.get_status_code()
        reason = self._reason
        if status < 200:
            # the switch asked for, whatever the 101's Upgrade and Connection say: queued once llhttp stops for it
            if status == 101 and self._upgrade:
                version = b"1.1" if parser.get_http_version() == "1.1" else parser.get_http_version().encode()
                self._switched = Response(status, reason, headers, version, False)
                self._skip = True
                self._keep = False
                return
            if status < 100 or (status > 103 and _declares_body(headers)):
                # A 1xx has no body (RFC 9112 6.3), but llhttp reads the one the head of any but 100-103 declares:
                # what follows it could not be framed as the upstream meant. (A 0xx is no status at all.)
                raise ProtocolError(f"upstream sent status {status} with a body, or no valid status", 502)
            self._skip = True  # llhttp parsed it as a body-less message; the final response follows
            return
        version = b"1.1" if parser.get_http_version() == "1.1" else parser.get_http_version().encode()
        names = dict(headers)  # (one C call: no bytecode per header)
        # a Content-Length or Transfer-Encoding llhttp took that nginx may not: more digits than its off_t may hold,
        # or a tab around a value (looked for when the read that ends the head holds a tab anywhere: _head_waits looks
        # at those before it)
        if len(names.get(b"content-length", b"")) > 18 or b"\t" in self._chunk:
            self._check_framing(names)
        if len(names) != len(headers):  # a name repeats
            headers = first_of_single(headers)
        if b"transfer-encoding" in names:
            _check_codings(headers)
        events = self._events
        if self._method == b"HEAD":
            if version < b"1.0":
                raise ProtocolError(NO_VALID_STATUS, 502)
            keep = version >= b"1.1" and _wants_keep_alive(version, headers)
            events.append(Response(status, reason, headers, version, keep))
            # httptools cannot tell llhttp to skip the body it expects: end the message here and retire the parser;
            # start_next_cycle gives the connection a fresh one.
            events.append(END)
            self._dead = self._renew = True
            self._in_message = False
            self._head_answered = True
            # (a 204 or 304 has no body whatever it says: llhttp ends it at its head, as nginx keeps its connection)
            self._head_chunked = status != 204 and status != 304 and b"transfer-encoding" in names
        else:
            # (llhttp's False when close-delimited, too; it reads a 2.0 or 3.0 as 1.0: _kept_later)
            keep = self._kept_later(version, status, headers) if version != b"1.1" else \
                parser.should_keep_alive() or self._kept_anyway(status, headers)
            self._response_headers = headers
            events.append(Response(status, reason, headers, version, keep))
        self._upgrade = False  # a final answer but 101 declines a switch: a later 101 is unsolicited
        self._keep = keep and not self._request_close

    def _check_framing(self, names: dict[bytes, bytes]) -> None:
        """The head just parsed, whose Content-Length or Transfer-Encoding may be one nginx refuses
        (ngx_http_upstream.c:4747-4754, 5220-5230): a length past its off_t (_check_length), or a tab in either's
        value, in the head's bytes (llhttp gives it without the whitespace before it)."""
        value = names.get(b"content-length")
        if value is None and b"transfer-encoding" not in names:
            return
        if value is not None and len(value) > 18:
            _check_length(value)
        _check_tabbed_framing(b"".join(self._head_chunks) + self._chunk if self._head_fed else self._chunk)

    def _kept_anyway(self, status: int, headers: Headers) -> bool:
        """An HTTP/1.1 answer (not to HEAD) llhttp would not keep its connection after: kept all the same when only a
        `Proxy-Connection: close` said so, which llhttp reads as Connection where nginx reads Connection alone
        (ngx_http_upstream_process_connection) and relays it as any header. llhttp ends its parser after it: the
        connection gets a fresh one for its next exchange (start_next_cycle)."""
        if all(name != b"proxy-connection" for name, _ in headers):
            return False
        keep = _wants_keep_alive(b"1.1", headers) and (status == 204 or status == 304 or not _close_delimited(headers))
        if keep:
            self._renew = True
        return keep

    def _kept_later(self, version: bytes, status: int, headers: Headers) -> bool:
        """_later_version_keeps for the answer being parsed (not to HEAD). llhttp ends its parser with a kept `x.0`
        one, which it reads as 1.0 without keep-alive ("Data after `Connection: close`" for anything after): the
        connection then gets a fresh parser for its next exchange (start_next_cycle)."""
        if version < b"1.0":
            raise ProtocolError(NO_VALID_STATUS, 502)
        keep = _later_version_keeps(version, status, headers)
        if keep and not self._parser.should_keep_alive():
            self._renew = True
        return keep

    def _check_head_size(self, headers: Headers) -> None:
        """The head just parsed, which may not have ended in nginx's proxy_buffer_size: where it ends in its bytes
        (past the empty lines llhttp skips), or after an interim head, its parts as they would be sent. One that did
        not is nginx's "upstream sent too big header" (ngx_http_upstream.c:2476-2484), a 502 no try repeats."""
        limit = self._head_buffer
        if self._skip is None:
            fits = len(self._reason) + 15 + sum(len(n) + len(v) + 4 for n, v in headers) + 2 <= limit
        else:
            data = b"".join(self._head_chunks) + self._chunk if self._head_fed else self._chunk
            if data[:1] == b"\r" or data[:1] == b"\n":
                data = data.lstrip(b"\r\n")
            fits = data.find(b"\r\n\r\n", 0, limit) >= 0
        if not fits:
            raise self._overflow()

    def on_body(self, body: bytes) -> None:
        if self._dead:
            self._keep = False  # bytes after the head of a HEAD response
        else:
            self._events.append(body)

    def on_message_complete(self) -> None:
        if self._skip:
            self._skip = None  # (an interim response ended: start_next_cycle resets it)
            self._in_message = False  # EOF after a 1xx is EOF before the response, as in h11
        elif not self._dead:
            self._events.append(END)
            self._in_message = False
        elif self._head_chunked:
            self._keep = False  # the end of a chunked body after a HEAD response: bytes nobody asked for

    # sans-I/O interface ----------------------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        if data:
            if self._dead or self._eof:
                self._keep = False  # unsolicited bytes: the connection cannot be trusted with another request
            else:
                self._chunk = data
                self._feed(data)
                if self._head_answered:
                    # A head ends with its blank line: the chunk ending otherwise means more came after the head
                    # of the response to HEAD (a chunk-size line llhttp took silently, say). A chunk of under 4
                    # bytes ends a head that began before it: the chunks before are the last of _head_chunks.
                    self._head_answered = False
                    end = data if len(data) >= 4 else b"".join(self._head_chunks[-3:])[-3:] + data
                    if end[-4:] != b"\r\n\r\n":
                        self._keep = False
            return
        if self._eof:
            return
        self._eof = True
        self._keep = False
        events = self._events
        if self._in_message and not self._dead:
            if self._in_head or not _close_delimited(self._response_headers):
                self._fail(ProtocolError("upstream closed the connection mid-response", 502, cut=True))
                return
            if self.transport is not None and self.transport.reset:  # nginx: upstream_error, no last chunk
                self._fail(ProtocolError("upstream connection broke mid-response", 502, cut=True))
                return
            events.append(END)
            self._in_message = False
        events.append(CLOSED)

    def _upgraded(self, data: bytes, offset: int) -> None:
        switched = self._switched
        if switched is None:
            self._fail(ProtocolError("upstream switched protocols without being asked to", 502))
            return
        # The 101 to our upgrade request, whatever its Upgrade and Connection say (_switched_anyway): the rest is the
        # new protocol's. The parser is retired; nothing on this connection is HTTP any more.
        self._switched = None
        self._events.append(switched)
        self._tunnel = data[offset:]
        self._dead = True
        self._keep = False

    def _switched_anyway(self, data: bytes) -> bool:
        # nginx switches on the request alone (ngx_http_proxy_process_header: a 101 to one with Upgrade), never
        # reading the 101's Upgrade or Connection; llhttp pauses after any 101 but tells where only when both say
        # so. Its head is the first after the interim ones before it (their empty lines skipped) whose status is 101.
        if self._switched is None:
            return False
        head = b"".join(self._head_chunks) + data if self._head_fed else data  # (from where the 101 began, or before)
        start = 0
        while True:
            while head[start:start + 1] in (b"\r", b"\n"):
                start += 1
            end = head.find(b"\r\n\r\n", start)
            if end < 0:  # pragma: no cover - llhttp ended the head in this chunk
                return False
            end += 4
            if _STATUS_101.match(head, start):
                break
            start = end
        self._upgraded(data, end - (len(head) - len(data)))
        return True

    def _reparse_mended(self, data: bytes) -> bool:
        # A head llhttp refused (in `data`, or begun in the chunks kept for it), parsed again from its start once it
        # has ended, as mend_response_head writes it, when that changes it; a fresh parser reads it and what follows.
        # Heads of responses after the one asked for (bytes nobody asked for) are not mended.
        if END in self._events:
            return False
        chunks = b"".join(self._head_chunks) + data if self._head_fed else data
        start = _first_head(chunks, self._skip is None)
        if start is None:
            return False
        head = chunks[start:]
        mended = mend_response_head(head)
        if mended is None:  # not ended yet: the rest is waited for (as h11 waits), then all of it mended
            if len(head) >= self._head_buffer:
                self._fail(self._overflow())
            else:
                self._parser = _HEAD_PENDING  # type: ignore[assignment]  # (it refuses what comes: back here)
                self._head_chunks = [head]
                self._head_fed = len(head)
            return True
        data, end, heads = mended
        if data == head and self._parser is not _HEAD_PENDING:  # nothing to mend: llhttp's error stands (after a
            return False  # wait, the head is parsed again for it)
        stand_ins = any(reason is not None or fields for reason, fields in heads)
        self._parser = _response_parser(_Restoring(self, heads) if stand_ins else self)
        self._head_chunks = []
        self._head_fed = 0
        self._chunk = data
        self._feed(data)
        if self._head_answered:  # (receive_data's look, on the bytes as mended)
            self._head_answered = False
            if len(data) != end:
                self._keep = False
        return True

    def _skips_trailers(self, data: bytes, error: httptools.HttpParserError) -> bool:
        # nginx skips a trailer section's lines unread (ngx_http_parse_chunked's sw_trailer_header: a CR not followed
        # by LF is its one fault there), where llhttp reads them as header lines. Once llhttp reads trailers the body
        # is whole: the message ends with the section, read from here on as nginx reads it (gateway.http.chunked),
        # and the connection is kept as nginx keeps it, when nothing came after the section (httptools tells no
        # offset: the section's start is found as below, at a line of it, which ends it where nginx does). llhttp's
        # refusal of a chunk (its messages name one) or of a CR without LF stands.
        message = str(error)
        if (self._dead or not self._in_message or isinstance(error.__context__, ProtocolError)
                or "chunk" in message.lower() or "LF after" in message
                or all(name != b"transfer-encoding" for name, _ in self._response_headers)):
            return False
        # The section begins in `data` past its last last-chunk line (a line of the section that looks like one is
        # at or past the line refused, llhttp refusing it too), else before `data`, which begins at a line of it or
        # within one: a stand-in byte before it makes its framing read the first as the rest of a line either way. A
        # line end there ends no empty line (that would have ended the message for llhttp), but for a bare LF at a
        # line's start, which llhttp refuses as no field char: the section's end, as nginx reads it.
        start = 0
        for line in _LAST_CHUNK.finditer(data):
            start = line.end()
        framing = ChunkedFraming.trailer_section(502, self._max_head)
        if not start and not (data[:1] == b"\n" and "field char" in message):
            framing.feed(b"-")
        self._read_trailers(framing, data[start:])
        return True

    def _read_trailers(self, framing: ChunkedFraming, data: bytes) -> None:
        """More of a trailer section llhttp refused a line of, read by its framing: END once it ended, the connection
        kept (with a fresh parser for its next exchange) if nothing came after it and it did not end at a bare LF."""
        framing.feed(data)
        if framing.error is not None:
            self._fail(framing.error)
        elif framing.done:
            self._events.append(END)
            self._in_message = False
            self._dead = True  # (what follows, unasked for, is not read)
            if framing.after or framing.lf_end:  # (bytes nobody asked for; an end a strict parser reads past)
                self._keep = False
            else:
                self._renew = True
        else:
            self._parser = _TrailersPending(self, framing)  # type: ignore[assignment]  # (feeds this)

    def _head_waits(self, data: bytes) -> None:
        # nginx's buffer is full and the head goes on (the bytes since its read began bound the head's)
        if self._head_fed >= self._head_buffer and self._head_so_far() >= self._head_buffer:
            self._fail(self._overflow())
        elif b"\t" in data:  # (in a read before the last of the head: on_headers_complete sees that one)
            try:
                _check_tabbed_framing(b"".join(self._head_chunks))
            except ProtocolError as e:
                self._fail(e)

    def _head_so_far(self) -> int:
        """The bytes of the head being parsed that came so far, in the reads since the one it began in: past the
        last head that ended in them (an interim one) and the empty lines llhttp skips."""
        data = b"".join(self._head_chunks)
        end = data.rfind(b"\r\n\r\n")
        return len(data[end + 4 if end >= 0 else 0:].lstrip(b"\r\n"))

    def _overflow(self) -> ProtocolError:
        return ProtocolError(TOO_BIG_HEADER, 502)

    def _fail(self, error: ProtocolError) -> None:
        if error.status != 502:  # a limit a callback enforced (431 on the server side)
            error = ProtocolError(str(error), 502)
        self._keep = False
        _Parsing._fail(self, error)

    def next_event(self) -> Event:
        events = self._events
        if not events:
            return NEED_DATA
        ev = events[0]
        if ev is CLOSED:
            return ev
        if self._response_done:
            return NEED_DATA  # anything more waits for start_next_cycle (h11's PAUSED)
        if type(ev) is ProtocolError:
            raise ev  # and again on every later call
        del events[0]
        if ev is END:
            self._response_done = True
        elif type(ev) is bytes and events and type(events[0]) is bytes:  # (a chunked body's chunks, one a piece)
            ev = self._join_body(ev)
        return ev

    def _message_done(self) -> None:
        self._response_done = True

    @property
    def keep_alive(self) -> bool:
        # not while unsolicited bytes wait: the next exchange would read them as its response
        return self._keep and self._response_done and self._request_sent and not self._in_message and not self._events

    def start_next_cycle(self) -> None:
        self._response_done = False
        self._request_sent = False
        self._skip = False
        # retired after a HEAD response, or ended by llhttp after a kept `x.0` one or a Connection trailer field
        if self._renew and self._keep:
            self._parser = _response_parser(self)
            self._dead = self._renew = False
            self._head_chunked = False
