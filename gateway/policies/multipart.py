"""Multipart bodies as Kong's lua-multipart 0.5.9 parses, edits and writes them (kong.request.get_body and
request-transformer on multipart/form-data), its quirks included. Sans-I/O."""

from __future__ import annotations

import re
import secrets
from typing import Any

Args = dict[str, Any]  # name -> value, a list for a repeated name

_MP_BOUNDARY = re.compile(rb";[ \t\n\v\f\r]*boundary=([^ \t\n\v\f\r]+)")
_MP_IS_HEADER = re.compile(rb"[^ \t\n\v\f\r]:[ \t\n\v\f\r]*[^ \t\n\v\f\r]")
_MP_NAME = re.compile(rb"[ \t\n\v\f\r]*[Nn][Aa][Mm][Ee]=")
_MP_VALUE = re.compile(rb"[ \t\n\v\f\r]*([^=]*)")
_MP_EOL = re.compile(rb"[\r\n]")


class Part:
    __slots__ = ("name", "headers", "value")

    def __init__(self, name: str, headers: list[bytes], value: bytes) -> None:
        self.name = name
        self.headers = headers
        self.value = value


class Multipart:
    """A multipart/form-data body as Kong's lua-multipart (0.5.9) reads, changes and writes it, quirks included:
    the body is read line by line (CR, LF or both end a line); a line starting with "--" and the boundary is a
    delimiter; a part's name is what follows `name=` in its Content-Disposition less its first and last character
    (the quotes); a part without a name is not kept, and its lines go to the next part's value (a preamble does);
    a value loses one trailing LF and a CR before it; the last part is kept unterminated. `delete` of a repeated
    name removes the parts at its positions one after the other, each removal shifting the rest (so it may remove
    another name's part and leave one of its own); `set_simple` replaces the first part of the name."""

    def __init__(self, raw: bytes, content_type: bytes | None) -> None:
        self.boundary: bytes | None = None
        found = _MP_BOUNDARY.search(content_type) if content_type else None
        if found is not None:
            boundary = found[1]
            if boundary[:1] == boundary[-1:] and boundary[:1] in (b'"', b"'"):
                boundary = boundary[1:-1]
            if boundary:
                self.boundary = boundary
        self.data: dict[int, Part] = {}  # Lua's array: 1-based
        self.indexes: dict[str, list[int]] = {}
        if self.boundary is not None:
            self._decode(raw, self.boundary)

    def _decode(self, body: bytes, boundary: bytes) -> None:
        data, indexes = self.data, self.indexes
        part_name: bytes | None = None
        part_index = 1
        part_headers: list[bytes] = []
        part_value: list[bytes | None] = []
        end = len(boundary) + 2
        processing = False
        position = 0
        done = False
        while not done:
            eol = _MP_EOL.search(body, position)
            if eol is not None:
                s = eol.start()
                line = body[position:s]
                position = s + 1
            else:
                s = -1
                line = body[position:]
                done = True
            if not line:
                if s >= 0 and processing:
                    part_value.append(body[s:s + 1])
            elif line[:2] == b"--" and line[2:end] == boundary:
                processing = False
                if part_name is not None:
                    if part_value and part_value[-1] == b"\n":
                        part_value[-1] = None
                    if len(part_value) > 1 and part_value[-2] == b"\r":
                        part_value[-2] = None
                    name = part_name.decode("utf-8", "surrogateescape")
                    data[part_index] = Part(name, part_headers, _concat(part_value))
                    indexes.setdefault(name, []).append(part_index)
                    part_headers, part_value, part_name = [], [], None
                    part_index += 1
            elif not processing and line[:19].lower() == b"content-disposition":
                for segment in line.split(b";"):
                    if segment and not _MP_IS_HEADER.search(segment):
                        at = _MP_NAME.match(segment)
                        if at is not None:
                            current = _MP_VALUE.match(segment, at.end())[1].rstrip(b" \t\n\v\f\r")  # type: ignore[index]
                            part_name = current[1:len(current) - 1]
                part_headers.append(line)
                if s >= 0 and body[s:s + 4] == b"\r\n\r\n":
                    processing = True
                    position = s + 4
            elif not processing and _MP_IS_HEADER.search(line):
                part_headers.append(line)
                if s >= 0 and body[s:s + 4] == b"\r\n\r\n":
                    processing = True
                    position = s + 4
            else:
                processing = True
                part_value.append(line)
                if s >= 0:
                    part_value.append(body[s:s + 1])
        if part_name is not None:
            name = part_name.decode("utf-8", "surrogateescape")
            data[part_index] = Part(name, part_headers, _concat(part_value))
            indexes[name] = [part_index]

    @classmethod
    def of(cls, content_type: bytes, raw: bytes) -> Multipart:
        return cls(raw, content_type)

    def get(self, name: str) -> bytes | None:
        """The value of the first part named `name`."""
        at = self.indexes.get(name)
        part = self.data.get(at[0]) if at else None
        return part.value if part is not None else None

    def get_all_with_arrays(self) -> Args:
        out: Args = {}
        for name, at in self.indexes.items():
            values = [self.data[i].value.decode("utf-8", "surrogateescape") for i in at if i in self.data]
            out[name] = values[0] if len(at) == 1 and values else values
        return out

    def _len(self) -> int:
        n = 0
        while n + 1 in self.data:
            n += 1
        return n

    def set_simple(self, name: str, value: bytes) -> None:
        """A plain part `name` (only a Content-Disposition): in place of the first of that name, else after the
        highest position any name has."""
        part = Part(name, [b'Content-Disposition: form-data; name="%s"' % name.encode("utf-8", "surrogateescape")],
                    value)
        at = self.indexes.get(name)
        if at:
            self.data[at[0]] = part
            return
        index = max((i for positions in self.indexes.values() for i in positions), default=0) + 1
        self.indexes[name] = [index]
        self.data[index] = part

    def delete(self, name: str) -> None:
        removed = self.indexes.pop(name, None)
        if removed is None:
            return
        for index in removed:  # table.remove(data, index), one after the other
            n = self._len()
            if 1 <= index <= n:
                for i in range(index, n):
                    self.data[i] = self.data[i + 1]
                del self.data[n]
        for positions in self.indexes.values():
            positions[:] = [i - sum(1 for r in removed if i > r) for i in positions]

    def tostring(self) -> bytes:
        boundary = self.boundary if self.boundary is not None else b"0x%012x" % secrets.randbits(48)
        out = []
        i = 1
        while i in self.data:
            part = self.data[i]
            out.append(b"--" + boundary + b"\r\n" + b"".join(h + b"\r\n" for h in part.headers) + b"\r\n"
                       + part.value + b"\r\n")
            i += 1
        if not out:
            return b""
        out.append(b"--" + boundary + b"--\r\n")
        return b"".join(out)


def _concat(pieces: list[bytes | None]) -> bytes:
    """table.concat(part_value) after the trailing LF and the CR before it were set to nil. With the CR gone but not
    the last piece (a value ending in CR CR), the table has a hole, and LuaJIT's length of such a table (built by
    appending) is the whole count when it is even (concat then fails on the hole: a Lua error) and stops before the
    hole when it is odd."""
    if None not in pieces:
        return b"".join(pieces)  # type: ignore[arg-type]  # no hole
    if pieces[-1] is None:
        return b"".join(p for p in pieces if p is not None)  # the holes are at the end
    if len(pieces) % 2 == 0:
        raise ValueError(f"invalid value (nil) at index {len(pieces) - 1} in table for 'concat'")
    return b"".join(pieces[:-2])  # type: ignore[arg-type]  # what precedes the hole
