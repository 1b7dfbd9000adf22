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
    """Body chunks in, whole events out. The bytes of an event not yet ended are kept in one buffer (an event of tiny
    chunks weighs its bytes, not an object per chunk) and looked at once: each chunk is searched with the last 3
    bytes before it (an end of event is at most 4 bytes), so a long event costs time linear in its size, not
    quadratic."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held = bytearray()  # the bytes of an event not yet ended (no end of event in them)

    def feed(self, chunk: bytes) -> list[bytes]:
        """The events `chunk` completes (possibly none), in order."""
        held = self._held
        if not held:
            return self._split(chunk)
        tail = held[-3:]
        m = _END.search(tail + chunk)
        if m is None:
            held += chunk
            if len(held) > MAX_EVENT:
                raise EventTooLarge(f"an event of the stream passed {MAX_EVENT} bytes without ending")
            return []
        cut = m.end() - len(tail)  # (> 0: the held bytes end no event, so neither do their last 3)
        held += chunk[:cut]
        first = bytes(held)
        held.clear()
        return [first, *self._split(chunk[cut:])]

    def _split(self, buf: bytes) -> list[bytes]:
        """The events in `buf`, which starts an event; what follows the last one is held."""
        events = []
        start = 0
        while (m := _END.search(buf, start)) is not None:
            events.append(buf[start:m.end()])
            start = m.end()
        if start < len(buf):
            self._held += memoryview(buf)[start:]
            if len(self._held) > MAX_EVENT:
                raise EventTooLarge(f"an event of the stream passed {MAX_EVENT} bytes without ending")
        return events

    @property
    def pending(self) -> bytes:
        """Bytes of an event not yet ended (what a stream that ends leaves: edited as an event, then sent)."""
        return bytes(self._held)


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
