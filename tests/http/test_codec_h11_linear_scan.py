"""The h11 codec's checks of a request head that has not ended read each of its bytes a bounded number of times,
however the client splits the head into reads, as nginx's parser does: ngx_http_parse_request_line and
ngx_http_parse_header_line keep their state in r->state between reads and go on from b->pos, each byte read once
(src/http/ngx_http_parse.c:135-137 and 791-792, 844-849 and 1068-1069 in 1.27.1). They read the line not ended yet
again at each read (and copied the whole head), so a client sending a long line in tiny reads cost CPU quadratic in
its length: an 8 KB request line a byte per read, 0.74 s.

The work is counted, not timed: the bytes the checks read of the head (a counting bytearray stands in for the one the
codec keeps a head being waited for in) and those the codec modules' regular expressions scan.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

import pytest

import gateway.http.codec as codec_module
import gateway.http.codec_h11 as h11_module
from gateway.http.codec import END, NEED_DATA, ProtocolError, Request
from gateway.http.codec_h11 import H11Server

LONG = 64 * 1024
BIG_BUFFERS = {"max_header_bytes": 4 << 20, "max_line_bytes": 1 << 20}  # large_client_header_buffers 4 1m


class _Overread(Exception):
    """The checks read more bytes than their budget (raised at once: a quadratic scan fails fast)."""


class _Reads:
    """The bytes read so far, against a budget."""

    def __init__(self) -> None:
        self.count = 0
        self.budget = math.inf

    def add(self, n: int) -> None:
        self.count += n
        if self.count > self.budget:
            raise _Overread(f"{self.count} bytes read, over the budget of {self.budget}")


def _counting_bytearray(reads: _Reads) -> type[bytearray]:
    """A bytearray that counts the bytes its methods read: up to the hit for find, all of them for the others."""

    class Counting(bytearray):
        def find(self, sub: Any, start: Any = None, end: Any = None) -> int:
            at = bytearray.find(self, sub, start, end)
            low, high, _ = slice(start, end).indices(len(self))
            reads.add((at + len(sub) if at >= 0 else high) - low)
            return at

        def __getitem__(self, key: Any) -> Any:
            item = bytearray.__getitem__(self, key)
            reads.add(len(item) if isinstance(key, slice) else 1)
            return item

    def whole(name: str) -> Any:
        method = getattr(bytearray, name)

        def counted(self: bytearray, *args: Any, **kwargs: Any) -> Any:
            reads.add(len(self))
            return method(self, *args, **kwargs)
        return counted

    for name in ("rfind", "index", "rindex", "count", "lstrip", "rstrip", "strip", "partition", "rpartition", "split",
                 "rsplit", "splitlines", "removesuffix", "removeprefix", "startswith", "endswith", "decode", "lower",
                 "upper", "replace", "isascii", "isdigit", "__contains__", "__eq__", "__ne__"):
        setattr(Counting, name, whole(name))
    return Counting


class _CountingPattern:
    """A compiled regular expression that counts the bytes it scans: to the end of a match, or all of its range."""

    def __init__(self, pattern: re.Pattern[bytes], reads: _Reads) -> None:
        self._pattern = pattern
        self._reads = reads

    def _scan(self, how: str, string: Any, pos: int = 0, endpos: int = 1 << 62) -> Any:
        m = getattr(self._pattern, how)(string, pos, endpos)
        self._reads.add((m.end() if m is not None else min(endpos, len(string))) - pos)
        return m

    def search(self, string: Any, pos: int = 0, endpos: int = 1 << 62) -> Any:
        return self._scan("search", string, pos, endpos)

    def match(self, string: Any, pos: int = 0, endpos: int = 1 << 62) -> Any:
        return self._scan("match", string, pos, endpos)

    def fullmatch(self, string: Any, pos: int = 0, endpos: int = 1 << 62) -> Any:
        return self._scan("fullmatch", string, pos, endpos)

    def sub(self, repl: Any, string: Any, count: int = 0) -> Any:
        self._reads.add(len(string))
        return self._pattern.sub(repl, string, count)

    def __getattr__(self, name: str) -> Any:  # split, findall, finditer: the whole string
        method = getattr(self._pattern, name)

        def counted(string: Any, *args: Any, **kwargs: Any) -> Any:
            self._reads.add(len(string))
            return method(string, *args, **kwargs)
        return counted if callable(method) else method


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> _Reads:
    """The bytes the h11 server codec's checks read, counted from here on."""
    counter = _Reads()
    monkeypatch.setattr(h11_module, "bytearray", _counting_bytearray(counter), raising=False)
    for module in (h11_module, codec_module):
        for name, value in list(vars(module).items()):
            if isinstance(value, re.Pattern):
                monkeypatch.setattr(module, name, _CountingPattern(value, counter))
    return counter


UNENDED = {  # heads not ended, (bytes, read size): a long line of each kind, and many lines in 100-byte reads
    "request-line": (b"GET /" + b"a" * LONG, 1),  # (its target, its version not come yet)
    "version-after-a-long-target": (b"GET /" + b"a" * LONG + b" HTTP/1.1", 1),
    "header-value": (b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"v" * LONG, 1),
    "header-name": (b"GET / HTTP/1.1\r\nHost: x\r\nX-" + b"n" * LONG, 1),
    "many-lines": (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: %s\r\n" % (n, b"v" * 90) for n in range(700)),
                   100),
}


@pytest.mark.parametrize(("head", "size"), UNENDED.values(), ids=UNENDED.keys())
def test_a_head_that_has_not_ended_is_read_in_work_linear_in_its_bytes(reads: _Reads, head: bytes, size: int) -> None:
    """Fed in reads of `size` bytes (a byte, as a client may send it on purpose), the checks of a head that has not
    ended read fewer than 4 bytes a byte of it and 4 a read (where the head begins), as nginx's parser reads each
    byte once however the reads cut it (ngx_http_parse.c:135-137, 791-792, 844-849, 1068-1069). They read the line
    not ended again at each read before: some n * n / 2 bytes."""
    server = H11Server(**BIG_BUFFERS)
    feeds = math.ceil(len(head) / size)
    reads.budget = 4 * len(head) + 4 * feeds
    for at in range(0, len(head), size):
        server.receive_data(head[at:at + size])
        assert server.next_event() is NEED_DATA
    assert reads.count < 4 * len(head) + 4 * feeds


def _events(reads: list[bytes]) -> list[object]:
    """What an H11Server gives of `reads`, a response sent for each request: its events (a request's fields, the body
    bytes joined), or its error's message and status."""
    server = H11Server()
    events: list[object] = []
    body = b""
    try:
        for data in reads:
            server.receive_data(data)
            while (event := server.next_event()) is not NEED_DATA:
                if isinstance(event, bytes):
                    body += event
                    continue
                if isinstance(event, Request):
                    events.append(tuple(getattr(event, name) for name in Request.__slots__))
                    server.response_head(200, [(b"content-length", b"0")])
                    server.end()
                    continue
                events.append((body, event))
                body = b""
                if event is not END or not server.keep_alive:
                    return events
                server.start_next_cycle()
    except ProtocolError as error:
        events.append((str(error), error.status))
    return events


def _cuts(data: bytes) -> Iterator[list[bytes]]:
    """`data` in two reads at every offset, and in three at a sample of offset pairs."""
    for cut in range(1, len(data)):
        yield [data[:cut], data[cut:]]
    for first in range(1, len(data), 3):
        for second in range(first + 1, len(data), 7):
            yield [data[:first], data[first:second], data[second:]]


VALID = {  # what the checks read: runs of spaces, a CR before each LF, colons, empty values, a body, a next request
    "spaces": b"GET  /a?b=c:d  HTTP/1.1\r\nHost: x\r\n\r\n",
    "absolute-target": b"GET http://h:80/x HTTP/1.0\r\nHost: x\r\nX-Empty:\r\nX-Colon: a:b\r\n\r\n",
    "body-and-next": b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /n HTTP/1.1\r\nHost: y\r\n\r\n",
    "tab-in-value": b"GET / HTTP/1.1\r\nHost: x\r\nX-T: a\tb\r\n\r\n",
}


@pytest.mark.parametrize("head", VALID.values(), ids=VALID.keys())
def test_a_valid_head_gives_the_events_it_gives_whole_however_it_is_cut(head: bytes) -> None:
    """Each check goes on where it stopped at the read before (a CR last in a read is read again at the next one,
    where an LF may follow it), and takes what nginx takes however the reads cut the head, as nginx's parser
    (ngx_http_parse.c:135-137, 844-849)."""
    whole = _events([head])
    assert any(isinstance(event, tuple) and len(event) == len(Request.__slots__) for event in whole)
    for reads in _cuts(head):
        assert _events(reads) == whole, reads


REFUSED = {  # a byte nginx refuses as it reads it, at the place it stands: the same 400 however the head is cut
    "cr-in-header-name": b"GET /x HTTP/1.1\r\nHost: t\r\nX\rY: z\r\n\r\n",  # sw_name: ch <= 0x20
    "space-in-header-name": b"GET /x HTTP/1.1\r\nHost: t\r\nX Y: z\r\n\r\n",
    "colon-first": b"GET /x HTTP/1.1\r\nHost: t\r\n:a\r\n\r\n",
    "nul-in-header-value": b"GET /x HTTP/1.1\r\nHost: t\r\nX: a\x00b\r\n\r\n",  # sw_value: '\0'
    "control-in-target": b"GET /x\x01y HTTP/1.1\r\nHost: t\r\n\r\n",  # sw_check_uri: ch < 0x20
}


@pytest.mark.parametrize("head", REFUSED.values(), ids=REFUSED.keys())
def test_a_refused_head_gets_the_error_it_gets_whole_however_it_is_cut(head: bytes) -> None:
    """A byte nginx refuses is refused with the same 400, wherever the reads cut the head around it (the checks
    that go on where they stopped miss none of it: ngx_http_parse.c:135-137, 844-849)."""
    whole = _events([head])
    assert whole[-1][1] == 400  # type: ignore[index]
    for reads in _cuts(head):
        assert _events(reads) == whole, reads
