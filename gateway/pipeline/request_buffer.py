"""A route's `request_buffering` (Kong's default, true; nginx's `proxy_request_buffering on`): the whole request
body is read from the client before an upstream is contacted, and sent with a Content-Length.

A body that came with its head (the common case: small JSON-RPC calls) is already whole and costs nothing here. A
body still arriving is read to its end first, so a slow or stalled client holds no upstream connection, and a
client that gives up mid-body never reaches the upstream; a chunked body is re-framed with its length, as nginx
sends a buffered body. Up to MEMORY_LIMIT, nginx's client_body_buffer_size as Kong sets it (8k), it stays in memory;
a larger one goes whole to an unnamed temporary file in the worker's gateway.client_body_temp_path (nginx's
client_body_temp_path: `client_body_temp` in the run directory, Kong's prefix), read back for each try and sent in
pieces of CHUNK bytes, so what a body still arriving or waiting on its upstream holds is about one such
buffer, however large it is (nginx release-1.27.1 ngx_http_request_body.c:175-195 and 1340-1343, one
client_body_buffer_size buffer written to the file each time it fills; ngx_http_upstream.c:652-653, the body sent
through one buffer of that size). With `request_buffering: false` the body streams to the upstream as it arrives
(nginx's `off`, what Kong's unbuffered proxying does).

request-size-limiting reads a body without Content-Length whole in access, as Kong's does (`read_within`): kept the
same way (memory, then a temporary file) for the proxying, which sends it with its length whatever the route's
`request_buffering` (`held_whole`), as nginx sends a body read before its proxy handler.

A body that cannot be written to its file (a full disk) is nginx's 500, with one line in the log naming the
directory and the error (RequestFailed), before any upstream is contacted: the file is flushed before the proxying
starts, as nginx writes the body's end before ngx_http_upstream_init.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import IO

from gateway.http.codec import Headers
from gateway.http.server import Exchange, RequestFailed

log = logging.getLogger("gateway.pipeline")

# bytes of a body kept in memory: nginx's client_body_buffer_size, Kong's nginx_http_client_body_buffer_size (8k,
# kong/templates/kong_defaults.lua); a larger body is spooled whole to a temporary file
MEMORY_LIMIT = 8192
CHUNK = 8192  # what a spooled body is read back (and sent) in: one buffer of that size, as nginx sends it
_temp_dir: str | None = None  # where bodies are spooled (use_temp_dir); None: the system's, for tests


def use_temp_dir(path: str) -> None:
    """Spool request bodies to unnamed files in `path` from now on: the worker's gateway.client_body_temp_path."""
    global _temp_dir
    _temp_dir = path


class SpooledBody:
    """A whole body too large for memory, in an unnamed temporary file (after `first`, bytes a reader took out of
    it before it was sent: `resume`); `rewind` before each try."""

    __slots__ = ("file", "size", "_first", "_start", "_next")

    def __init__(self, file: IO[bytes], size: int) -> None:
        self.file = file
        self.size = size
        self._first = b""
        self._start = 0  # where the body's bytes in the file begin (after `_first`)
        self._next = b""  # `_first`, until read

    def rewind(self) -> None:
        self.file.seek(self._start)
        self._next = self._first

    def read(self) -> bytes:
        """The next CHUNK of the body; b"" at its end."""
        if self._next:
            first, self._next = self._next, b""
            return first
        return self.file.read(CHUNK)

    def resume(self, first: bytes) -> None:
        """The body is now `first`, then the file from where reading it stopped; `size` says so."""
        start = self.file.tell()
        self.size = len(first) + self.file.seek(0, os.SEEK_END) - start
        self._first, self._start = first, start
        self.rewind()

    def close(self) -> None:
        self.file.close()

    def __del__(self) -> None:
        self.file.close()  # (a safety net: Exchange.release_body closes one held for a request another plugin answered)


class BodyInHand:
    """A body in memory too large to copy onto the request head (over MEMORY_LIMIT: one that came with its head, or
    that a plugin read): sent as a SpooledBody is, after the head, as it is (nginx writes a body's buffers after the
    head's, never into one); `rewind` before each try."""

    __slots__ = ("body", "_at")

    def __init__(self, body: bytes) -> None:
        self.body = body
        self._at = 0

    def rewind(self) -> None:
        self._at = 0

    def read(self) -> bytes:
        """The next CHUNK of the body, b"" at its end: each piece is a write of its own, so write_timeout runs
        between two writes, as nginx's proxy_send_timeout, never over the whole body."""
        at = self._at
        piece = self.body[at:at + CHUNK]
        self._at = at + len(piece)
        return piece


async def read_whole(ex: Exchange, first: bytes, limit: int | None = None) -> bytes | SpooledBody | None:
    """The rest of the request body after `first`, read to its end: bytes, or a SpooledBody over MEMORY_LIMIT; None
    once more than `limit` bytes of it have come (ex.body_received), what was read dropped and the rest unread."""
    if len(first) > MEMORY_LIMIT:  # (more than a buffer came before: to the file at once, not copied first)
        return await _spool(ex, first, limit)
    # One buffer, not an object per chunk: what a body held in memory costs is its bytes, however it was chunked
    # (a list of 2-byte chunks weighs 20 times the body), so MEMORY_LIMIT bounds what is really held.
    body = bytearray(first)
    while (limit is None or ex.body_received <= limit) and (chunk := await ex.receive_body()) is not None:
        body += chunk
        if len(body) > MEMORY_LIMIT:
            del chunk  # (in the file from now on: not held while the rest comes)
            return await _spool(ex, body, limit)
    if limit is not None and ex.body_received > limit:
        return None
    return bytes(body)


async def _spool(ex: Exchange, body: bytes | bytearray, limit: int | None) -> SpooledBody | None:
    """read_whole's rest, `body` first, into an unnamed temporary file, written to its end (flushed) before it is
    returned; RequestFailed when the file cannot be made or written (only the file's errors: an OSError of the
    client's connection is the connection's)."""
    try:
        file = tempfile.TemporaryFile(dir=_temp_dir)  # noqa: SIM115 - owned by the SpooledBody, closed by the forwarder
    except OSError as e:
        raise _unwritable(ex, e, "create") from None
    size = len(body)
    try:
        _write(ex, file, body)
        if isinstance(body, bytearray):
            body.clear()  # (read_whole's buffer: freed now, not when the rest has come)
        while (limit is None or ex.body_received <= limit) and (chunk := await ex.receive_body()) is not None:
            _write(ex, file, chunk)
            size += len(chunk)
            del chunk  # (not held while the next one is awaited)
        if limit is not None and ex.body_received > limit:
            _discard(file)
            return None
        try:
            file.flush()  # (its last bytes, in the file object's buffer: written now, not at a try's rewind)
        except OSError as e:
            raise _unwritable(ex, e) from None
    except BaseException:
        _discard(file)
        raise
    return SpooledBody(file, size)


def _write(ex: Exchange, file: IO[bytes], data: bytes | bytearray) -> None:
    """file.write(data); a failure is the request's RequestFailed."""
    try:
        file.write(data)
    except OSError as e:
        raise _unwritable(ex, e) from None


def _unwritable(ex: Exchange, e: OSError, doing: str = "write to") -> RequestFailed:
    """A body's temporary file that could not be made or written, logged as nginx logs its [crit] `pwrite()
    "<file>" failed (28: No space left on device)` (nginx release-1.27.1 src/os/unix/ngx_files.c:219-220), for
    nginx's 500 (src/http/ngx_http_request_body.c:1340-1343)."""
    where = _temp_dir or tempfile.gettempdir()
    req = ex.request
    log.error("could not %s a temporary file in %s, for the request body of %s %s from %s (%s: %s): 500; free space "
              "there (or fix what the error says), or set gateway.client_body_temp_path to another directory", doing,
              where, req.method.decode("latin-1"), req.target[:200].decode("latin-1"), ex.client_ip, e.errno,
              e.strerror)
    return RequestFailed(f"request body not stored in {where}: {e.strerror}")


def _discard(file: IO[bytes]) -> None:
    """Close a body's file whatever its buffer holds: after a failed write, close would write the rest again (and
    fail again); the descriptor is closed all the same."""
    try:
        file.close()
    except OSError:
        pass


async def read_within(ex: Exchange, limit: int) -> bool:
    """Read the rest of the request body now (Kong's ngx.req.read_body in access), unless more than `limit` bytes
    of it come (ex.body_received: also those another reader took): then False, what was read dropped, the rest
    unread (the answer closes the connection). Otherwise the body is kept for the proxying (Exchange.hold_body):
    in memory up to MEMORY_LIMIT, the whole of a larger one in a temporary file."""
    body, done = ex.take_buffered_body()
    if ex.body_received > limit:
        return False
    if done:
        ex.hold_body(body)
        return True
    whole = await read_whole(ex, body, limit)
    if whole is None:
        return False
    if isinstance(whole, SpooledBody):
        whole.rewind()
        ex.hold_body(b"", whole)
    else:
        ex.hold_body(whole)
    return True


def held_whole(ex: Exchange, first: bytes) -> SpooledBody | None:
    """A body a policy read whole in access into a file (read_within), as the proxying sends it: `first` (what the
    request still held: bytes read back from the file since, or an MCP peek's), then the file from where that
    reading stopped. nginx sends a body read before its proxy handler with its length and may send it again on a
    retry, whatever proxy_request_buffering says (ngx_http_request_body.c: request_body_no_buffering is dropped when
    r->request_body is there already). None when no body is held in a file."""
    held = ex.take_held_file()
    if held is None:
        return None
    body: SpooledBody = held  # type: ignore[assignment]  # (read_within holds only these)
    body.resume(first)
    return body


def with_length(headers: Headers, size: int) -> Headers:
    """The upstream headers of a chunked request whose body is now whole: Content-Length instead of chunked."""
    out = [hv for hv in headers if hv[0] != b"transfer-encoding"]
    out.append((b"content-length", b"%d" % size))
    return out
