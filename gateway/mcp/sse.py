"""Server-sent events, event by event (sans-I/O): what the gateway needs to edit JSON-RPC messages in a
`text/event-stream` answer whose bytes arrive in arbitrary pieces.

`EventSplitter` takes body chunks and gives back whole events (each with its blank-line terminator), holding an
incomplete one until the rest arrives (bounded: an event longer than MAX_EVENT is an error, the stream is cut).
`data_of` joins an event's `data:` lines as the HTML spec does; `with_data` rebuilds an event around new data,
keeping its other fields (id, event, retry, comments) in place. `ends_event` says whether a stream is between
events (where a keep-alive comment may go).
"""

from __future__ import annotations

import re

MAX_EVENT = 16 << 20  # one event longer than this is refused (a broken or hostile upstream)
_END = re.compile(rb"\r\n\r\n|\n\n|\r\r|\r\n\n|\n\r\n")  # a blank line, whatever the line endings
_LINES = re.compile(rb"\r\n|\n|\r")


def ends_event(tail: bytes) -> bool:
    """Do the bytes of a stream so far, of which `tail` is the last 4 (or all), end with a blank line, so that a
    comment may go in without splitting an event? Line endings may be CRLF, LF or CR, and mixed; a final CR may
    yet be a CRLF's first half, which makes no difference here."""
    if tail.endswith(b"\r\n"):
        tail = tail[:-2]
    elif tail.endswith((b"\n", b"\r")):
        tail = tail[:-1]
    else:
        return False
    return tail.endswith((b"\n", b"\r"))


class EventTooLarge(Exception):
    """An event grew past MAX_EVENT bytes without ending."""


class EventSplitter:
    """Body chunks in, whole events out."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        """The events `chunk` completes (possibly none), in order."""
        buf = self._buf + chunk if self._buf else chunk
        events = []
        start = 0
        while True:
            m = _END.search(buf, start)
            if m is None:
                break
            events.append(buf[start:m.end()])
            start = m.end()
        self._buf = buf[start:]
        if len(self._buf) > MAX_EVENT:
            raise EventTooLarge(f"an event of the stream passed {MAX_EVENT} bytes without ending")
        return events

    @property
    def pending(self) -> bytes:
        """Bytes of an event not yet complete (sent as they are when the stream ends)."""
        return self._buf


def data_of(event: bytes) -> bytes | None:
    """The event's data (its `data:` lines joined with newlines), or None when it has none."""
    parts = None
    for line in _LINES.split(event):
        if line.startswith(b"data"):
            rest = line[4:]
            if rest[:1] == b":":
                rest = rest[2:] if rest[1:2] == b" " else rest[1:]
            elif rest:
                continue  # a field named "data..." that is not data
            if parts is None:
                parts = [rest]
            else:
                parts.append(rest)
    return b"\n".join(parts) if parts is not None else None


def with_data(event: bytes, data: bytes) -> bytes:
    """The event with its data replaced by `data` (one line: JSON has no raw newlines), other fields kept."""
    out = []
    placed = False
    for line in _LINES.split(event):
        if not line:
            continue
        if line.startswith(b"data") and (len(line) == 4 or line[4:5] == b":"):
            if not placed:
                out.append(b"data: " + data)
                placed = True
            continue
        out.append(line)
    if not placed:
        out.append(b"data: " + data)
    return b"\n".join(out) + b"\n\n"


def message_event(data: bytes) -> bytes:
    """A new event carrying one JSON-RPC message (what MCP servers send: `event: message`)."""
    return b"event: message\ndata: " + data + b"\n\n"
