"""The framing of a chunked body, checked as strictly as llhttp reads it, for the h11 codec (sans-I/O).

h11 reads chunked framing leniently: a bare LF ends a trailer line or the trailer section, any bytes but LF may
follow the ';' of a chunk line (a bare CR among them), whitespace may follow a chunk size, a chunk size may pass
2**64, trailers may be folded. A front end that reads the same bytes strictly would see a different message end,
which is how requests are smuggled. (Sizes past 2**63 - 1 are refused, by the llhttp codec too: nginx's off_t
limit, in ngx_http_parse_chunked.) So the h11 codec gives h11 a chunked body through this check: h11 gets what
`feed` returns, each line once it ended and passed (RFC 9112 7.1), and at the first fault nothing more: the message
fails after the body bytes before it, as llhttp fails it (tests/http/test_codec_fuzz.py compares the two). A chunk
line h11 would refuse that this reads is given in its plain form, `%x` CRLF (both codecs drop extensions): a size
of more than 20 digits (h11's bound; ngx_http_parse_chunked reads any number of leading zeros, as llhttp does), and
a response's whitespace after its size. A request's chunk line takes no whitespace (RFC 9112 7.1.1's BWS around
';' and '=', which nginx reads, llhttp refuses: 400 in both codecs). In a response, spaces and tabs may follow a
chunk size, as nginx reads them (SP or HTAB there begins an extension) and the llhttp codec's response parser takes
them (llhttp's lenient_spaces_after_chunk_size).
A response's trailer section is read as nginx reads it (sw_trailer, sw_trailer_header: each line skipped to its
LF, a CR not followed by LF the one fault, an empty line its end), the response kept whole where llhttp would
refuse a line of it (the llhttp codec then reads the section so too), and its connection kept, as nginx keeps it,
when nothing came after the section (`after`) and it did not end at a bare LF (`lf_end`: where a parser that ends
lines at CRLF alone would read on, the message end is in doubt).
"""

from __future__ import annotations

import re

from gateway.http.codec import ProtocolError

_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
_EXTENSIONS = rb"(?:;" + _TOKEN + rb"(?:=(?:" + _TOKEN + rb"|" + _QUOTED + rb"))?)*\r\n"
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]+)" + _EXTENSIONS)
_RESPONSE_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]+)[ \t]*" + _EXTENSIONS)  # (whitespace after the size)
_H11_DIGITS = 20  # the most digits h11 takes in a chunk size (h11/_abnf.py chunk_size)
_TRAILER_LINE = re.compile(_TOKEN + rb":[^\x00-\x08\x0a-\x1f\x7f]*\r\n")  # one llhttp takes
_FRAMING = (b"content-length:", b"transfer-encoding:")  # llhttp refuses them in trailers (RFC 9110 6.5.1: may)
MAX_CHUNK_SIZE = (1 << 63) - 1  # nginx's NGX_MAX_OFF_T_VALUE: a larger size is invalid (ngx_http_parse_chunked)

_SIZE, _DATA, _DATA_END, _TRAILERS, _DONE = range(5)
_HEX = frozenset(b"0123456789ABCDEFabcdef")


class ChunkedFraming:
    """Feed it the raw bytes of a message from the first byte of its chunked body on. `error` is set at the first
    framing fault (and nothing more is read); `body_ok` is how many body bytes came before it. `spaces_after_size`:
    a response's framing, whose chunk sizes may be followed by spaces and tabs."""

    __slots__ = ("error", "body_ok", "lf_end", "after", "_state", "_left", "_line", "_max_line", "_status",
                 "_chunk_line", "_response")

    def __init__(self, status: int, max_line: int, spaces_after_size: bool = False) -> None:
        self.error: ProtocolError | None = None
        self.body_ok = 0  # body bytes framed so far
        self.lf_end = False  # a response's trailer section ended at a bare LF, as nginx ends it
        self.after = 0  # bytes fed after the body's end (its trailer section's): the next message's, or junk
        self._state = _SIZE
        self._left = 0  # bytes of the current chunk still to come
        self._line = bytearray()  # a chunk, chunk-end or trailer line, until its LF
        self._max_line = max_line
        self._status = status  # of a framing fault: 400 for a request, 502 for a response
        self._chunk_line = _RESPONSE_CHUNK_LINE if spaces_after_size else _CHUNK_LINE  # (a response's: see above)
        self._response = spaces_after_size  # (its trailer section read as nginx reads it)

    @classmethod
    def trailer_section(cls, status: int, max_line: int) -> ChunkedFraming:
        """A response's framing from the start of its trailer section on (the llhttp codec's, once llhttp refused a
        line of it)."""
        framing = cls(status, max_line, spaces_after_size=True)
        framing._state = _TRAILERS
        return framing

    @property
    def done(self) -> bool:
        """The body ended (its trailer section with it): the bytes after it are the next message's."""
        return self._state == _DONE

    @property
    def in_trailers(self) -> bool:
        """All of the body's data came: its trailer section is being read, or ended."""
        return self._state >= _TRAILERS

    def feed(self, data: bytes) -> bytes:
        """Read the next bytes of the message; returns those a parser after this check may be given: `data` but the
        line not ended yet (given once it ends and passes), with each chunk line a parser would refuse in its plain
        form (see the module's docstring), and nothing from the first fault on."""
        if self.error is not None:
            return b""
        given: list[bytes] = []
        start = 0  # the first byte of `data` neither given nor held yet
        i = 0
        n = len(data)
        while i < n and self._state != _DONE:
            if self._state == _DATA:
                take = min(self._left, n - i)
                i += take
                self._left -= take
                self.body_ok += take
                if not self._left:
                    self._state = _DATA_END
                continue
            end = data.find(b"\n", i)
            if end < 0:
                self._line += data[i:]
                if len(self._line) > self._max_line:
                    self._fail("chunk or trailer line too long")
                else:
                    self._check_start_of_line()
                given.append(data[start:i])
                start = n
                break
            held = len(self._line)  # (its start came in an earlier feed: held back then)
            self._line += data[i : end + 1]
            line = bytes(self._line)
            self._line.clear()
            plain = self._end_of_line(line)
            if self.error is not None:
                given.append(data[start:i])
                start = n
                break
            if held or plain is not None:
                given += (data[start:i], line if plain is None else plain)
                start = end + 1
            i = end + 1
        if self._state == _DONE:
            self.after += n - i
        if not start:
            return data
        given.append(data[start:])
        return b"".join(given)

    def _end_of_line(self, line: bytes) -> bytes | None:
        """Read a line that ended; returns its plain form when a parser after this check would refuse it as it
        came."""
        state = self._state
        if state == _SIZE:
            m = self._chunk_line.fullmatch(line)
            if m is None:
                self._fail("invalid chunk line")
            elif int(m.group(1), 16) > MAX_CHUNK_SIZE:
                self._fail("chunk size too large")
            else:
                self._left = int(m.group(1), 16)
                self._state = _DATA if self._left else _TRAILERS
                if len(m.group(1)) > _H11_DIGITS or b" " in line or b"\t" in line:  # (a response's: `5 ;a`)
                    return b"%x\r\n" % self._left
        elif state == _DATA_END:
            if line != b"\r\n":
                self._fail("chunk data not followed by CRLF")
            else:
                self._state = _SIZE
        elif line == b"\r\n":
            self._state = _DONE
        elif self._response:
            self._skip_trailer(line)
        elif _TRAILER_LINE.fullmatch(line) is None:
            self._fail("invalid trailer field")
        elif line.lower().startswith(_FRAMING):
            self._fail("framing field in the trailer section")
        return None

    def _check_start_of_line(self) -> None:
        """A line not ended yet whose first byte cannot begin it is refused at that byte, as ngx_http_parse_chunked
        refuses it (sw_chunk_start: a hex digit; sw_after_data: CR or LF) and llhttp does, not once its LF comes."""
        first = self._line[0]
        if self._state == _SIZE and first not in _HEX:
            self._fail("invalid chunk line")
        elif self._state == _DATA_END and first != 13 and first != 10:
            self._fail("chunk data not followed by CRLF")

    def _skip_trailer(self, line: bytes) -> None:
        """A line of a response's trailer section (but CRLF), as nginx reads it: skipped, a CR in it not followed by LF
        its fault, LF alone the section's end."""
        text = line[:-2] if line[-2:] == b"\r\n" else line[:-1]
        if b"\r" in text:
            self._fail("a CR not followed by LF in the trailer section")
        elif not text:
            self._state = _DONE
            self.lf_end = True  # (llhttp refuses that)

    def _fail(self, message: str) -> None:
        self.error = ProtocolError(message, self._status)


def oversized(line: bytes) -> bool:
    """Is `line` a chunk-size line (its CRLF included) whose size is past MAX_CHUNK_SIZE?"""
    m = _CHUNK_LINE.fullmatch(line)
    return m is not None and int(m.group(1), 16) > MAX_CHUNK_SIZE
