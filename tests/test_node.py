"""The supervised gateway as real processes on loopback: start/stop/status, crashes, reloads under load, escalation."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio
import yaml
import zmq
from backends import free_port, stop_process, wait_port
from e2e_helpers import Backend, GatewayNode, process_name, request, wait_for
from loadgen import run_load

from gateway.config import parse_config
from gateway.node.root import SUPERVISOR_ANSWER_S, Node
from gateway.node.status_source import NodeStatus
from gateway.status import CheckResult
from gateway.worker import RETIRE_SIGNAL
from supervisor import ChildInfo
from supervisor.core import ChildState
from supervisor.spec import ChildType

ROOT = Path(__file__).resolve().parent.parent
DEMO_BACKEND = ROOT / "scripts" / "demo_backend.py"


@pytest.fixture(scope="module")
def backend():
    """The demo backend (stateless: every test of this file can use the same one)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(DEMO_BACKEND), "--port", str(port), "--name", "b1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, timeout=30)
        yield port
    finally:
        stop_process(proc)


def gateway_config(port: int, backend_port: int, **gateway: object) -> str:
    settings = {"listen": f"127.0.0.1:{port}", "status_listen": None, "drain_timeout": 10, **gateway}
    return json.dumps({
        "_format_version": "3.0",
        "gateway": settings,
        "services": [{"name": "b", "url": f"http://127.0.0.1:{backend_port}", "read_timeout": 10000}],
        "routes": [{"name": "all", "service": "b", "paths": ["/"], "strip_path": False}],
    })


class Gateway:
    """`gateway` CLI calls in a scratch directory (its run/ folder holds the pid file and admin socket)."""

    def __init__(self, workdir: Path, port: int, backend_port: int, **settings: object) -> None:
        self.dir = workdir
        self.port = port
        self.config = workdir / "gateway.yaml"
        self.write_config(backend_port, **settings)
        self.log_from = 0  # log() leaves out what the gateway logged before (for a test on a shared gateway)

    def write_config(self, backend_port: int, **settings: object) -> None:
        self.config.write_text(gateway_config(self.port, backend_port, **settings))

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=self.dir, capture_output=True,
                              text=True, timeout=timeout)

    def start(self, workers: int = 2) -> subprocess.CompletedProcess[str]:
        return self.cli("start", "--config", str(self.config), "--workers", str(workers))

    def cli_status(self) -> dict:
        """`gateway status --json`, parsed."""
        out = self.cli("status", "--json")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def status(self) -> dict:
        """What `gateway status --json` prints, asked of the admin socket from this process (a CLI process costs
        most of a second of imports; test_start_status_stop runs the CLI's)."""
        return admin_status(self)

    def worker_pids(self, status: dict | None = None) -> list[int]:
        generation = (status or self.status())["tree"]["children"][-1]
        return [w["pid"] for w in generation["children"] if w["pid"]]

    def root_pid(self) -> int | None:
        try:
            return int((self.dir / "run" / "gateway.pid").read_text())
        except (OSError, ValueError):
            return None

    def log(self) -> str:
        path = self.dir / "run" / "gateway.log"
        return path.read_text()[self.log_from:] if path.exists() else ""

    def kill_all(self) -> None:
        """SIGTERM (a graceful stop); a second one forces it if the root still runs half a second later."""
        pid = self.root_pid()
        if pid:
            for sig, wait in ((signal.SIGTERM, 0.5), (signal.SIGTERM, 10.0)):
                if dead(pid):
                    return
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    return
                try:
                    wait_until(lambda: dead(pid), timeout=wait)
                except TimeoutError:
                    pass


@pytest.fixture
def node(tmp_path, backend):
    gw = Gateway(tmp_path, free_port(), backend)
    yield gw
    gw.kill_all()


@pytest.fixture(scope="module")
def serving(tmp_path_factory, backend):
    """A gateway already started (2 workers, with an MCP route besides `all`), shared by the tests that only look
    at it: none of them changes what it runs (a rejected reload changes nothing; the test puts the file back)."""
    gw = Gateway(tmp_path_factory.mktemp("serving"), free_port(), backend)
    doc = json.loads(gw.config.read_text())
    doc["routes"].append({"name": "mcp", "service": "b", "paths": ["/mcp"], "strip_path": False, "mcp": True})
    gw.config.write_text(json.dumps(doc))
    yield from _running(gw)


@pytest.fixture(scope="module")
def _reloaded_gateway(tmp_path_factory, backend):
    yield from _running(Gateway(tmp_path_factory.mktemp("reloaded"), free_port(), backend))


def _running(gw: Gateway) -> Iterator[Gateway]:
    """`gw` started with 2 workers, for as long as the fixture lasts; then stopped."""
    try:
        started = gw.start(workers=2)
        assert started.returncode == 0, started.stderr
        yield gw
    finally:
        gw.kill_all()


@pytest.fixture
def reloading(_reloaded_gateway):
    """A running gateway (2 workers) shared by the tests of successful reloads: each test finds it serving its own
    config file, as started (the generation it is at aside: the test reads it), and sees only what is logged from
    its start on; afterwards the file and the config it runs from are put back (a reload), if the test changed them."""
    gw = _reloaded_gateway
    original = gw.config.read_text()
    assert gw.status()["config"] == str(gw.config)
    gw.log_from = 0
    gw.log_from = len(gw.log())
    yield gw
    gw.log_from = 0
    if gw.config.read_text() != original or gw.status()["config"] != str(gw.config):
        gw.config.write_text(original)
        out = gw.cli("reload", "--config", str(gw.config))
        assert out.returncode == 0, out.stderr


def alive(pid: int) -> bool:
    """Running: a zombie (exited, its parent has not reaped it yet) is not."""
    return not dead(pid)


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02) -> float:
    """Seconds until predicate() held; raises on timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(interval)
    raise TimeoutError("condition not reached")


def restart_latency_ms(log: str, child: str) -> float:
    """From the supervisor's log: the child's exit to its replacement reporting ready (it accepts by then)."""
    from datetime import datetime

    def stamp(line: str) -> datetime:
        return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")

    lines = log.splitlines()
    down = next(i for i, line in enumerate(lines) if f"child_terminated: child='{child}'" in line)
    up = next(line for line in lines[down:] if f"started: child='{child}'" in line)
    return (stamp(up) - stamp(lines[down])).total_seconds() * 1000


def test_start_status_stop(node):
    started = node.start(workers=2)
    assert started.returncode == 0, started.stderr
    assert "gateway started" in started.stdout
    status = node.cli_status()
    children = status["tree"]["children"]
    assert [c["id"] for c in children] == ["zygote", "keeper", "workers@1"]
    assert [c.get("started_by") for c in children] == ["exec", "fork", None]  # the zygote forks the others
    workers = children[2]["children"]
    assert all(w["started_by"] == "fork" for w in workers)
    assert [w["id"] for w in workers] == ["worker-1", "worker-2"]
    assert all(alive(w["pid"]) and w["restarts"] == 0 for w in workers)
    text = node.cli("status").stdout
    assert "root  one_for_one 5/60s" in text and "worker-2  pid" in text
    result = trio.run(lambda: run_load(node.port, concurrency=2, duration=0.5))
    assert result.ok > 0 and result.failed == 0
    root = node.root_pid()
    stopped = node.cli("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert not alive(root) and not any(alive(w["pid"]) for w in workers)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", node.port), timeout=1).close()


def test_start_reports_a_port_in_use(node):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", node.port))
        squatter.listen()
        out = node.start()
    assert out.returncode == 1
    assert f"cannot listen on 127.0.0.1:{node.port}" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_second_gateway_on_the_same_address_is_refused_with_the_first_ones_pid(serving, tmp_path, backend):
    node = serving
    (tmp_path / "other").mkdir()
    other = Gateway(tmp_path / "other", node.port, backend)
    try:
        out = other.start(workers=1)
        assert out.returncode == 1
        assert f"cannot listen on 127.0.0.1:{node.port}: address in use by gateway pid {node.root_pid()}" in out.stderr
        assert "Traceback" not in out.stderr + other.log()
        run = other.cli("run", "--config", str(other.config))  # one process without a supervisor: refused too
        assert run.returncode == 1 and "Address already in use" in run.stderr
        assert get_status(node.port) == 200
    finally:
        other.kill_all()


def test_start_refuses_an_address_that_another_program_holds_with_so_reuseport(node):
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        squatter.bind(("127.0.0.1", node.port))
        squatter.listen()
        out = node.start()
    assert out.returncode == 1
    assert f"cannot listen on 127.0.0.1:{node.port}: address in use (by another program)" in out.stderr


def test_files_holding_config_or_secrets_are_private(serving):
    gw = serving  # its config has an MCP route
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:  # reads (creates) the key file
        sock.sendall(b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nMcp-Session-Id: k.forged\r\n"
                     b"Connection: close\r\n\r\n" % gw.port)
        assert b" 404 " in sock.recv(65536)
    run = gw.dir / "run"
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [run, *run.iterdir()] if not p.is_socket()}
    assert modes["run"] & 0o007 == 0 and modes["run"] & 0o700 == 0o700, oct(modes["run"])  # 0750 or 0700
    for name in ("config.current.yaml", "config.gen1.yaml", "mcp-session.key"):
        assert modes[name] == 0o600, (name, oct(modes[name]))
    assert modes["gateway.log"] & ~0o640 == 0, oct(modes["gateway.log"])
    assert modes["gateway.pid"] & 0o022 == 0


def test_start_rejects_an_invalid_config(node):
    node.config.write_text(node.config.read_text().replace('"workers', '"wurkers').replace(
        '"drain_timeout"', '"drain_timeout_typo"'))
    out = node.start()
    assert out.returncode == 2
    assert "gateway.drain_timeout_typo: unknown field" in out.stderr


def test_killed_worker_is_replaced_and_other_requests_do_not_fail(node):
    assert node.start(workers=2).returncode == 0
    victim, survivor = node.worker_pids()
    concurrency = 16

    async def scenario():
        async with trio.open_nursery() as nursery:
            results = []

            async def load():
                results.append(await run_load(node.port, concurrency=concurrency, duration=2.75, keepalive=False))

            nursery.start_soon(load)
            await trio.sleep(0.75)  # the load is under way; it goes on 2 s after the kill
            os.kill(victim, signal.SIGKILL)
            killed_at = time.monotonic()
            replaced = await trio.to_thread.run_sync(
                lambda: wait_until(lambda: victim not in node.worker_pids() and len(node.worker_pids()) == 2))
        return results[0], killed_at, replaced

    result, _, replaced = trio.run(scenario)
    restart_ms = restart_latency_ms(node.log(), "worker-1")
    print(f"\nkill -9 -> replacement accepting: {restart_ms:.0f} ms (supervisor log); seen by polling status after "
          f"{replaced * 1000:.0f} ms; load: ok={result.ok} failed={result.failed} {dict(result.errors)}")
    pids = node.worker_pids()
    assert survivor in pids and victim not in pids
    # Only requests the killed worker had accepted can fail: at most one per client.
    assert result.failed <= concurrency, result.errors
    assert result.ok > 100
    assert "reason=killed by signal SIGKILL" in node.log()
    assert restart_ms < 5000


def dead(pid: int) -> bool:
    """Exited (a zombie not reaped yet counts: it no longer runs)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
    except OSError:
        return True


def get_status(port: int, timeout: float = 10.0) -> int:
    """One GET / on a new connection (blocking); the response's status code."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        head = sock.recv(65536)
        return int(head.split(b" ", 2)[1])


def admin_status(gw: Gateway) -> dict:
    """The root's status over the admin socket with plain pyzmq (fast enough to poll every few ms). It waits while
    the root supervisor starts a child (as OTP's which_children does): the zygote's exec takes seconds when busy."""
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 30000)
    try:
        sock.connect(f"ipc://{gw.dir / 'run' / 'admin.sock'}")
        sock.send(b'{"cmd": "status"}')
        return json.loads(sock.recv())["result"]
    finally:
        sock.close()


def test_a_killed_worker_accepts_again_and_a_killed_keeper_serves_again_within_milliseconds(node):
    """The targets on an idle machine are 50 ms (worker) and 100 ms (keeper): children are forked from the zygote.
    Asserted with margins for a busy machine (the best of three, and every one well under exec's ~1 s); printed."""
    assert node.start(workers=1).returncode == 0
    root = node.root_pid()
    worker_ms, keeper_ms = [], []
    for _ in range(3):
        (pid,) = node.worker_pids()
        wait_until(lambda: _spares(root), timeout=10)  # the zygote's next spare is forked, waiting
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        wait_until(lambda pid=pid: dead(pid), timeout=5, interval=0.0005)
        # The only worker is gone: this connection waits in its listener slot (held by the root) for the replacement.
        assert get_status(node.port) == 200
        worker_ms.append((time.monotonic() - killed) * 1000)
        wait_until(lambda pid=pid: pid not in node.worker_pids())

    def keeper() -> dict:
        return next(c for c in admin_status(node)["tree"]["children"] if c["id"] == "keeper")

    for _ in range(3):
        old = keeper()
        wait_until(lambda: _spares(root), timeout=10)
        os.kill(old["pid"], signal.SIGKILL)
        killed = time.monotonic()
        wait_until(lambda old=old: (k := keeper())["pid"] not in (None, old["pid"]) and k["state"] == "running",
                   timeout=10, interval=0.002)
        keeper_ms.append((time.monotonic() - killed) * 1000)
    status = admin_status(node)["tree"]["children"]
    print(f"\nkill -9 -> accepting again: worker {', '.join(f'{t:.0f}' for t in worker_ms)} ms; "
          f"keeper {', '.join(f'{t:.0f}' for t in keeper_ms)} ms (targets on an idle machine: 50 and 100 ms)")
    assert [c["started_by"] for c in status if c["id"] in ("keeper", "zygote")] == ["exec", "fork"]
    assert all(w["started_by"] == "fork" for w in status[-1]["children"])
    assert min(worker_ms) < 250 and max(worker_ms) < 2000, worker_ms
    assert min(keeper_ms) < 250 and max(keeper_ms) < 2000, keeper_ms


def test_losing_the_zygote_falls_back_to_exec_until_it_is_back(node):
    assert node.start(workers=2).returncode == 0

    def children() -> dict[str, dict]:
        tree = admin_status(node)["tree"]["children"]
        return {c["id"]: c for c in [*tree, *tree[-1]["children"]]}

    before = children()
    zygote, victim = before["zygote"], before["worker-1"]["pid"]
    old_spares = set(_spares(node.root_pid()))  # (the lost zygote's spare may stay a while)
    os.kill(zygote["pid"], signal.SIGKILL)
    wait_until(lambda: dead(zygote["pid"]), timeout=5, interval=0.001)
    os.kill(victim, signal.SIGKILL)  # while the new zygote is still importing (about a second)
    wait_until(lambda: children()["worker-1"]["pid"] not in (None, victim), timeout=30)
    assert children()["worker-1"]["started_by"] == "exec"
    wait_until(lambda: children()["zygote"]["pid"] not in (None, zygote["pid"]), timeout=30)
    # Its hello is in (it says hello before it reports ready), and it has forked its first spare:
    wait_until(lambda: set(_spares(node.root_pid())) - old_spares, timeout=30)
    victim = children()["worker-2"]["pid"]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: children()["worker-2"]["pid"] not in (None, victim), timeout=30)
    after = children()
    assert after["worker-2"]["started_by"] == "fork"
    assert after["zygote"]["restarts"] == 1
    assert get_status(node.port) == 200


def test_every_child_stops_when_the_root_is_killed(node):
    assert node.start(workers=2).returncode == 0
    tree = admin_status(node)["tree"]["children"]
    pids = [c["pid"] for c in [*tree, *tree[-1]["children"]] if c.get("pid")]
    root = node.root_pid()
    spares = [p for p in _children_of(root) if p not in pids]  # the zygote's spare, forked ahead
    os.kill(root, signal.SIGKILL)
    wait_until(lambda: all(dead(p) for p in [*pids, *spares]), timeout=15)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", node.port), timeout=1).close()


def _spares(root: int) -> list[int]:
    """The zygote's spares (forked ahead of a request, re-parented to the root)."""
    return [p for p in _children_of(root) if process_name(p) == "gateway spare"]


def _children_of(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    if int(f.read().rsplit(b")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except OSError:
                pass
    return out


def test_reload_under_load_fails_no_request(reloading):
    node = reloading
    generation = node.status()["generation"]
    before = set(node.worker_pids())

    async def scenario():
        results = []
        done = trio.Event()

        async def load(keepalive: bool):  # (duration: a hang guard; the load ends when `done` is set)
            results.append(await run_load(node.port, concurrency=8, duration=60, keepalive=keepalive, stop=done))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(load, True)
            nursery.start_soon(load, False)
            for _ in range(2):
                await trio.sleep(0.75)
                out = await trio.to_thread.run_sync(lambda: node.cli("reload"))
                assert out.returncode == 0, out.stderr
            # the load goes on 1.4 s after the second reload returned, however long the reloads took on a busy
            # host (a fixed 3.5 s load could end before the second reload: the old generation's drain unloaded)
            await trio.sleep(1.4)
            done.set()
        return results

    results = trio.run(scenario)
    assert all(r.failed == 0 for r in results), [r.errors for r in results]
    assert all(r.ok > 100 for r in results)
    status = node.status()
    assert status["generation"] == generation + 2
    assert not before & set(node.worker_pids())


def test_reload_with_an_invalid_config_keeps_serving(serving):
    node = serving
    pids = node.worker_pids()
    good = node.config.read_text()
    node.config.write_text(good.replace('"routes"', '"rootes"'))
    try:
        out = node.cli("reload")
    finally:
        node.config.write_text(good)
    assert out.returncode == 2
    assert "config rejected, still serving the previous one" in out.stderr
    assert "rootes: unknown top-level key" in out.stderr
    assert node.status()["generation"] == 1
    assert node.worker_pids() == pids
    result = trio.run(lambda: run_load(node.port, concurrency=2, duration=0.5))
    assert result.ok > 0 and result.failed == 0


def test_sighup_with_a_file_that_is_not_utf8_keeps_serving_and_the_fixed_file_reloads(reloading):
    """SIGHUP reads the file the gateway runs from: a broken one is logged as rejected (the root lives on, the same
    generation serves), and the next SIGHUP after it is fixed applies it."""
    node = reloading
    root, pids, generation = node.root_pid(), node.worker_pids(), node.status()["generation"]
    good = node.config.read_bytes()
    node.config.write_bytes(b'_comment: "\xff"\n' + good)
    os.kill(root, signal.SIGHUP)
    wait_until(lambda: "not UTF-8 text" in node.log(), timeout=15)
    assert "config rejected, still serving the previous one" in node.log()
    assert "Traceback" not in node.log()
    assert alive(root) and node.status()["generation"] == generation and node.worker_pids() == pids
    assert get_status(node.port) == 200
    node.config.write_bytes(good)
    os.kill(root, signal.SIGHUP)
    wait_until(lambda: node.status()["generation"] == generation + 1, timeout=30, interval=0.02)
    assert get_status(node.port) == 200


def test_sse_stream_opened_before_a_reload_keeps_receiving_events(reloading):
    node = reloading

    async def scenario():
        stream = await trio.open_tcp_stream("127.0.0.1", node.port)
        await stream.send_all(b"GET /events?count=10&interval=0.25 HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        reloaded_at = None
        with trio.fail_after(20):
            while b"tick 9 " not in received:
                chunk = await stream.receive_some(65536)
                assert chunk, "stream closed early"
                received += chunk
                if b"tick 0 " in received and reloaded_at is None:
                    out = await trio.to_thread.run_sync(lambda: node.cli("reload"))
                    assert out.returncode == 0, out.stderr
                    reloaded_at = received.count(b"data: tick")
        await stream.aclose()
        return received, reloaded_at

    received, reloaded_at = trio.run(scenario)
    ticks = [int(line.split()[2]) for line in received.decode().splitlines() if line.startswith("data: tick")]
    assert ticks == list(range(10))
    assert reloaded_at < 10  # events kept coming after the new generation took over


def test_killing_workers_faster_than_the_intensity_stops_the_gateway(tmp_path, backend):
    gw = Gateway(tmp_path, free_port(), backend, restart_intensity=1, restart_period_s=60,
                 worker_restart_intensity=1, worker_restart_period_s=30)
    root = subprocess.Popen([sys.executable, "-m", "gateway", "start", "--foreground", "--workers", "1",
                             "--config", str(gw.config)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: gw.root_pid() == root.pid, timeout=20)
        kills = 0
        deadline = time.monotonic() + 30
        while root.poll() is None and time.monotonic() < deadline:
            try:  # with the CLI, as fast as it answers (each zombie not reaped yet would be killed again)
                pids = gw.worker_pids(gw.cli_status())
            except (AssertionError, json.JSONDecodeError):
                continue  # the root is going away
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    kills += 1
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
        output, _ = root.communicate(timeout=60)
        # workers@1 may restart its worker once (intensity 1); the second crash escalates to root, which may
        # restart workers@1 once; the next escalation exceeds root's intensity: about 4 kills in all.
        assert root.returncode == 1, output
        assert "root supervisor gave up" in output
        assert kills <= 8
    finally:
        if root.poll() is None:
            root.kill()
            root.wait()


# ---- finding the running gateway: stop / status / reload with a broken config, a stale pid file, a closed pipe ----


def test_stop_status_and_reload_find_the_gateway_through_a_config_that_is_now_invalid(node):
    assert node.start(workers=1).returncode == 0
    root = node.root_pid()
    node.config.write_text(node.config.read_text().replace('"routes"', '"rootes"'))
    status = node.cli("status", "--config", str(node.config))
    assert status.returncode == 0 and f"pid {root}" in status.stdout
    assert "is not a valid config (1 problem; `gateway check-config" in status.stderr
    reload = node.cli("reload", "--config", str(node.config))
    assert reload.returncode == 2 and "rootes: unknown top-level key" in reload.stderr
    stop = node.cli("stop", "--config", str(node.config))
    assert stop.returncode == 0, stop.stderr
    assert f"gateway stopped (pid {root})" in stop.stdout and not alive(root)


def test_a_config_without_a_readable_gateway_block_asks_for_the_pid_file(node):
    assert node.start(workers=1).returncode == 0
    root = node.root_pid()
    node.config.write_text("gateway: [\n")
    out = node.cli("stop", "--config", str(node.config))
    assert out.returncode == 2 and "pass --pid-file" in out.stderr and "Traceback" not in out.stderr
    assert alive(root)
    out = node.cli("status", "--pid-file", "run/gateway.pid", "--admin", "ipc://run/admin.sock")
    assert out.returncode == 0 and f"pid {root}" in out.stdout
    out = node.cli("stop", "--pid-file", "run/gateway.pid")
    assert out.returncode == 0 and not alive(root)


def test_reload_with_another_config_switches_to_it_and_later_reloads_reread_it(reloading, tmp_path):
    node = reloading
    generation = node.status()["generation"]
    other = tmp_path / "other.yaml"
    other.write_text(node.config.read_text().replace('"name": "all"', '"name": "other-route"'))
    out = node.cli("reload", "--config", str(other))
    assert out.returncode == 0, out.stderr
    assert f"reloaded {other}: generation {generation + 1} serving" in out.stdout
    assert node.status()["config"] == str(other)
    other.write_text(other.read_text().replace('"routes"', '"rootes"'))
    out = node.cli("reload")  # no --config: the file it now runs from
    assert out.returncode == 2 and "rootes: unknown top-level key" in out.stderr
    assert f"reload of {other} rejected: config rejected, still serving the previous one" in node.log()
    assert "rootes: unknown top-level key" in node.log()
    assert node.status()["generation"] == generation + 1


def test_a_reload_of_a_start_only_setting_says_it_needs_a_restart(reloading, backend):
    node = reloading
    node.write_config(backend, restart_intensity=9)
    out = node.cli("reload")
    assert out.returncode == 0, out.stderr
    assert "note: gateway.restart_intensity changed; it takes effect at the next start" in out.stderr
    assert "gateway.restart_intensity changed; it takes effect at the next start" in node.log()


def test_status_into_a_pipe_closed_early_is_no_traceback(serving):
    out = subprocess.run(f"{sys.executable} -m gateway status | head -c 10", shell=True, cwd=serving.dir,
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith("gateway ") and out.stderr == "", out.stderr


def test_commands_after_the_root_was_killed_say_it_is_not_running_at_once(node):
    assert node.start(workers=1).returncode == 0
    root = node.root_pid()
    os.kill(root, signal.SIGKILL)
    wait_until(lambda: dead(root), timeout=10)
    out = node.cli("status")
    assert out.returncode == 1
    assert out.stderr.strip() == (f"gateway: not running (run/gateway.pid names pid {root}, which has exited; "
                                  "removed the stale pid file)")  # at once: not "no answer within 5s"
    assert not (node.dir / "run" / "gateway.pid").exists()
    out = node.cli("stop")
    assert out.returncode == 1 and out.stderr.strip() == "gateway: not running (no pid file run/gateway.pid)"


SUBREAPER = """\
import ctypes, subprocess, sys, time
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: the daemonised root becomes our child
gateway = [sys.executable, "-m", "gateway"]
assert subprocess.run([*gateway, "start", "--config", sys.argv[1], "--workers", "1"]).returncode == 0
began = time.monotonic()
out = subprocess.run([*gateway, "stop", "--timeout", "30"], capture_output=True, text=True)
print(round(time.monotonic() - began, 2), out.returncode, out.stdout.strip())
"""  # and it never reaps the root: the root stays a zombie until this process exits


def test_stop_does_not_wait_for_a_root_that_is_a_zombie_under_a_subreaper(node):
    out = subprocess.run([sys.executable, "-c", SUBREAPER, str(node.config)], cwd=node.dir, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    seconds, code, said = out.stdout.splitlines()[-1].split(maxsplit=2)
    assert code == "0" and said.startswith("gateway stopped (pid ")
    assert float(seconds) < 15, out.stdout  # the drain is quick; waiting for the zombie would take the whole 30 s


def test_ctrl_c_in_a_terminal_stops_the_whole_tree_in_order(tmp_path, backend):
    """The terminal sends SIGINT to the whole process group: only the root acts on it (children block it) and stops
    the others in order, so no child exits on its own and is restarted meanwhile, and nothing is forced."""
    gw = Gateway(tmp_path, free_port(), backend)
    root = subprocess.Popen([sys.executable, "-m", "gateway", "start", "--foreground", "--workers", "2", "--config",
                             str(gw.config)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        wait_until(lambda: gw.root_pid() == root.pid, timeout=30)
        pids = [c["pid"] for c in admin_status(gw)["tree"]["children"][-1]["children"]]
        os.killpg(root.pid, signal.SIGINT)
        output, _ = root.communicate(timeout=30)
    finally:
        if root.poll() is None:
            root.kill()
            root.wait()
    assert root.returncode == 0, output
    assert "SIGINT: graceful stop" in output and "gateway stopped" in output
    assert "child_terminated" not in output and "shutdown_error" not in output and "forcing" not in output, output
    assert "Traceback" not in output
    # each worker told to drain by the root (all at once), not by the terminal's SIGINT
    assert output.count(f": {RETIRE_SIGNAL.name}, draining") == 2 and ": SIGINT, draining" not in output
    assert all(dead(pid) for pid in pids)


async def test_health_checks_answer_from_the_last_listing_while_the_root_is_busy(tmp_path, autojump_clock):
    """The discovery check never waits for a busy root: it answers at once from the root's last listing, with or
    without a discovery process, while the incarnation listed runs; one that has exited since is asked of the root,
    for SUPERVISOR_ANSWER_S at most, as `status` asks."""

    class Busy:  # a root supervisor starting a child (a reload's new generation): it answers once that is done
        async def which_children(self):
            await trio.sleep_forever()

    class Keeper:
        async def call(self, cmd, args, timeout):
            return SimpleNamespace(ok=True, result={"discovered": 1})

    node = Node(str(tmp_path / "gateway.yaml"), None)
    node.root, node.keeper = Busy(), Keeper()  # type: ignore[assignment]
    check, began = NodeStatus(node), trio.current_time()
    node._last_listed["root"] = []
    assert (await check.discovery()).details == {"note": "no discovery configured"}
    ref = SimpleNamespace(os_pid=4242, reason=None)
    node._last_listed["root"] = [ChildInfo("discovery", ref, ChildState.RUNNING, ChildType.WORKER, 0)]
    assert await check.discovery() == CheckResult("healthy", {"process": 4242, "upstreams": 1})
    assert trio.current_time() == began
    ref.reason = "killed"  # (exited: the root's restart, once it answers, is another incarnation)
    assert await check.discovery() == CheckResult("unhealthy", {"process": "not running"})
    assert trio.current_time() - began == pytest.approx(SUPERVISOR_ANSWER_S)


async def test_status_counts_the_uptime_of_a_child_the_busy_root_restarted_meanwhile_from_its_start(
        tmp_path, autojump_clock):
    """`status` waits (up to SUPERVISOR_ANSWER_S) for a root supervisor busy restarting a child with exec; the
    child's uptime is counted from its start, which came while `status` waited: 0, never negative."""
    keeper = SimpleNamespace(os_pid=4242, started_at=None, value=None)

    class Restarting:  # the root supervisor answers once the keeper it is restarting is up
        async def which_children(self):
            await trio.sleep(SUPERVISOR_ANSWER_S * 0.8)
            keeper.started_at = trio.current_time()
            return [ChildInfo("keeper", keeper, ChildState.RUNNING, ChildType.WORKER, 1)]

    node = Node(str(tmp_path / "gateway.yaml"), None)
    node.root, node.config = Restarting(), parse_config("{}")  # type: ignore[assignment]
    (entry,) = (await node.status())["tree"]["children"]
    assert entry["pid"] == 4242 and entry["uptime_s"] == 0


async def test_health_stays_200_with_discovery_while_a_reload_drains_the_old_generation(tmp_path):
    """While a reload's old generation drains, /health, its discovery check included, answers at once, with the
    discovery process the reload restarted (the retired generation drains beside the root supervisor, which never
    waits for it; and a busy root is answered for from its last listing), so a drain never makes it 503."""
    backend, upstream = Backend("a"), trio.CancelScope()  # (cancelled: the slow request ends, and the drain)

    async def serve_backend(task_status: trio.TaskStatus[int]) -> None:
        with upstream:
            await backend.serve(task_status=task_status)

    async with trio.open_nursery() as nursery:
        await nursery.start(serve_backend)
        doc = {"upstreams": [{"name": "u", "targets": [{"target": f"localhost:{backend.port}"}]}],  # (a name: DNS)
               "services": [{"name": "s", "host": "u", "routes": [{"paths": ["/"]}]}]}
        gw = GatewayNode(tmp_path / "gw", doc, drain_timeout=60)
        try:
            await gw.start(workers=1)
            before = await request(gw.status_port, "GET", "/health")
            assert before.status == 200, before.json()
            discovery = before.json()["checks"]["discovery"]["details"]["process"]
            slow_done = trio.Event()

            async def slow() -> None:
                try:
                    await request(gw.port, "GET", "/slow?s=60", timeout=60)
                finally:
                    slow_done.set()

            nursery.start_soon(slow)
            while backend.in_flight == 0:
                await trio.sleep(0.02)
            out = await gw.acli("reload")
            assert out.returncode == 0, out.stderr
            during = await request(gw.status_port, "GET", "/health", timeout=10)
            assert not slow_done.is_set(), "the drain ended before /health was asked"
            checks = during.json()["checks"]
            assert during.status == 200, checks
            assert checks["discovery"]["details"]["process"] not in (None, discovery), checks["discovery"]  # restarted
        finally:
            upstream.cancel()
            await trio.to_thread.run_sync(gw.cleanup)
            nursery.cancel_scope.cancel()


async def test_a_json_config_runs_as_check_config_read_it_and_a_reload_from_yaml_switches_every_copy(tmp_path):
    """Kong reads a declarative file whose name ends in json as JSON (kong/db/declarative/init.lua:109-112 `if
    filename == nil or filename:match("json$") ... cjson_decode(contents)`), and so do the root and check-config
    (document.read_document). Every process reads the run directory's copy in the file's format (config.current.json,
    config.genN.json): a JSON document that is no YAML (a header name of 1,100 characters: over a YAML simple key's
    1,024) starts, its keeper and health checker running. A reload from a YAML file makes the copies YAML; a keeper
    killed after it, whose command line names the JSON copy, comes back on the YAML one. The status server's config
    hash is the md5 of the file's text (init.lua:149 `md5(contents)`), read from the copy."""
    upstream = {"name": "u", "targets": [{"target": "127.0.0.1:9"}],
                "healthchecks": {"active": {"healthy": {"interval": 30}, "unhealthy": {"interval": 30}}}}
    doc = {"upstreams": [upstream],
           "services": [{"name": "s", "host": "u",
                         "routes": [{"name": "r", "paths": ["/a"], "headers": {"x-" + "a" * 1100: ["v"]}}]}]}
    node = GatewayNode(tmp_path / "gw", doc)
    node.config = node.dir / "gateway.json"
    node.config.write_text(json.dumps(node.doc))
    run = node.dir / "run"
    try:
        await node.start(workers=1)
        assert {"config.current.json", "config.gen1.json"} <= {p.name for p in run.iterdir()}
        assert not (run / "config.current.yaml").exists() and not (run / "config.gen1.yaml").exists()
        assert await node.child_pid("health") is not None
        status = (await request(node.status_port, "GET", "/status")).json()
        assert status["configuration_hash"] == hashlib.md5(node.config.read_bytes()).hexdigest()

        upstream["targets"] = [{"target": "127.0.0.1:10"}]  # (node.doc holds these)
        doc["services"][0]["routes"] = [{"name": "r", "paths": ["/a"]}]
        yaml_file = node.dir / "gateway.yaml"
        yaml_file.write_text(yaml.safe_dump(node.doc))
        await node.admin("reload", config=str(yaml_file))
        assert "did not confirm" not in node.log() and "could not read" not in node.log()
        assert {"config.current.yaml", "config.gen2.yaml"} <= {p.name for p in run.iterdir()}
        assert not (run / "config.current.json").exists()
        assert list(await node.targets()) == ["u|127.0.0.1:10"]

        keeper = await node.child_pid("keeper")
        assert keeper is not None
        os.kill(keeper, signal.SIGKILL)
        await wait_for(lambda: _other_keeper(node, keeper), 10, what="a new keeper")
        assert list(await node.targets()) == ["u|127.0.0.1:10"]
    finally:
        await trio.to_thread.run_sync(node.cleanup)


async def _other_keeper(node: GatewayNode, old: int) -> bool:
    """Whether a keeper other than `old` runs."""
    doc = await node.status()
    return any(c["id"] == "keeper" and c["pid"] not in (None, old) and c["state"] == "running"
               for c in doc["tree"]["children"])
