"""Small Trio HTTP/1.1 test backends and a tiny client, built on h11 (independent of the gateway's own codecs).

Backends are started in a test's nursery: `port = await nursery.start(backend.serve)`. Each one binds 127.0.0.1 on
a free port and counts the connections it accepted and the requests it saw, so tests can check keep-alive,
retries and balancing from the upstream's side.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import random
import socket
import subprocess
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11
import trio

MAX_EVENT = 1 << 20


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _own_share(ports: range) -> range:
    """This test process's share of `ports`. Under pytest-xdist (`-n 2`) two test processes hand out ports side by
    side, each knowing only the ones it issued: a port one issued and had not bound yet (a gateway still starting), or
    keeps unbound on purpose (a dead target, a server to restart there), could be issued to the other too. So worker
    gwI of N takes every Nth port from the Ith; one process alone (no PYTEST_XDIST_WORKER) takes them all."""
    try:
        index = int(os.environ["PYTEST_XDIST_WORKER"].removeprefix("gw"))
        count = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    except (KeyError, ValueError):
        return ports
    return ports[index::count] if 0 <= index < count else ports


_EPHEMERAL_LOW = _ephemeral_low()
_FREE_PORTS = _own_share(range(10000, _EPHEMERAL_LOW) if _EPHEMERAL_LOW > 11000 else range(0))
_issued: set[int] = set()


def free_port() -> int:
    """A port nothing listens on: connecting to it is refused until a test starts a server there.

    It is taken below the kernel's ephemeral range, so a later bind to port 0 (a test's own server) or an outgoing
    connection's source port can never land on it; a port bound to 0 and closed could be handed out again at once.
    """
    for _ in range(200):
        port = random.choice(_FREE_PORTS) if _FREE_PORTS else 0
        if port in _issued:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            port = s.getsockname()[1]
        _issued.add(port)
        return port
    raise RuntimeError("no free port found below the ephemeral range")


@contextlib.contextmanager
def apt_lock() -> Iterator[None]:
    """Held while a test installs a missing Debian package (redis, etcd, slapd): two test processes (pytest-xdist)
    must not run apt-get at once (the second fails on dpkg's lock); the one that waited finds the package there."""
    with open(os.path.join(tempfile.gettempdir(), "gateway-tests-apt.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # (released when the file is closed)
        yield


def wait_port(port: int, timeout: float = 10.0) -> None:
    """Block until something accepts on 127.0.0.1:port (a server started as a subprocess)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM a child process, SIGKILL it if it is still there after 5 s, and reap it."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def pattern_bytes(n: int) -> bytes:
    """Deterministic, non-repeating-looking content of length n (so a shifted or lost chunk changes the hash)."""
    block = hashlib.sha256(b"gateway-test").digest() * 64  # 2048 bytes
    out = bytearray()
    i = 0
    while len(out) < n:
        out += i.to_bytes(4, "big") + block
        i += 1
    return bytes(out[:n])


@dataclass
class Seen:
    """One request as a backend received it."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


class _Backend:
    """Common plumbing: listen on 127.0.0.1:0 (or `host` and `port` when set before `serve`), count connections,
    run `handle_conn` per connection."""

    def __init__(self, name: str = "backend") -> None:
        self.name = name
        self.host = "127.0.0.1"
        self.port = 0
        self.connections = 0
        self.requests: list[Seen] = []

    async def serve(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started(self.port)
            await trio.serve_listeners(self._on_conn, listeners, handler_nursery=nursery)

    async def _on_conn(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        try:
            await self.handle_conn(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async def handle_conn(self, stream: trio.SocketStream) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    async def _read_request(self, stream: trio.SocketStream, conn: h11.Connection) -> Seen | None:
        """The next whole request on `conn`, or None when the client closed."""
        req = None
        body = bytearray()
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
                continue
            if isinstance(ev, h11.Request):
                req = ev
            elif isinstance(ev, h11.Data):
                body += ev.data
                self.on_body_data()
            elif isinstance(ev, h11.EndOfMessage):
                assert req is not None
                seen = Seen(req.method.decode(), req.target.decode(),
                            [(k.decode(), v.decode("latin-1")) for k, v in req.headers], bytes(body))
                self.requests.append(seen)
                return seen
            elif isinstance(ev, h11.ConnectionClosed):
                return None
            elif ev is h11.PAUSED:
                return None

    def on_body_data(self) -> None:
        """Hook: a piece of request body arrived."""


class EchoBackend(_Backend):
    """Answers every request with JSON describing it (name, method, path, headers, body).

    The query string steers the answer:
      status=N        answer with status N (204 gets no body)
      bytes=N         answer with N bytes of `pattern_bytes` instead of JSON
      reflect=1       answer with the request body itself
      framing=length|chunked|close   how the body is framed (default length)
      delay=S         sleep S seconds before answering
      hold=1          wait until `release` is set before answering
      hop=1           name a header of the answer in its Connection header (x-upstream-hop: a hop-by-hop one)
    """

    def __init__(self, name: str = "echo") -> None:
        super().__init__(name)
        self.release = trio.Event()
        self.body_started = trio.Event()
        self.active = 0
        self.max_active = 0
        self.extra_headers: list[tuple[bytes, bytes]] = []  # on every answer (framing=close apart)

    def on_body_data(self) -> None:
        self.body_started.set()

    async def handle_conn(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_EVENT)
        while True:
            seen = await self._read_request(stream, conn)
            if seen is None:
                return
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            try:
                keep = await self._answer(stream, conn, seen)
            finally:
                self.active -= 1
            if not keep or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _answer(self, stream: trio.SocketStream, conn: h11.Connection, seen: Seen) -> bool:
        query = {k: v[0] for k, v in parse_qs(urlsplit(seen.target).query).items()}
        if "delay" in query:
            await trio.sleep(float(query["delay"]))
        if query.get("hold") == "1":
            await self.release.wait()
        status = int(query.get("status", "200"))
        if "bytes" in query:
            body, ctype = pattern_bytes(int(query["bytes"])), b"application/octet-stream"
        elif query.get("reflect") == "1":
            body, ctype = seen.body, b"application/octet-stream"
        else:
            body = json.dumps({
                "name": self.name,
                "method": seen.method,
                "path": seen.target,
                "headers": seen.headers,
                "body": seen.body.decode("latin-1") if len(seen.body) <= 65536 else None,
                "body_len": len(seen.body),
                "body_sha256": hashlib.sha256(seen.body).hexdigest(),
            }).encode()
            ctype = b"application/json"
        no_body = seen.method == "HEAD" or status in (204, 304)
        framing = query.get("framing", "length")
        headers = [(b"content-type", ctype), (b"x-backend", self.name.encode()), *self.extra_headers]
        if query.get("hop") == "1":
            headers += [(b"connection", b"keep-alive, X-Upstream-Hop"), (b"x-upstream-hop", b"secret")]
        if framing == "close":
            # Close-delimited: no Content-Length, no chunking; the end of the body is the end of the connection.
            head = b"HTTP/1.1 %d OK\r\ncontent-type: %b\r\nx-backend: %b\r\nconnection: close\r\n\r\n" % (
                status, ctype, self.name.encode())
            await stream.send_all(head + (b"" if no_body else body))
            return False
        if framing == "length" and status != 204:
            headers.append((b"content-length", b"%d" % len(body)))
        await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
        if not no_body:
            step = 65536 if framing == "length" else 4096
            for i in range(0, len(body), step):
                await stream.send_all(conn.send(h11.Data(data=body[i:i + step])))
        await stream.send_all(conn.send(h11.EndOfMessage()))
        return True


class SseBackend(_Backend):
    """Sends a `text/event-stream` response: `events` events `gap` seconds apart, recording when each was sent;
    with `length`, framed by a Content-Length of them all (chunked otherwise)."""

    def __init__(self, events: int = 3, gap: float = 1.2, name: str = "sse", length: bool = False) -> None:
        super().__init__(name)
        self.events = events
        self.gap = gap
        self.length = length
        self.sent_at: list[float] = []

    @staticmethod
    def event(i: int) -> bytes:
        return b"id: %d\nevent: message\ndata: {\"n\": %d}\n\n" % (i, i)

    async def handle_conn(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        seen = await self._read_request(stream, conn)
        if seen is None:
            return
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        if self.length:
            headers.append((b"content-length", b"%d" % sum(len(self.event(i)) for i in range(self.events))))
        await stream.send_all(conn.send(h11.Response(status_code=200, headers=headers)))
        for i in range(self.events):
            if i:
                await trio.sleep(self.gap)
            self.sent_at.append(trio.current_time())
            await stream.send_all(conn.send(h11.Data(data=self.event(i))))
        await stream.send_all(conn.send(h11.EndOfMessage()))


class ScriptedBackend(_Backend):
    """Answers a request by writing `pieces` as they are, `gap` seconds apart, then keeps the connection `hold`
    seconds: bytes a test controls (a head in pieces, header fields h11 would not send)."""

    def __init__(self, pieces: list[bytes], gap: float = 0.0, hold: float = 0.0, name: str = "scripted") -> None:
        super().__init__(name)
        self.pieces = pieces
        self.gap = gap
        self.hold = hold

    async def handle_conn(self, stream: trio.SocketStream) -> None:
        if await self._read_request(stream, h11.Connection(h11.SERVER)) is None:
            return
        for piece in self.pieces:
            await stream.send_all(piece)
            await trio.sleep(self.gap)
        await trio.sleep(self.hold)


class BadBackend(_Backend):
    """A misbehaving upstream. Modes, after reading a whole request:
      close     close the connection without answering
      truncate  send `Content-Length: 1000`, then 10 bytes, then close
      truncate-chunked  send a chunked head and one 10-byte chunk, then close (no last chunk)
      bad-chunk  send a chunked head and, in the same write, a chunk whose data runs past its size, then close
      stall     send `Content-Length: 1000` and 10 bytes, then nothing more (until the test ends)
      hang      never answer (until the test ends)
    """

    def __init__(self, mode: str, name: str = "bad") -> None:
        super().__init__(name)
        self.mode = mode

    async def handle_conn(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        seen = await self._read_request(stream, conn)
        if seen is None:
            return
        if self.mode == "close":
            return
        if self.mode == "truncate":
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 1000\r\n\r\n"
                                  + b"x" * 10)
            await trio.sleep(0.05)
            return
        if self.mode == "truncate-chunked":
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n"
                                  b"a\r\n0123456789\r\n")
            await trio.sleep(0.05)
            return
        if self.mode == "bad-chunk":
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n"
                                  b"3\r\nabcX\r\n")
            await trio.sleep(0.05)
            return
        if self.mode == "stall":
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 1000\r\n\r\n"
                                  + b"x" * 10)
            await trio.sleep_forever()
        if self.mode == "hang":
            await trio.sleep_forever()
        raise ValueError(f"unknown mode {self.mode}")


# --- config helpers -------------------------------------------------------------------------------------------------


def service(name: str, url: str, routes: list[dict[str, Any]] | None = None, **fields: Any) -> dict[str, Any]:
    """A service dict with nested routes (default: one route for every path)."""
    return {"name": name, "url": url, **fields, "routes": routes if routes is not None else [{"paths": ["/"]}]}


def upstream(name: str, ports: list[int], weights: list[int] | None = None, **fields: Any) -> dict[str, Any]:
    """An upstream dict with nested targets on 127.0.0.1."""
    weights = weights or [100] * len(ports)
    return {"name": name, **fields,
            "targets": [{"target": f"127.0.0.1:{p}", "weight": w} for p, w in zip(ports, weights, strict=True)]}


async def wait_until(predicate: Any, what: str, timeout: float = 10.0) -> Any:
    """The first true value of `predicate()`, polled every 20 ms; fails the test after `timeout` seconds."""
    with trio.fail_after(timeout):
        while not (result := predicate()):
            await trio.sleep(0.02)
    return result


class UdpCollector:
    """A log or metrics collector stand-in on a UDP port of `address` (any loopback address; udp-log, statsd,
    datadog): the datagrams it received and the address each came from; `close` stops listening (the port then
    answers ICMP port unreachable)."""

    def __init__(self, port: int = 0, address: str = "127.0.0.1") -> None:
        self.port, self.address = port, address
        self.datagrams: list[bytes] = []
        self.sources: list[tuple[str, int]] = []
        self._socket: trio.socket.SocketType | None = None

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        sock = self._socket = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            await sock.bind((self.address, self.port))
            self.port = sock.getsockname()[1]
            task_status.started()
            try:
                while True:
                    data, source = await sock.recvfrom(65536)
                    self.datagrams.append(data)
                    self.sources.append(source)
            except (OSError, trio.ClosedResourceError):  # closed
                pass

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()

    @property
    def entries(self) -> list[Any]:
        """The datagrams as JSON documents (udp-log's)."""
        return [json.loads(d) for d in self.datagrams]

    async def received(self, n: int) -> list[str]:
        """The first `n` datagrams as text, once they came, after a pause in which no more may come."""
        await wait_until(lambda: len(self.datagrams) >= n, f"{n} datagrams")
        await trio.sleep(0.2)
        assert len(self.datagrams) == n, self.datagrams
        return [d.decode() for d in self.datagrams]


# --- client ---------------------------------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    chunks: list[tuple[float, bytes]] = field(default_factory=list)  # (arrival time, data) as received

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def json(self):  # noqa: ANN201 - any JSON value
        return json.loads(self.body)


class Client:
    """One HTTP/1.1 client connection (h11), for several requests in a row (keep-alive)."""

    def __init__(self, stream: trio.SocketStream, host: str = "gateway.test") -> None:
        self.stream = stream
        self.host = host  # the Host header of requests that name none
        self.conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_EVENT)

    @classmethod
    async def connect(cls, port: int, host: str = "gateway.test") -> Client:
        return cls(await trio.open_tcp_stream("127.0.0.1", port), host)

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def request(self, method: str, target: str, headers: list[tuple[str, str]] | None = None,
                      body: bytes | list[bytes] = b"", host: str | None = None) -> Reply:
        """Send a request (a list body is sent chunked, piece by piece) and read the whole response."""
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        hdrs = [("host", host or self.host)] + list(headers or [])
        names = {k.lower() for k, _ in hdrs}
        if isinstance(body, list):
            if "transfer-encoding" not in names:
                hdrs.append(("transfer-encoding", "chunked"))
        elif body and "content-length" not in names:
            hdrs.append(("content-length", str(len(body))))
        head = self.conn.send(h11.Request(method=method, target=target, headers=hdrs))
        if isinstance(body, bytes) and len(body) <= 65536:
            # A small request goes out in one write, as real clients send it: the gateway sees it whole.
            await self.stream.send_all(head + self.conn.send(h11.Data(data=body)) + self.conn.send(h11.EndOfMessage()))
            return await self.read_response()
        await self.stream.send_all(head)
        for piece in body if isinstance(body, list) else [body]:
            for i in range(0, len(piece), 1 << 20):
                await self.stream.send_all(self.conn.send(h11.Data(data=piece[i:i + (1 << 20)])))
        await self.stream.send_all(self.conn.send(h11.EndOfMessage()))
        return await self.read_response()

    async def read_response(self) -> Reply:
        reply: Reply | None = None
        body = bytearray()
        while True:
            ev = self.conn.next_event()
            if ev is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
                continue
            if isinstance(ev, h11.InformationalResponse):
                continue
            if isinstance(ev, h11.Response):
                reply = Reply(ev.status_code, [(k.decode(), v.decode("latin-1")) for k, v in ev.headers], b"")
            elif isinstance(ev, h11.Data):
                assert reply is not None
                reply.chunks.append((trio.current_time(), bytes(ev.data)))
                body += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                assert reply is not None
                reply.body = bytes(body)
                return reply
            else:
                raise AssertionError(f"unexpected {ev!r}")


async def request(port: int, method: str = "GET", target: str = "/", **kwargs) -> Reply:  # noqa: ANN003
    """One request on a fresh connection."""
    async with await Client.connect(port) as client:
        return await client.request(method, target, **kwargs)


async def raw_exchange(port: int, data: bytes | list[bytes], pause: float = 0.0,
                       timeout: float = 5.0) -> tuple[bytes, bool]:
    """Send raw bytes (pieces `pause` seconds apart), then read until the gateway closes.

    Returns (everything received, whether the connection ended with a reset rather than a clean close).
    """
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        with trio.fail_after(timeout):
            for i, piece in enumerate(data if isinstance(data, list) else [data]):
                if i and pause:
                    await trio.sleep(pause)
                await stream.send_all(piece)
            return await read_to_end(stream)
    finally:
        await trio.aclose_forcefully(stream)


async def read_to_end(stream: trio.SocketStream) -> tuple[bytes, bool]:
    """Read until the peer closes: (everything received, whether it ended with a reset rather than a clean close)."""
    received = bytearray()
    while True:
        try:
            chunk = await stream.receive_some(65536)
        except trio.BrokenResourceError:
            return bytes(received), True
        if not chunk:
            return bytes(received), False
        received += chunk


class ConsumerExchange:
    """What an access policy deciding on the consumer alone (acl) reads and calls on an exchange, without a gateway:
    the consumer, and kong.response.error (what it answered, in `answered`)."""

    def __init__(self, consumer: Any) -> None:
        self.consumer = consumer
        self.answered: tuple[int, str | None] | None = None

    async def respond_error(self, status: int, message: str | None = None, extra: Any = None) -> None:
        self.answered = (status, message)


async def read_head(stream: trio.SocketStream) -> bytes:
    """A response head read from `stream` (to its blank line, not included); closing before it is a test failure."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        assert chunk, f"closed before a response head: {data!r}"
        data += chunk
    return data.partition(b"\r\n\r\n")[0]


def parse_raw_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body bytes after the head) of a raw response; the body is not de-chunked."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


class EndlessSse(_Backend):
    """One event, then silence until the gateway closes the connection; records when that happened."""

    def __init__(self) -> None:
        super().__init__("sse")
        self.closed_at: float | None = None
        self.seen: list[Seen] = []

    async def handle_conn(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        seen = await self._read_request(stream, conn)
        if seen is None:
            return
        await one_event_then_silence(stream, conn)
        self.closed_at = trio.current_time()


async def one_event_then_silence(stream: trio.SocketStream, conn: h11.Connection) -> None:
    """Answer with an event stream of one event, then send nothing until the peer closes the connection."""
    await stream.send_all(conn.send(h11.Response(status_code=200, headers=[
        (b"content-type", b"text/event-stream")])) + conn.send(h11.Data(data=b"data: one\n\n")))
    try:
        while await stream.receive_some(1024):
            pass
    except trio.BrokenResourceError:
        pass


async def serve_on_addresses(nursery: trio.Nursery, addresses: list[str], make: Any) -> tuple[int, list[Any]]:
    """One backend (`make(address)`, named after it) on each loopback address, all on the same port: the addresses
    of one name (see dns_server.Names)."""
    port = free_port()
    backends = []
    for address in addresses:
        backend = make(address)
        backend.host, backend.port = address, port
        await nursery.start(backend.serve)
        backends.append(backend)
    return port, backends


async def upload(port: int, head: bytes, size: int, timeout: float = 20) -> tuple[bytes, bool]:
    """Send `head` and a body of `size` bytes, then read the answer, as urllib3 (requests) and many clients do:
    (everything received, whether the upload failed on a reset, which such a client reports instead of the answer)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    reset = False
    with trio.fail_after(timeout):
        try:
            await stream.send_all(head)
            chunk = b"x" * 65536
            for _ in range(size // len(chunk)):
                await stream.send_all(chunk)
        except trio.BrokenResourceError:
            reset = True
        received, _ = await read_to_end(stream)
    await stream.aclose()
    return received, reset


async def log_lines(path: Any, n: int, timeout: float = 10.0) -> list[dict]:
    """The first n JSON lines of a log file (a pathlib.Path), waiting (bounded) for the writer task to write them."""
    with trio.fail_after(timeout):
        while True:
            text = path.read_text() if path.exists() else ""
            lines = text.splitlines()
            if len(lines) >= n:
                return [json.loads(line) for line in lines]
            await trio.sleep(0.02)


async def held_while_the_last_chunk_waits(ex: Any, peer: socket.socket,
                                          reader: Callable[[Any], Awaitable[object]], sent: bytes,
                                          size: int) -> tuple[object, int]:
    """(what `reader` read, the bytes traced as held once `size` body bytes came from `peer` and the last chunk has
    not): `sent` (chunks of a body) is sent, the memory measured, then the last chunk."""
    got: list[object] = []
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:

                async def read() -> None:
                    got.append(await reader(ex))

                nursery.start_soon(read)
                await trio.to_thread.run_sync(peer.sendall, sent)
                while ex.body_received < size:  # read all but the last chunk, which has not come
                    await trio.sleep(0.01)
                held = tracemalloc.get_traced_memory()[0] - before
                peer.sendall(b"0\r\n\r\n")
    finally:
        tracemalloc.stop()
    [result] = got
    return result, held
