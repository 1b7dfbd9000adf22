"""Helpers for the end-to-end health and discovery tests (tests/test_health_discovery_e2e.py).

- `Backend`: a Trio/h11 upstream in the test's own nursery whose /health can be switched to fail, whose normal
  answers can be switched to 500, that can hold requests (`/slow?s=2`), and that counts what it received.
- `GatewayNode`: `gateway start --workers 2` in a scratch directory, its CLI (status, admin, stop), and a cleanup
  that stops it by pid (root first; then any child it recorded that is still alive).
- `Load`: a stoppable load generator (loadgen's request code), on kept-alive or new connections.
- `EtcdProcess`: a single-member etcd on free loopback ports (tests/etcd_server.py).
- `/proc` helpers: which gateway worker owns a TCP connection (to show that *every* worker behaves).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11
import trio
from backends import free_port as free_port
from etcd_server import EtcdProcess as EtcdProcess
from etcd_server import find_etcd
from loadgen import LoadResult, one_request

from gateway.bus.admin_client import AdminUnavailable, admin_call
from gateway.node.control import ADMIN_TIMEOUT_S, RELOAD_TIMEOUT_S, read_line

# ---- backends --------------------------------------------------------------------------------------------------------


class Backend:
    """An upstream whose behaviour a test switches while the gateway runs.

    health_status   status of GET /health (the active checks' path)
    status          status of every other answer (e.g. 500 for passive checks)
    delay           seconds every other answer waits (so requests are in flight when a test changes something)
    `/slow?s=S`     the answer waits S seconds (a slow in-flight request)
    `/hold`         the answer waits until the test sets `gate` (a trio.Event)
    hits            requests other than /health; `in_flight` of them are being answered now
    peers           remote ports of the connections open now (the gateway side of each upstream connection)
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = 0
        self.health_status = 200
        self.status = 200
        self.delay = 0.0
        self.hits = 0
        self.health_hits = 0
        self.in_flight = 0
        self.peers: set[int] = set()
        self.arrived: list[float] = []  # trio time of each counted request
        self.hosts: set[str] = set()  # the Host headers of every request, /health included
        self.gate = trio.Event()  # what `/hold` requests wait for

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def serve(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started(self.port)
            await trio.serve_listeners(self._on_conn, listeners, handler_nursery=nursery)

    async def _on_conn(self, stream: trio.SocketStream) -> None:
        peer = stream.socket.getpeername()[1]
        self.peers.add(peer)
        try:
            await self._serve_conn(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass
        finally:
            self.peers.discard(peer)
            await trio.aclose_forcefully(stream)

    async def _serve_conn(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            request = None
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                    continue
                if isinstance(event, h11.Request):
                    request = event
                    self.hosts.update(v.decode() for k, v in event.headers if k == b"host")
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    return
            assert request is not None
            url = urlsplit(request.target.decode())
            if url.path == "/health":
                self.health_hits += 1
                status = self.health_status
            else:
                self.hits += 1
                self.arrived.append(trio.current_time())
                status = self.status
                self.in_flight += 1
                try:
                    if url.path == "/slow":
                        await trio.sleep(float(parse_qs(url.query).get("s", ["1"])[0]))
                    elif url.path == "/hold":
                        await self.gate.wait()
                    elif self.delay:
                        await trio.sleep(self.delay)
                finally:
                    self.in_flight -= 1
            body = json.dumps({"backend": self.name, "path": url.path}).encode()
            headers = [("content-type", "application/json"), ("content-length", str(len(body))),
                       ("x-backend", self.name)]
            await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)) +
                                  conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()


async def started_backends(nursery: trio.Nursery, *names: str) -> list[Backend]:
    """A Backend of each name, serving in `nursery`."""
    out = []
    for name in names:
        backend = Backend(name)
        await nursery.start(backend.serve)
        out.append(backend)
    return out


def counts(backends: list[Backend]) -> dict[str, int]:
    return {b.name: b.hits for b in backends}


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {name: after[name] - before.get(name, 0) for name in after}


# ---- one HTTP request (h11) ------------------------------------------------------------------------------------------


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


class HttpConn:
    """One kept-alive client connection (the tests pick which worker it landed on)."""

    def __init__(self, stream: trio.SocketStream, port: int) -> None:
        self.stream = stream
        self.port = port
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, port: int) -> HttpConn:
        return cls(await trio.open_tcp_stream("127.0.0.1", port), port)

    @property
    def local_port(self) -> int:
        return self.stream.socket.getsockname()[1]

    async def request(self, method: str = "GET", target: str = "/", body: bytes = b"",
                      timeout: float = 10.0) -> Reply:
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        headers = [("host", f"127.0.0.1:{self.port}"), ("content-length", str(len(body)))]
        if body:
            headers.append(("content-type", "application/json"))
        with trio.fail_after(timeout):
            await self.stream.send_all(self.conn.send(h11.Request(method=method, target=target, headers=headers)) +
                                       self.conn.send(h11.Data(data=body)) + self.conn.send(h11.EndOfMessage()))
            status, head, data = 0, {}, bytearray()
            while True:
                event = self.conn.next_event()
                if event is h11.NEED_DATA:
                    chunk = await self.stream.receive_some(65536)
                    if not chunk:
                        raise ConnectionError("closed before a complete response")
                    self.conn.receive_data(chunk)
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    head = {k.decode().lower(): v.decode("latin-1") for k, v in event.headers}
                elif isinstance(event, h11.Data):
                    data += event.data
                elif isinstance(event, h11.EndOfMessage):
                    return Reply(status, head, bytes(data))

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


async def request(port: int, method: str = "GET", target: str = "/", body: bytes = b"",
                  timeout: float = 10.0) -> Reply:
    """One request on a new connection."""
    conn = await HttpConn.open(port)
    try:
        return await conn.request(method, target, body, timeout)
    finally:
        await conn.aclose()


# ---- load --------------------------------------------------------------------------------------------------------


class Load:
    """`concurrency` clients POSTing to `path` until stop(): loadgen's requests and counting (tests/loadgen.py), but
    stoppable, so one load can run across every step of a scenario.

        load = Load(port, concurrency=4, keepalive=False)
        nursery.start_soon(load.run)
        ...
        await load.stop()       # returns once every client finished its request in progress
    """

    def __init__(self, port: int, *, concurrency: int = 4, keepalive: bool = True, path: str = "/") -> None:
        self.port = port
        self.path = path
        self.concurrency = concurrency
        self.keepalive = keepalive
        self.result = LoadResult()
        self.statuses: collections.Counter[int] = collections.Counter()
        self._stop = trio.Event()
        self._done = trio.Event()
        self._started = time.monotonic()

    async def run(self) -> None:
        self._started = time.monotonic()
        try:
            async with trio.open_nursery() as nursery:
                for _ in range(self.concurrency):
                    nursery.start_soon(self._client)
        finally:
            self._done.set()

    async def stop(self) -> LoadResult:
        self._stop.set()
        with trio.fail_after(15):
            await self._done.wait()
        return self.result

    async def _client(self) -> None:
        result = self.result
        stream: trio.SocketStream | None = None
        conn: h11.Connection | None = None
        while not self._stop.is_set():
            try:
                if stream is None:
                    stream = await trio.open_tcp_stream("127.0.0.1", self.port)
                    conn = h11.Connection(h11.CLIENT)
                with trio.fail_after(10):
                    status = await one_request(stream, conn, self.port, not self.keepalive, self.path)  # type: ignore
                self.statuses[status] += 1
                if status == 200:
                    result.ok += 1
                else:
                    result.fail(f"status {status}", self._started)
                if self.keepalive and conn.our_state is h11.DONE and conn.their_state is h11.DONE:  # type: ignore
                    conn.start_next_cycle()  # type: ignore[union-attr]
                else:
                    await stream.aclose()
                    stream = None
            except (OSError, ConnectionError, trio.BrokenResourceError, h11.ProtocolError, trio.TooSlowError) as e:
                result.fail(type(e).__name__, self._started)
                if stream is not None:
                    await stream.aclose()
                stream = None
                await trio.sleep(0.01)
        if stream is not None:
            await stream.aclose()


# ---- the gateway as real processes -------------------------------------------------------------------------------


class GatewayNode:
    """`gateway` CLI calls in a scratch directory; the config is JSON (which is YAML)."""

    def __init__(self, workdir: Path, doc: dict[str, Any], **gateway: Any) -> None:
        self.dir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.status_port = free_port()
        settings = {"listen": f"127.0.0.1:{self.port}", "status_listen": f"127.0.0.1:{self.status_port}",
                    "drain_timeout": 3, "upstream_idle_timeout_s": 60, **gateway}
        self.doc = {"_format_version": "3.0", "gateway": settings, **doc}
        self.config = workdir / "gateway.yaml"
        self.config.write_text(json.dumps(self.doc, indent=1))
        self.pids: set[int] = set()  # every process of this gateway we have seen (cleanup kills by these pids)
        self.root: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None  # the root, when start() started it (reaped by cleanup)

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=self.dir, capture_output=True,
                              text=True, timeout=timeout)

    async def acli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return await trio.to_thread.run_sync(lambda: self.cli(*args, timeout=timeout))

    async def start(self, workers: int = 2) -> None:
        """Start the root as `gateway start` does (its command line: `gateway start --foreground --ready-fd`, in a
        session of its own, its output to the log file; back once it says every worker accepts), without the
        `gateway start` process itself: a second interpreter and check of the config, most of a second a start on a
        busy machine. That command is tested on its own (test_node.py, test_cli*.py, start_daemonised)."""
        read_fd, write_fd = os.pipe()
        argv = [sys.executable, "-m", "gateway", "start", "--foreground", "--config", str(self.config),
                "--ready-fd", str(write_fd), "--workers", str(workers)]
        (self.dir / "run").mkdir(exist_ok=True)
        with open(self.dir / "run" / "gateway.log", "ab") as log:
            self.proc = subprocess.Popen(argv, cwd=self.dir, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         pass_fds=(write_fd,), start_new_session=True)
        os.close(write_fd)
        line = await trio.to_thread.run_sync(read_line, read_fd, 60.0)
        self.root = self.proc.pid
        self.pids.add(self.root)
        assert line.startswith("ready"), f"gateway start failed: {line!r}\n{self.log()[-3000:]}"
        assert self.root_pid() == self.root
        await self.status()

    def root_pid(self) -> int | None:
        try:
            return int((self.dir / "run" / "gateway.pid").read_text())
        except (OSError, ValueError):
            return None

    async def status(self) -> dict[str, Any]:
        doc = await self.admin("status")

        def walk(node: dict[str, Any]) -> None:
            if node.get("pid"):
                self.pids.add(node["pid"])
            for child in node.get("children", []):
                walk(child)

        walk(doc["tree"])
        return doc

    async def child_pid(self, child_id: str) -> int | None:
        doc = await self.status()
        return next((c["pid"] for c in doc["tree"]["children"] if c["id"] == child_id), None)

    async def worker_pids(self) -> list[int]:
        doc = await self.status()
        generation = next(c for c in doc["tree"]["children"] if c["id"].startswith("workers@"))
        return [w["pid"] for w in generation["children"] if w["pid"]]

    async def admin(self, cmd: str, **args: Any) -> Any:
        """The result of one admin command, sent as `gateway admin CMD KEY=VALUE...` sends it (the values as
        strings, the CLI's timeouts) but from this process: a CLI process costs most of a second of imports, and
        the tests ask often. The CLI itself is tested by test_admin_channel.py and test_node.py."""
        socket_path = self.dir / "run" / "admin.sock"
        assert socket_path.exists(), f"admin {cmd} {args}: no admin socket {socket_path}"
        timeout = RELOAD_TIMEOUT_S if cmd == "reload" else ADMIN_TIMEOUT_S
        words = {key: str(value) for key, value in args.items()}
        try:
            reply = await trio.to_thread.run_sync(lambda: admin_call(f"ipc://{socket_path}", cmd, words, timeout))
        except AdminUnavailable as e:
            raise AssertionError(f"admin {cmd} {args}: {e}") from None
        assert reply.ok, f"admin {cmd} {args}: {reply.error}"
        return reply.result

    async def targets(self) -> dict[str, dict[str, Any]]:
        """The keeper's view: {"upstream|host:port": {"drained", "weight", "healthy"}}."""
        return {t["key"]: t for t in await self.admin("targets")}

    async def stop(self) -> subprocess.CompletedProcess[str]:
        return await self.acli("stop", "--timeout", "20", timeout=40)

    def log(self) -> str:
        path = self.dir / "run" / "gateway.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def cleanup(self) -> None:
        """Stop whatever is left of this gateway, by pid: SIGTERM to the root, then SIGKILL to stragglers."""
        root = self.root or self.root_pid()
        if root and _is_gateway(root):
            try:
                os.kill(root, signal.SIGTERM)
            except ProcessLookupError:
                pass
            _wait_gone([root], 15)
        _wait_gone(list(self.pids), 3)  # children stop by themselves when the root is gone
        for pid in [root, *self.pids]:
            if pid and _is_gateway(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)


@contextlib.contextmanager
def node_factory(tmp_path: Path) -> Iterator[Callable[..., GatewayNode]]:
    """A factory of gateways as real processes (doc, gateway settings); every one made is stopped by pid at the end."""
    made: list[GatewayNode] = []

    def make(doc: dict[str, Any], **gateway: Any) -> GatewayNode:
        made.append(GatewayNode(tmp_path / f"gw{len(made)}", doc, **gateway))
        return made[-1]

    try:
        yield make
    finally:
        for node in made:
            node.cleanup()


def _is_gateway(pid: int) -> bool:
    """Alive and still one of ours (a gateway process), so a recycled pid is never signalled."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return b"gateway" in cmdline and state != b"Z"


def _wait_gone(pids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_is_gateway(p) for p in pids):
        time.sleep(0.05)


async def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = "") -> float:
    """Seconds until `await predicate()` (or predicate()) is true; fails the test on timeout."""
    start = trio.current_time()
    with trio.move_on_after(timeout):
        while True:
            value = predicate()
            if hasattr(value, "__await__"):
                value = await value
            if value:
                return trio.current_time() - start
            await trio.sleep(interval)
    raise AssertionError(f"not reached within {timeout}s: {what}")


# ---- which worker owns a connection (/proc) ----------------------------------------------------------------------


def _tcp_sockets() -> list[tuple[int, int, int]]:
    """(local port, remote port, inode) of every IPv4/IPv6 TCP socket."""
    out = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], int(fields[9])
            out.append((int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16), inode))
    return out


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(int(link[8:-1]))
    except OSError:
        pass
    return inodes


def owners(pids: list[int], local_port: int | None = None,
           remote_port: int | None = None) -> dict[tuple[int, int], int]:
    """{(local port, remote port): pid} for the TCP sockets of `pids` matching the given ports."""
    by_inode = {inode: pid for pid in pids for inode in _socket_inodes(pid)}
    return {(lp, rp): by_inode[inode] for lp, rp, inode in _tcp_sockets()
            if inode in by_inode and (local_port is None or lp == local_port)
            and (remote_port is None or rp == remote_port)}


def upstream_conn_workers(backend: Backend, workers: list[int]) -> collections.Counter[int]:
    """How many of the backend's open connections each worker holds (the worker's side: local port = our peer)."""
    found = owners(workers, remote_port=backend.port)
    return collections.Counter(pid for (lp, _), pid in found.items() if lp in backend.peers)


async def conns_per_worker(port: int, workers: list[int], want: int = 1, tries: int = 40) -> dict[int, list[HttpConn]]:
    """Open connections to the gateway until each worker has accepted `want` of them: {worker pid: [conn, ...]}."""
    by_worker: dict[int, list[HttpConn]] = {pid: [] for pid in workers}
    spare: list[HttpConn] = []
    for _ in range(tries):
        if all(len(v) >= want for v in by_worker.values()):
            break
        conn = await HttpConn.open(port)
        owner = None
        for _ in range(100):  # the worker accepts it within moments
            owner = owners(workers, local_port=port, remote_port=conn.local_port).get((port, conn.local_port))
            if owner is not None:
                break
            await trio.sleep(0.01)
        if owner is not None and len(by_worker[owner]) < want:
            by_worker[owner].append(conn)
        else:
            spare.append(conn)
    for conn in spare:
        await conn.aclose()
    assert all(len(v) >= want for v in by_worker.values()), f"could not reach every worker: {by_worker}"
    return by_worker


# ---- etcd ----------------------------------------------------------------------------------------------------------


def etcd_binary() -> str | None:
    """`etcd` on PATH, installed as tests/etcd_server.py does when we are root and it is missing."""
    return find_etcd()[0]


@contextlib.contextmanager
def running_etcd(workdir: Path) -> Iterator[EtcdProcess]:
    """A single-member etcd on free loopback ports, stopped by pid at the end (the test is skipped without etcd)."""
    binary = etcd_binary()
    if binary is None:
        import pytest
        pytest.skip("etcd is not installed and cannot be installed here (scripts/setup installs etcd-server)")
    proc = EtcdProcess(binary, workdir)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()




# ---- a daemonised gateway driven by signals (tests/test_ops_*.py) ---------------------------------------------------


class HoldingBackend:
    """A thread-per-connection HTTP/1.1 backend: `/slow` answers 200 after `hold_s` seconds (or once `release()` is
    called), anything else at once (Connection: close); for blocking tests, where the Trio `Backend` would need a
    nursery. `held` counts the `/slow` requests that have arrived."""

    def __init__(self, hold_s: float) -> None:
        import socket
        import threading

        self.hold_s = hold_s
        self.gate = threading.Event()
        self.held = 0
        self._count = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: Any) -> None:
        with conn:
            try:
                head = conn.recv(65536)
                if b" /slow" in head.split(b"\r\n", 1)[0]:
                    with self._count:
                        self.held += 1
                    self.gate.wait(self.hold_s)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            except OSError:
                pass

    def release(self) -> None:
        """Answer every held `/slow` request now."""
        self.gate.set()

    def close(self) -> None:
        self.server.close()


def blocking_get(port: int, path: str = "/", timeout: float = 15) -> int:
    """One GET on a new connection; its status code (0: closed without an answer)."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        head = sock.recv(65536)
    return int(head.split(b" ", 2)[1]) if head else 0


def request_in_flight(port: int, backend: HoldingBackend, path: str = "/slow") -> tuple[Any, list[int]]:
    """A GET of `path` running in a thread, held by `backend` once this returns; (thread, [its status code])."""
    import threading

    codes: list[int] = []
    before = backend.held

    def run() -> None:
        try:
            codes.append(blocking_get(port, path))
        except OSError:
            codes.append(-1)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert becomes_true(lambda: backend.held > before, 15, interval=0.01), f"GET {path} did not reach the backend"
    return thread, codes


def start_daemonised(gw: GatewayNode) -> int:
    """`gateway start` (daemonised: its processes log to run/gateway.log); the root's pid."""
    out = gw.cli("start", "--config", str(gw.config), timeout=40)
    assert out.returncode == 0, out.stderr + gw.log()[-2000:]
    root = gw.root_pid()
    assert root is not None
    gw.root = root
    gw.pids.add(root)
    gw.pids.update(descendants_of(root))
    return root


def descendants_of(pid: int) -> list[int]:
    from gateway.node.root import descendants

    return descendants(pid)


def process_name(pid: int) -> str:
    """/proc/PID/comm: `gateway worker`, `gateway keeper`, ... ("" once it is gone)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def has_exited(pid: int) -> bool:
    """Gone, or a zombie (the test's own child, or a subreaper's, not reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
    except OSError:
        return True


def becomes_true(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Whether `predicate()` became true within `timeout` seconds (blocking)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def admin_now(gw: GatewayNode, cmd: str, timeout: float = 20, **args: Any) -> Any:
    """One admin command, blocking; the reply (ok, result, error)."""
    return admin_call(f"ipc://{gw.dir / 'run' / 'admin.sock'}", cmd, {k: str(v) for k, v in args.items()}, timeout)


def answering_itself(directory: Path, listen: Callable[[int], str | list[str]], status: int,
                     **gateway: Any) -> Iterator[GatewayNode]:
    """A started one-worker gateway that answers `status` itself (request-termination), listening on `listen(P)`
    for its port P; afterwards every process it started is stopped."""
    doc = {"routes": [{"name": "r", "paths": ["/"]}],
           "plugins": [{"name": "request-termination", "route": "r", "config": {"status_code": status}}]}
    gw = GatewayNode(directory, doc, workers=1, **gateway)
    gw.doc["gateway"]["listen"] = listen(gw.port)
    gw.config.write_text(json.dumps(gw.doc, indent=1))
    root = start_daemonised(gw)
    try:
        yield gw
    finally:
        gw.pids.update(descendants_of(root))
        gw.cleanup()


def gateway_in_front_of(backend: HoldingBackend, tmp_path: Path, **gateway: Any) -> Iterator[GatewayNode]:
    """A one-worker gateway (not started) with one route to `backend`; afterwards every process it started is
    stopped, then the backend."""
    doc = {"services": [{"name": "s", "url": f"http://127.0.0.1:{backend.port}", "read_timeout": 30000,
                         "routes": [{"paths": ["/"]}]}]}
    gw = GatewayNode(tmp_path / "gw", doc, workers=1, status_listen=None, **gateway)
    try:
        yield gw
    finally:
        if gw.root:
            gw.pids.update(descendants_of(gw.root))
        gw.cleanup()
        backend.close()
