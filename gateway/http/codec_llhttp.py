"""The hot-path codec: llhttp (via httptools) for parsing, a few byte joins for framing.

httptools calls back per element; we queue events so callers see h11's pull interface. A parse error is queued
after the events that preceded it, so a valid pipelined request is still answered before the error is raised.
"""

from __future__ import annotations

from collections import deque
from http import HTTPStatus

import httptools

from gateway.http.codec import (
    CLOSED,
    END,
    NEED_DATA,
    Event,
    Headers,
    ProtocolError,
    Request,
    Response,
    check_request_head,
    message_framing,
)

REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_CHUNK_END = b"0\r\n\r\n"


def _wants_keep_alive(version: bytes, headers: Headers) -> bool:
    """HTTP/1.1 persists unless `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`."""
    for name, value in headers:
        if name == b"connection":
            tokens = value.lower()
            if b"close" in tokens:
                return False
            if b"keep-alive" in tokens:
                return True
    return version == b"1.1"


class _BodyFramer:
    """Frames an outgoing body: chunked, fixed length, or nothing (HEAD, 204, 304)."""

    __slots__ = ("_chunked", "_no_body")

    def __init__(self) -> None:
        self._chunked = False
        self._no_body = False

    def body(self, data: bytes) -> bytes:
        if self._no_body or not data:
            return b""
        if self._chunked:
            return b"%x\r\n%b\r\n" % (len(data), data)
        return data

    def end(self) -> bytes:
        return _CHUNK_END if self._chunked and not self._no_body else b""


class LlhttpServer(_BodyFramer):
    """Server side of a client connection."""

    __slots__ = ("_parser", "_events", "_headers", "_url", "_max_head", "_head_fed", "_in_head", "_error",
                 "_method", "_version", "_client_keep_alive", "_request_done", "_close", "_started")

    def __init__(self, max_header_bytes: int = 16384) -> None:
        super().__init__()
        self._parser = httptools.HttpRequestParser(self)
        self._events: deque[Event | Exception] = deque()
        self._headers: Headers = []
        self._url = b""
        self._max_head = max_header_bytes
        self._head_fed = 0
        self._in_head = True
        self._started = False
        self._error: Exception | None = None
        self._method = b"GET"
        self._version = b"1.1"
        self._client_keep_alive = True
        self._request_done = False
        self._close = False

    # httptools callbacks -------------------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._headers = []
        self._url = b""
        self._in_head = True
        self._started = True
        self._head_fed = 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        headers = self._headers
        if len(self._url) + sum(len(n) + len(v) + 4 for n, v in headers) > self._max_head:
            self._error = ProtocolError("request head too large", 431)
            raise self._error
        version = b"1.1" if self._parser.get_http_version() == "1.1" else b"1.0"
        try:
            check_request_head(headers, version)
        except ProtocolError as e:
            self._error = e
            raise
        self._events.append(Request(self._parser.get_method(), self._url, headers, version,
                                    _wants_keep_alive(version, headers)))

    def on_body(self, body: bytes) -> None:
        if body:
            self._events.append(body)

    def on_message_complete(self) -> None:
        self._events.append(END)
        self._started = False

    # sans-I/O interface ----------------------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        if not data:
            self._events.append(ProtocolError("client closed the connection mid-request") if self._started
                                else CLOSED)
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._events.append(ProtocolError("protocol upgrades are not supported", 501))
        except httptools.HttpParserError as e:
            err = self._error or ProtocolError(f"malformed request: {e}")
            self._events.append(err)
            self._error = None
        else:
            if self._in_head and self._started:
                self._head_fed += len(data)
                if self._head_fed > self._max_head:
                    self._events.append(ProtocolError("request head too large", 431))

    def next_event(self) -> Event:
        if not self._events:
            return NEED_DATA
        ev = self._events.popleft()
        if isinstance(ev, Request):
            self._method = ev.method
            self._version = ev.http_version
            self._client_keep_alive = ev.keep_alive
            self._request_done = False
        elif ev is END:
            self._request_done = True
        elif isinstance(ev, Exception):
            self._events.clear()
            self._events.append(ev)  # every later call raises too: the connection is finished
            raise ev
        return ev

    def response_head(self, status: int, headers: Headers, reason: bytes = b"", close: bool = False) -> bytes:
        length, chunked = message_framing(headers)
        self._no_body = self._method == b"HEAD" or status in (204, 304)
        self._chunked = chunked
        extra = []
        keep = self._client_keep_alive and not close
        if not self._no_body and length is None and not chunked:
            if self._version == b"1.1":
                self._chunked = True
                extra.append(b"transfer-encoding: chunked\r\n")
            else:
                keep = False  # close-delimited body
        self._close = not keep
        if not keep:
            extra.append(b"connection: close\r\n")
        elif self._version == b"1.0":
            extra.append(b"connection: keep-alive\r\n")
        lines = [b"HTTP/1.1 %d %b\r\n" % (status, reason or REASONS.get(status, b""))]
        lines += [b"%b: %b\r\n" % hv for hv in headers]
        lines += extra
        lines.append(b"\r\n")
        return b"".join(lines)

    def informational(self, status: int) -> bytes:
        return b"HTTP/1.1 %d %b\r\n\r\n" % (status, REASONS.get(status, b""))

    @property
    def keep_alive(self) -> bool:
        return not self._close and self._request_done

    def start_next_cycle(self) -> None:
        self._close = False


class LlhttpClient(_BodyFramer):
    """Client side of an upstream connection."""

    __slots__ = ("_parser", "_events", "_headers", "_reason", "_method", "_keep", "_in_message", "_skip",
                 "_close_delimited", "_dead", "_max_head", "_head_fed", "_in_head")

    def __init__(self, max_header_bytes: int = 65536) -> None:
        super().__init__()
        self._parser = httptools.HttpResponseParser(self)
        self._events: deque[Event | Exception] = deque()
        self._headers: Headers = []
        self._reason = b""
        self._method = b"GET"
        self._keep = True
        self._in_message = False
        self._in_head = False
        self._skip = False
        self._close_delimited = False
        self._dead = False
        self._max_head = max_header_bytes
        self._head_fed = 0

    def request_head(self, method: bytes, target: bytes, headers: Headers) -> bytes:
        self._method = method
        length, self._chunked = message_framing(headers)
        self._no_body = length is None and not self._chunked
        lines = [b"%b %b HTTP/1.1\r\n" % (method, target)]
        lines += [b"%b: %b\r\n" % hv for hv in headers]
        lines.append(b"\r\n")
        return b"".join(lines)

    def on_message_begin(self) -> None:
        self._headers = []
        self._reason = b""
        self._in_message = True
        self._in_head = True
        self._head_fed = 0

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        status = self._parser.get_status_code()
        if status < 200:
            self._skip = True  # 1xx: llhttp parses it as a body-less message; the final response follows
            return
        headers = self._headers
        length, chunked = message_framing(headers)
        self._close_delimited = length is None and not chunked and status not in (204, 304)
        self._keep = self._parser.should_keep_alive() and not self._close_delimited
        version = b"1.1" if self._parser.get_http_version() == "1.1" else b"1.0"
        self._events.append(Response(status, self._reason, headers, version, self._keep))
        if self._method == b"HEAD":
            # httptools cannot tell llhttp to skip the body, so end the message here and retire the parser.
            self._events.append(END)
            self._dead = True
            self._keep = False
            self._in_message = False

    def on_body(self, body: bytes) -> None:
        if body and not self._dead:
            self._events.append(body)

    def on_message_complete(self) -> None:
        if self._skip:
            self._skip = False
        elif not self._dead:
            self._events.append(END)
            self._in_message = False

    def receive_data(self, data: bytes) -> None:
        if self._dead:
            return
        if not data:
            if self._in_message and not self._in_head and self._close_delimited:
                self._events.append(END)
                self._in_message = False
            elif self._in_message:
                self._events.append(ProtocolError("upstream closed the connection mid-response", 502))
            else:
                self._events.append(CLOSED)
            self._keep = False
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._events.append(ProtocolError(f"malformed upstream response: {e}", 502))
        else:
            if self._in_head and self._in_message:
                self._head_fed += len(data)
                if self._head_fed > self._max_head:
                    self._events.append(ProtocolError("upstream response head too large", 502))

    def next_event(self) -> Event:
        if not self._events:
            return NEED_DATA
        ev = self._events.popleft()
        if isinstance(ev, Exception):
            self._events.appendleft(ev)
            self._keep = False
            raise ev
        return ev

    @property
    def keep_alive(self) -> bool:
        return self._keep and not self._in_message

    def start_next_cycle(self) -> None:
        self._skip = False
