#!/usr/bin/env python3
"""Idle SSE streams through the gateway: how many a host holds, at what memory, idle CPU and latency (issue 19).

Starts, all on loopback and stopped by pid at the end:
  - `--backends` SSE upstream processes (this file, `backend` mode): a GET gets an event-stream head and one event,
    then nothing (an idle stream); any other request gets a small JSON answer at once;
  - the supervised gateway (`gateway start --foreground --workers W`) with one upstream over those backends;
  - `--clients` client processes (`client` mode), each opening its share of the streams from its own loopback source
    address (127.0.0.2, .3, ...: one address has ~28k ephemeral ports) and holding them.
Then it reports: the time to open them all, the gateway's total memory (summed RSS, which counts the pages the
processes share once per process, and summed PSS, which counts them once), its idle CPU over `--idle` seconds (as
% of one core, in all and by process name), the p50/p99 of `--probes` ordinary requests made while the streams stay
open, and whether any worker lost the state keeper's heartbeat meanwhile (its log says so). A process here has at
most 20,000 descriptors (the hard limit), and a proxied stream takes two in the gateway: 50,000 streams need at
least 5 workers.

    .venv/bin/python loadtest/streams.py --streams 10000 --workers 2
    .venv/bin/python loadtest/streams.py --streams 50000 --workers 6 --clients 4 --backends 4
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STREAM_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
               b"transfer-encoding: chunked\r\n\r\n")
EVENT = b"data: {\"ready\": true}\n\n"
PONG = b'{"ok":true}'


# --- backend ---------------------------------------------------------------------------------------------------------


def run_backend(port: int) -> None:
    import trio

    async def serve(stream: trio.SocketStream) -> None:
        data = b""
        try:
            while True:
                while b"\r\n\r\n" not in data:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, data = data.partition(b"\r\n\r\n")
                if head.startswith(b"GET /events"):
                    await stream.send_all(STREAM_HEAD + b"%x\r\n%b\r\n" % (len(EVENT), EVENT))
                    await stream.receive_some(1)  # held until the gateway closes it
                    return
                await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                                      b"\r\n%b" % (len(PONG), PONG))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return

    async def main() -> None:
        await trio.serve_tcp(serve, port, host="127.0.0.1", backlog=4096)

    _raise_nofile()
    trio.run(main)


# --- client ----------------------------------------------------------------------------------------------------------


def run_client(port: int, count: int, source: str) -> None:
    """Open `count` streams from `source`, print "opened N" when every one has its first event, hold until killed."""
    import trio

    _raise_nofile()
    opened = 0
    failed = 0

    async def one(done: trio.Event) -> None:
        nonlocal opened, failed
        sock = trio.socket.socket()
        try:
            await sock.bind((source, 0))
            await sock.connect(("127.0.0.1", port))
            stream = trio.SocketStream(sock)
            await stream.send_all(b"GET /events HTTP/1.1\r\nHost: streams.test\r\nAccept: text/event-stream\r\n\r\n")
            data = b""
            while b"ready" not in data:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    raise OSError("closed")
                data += chunk
        except OSError:
            failed += 1
            return
        finally:
            if opened + failed + 1 >= count:
                done.set()
        opened += 1
        await trio.sleep_forever()

    async def main() -> None:
        done = trio.Event()
        async with trio.open_nursery() as nursery:
            for i in range(count):
                nursery.start_soon(one, done)
                if i % 500 == 499:
                    await trio.sleep(0)
            while opened + failed < count:
                await trio.sleep(0.2)
            print(json.dumps({"opened": opened, "failed": failed}), flush=True)
            await trio.sleep_forever()

    trio.run(main)


# --- the run ---------------------------------------------------------------------------------------------------------


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, log: Path | None = None, timeout: float = 60) -> None:
    """Wait until `proc` (`what`) accepts on `port`; exit at once, with its last words, if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            said = log.read_text(errors="replace").strip().splitlines()[-5:] if log else []
            raise SystemExit("\n".join([f"streams.py: {what} exited ({proc.returncode}) before it accepted on "
                                         f"127.0.0.1:{port}", *said]))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"streams.py: {what}: nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


def group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[2]) == pgid:
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


def _summed_kib(pids: list[int], path: str, field: str) -> int:
    """The sum over `pids` of a "Field:  N kB" line of /proc/PID/`path`, in bytes."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/{path}") as f:
                for line in f:
                    if line.startswith(field):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    return total


def rss_bytes(pids: list[int]) -> int:
    return _summed_kib(pids, "status", "VmRSS:")


def pss_bytes(pids: list[int]) -> int:
    """Proportional set size: each page shared by n processes (the workers' copy-on-write heap, forked from one
    template) counted 1/n in each, so the sum is the memory the gateway really holds; summed RSS counts it n times."""
    return _summed_kib(pids, "smaps_rollup", "Pss:")


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """CPU seconds (user + system) used so far, per process."""
    used = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            used[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            pass
    return used


def role(pid: int) -> str:
    """What a gateway process is: its name as ps -o comm shows it ("gateway worker", "gateway keeper", ...)."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "gone"


def probe_latencies(port: int, count: int) -> list[float]:
    out = []
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        for _ in range(count):
            started = time.perf_counter()
            sock.sendall(b"GET /ping HTTP/1.1\r\nHost: streams.test\r\n\r\n")
            data = b""
            while not data.endswith(PONG):
                data += sock.recv(65536)
            out.append((time.perf_counter() - started) * 1000)
    finally:
        sock.close()
    return out


def stop(proc: subprocess.Popen, group: bool = True) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM) if group else proc.terminate()
        except ProcessLookupError:
            return
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL) if group else proc.kill()
            proc.wait(10)


def whole(low: int, high: int = 10**9):  # noqa: ANN201 - an argparse type: a whole number in [low, high]
    def check(text: str) -> int:
        if not text.strip().isdigit() or not low <= int(text) <= high:
            raise argparse.ArgumentTypeError(f"expected a whole number of {low} to {high}, got {text!r}")
        return int(text)

    return check


def seconds(text: str) -> float:
    """Seconds above 0 (an argparse type)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < 10**6:  # NaN too
        raise argparse.ArgumentTypeError(f"expected seconds above 0, got {text!r}")
    return value


def ensure_project_environment() -> None:
    """Re-execute with the project's virtualenv (.venv, made by scripts/setup) when this python lacks the gateway:
    the gateway's processes run with this interpreter."""
    import importlib.util

    if importlib.util.find_spec("gateway") and importlib.util.find_spec("trio"):
        return
    python = ROOT / ".venv" / "bin" / "python"
    if not python.exists() or os.environ.get("GATEWAY_STREAMS_REEXEC"):
        raise SystemExit(f"streams.py: {sys.executable} cannot import the gateway; run scripts/setup, then "
                         f".venv/bin/python loadtest/streams.py")
    os.execve(python, [str(python), str(Path(__file__).resolve()), *sys.argv[1:]],
              {**os.environ, "GATEWAY_STREAMS_REEXEC": "1"})


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", nargs="?", default="run", choices=["run", "backend", "client"])
    p.add_argument("--streams", type=whole(1), default=1000, help="idle streams to open (default 1000)")
    p.add_argument("--workers", type=whole(1, 1024), default=2, help="gateway workers (default 2)")
    p.add_argument("--clients", type=whole(0, 250), default=0,
                   help="client processes, on 127.0.0.2 and up (default: 1 per 12,000 streams)")
    p.add_argument("--backends", type=whole(0, 1024), default=0,
                   help="backend processes (default: 1 per 12,000 streams)")
    p.add_argument("--idle", type=seconds, default=10.0, help="seconds of idle CPU measurement (default 10)")
    p.add_argument("--probes", type=whole(1), default=500,
                   help="ordinary requests for the latency figures (default 500)")
    p.add_argument("--sse-keepalive", type=seconds, default=15.0,
                   help="gateway.sse_keepalive: seconds of silence before a stream gets a comment (default 15)")
    p.add_argument("--port", type=whole(1, 65535), help=argparse.SUPPRESS)  # the backend and client modes'
    p.add_argument("--count", type=whole(0), help=argparse.SUPPRESS)
    p.add_argument("--source", help=argparse.SUPPRESS)
    args = p.parse_args()
    needs = {"run": [], "backend": ["port"], "client": ["port", "count", "source"]}[args.mode]
    if missing := [f"--{name}" for name in needs if getattr(args, name) is None]:
        p.error(f"the {args.mode} mode (which the run starts itself) needs {', '.join(missing)}")
    ensure_project_environment()
    if args.mode == "backend":
        run_backend(args.port)
        return 0
    if args.mode == "client":
        run_client(args.port, args.count, args.source)
        return 0
    per_process = 12000
    clients = args.clients or max(1, -(-args.streams // per_process))
    backends = args.backends or max(1, -(-args.streams // per_process))
    procs: list[subprocess.Popen] = []
    gateway = None
    with tempfile.TemporaryDirectory(prefix="gateway-streams-") as tmp:
        try:
            ports = [free_port() for _ in range(backends)]
            for port in ports:
                procs.append(subprocess.Popen([sys.executable, __file__, "backend", "--port", str(port)],
                                              start_new_session=True))
            for port, proc in zip(ports, procs, strict=True):
                wait_port(port, proc, "the backend")
            gw_port = free_port()
            config = Path(tmp) / "gateway.json"
            config.write_text(json.dumps({
                "gateway": {"listen": f"127.0.0.1:{gw_port}", "status_listen": None, "drain_timeout": 1,
                            "log_file": str(Path(tmp) / "gateway.log"), "pid_file": str(Path(tmp) / "gateway.pid"),
                            "admin": f"ipc://{tmp}/admin.sock", "bus": f"ipc://{tmp}/bus.sock",
                            "header_timeout_s": 60, "sse_keepalive": args.sse_keepalive},
                "services": [{"name": "streams", "url": "http://streams-up", "read_timeout": 600000,
                              "routes": [{"name": "all", "paths": ["/"], "strip_path": False}]}],
                "upstreams": [{"name": "streams-up", "targets": [{"target": f"127.0.0.1:{p}"} for p in ports]}]}))
            log = open(Path(tmp) / "gateway.out", "wb")
            gateway = subprocess.Popen([sys.executable, "-m", "gateway", "start", "--foreground", "--workers",
                                        str(args.workers), "--config", str(config)], cwd=ROOT, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
            wait_port(gw_port, gateway, "the gateway", Path(tmp) / "gateway.out")
            time.sleep(2)  # every worker accepting
            pids = group_pids(gateway.pid)
            rss_before = rss_bytes(pids)
            pss_before = pss_bytes(pids)
            started = time.monotonic()
            share = -(-args.streams // clients)
            for i in range(clients):
                count = min(share, args.streams - i * share)
                procs.append(subprocess.Popen([sys.executable, __file__, "client", "--port", str(gw_port), "--count",
                                               str(count), "--source", f"127.0.0.{2 + i}"], stdout=subprocess.PIPE,
                                              start_new_session=True))
            opened = failed = 0
            for proc in procs[-clients:]:
                line = proc.stdout.readline()  # type: ignore[union-attr]
                if not line:
                    raise SystemExit(f"streams.py: a client process exited ({proc.wait()}) before it reported")
                result = json.loads(line)
                opened += result["opened"]
                failed += result["failed"]
            open_s = time.monotonic() - started
            time.sleep(2)
            pids = group_pids(gateway.pid)
            rss = rss_bytes(pids)
            pss = pss_bytes(pids)
            cpu_before = cpu_seconds(pids)
            time.sleep(args.idle)
            cpu_after = cpu_seconds(pids)
            by_role: dict[str, float] = {}
            for pid, used in cpu_after.items():
                name = role(pid)
                by_role[name] = by_role.get(name, 0.0) + (used - cpu_before.get(pid, used)) / args.idle * 100
            idle_cpu = sum(by_role.values())
            latencies = probe_latencies(gw_port, args.probes)
            lost = (Path(tmp) / "gateway.out").read_text(errors="replace").count("no heartbeat from the state keeper")
            report = {
                "streams": args.streams, "opened": opened, "failed": failed, "workers": args.workers,
                "sse_keepalive_s": args.sse_keepalive,
                "open_all_s": round(open_s, 2),
                "gateway_rss_mib": round(rss / 2**20, 1),
                "gateway_pss_mib": round(pss / 2**20, 1),
                "rss_per_stream_kib": round((rss - rss_before) / max(1, opened) / 1024, 2),
                "pss_per_stream_kib": round((pss - pss_before) / max(1, opened) / 1024, 2),
                "idle_cpu_pct_of_one_core": round(idle_cpu, 2),
                "idle_cpu_pct_by_process": {name: round(pct, 2) for name, pct in sorted(by_role.items())},
                "probe_p50_ms": round(statistics.median(latencies), 3),
                "probe_p99_ms": round(sorted(latencies)[int(len(latencies) * 0.99) - 1], 3),
                "keeper_heartbeats_missed": lost,
            }
            print(json.dumps(report, indent=2))
            return 0 if failed == 0 else 1
        finally:
            for proc in reversed(procs):
                stop(proc)
            if gateway is not None:
                stop(gateway)


if __name__ == "__main__":
    sys.exit(main())
