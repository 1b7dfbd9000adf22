"""The reference codec: h11 on both sides, adapted to the codec interface in `gateway.http.codec`.

h11 is more lenient than llhttp in a few places that matter to a proxy (it unfolds obs-fold, accepts bare LF line
ends, merges repeated identical Content-Lengths), and it normalises what it parses. So that both codecs accept,
reject and report the same heads, this adapter keeps a copy of the bytes of the head h11 is waiting for (its
public `trailing_data` once per head, then what arrives) and applies the shared rules to that raw head.

Where it differs from the llhttp codec (the default): h11 does not keep an HTTP/1.0 client alive even when it asks
for keep-alive ("we simplify life by simply not supporting keep-alive with HTTP/1.0 peers", h11/_connection.py), so
such a client gets `Connection: close` after each answer, where llhttp (and nginx) keep the connection when the
answer has a length.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from typing import Any

import h11

from gateway.http.chunked import ChunkedFraming
from gateway.http.codec import (
    CLOSED,
    END,
    FIRST_BUFFER_BYTES,
    HEAD_TOO_LARGE,
    MAX_LINE_BYTES,
    NEED_DATA,
    NGINX_METHOD,
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
    first_of_single,
    head_buffers,
    head_line_lengths,
    keep_sent_target,
    length_in_range,
    mend_request_head,
    nginx_version,
    overflow_error,
    read_before,
    restore_fields,
    sent_target,
    version_missing,
)
from gateway.http.codec_llhttp import (
    REASONS,
    _check_codings,
    _check_tabbed_framing,
    _close_delimited,
    _invalid_length,
    _wants_keep_alive,
    mend_response_head,
    note_head,
    restore_framing_tabs,
)

_BLANK_LINE = re.compile(rb"\n\r?\n")  # where h11 ends a head
_TARGET_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
# a byte refused anywhere in a request line (a control byte but tab, CR), or the LF that ends it
_LINE_STOP = re.compile(rb"[\x00-\x08\n\x0b\x0c\x0e-\x1f\x7f]")
_NOT_CRLF = re.compile(rb"[^\r\n]")  # a request line's first byte, past the empty lines before it (sw_start)
_NOT_SPACE = re.compile(rb"[^ ]")
_ABOVE_1_VERSION = re.compile(rb"HTTP/(?:[2-9]|1[0-9])")  # the version check_start refuses, at the start of a token
# Where _HeadScan.header_fault stops in a header line: in its name, a byte refused there (ngx_http_parse_header_line:
# ch <= 0x20, DEL; a CR but the one before the LF), its colon or its LF; in its value, a NUL or its LF
_NAME_STOP = re.compile(rb"[\x00-\x20\x7f:]")
_VALUE_STOP = re.compile(rb"[\x00\n]")


# What no head the codec writes holds: in a name, a byte that ends one for nginx, `:` or nothing at all; in a value,
# NUL or a line end (bytes that would split the head)
_UNWRITABLE_NAME = re.compile(rb"[\x00-\x20\x7f:]|\A\Z")
_UNWRITABLE_VALUE = re.compile(rb"[\x00\r\n]")
# the fields h11 writes (h11/_abnf.py: field_name, field_value)
_H11_NAME = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_H11_VALUE = re.compile(rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?")
_STAND_IN = b"x-stand-in-" + secrets.token_hex(8).encode()  # a name no peer sends (_send_head)


def _send_head(conn: h11.Connection, make: Callable[..., h11.Request | h11.Response | h11.InformationalResponse],
               headers: Headers, **fields: Any) -> bytes:
    """What h11 writes of the head `make` of `headers` and `fields`. A field h11 refuses that nginx reads and relays
    (a name nginx calls invalid, `X-User@Domain`; a control byte in a value: what the parsers had stand-ins for) is
    written as it is in the place of a stand-in h11 takes (h11 would check it again wherever it adds a field), so
    long as no field would split the head (else h11's refusal stands); a Content-Length of more than 20 digits
    (leading zeros: an upstream's, relayed as sent, as nginx relays it) in the place of the number it is."""
    if all(_H11_NAME.fullmatch(name) and _H11_VALUE.fullmatch(value) and not _long_length(name, value)
           for name, value in headers) or any(
            _UNWRITABLE_NAME.search(name) or _UNWRITABLE_VALUE.search(value) for name, value in headers):
        return conn.send(make(headers=headers, **fields)) or b""
    stand_ins: Headers = []
    written = []
    for n, (name, value) in enumerate(headers):
        if _long_length(name, value):
            number = value.lstrip(b"0") or b"0"
            stand_ins.append((name, number))
            written.append((b"\r\n%s: %s\r\n" % (name, number), b"\r\n%s: %s\r\n" % (name, value)))
        elif _H11_NAME.fullmatch(name) and _H11_VALUE.fullmatch(value):
            stand_ins.append((name, value))
        else:
            stand_in = b"%s-%d" % (_STAND_IN, n)
            stand_ins.append((stand_in, b"v"))
            written.append((b"\r\n%s: v\r\n" % stand_in, b"\r\n%s: %s\r\n" % (name, value)))
    data = conn.send(make(headers=stand_ins, **fields)) or b""
    for stand_in_line, line in written:
        data = data.replace(stand_in_line, line, 1)
    return data


def _long_length(name: bytes, value: bytes) -> bool:
    """Is this a Content-Length h11 refuses to write for its digits (more than 20) but for their leading zeros?"""
    return len(value) > 20 and name.lower() == b"content-length" and value.isdigit() and len(value.lstrip(b"0")) <= 20


def _unparsed_as(conn: h11.Connection, data: bytes) -> None:
    """Make `data` all that `conn` holds unparsed (h11, which has no API for it, keeps it in its receive buffer)."""
    buffer = conn._receive_buffer
    buffer._extract(len(buffer))  # (which also resets where h11 searches it for a line end)
    buffer += data


def _split_head(raw: bytearray | bytes, status: int, trailing: bytes = b" \t") -> tuple[int, bytes, Headers] | None:
    """(size, start line, headers) of the head at the start of `raw`, split as llhttp splits it; None if incomplete.
    A value loses the spaces and tabs before it and the `trailing` bytes after it (a response's: spaces only, as
    LlhttpClient.on_header keeps it).

    Raises ProtocolError(status) for what llhttp rejects and h11 tolerates: bare LF line ends, obs-fold. (A control
    byte but NUL in a value, which h11 takes, is nginx's too: llhttp's refusal of it is mended.)
    """
    m = _BLANK_LINE.search(raw)
    if m is None:
        return None
    size = m.end()
    head = bytes(raw[: size - 4])
    if raw[size - 4 : size] != b"\r\n\r\n" or head.count(b"\n") != head.count(b"\r\n"):
        raise ProtocolError("line ends must be CRLF", status)
    lines = head.split(b"\r\n")
    headers = []
    for line in lines[1:]:
        if line[:1] == b" " or line[:1] == b"\t":
            raise ProtocolError("obsolete line folding is not accepted", status)
        name, _, value = line.partition(b":")
        if name[-1:] == b" " or name[-1:] == b"\t":
            raise ProtocolError("whitespace before the colon of a header field", status)  # RFC 9112 5.1
        headers.append((name.lower(), value.lstrip(b" \t").rstrip(trailing)))
    return size, lines[0], headers


class _HeadScan:
    """How far H11Server's checks of a request head that has not ended read its bytes `head` (which only grow): each
    check resumes where it stopped, with what it needs of the bytes before, so that a byte is read a bounded number
    of times however the head is split into reads, as nginx's parser reads it (ngx_http_parse_request_line and
    ngx_http_parse_header_line keep their state between reads), not once more at each read of a line not ended."""

    __slots__ = ("head", "line_read", "start_read", "_line_end", "_lf_from", "_control", "_first", "_first_from",
                 "_stage", "_token_from", "_pos", "_line_start", "_in_value", "_ended")

    def __init__(self, head: bytearray) -> None:
        self.head = head
        self.line_read = False  # the request line's check at its LF is done (_check_request_line)
        self.start_read = False  # check_start can no longer refuse the request line, or did (_check_start_as_read)
        self._line_end = -1  # the request line's LF, once it came
        self._lf_from = 0  # where the search for it goes on
        self._control = -1  # the first byte before it that nginx refuses anywhere in a request line
        self._first = -1  # the request line's first byte, once it came
        self._first_from = 0
        self._stage = 0  # the request line's method, spaces, target, spaces, version (version_at)
        self._token_from = 0
        self._pos = -1  # the header lines' bytes read (from the request line's LF on)
        self._line_start = -1  # the header line not ended yet
        self._in_value = False  # its colon came
        self._ended = False  # the blank line came: the rest is not the head's

    def line_end(self) -> int:
        """Where the request line ends (its LF), -1 until it came; the bytes before it that nginx refuses anywhere in a
        request line (_LINE_STOP) are noted on the way (control_in_line)."""
        head = self.head
        while self._line_end < 0:
            m = _LINE_STOP.search(head, self._lf_from)
            if m is None:
                self._lf_from = len(head)
                break
            self._lf_from = m.end()
            if head[m.start()] == 10:
                self._line_end = m.start()
            elif self._control < 0:
                self._control = m.start()
        return self._line_end

    def first_byte(self) -> int:
        """The request line's first byte, past the CRs and LFs before it; -1 until it came."""
        if self._first < 0:
            m = _NOT_CRLF.search(self.head, self._first_from)
            self._first_from = len(self.head)
            if m is not None:
                self._first = self.head[m.start()]
        return self._first

    def version_at(self) -> int:
        """Where the request line's version begins, past its method, its target and the runs of spaces after each
        (where check_start's regex reads it: neither a method nor a target has a space); -1 until it came."""
        head = self.head
        end = self.line_end()
        stop = end if end >= 0 else len(head)
        pos, stage = self._token_from, self._stage
        while stage < 4 and pos < stop:
            if stage % 2 == 0:  # a method or a target, to the space after it
                space = head.find(b" ", pos, stop)
                pos = stop if space < 0 else space
            else:
                m = _NOT_SPACE.search(head, pos, stop)
                pos = stop if m is None else m.start()
            if pos < stop:
                stage += 1
        self._token_from, self._stage = pos, stage
        return pos if stage == 4 else -1

    def control_in_line(self) -> bool:
        """Did a byte nginx refuses anywhere in a request line come in it (as far as it came)?"""
        self.line_end()
        return self._control >= 0

    def header_fault(self) -> bool:
        """Did a byte nginx refuses in a header line come in the bytes not read yet (the request line has ended): in
        a name a byte up to 0x20 or DEL (a CR but one an LF follows: not known while it is the last byte, read again
        at the next read), a colon with no name before it, a NUL in a value. Up to the blank line that ends the head."""
        head = self.head
        if self._pos < 0:
            self._pos = self._line_start = self._line_end + 1
        pos, start = self._pos, self._line_start
        while not self._ended:
            if self._in_value:
                m = _VALUE_STOP.search(head, pos)
                if m is None:
                    pos = len(head)
                    break
                if head[m.start()] == 0:
                    return True
                pos = start = m.end()
                self._in_value = False
                continue
            m = _NAME_STOP.search(head, pos)
            if m is None:
                pos = len(head)
                break
            at = m.start()
            byte = head[at]
            if byte == 13 and at + 1 == len(head):  # (the line's end may come next)
                pos = at
                break
            if byte == 13 and head[at + 1] == 10:
                byte, at = 10, at + 1
            if byte == 10:  # a line without a colon ended (the blank line, when empty)
                self._ended = at == start or (at == start + 1 and head[start] == 13)
                pos = start = at + 1
            elif byte == 58 and at > start:
                self._in_value = True
                pos = at + 1
            else:
                return True
        self._pos, self._line_start = pos, start
        return False


class _H11Codec:
    __slots__ = ("_conn", "_max", "_probe", "_eof", "_error", "_after_head", "_chunks", "_body_given", "_chunked_fed")

    def __init__(self, role: type[h11.CLIENT] | type[h11.SERVER], max_header_bytes: int) -> None:
        self._conn = h11.Connection(role, max_incomplete_event_size=max_header_bytes)
        self._max = max_header_bytes
        self._probe: bytearray | None = None  # the bytes of the head being waited for, when tracked
        self._eof = False
        self._error: ProtocolError | None = None  # raised again by every later next_event, as h11 does
        self._after_head = b""  # the bytes that came after the head just split, with it
        self._chunks: ChunkedFraming | None = None  # a chunked body's framing, checked (gateway.http.chunked)
        self._body_given = 0  # body bytes handed over for the current message
        self._chunked_fed = 0  # bytes received from the first byte of its chunked body on

    def next_event(self) -> Event:
        if self._error is not None:
            raise self._error
        try:
            return self._next_event()
        except ProtocolError as e:
            self._error = e
            raise

    def _with_sent_target(self, sent: bytes) -> Event:
        """The next event, of a head parsed again with its target's bytes 0x80-0xFF %-escaped: its Request (or
        refusal) carries the target as sent (keep_sent_target)."""
        try:
            event = self._next_event()
        except ProtocolError as e:
            e.target = as_sent(sent, e.target)
            raise
        if type(event) is Request:
            keep_sent_target(event, sent)
        return event

    def _next_event(self) -> Event:
        raise NotImplementedError

    def take_body(self) -> tuple[bytes, bool]:
        chunks: list[bytes] = []
        while (ev := self.next_event()) is not NEED_DATA:
            if ev is END:
                return b"".join(chunks), True
            chunks.append(ev)  # type: ignore[arg-type]
        return b"".join(chunks), False

    def receive_data(self, data: bytes) -> None:
        if data:
            if self._probe is not None:
                self._probe += data
            elif self._chunks is not None:
                self._chunked_fed += len(data)
                data = self._chunks.feed(data)  # (what h11 may read of it)
                if not data:
                    return  # (b"" would tell h11 the peer closed)
        else:
            self._eof = True
        try:
            self._conn.receive_data(data)
        except h11.RemoteProtocolError as e:  # pragma: no cover - h11 raises RuntimeError for data after EOF
            raise ProtocolError(str(e), e.error_status_hint) from None

    def _check_chunks(self, status: int, spaces_after_size: bool = False) -> None:
        """A chunked body follows the head just split: check its framing from its first byte on (`spaces_after_size`:
        a response's, as the llhttp codec's response parser reads it)."""
        self._chunks = ChunkedFraming(status, self._max, spaces_after_size)
        given = self._chunks.feed(self._after_head)
        if given is not self._after_head:  # (h11 holds those bytes unparsed: what it may read of them instead)
            _unparsed_as(self._conn, given)
        self._chunked_fed = len(self._after_head)

    def _body(self, data: bytes) -> bytes:
        """Body bytes h11 parsed, as far as their framing held (the fault raised once they are handed over)."""
        chunks = self._chunks
        if chunks is not None and chunks.error is not None:
            room = chunks.body_ok - self._body_given
            if room <= 0:
                raise chunks.error
            data = data[:room]
        self._body_given += len(data)
        return data

    def _framing_fault(self) -> None:
        """Raise the chunked framing's fault, if any: h11 has nothing more to give before it."""
        if self._chunks is not None and self._chunks.error is not None:
            raise self._chunks.error

    def _end(self, ev: h11.EndOfMessage, status: int) -> Event:
        self._framing_fault()
        # Trailers are dropped; h11 bounds them only while incomplete, llhttp also when they arrive whole.
        if ev.headers and sum(len(n) + len(v) + 4 for n, v in ev.headers) > self._max:
            raise ProtocolError("trailer section too large", status)
        return END

    def _watch_head(self) -> bytearray:
        if self._probe is None:
            self._probe = bytearray(self._conn.trailing_data[0])
        return self._probe

    def body(self, data: bytes) -> bytes:
        return self._conn.send(h11.Data(data=data)) or b"" if data else b""

    def end(self) -> bytes:
        return self._conn.send(h11.EndOfMessage()) or b""

    @property
    def keep_alive(self) -> bool:
        conn = self._conn
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE and self._error is None

    def start_next_cycle(self) -> None:
        self._conn.start_next_cycle()
        self._chunks = None
        self._body_given = 0
        self._after_head = b""


class H11Server(_H11Codec):
    """Server side of a client connection."""

    __slots__ = ("_method", "_no_body", "open_ended", "_max_line", "_buffers", "_head_check", "_request", "_read",
                 "_scan")

    def __init__(self, max_header_bytes: int = 32768, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        # nginx's large header buffers (check_head_lines); h11 waits for a head (or trailers) as long as they hold
        self._max_line, self._buffers, bound = head_buffers(max_header_bytes, min(max_line_bytes, max_header_bytes))
        super().__init__(h11.SERVER, bound)
        self._head_check: HeadBuffers | None = None  # nginx's buffers over a long head that has not ended
        self._scan: _HeadScan | None = None  # how far the checks of the head being waited for read it
        self._method = b"GET"
        self._no_body = False
        self.open_ended = False
        self._request: Request | None = None  # the last head's: its chunked body's framing adds to its size
        self._read: Fields = {}  # the header lines of the head mended last, as nginx read them (mend_request_head)

    def request_line_so_far(self) -> tuple[bytes, bytes]:
        probe = self._probe
        return _request_line_of(probe) if probe is not None and self._error is None else (b"", b"")

    @property
    def head_begun(self) -> bool:
        return bool(self._probe)  # (the head waited for, past the empty lines skipped before it)

    def _skip_empty_lines(self, probe: bytearray) -> None:
        # RFC 9112 2.2: a server SHOULD ignore empty lines before a request line; llhttp does, h11 rejects them.
        # At the start of a cycle a fresh h11 connection is equivalent to this one, so hand it the rest.
        probe = self._probe = probe.lstrip(b"\r\n")
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self._max)
        if probe:
            self._conn.receive_data(bytes(probe))
        if self._eof:
            self._conn.receive_data(b"")

    def _raw_request(self) -> tuple[int, tuple[bytes, bytes | None, bool], Headers, bytes] | None:
        """(head size, check_request_head's (target in origin form, host, expect), headers, version) of the head h11
        parsed, checked."""
        probe = self._probe
        self._probe = None
        if probe is None:
            return None
        try:
            self._check_start(probe)  # (before what the line ends mean: nginx answers at the version's digit)
            head = _split_head(probe, 400)
            if head is None:
                return None
            size, start, headers = head
            if self._read:  # (split from a mended head: its fields as nginx read them)
                restore_fields(headers, self._read)
                self._read = {}
            self._after_head = bytes(probe[size:])
            version = start.rpartition(b" ")[2]
            if not version.startswith(b"HTTP/"):
                return None
            method, _, rest = start.partition(b" ")
            if NGINX_METHOD.fullmatch(method) is None:  # (h11 takes any token: `get` would match no GET route)
                raise ProtocolError("invalid method: nginx takes A-Z, _ and - only")
            target = rest.rpartition(b" ")[0]
            if _TARGET_CONTROL.search(target) is not None:  # (h11 refused it: nginx, before the version)
                raise ProtocolError("invalid request target")
            version = version[5:]
            if size > FIRST_BUFFER_BYTES:  # (else it fits nginx's first buffer)
                check_head_buffers(head_line_lengths(probe[:size]), version, self._max_line, self._buffers)
            if version != b"1.1" and version != b"1.0":
                try:
                    version = nginx_version(version)  # (h11 takes 1.2 to 9.9)
                except ProtocolError:
                    check_target(target)
                    raise
            if probe.find(b"\t", 0, size) >= 0:  # (a tab _split_head dropped around a framing value: nginx keeps it)
                restore_framing_tabs(bytes(probe[:size]), headers)
            checked = check_request_head(method, target, headers, version)
        except ProtocolError as e:
            e.method, e.target = _request_line_of(probe)
            read_before(e, probe)
            # (headers: bound once lines were read, as they are for every error but those of the request line)
            note_head(e, probe, e.headers is not None and e.headers is headers)
            raise
        return size, checked, headers, version

    def _next_event(self) -> Event:
        conn = self._conn
        if conn.their_state is h11.IDLE and conn.our_state is h11.IDLE:
            probe = self._watch_head()
            if probe[:1] == b"\r" or probe[:1] == b"\n":
                self._skip_empty_lines(probe)
                conn = self._conn
        try:
            ev = conn.next_event()
        except h11.RemoteProtocolError as e:
            head = self._probe
            if head is not None:
                self._check_start(head)  # (nginx refuses those bytes as it reads them: before the head's end)
                self._check_so_far(head)
                try:
                    mended = mend_request_head(bytes(head), self._max_line)
                except ProtocolError as refused:  # a version nginx does not speak: 505
                    refused.method, refused.target = _request_line_of(head)
                    raise refused from None
                if mended is not None:
                    return self._mended_event(bytes(head), *mended)
            if head is not None and all(_request_line_of(head)):  # (a broken request line is a 400 first, as
                self._raw_request()  # in nginx) the shared rules decide the status of a complete head h11 rejected
            if e.error_status_hint == 431:  # h11's max_incomplete_event_size: the head did not end in time
                error = overflow_error(_line_so_far(head), self._max_line)
            else:
                error = ProtocolError(str(e), e.error_status_hint, cut=self._eof)  # (a head or body cut by EOF)
            if head is not None:
                error.method, error.target = _request_line_of(head)
                read_before(error, head)
                note_head(error, head)
            raise error from None
        if type(ev) is h11.Data:
            return self._body(bytes(ev.data))
        if type(ev) is h11.Request:
            raw = self._raw_request()
            assert raw is not None
            headers = raw[2]
            if any(name == b"transfer-encoding" for name, _ in headers):  # chunked (check_request_head)
                self._check_chunks(400)
            version = raw[3]
            self._method = bytes(ev.method)
            target, host, expect = raw[1]
            line_target = bytes(ev.target)
            self._request = Request(self._method, target, headers, version, _wants_keep_alive(version, headers), host,
                                    expect, None if target == line_target else line_target, raw[0])
            return self._request
        if type(ev) is h11.EndOfMessage:
            end = self._end(ev, HEAD_TOO_LARGE)
            if self._chunks is not None and self._request is not None:  # a chunked body's framing: the bytes it took
                # (those received from its start on, less those after its end) but its data
                self._request.size += self._chunked_fed - len(self._conn.trailing_data[0]) - self._body_given
            return end
        if type(ev) is h11.ConnectionClosed:
            return CLOSED
        if ev is h11.NEED_DATA:
            self._framing_fault()
            if waiting := self._probe:  # (an empty one has nothing to refuse)
                self._check_request_line(waiting)
                self._check_start_as_read(waiting)
                self._check_so_far(waiting)
                if len(waiting) > FIRST_BUFFER_BYTES:
                    self._check_buffers(waiting)
            return NEED_DATA
        if ev is h11.PAUSED:
            return NEED_DATA
        raise ProtocolError(f"unexpected event {ev!r}")  # pragma: no cover - h11 has no other server events

    def _mended_event(self, head: bytes, mended: bytes, read: Fields) -> Event:
        """The next event, of `head` (the bytes waited for, refused by h11) parsed again as mend_request_head wrote it
        (`mended`, its header lines as nginx read them `read`): its Request sized as `head` came, as nginx's
        $request_length counts it (ngx_http_request.c:1124,1454,1519), not as written (where a byte 0x80-0xFF of
        the target is three and a Content-Length's leading zeros none). The bytes after the head are as they came."""
        self._read = read
        self._skip_empty_lines(bytearray(mended))  # what nginx takes and h11 refuses: parsed again
        sent = sent_target(head)
        event = self._next_event() if sent is None else self._with_sent_target(sent)
        if type(event) is Request:
            event.size += len(head) - len(mended)
        return event

    def _check_start(self, probe: bytearray) -> None:
        """check_start on the request line as far as it came; a first byte no method begins with is refused at once,
        as nginx's sw_start (ngx_http_parse_request_line: A-Z, "_" or "-"), not once a line end comes (llhttp too)."""
        end = probe.find(b"\n")
        first = _NOT_CRLF.search(probe)  # (past the empty lines sw_start skips)
        if first is not None and not _may_begin_method(probe[first.start()]):
            raise ProtocolError("client sent invalid method", 400)
        try:
            check_start(probe if end < 0 else probe[:end], self._max_line)
        except ProtocolError as e:
            e.method, e.target = _request_line_of(probe)
            raise

    def _check_start_as_read(self, probe: bytearray) -> None:
        """_check_start on a head that has not ended, at each read, each byte read once: its first byte checked once
        it came, and check_start called once the request line's version can tell (its first bytes say a version
        above 1, or seven of them or the line's end say none), the line as far as it came then."""
        scan = self._scan_of(probe)
        if scan.start_read:
            return
        first = scan.first_byte()
        if first < 0:
            return
        if not _may_begin_method(first):
            raise ProtocolError("client sent invalid method", 400)
        at = scan.version_at()
        if at < 0:
            return
        end = scan.line_end()
        version = probe[at:min(at + 7, end if end >= 0 else len(probe))]
        if _ABOVE_1_VERSION.match(version) is not None:
            scan.start_read = True
            self._check_start(probe)  # (which refuses it, but when its method or target is not one nginx reads)
        elif len(version) == 7 or end >= 0:
            scan.start_read = True

    def _check_so_far(self, probe: bytearray) -> None:
        """Bytes nginx refuses as it reads them, refused before the head ends (h11 sees them once it is whole; the
        llhttp codec at the byte), so that a client's close after them is no cut head: a control byte in the
        request line (ngx_http_parse_request_line), in a header line a name with a byte up to 0x20 or DEL or none
        before its colon, or a NUL in a value (ngx_http_parse_header_line). Each byte is read once (_HeadScan)."""
        scan = self._scan_of(probe)
        if scan.control_in_line():
            self._refuse_so_far(probe, "client sent invalid request")
        if scan.line_end() >= 0 and scan.header_fault():
            self._refuse_so_far(probe, "client sent invalid header line")

    def _scan_of(self, probe: bytearray) -> _HeadScan:
        """How far the checks read `probe`, the head being waited for (from its start, for a head not read yet)."""
        scan = self._scan
        if scan is None or scan.head is not probe:
            scan = self._scan = _HeadScan(probe)
        return scan

    @staticmethod
    def _refuse_so_far(probe: bytearray, message: str) -> None:
        error = ProtocolError(message, 400)
        error.method, error.target = _request_line_of(probe)
        read_before(error, probe)
        note_head(error, probe)  # (what the log counts of it: nginx's $request_length, $request_uri)
        raise error

    def _check_buffers(self, probe: bytearray) -> None:
        """A head longer than nginx's first buffer that has not ended: refused once nginx would refuse it."""
        check = self._head_check
        if check is None or check.head is not probe:
            check = self._head_check = HeadBuffers(probe, self._max_line, self._buffers)
        try:
            check.feed(probe[check.fed:])
        except ProtocolError as e:
            e.method, e.target = _request_line_of(probe)
            read_before(e, probe)
            raise

    def _check_request_line(self, probe: bytearray) -> None:
        """A request line that ended without a version (HTTP/0.9's `method target`) is refused at its line end, as
        by nginx and the llhttp codec; h11 would wait for the blank line that ends a head. Read once, at its end."""
        scan = self._scan_of(probe)
        end = scan.line_end()
        if end < 0 or scan.line_read:
            return
        scan.line_read = True
        line = bytes(probe[:end]).rstrip(b"\r")
        method, _, target = line.partition(b" ")
        target = target.strip(b" ")  # (nginx skips spaces around it)
        if target and b" " not in target and _METHOD.fullmatch(method) is not None:
            raise version_missing(method, target)

    def response_head(self, status: int, headers: Headers, reason: bytes = b"", close: bool = False,
                      lines: bytes = b"", framing: int | None = None) -> bytes:
        if lines:  # h11 frames only (name, value) pairs
            headers = [*headers, *(_split_line(line) for line in lines.split(b"\r\n")[:-1])]
        request = self._request
        head = self._method == b"HEAD"  # (the client's)
        if request is not None and request.method == b"HEAD" != self._method:
            # a policy sent it upstream as HEAD: the head alone, then the close that shows its body cut
            # (Exchange.set_method); h11, which has no API for it, is told the request was a HEAD
            self._method = self._conn._request_method = b"HEAD"
            close = True
        if close:
            headers = [*headers, (b"connection", b"close")]
        self._no_body = self._method == b"HEAD" or status == 204 or status == 304
        self.open_ended = not self._no_body and all(name.lower() != b"content-length" for name, _ in headers)
        data = _send_head(self._conn, h11.Response, headers, status_code=status,
                          reason=reason or REASONS.get(status, b""))
        if head and all(name.lower() != b"content-length" for name, _ in headers):
            # h11 frames an answer to HEAD as a GET's (chunked, without a length); nginx's chunked filter skips HEAD
            # (ngx_http_chunked_filter_module.c:65-70), so it has neither
            data = data.replace(b"\r\nTransfer-Encoding: chunked\r\n", b"\r\n", 1)
        return data

    @property
    def closing(self) -> bool:
        return self._conn.our_state is h11.MUST_CLOSE  # what h11 does once a response that ends it is sent

    def informational(self, status: int) -> bytes:
        response = h11.InformationalResponse(status_code=status, headers=[], reason=REASONS.get(status, b""))
        return self._conn.send(response) or b""

    def switch_protocols(self, headers: Headers, reason: bytes = b"", lines: bytes = b"") -> bytes:
        if lines:
            headers = [*headers, *(_split_line(line) for line in lines.split(b"\r\n")[:-1])]
        # (h11 switches: keep_alive is False from here on)
        return _send_head(self._conn, h11.InformationalResponse, headers, status_code=101,
                          reason=reason or b"Switching Protocols")

    def take_upgraded(self) -> bytes:
        return bytes(self._conn.trailing_data[0])  # what h11 left unparsed after the request (it pauses there)

    def body(self, data: bytes) -> bytes:
        if self._no_body:  # h11 would raise: a HEAD, 204 or 304 response has no body
            return b""
        return _H11Codec.body(self, data)


_METHOD = re.compile(rb"[A-Z_-]{1,20}")  # a method (nginx's characters) as far as _request_line_of looks
# The methods ngx_http_parse_request_line knows by name: what a request line cut before the space after its method
# has as one (as llhttp reads a whole token: `HEAD`; `GE` is none, nginx's r->method being set at the space)
_WHOLE_METHODS = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE", b"CONNECT",
                            b"COPY", b"MOVE", b"LOCK", b"UNLOCK", b"MKCOL", b"PROPFIND", b"PROPPATCH"})


def _request_line_of(raw: bytearray) -> tuple[bytes, bytes]:
    """(method, target) of a head refused, as far as its request line says them (b"" when it does not): what the
    answer (none has a body to a HEAD) and the log need. A method not yet followed by its space is one only when it
    is whole (_WHOLE_METHODS): a head cut at `GE` has none, as nginx's r->method (Kong's log: ngx.req.get_method())."""
    end = raw.find(b"\r\n")
    method, space, rest = bytes(raw[:end] if end >= 0 else raw[:21]).partition(b" ")
    if not (space or method in _WHOLE_METHODS) or _METHOD.fullmatch(method) is None:
        return b"", b""
    target, _, version = rest.rpartition(b" ")
    return method, target if end >= 0 and version.startswith(b"HTTP/") else b""


def _may_begin_method(byte: int) -> bool:
    """Can a request line begin with `byte` (ngx_http_parse_request_line's sw_start: A-Z, "_" or "-")?"""
    return 65 <= byte <= 90 or byte == 45 or byte == 95


def _line_so_far(raw: bytearray | None) -> int:
    """The length of the request line in `raw` as sent, its CRLF included (all of it when the line has not ended)."""
    if raw is None:
        return 0
    end = raw.find(b"\r\n")
    return end + 2 if end >= 0 else len(raw)


def _split_line(line: bytes) -> tuple[bytes, bytes]:
    name, _, value = line.partition(b":")
    return name, value.strip()


def _check_response_head(headers: Headers) -> None:
    """What llhttp rejects in a response head and h11 accepts (merging or preferring chunked)."""
    lengths = 0
    chunked = False
    for name, value in headers:
        if name == b"content-length":
            lengths += 1
            digits = value.rstrip(b" \t")  # (llhttp takes OWS after the digits; a tab stays in the value)
            if not digits.isdigit():
                raise ProtocolError("invalid Content-Length in upstream response", 502)
            if not length_in_range(digits.lstrip(b"0") or b"0"):  # nginx's ngx_atoof: one past its off_t, leading
                # zeros aside (as LlhttpClient)
                raise _invalid_length(value)
        elif name == b"transfer-encoding":
            chunked = True
    if lengths > 1 or (lengths and chunked):
        raise ProtocolError("ambiguous upstream response framing", 502)


class H11Client(_H11Codec):
    """Client side of an upstream connection. A head h11 refuses is parsed again as mend_response_head writes it, when
    that mends it (as the llhttp codec does: LlhttpClient._reparse_mended). A head is bounded as nginx's
    proxy_buffer_size bounds it (`proxy_buffer_size`, which the pool gives; else `max_header_bytes`, which bounds a
    trailer section and what h11 waits for), its bytes as they came."""

    __slots__ = ("_method", "_closed", "transport", "_sent", "_read", "_trailers_ended", "_head_buffer")

    def __init__(self, max_header_bytes: int = 65536, proxy_buffer_size: int | None = None) -> None:
        super().__init__(h11.CLIENT, max_header_bytes)
        self._head_buffer = proxy_buffer_size or max_header_bytes  # the most bytes a response head takes
        self._method = b"GET"
        self.transport: Transport | None = None
        self._closed = False
        self._sent: Headers = []  # the request's headers (_reparse_mended)
        # what the stand-ins of the head mended last stand for (MendedResponse.heads), until it is split
        self._read: tuple[bytes | None, Fields] | None = None
        self._trailers_ended = False  # the response ended with a trailer section h11 refused (_next_event)

    def request_head(self, method: bytes, target: bytes, headers: Headers, framing: int | None = None) -> bytes:
        self._method = method
        self._sent = headers
        # (an Upgrade header makes h11 accept a 101 until a final answer but 101 ends that: a 426 leaves the connection
        # as any answer leaves it)
        return _send_head(self._conn, h11.Request, headers, method=method, target=target)

    def _reparse_mended(self) -> bool:
        """The head h11 refused, parsed again as mend_response_head writes it, when that changes it: by a fresh h11
        connection that sent the request as this one did (its method, Connection and Upgrade: what frames the
        answer), once all of it went (else the refusal stands, a rare case of a rare case)."""
        probe = self._probe
        if probe is None or self._conn.our_state is not h11.MUST_CLOSE:  # (DONE, until h11's refusal made it so)
            return False
        mended = mend_response_head(bytes(probe), interims=False)
        if mended is None or mended.data == probe:
            return False
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=self._max)
        sent = [hv for hv in self._sent if hv[0].lower() not in (b"content-length", b"transfer-encoding")]
        try:
            _send_head(conn, h11.Request, sent, method=self._method, target=b"/")
        except h11.LocalProtocolError:  # pragma: no cover - the proxy's requests carry a Host
            return False
        conn.send(h11.EndOfMessage())
        conn.receive_data(mended.data)
        if self._eof:
            conn.receive_data(b"")
        self._conn = conn
        self._probe = bytearray(mended.data)
        self._read = mended.heads[0]
        return True

    def take_upgraded(self) -> bytes:
        return bytes(self._conn.trailing_data[0])  # what h11 left unparsed after the 101 (it pauses there)

    @staticmethod
    def _switched(ev: h11.InformationalResponse, headers: Headers, reason: bytes | None) -> Response:
        """The 101 h11 accepted (to a request with Upgrade), whatever its Upgrade and Connection say: nginx switches
        on the request alone (ngx_http_upstream_upgrade: "TODO: prevent upgrade if not requested or not possible")."""
        return Response(101, bytes(ev.reason) if reason is None else reason, headers, bytes(ev.http_version), False)

    def _raw_response(self) -> tuple[Headers, bytes | None] | None:
        """The headers of the head h11 parsed, split from its bytes and checked, and its reason when it had a
        stand-in (else h11's is the one)."""
        probe = self._probe
        self._probe = None
        read, self._read = self._read, None
        if probe is None:
            return None
        try:
            head = _split_head(probe, 502, b" ")
        except ProtocolError:  # bare LF line ends, which h11 takes: split as mended, as llhttp reads them
            mended = mend_response_head(bytes(probe), interims=False)
            if mended is None or mended.data == probe:
                raise
            probe = bytearray(mended.data)
            read = mended.heads[0]
            head = _split_head(probe, 502, b" ")
        if head is None:
            return None
        size, _, headers = head
        self._after_head = bytes(probe[size:])  # type: ignore[index]  # not None: head is
        if size > self._head_buffer:
            raise ProtocolError(TOO_BIG_HEADER, 502)
        if read is not None:
            restore_fields(headers, read[1])
        _check_response_head(headers)
        if b"\t" in probe[:size]:  # (a tab around a framing value, which h11 skips as whitespace, is nginx's 502)
            _check_tabbed_framing(bytes(probe[:size]))
        return headers, None if read is None else read[0]

    def _next_event(self) -> Event:
        conn = self._conn
        while True:
            if self._closed:
                return CLOSED
            if conn.their_state is h11.SEND_RESPONSE:
                self._watch_head()
            try:
                ev = conn.next_event()
            except h11.RemoteProtocolError as e:
                if self._eof and self._probe is not None and not self._probe:
                    self._closed = True  # EOF before any byte of a response: as llhttp, CLOSED
                    return CLOSED
                if (chunks := self._chunks) is not None and chunks.in_trailers and \
                        self._body_given == chunks.body_ok:
                    # h11 refused a line after all of the body's data (of a trailer section, once all of it came);
                    # nginx skips such lines (its framing read them so): the response ends (keep_alive: _trailers_ended)
                    if chunks.error is not None:
                        raise chunks.error from None
                    if chunks.done:
                        if self._trailers_ended:
                            return CLOSED if self._eof else NEED_DATA
                        self._trailers_ended = True
                        return END
                if self._head_too_big():  # (h11 waits for up to max_header_bytes)
                    raise ProtocolError(TOO_BIG_HEADER, 502) from None
                if self._reparse_mended():
                    conn = self._conn
                    continue
                self._raw_response()
                raise ProtocolError(str(e), 502, cut=self._eof) from None
            if type(ev) is h11.Data:
                return self._body(bytes(ev.data))
            if type(ev) is h11.Response:
                raw = self._raw_response()
                assert raw is not None
                headers, reason = raw
                names = dict(headers)
                if len(names) != len(headers):  # a name repeats
                    headers = first_of_single(headers)
                if b"transfer-encoding" in names:
                    _check_codings(headers)  # (the value as nginx keeps it: `chunked<TAB>` is no chunked)
                version = bytes(ev.http_version)
                status = ev.status_code
                if self._method != b"HEAD" and status != 204 and status != 304 and not _close_delimited(headers) \
                        and all(name != b"content-length" for name, _ in headers):  # chunked, then
                    self._check_chunks(502, spaces_after_size=True)
                if version < b"1.0":
                    raise ProtocolError(NO_VALID_STATUS, 502)
                keep = version >= b"1.1" and _wants_keep_alive(version, headers)
                if keep and self._method != b"HEAD" and status != 204 and status != 304:
                    keep = not _close_delimited(headers)
                return Response(status, bytes(ev.reason) if reason is None else reason, headers, version, keep)
            if type(ev) is h11.EndOfMessage:
                if self._eof and self.transport is not None and self.transport.reset:  # ended by a reset: cut
                    raise ProtocolError("upstream connection broke mid-response", 502, cut=True)
                return self._end(ev, 502)
            if type(ev) is h11.ConnectionClosed:
                self._closed = True
                return CLOSED
            if type(ev) is h11.InformationalResponse:
                raw = self._raw_response()
                if ev.status_code == 101:  # h11 raised already if the request had no Upgrade header
                    return self._switched(ev, [] if raw is None else raw[0], None if raw is None else raw[1])
                continue
            if ev is h11.NEED_DATA:
                if self._head_too_big():
                    raise ProtocolError(TOO_BIG_HEADER, 502)
                if self._no_status_line():
                    raise ProtocolError(NO_VALID_STATUS, 502)
                self._framing_fault()
            return NEED_DATA

    def _no_status_line(self) -> bool:
        """The head being waited for cannot begin a status line (past the empty lines llhttp skips): nginx knows it
        at the first byte (ngx_http_parse_status_line) and llhttp refuses it at once, where h11 would wait for a line
        end and, at the upstream's close, take it for a head the close cut (a try to retry)."""
        probe = self._probe
        if not probe:
            return False
        start = bytes(probe[:32]).lstrip(b"\r\n")[:5]
        return bool(start) and not b"HTTP/".startswith(start)

    def _head_too_big(self) -> bool:
        """The head being waited for has not ended in nginx's proxy_buffer_size, which it fills: nginx's "upstream
        sent too big header" (ngx_http_upstream.c:2476-2484)."""
        probe = self._probe
        return probe is not None and len(probe) >= self._head_buffer and \
            _BLANK_LINE.search(probe, 0, self._head_buffer) is None

    @property
    def keep_alive(self) -> bool:
        # Unlike h11, also False once the upstream closed, or sent bytes nobody asked for, or a trailer section ended
        # at a bare LF (ChunkedFraming.lf_end: as nginx ends it, but where a strict parser reads on).
        if self._trailers_ended:
            return self._kept_past_trailers()
        keep = _H11Codec.keep_alive.fget(self)  # type: ignore[attr-defined]  # mypy: a property has fget
        return keep and not self._eof and not self._conn.trailing_data[0] and (
            self._chunks is None or not self._chunks.lf_end)

    def _kept_past_trailers(self) -> bool:
        """After a trailer section h11 refused and nginx skips (h11's state is ERROR, the section read by its framing):
        the connection is kept, as nginx keeps it, when nothing came after the section, which did not end at a bare
        LF, our request was sent whole (h11 then moves our side from DONE to MUST_CLOSE) and neither message said
        close (h11's keep_alive, which a `Connection: close` or an HTTP/1.0 answer turns off)."""
        chunks = self._chunks
        conn = self._conn
        return chunks is not None and not chunks.after and not chunks.lf_end and conn.our_state is h11.MUST_CLOSE \
            and conn._cstate.keep_alive and not self._eof

    def start_next_cycle(self) -> None:
        if not self._trailers_ended:
            _H11Codec.start_next_cycle(self)
            return
        # h11 refused the trailer section (its state ERROR): a fresh h11 connection, as start_next_cycle leaves one
        self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=self._max)
        self._trailers_ended = False
        self._chunks = None
        self._body_given = 0
        self._after_head = b""
