"""A small HTTP/1.1 client on Trio + h11 for the registries' JSON APIs (etcd's gRPC gateway, Consul's agent).

One connection per request (`Connection: close`): registry calls are rare (a blocking query or a watch stream
lasts seconds to minutes), so pooling would buy nothing. Streams (etcd's /v3/watch) get TCP keep-alive so a
silently vanished peer is noticed without a read timeout cutting a legitimately idle watch; a peer that hung while
its kernel still acks the keep-alive is caught by the watcher's own liveness probe (gateway.discovery.liveness).
"""

from __future__ import annotations

import re
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import h11
import trio

from gateway.config.discovery import valid_endpoint
from gateway.config.errors import show
from gateway.http.net import open_tcp_stream

MAX_BODY = 64 << 20  # a registry answer larger than this is refused (a broken or hostile peer)
_RECV = 65536


_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")


class TransportError(Exception):
    """The registry could not be reached or answered something that is not HTTP: retry later."""


def excerpt(data: object, limit: int = 200) -> str:
    """At most `limit` characters of what a registry said, on one line (control characters escaped).

    Registry answers end up in log lines and in /health details: a hostile or broken one must not make them
    multi-line or unbounded.
    """
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
    text = text.strip()
    cut = text[:limit]
    cut = _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), cut)
    return cut + ("..." if len(text) > limit else "")


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """'host:port', 'http://host:port' or 'http://[v6]:port' (what the config's valid_endpoint accepts)."""
        if not valid_endpoint(text):
            raise ValueError(f'expected "host:port" or "http://host:port", got {show(text)}')
        host, _, port = text.strip().removeprefix("http://").rstrip("/").rpartition(":")
        return cls(host.removeprefix("[").removesuffix("]"), int(port))

    @property
    def authority(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"http://{self.authority}"


@dataclass
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names; a repeated header keeps the last
    body: bytes = b""


def _keepalive(stream: trio.SocketStream) -> None:
    sock = stream.socket
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for opt, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
            if hasattr(socket, opt):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), value)
    except OSError:
        pass


class _Conn:
    def __init__(self, stream: trio.SocketStream, endpoint: Endpoint) -> None:
        self.stream = stream
        self.endpoint = endpoint
        self.h11 = h11.Connection(h11.CLIENT)
        self.eof = False

    async def send_request(self, method: str, target: str, body: bytes | None, headers: list[tuple[str, str]]) -> None:
        hdrs = [("Host", self.endpoint.authority), ("Connection", "close"), ("User-Agent", "mcp-gateway")]
        hdrs += headers
        if body is not None:
            hdrs += [("Content-Length", str(len(body)))]
            if not any(k.lower() == "content-type" for k, _ in headers):
                hdrs.append(("Content-Type", "application/json"))
        data = self.h11.send(h11.Request(method=method, target=target, headers=hdrs))
        if body:
            data += self.h11.send(h11.Data(data=body))
        data += self.h11.send(h11.EndOfMessage())
        await self.stream.send_all(data)

    async def next_event(self) -> h11.Event:
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as e:
                if self.eof:
                    raise TransportError(f"{self.endpoint}: connection closed mid-response") from None
                raise TransportError(f"{self.endpoint}: bad HTTP response: {excerpt(e)}") from None  # (quotes it)
            if event is h11.NEED_DATA:
                chunk = await self.stream.receive_some(_RECV)
                self.eof = not chunk
                self.h11.receive_data(chunk)
                continue
            if isinstance(event, h11.ConnectionClosed):
                raise TransportError(f"{self.endpoint}: connection closed mid-response")
            return event  # type: ignore[return-value]  # not PAUSED: one response is read per request

    async def response_head(self) -> Response:
        while True:
            event = await self.next_event()
            if isinstance(event, h11.Response):
                return Response(event.status_code, {k.decode().lower(): v.decode("latin-1") for k, v in event.headers})
            # h11.InformationalResponse (100 Continue): keep reading


async def _connect(endpoint: Endpoint) -> trio.SocketStream:
    try:
        return await open_tcp_stream(endpoint.host, endpoint.port)
    except OSError as e:
        raise TransportError(f"{endpoint}: cannot connect: {e.strerror or e}") from None


async def request(endpoint: Endpoint, method: str, target: str, *, body: bytes | None = None,
                  headers: list[tuple[str, str]] | None = None, timeout: float = 5.0) -> Response:
    """One whole request and response within `timeout` seconds; TransportError on any network problem."""
    try:
        with trio.fail_after(timeout):
            stream = await _connect(endpoint)
            async with stream:
                conn = _Conn(stream, endpoint)
                await conn.send_request(method, target, body, headers or [])
                resp = await conn.response_head()
                parts: list[bytes] = []
                size = 0
                while True:
                    event = await conn.next_event()
                    if isinstance(event, h11.Data):
                        size += len(event.data)
                        if size > MAX_BODY:
                            raise TransportError(f"{endpoint}: response body over {MAX_BODY} bytes")
                        parts.append(bytes(event.data))
                    elif isinstance(event, h11.EndOfMessage):
                        resp.body = b"".join(parts)
                        return resp
    except trio.TooSlowError:
        raise TransportError(f"{endpoint}: no complete answer within {timeout:g}s") from None
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as e:
        raise TransportError(f"{endpoint}: {e.__class__.__name__}: {e}") from None


class StreamResponse:
    """A response whose body is consumed as it arrives (etcd's watch: one JSON object per line)."""

    def __init__(self, conn: _Conn, head: Response) -> None:
        self._conn = conn
        self.status = head.status
        self.headers = head.headers

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            while True:
                event = await self._conn.next_event()
                if isinstance(event, h11.Data):
                    yield bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    return
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as e:
            raise TransportError(f"{self._conn.endpoint}: {e.__class__.__name__}: {e}") from None

    async def lines(self, max_line: int | None = None) -> AsyncIterator[bytes]:
        """Newline-delimited records of at most `max_line` bytes (default MAX_BODY, read at call time); the last
        one may end without a newline. A record is split out once, when its newline arrives (a long record
        costs linear time, not a copy and a scan of all of it per chunk)."""
        limit = MAX_BODY if max_line is None else max_line
        buf = bytearray()
        async for chunk in self.chunks():
            if b"\n" in chunk:
                *complete, rest = (bytes(buf) + chunk).split(b"\n")
                buf = bytearray(rest)
                for line in complete:
                    if line.strip():
                        yield line
            else:
                buf += chunk
            if len(buf) > limit:
                raise TransportError(f"{self._conn.endpoint}: stream record over {limit} bytes")
        if buf.strip():
            yield bytes(buf)


@asynccontextmanager
async def open_stream(endpoint: Endpoint, method: str, target: str, *, body: bytes | None = None,
                      headers: list[tuple[str, str]] | None = None,
                      timeout: float = 5.0) -> AsyncIterator[StreamResponse]:
    """Send a request and yield its response once the head arrived (within `timeout`); the body has no deadline."""
    try:
        with trio.fail_after(timeout):
            stream = await _connect(endpoint)
    except trio.TooSlowError:
        raise TransportError(f"{endpoint}: cannot connect within {timeout:g}s") from None
    async with stream:
        _keepalive(stream)
        conn = _Conn(stream, endpoint)
        try:
            with trio.fail_after(timeout):
                await conn.send_request(method, target, body, headers or [])
                head = await conn.response_head()
        except trio.TooSlowError:
            raise TransportError(f"{endpoint}: no response within {timeout:g}s") from None
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as e:
            raise TransportError(f"{endpoint}: {e.__class__.__name__}: {e}") from None
        yield StreamResponse(conn, head)
