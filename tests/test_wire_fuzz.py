"""Wire-level fuzz of the running gateway, once per codec: hostile bytes from clients and from an upstream.

Client side (CLIENT_CASES per codec): generated requests (framing conflicts, odd Content-Length and
Transfer-Encoding, chunk edge cases, pipelining, huge or odd heads, Expect: 100-continue, early EOF, slow bytes,
resets) go over raw sockets to a gateway in front of a healthy echo backend. Every case must end within TIMEOUT, with
complete, strictly parseable responses (a 4xx of the gateway's own in JSON, never a 500 or a 502) and a close; each
echoed request must be one of the case's, in order, with its body intact when it was valid; every valid request
before the first broken one must be answered; a normal request on a new connection must then succeed.

Upstream side (UPSTREAM_CASES per codec): a raw-socket backend answers each request with a generated response (bad
status lines, 1xx sequences, framing conflicts, bytes after the body, bodies to HEAD and 204/304, early close, reset,
stalls, chunked errors, trailers, huge heads, event streams). The client must see the response relayed (a valid one
unchanged), a 502/504 JSON error, or a reset once the head was relayed; the next request, on the same client
connection and on a new one, must get exactly its own answer from the same backend (each good answer carries a
marker tied to its request, and the bytes after a broken response are often a whole response with another marker);
and the backend checks that no request ever comes on a connection the gateway had to give up (bytes after the
response, Connection: close, HTTP/1.0, or a response the gateway refused or cut).

Cases run in LANES lanes side by side (each lane with its own backend on the upstream side, so what one case leaves
in the pool is what its lane's next request finds). Both sides watch the gateway's log: no record at ERROR or above,
none with a traceback.

Everything is seeded (random.Random) and bounded. A finding is tolerated only when a `KNOWN` entry recognizes it by
its symptom (a traceback's frames, a 1xx after the final response, ...), each a bug pinned by a minimized
xfail(strict=True) test at the end of the file; none is open now, and what was found is pinned there as fixed.
"""

from __future__ import annotations

import json
import logging
import random
import re
import socket
import struct
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import h11
import pytest
import trio
from backends import EchoBackend, service

from gateway.http.errlog import ErrorContext
from gateway.http.kong_errors import nginx_page
from gateway.http.server import CLIENT_GONE_LOG
from gateway.metrics import TIMEOUTS

TIMEOUT = 5.0  # any single case, or a health check, must finish within this
# keepalive_timeout_s is what most cases that end by waiting ("wait") wait for: short, as nothing else waits for it
# (a case's next request is written at once). The head of a case that sends 300 bytes one at a time takes a while on
# a loaded host, and the pinned HTTP/1.0 test below sends its body 0.1 s late: header and body timeouts stay longer.
SETTINGS = {"header_timeout_s": 0.5, "keepalive_timeout_s": 0.25, "client_body_timeout_s": 0.5,
            "max_header_bytes": 8192}
CLIENT_SEED = 20240601
UPSTREAM_SEED = 20240602
CLIENT_CASES = 300  # per codec
UPSTREAM_CASES = 300  # per codec
READ_TIMEOUT_MS = 300  # the hostile services' read_timeout: what every stalled case waits for (twice, with its retry);
# many times the longest pause of the hostile backend within a response (0.01 s), as it serves from this very process
LANES = 6  # cases run in this many lanes side by side; on the upstream side each lane has its own backend

# What a response the gateway relays may hold, as nginx relays it (ngx_http_parse_header_line, _status_line): a name
# of any bytes but a control byte, a space and `:` (X(Y), which nginx calls invalid), a value or reason of any but
# NUL, CR and LF (tests/http/test_upstream_response_nginx.py); never a byte that would split the head
TOKEN = re.compile(rb"[^\x00-\x20\x7f:]+")
FIELD_VALUE = re.compile(rb"[^\x00\r\n]*")
STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-9][0-9]{2}) ([^\r\n]*)")


# ===================================================================================================================
# A strict reader of what the gateway sends to a client
# ===================================================================================================================


class WireError(Exception):
    """The gateway sent bytes that are not a valid HTTP/1.1 response."""


@dataclass
class Resp:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    complete: bool
    interim: list[int] = field(default_factory=list)  # 1xx statuses before it

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    @property
    def closes(self) -> bool:
        value = self.header(b"connection")
        return value is not None and b"close" in value.lower()


def _dechunk(buf: bytes, pos: int) -> tuple[bytes, int] | None:
    """A chunked body at buf[pos:]: (body, end) or None if incomplete; WireError if malformed."""
    out = bytearray()
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        line = buf[pos:eol]
        m = re.fullmatch(rb"([0-9a-fA-F]{1,16})(;[^\r\n]*)?", line)
        if m is None:
            raise WireError(f"bad chunk line {line[:40]!r}")
        size = int(m.group(1), 16)
        pos = eol + 2
        if size == 0:
            while True:  # trailers, then the blank line
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    return None
                if eol == pos:
                    return bytes(out), eol + 2
                pos = eol + 2
        if len(buf) < pos + size + 2:
            return None
        out += buf[pos:pos + size]
        if buf[pos + size:pos + size + 2] != b"\r\n":
            raise WireError("chunk data not followed by CRLF")
        pos += size + 2


def read_response(buf: bytes, pos: int, head_request: bool, eof: bool) -> tuple[Resp, int] | None:
    """The next response at buf[pos:] (1xx skipped into `interim`): (response, end), or None when its head is not
    complete yet; a response whose body is incomplete comes back with complete=False once `eof`."""
    interim: list[int] = []
    while True:
        end = buf.find(b"\r\n\r\n", pos)
        if end < 0:
            if eof and pos < len(buf):
                raise WireError(f"incomplete response head {buf[pos:pos + 80]!r}")
            if eof and interim:
                raise WireError(f"dangling 1xx: {interim} and no final response after it")
            return None
        lines = buf[pos:end].split(b"\r\n")
        m = STATUS_LINE.fullmatch(lines[0])
        if m is None:
            raise WireError(f"bad status line {lines[0][:80]!r}")
        status = int(m.group(1))
        headers = []
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or TOKEN.fullmatch(name) is None:
                raise WireError(f"bad header line {line[:80]!r}")
            value = value.strip(b" \t")
            if FIELD_VALUE.fullmatch(value) is None:
                raise WireError(f"bad header value {line[:80]!r}")
            headers.append((name.lower(), value))
        pos = end + 4
        if 100 <= status < 200:
            interim.append(status)
            continue
        break
    resp = Resp(status, headers, b"", True, interim)
    names = [k for k, _ in headers]
    if names.count(b"content-length") > 1 or (b"content-length" in names and b"transfer-encoding" in names):
        raise WireError("ambiguous framing sent to the client")
    if head_request or status in (204, 304):
        return resp, pos
    te = resp.header(b"transfer-encoding")
    cl = resp.header(b"content-length")
    if te is not None:
        if te.lower() != b"chunked":
            raise WireError(f"transfer-encoding {te!r} sent to the client")
        got = _dechunk(buf, pos)
        if got is None:
            if not eof:
                return None
            resp.complete = False
            resp.body = buf[pos:]
            return resp, len(buf)
        resp.body, pos = got
        return resp, pos
    if cl is not None:
        if not cl.isdigit():
            raise WireError(f"content-length {cl!r} sent to the client")
        n = int(cl)
        if len(buf) - pos < n:
            if not eof:
                return None
            resp.complete = False
            resp.body = buf[pos:]
            return resp, len(buf)
        resp.body = buf[pos:pos + n]
        return resp, pos + n
    if not eof:  # close-delimited
        return None
    resp.body = buf[pos:]
    return resp, len(buf)


class Wire:
    """A raw client connection to the gateway: bytes out, responses in, and how it ended."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.local = stream.socket.getsockname()  # the gateway's name for this client (its peer)
        self.buf = b""
        self.pos = 0
        self.eof = False
        self.reset = False

    @classmethod
    async def open(cls, port: int) -> Wire:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)

    async def send(self, data: bytes) -> bool:
        """False if the gateway already closed (the write failed)."""
        try:
            await self.stream.send_all(data)
            return True
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.reset = True
            return False

    async def send_eof(self) -> None:
        try:
            await self.stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.reset = True

    async def fill(self) -> None:
        """Read what comes next (at EOF or a reset: mark it)."""
        try:
            chunk = await self.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.reset = True
            self.eof = True
            return
        if not chunk:
            self.eof = True
        self.buf += chunk

    async def response(self, head_request: bool = False) -> Resp | None:
        """The next response, or None at EOF with no byte of one."""
        while True:
            got = read_response(self.buf, self.pos, head_request, self.eof)
            if got is not None:
                self.pos = got[1]
                return got[0]
            if self.eof:
                return None
            await self.fill()

    async def body_after_head(self, resp: Resp) -> bytes:
        """After the response to a HEAD: the body the gateway sent with it anyway (its own error's JSON), taken out
        of the way of the next response; b"" if none."""
        if len(self.buf) == self.pos and not self.eof:
            with trio.move_on_after(0.05):  # a body comes in the same write as its head
                await self.fill()
        length = resp.header(b"content-length")
        if self.buf[self.pos:self.pos + 1] != b"{" or length is None or not length.isdigit():
            return b""
        while len(self.buf) - self.pos < int(length) and not self.eof:
            await self.fill()
        body = self.buf[self.pos:self.pos + int(length)]
        self.pos += len(body)
        return body

    async def until_closed(self) -> bytes:
        """Read on until the gateway closes; returns what came after the responses read so far."""
        while not self.eof:
            await self.fill()
        return self.buf[self.pos:]


KONG_ERROR_TYPES = (b"text/plain; charset=utf-8", b"application/json; charset=utf-8")
_TEXT_ERROR = re.compile(rb"[^\n]+\nrequest_id: [0-9a-f]+\n")


def is_kong_error(resp: Resp) -> bool:
    """One of Kong's error bodies: JSON, or the text page an nginx-made error gets when the request names no format
    (kong/error_handlers.lua, error_default_type), or HTML / XML when it asked for one; or nginx's own page for a
    status Kong's error handler does not take."""
    content_type = resp.header(b"content-type") or b""
    if content_type == b"text/html; charset=UTF-8":  # a status outside Kong's error_page list (501, 505): nginx's
        return resp.body == nginx_page(resp.status)  # own page (its charset from Kong's nginx_http_charset)
    if content_type.startswith(b"text/plain"):
        return _TEXT_ERROR.fullmatch(resp.body) is not None
    if content_type.startswith((b"text/html", b"application/xml")):
        return b"request_id: " in resp.body or b"<requestid>" in resp.body
    if not content_type.startswith(b"application/json"):
        return False
    try:
        body = json.loads(resp.body)
    except ValueError:
        return False
    return isinstance(body, dict) and "message" in body and "request_id" in body


# ===================================================================================================================
# Findings, and the log
# ===================================================================================================================


@dataclass
class Finding:
    case: int
    kind: str  # "500", "log", "hang", "wire", "json", "misdelivery", ...
    detail: str
    raw: Any  # the case's input
    trace: str = ""  # the traceback of a logged exception


class BadLogs(logging.Handler):
    """Collects the gateway's log records at ERROR and above, and any with a traceback, with the cases in flight
    when each was emitted (cases run a few at a time). An upstream's failure, written at ERROR as nginx writes it,
    with its request's context (gateway.http.errlog), is what a hostile upstream is owed, not a finding."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.in_flight: set[int] = set()
        self.found: list[tuple[str, str, list[int]]] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        upstream_failed = isinstance(record.args, tuple) and any(isinstance(a, ErrorContext) for a in record.args)
        if (record.levelno >= logging.ERROR and not upstream_failed) or record.exc_info or "Traceback" in text:
            trace = "".join(traceback.format_exception(*record.exc_info)) if record.exc_info else ""
            self.found.append((f"{record.levelname} {record.name}: {text}", trace, sorted(self.in_flight)))


@contextmanager
def bad_logs() -> Iterator[BadLogs]:
    """Watch the gateway's log (every level: a traceback logged at DEBUG counts too)."""
    logs = BadLogs()
    logger = logging.getLogger("gateway")
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(logs)
    try:
        yield logs
    finally:
        logger.removeHandler(logs)
        logger.setLevel(level)


class GoneClients(logging.Handler):
    """The client addresses the gateway saw leave while their request waited on the upstream (its 499, as nginx's
    proxy_ignore_client_abort off): a half-closing client it ended that way goes unanswered, or cut, by design. (The
    line is DEBUG, as nginx's is info: bad_logs has the gateway's logger at DEBUG meanwhile.)"""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.peers: set[tuple[str, int]] = set()

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == CLIENT_GONE_LOG:
            self.peers.add(record.args[0])  # type: ignore[index]


async def run_cases(cases: list[Any], run_one: Callable[[Any, int], Awaitable[list[Finding]]]) -> list[Finding]:
    """Run every case, in LANES lanes side by side (case i in lane i % LANES, each lane's cases one after the
    other): their findings, and the bad log records of the cases that were in flight."""
    findings: list[Finding] = []
    by_index = {case.index: case for case in cases}

    async def lane(n: int) -> None:
        for case in cases[n::LANES]:
            logs.in_flight.add(case.index)
            try:
                findings.extend(await run_one(case, n))
            finally:
                logs.in_flight.discard(case.index)

    with bad_logs() as logs:
        async with trio.open_nursery() as nursery:
            for n in range(LANES):
                nursery.start_soon(lane, n)
    for text, trace, flight in logs.found:
        first = flight[0] if flight else -1
        findings.append(Finding(first, "log", f"{text} (cases in flight: {flight})",
                                [by_index[i] for i in flight], trace))
    return findings


# ===================================================================================================================
# Client side: generated hostile requests
# ===================================================================================================================

ECHO_PATH = b"/echo"
NO_ROUTE_PATH = b"/nope"
BODY_METHODS = [b"POST", b"PUT", b"PATCH"]


@dataclass
class Req:
    method: bytes
    target: bytes
    version: bytes
    headers: list[bytes]  # raw header lines, without line ends
    body: bytes  # raw, framed as the headers say
    payload: bytes  # the body a compliant reader finds
    marker: bytes
    valid: bool = True
    eol: bytes = b"\r\n"
    prefix: bytes = b""  # before the request line
    tags: list[str] = field(default_factory=list)
    raw_override: bytes | None = None

    @property
    def closes(self) -> bool:
        """Does a compliant server close the connection after answering this (valid) request?"""
        conn = b" ".join(h.split(b":", 1)[1].lower() for h in self.headers if h.lower().startswith(b"connection:"))
        return self.version == b"HTTP/1.0" or b"close" in conn  # (the gateway never keeps 1.0 alive, as h11)

    @property
    def expects_continue(self) -> bool:
        return self.raw_override is None and bool(self.body) and any(
            h.lower().replace(b" ", b"") == b"expect:100-continue" for h in self.headers)

    def head(self) -> bytes:
        if self.raw_override is not None:
            return self.raw_override
        eol = self.eol
        head = b"%s %s %s" % (self.method, self.target, self.version) + eol
        return self.prefix + head + b"".join(h + eol for h in self.headers) + eol

    def wire(self) -> bytes:
        return self.head() + (self.body if self.raw_override is None else b"")


def _chunk(rng: random.Random, data: bytes) -> bytes:
    out = bytearray()
    pos = 0
    while pos < len(data):
        n = rng.randint(1, max(1, len(data) - pos))
        out += b"%x\r\n%s\r\n" % (n, data[pos:pos + n])
        pos += n
    return bytes(out + b"0\r\n\r\n")


_TOP_BYTE_TO_CHAR = bytes((b >> 1) + 32 for b in range(256))  # a 32-bit word's top 7 bits, + 32
_OUT_OF_RANGE = bytes(b for b in range(256) if b >> 1 >= 95)  # top 7 bits of 95 or more: drawn again


def printable(rng: random.Random, n: int) -> bytes:
    """`n` bytes in 32-126: the very bytes `bytes(rng.randrange(32, 127) for _ in range(n))` gives, leaving `rng` in
    the same state (each is a word's top 7 bits, drawn again when 95 or more), ten times faster: the generated cases
    have bodies of up to 70 KB, and drawing them a byte at a time took most of a second of each test."""
    out = b""
    while len(out) < n:
        need = n - len(out)  # (as many words as values still needed: never a word the byte-wise draw would not take)
        words = rng.getrandbits(32 * need).to_bytes(4 * need, "little")  # (the first word drawn is the lowest)
        out += words[3::4].translate(_TOP_BYTE_TO_CHAR, _OUT_OF_RANGE)
    return out


def _payload(rng: random.Random) -> bytes:
    r = rng.random()
    if r < 0.15:
        return b""
    if r < 0.9:
        return printable(rng, rng.randint(1, 200))
    if r < 0.97:
        return bytes(rng.randrange(256) for _ in range(rng.randint(1, 2000)))  # any bytes, CRLFs included
    return b"z" * rng.randint(60000, 70000)  # past a read's size


def base_request(rng: random.Random, marker: bytes) -> Req:
    method = rng.choice([b"GET", b"GET", b"POST", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH"])
    route = NO_ROUTE_PATH if rng.random() < 0.2 else ECHO_PATH
    query = rng.choice([b"", b"", b"", b"?q=%d" % rng.randrange(100), b"?framing=chunked", b"?framing=close"])
    target = route + b"/" + marker + query
    headers = [b"Host: gw.test"]
    if rng.random() < 0.3:
        headers.append(b"User-Agent: fuzz/1.0")
    if rng.random() < 0.2:
        headers.append(b"Accept: */*")
    payload = b""
    body = b""
    if method in BODY_METHODS or rng.random() < 0.05:
        payload = _payload(rng)
        if rng.random() < 0.6:
            headers.append(b"Content-Length: %d" % len(payload))
            body = payload
        else:
            headers.append(b"Transfer-Encoding: chunked")
            body = _chunk(rng, payload)
    rng.shuffle(headers)
    return Req(method, target, b"HTTP/1.1", headers, body, payload, marker)


def _set_header(req: Req, name: bytes, value: bytes | None) -> None:
    """Replace every `name` line by one with `value` (none if None)."""
    lname = name.lower() + b":"
    req.headers = [h for h in req.headers if not h.lower().startswith(lname)]
    if value is not None:
        req.headers.insert(len(req.headers) // 2, name + b": " + value)


def _has_header(req: Req, name: bytes) -> bool:
    lname = name.lower() + b":"
    return any(h.lower().startswith(lname) for h in req.headers)


def _add_expect(req: Req, at: int, line: bytes, tag: str) -> None:
    """Add an Expect line; a second one is nginx's "client sent duplicate header line", a 400."""
    second = _has_header(req, b"Expect")
    req.headers.insert(at, line)
    if second:
        _invalid(req, "two-expects")
    else:
        req.tags.append(tag)


def _invalid(req: Req, tag: str) -> None:
    req.valid = False
    req.tags.append(tag)


def _framing_header(req: Req) -> bytes | None:
    for h in req.headers:
        low = h.lower()
        if low.startswith(b"content-length:"):
            return b"cl"
        if low.startswith(b"transfer-encoding:"):
            return b"te"
    return None


BAD_LENGTHS = [b"-1", b"+5", b" 5 x", b"5,5", b"0x5", b"1e3", b"99999999999999999999", b"", b"5 5", b"\xd9\xa5",
               b"18446744073709551616", b"4294967301", b"5.0", b"\x0b5"]
BAD_CODINGS = [b"chunked, chunked", b"gzip, chunked", b"gzip", b"identity", b"chunked, gzip", b"xchunked",
               b"chunked;q=1", b'"chunked"', b"chunked\x0b", b",chunked", b"chunked,"]
ODD_CODINGS_OK = [b"Chunked", b"CHUNKED", b" chunked", b"chunked "]  # chunked all the same
BAD_CHUNKS = [b"zz\r\nab\r\n0\r\n\r\n", b"10000000000000000\r\nx\r\n0\r\n\r\n", b"-1\r\nx\r\n0\r\n\r\n",
              b"3\r\nabcdef\r\n0\r\n\r\n", b"3\r\nab\r\n0\r\n\r\n", b"3\r\nabc0\r\n\r\n", b"3\nabc\n0\n\n",
              b"3;\r\nabc\r\n0\r\n\r\n", b"3 \r\nabc\r\n0\r\n\r\n", b"3\r\nabc\r\n0\r\nContent-Length: 5\r\n\r\n",
              b"3\r\nabc\r\n0\r\nX: a\r\n b\r\n\r\n", b"3\r\nabc\r\n0\r\n\n", b"3\r\nabc\r\n0\r\n", b"3\r\nabc\r\n",
              b"3\r\nab", b"\r\n3\r\nabc\r\n0\r\n\r\n", b"3\rabc\r\n0\r\n\r\n", b"3;a\rb\r\nabc\r\n0\r\n\r\n"]
OK_CHUNKS = [(b"3;ext=1\r\nabc\r\n0\r\n\r\n", b"abc"), (b"0003\r\nabc\r\n0\r\n\r\n", b"abc"),
             (b"3\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n", b"abc"), (b'3;a="b c"\r\nabc\r\n0\r\n\r\n', b"abc"),
             (b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789"), (b"0\r\n\r\n", b"")]
BAD_VERSIONS = [b"HTTP/2.0", b"HTTP/1.2", b"HTTP/0.9", b"HTTP/1.1 ", b"http/1.1", b"HTTP/1", b"", b"HTTP/1.10",
                b"HTTP/11", b"HTTP/1.1\x00"]
BAD_METHODS = [b"get", b"FOO", b"CONNECT", b"G\x00T", b"", b"GET\x7f", b"PRI", b"G(T"]
# Refused targets, and one taken: raw 0x80-0xFF bytes go %-escaped, as nginx takes them (escape_request_line)
RAW_BYTES_TARGET = b"/echo/%s?\xe9=\xff"
BAD_TARGETS = [b"*", b"http://u@gw.test/", b"echo/x", b"/echo/a b", b"/echo/\x00", b"/echo/\x7f", b"http:///x",
               b"/echo/" + b"a" * 9000, b"", b"http://a b/", b"/echo/\r", RAW_BYTES_TARGET]
OK_TARGETS = [b"http://gw.test/echo/%s", b"HTTP://GW.TEST/echo/%s", b"/echo/%s#frag"]
BAD_HOSTS = [b"", b"a b", b"a/b", b"u@gw.test", b"gw.test\x00", b"[::1", b"gw.test:8x0" + b"0" * 10]
BAD_LINES = [b"X-Fold: a\r\n b", b"X-Space : v", b"NoColon", b": empty-name", b"X-Nul: a\x00b", b"X-Del: a\x7fb",
             b"X(Y): z", b" X-Lead: v", b"X-CR: a\rb", b"X-Tab\t: v", b"X-VT: a\x0bb"]
OK_LINES = [b"X-High: caf\xe9", b"X-Empty:", b"X-Pad:    v   ", b"X-Tab:\tv\t", b"x-request-id: fuzz-req-id",
            b"X-Forwarded-For: 10.0.0.1", b"Connection: keep-alive", b"Expect: 100-continue", b"Expect: nothing",
            b"Connection: close", b"Connection: X-Drop, keep-alive", b"Connection: Content-Length",
            b"Keep-Alive: timeout=5", b"TE: trailers", b"Proxy-Connection: keep-alive", b"Upgrade: websocket"]


def mutate(rng: random.Random, req: Req) -> None:
    """One damage (or an unusual but valid variant) applied to `req`."""
    kind = rng.choice(["cl-te", "two-cl", "bad-cl", "cl-short", "cl-long", "bad-te", "odd-te", "two-te", "bad-chunk",
                       "ok-chunk", "version", "http10", "method", "target", "ok-target", "host", "no-host",
                       "two-hosts", "bad-line", "ok-line", "eol", "prefix", "huge-header", "many-headers", "truncate",
                       "garbage", "te-on-get", "cl-on-get", "expect", "expect"])
    framing = _framing_header(req)
    if kind == "cl-te":
        payload = req.payload or b"hello"
        _set_header(req, b"Content-Length", b"%d" % len(payload))
        req.headers.append(b"Transfer-Encoding: chunked")
        req.body = _chunk(rng, payload) if rng.random() < 0.5 else payload
        _invalid(req, kind)
    elif kind == "two-cl":
        n = len(req.payload) if framing == b"cl" else 0
        _set_header(req, b"Content-Length", b"%d" % n)
        req.headers.append(b"Content-Length: %d" % (n if rng.random() < 0.5 else n + 1))
        _invalid(req, kind)
    elif kind == "bad-cl":
        _set_header(req, b"Transfer-Encoding", None)
        _set_header(req, b"Content-Length", rng.choice(BAD_LENGTHS))
        req.body = req.payload
        _invalid(req, kind)
    elif kind == "cl-short" and req.payload:
        _set_header(req, b"Transfer-Encoding", None)
        _set_header(req, b"Content-Length", b"%d" % (len(req.payload) + rng.randint(1, 50)))
        req.body = req.payload
        _invalid(req, kind)
    elif kind == "cl-long":
        _set_header(req, b"Transfer-Encoding", None)
        cut = rng.randint(0, len(req.payload))
        _set_header(req, b"Content-Length", b"%d" % cut)
        req.body = req.payload + rng.choice([b"XYZ", b"\r\n", b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
                                             b"G", b"0\r\n\r\n"])
        req.payload = req.payload[:cut]
        _invalid(req, kind)  # (what follows the body is another request, or garbage)
    elif kind == "bad-te":
        _set_header(req, b"Content-Length", None)
        _set_header(req, b"Transfer-Encoding", rng.choice(BAD_CODINGS))
        req.body = _chunk(rng, req.payload)
        _invalid(req, kind)
    elif kind == "odd-te":
        _set_header(req, b"Content-Length", None)
        _set_header(req, b"Transfer-Encoding", rng.choice(ODD_CODINGS_OK))
        req.body = _chunk(rng, req.payload)
        req.tags.append(kind)
    elif kind == "two-te":
        _set_header(req, b"Content-Length", None)
        _set_header(req, b"Transfer-Encoding", b"chunked")
        req.headers.append(b"Transfer-Encoding: chunked")
        req.body = _chunk(rng, req.payload)
        _invalid(req, kind)
    elif kind == "bad-chunk":
        _set_header(req, b"Content-Length", None)
        _set_header(req, b"Transfer-Encoding", b"chunked")
        req.body = rng.choice(BAD_CHUNKS)
        _invalid(req, kind)
    elif kind == "ok-chunk":
        _set_header(req, b"Content-Length", None)
        _set_header(req, b"Transfer-Encoding", b"chunked")
        req.body, req.payload = rng.choice(OK_CHUNKS)
        req.tags.append(kind)
    elif kind == "version":
        req.version = rng.choice(BAD_VERSIONS)
        _invalid(req, kind)
    elif kind == "http10":
        req.version = b"HTTP/1.0"
        if framing == b"te":  # chunked means nothing to 1.0 (RFC 9112 6.1: treat as faulty)
            _invalid(req, kind)
        else:
            req.tags.append(kind)
    elif kind == "method":
        req.method = rng.choice(BAD_METHODS)
        _invalid(req, kind)
    elif kind == "target":
        target = rng.choice(BAD_TARGETS)
        if target is RAW_BYTES_TARGET:
            req.target = target % req.marker
            req.tags.append("raw-bytes-target")
        else:
            req.target = target
            _invalid(req, kind)
    elif kind == "ok-target":
        req.target = rng.choice(OK_TARGETS) % req.marker
        req.tags.append(kind)
    elif kind == "host":
        _set_header(req, b"Host", rng.choice(BAD_HOSTS))
        _invalid(req, kind)
    elif kind == "no-host":
        _set_header(req, b"Host", None)
        _invalid(req, kind)
    elif kind == "two-hosts":
        req.headers.append(b"Host: other.test")
        _invalid(req, kind)
    elif kind == "bad-line":
        req.headers.insert(rng.randint(0, len(req.headers)), rng.choice(BAD_LINES))
        _invalid(req, kind)
    elif kind == "ok-line":
        line = rng.choice(OK_LINES)
        if line.startswith(b"Expect: 100") and not req.body:
            line = b"Expect: 100-continue"
        at = rng.randint(0, len(req.headers))
        if line.startswith(b"Expect"):
            _add_expect(req, at, line, kind)
        else:
            req.headers.insert(at, line)
            req.tags.append(kind)
        if line.startswith(b"Upgrade"):
            req.tags.append("upgrade")
    elif kind == "eol":
        req.eol = rng.choice([b"\n", b"\r", b"\r\r\n", b"\n\r"])
        _invalid(req, kind)
    elif kind == "prefix":
        req.prefix = rng.choice([b"\r\n", b"\r\n\r\n", b"\n", b" ", b"\x00", b"\x16\x03\x01\x02\x00"])
        if req.prefix.strip(b"\r\n"):
            _invalid(req, kind)
        else:
            req.tags.append(kind)
    elif kind == "huge-header":
        req.headers.append(b"X-Huge: " + b"h" * rng.choice([7000, 9000, 20000, 70000]))
        _invalid(req, kind)  # perhaps under the 8 KiB limit, perhaps not
    elif kind == "many-headers":
        req.headers += [b"X-Many-%d: %d" % (i, i) for i in range(rng.choice([50, 300, 1000]))]
        _invalid(req, kind)
    elif kind == "truncate":
        raw = req.wire()
        req.raw_override = raw[:rng.randint(0, max(0, len(raw) - 1))]
        _invalid(req, kind)
    elif kind == "garbage":
        req.raw_override = rng.choice([bytes(rng.randrange(256) for _ in range(rng.randint(1, 300))),
                                       b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"THIS IS NOT HTTP\r\n\r\n",
                                       b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", b"\r\n" * 50])
        _invalid(req, kind)
    elif kind == "te-on-get":
        req.method = b"GET"
        _set_header(req, b"Content-Length", None)
        _set_header(req, b"Transfer-Encoding", b"chunked")
        req.payload = req.payload or b"get-body"
        req.body = _chunk(rng, req.payload)
        req.tags.append(kind)
    elif kind == "expect":  # the client will wait a moment for the 100 before sending its body
        _add_expect(req, rng.randint(0, len(req.headers)), b"Expect: 100-continue", kind)
    elif kind == "cl-on-get":
        req.method = rng.choice([b"GET", b"DELETE", b"OPTIONS"])
        _set_header(req, b"Transfer-Encoding", None)
        req.payload = req.payload or b"get-body"
        _set_header(req, b"Content-Length", b"%d" % len(req.payload))
        req.body = req.payload
        req.tags.append(kind)


@dataclass
class ClientCase:
    index: int
    requests: list[Req]
    pieces: list[tuple[float, bytes]]  # (pause before it, bytes) in the order written
    end: str  # after the last piece: "eof" (half-close), "wait" (for the gateway's timeouts), "rst"

    @property
    def head_first(self) -> bool:
        """Does the stream begin with a HEAD request, whatever the damage left of it? (A `HEAD` cut short and glued to
        the next request's bytes is another method: `HEADPATCH`, seed 61610005.)"""
        raw = b"".join(p for _, p in self.pieces).lstrip(b"\r\n")
        return raw.startswith(b"HEAD ") or raw == b"HEAD"  # (the whole token, then EOF: a HEAD's bodiless 400)

    def __repr__(self) -> str:
        raw = b"".join(p for _, p in self.pieces)
        pauses = sorted({t for t, _ in self.pieces if t})
        return (f"ClientCase({self.index}, end={self.end}, pieces={len(self.pieces)}, pauses={pauses}, "
                f"tags={[r.tags for r in self.requests]}, raw={raw[:700]!r}{'...' if len(raw) > 700 else ''})")


def client_cases(seed: int, n: int) -> list[ClientCase]:
    rng = random.Random(seed)
    cases = []
    for i in range(n):
        requests = []
        for k in range(rng.choice([1, 1, 1, 2, 2, 3, 4])):
            req = base_request(rng, b"c%dr%d" % (i, k))
            for _ in range(rng.choice([0, 1, 1, 1, 2, 3])):
                mutate(rng, req)
            if req.version == b"HTTP/1.0" and any(h.lower().startswith(b"transfer-encoding:") for h in req.headers):
                # a later mutation may add the header to an HTTP/1.0 request: nginx's 400, "client sent HTTP/1.0
                # request with Transfer-Encoding header" (seed 31337003)
                _invalid(req, "http10-te")
            if req.method == b"HEAD" and k > 0:  # keep HEAD first, so responses can be read without guessing
                req.method = b"GET"
            if k > 0 and req.raw_override is not None and req.raw_override.startswith(b"HEAD "):
                req.raw_override = b"GET " + req.raw_override[5:]
            requests.append(req)
        # A client that sent Expect: 100-continue waits a moment for the 100 before its body (as curl does).
        segments: list[tuple[float, bytes]] = []
        for req in requests:
            if req.expects_continue:
                segments += [(0.0, req.head()), (0.05, req.body)]
            else:
                segments.append((0.0, req.wire()))
        r = rng.random()
        pieces: list[tuple[float, bytes]] = []
        for pause, data in segments:
            if r < 0.7 or len(data) > 30000 or len(data) < 2:
                pieces.append((pause, data))
            elif r < 0.95:  # slow bytes: cut at a few random points, a pause between the pieces
                cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 4))))
                gap = rng.choice([0.0, 0.005, 0.02])
                pieces += [(pause if a == 0 else gap, data[a:b])
                           for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
            else:  # byte by byte (the first 300)
                pieces += [(pause if j == 0 else 0.0, data[j:j + 1]) for j in range(min(len(data), 300))]
                if len(data) > 300:
                    pieces.append((0.0, data[300:]))
        end = rng.choices(["eof", "wait", "rst"], [85, 10, 5])[0]
        cases.append(ClientCase(i, requests, pieces, end))
    return cases


# ===================================================================================================================
# Upstream side: a backend that answers with generated hostile responses
# ===================================================================================================================


@dataclass
class Script:
    """What the hostile backend sends for one request, and what a compliant proxy makes of it."""

    index: int
    method: bytes  # the client's request method
    segments: list[bytes]  # written with `pause` between them
    after: bytes  # written with the last segment: bytes after the response
    end: str  # "keep" (read the next request), "stall" (the same, after an incomplete response), "close", "rst"
    valid: bool  # a well-formed response, framed unambiguously and complete: it must be relayed as it is
    status: int
    body: bytes  # the body a compliant reader finds (for a valid response)
    pause: float = 0.0
    tags: list[str] = field(default_factory=list)
    client_abort: bool = False  # the client resets its connection as soon as the answer starts
    # Why the gateway must not send another request on this connection after the response, whatever it made of it
    # (bytes after the response, Connection: close, HTTP/1.0), or "" ...
    taint: str = ""
    # ... and, once the client has seen it, why the gateway had to give up on it (it answered 502/504, or cut it)
    broken: str = ""

    def __repr__(self) -> str:
        return (f"Script({self.index}, {self.method!r}, end={self.end}, valid={self.valid}, tags={self.tags}, "
                f"client_abort={self.client_abort}, "
                f"raw={(b''.join(self.segments) + self.after)[:600]!r})")


def good_response(marker: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Marker: %s\r\nContent-Length: %d\r\n\r\n%s" % (
        marker, len(marker), marker)


def stray_response(index: int) -> bytes:
    return good_response(b"STRAY-%d" % index)


STATUSES = [200, 200, 200, 201, 202, 203, 204, 206, 301, 304, 400, 404, 418, 500, 502, 503, 599, 299, 600, 999]
BAD_STATUS_LINES = [b"HTTP/1.1 2OO OK", b"HTTP/1.1 OK", b"ICY 200 OK", b"HTTP/2 200 OK", b"<html>", b"",
                    b"HTTP/1.1 20 OK", b"HTTP/1.1 2000 OK", b"HTTP/1.1 -200 OK", b"HTTP/1.1 200 O\x00K",
                    b"http/1.1 200 OK", b"HTTP/1.1  200 OK", b"HTTP/1.1 200 OK\x7f", b"HTTP/1.1\t200 OK",
                    b"HTTP/1.1 099 Low", b"HTTP/1.2 200 OK", b"HTTP/1.1 200 " + b"R" * 70000]
INTERIMS_OK = [b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 102 Processing\r\n\r\n",
               b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"]
INTERIMS_BAD = [b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
                b"HTTP/1.1 199 Odd\r\nContent-Length: 3\r\n\r\nabc", b"HTTP/1.1 100 Continue\n\n",
                b"HTTP/1.1 150 Unassigned\r\n\r\n", b"HTTP/1.1 100 Continue\r\nTransfer-Encoding: chunked\r\n\r\n"]
BAD_RESPONSE_LINES = [b"X-Fold: a\r\n b", b"X-Space : v", b"NoColon", b": v", b"X-Nul: a\x00b", b"X-CR: a\rb",
                      b"X(Y): z", b" X-Lead: v", b"X-Huge: " + b"h" * 70000, b"X-Del: \x7f"]
OK_RESPONSE_LINES = [b"Connection: close", b"X-High: caf\xe9", b"X-Empty:", b"Set-Cookie: a=1", b"Set-Cookie: b=2",
                     b"X-Pad:   v  ",
                     b"Connection: keep-alive", b"Keep-Alive: timeout=5", b"Connection: X-Secret",
                     b"X-Secret: hidden", b"Trailer: X-T", b"Upgrade: h2c", b"X-Request-Id: upstream-id",
                     b"Proxy-Authenticate: Basic", b"Date: Mon, 01 Jan 2024 00:00:00 GMT"]


def ends_whole(raw: bytes, method: bytes) -> bool:
    """Is `raw` a whole response to `method`, by h11's reading (the oracle of what counts as after it)?"""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(raw)
    try:
        while (ev := conn.next_event()) is not h11.NEED_DATA:
            if type(ev) is h11.EndOfMessage:
                return True
    except h11.RemoteProtocolError:
        return False
    return False


def upstream_scripts(seed: int, n: int) -> list[Script]:
    rng = random.Random(seed)
    scripts = []
    for i in range(n):
        method = rng.choice([b"GET", b"GET", b"GET", b"POST", b"HEAD"])
        status = rng.choice(STATUSES)
        no_body = method == b"HEAD" or status in (204, 304)
        body = printable(rng, rng.choice([0, 1, 5, 50, 500, 5000, 70000]))
        tags: list[str] = []
        prefix = b""
        if rng.random() < 0.15:
            prefix = b"".join(rng.choice(INTERIMS_OK) for _ in range(rng.randint(1, 3)))
            tags.append("interim")
        status_line = b"HTTP/1.1 %d %s" % (status, rng.choice([b"OK", b"Whatever", b"", b"Caf\xe9"]))
        if rng.random() < 0.1:
            status_line = b"HTTP/1.0" + status_line[8:]
            tags.append("http10")
        sse = rng.random() < 0.15  # relayed by another path (gateway.pipeline.forward._relay_events)
        headers = [b"Content-Type: text/event-stream" if sse else b"Content-Type: text/plain", b"X-Hostile: %d" % i]
        if sse:
            tags.append("sse")
        framing = rng.choice(["length", "length", "chunked", "chunked", "close"])
        if framing == "length":
            headers.append(b"Content-Length: %d" % len(body))
            framed = body
        elif framing == "chunked":
            headers.append(b"Transfer-Encoding: chunked")
            framed = _chunk(rng, body) if body else b"0\r\n\r\n"
            if rng.random() < 0.15:
                framed = framed[:-2] + b"X-Trailer: t\r\n\r\n"
                tags.append("trailer")
        else:
            framed = body
        end = "close" if framing == "close" else rng.choice(["keep"] * 6 + ["close"])
        after = b""
        if no_body:
            framed = b""
            if framing == "close" and method != b"HEAD":
                end = "keep"  # (a 204/304 has no body to delimit)
        if rng.random() < 0.15:
            headers.insert(rng.randint(0, len(headers)), rng.choice(OK_RESPONSE_LINES))
            tags.append("ok-line")
        # damage, now and then more than one
        for _ in range(rng.choice([0, 0, 1, 1, 1, 2])):
            kind = rng.choice(["status-line", "bad-interim", "cl-te", "two-cl", "bad-cl", "cl-short", "cl-long",
                               "bad-chunk", "bad-te", "bad-line", "stray", "garbage-after", "crlf-after",
                               "head-body", "early-close", "stall", "rst", "huge-head", "truncate-head",
                               "bare-lf", "nothing"])
            tags.append(kind)
            if kind == "status-line":
                status_line = rng.choice(BAD_STATUS_LINES)
            elif kind == "bad-interim":
                prefix += rng.choice(INTERIMS_BAD)
            elif kind == "cl-te":
                headers = [h for h in headers if not h.startswith((b"Content-Length", b"Transfer-Encoding"))]
                headers += [b"Content-Length: %d" % len(body), b"Transfer-Encoding: chunked"]
                framed = rng.choice([body, _chunk(rng, body)]) if not no_body else b""
            elif kind == "two-cl":
                headers = [h for h in headers if not h.startswith((b"Content-Length", b"Transfer-Encoding"))]
                headers += [b"Content-Length: %d" % len(body), b"Content-Length: %d" % (len(body) + 1)]
                framed = body if not no_body else b""
            elif kind == "bad-cl":
                headers = [h for h in headers if not h.startswith((b"Content-Length", b"Transfer-Encoding"))]
                headers.append(b"Content-Length: " + rng.choice(BAD_LENGTHS))
                framed = body if not no_body else b""
            elif kind == "cl-short":  # fewer body bytes than announced, then the end action
                headers = [h for h in headers if not h.startswith((b"Content-Length", b"Transfer-Encoding"))]
                headers.append(b"Content-Length: %d" % (len(body) + rng.randint(1, 100)))
                framed = body if not no_body else b""
            elif kind == "cl-long":  # more body bytes than announced
                headers = [h for h in headers if not h.startswith((b"Content-Length", b"Transfer-Encoding"))]
                cut = rng.randint(0, len(body))
                headers.append(b"Content-Length: %d" % cut)
                framed = body[:cut]
                after = body[cut:] + rng.choice([b"", b"junk", stray_response(i)])
            elif kind == "bad-chunk":
                headers = [h for h in headers if not h.startswith((b"Content-Length", b"Transfer-Encoding"))]
                headers.append(b"Transfer-Encoding: chunked")
                framed = rng.choice(BAD_CHUNKS) if not no_body else b""
            elif kind == "bad-te":
                headers = [h for h in headers if not h.startswith(b"Transfer-Encoding")]
                headers.append(b"Transfer-Encoding: " + rng.choice(BAD_CODINGS + [b"gzip", b"chunked, chunked"]))
            elif kind == "bad-line":
                headers.insert(rng.randint(0, len(headers)), rng.choice(BAD_RESPONSE_LINES))
            elif kind == "stray":
                after = stray_response(i)
            elif kind == "garbage-after":
                after = rng.choice([b"junk", b"HTTP/1.1 200 OK\r\nContent-Le", b"\x00\xff", b"0\r\n\r\n",
                                    b"3\r\nabc\r\n0\r\n\r\n"])
            elif kind == "crlf-after":
                after = rng.choice([b"\r\n", b"\r\n\r\n", b"\n"])
            elif kind == "head-body":  # a body (or a chunked one) after a response to HEAD or a 204/304
                after = rng.choice([body or b"x", b"5\r\nhello\r\n0\r\n\r\n", stray_response(i)])
            elif kind == "early-close":
                end = "close"
                cut = rng.randint(0, max(0, len(framed) - 1))
                framed = framed[:cut]
            elif kind == "stall":  # an incomplete response, then silence (a complete one would be pooled)
                end = "stall"
                if framed:
                    framed = framed[:rng.randint(0, len(framed) - 1)]
                else:
                    tags.append("truncate-head")
            elif kind == "rst":
                end = "rst"
                framed = framed[:rng.randint(0, len(framed))]
            elif kind == "huge-head":
                headers += [b"X-Many-%d: %s" % (j, b"v" * 100) for j in range(rng.choice([100, 700]))]
            elif kind == "truncate-head":
                end = rng.choice(["close", "stall"])
            elif kind == "bare-lf":
                pass
            # "nothing": a clean response after all (the damage list's no-op)
        head = prefix + status_line + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n"
        if "bare-lf" in tags:
            head = head.replace(b"\r\n", b"\n")
        if "truncate-head" in tags:
            head = head[:rng.randint(0, len(head) - 1)]
            framed = b""
        raw = head + framed
        valid = not [t for t in tags if t not in ("interim", "http10", "trailer", "ok-line", "nothing", "sse")]
        if rng.random() < 0.3 and len(raw) > 1:  # cut into pieces (never the bytes after it: see `after`)
            cuts = sorted(set(rng.randint(1, len(raw) - 1) for _ in range(rng.randint(1, 4))))
            segments = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
            pause = rng.choice([0.0, 0.002, 0.01])
        else:
            segments, pause = [raw], 0.0
        final_head = head[len(prefix):].lower() if head.startswith(prefix) else head.lower()
        taint = ("bytes after the response" if after.strip(b"\r\n") and ends_whole(raw, method) else
                 "Connection: close" if b"\nconnection: close\r" in final_head else
                 "HTTP/1.0" if final_head.startswith(b"http/1.0") and b"\nconnection: keep-alive\r" not in final_head
                 else "")
        scripts.append(Script(i, method, segments, after, end, valid, status, b"" if no_body else body, pause, tags,
                              client_abort=rng.random() < 0.08, taint=taint))
    return scripts


async def _read_request(stream: trio.SocketStream, buf: bytearray) -> bytes | None:
    """The target of the next request the gateway sends (its body read and dropped), or None at EOF."""
    while b"\r\n\r\n" not in buf:
        data = await stream.receive_some(65536)
        if not data:
            return None
        buf += data
    end = buf.index(b"\r\n\r\n") + 4
    head = bytes(buf[:end]).lower()
    del buf[:end]
    target = head.split(b" ", 2)[1]
    m = re.search(rb"\r\ncontent-length: *(\d+)", head)
    if m:
        n = int(m.group(1))
        while len(buf) < n:
            data = await stream.receive_some(65536)
            if not data:
                return None
            buf += data
        del buf[:n]
    elif b"\r\ntransfer-encoding: chunked" in head:
        while True:
            while b"\r\n" not in buf:
                data = await stream.receive_some(65536)
                if not data:
                    return None
                buf += data
            eol = buf.index(b"\r\n")
            size = int(bytes(buf[:eol]).split(b";")[0], 16)
            while len(buf) < eol + 2 + size + 2:
                data = await stream.receive_some(65536)
                if not data:
                    return None
                buf += data
            del buf[:eol + 2 + size + 2]
            if size == 0:
                break
    return target


class HostileBackend:
    """Answers /h<lane>/good/<marker> well, and /h<lane>/case/<n> with script n; records what it saw."""

    def __init__(self, scripts: dict[int, Script]) -> None:
        self.scripts = scripts
        self.port = 0
        self.seen: list[bytes] = []
        # (case, why): a request came on a connection the gateway had to close after that case's response
        self.reused: list[tuple[int, str]] = []

    async def serve(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started(self.port)
            await trio.serve_listeners(self._on_conn, listeners, handler_nursery=nursery)

    async def _on_conn(self, stream: trio.SocketStream) -> None:
        buf = bytearray()
        previous: Script | None = None
        try:
            while True:
                target = await _read_request(stream, buf)
                if target is None:
                    return
                self.seen.append(target)
                if previous is not None and (previous.taint or previous.broken):
                    self.reused.append((previous.index, previous.taint or previous.broken))
                parts = target.split(b"/")
                if parts[2] == b"good":
                    await stream.send_all(good_response(parts[3]))
                    previous = None
                    continue
                script = previous = self.scripts[int(parts[3])]
                for j, segment in enumerate(script.segments):
                    last = j == len(script.segments) - 1
                    if j and script.pause:
                        await trio.sleep(script.pause)
                    data = segment + script.after if last else segment
                    if data:
                        await stream.send_all(data)
                if script.end in ("keep", "stall"):  # (a stalled response is one the backend sends no more of)
                    continue
                if script.end == "rst":
                    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
        except (trio.BrokenResourceError, trio.ClosedResourceError, ValueError, IndexError):
            pass
        finally:
            await trio.aclose_forcefully(stream)


# ===================================================================================================================
# Known bugs: a finding is tolerated only when one of these recognizes it (minimized below, xfail strict)
# ===================================================================================================================


@dataclass
class Known:
    what: str
    applies: Callable[[Finding], bool]


def _logged(*needles: str) -> Callable[[Finding], bool]:
    """A logged traceback with all of these in it."""
    return lambda f: f.kind == "log" and all(n in f.trace for n in needles)


KNOWN: dict[str, Known] = {}  # none open: what the fuzz found (a traceback from the drain of an unread body, a 1xx
# after the final response or to HTTP/1.0, a body after the answer to HEAD) is fixed and pinned below


def explain(f: Finding) -> list[str]:
    return [name for name, known in KNOWN.items() if known.applies(f)]


def report(findings: list[Finding], codec: str) -> str:
    kinds: dict[str, list[Finding]] = {}
    for f in findings:
        kinds.setdefault(f.kind, []).append(f)
    lines = [f"{codec}: {len(findings)} unexplained finding(s): " + ", ".join(f"{k} x{len(v)}" for k, v in
                                                                          kinds.items())]
    for kind, found in kinds.items():
        for f in found[:3]:
            lines.append(f"case {f.case} [{kind}] {f.detail[:500]}\n    input: {f.raw!r}\n{f.trace[-1500:]}")
    return "\n".join(lines)


# ===================================================================================================================
# Running the client side
# ===================================================================================================================


async def check_alive(port: int) -> str | None:
    """None if a normal request on a new connection gets the healthy backend's answer."""
    wire = await Wire.open(port)
    try:
        with trio.fail_after(TIMEOUT):
            await wire.send(b"GET /ok/alive HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n")
            resp = await wire.response()
    except trio.TooSlowError:
        return "health check hung"
    finally:
        await wire.aclose()
    if resp is None or resp.status != 200 or resp.header(b"x-backend") != b"healthy":
        return f"health check got {resp!r}"
    return None


async def run_client_case(port: int, case: ClientCase) -> tuple[list[tuple[str, str]], list[Resp], Wire]:
    """Send the case, read every response until the gateway closes: ([(kind, detail)], responses, wire)."""
    problems: list[tuple[str, str]] = []
    responses: list[Resp] = []
    wire = await Wire.open(port)
    try:
        with trio.fail_after(TIMEOUT):
            async def write() -> None:
                for pause, piece in case.pieces:
                    if pause:
                        await trio.sleep(pause)
                    if not await wire.send(piece):
                        return
                if case.end == "eof":
                    await wire.send_eof()

            if case.end == "rst":  # write it all, then reset: nothing to read, the gateway must just cope
                await write()
                wire.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return problems, responses, wire
            async with trio.open_nursery() as nursery:
                nursery.start_soon(write)
                head_first = case.head_first
                try:
                    while (resp := await wire.response(head_request=head_first and not responses)) is not None:
                        responses.append(resp)
                        if not resp.complete:
                            break
                        if head_first and len(responses) == 1:
                            junk = await wire.body_after_head(resp)
                            if junk:
                                problems.append(("head-error-body", f"{resp.status} to HEAD carries {junk[:200]!r}"))
                    await wire.until_closed()
                except WireError as e:
                    problems.append(("dangling-interim" if str(e).startswith("dangling") else "wire", str(e)))
                    nursery.cancel_scope.cancel()
    except trio.TooSlowError:
        problems.append(("hang", f"no close within {TIMEOUT}s; got {wire.buf[:300]!r}"))
    finally:
        await wire.aclose()
    return problems, responses, wire


def judge_client_case(case: ClientCase, responses: list[Resp], wire: Wire) -> list[tuple[str, str]]:
    problems = []
    markers = [r.marker for r in case.requests]
    echoed: list[int] = []
    for n, resp in enumerate(responses):
        own = resp.header(b"x-backend") is None  # the gateway's own answer, not the echo backend's
        if not resp.complete:
            problems.append(("cut", f"response {n} ({resp.status}) incomplete, reset={wire.reset}"))
            continue
        if resp.status == 500:
            problems.append(("500", f"response {n}: {resp.body[:200]!r}"))
        headless = n == 0 and case.head_first and not resp.body  # a response to HEAD has no body
        if own and resp.status >= 400 and not (headless or is_kong_error(resp)):
            problems.append(("json", f"response {n}: {resp.status} {resp.headers} {resp.body[:200]!r}"))
        if own and resp.status >= 500 and resp.status not in (501, 505):
            problems.append(("5xx", f"response {n}: {resp.status} {resp.body[:200]!r}"))
        if not own and resp.status == 200 and resp.body and resp.header(b"content-type") == b"application/json":
            seen = json.loads(resp.body)
            path = seen["path"].encode("latin-1")
            which = [k for k, m in enumerate(markers) if re.search(rb"/" + m + rb"(?![0-9])", path)]
            if not which:
                problems.append(("misdelivery", f"response {n} echoes {path!r}, none of {markers}"))
                continue
            k = which[0]
            if echoed and k <= echoed[-1]:
                problems.append(("misdelivery", f"response {n} echoes request {k} after {echoed}"))
            echoed.append(k)
            req = case.requests[k]
            if req.valid and seen["body_len"] != len(req.payload):
                problems.append(("body", f"request {k}'s body arrived as {seen['body_len']} bytes, "
                                         f"sent {len(req.payload)}"))
            elif req.valid and seen["body"] is not None and seen["body"].encode("latin-1") != req.payload:
                problems.append(("body", f"request {k}'s body changed on the way"))
    # every valid request before the first invalid one is answered (up to one the connection ends with)
    expected = 0
    for req in case.requests:
        if not req.valid or "upgrade" in req.tags:
            break
        expected += 1
        if req.closes:
            break
    full = [r for r in responses if r.complete]
    closing = next((n for n, r in enumerate(full) if r.closes), None)
    if closing is not None and closing < expected:
        expected = closing + 1  # a response may end the connection (Connection: close): the rest go unanswered
    if len(full) < expected:
        problems.append(("unanswered", f"{len(full)} response(s) to {expected} valid request(s) "
                                       f"({[r.status for r in responses]})"))
    else:
        for k in range(expected):
            resp = full[k]
            req = case.requests[k]
            if req.version == b"HTTP/1.0" and resp.interim:
                problems.append(("interim-to-http10", f"{resp.interim} sent to HTTP/1.0 request {k}"))
            if req.version == b"HTTP/1.0" and resp.header(b"transfer-encoding") is not None:
                problems.append(("chunked-to-http10", f"chunked response to HTTP/1.0 request {k}"))
            route = req.target.split(b"/")[1] if req.target.startswith(b"/") else b"echo"
            if route == b"nope":
                if resp.status != 404:
                    problems.append(("status", f"request {k} to no route got {resp.status}"))
            elif resp.status != 200 or resp.header(b"x-backend") != b"echo":
                problems.append(("status", f"valid request {k} got {resp.status} {resp.body[:200]!r}"))
    return problems


@pytest.fixture
async def client_setup(nursery, gateway):  # noqa: ANN001,ANN201
    healthy = EchoBackend("healthy")
    echo = EchoBackend("echo")
    await nursery.start(healthy.serve)
    await nursery.start(echo.serve)
    doc = {"services": [service("healthy", f"http://127.0.0.1:{healthy.port}", [{"paths": ["/ok"]}]),
                        service("echo", f"http://127.0.0.1:{echo.port}",
                                [{"paths": ["/echo"], "strip_path": False}])]}
    return await gateway(doc, **SETTINGS)


def test_the_fast_draw_of_printable_bytes_draws_what_randrange_draws():
    for seed in range(20):
        for n in (0, 1, 2, 5, 50, 500, 5000):
            slow, fast = random.Random(seed), random.Random(seed)
            assert printable(fast, n) == bytes(slow.randrange(32, 127) for _ in range(n)), (seed, n)
            assert fast.getstate() == slow.getstate(), (seed, n)


async def test_hostile_clients_get_clear_answers(client_setup, http_codec):
    """Generated hostile requests get clear answers, the echoed ones intact, and the gateway stays healthy."""
    port = client_setup
    stats: Counter[str] = Counter()

    async def one(case: ClientCase, lane: int) -> list[Finding]:
        problems, responses, wire = await run_client_case(port, case)
        for resp in responses:
            stats["echoed" if resp.header(b"x-backend") else f"own {resp.status}"] += 1
            stats["too large"] += resp.body.startswith(b"Request header or cookie too large")  # nginx's 494, as 400
        stats["no response"] += not responses and case.end != "rst"
        if case.end != "rst" and not any(kind in ("wire", "hang") for kind, _ in problems):
            problems += judge_client_case(case, responses, wire)
        if case.end == "eof" and wire.local in gone.peers:  # the gateway took the half-close for the client
            stats["gone"] += 1  # leaving while the upstream had its request, as nginx does: it ended the request
            problems = [p for p in problems if p[0] not in ("cut", "unanswered", "dangling-interim")]
        alive = await check_alive(port)
        if alive is not None:
            problems.append(("dead", alive))
        return [Finding(case.index, kind, detail, case) for kind, detail in problems]

    gone = GoneClients()
    logging.getLogger("gateway.http").addHandler(gone)
    slow = [TIMEOUTS.labels(kind) for kind in ("client_header", "client_body")]
    slow_before = sum(counter._value.get() for counter in slow)
    try:
        findings = await run_cases(client_cases(CLIENT_SEED, CLIENT_CASES), one)
    finally:
        logging.getLogger("gateway.http").removeHandler(gone)
    unexplained = [f for f in findings if not explain(f)]
    assert not unexplained, report(unexplained, http_codec)
    # the fuzz must reach every kind of outcome, or passing would mean little (404s: about 9% of cases)
    n = CLIENT_CASES
    assert stats["echoed"] > n // 3 and stats["own 400"] > n // 4 and stats["own 404"] > n // 15, stats
    assert stats["too large"] >= 5 and stats["own 501"] >= 1, stats
    # a head or body too slow: closed unanswered, as nginx terminates its 408 (ngx_http_request.c:1097-1101, 2531-2541)
    assert sum(counter._value.get() for counter in slow) > slow_before and not stats["own 408"], stats


# ===================================================================================================================
# Running the upstream side
# ===================================================================================================================


@pytest.fixture
async def upstream_setup(nursery, gateway):  # noqa: ANN001,ANN201
    """A gateway in front of LANES hostile backends (/h0 ... /h5: each lane's cases go to their own, so the
    connections a lane's case leaves in the pool are the ones its next request finds) and a healthy one (/ok)."""
    scripts: dict[int, Script] = {}
    hostiles = [HostileBackend(scripts) for _ in range(LANES)]
    healthy = EchoBackend("healthy")
    for backend in hostiles:
        await nursery.start(backend.serve)
    await nursery.start(healthy.serve)
    doc = {"services": [service("healthy", f"http://127.0.0.1:{healthy.port}", [{"paths": ["/ok"]}])] + [
        service(f"hostile{n}", f"http://127.0.0.1:{backend.port}", [{"paths": [f"/h{n}"], "strip_path": False}],
                read_timeout=READ_TIMEOUT_MS, retries=1) for n, backend in enumerate(hostiles)]}
    return await gateway(doc, **SETTINGS), scripts, hostiles


async def good_exchange(wire: Wire, lane: int, marker: bytes) -> str | None:
    """None if GET /h<lane>/good/<marker> on `wire` gets exactly its own answer."""
    try:
        with trio.fail_after(TIMEOUT):
            if not await wire.send(b"GET /h%d/good/%s HTTP/1.1\r\nHost: gw.test\r\n\r\n" % (lane, marker)):
                return "could not send"
            resp = await wire.response()
    except trio.TooSlowError:
        return "hung"
    except WireError as e:
        return f"unparseable: {e}"
    if resp is None:
        return "closed without an answer"
    if resp.status != 200 or resp.body != marker or resp.header(b"x-marker") != marker:
        return f"got {resp.status} {resp.header(b'x-marker')!r} {resp.body[:100]!r} for {marker!r}"
    return None


def cut_hostile(script: Script) -> tuple[bytes, ...]:
    """A head cut inside its X-Hostile value, then completed by the bytes after it, has that value as they read
    (`19` and a stray `HTTP/1.1 200 OK...`: `19HTTP/1.1 200 OK`, upstream seed 61610004)."""
    if "truncate-head" not in script.tags:
        return ()
    m = re.search(rb"(?i)\nx-hostile:[ \t]*([^\r\n]*)", b"".join(script.segments) + script.after)
    return (m.group(1).rstrip(b" \t"),) if m else ()


async def run_upstream_case(port: int, script: Script, lane: int, stats: Counter[str]) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    i = script.index
    wire = await Wire.open(port)
    try:
        resp = None
        try:
            with trio.fail_after(TIMEOUT):
                body = b"" if script.method != b"POST" else b"payload-%d" % i
                framing = b"Content-Length: %d\r\n" % len(body) if body else b""
                await wire.send(b"%s /h%d/case/%d HTTP/1.1\r\nHost: gw.test\r\n%s\r\n%s"
                                % (script.method, lane, i, framing, body))
                if script.client_abort:  # gone as soon as the answer starts: the gateway must not pool the rest
                    await wire.fill()
                    wire.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    stats["client-abort"] += 1
                    wire.eof = True
                else:
                    resp = await wire.response(head_request=script.method == b"HEAD")
                    if resp is None or not resp.complete or resp.closes:
                        await wire.until_closed()
        except trio.TooSlowError:
            return [("hang", f"no answer within {TIMEOUT}s; got {wire.buf[:300]!r}")]
        except WireError as e:
            return [("wire", str(e))]
        if resp is None and not script.client_abort:
            problems.append(("no-answer", f"closed without a response (reset={wire.reset})"))
        elif resp is not None:
            # the gateway's own error (the hostile backend never sends one of Kong's error bodies)
            own = resp.header(b"x-hostile") is None and (is_kong_error(resp) or (  # (the backend's: "text/plain")
                script.method == b"HEAD" and resp.header(b"content-type") in KONG_ERROR_TYPES))
            stats[f"own {resp.status}" if own else "relayed" if resp.complete else "relayed, cut"] += 1
            if own or not resp.complete:
                script.broken = f"the gateway answered {resp.status}" if own else "the gateway cut the response"
            if resp.status == 500 and own:
                problems.append(("500", f"{resp.body[:200]!r}"))
            if own:
                headless = script.method == b"HEAD" and not resp.body  # (a response to HEAD has no body)
                if resp.status not in (502, 504) or not (headless or is_kong_error(resp)) or not resp.complete:
                    problems.append(("own", f"gateway answered {resp.status} {resp.body[:200]!r}"))
                if script.valid:
                    problems.append(("refused", f"a valid response got {resp.status} {resp.body[:200]!r}"))
            else:
                if resp.header(b"x-hostile") not in (None, b"%d" % i, *cut_hostile(script)):  # (None: cut before)
                    problems.append(("misdelivery", f"got case {resp.header(b'x-hostile')!r}'s response"))
                if not resp.complete and not wire.reset:
                    problems.append(("cut", "a cut-off body ended with a clean close, not a reset"))
                if script.valid and resp.complete and (resp.status, resp.body) != (script.status, script.body):
                    problems.append(("changed", f"relayed {resp.status} {len(resp.body)} bytes, "
                                                f"upstream sent {script.status} {len(script.body)} bytes"))
                if script.valid and not resp.complete:
                    problems.append(("cut", "a valid response was cut off"))
        if not wire.eof:
            stats["next on the same connection"] += 1
            err = await good_exchange(wire, lane, b"same-%d" % i)
            if err is not None:
                problems.append(("next", f"next request on the same client connection: {err}"))
    finally:
        await wire.aclose()
    for attempt in (1, 2):
        fresh = await Wire.open(port)
        try:
            err = await good_exchange(fresh, lane, b"fresh-%d" % i)
        finally:
            await fresh.aclose()
        # A good request that timed out upstream (504) is asked once more: on a host where two test processes share
        # the cores this process has stalled past the read_timeout (twice in ~10 full runs). A connection the gateway
        # should not have reused is caught apart, by the backend (HostileBackend.reused).
        if err is None or attempt == 2 or not err.startswith("got 504"):
            break
    if err is not None:
        problems.append(("fresh", f"request on a new connection: {err}"))
    return problems


async def test_hostile_upstream_never_leaks_into_other_answers(upstream_setup, http_codec):
    """Generated hostile responses are relayed or refused (502/504) or cut (reset), and never reach another request."""
    port, registry, hostiles = upstream_setup
    scripts = upstream_scripts(UPSTREAM_SEED, UPSTREAM_CASES)
    registry.update((script.index, script) for script in scripts)
    stats: Counter[str] = Counter()

    async def one(script: Script, lane: int) -> list[Finding]:
        return [Finding(script.index, kind, detail, script)
                for kind, detail in await run_upstream_case(port, script, lane, stats)]

    findings = await run_cases(scripts, one)
    findings += [Finding(case, "reused", f"a request came on the connection after case {case}'s response ({why})",
                         registry[case]) for backend in hostiles for case, why in backend.reused]
    unexplained = [f for f in findings if not explain(f)]
    assert not unexplained, report(unexplained, http_codec)
    # the fuzz must reach every kind of outcome, or passing would mean little (404s: about 9% of cases; the 502s about
    # a fifth, fewer since heads nginx relays are relayed: a control byte in a value or reason, a name like X(Y))
    n = len(scripts)
    assert stats["relayed"] > n // 4 and stats["own 502"] > n // 6 and stats["own 504"] >= 5, stats
    assert stats["relayed, cut"] >= 5 and stats["client-abort"] >= 5, stats
    assert stats["next on the same connection"] > n // 3, stats


# ===================================================================================================================
# What this fuzz found, minimized: fixed, and kept as specifications
# ===================================================================================================================


async def exchange(port: int, pieces: list[tuple[float, bytes]], eof: bool) -> tuple[bytes, bool, list[str]]:
    """Write the pieces (each after its pause), half-close if `eof`, read until the gateway closes: (what came,
    whether it ended with a reset, the bad log records meanwhile)."""
    with bad_logs() as logs:
        wire = await Wire.open(port)
        try:
            with trio.fail_after(TIMEOUT):
                for pause, data in pieces:
                    await trio.sleep(pause)
                    await wire.send(data)
                if eof:
                    await wire.send_eof()
                await wire.until_closed()
                await trio.sleep(0.05)  # (a traceback is logged before the reset it ends with, but be sure)
        finally:
            await wire.aclose()
    return wire.buf, wire.reset, [text + "\n" + trace for text, trace, _ in logs.found]


def one_response(data: bytes, head_request: bool = False) -> tuple[Resp, bytes]:
    """The response at the start of `data` and whatever came after it."""
    got = read_response(data, 0, head_request, eof=True)
    assert got is not None, data
    return got[0], data[got[1]:]


NOT_ROUTED = b"POST /nope HTTP/1.1\r\nHost: a\r\n"


@pytest.mark.parametrize(("request_bytes", "eof"), [
    (NOT_ROUTED + b"Content-Length: 1\r\n\r\n", True),  # the body never comes: the client half-closes
    (NOT_ROUTED + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", False),  # a malformed chunk size
], ids=["eof-mid-body", "bad-chunk-size"])
async def test_a_bad_unread_body_after_the_gateways_own_answer_logs_no_traceback(client_setup, request_bytes, eof):
    data, reset, logged = await exchange(client_setup, [(0.0, request_bytes)], eof)
    resp, rest = one_response(data)
    assert (resp.status, is_kong_error(resp), rest) == (404, True, b"")
    assert logged == []  # it was: "connection from ... failed", ProtocolError raised in _drain_request
    assert not reset  # it was: the connection reset after the 404


async def test_expect_continue_answered_by_the_gateway_gets_no_100_after_it(client_setup):
    # The client waits for 100 Continue, as it should; the gateway answers 404 at once, then reads on for the body.
    data, reset, logged = await exchange(
        client_setup, [(0.0, NOT_ROUTED + b"Content-Length: 1\r\nExpect: 100-continue\r\n\r\n")], eof=False)
    resp, rest = one_response(data)
    assert (resp.status, is_kong_error(resp)) == (404, True)
    assert rest == b""  # it was (llhttp): b"HTTP/1.1 100 Continue\r\n\r\n" after the final response
    assert logged == []  # it was (h11): LocalProtocolError (InformationalResponse in state MUST_CLOSE)
    assert not reset


async def test_the_gateways_400_to_head_has_no_body(client_setup):
    data, _, logged = await exchange(client_setup, [(0.0, b"HEAD / HTTP/1.1\r\n\r\n")], eof=True)  # no Host: 400
    resp, rest = one_response(data, head_request=True)
    assert resp.status == 400
    assert rest == b""  # it was: the JSON body, 103 bytes a client reads as the start of the next response
    assert logged == []


async def test_an_http10_request_with_expect_continue_gets_no_100(client_setup):
    data, _, logged = await exchange(client_setup, [
        (0.0, b"POST /echo/x HTTP/1.0\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"),
        (0.1, b"hello")], eof=False)
    resp, rest = one_response(data)
    assert (resp.status, resp.header(b"x-backend"), rest) == (200, b"echo", b"")
    assert resp.interim == []  # it was: [100], "HTTP/1.1 100 Continue" before the 200
    assert logged == []
