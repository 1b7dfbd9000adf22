"""A bounded HTTP load generator for fault tests: counts every request's outcome, never retries behind your back.

Each of `concurrency` clients sends POSTs for `duration` seconds, either on one kept-alive connection (reconnecting
after a failure) or on a new connection per request. A request is ok when a complete 200 response arrives and, with
`integrity` (the default), when that response is the one the backend gave to THAT request, whole:

- every request carries a unique id, in an X-Load-Id header and as the JSON-RPC id of its body; body sizes vary
  (most small, some `LARGE` ones of 64-300 KB) and so do the sizes of the answers asked for;
- the backend (an echoing one: scripts/demo_backend.py, the Backend of tests/test_shared_state.py) answers
  `echo_answer(id, body)`, which holds the id, the request's length and hash and a filler of the asked size made
  of the id, and sends the id back in X-Load-Id;
- the client compares the 200's body byte for byte with what it expects. A mismatch is never ok; it is counted as
  `misdelivered` (another request's id), `truncated` (shorter than the answer, yet framed as complete) or `corrupt`
  (anything else), each in `errors` as a kind of its own, with a sample in `samples`.

Failures the client can see as failures (a non-200 status, a connection cut before a complete response, a timeout)
are counted under their own names (`status 502`, `ConnectionError`, `RemoteProtocolError`, ...).
"""

from __future__ import annotations

import collections
import importlib.util
import random
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import h11
import trio

BODY = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami"}}'
LOAD_ID = "x-load-id"
INTEGRITY_KINDS = ("misdelivered", "truncated", "corrupt")
LARGE = (64 << 10, 300 << 10)  # the size range of large bodies, requests and answers
MAX_EVENT = 1 << 20
Headers = list[tuple[bytes, bytes]]
_FOUND_ID = re.compile(rb'"load_id":"([A-Za-z0-9._-]+)"')


# ---- the echo protocol: scripts/demo_backend.py's echo_answer, the one answer every echoing backend gives ----------

def _demo_backend() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "scripts" / "demo_backend.py"
    spec = importlib.util.spec_from_file_location("demo_backend", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


echo_answer: Callable[[str, bytes], bytes] = _demo_backend().echo_answer


def filler(load_id: str, n: int) -> bytes:
    """`n` bytes made of the id repeated: a piece of another request's answer spliced in changes them."""
    unit = (load_id + ".").encode()
    return (unit * (n // len(unit) + 1))[:n]


def load_body(load_id: str, size: int, reply: int, pace: float = 0.0) -> bytes:
    """A JSON-RPC tools/call of about `size` bytes (padded with filler) asking for `reply` bytes of filler (sent in
    16 KB pieces `pace` seconds apart, with a pace)."""
    paced = b'"pace":%g,' % pace if pace else b""
    head = b'{"jsonrpc":"2.0","id":"%s","method":"tools/call","params":{"name":"echo","arguments":{"reply":%d,' \
           b'%b"pad":"' % (load_id.encode(), reply, paced)
    tail = b'"}}}'
    return head + filler(load_id, max(size - len(head) - len(tail), 0)) + tail


def pick_size(rng: random.Random, large: float) -> int:
    """A body size: with probability `large`, 64-300 KB; else up to 2 KB."""
    return rng.randint(*LARGE) if rng.random() < large else rng.randint(0, 2048)


def verdict(load_id: str, body: bytes, status: int, headers: Headers, data: bytes) -> str | None:
    """None when the response is this request's answer, whole; else the kind of failure."""
    if status != 200:
        return f"status {status}"
    expected = echo_answer(load_id, body)
    echoed = next((v.decode("latin-1") for k, v in headers if k == LOAD_ID.encode()), None)
    if data == expected and echoed in (None, load_id):
        return None
    found = _FOUND_ID.search(data)
    if (echoed is not None and echoed != load_id) or (found is not None and found.group(1).decode() != load_id):
        return "misdelivered"
    if len(data) < len(expected):
        return "truncated"
    return "corrupt"


# ---- counting ------------------------------------------------------------------------------------------------------


@dataclass
class LoadResult:
    ok: int = 0
    failed: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    failure_times: list[float] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)  # what the first integrity failures looked like

    def fail(self, why: str, started: float, detail: str = "") -> None:
        self.failed += 1
        self.errors[why] += 1
        self.failure_times.append(time.monotonic() - started)
        if detail and len(self.samples) < 5:
            self.samples.append(f"{why}: {detail}")

    @property
    def misdelivered(self) -> int:
        return self.errors["misdelivered"]

    @property
    def truncated(self) -> int:
        return self.errors["truncated"]

    @property
    def corrupt(self) -> int:
        return self.errors["corrupt"]

    @property
    def integrity_failures(self) -> int:
        """Responses framed as complete 200s that were not the request's whole answer."""
        return sum(self.errors[k] for k in INTEGRITY_KINDS)

    def merge(self, other: LoadResult) -> LoadResult:
        self.ok += other.ok
        self.failed += other.failed
        self.errors.update(other.errors)
        self.failure_times += other.failure_times
        self.samples += other.samples[:max(0, 5 - len(self.samples))]
        return self

    def __str__(self) -> str:
        return f"ok={self.ok} failed={self.failed} {dict(self.errors)}" + (f" {self.samples}" if self.samples else "")


# ---- requests ------------------------------------------------------------------------------------------------------


def request_headers(port: int, body: bytes, close: bool, load_id: str | None = None) -> list[tuple[str, str]]:
    headers = [("host", f"127.0.0.1:{port}"), ("content-type", "application/json"),
               ("content-length", str(len(body)))]
    if load_id is not None:
        headers.append((LOAD_ID, load_id))
    if close:
        headers.append(("connection", "close"))
    return headers


async def read_response(stream: trio.SocketStream, conn: h11.Connection) -> tuple[int, Headers, bytes]:
    """The next complete response on `conn`: (status, headers, body); ConnectionError when the connection ends
    before its end (h11 raises RemoteProtocolError when it ends inside a body framed by length or chunks)."""
    status: int = 0
    headers: Headers = []
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            if not data and status == 0:
                raise ConnectionError("closed before a complete response")
            conn.receive_data(data)
        elif isinstance(event, h11.Response):
            status, headers = event.status_code, list(event.headers)
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return status, headers, bytes(body)
        elif isinstance(event, h11.ConnectionClosed):
            raise ConnectionError("closed before a complete response")


async def one_request(stream: trio.SocketStream, conn: h11.Connection, port: int, close: bool,
                      path: str = "/") -> int:
    """One small JSON-RPC POST (BODY, no id) to `path` on an open connection; the status of the complete response."""
    await stream.send_all(conn.send(h11.Request(method="POST", target=path,
                                                headers=request_headers(port, BODY, close))) +
                          conn.send(h11.Data(data=BODY)) + conn.send(h11.EndOfMessage()))
    return (await read_response(stream, conn))[0]


async def checked_request(stream: trio.SocketStream, conn: h11.Connection, port: int, close: bool, load_id: str,
                          body: bytes, path: str = "/") -> str | None:
    """One POST of `body` with id `load_id`; None when its answer came whole and its own (see `verdict`)."""
    head = conn.send(h11.Request(method="POST", target=path, headers=request_headers(port, body, close, load_id)))
    await stream.send_all(head + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
    status, headers, data = await read_response(stream, conn)
    return verdict(load_id, body, status, headers, data)


class Ids:
    """Unique request ids (`<run>-<client>-<n>`) and their bodies: sizes from a seeded generator, a share `large`
    of large ones (requests and answers independently), and a share `slow` of the large answers paced (PACE)."""

    PACE = 0.004  # 300 KB in about 75 ms

    def __init__(self, large: float = 0.2, seed: int | None = None, slow: float = 0.0) -> None:
        self.run = uuid.uuid4().hex[:8]
        self.large = large
        self.slow = slow
        self.rng = random.Random(seed)
        self.n = 0

    def next(self, client: int) -> tuple[str, bytes]:
        self.n += 1
        load_id = f"{self.run}-{client}-{self.n}"
        rng = self.rng
        size, reply = pick_size(rng, self.large), pick_size(rng, self.large)
        pace = self.PACE if reply >= LARGE[0] and self.slow and rng.random() < self.slow else 0.0
        return load_id, load_body(load_id, size, reply, pace)


async def client(port: int, running: Callable[[], bool], keepalive: bool, result: LoadResult, started: float,
                 index: int, ids: Ids | None, path: str) -> None:
    """One client of a load: requests one after the other while `running()`, on a kept-alive connection (a new one
    after a failure) or a new one each, counted into `result`; with `ids`, each checked (see checked_request)."""
    stream: trio.SocketStream | None = None
    conn: h11.Connection | None = None
    while running():
        load_id = ""
        try:
            if stream is None:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_EVENT)
            assert conn is not None
            with trio.fail_after(10):
                if ids is None:
                    status = await one_request(stream, conn, port, not keepalive, path)
                    why = None if status == 200 else f"status {status}"
                else:
                    load_id, body = ids.next(index)
                    why = await checked_request(stream, conn, port, not keepalive, load_id, body, path)
            if why is None:
                result.ok += 1
            else:
                result.fail(why, started, f"request {load_id}" if why in INTEGRITY_KINDS else "")
            if keepalive and conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                conn.start_next_cycle()
            else:
                await stream.aclose()
                stream = None
        except (OSError, ConnectionError, trio.BrokenResourceError, h11.ProtocolError, trio.TooSlowError) as e:
            result.fail(type(e).__name__, started)
            if stream is not None:
                await stream.aclose()
            stream = None
            await trio.sleep(0.01)
    if stream is not None:
        await stream.aclose()


async def run_load(port: int, *, concurrency: int = 10, duration: float = 3.0, keepalive: bool = True,
                   integrity: bool = True, large: float = 0.2, slow: float = 0.0, path: str = "/",
                   stop: trio.Event | None = None, result: LoadResult | None = None) -> LoadResult:
    """Load the port for `duration` seconds, or until `stop` is set; returns the counts (kept in `result` as they
    come, when given). With `integrity`, every 200 is checked to be the request's own answer, whole (the backend must
    echo: see the module's doc); `large` is the share of large request bodies (and, independently, of large
    answers), `slow` that of large answers sent slowly (paced)."""
    result = LoadResult() if result is None else result
    started = time.monotonic()
    deadline = started + duration

    def running() -> bool:
        return time.monotonic() < deadline and not (stop is not None and stop.is_set())

    ids = Ids(large, slow=slow) if integrity else None
    async with trio.open_nursery() as nursery:
        for i in range(concurrency):
            nursery.start_soon(client, port, running, keepalive, result, started, i, ids, path)
    return result
