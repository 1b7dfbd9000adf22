"""The sans-I/O HTTP/1.1 codec interface: bytes in, events out; events in, bytes out (h11's shape).

Two implementations sit behind it: `codec_h11` (the reference) and `codec_llhttp` (httptools, the hot path).
Events are deliberately cheap: a body chunk is a plain `bytes` object, the end of a message the `END` singleton.
Both codecs apply `check_request_head`, so they accept and reject exactly the same requests.

Flow control is h11's: after a message's END, `next_event` returns NEED_DATA until `start_next_cycle` (h11's
PAUSED), except that the peer's EOF still shows as CLOSED. CLOSED and errors are sticky. `keep_alive` is True only
once both messages of the exchange are complete and the connection may carry another. An HTTP/1.0 client that
sends `Connection: keep-alive` is kept alive, as by nginx, when its answer has a length (it says `Connection:
keep-alive`; one of unknown length is close-delimited): by the llhttp codec only, since h11 never keeps HTTP/1.0
alive (the h11 codec closes after the answer). tests/http/test_codec_conformance.py pins all of this for both codecs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Protocol, final

from gateway.memo import Derived
from gateway.routing.normalize import nginx_refusal

Headers = list[tuple[bytes, bytes]]  # names lower-cased, in wire order
# How a request's headers frame its body, when the caller knows already (ClientCodec.request_head's `framing`).
NO_BODY, LENGTH, CHUNKED = 0, 1, 2
# nginx's large_client_header_buffers is 4 buffers of 8k (Kong's default): a request line or header line must fit
# one (the server codecs' max_line_bytes), and they are max_header_bytes (32768) together (see check_head_lines).
MAX_LINE_BYTES = 8192
# nginx's client_header_buffer_size (Kong's: 1k): the buffer a request head is read into first. A head that ends in
# it is within every limit, so the codecs size only a longer one.
FIRST_BUFFER_BYTES = 1024
# nginx's proxy_buffer_size, which Kong's nginx_kong.lua leaves at its default, one page (ngx_http_proxy_module.c:
# 3514-3516; 4096 on x86-64): an upstream's response head must end within it, its bytes as they came (status line
# to blank line), else nginx's 502 with this error line (ngx_http_upstream.c:2476-2484), a try not retried
PROXY_BUFFER_SIZE = 4096
TOO_BIG_HEADER = "upstream sent too big header while reading response header from upstream"
# An upstream's status line of version 0.x: nginx reads no major 0 (ngx_http_parse_status_line) and would relay the
# bytes as an HTTP/0.9 body, which the gateway does not (README: a 502 for a status line nginx cannot read)
NO_VALID_STATUS = "upstream sent no valid HTTP/1.0 header"


class Request:
    """A request head. `keep_alive` is the client's wish (version and Connection header). `host` (the Host header,
    or the authority of an absolute-form target) and `expect_continue` are what check_request_head found on its way
    through the headers as they arrived: what routing reads, before any policy may rewrite the headers. `absolute`:
    the request line's target as sent when `target` is not it: one in absolute form (`target` is its origin form;
    nginx's $request keeps it), one whose query a fragment ends (`target` is as nginx reads it: check_request_head),
    or one with bytes 0x80-0xFF (`target` has them %-escaped, as routing reads them: keep_sent_target).
    `size`: the bytes the codec read of the request but its body's data, nginx's $request_length less that data: the
    head as the client sent it (request line to blank line; one llhttp read after another in the same read, as its
    parts would be sent: LlhttpServer), counted as it was parsed, before any policy changed it; and a chunked body's
    framing (chunk lines, CRLFs, trailer section) as its chunks are parsed. 0: a head no codec read."""

    __slots__ = ("method", "target", "headers", "http_version", "keep_alive", "host", "expect_continue", "absolute",
                 "size")

    def __init__(self, method: bytes, target: bytes, headers: Headers, http_version: bytes, keep_alive: bool,
                 host: bytes | None = None, expect_continue: bool = False, absolute: bytes | None = None,
                 size: int = 0):
        self.method = method
        self.target = target
        self.headers = headers
        self.http_version = http_version
        self.keep_alive = keep_alive
        self.host = host
        self.expect_continue = expect_continue
        self.absolute = absolute
        self.size = size

    @property
    def request_uri(self) -> bytes:
        """nginx's $request_uri: the target as sent, in origin form (a fragment kept, which `target` may have cut)."""
        absolute = self.absolute
        if absolute is None:
            return self.target
        if absolute[:1] == b"/":
            return absolute
        m = _ABSOLUTE.fullmatch(absolute)
        return self.target if m is None else _origin_path(m.group(2))

    def __repr__(self) -> str:
        return f"Request({self.method!r}, {self.target!r}, {self.headers!r}, {self.http_version!r})"


class Response:
    """A final (>= 200) response head. `keep_alive` says whether the head allows another exchange on the connection
    (HTTP/1.1, no `Connection: close`, not delimited by close); the codec's `keep_alive` has the final word."""

    __slots__ = ("status", "reason", "headers", "http_version", "keep_alive")

    def __init__(self, status: int, reason: bytes, headers: Headers, http_version: bytes, keep_alive: bool):
        self.status = status
        self.reason = reason
        self.headers = headers
        self.http_version = http_version
        self.keep_alive = keep_alive

    def __repr__(self) -> str:
        return f"Response({self.status}, {self.headers!r})"


class _Sentinel:
    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


END = _Sentinel("END")  # the current message is complete
NEED_DATA = _Sentinel("NEED_DATA")  # feed more bytes (or b"" at EOF)
CLOSED = _Sentinel("CLOSED")  # the peer closed the connection between messages

Event = Request | Response | bytes | _Sentinel


@final  # codecs test `type(ev) is ProtocolError` (faster than isinstance): no subclass may exist
class ProtocolError(Exception):
    """The peer broke HTTP/1.1. `status` is what a server should answer (400, 414, 501, ...), as h11's hint, or
    HEAD_TOO_LARGE."""

    def __init__(self, message: str, status: int = 400, cut: bool = False):
        super().__init__(message)
        self.status = status
        self.method = b""  # of a request head refused: the answer to a HEAD has no body, an error's neither
        self.target = b""  # ... and its target, when its request line was whole (what the log shows)
        self.cut = cut  # the peer closed the connection mid-message: nothing it sent was wrong in itself
        # Of a request head refused: the header lines nginx had read when it refused it (r->headers_in.headers, what
        # Kong's error handler picks the page's format from); None: none (a request line refused, say) ...
        self.headers: Headers | None = None
        self.fields = -1  # ... and of one too large (494): how many header lines came before the one refused
        # ... and its bytes as sent from its request line on, as far as they came, and whether a check of the whole
        # head refused it (None: the codec did not keep them): what nginx's $request_length counts of it
        self.refused_head: tuple[bytes, bool] | None = None


class ServerCodec(Protocol):
    """One client connection seen from the server: parses requests, frames responses."""

    # Limits of a request head: all of it, and each of its lines (at most the whole: see MAX_LINE_BYTES).
    def __init__(self, max_header_bytes: int = 32768, max_line_bytes: int = MAX_LINE_BYTES) -> None: ...
    def receive_data(self, data: bytes) -> None: ...  # b"" means the client closed its side
    def next_event(self) -> Event: ...  # Request, bytes, END, CLOSED or NEED_DATA; raises ProtocolError
    # After the Request: the body bytes parsed so far and whether END came with them (next_event in a loop).
    def take_body(self) -> tuple[bytes, bool]: ...
    # (method, target) of a request head not yet whole, as far as it went (b"" for what is not known): what the 408
    # to a head too slow answers (none has a body to a HEAD) and logs, as a 400 to one cut by EOF does.
    def request_line_so_far(self) -> tuple[bytes, bytes]: ...
    # After start_next_cycle and a next_event that gave NEED_DATA: are bytes of the next request's head already in
    # hand (read with the request before it)? nginx then starts that request at once (ngx_http_set_keepalive).
    @property
    def head_begun(self) -> bool: ...
    # `lines`: header lines formatted by the gateway itself (b"Name: value\r\n" each, never a framing header),
    # sent after `headers` as they are: what policies add to every response costs no per-header work.
    # `framing` (LENGTH, or NO_BODY for "no length: the codec frames it"): what `headers` declare, when the caller
    # knows it and they carry no Connection or Transfer-Encoding field (the proxy's own); None: the codec reads them.
    def response_head(self, status: int, headers: Headers, reason: bytes = b"", close: bool = False,
                      lines: bytes = b"", framing: int | None = None) -> bytes: ...
    def informational(self, status: int) -> bytes: ...  # e.g. 100 Continue
    # A 101 head, after a request that asked to switch protocols (an Upgrade header, whatever its Connection) and
    # whose END was taken: the connection carries the new protocol from there on, never another HTTP message
    # (keep_alive False).
    # `headers` go out as they are (the caller's Upgrade and Connection included), then `lines`.
    def switch_protocols(self, headers: Headers, reason: bytes = b"", lines: bytes = b"") -> bytes: ...
    # After switch_protocols: the bytes the client sent after its request head, already read off the socket (the
    # first of the new protocol's, to relay before anything read later).
    def take_upgraded(self) -> bytes: ...
    def body(self, data: bytes) -> bytes: ...
    def end(self) -> bytes: ...
    # May the response being sent carry bytes its head did not announce (chunked, or ended by close)? Not with a
    # Content-Length, nor without a body: where the gateway adds its own (SSE keep-alive comments).
    open_ended: bool
    @property
    def keep_alive(self) -> bool: ...  # may the connection carry another request after this one?
    # Once the response is sent: does the connection end with it (it said close, or the client's version or
    # Connection header allows no other)? Then an unread request body is not worth reading.
    @property
    def closing(self) -> bool: ...
    def start_next_cycle(self) -> None: ...


class ClientCodec(Protocol):
    """One upstream connection seen from the client: frames requests, parses responses."""

    # `framing` (NO_BODY, LENGTH, CHUNKED): what `headers` declare, when the caller knows it from building them and
    # they carry no Connection field (the proxy's own); None: the codec reads them.
    def request_head(self, method: bytes, target: bytes, headers: Headers, framing: int | None = None) -> bytes: ...
    def body(self, data: bytes) -> bytes: ...
    def end(self) -> bytes: ...
    def receive_data(self, data: bytes) -> None: ...
    def next_event(self) -> Event: ...  # Response, bytes, END, CLOSED or NEED_DATA; raises ProtocolError
    # After the Response: the body bytes parsed so far and whether END came with them (next_event in a loop).
    def take_body(self) -> tuple[bytes, bool]: ...
    # A request whose headers ask to switch protocols (Upgrade, and Connection naming upgrade; sent with
    # framing=None) may be answered 101, whatever the 101's Upgrade and Connection say (nginx looks at the request
    # alone): next_event gives that Response (status 101), then NEED_DATA for good, and this gives the bytes that
    # came after its head, the first of the new protocol's. Such a connection is never
    # reused (keep_alive False), whatever the answer. A 101 to any other request is a ProtocolError (502).
    def take_upgraded(self) -> bytes: ...
    @property
    def keep_alive(self) -> bool: ...
    def start_next_cycle(self) -> None: ...
    # The connection the responses come from, when the codec is told (the pool does): at the end of a body that ends
    # at the close, its `reset` (the end was a reset or a broken TLS record) makes the body cut, not ended.
    transport: Transport | None


class Transport(Protocol):
    """What a codec reads of its connection (gateway.http.net.Conn)."""

    reset: bool


# nginx's status for a request head past large_client_header_buffers, answered 400 "Request header or cookie too
# large" (Kong's error handler turns 494 back into 400): a ProtocolError's status, never one on the wire
HEAD_TOO_LARGE = 494


def answered_status(status: int) -> int:
    """The status a ProtocolError's is answered and logged as."""
    return 400 if status == HEAD_TOO_LARGE else status


def head_buffers(max_head: int, max_line: int) -> tuple[int, int, int]:
    """(size, count, bound) of the large header buffers a server codec's limits stand for: buffers of `max_line`
    bytes, as many as `max_head` holds (one at least), and the most bytes a head can take with the first one."""
    count = max(1, max_head // max_line)
    return max_line, count, FIRST_BUFFER_BYTES + count * max_line


def head_line_lengths(head: bytes | bytearray) -> list[int]:
    """The length of each line of a whole request head as sent (from its request line to its blank line), its line
    end included."""
    return [n + 1 for n in map(len, head.split(b"\n"))][:-1]


def estimated_line_lengths(method: bytes, target: bytes, headers: Headers) -> list[int]:
    """The lengths of the lines of a head known only as parsed: `method target HTTP/1.1`, `name: value`."""
    return [len(method) + len(target) + 12, *[len(name) + len(value) + 4 for name, value in headers], 2]


def check_head_lines(lengths: Iterable[int], size: int, count: int) -> None:
    """nginx's buffers for a request head whose lines are `lengths` bytes each, as sent (the request line first, the
    blank line last): the head is read into a FIRST_BUFFER_BYTES buffer, and a line that does not end in the buffer
    it began in is moved whole into the next of `count` buffers of `size` bytes (ngx_http_alloc_large_header_buffer),
    so the room after the last line in a buffer is lost. A line longer than `size` is 414 (the request line: "client
    sent too long URI") or 494, as is a head that needs more than `count` buffers."""
    cap = FIRST_BUFFER_BYTES
    pos = 0
    for n, length in enumerate(lengths):
        if pos + length > cap:
            if length > size:
                if not n:
                    raise ProtocolError("request line too long", 414)
                raise _too_large("request header line too long", n - 1)
            if not count:
                raise _too_large("request head too large", n - 1)
            count -= 1
            cap = size
            pos = 0
        pos += length


def _too_large(message: str, fields: int) -> ProtocolError:
    """A head refused as too large (494) at a line after `fields` header lines, which nginx had read."""
    error = ProtocolError(message, HEAD_TOO_LARGE)
    error.fields = fields
    return error


class HeadBuffers:
    """check_head_lines over a request head that has not ended, as its bytes arrive (from its request line on):
    refused as soon as nginx would refuse it, the line not ended yet counted as far as it came (nginx moves or
    refuses it once it fills the buffer it is in). Each byte is looked at once; a codec makes one only for a head
    longer than FIRST_BUFFER_BYTES that spans reads."""

    __slots__ = ("head", "fed", "_size", "_left", "_cap", "_pos", "_tail", "_lines")

    def __init__(self, head: object, size: int, count: int) -> None:
        self.head = head  # what the codec keeps of this head: which head this one is for
        self.fed = 0  # bytes fed
        self._size = size
        self._left = count
        self._cap = FIRST_BUFFER_BYTES
        self._pos = 0
        self._tail = 0  # the bytes of the line not ended yet
        self._lines = 0  # placed in the buffers (the request line first)

    def feed(self, data: bytes | bytearray) -> None:
        """The next bytes of the head (none of them ending it)."""
        self.fed += len(data)
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            self._place(self._tail + end + 1 - start)
            self._tail = 0
            start = end + 1
        self._tail += len(data) - start
        # the line not ended is refused once it fills its buffer: as a line one byte longer, it would not fit
        if self._pos + self._tail + 1 > self._cap and (self._tail + 1 > self._size or not self._left):
            self._place(self._tail + 1)

    def _place(self, length: int) -> None:
        if self._pos + length > self._cap:
            if length > self._size:
                if not self._lines:
                    raise ProtocolError("request line too long", 414)
                raise _too_large("request header line too long", self._lines - 1)
            if not self._left:
                raise _too_large("request head too large", self._lines - 1)
            self._left -= 1
            self._cap = self._size
            self._pos = 0
        self._pos += length
        self._lines += 1


def read_before(error: ProtocolError, head: Headers | bytes | bytearray) -> None:
    """Note on `error`, when it refuses a head as too large (494) and has no header lines yet, those nginx had read
    before the line it refused: of `head` (the head's header lines as parsed so far, or its bytes as sent from its
    request line on), those before error.fields, or all when that is not known. Only when refusing."""
    if error.status != HEAD_TOO_LARGE or error.headers is not None:
        return
    headers = head if isinstance(head, list) else _ended_lines(head)
    error.headers = headers[:error.fields] if error.fields >= 0 else headers


def _ended_lines(head: bytes | bytearray) -> Headers:
    """The header lines that ended in the bytes of a head (from its request line on), as (name, value)."""
    headers = []
    for line in bytes(head).split(b"\n")[1:-1]:
        line = line.rstrip(b"\r")
        if not line:  # the blank line: the head's end
            break
        name, _, value = line.partition(b":")
        headers.append((name.lower(), value.strip(b" \t")))
    return headers


def check_head_buffers(lengths: list[int], version: bytes, size: int, count: int) -> None:
    """A head longer than FIRST_BUFFER_BYTES, in nginx's order: its request line's size (414), its version (505,
    see nginx_version) and then its header lines' buffers (494), as nginx reads them one after the other."""
    if lengths[0] > max(FIRST_BUFFER_BYTES, size):  # (else it fits the first buffer or a large one)
        raise ProtocolError("request line too long", 414)
    if version != b"1.1" and version != b"1.0":
        nginx_version(version)
    check_head_lines(lengths, size, count)


def nginx_version(version: bytes) -> bytes:
    """The version nginx serves a request line's `HTTP/<version>` as (ngx_http_parse_request_line): 1.0, or 1.1 for
    1.1 and any later 1.x (RFC 9112 2.3: as the highest minor version known; nginx reads up to three digits of
    it, leading zeros aside). A major version above 1 is 505, as soon as its digit is read ("client sent invalid
    version"); anything else is 400."""
    first = version[:1]
    if first and (first in b"23456789" or first == b"1" and version[1:2].isdigit()):
        raise ProtocolError("client sent invalid version", 505)
    major, dot, minor = version.partition(b".")
    if major != b"1" or not dot or not minor.isdigit():
        raise ProtocolError("unsupported HTTP version")
    value = 0
    for digit in minor:
        if value > 99:
            raise ProtocolError("unsupported HTTP version")
        value = value * 10 + digit - 48
    return b"1.1" if value else b"1.0"


_HIGH = re.compile(rb"[\x80-\xff]")
_NOT_TOKEN = re.compile(rb"[^!#$%&'*+.^_`|~0-9A-Za-z-]")  # a byte no token (RFC 9110 5.6.2) holds
_NOT_IN_NAME = re.compile(rb"[\x00-\x20\x7f]")  # what ends nginx's reading of a name: a 400
# Control bytes nginx takes in a header value (ngx_http_parse_header_line's sw_value ends it at CR and LF and refuses
# NUL only) and llhttp or h11 refuse
_VALUE_CONTROL = re.compile(rb"[\x01-\x08\x0b\x0c\x0e-\x1f\x7f]")
# fields whose value frames the message: never mended, so that a parser's refusal of a control byte in one stands
# (nginx refuses it too: no number, no `chunked`)
_FRAMING_NAMES = frozenset({b"content-length", b"transfer-encoding"})
# Header lines of a mended head by their index among its header lines, as nginx reads them (name lower-cased, value
# without the whitespace around it): what the parsers were given stand-ins for
Fields = dict[int, tuple[bytes, bytes]]


def mend_field(name: bytes, value: bytes) -> tuple[bytes, bytes] | None:
    """A header line (`value` after its colon, without its line end) as llhttp and h11 take what nginx takes in it,
    or None when they take it as it is: in a name nginx calls invalid and reads on (ngx_http_parse_header_line's
    invalid_header: a byte no token holds, 0x80-0xFF among them) those bytes as `.`; in a value, but one that frames
    the message, its control bytes as spaces; a Content-Length of more than 20 digits (h11's bound) for its leading
    zeros as the number it is (ngx_atoof reads any number of them). What nginx refuses (a space, a control byte or
    `:` in a name, NUL or a bare CR in a value) is left for the parsers to refuse."""
    stand_in = name
    if _NOT_TOKEN.search(name) is not None and _NOT_IN_NAME.search(name) is None and name:
        stand_in = _NOT_TOKEN.sub(b".", name)
    mended = value
    if _VALUE_CONTROL.search(value) is not None and name.lower() not in _FRAMING_NAMES:
        mended = _VALUE_CONTROL.sub(b" ", value)
    elif len(value) > 20 and name.lower() == b"content-length":
        digits = value.removesuffix(b"\r").strip(b" ")  # (a request's line as split: its CR kept; a tab nginx keeps)
        if len(digits) > 20 and digits.isdigit() and len(digits.lstrip(b"0")) <= 20:
            mended = b" " + (digits.lstrip(b"0") or b"0") + value[len(value.rstrip(b"\r")):]
    return None if stand_in is name and mended is value else (stand_in, mended)


def restore_fields(headers: Headers, fields: Fields) -> None:
    """Put the header lines a mended head had stand-ins for back in `headers` (as parsed from it), as nginx read
    them."""
    for n, field in fields.items():
        if n < len(headers):
            headers[n] = field


def value_goes_on(head: bytes) -> bool:
    """Does the last line of `head` (a request head from its request line on, not ended), itself not ended, hold a
    control byte mend_field mends in a value? Then a parser refused the line as it came, and the head is mended once
    the line has ended (the value is put back whole, as nginx read it)."""
    start = head.rfind(b"\n") + 1
    if not start or head.find(b"\n\r\n") >= 0:
        return False
    name, colon, value = head[start:].partition(b":")
    return bool(colon) and _VALUE_CONTROL.search(value) is not None and name.lower() not in _FRAMING_NAMES


NGINX_METHOD = re.compile(rb"[A-Z_-]+")  # ngx_http_parse_request_line's method characters
# A target ngx_http_parse_request_line reads through: a path, or a schema, `://`, a host of its characters (or an IP
# literal), a port and a path or query; any byte but a space or a control byte in those
_TARGET = (rb"(?:/[^ \x00-\x1f\x7f]*|[A-Za-z][A-Za-z0-9+.-]*://(?:[A-Za-z0-9.-]*|\[[A-Za-z0-9:._~!$&'()*+,;=-]*\])"
           rb"(?::[0-9]*)?(?:[/?][^ \x00-\x1f\x7f]*)?)")
NGINX_TARGET = re.compile(_TARGET)
# the start of a request line whose major version is above 1, as far as nginx reads it (runs of spaces included)
_ABOVE_1 = re.compile(rb"[A-Z_-]+ +" + _TARGET + rb" +HTTP/(?:[2-9]|1[0-9])")
_SPACES = re.compile(rb" {2,}")
_VERSION = re.compile(rb"HTTP/[0-9]+\.[0-9]+")  # what sw_spaces_after_digit may follow


def check_target(target: bytes) -> None:
    """A request whose version nginx does not speak (nginx_version's error) is 400 all the same when nginx refused
    its target first (ngx_http_parse_request_line reads the line in order): "invalid request target"."""
    if NGINX_TARGET.fullmatch(target) is None:
        raise ProtocolError("invalid request target")


def check_start(line: bytes | bytearray, max_line: int) -> None:
    """A request line (as far as it came, without its LF) whose version nginx does not speak is 505 as soon as its
    major version's digit is read (ngx_http_parse_request_line: after a method and a target it takes, whatever the
    runs of spaces between them), before anything after it is read; or 414 when nginx refused the line for its
    length before it got there (see check_head_lines)."""
    if _ABOVE_1.match(line) is not None:
        if len(line) + 1 > max(FIRST_BUFFER_BYTES, max_line):
            raise ProtocolError("request line too long", 414)
        raise ProtocolError("client sent invalid version", 505)


def _single_spaced(line: bytes) -> bytes:
    """A request line (without its line end) with the runs of spaces nginx skips before the target and before the
    version made single (sw_spaces_before_uri, sw_http_09), and the spaces it skips after the version's digits
    dropped (sw_spaces_after_digit): h11 takes single spaces only, llhttp none after the version."""
    if b"  " in line:
        line = _SPACES.sub(b" ", line)
    if line[-1:] == b" " and _VERSION.fullmatch(line[:-1].rpartition(b" ")[2]) is not None:
        return line[:-1]
    return line


def mend_request_head(data: bytes, max_line: int) -> tuple[bytes, Fields] | None:
    """`data` (a request head from its request line on, whole or not, and what follows it) as both parsers can take
    what nginx takes in it, with the header lines given stand-ins (as nginx read them), or None when nothing needed
    mending; for a head one of them refused. In its request line, runs of spaces made single and spaces after the
    version dropped (_single_spaced), bytes 0x80-0xFF %-escaped (nginx takes them in a target: a client that sends
    `/café` unescaped; the router decodes it as `/caf%C3%A9`) and a version nginx takes written as the one it serves
    (`HTTP/1.2` as `HTTP/1.1`: see nginx_version; check_start's 505 is raised); its header lines that have ended as
    mend_field writes them: a name nginx calls invalid with `.` for its odd bytes, which check_request_head drops as
    nginx drops the line (ignore_invalid_headers), and a value's control bytes as spaces, the value put back by the
    codec (Kong forwards it). Line lengths are kept but for the request line's."""
    end = data.find(b"\n")
    line = data if end < 0 else data[:end]
    check_start(line, max_line)
    core = line[:-1] if line[-1:] == b"\r" else line
    mended = _single_spaced(core)
    method, _, rest = mended.partition(b" ")
    target, space, token = rest.rpartition(b" ")
    version = token[5:]
    if space and token[:5] == b"HTTP/" and version and version != b"1.1" and version != b"1.0" and \
            NGINX_METHOD.fullmatch(method) is not None and NGINX_TARGET.fullmatch(target) is not None:  # (read first)
        try:
            mended = mended[:len(mended) - len(version)] + nginx_version(version)
        except ProtocolError:
            pass
    if not mended.isascii():
        mended = _HIGH.sub(lambda m: b"%%%02X" % m[0][0], mended)
    if end < 0:
        return None if mended == core else (mended + line[len(core):], {})
    stop = data.find(b"\n\r\n", end)
    fields = data[end + 1:] if stop < 0 else data[end + 1:stop + 1]
    lines = fields.split(b"\n")
    read: Fields = {}
    changed = False
    ended = len(lines) - 1  # (the last line has not ended, or is the blank line's b"": its name only is mended)
    for n, field in enumerate(lines):
        name, colon, value = field.partition(b":")
        stand_in = mend_field(name, value if n < ended else b"")
        if stand_in is not None:
            changed = True
            if n < ended:
                lines[n] = stand_in[0] + colon + stand_in[1]
                read[n] = (name.lower(), value.removesuffix(b"\r").strip(b" \t"))
            else:
                lines[n] = stand_in[0] + colon + value
    if mended == core and not changed:
        return None
    rest = data[end + 1 + len(fields):]
    return mended + line[len(core):] + b"\n" + b"\n".join(lines) + rest, read


def sent_target(head: bytes) -> bytes | None:
    """The target of `head`'s request line (so far, as mend_request_head read it) when it holds bytes 0x80-0xFF,
    which mend_request_head %-escapes: what nginx's $request_uri keeps as sent (as_sent); else None."""
    end = head.find(b"\n")
    line = head if end < 0 else head[:end]
    target = _single_spaced(line.removesuffix(b"\r")).partition(b" ")[2].partition(b" ")[0]
    return None if target.isascii() else target


def as_sent(sent: bytes, parsed: bytes) -> bytes:
    """`parsed`, a target read from a head mend_request_head wrote, with the part `sent` (sent_target) stood for as
    the client sent it: the access log's uri, the error log's request line and a trace's http.url show `/café`, as
    Kong's $request_uri does, where the router reads `/caf%C3%A9`."""
    escaped = _HIGH.sub(lambda m: b"%%%02X" % m[0][0], sent)
    return sent + parsed[len(escaped):] if parsed.startswith(escaped) else parsed


def keep_sent_target(request: Request, sent: bytes) -> None:
    """Give `request`, parsed from a head whose target mend_request_head %-escaped, that target as sent (`absolute`:
    what request_uri and the error log's request line read; `target` stays escaped for routing and upstream)."""
    request.absolute = as_sent(sent, request.target if request.absolute is None else request.absolute)


def version_missing(method: bytes, target: bytes) -> ProtocolError:
    """A request line that ended without an HTTP version (an HTTP/0.9 request: nothing else of its head follows),
    answered 400 at its line end, as nginx's ngx_http_parse_request_line ends it there: for a method other than GET,
    "client sent invalid method in HTTP/0.9 request"; a GET nginx serves as HTTP/0.9 (a body without a head), which
    the gateway does not speak, so it gets 400 too. Waiting for the rest of a head would answer only at the header
    timeout."""
    message = "client sent invalid method in HTTP/0.9 request" if method != b"GET" else \
        "HTTP/0.9 requests are not served"
    error = ProtocolError(message)
    error.method = method
    error.target = target
    return error


def overflow_error(start_so_far: int, max_line: int) -> ProtocolError:
    """A request head went past its limit before it ended: 414 while its request line, `start_so_far` bytes as sent
    (its CRLF included once it ended), is longer than `max_line` (it did not end, or ended too long), else 494."""
    if start_so_far > max_line:
        return ProtocolError("request line too long", 414)
    return ProtocolError("request head too large", HEAD_TOO_LARGE)


# What nginx's ngx_http_validate_host (ngx_http_request.c:2145-2220, release-1.27.1) refuses anywhere in a Host: two
# dots in a row, the path separator `/` (`\\` only on Windows), a byte up to 0x20 (NUL, CR, LF, tab, space) or 0x7F
_HOST_REFUSED = re.compile(rb"\.\.|[\x00-\x20\x7f/]").search
# The authority of an absolute-form target: ngx_http_parse_request_line's sw_host takes letters, digits, `.` and `-`
# only (anything else but `:`, `/`, `?` and a space after them is a 400), or an IP literal; then a port of digits.
# ngx_http_validate_host then refuses it as a Host (the lookaheads).
_TARGET_AUTHORITY = re.compile(rb"(?!\.?(?::|\Z))(?!.*\.\.)(?:[A-Za-z0-9.-]*|\[[0-9A-Fa-f:.]+\])(?::[0-9]*)?")
# An absolute http(s) URI: its authority, then a path or query, which may hold a fragment as an origin-form target's
# does (ngx_http_parse_request_line's sw_host_end goes on in the origin form's states; a `#` right after the
# authority is a 400 there)
_ABSOLUTE = re.compile(rb"(?i:https?)://([^/?#]*)((?:[/?].*)?)", re.S)
SERVER_NAME = b"kong"  # Kong's nginx server_name: $host of a request without a Host (HTTP/1.0)


def _host_length(host: bytes) -> int:
    """How much of a Host value is its name, as ngx_http_validate_host reads it: up to its first `:` (past the `]`
    of one that starts with `[`), less one final dot (when no dot comes after it); any other byte (`"`, `@`, `|`,
    `\\`, 0x80-0xFF: `café.example`) is a name's. 0: no name, a Host nginx refuses."""
    if host[:1] == b"[":
        end = host.find(b"]") + 1
        length = end or len(host)  # (an unclosed literal is all name)
    else:
        end = host.find(b":")
        length = len(host) if end < 0 else end
    if length and host.rfind(b".") == length - 1:  # (nginx's dot_pos: the value's last dot, its port's included)
        length -= 1
    return length


# a verdict per Host value: the few a host's clients send, each checked once
# (nginx's 400 "client sent invalid host header")
_VALID_HOSTS: Derived[bytes, bool] = Derived(lambda host: _HOST_REFUSED(host) is None and _host_length(host) > 0, 4096)


def _nginx_host(host: bytes) -> bytes:
    return host[:_host_length(host)].lower()


# nginx's $host of a (valid) Host value: without its port and one final dot, in lower case (ngx_http_validate_host);
# what Kong's X-Forwarded-Host, log url, request-termination echo and tracing tags show. Indexed: no call on a hit.
NGINX_HOSTS: Derived[bytes, bytes] = Derived(_nginx_host, 4096)


def nginx_host(host: bytes) -> bytes:
    """nginx's $host of a Host value (NGINX_HOSTS, for a caller that wants a function)."""
    return NGINX_HOSTS[host]


# nginx's unique request headers (ngx_http_process_unique_header_line): a second one is a 400, so that the gateway and
# the upstream can never read two different Authorization (or Expect, If-*) headers
_UNIQUE = frozenset({b"authorization", b"expect", b"if-modified-since", b"if-unmodified-since", b"if-match",
                     b"if-none-match", b"content-range", b"if-range"})
_CHECKED = frozenset({b"content-length", b"transfer-encoding", b"host"}) | _UNIQUE
# A header name nginx calls invalid (ngx_http_parse_header_line's invalid_header: a byte other than a letter, a
# digit, `-` and, with Kong's `underscores_in_headers on`, `_`): with nginx's `ignore_invalid_headers on` its line
# is logged and dropped, never a 400 and never sent on. (A name holding a byte that is no token's, which the parsers
# refuse, reaches check_request_head mended by mend_request_head.)
_INVALID = 2
_NGINX_NAME = re.compile(rb"[a-z0-9_-]*")


def _name_kind(name: bytes) -> int:
    return 1 if name in _CHECKED else 0 if _NGINX_NAME.fullmatch(name) is not None else _INVALID


# each header name's kind: 0 for most, 1 for those check_request_head reads, _INVALID. Indexed: no call on a hit
_NAME_KINDS: Derived[bytes, int] = Derived(_name_kind, 4096)


# The fields nginx (1.23+) takes once from an upstream (ngx_http_upstream_headers_in: those of
# ngx_http_upstream_process_header_line, _process_last_modified, _process_expires, and Content-Type, one field of
# headers_out): a later line of one is "upstream sent duplicate header line: ..., ignored"
_SINGLE_FROM_UPSTREAM = frozenset({b"status", b"content-type", b"date", b"etag", b"server", b"location", b"refresh",
                                   b"last-modified", b"expires"})


def first_of_single(headers: Headers) -> Headers:
    """An upstream's response headers with the later lines of a field nginx takes once dropped (the client codecs
    call it only when a name repeats)."""
    seen: set[bytes] = set()
    out: Headers = []
    for field in headers:
        name = field[0]
        if name in _SINGLE_FROM_UPSTREAM:
            if name in seen:
                continue
            seen.add(name)
        out.append(field)
    return out


def length_in_range(digits: bytes) -> bool:
    """A Content-Length of at most 19 digits and below 2**63 (nginx's off_t bound): a larger one is refused, so it
    can never wrap in a 64-bit parser down the line and frame the message differently there."""
    return len(digits) <= 19 and int(digits) < 1 << 63


_PLAIN_LENGTH = re.compile(rb"[1-9][0-9]{0,17}|0").fullmatch


def _read_length(value: bytes) -> None:
    """A request's Content-Length not in its plain form, read as nginx's ngx_atoof reads it (ngx_http_request.c:
    1980-1990; ngx_string.c:1079-1103): digits, leading zeros like any other, below 2**63, else a 400. It stays as
    sent for plugins and logs (Kong's get_header is $http_content_length); the upstream gets the number it is
    (gateway.pipeline.headers: nginx's $proxy_internal_body_length)."""
    if not value.isdigit() or not length_in_range(value.lstrip(b"0") or b"0"):
        raise ProtocolError("invalid Content-Length")


def check_request_head(method: bytes, target: bytes, headers: Headers,
                       http_version: bytes) -> tuple[bytes, bytes | None, bool]:
    """Reject what request smuggling and RFC 9112 forbid, identically for every codec; returns the target in origin
    form (its query ended by a `#`, as nginx's $args: _fragment_cut), the host (Host, or the authority of an
    absolute-form target, which replaces the Host header, RFC 9112 3.2.2) and whether the client expects
    100-continue. A refusal is nginx's first for the head and carries the header lines nginx had read then
    (ProtocolError.headers): none for a request line (a CONNECT's `host:port`), those up to a header line it refuses
    as it reads it, all of them for what it checks once the head ended."""
    try:
        if http_version != b"1.1" and http_version != b"1.0":
            raise _line_error("unsupported HTTP version")  # (the codecs read it with nginx_version)
        if _COMPLEX_URI(target) is not None:  # (only such a target has anything for nginx to decode, resolve or cut)
            target = _complex_target(target)
        content_lengths = 0
        transfer_encoding = None
        host = None
        expect = False
        unique: set[bytes] | None = None
        for name, value in headers:
            if _NAME_KINDS[name]:  # one dict lookup for the many headers that are none of these
                if name == b"host":  # (the usual ones first)
                    if host is not None:
                        raise _refused_at("an HTTP/1.1 request needs exactly one Host header", headers, name)
                    host = value
                elif name == b"content-length":
                    content_lengths += 1
                    if _PLAIN_LENGTH(value) is None:  # (one test for the usual: digits, no leading zero, < 2**60)
                        _read_length(value)
                elif name == b"transfer-encoding":
                    if transfer_encoding is not None:
                        raise _refused_at("more than one Transfer-Encoding header", headers, name)
                    transfer_encoding = value
                elif name not in _UNIQUE:  # a name nginx calls invalid: its line is dropped, as by nginx
                    headers[:] = [field for field in headers if _NAME_KINDS[field[0]] is not _INVALID]
                    return check_request_head(method, target, headers, http_version)
                else:
                    if unique is None:
                        unique = {name}
                    elif name in unique:  # nginx's words
                        raise _refused_at(f"client sent duplicate header line: {name.decode()}", headers, name)
                    else:
                        unique.add(name)
                    if name == b"expect":
                        expect = value.lower() == b"100-continue"
        if content_lengths > 1:
            raise _refused_at("more than one Content-Length header", headers, b"content-length")
        if transfer_encoding is not None:
            if content_lengths:
                raise ProtocolError("both Content-Length and Transfer-Encoding")
            if http_version == b"1.0":  # nginx's: "client sent HTTP/1.0 request with Transfer-Encoding header"
                raise ProtocolError("an HTTP/1.0 request with a Transfer-Encoding header")
            codings = transfer_encoding.lower()
            if codings != b"chunked":
                # RFC 9112 6.3: chunked not last (or applied twice, 6.1) -> the length is unknowable -> 400 (nginx:
                # 501 for any value but chunked); a coding we lack -> 501.
                applied = [c.strip(b" \t") for c in codings.split(b",")]
                if applied[-1] != b"chunked" or b"chunked" in applied[:-1]:
                    raise ProtocolError("chunked must be the final transfer coding, applied once")
                raise ProtocolError("only Transfer-Encoding: chunked is supported", 501)
        if host is None and http_version == b"1.1":
            raise ProtocolError("an HTTP/1.1 request needs exactly one Host header")
        if target[:1] != b"/":
            target, host = _origin_form(target, host, headers)
        elif host is not None and not _VALID_HOSTS[host]:
            raise _refused_at("invalid Host header", headers, b"host", 1)
        if method in _NOT_ALLOWED:  # nginx's last check of a head (ngx_http_process_request_header; Kong's spec 13)
            raise ProtocolError(f"client sent {method.decode()} method: not allowed", 405)
        return target, host, expect and http_version == b"1.1"  # RFC 9110 10.1.1: an HTTP/1.0 one is ignored
    except ProtocolError as e:
        if e.headers is None or e.headers:  # (not a request line's own refusal)
            if target[:1] != b"/" and (line := _target_error(target)) is not None:
                raise line from None  # nginx refused the request line before it read a header line
            if e.headers is None:
                e.headers = headers
        raise


# nginx answers these methods 405 once their head was read (ngx_http_process_request_header: TRACE, and CONNECT since
# 1.21.1, whose target nginx parses only as a path or an absolute URI: its usual `host:port` is a 400 before that)
_NOT_ALLOWED = frozenset({b"TRACE", b"CONNECT"})


def _line_error(message: str) -> ProtocolError:
    """A 400 for the request line, which nginx refuses before it reads any header line."""
    error = ProtocolError(message)
    error.headers = []
    return error


# A "%", a "/." or a "#" in a target: what makes nginx parse it (ngx_http_parse_request_line's quoted_uri and
# complex_uri) and possibly refuse it, or end its query. One search of the target: the common one has none.
_COMPLEX_URI = re.compile(rb"%|/\.|#").search


def _complex_target(target: bytes) -> bytes:
    """nginx's ngx_http_process_request_uri, once the request line is read and before any header line: a path
    ngx_http_parse_complex_uri refuses (gateway.routing.normalize.nginx_refusal) is a 400 "client sent invalid
    request". A target nginx refused earlier, while parsing the line, is left to _target_error. Returns the target
    with its query as nginx's $args (_fragment_cut)."""
    path = target
    if target[:1] != b"/":
        if _target_error(target) is not None:
            return target
        path = _ABSOLUTE.fullmatch(target).group(2)  # type: ignore[union-attr]  # (_target_error matched it)
    message = nginx_refusal(path)
    if message is not None:
        raise _line_error(message)
    return _fragment_cut(target) if b"#" in path else target


def _fragment_cut(target: bytes) -> bytes:
    """A target holding a `#` as Kong reads it: its path up to the first `?` as sent (Kong's router and
    kong.request.get_path read $request_uri so, a `#` in it included), then nginx's $args, which a `#` ends
    (ngx_http_parse_complex_uri's `args:` loop; a `#` before any `?` ends the URI with no $args at all: `goto
    done`). The `?` stays when Kong would send one upstream (kong/runloop/handler.lua after: $args not empty, or
    $request_uri ending in `?`). `/a?x=1#f` is `/a?x=1`, `/a#f?x=1` is `/a#f`, `/a?#f` is `/a`."""
    query = target.find(b"?")
    if query < 0:
        return target
    fragment = target.find(b"#")
    if query + 1 < fragment:  # (the `?` comes first and $args are not empty)
        return target[:fragment]
    return target[:query + 1] if target[-1:] == b"?" else target[:query]


def _refused_at(message: str, headers: Headers, name: bytes, nth: int = 2) -> ProtocolError:
    """A 400 for a header line nginx refuses as soon as it reads it (the `nth` line named `name`: a second Host,
    a Host that is no host; ngx_http_process_host, ngx_http_process_unique_header_line), with the lines read up
    to it."""
    error = ProtocolError(message)
    for n, field in enumerate(headers):
        if field[0] == name:
            nth -= 1
            if not nth:
                error.headers = headers[:n + 1]
                break
    return error


def _target_error(target: bytes) -> ProtocolError | None:
    """The 400 for a target (not a path) nginx's ngx_http_parse_request_line refuses, or None: an absolute http(s)
    URI whose host nginx takes (anything else: an authority `host:port`, `*`, another scheme)."""
    if target == b"*":
        return _line_error("asterisk-form request targets (OPTIONS *) are not supported")
    m = _ABSOLUTE.fullmatch(target)
    if m is None:
        return _line_error("invalid request target: expected a path or an absolute http(s) URI")
    if _TARGET_AUTHORITY.fullmatch(m.group(1)) is None:
        return _line_error("invalid host in the request target: letters, digits, `.` and `-` only, or [IP]")
    return None


def _origin_form(target: bytes, host_header: bytes | None, headers: Headers) -> tuple[bytes, bytes]:
    """The origin-form of an absolute-form target and its authority, set as Host (in place); 400 for anything
    else, and for a Host header that is no valid host, as in nginx: ngx_http_process_host checks it before the
    request line's host wins."""
    error = _target_error(target)
    if error is not None:
        raise error
    m = _ABSOLUTE.fullmatch(target)
    assert m is not None  # (_target_error matched it)
    authority, path = m.group(1), m.group(2)
    if host_header is not None and not _VALID_HOSTS[host_header]:
        raise _refused_at("invalid Host header", headers, b"host", 1)
    host = next((i for i, hv in enumerate(headers) if hv[0] == b"host"), None)
    if host is None:
        headers.append((b"host", authority))
    else:
        headers[host] = (b"host", authority)
    return _origin_path(path), authority


def _origin_path(path: bytes) -> bytes:
    """The origin form of an absolute target's path and query: "http://h?q" -> "/?q", "http://h" -> "/"."""
    if not path:
        return b"/"
    return path if path[:1] == b"/" else b"/" + path
