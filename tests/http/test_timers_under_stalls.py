"""Event-loop stalls (a GC pause, CPU starvation) against the coarse timers (gateway.http.timers): bytes that reached a
socket before a deadline are read, never timed out.

nginx handles the events epoll reported before it expires timers, against the time read right after that epoll:
ngx_epoll_process_events reads the clock after epoll_wait (src/event/modules/ngx_epoll_module.c:800-805), and
ngx_process_events_and_timers runs the read handlers (:248) before ngx_event_expire_timers (:261); a read handler
re-arms its timer as it reads (src/http/ngx_http_upstream.c:3601, 3810).

The backends are threads (they answer while the gateway's Trio loop is stalled). A stall is a time.sleep of the
loop itself, placed by a Trio instrument right before a chosen step of the sweeper's task (`StallBeforeSweeper`):
step 0 resumes it from its wait (it woke), the next ones follow its turns after that. A stall before another task
that runs ahead of the sweeper in the same batch is the same stall."""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any, TypeVar

import pytest
import trio
import trio.testing
from backends import service

from gateway.http.net import Conn
from gateway.http.timers import ConnTimer, Phase, Timers
from gateway.pipeline.keepalive import Stream
from gateway.pipeline.streamwatch import StreamWatch

STALL = 0.35
READ_MS = 300  # the services' read_timeout
SEND_AFTER = 0.2  # the backends' next bytes: 200 ms after the last ones, within read_timeout
# The sweeper wakes 100 ms into a wait (write_timeout 100 ms leaves a stale heap entry then, as any other
# connection's timer would): a stall there (0.1 s .. 0.45 s) outlasts the next bytes (0.2 s) and the deadline (0.3 s)
WRITE_MS = 100
T = TypeVar("T")


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class ThreadBackend:
    """A plain-socket HTTP/1.1 server in a thread: answers by path, records when requests came and what it sent."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.requests: list[float] = []  # when each came
        self.sent: list[tuple[str, float]] = []  # (what, when it was written)
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.sock.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                self.requests.append(time.monotonic())
                self._answer(conn, head.split(b" ")[1].decode())
        except OSError:
            return
        finally:
            conn.close()

    def _send(self, conn: socket.socket, what: str, data: bytes) -> None:
        conn.sendall(data)
        self.sent.append((what, time.monotonic()))

    def _answer(self, conn: socket.socket, path: str) -> None:
        if path.startswith(("/plain", "/quick")):  # the answer, SEND_AFTER after the request came (/quick: at once)
            if path.startswith("/plain"):
                time.sleep(SEND_AFTER)
            self._send(conn, "answer", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        elif path.startswith("/sse"):  # an event at once, SEND_AFTER later the next, the end after the stall
            self._send(conn, "head", b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                     b"Transfer-Encoding: chunked\r\n\r\n" + chunk(b"data:1\n\n"))
            time.sleep(SEND_AFTER)
            self._send(conn, "event", chunk(b"data:2\n\n"))
            time.sleep(READ_MS / 1000 - 0.02)  # (the stream parks again: a timer that fired cuts it there)
            self._send(conn, "end", chunk(b"data:3\n\n") + b"0\r\n\r\n")
        elif path.startswith("/chunks"):  # a first chunk at once, SEND_AFTER later 100 one-byte chunks in one write
            self._send(conn, "head", b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                                     b"Transfer-Encoding: chunked\r\n\r\n1\r\nA\r\n")
            time.sleep(SEND_AFTER)
            self._send(conn, "rest", b"1\r\nx\r\n" * 100 + b"0\r\n\r\n")


def serving(backend: ThreadBackend, retries: int) -> dict[str, Any]:
    """The gateway's config: one service to `backend` with READ_MS and WRITE_MS, `retries` tries again."""
    return {"services": [service("s", f"http://127.0.0.1:{backend.port}", read_timeout=READ_MS,
                                 write_timeout=WRITE_MS, retries=retries)]}


def find_task(qualname: str) -> trio.lowlevel.Task:
    """The running task whose coroutine function is `qualname` (Class.method: not another class's method of the
    same name)."""
    stack = [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        if task.coro.cr_code.co_qualname == qualname:
            return task
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    raise LookupError(qualname)


class StallBeforeSweeper(trio.abc.Instrument):
    """Stops the loop dead for STALL seconds right before the sweeper's `step`-th step since it last woke (0: the step
    that resumes it from its wait), once per `arm`, if that step comes before the armed window's end."""

    def __init__(self, sweeper: trio.lowlevel.Task, step: int) -> None:
        self.sweeper = sweeper
        self.step = step
        self.steps = -1  # of the sweeper since it woke (-1: not woken yet)
        self.until = -math.inf  # the window's end (time.monotonic)
        self.stalled = 0

    def arm(self, until: float) -> None:
        self.until = until

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is not self.sweeper:
            return
        awaiting = getattr(task.coro.cr_await, "cr_code", None)
        self.steps = 0 if awaiting is not None and awaiting.co_name == "wait" else self.steps + 1
        if self.steps == self.step and time.monotonic() < self.until:
            self.until = -math.inf
            time.sleep(STALL)
            self.stalled += 1


@contextmanager
def stalls_at(step: int) -> Iterator[StallBeforeSweeper]:
    """A StallBeforeSweeper of the running gateway's sweeper, installed for the block."""
    instrument = StallBeforeSweeper(find_task("Timers.expire_forever"), step)
    trio.lowlevel.add_instrument(instrument)
    try:
        yield instrument
    finally:
        trio.lowlevel.remove_instrument(instrument)


async def when(predicate: Callable[[], object]) -> None:
    with trio.fail_after(5):
        while not predicate():
            await trio.sleep(0.002)


def window_to(backend: ThreadBackend, after: str | None = None) -> Callable[[], float | None]:
    """The stall window of a round: from the next request's arrival (or the backend's next `after` write) to just
    before the backend's next bytes, so that the sweeper wakes before they come and stalls over them and the
    deadline; None until it opens."""
    requests, sent = len(backend.requests), len(backend.sent)

    def window() -> float | None:
        if after is None:
            return backend.requests[requests] + SEND_AFTER - 0.03 if len(backend.requests) > requests else None
        times = [t for what, t in backend.sent[sent:] if what == after]
        return times[0] + SEND_AFTER - 0.03 if times else None
    return window


async def get(port: int, target: str, instrument: StallBeforeSweeper, backend: ThreadBackend,
              after: str | None = None) -> tuple[bytes, bytes, int]:
    """GET on a new connection with Connection: close: (head, body as received, chunk framing included, how many
    requests the backend got meanwhile). The `instrument` is armed as the round's window opens (`window_to`)."""
    window = window_to(backend, after)
    requests = len(backend.requests)
    async with trio.open_nursery() as nursery:
        async def arm() -> None:
            await when(window)
            instrument.arm(window() or 0.0)  # (open by now)

        nursery.start_soon(arm)
        with trio.fail_after(5):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            try:
                await stream.send_all(b"GET %s HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n"
                                      % target.encode())
                data = b""
                while piece := await stream.receive_some(65536):
                    data += piece
            finally:
                await trio.aclose_forcefully(stream)
        nursery.cancel_scope.cancel()
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body, len(backend.requests) - requests


async def stalled_round(instrument: StallBeforeSweeper, round_: Callable[[], Awaitable[T]], tries: int = 4) -> T:
    """A round (`round_()`) in which the instrument stalled: tried again, at most `tries` times, while it did not."""
    for _ in range(tries):
        stalled = instrument.stalled
        result = await round_()
        if instrument.stalled > stalled:
            return result
    pytest.fail(f"the sweeper never woke in the stall window in {tries} rounds")


# ----------------------------------------------------------------------------------------------------------------
# The sweeper: it expires against the time read as it woke, after the tasks the next poll wakes have run
# ----------------------------------------------------------------------------------------------------------------

async def test_an_answer_sent_within_read_timeout_gets_no_504_after_a_stall(nursery, gateway):
    """The backend answers 200 ms after the request came (read_timeout 300 ms); the loop stalls from 0.1 s to 0.45 s,
    wherever that lands in the sweeper's turns: the answer is read before the timer is expired (nginx's
    ngx_process_events_and_timers, ngx_event.c:248 before :261), not a 504."""
    backend = ThreadBackend()
    try:
        port = await gateway(serving(backend, retries=0))
        for step in (0, 1):
            with stalls_at(step) as instrument:
                head, _, _ = await stalled_round(instrument, partial(get, port, "/plain", instrument, backend))
            came, answered = backend.requests[-1], backend.sent[-1][1]
            assert answered - came < READ_MS / 1000 - 0.05, "the backend was late: no finding"
            assert head.startswith(b"HTTP/1.1 200"), \
                f"stall before the sweeper's step {step}: answered {answered - came:.3f}s after the request came " \
                f"(read_timeout 0.3s), yet: {head[:40]!r}"
    finally:
        backend.close()


async def test_a_retryable_try_answered_in_time_is_not_closed_after_a_stall(nursery, gateway):
    """retries=1 (the timer closes a retryable try's upstream connection, not the client's): a try answered within
    read_timeout is relayed after a stall over its deadline, and no second try goes out."""
    backend = ThreadBackend()
    try:
        port = await gateway(serving(backend, retries=1))
        for step in (0, 1):
            with stalls_at(step) as instrument:
                head, _, tries = await stalled_round(instrument, partial(get, port, "/plain", instrument, backend))
            assert head.startswith(b"HTTP/1.1 200"), f"stall before the sweeper's step {step}: {head[:40]!r}"
            assert tries == 1, f"stall before the sweeper's step {step}: the try answered in time was timed out"
    finally:
        backend.close()


def keepalive_client(port: int, out: dict[str, Any]) -> None:
    """A thread: GET /quick, then SEND_AFTER idle on the kept-alive connection, then GET /quick again."""
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(3)
    try:
        for n in ("1", "2"):
            if n == "2":
                time.sleep(SEND_AFTER)
                out["second_sent"] = time.monotonic()
            s.sendall(b"GET /quick HTTP/1.1\r\nHost: gw.test\r\n\r\n")
            data = b""
            while not data.endswith(b"\r\n\r\nok"):
                piece = s.recv(65536)
                if not piece:
                    out[n] = data or b"closed without an answer"
                    return
                data += piece
            out[n] = data
            out["answered" + n] = time.monotonic()
    except OSError as e:
        out[n] = repr(e).encode()
    finally:
        s.close()


async def keepalive_round(port: int, instrument: StallBeforeSweeper) -> dict[str, Any]:
    """A connection served and left idle (its keepalive_timeout wakes the sweeper), then 0.2 s later a
    `keepalive_client`, the stall armed from its first answer to just before its second request."""
    other = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        await other.send_all(b"GET /quick HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        data = b""
        while not data.endswith(b"ok"):
            data += await other.receive_some(65536)
        await trio.sleep(0.2)
        out: dict[str, Any] = {}
        thread = threading.Thread(target=keepalive_client, args=(port, out), daemon=True)
        thread.start()
        await when(lambda: "answered1" in out)
        instrument.arm(out["answered1"] + SEND_AFTER - 0.03)
        await when(lambda: not thread.is_alive())
        return out
    finally:
        await trio.aclose_forcefully(other)


async def test_a_keepalive_request_sent_in_time_is_served_after_a_stall(nursery, gateway):
    """keepalive_timeout_s 0.3; the client's next request 0.2 s after its answer. Another connection, idle since 0.2 s
    before, times out meanwhile (the sweeper wakes for it); a stall there over the deadline must not drop the first
    connection's request, sent in time (nginx reads it: ngx_http_set_keepalive's read handler runs first)."""
    backend = ThreadBackend()
    try:
        port = await gateway({"services": [service("s", f"http://127.0.0.1:{backend.port}")]},
                             keepalive_timeout_s=0.3)
        for step in (0, 1):
            with stalls_at(step) as instrument:
                out = await stalled_round(instrument, partial(keepalive_round, port, instrument))
            waited = out["second_sent"] - out["answered1"]
            assert waited < 0.25, "the client was late: no finding"
            assert out["2"].startswith(b"HTTP/1.1 200"), \
                f"stall before the sweeper's step {step}: next request sent {waited:.3f}s into " \
                f"keepalive_timeout_s 0.3: {out['2']!r}"
    finally:
        backend.close()


# ----------------------------------------------------------------------------------------------------------------
# The stream watch: it re-arms a parked stream's read_timeout as it wakes it, a turn before the stream's task runs
# ----------------------------------------------------------------------------------------------------------------

async def test_the_stream_watch_rearms_a_parked_streams_read_timeout_when_its_upstream_speaks():
    """The watch's task wakes the stream's, which runs a loop turn later: an expiry in between must find the deadline
    re-armed from the upstream's bytes, as nginx's read handler re-arms it (ngx_http_upstream.c:3810)."""
    timers = Timers()
    timer = ConnTimer(math.inf, Phase.BUSY)
    timers.add(timer)
    timer.set(READ_MS / 1000, Phase.UPSTREAM_BODY)
    old_deadline = timer.at
    watch, stream = StreamWatch(), Stream(None, 0.0, 15.0)
    upstream, upstream_peer = socket.socketpair()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch.wait_upstream, stream, Conn(upstream), timer, READ_MS / 1000)
            await trio.testing.wait_all_tasks_blocked()
            upstream_peer.sendall(b"data: 1\n\n")
            spoke = trio.current_time()
            watch.check()  # (what the watch's task does when the upstream is readable); the stream's task is next
            assert timers.expire(old_deadline) == 0, "the read_timeout of an upstream that spoke in time fired"
            assert timer.at >= spoke + READ_MS / 1000 and not timer.scope.cancel_called
    finally:
        upstream.close()
        upstream_peer.close()


async def test_an_event_sent_within_read_timeout_is_not_cut_after_a_stall(nursery, gateway):
    """The next event comes 0.2 s after the last (read_timeout 0.3 s) during a stall over the deadline before the
    sweeper's wake-up: the stream's task runs a turn after the watch's, before or after the sweeper's expiry,
    so several rounds."""
    backend = ThreadBackend()
    try:
        port = await gateway(serving(backend, retries=0))
        cut = []
        with stalls_at(0) as instrument:
            for round_ in range(3):
                head, body, _ = await stalled_round(instrument, partial(get, port, "/sse", instrument, backend, "head"))
                assert head.startswith(b"HTTP/1.1 200"), head
                if b"data:3" not in body or not body.endswith(b"0\r\n\r\n"):
                    cut.append((round_, body))
        assert not cut, f"{len(cut)}/3 event streams cut though their event came within read_timeout: {cut[0]!r}"
    finally:
        backend.close()


# ----------------------------------------------------------------------------------------------------------------
# A relayed body: read_timeout re-armed as a read returns, before what it read is relayed (paced)
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("http_codec", ["h11"])  # (llhttp joins a read's chunks into one event: nothing to pace)
async def test_a_body_sent_within_read_timeout_is_not_cut_while_it_is_relayed_after_a_stall(nursery, gateway):
    """100 one-byte chunks in one write, 0.2 s after the first (read_timeout 0.3 s), during a stall over the deadline:
    h11 makes them 100 events, relayed over several loop turns (Conn.pace), so the timer must be re-armed as the read
    returns (nginx: ngx_http_upstream_process_non_buffered_request re-arms after it read, ngx_http_upstream.c:3810,
    from the time of the epoll that reported the bytes)."""
    backend = ThreadBackend()
    try:
        port = await gateway(serving(backend, retries=0))
        with stalls_at(0) as instrument:
            head, body, _ = await stalled_round(instrument, partial(get, port, "/chunks", instrument, backend, "head"))
        assert head.startswith(b"HTTP/1.1 200"), head
        assert body.endswith(b"0\r\n\r\n") and body.count(b"x") == 100, \
            f"the body, sent within read_timeout, was cut after the stall: {body[-60:]!r}"
    finally:
        backend.close()

