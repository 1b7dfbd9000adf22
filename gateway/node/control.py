"""The CLI's side of operations: start (daemonised or not), stop, reload, status, admin calls.

Where a running gateway is found: see gateway.node.locate (`--pid-file` / `--admin`, else the config named by
`--config`, even an invalid one, else run/gateway.pid and ipc://run/admin.sock relative to the working directory).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

from gateway.bus.admin_client import AdminUnavailable, admin_call
from gateway.config import ConfigError
from gateway.node.files import open_log
from gateway.node.locate import Location, NotRunning, alive, locate
from gateway.node.locate import running_pid as _running_pid
from gateway.node.root import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, load_validated

START_TIMEOUT_S = 60.0
ADMIN_TIMEOUT_S = 5.0
RELOAD_TIMEOUT_S = 120.0  # a reload waits for the new generation to accept (worker_start_timeout_s per worker)
FORCED_STOP_WAIT_S = 10.0


def running_pid(pid_file: str) -> int | None:
    """The pid of the gateway whose pid file this is, if it runs (a stale pid file is removed)."""
    try:
        return _running_pid(pid_file)
    except NotRunning:
        return None


def _located(config_path: str | None, pid_file: str | None, admin: str | None) -> Location:
    where = locate(config_path, pid_file, admin)
    if where.note:
        print(where.note, file=sys.stderr)
    return where


def start_foreground(config_path: str, workers: int | None, ready_fd: int | None) -> int:
    """Run the root in this process until it stops."""
    import trio

    from gateway.node.root import Node, StartupError

    def ready(info: str) -> None:
        if ready_fd is not None:
            os.write(ready_fd, f"ready {info}\n".encode())
            os.close(ready_fd)

    try:
        _, config = load_validated(config_path)
    except ConfigError as e:
        print("\n".join(e.messages), file=sys.stderr)
        return EXIT_CONFIG
    pid = running_pid(config.gateway.pid_file)
    if pid is not None and pid != os.getpid():
        print(f"gateway: already running (pid {pid}, pid file {config.gateway.pid_file})", file=sys.stderr)
        return EXIT_FAILURE
    node = Node(config_path, workers, ready)
    try:
        return trio.run(node.run)
    except StartupError as e:
        print(f"gateway: cannot start: {e}", file=sys.stderr)
        if ready_fd is not None:
            try:
                os.write(ready_fd, f"error {e}\n".encode())
            except OSError:
                pass
        return EXIT_FAILURE


def start_daemon(config_path: str, workers: int | None) -> int:
    """Start the root in the background; return once every worker accepts, or say why it could not."""
    try:
        _, config = load_validated(config_path)
    except ConfigError as e:
        print("\n".join(e.messages), file=sys.stderr)
        return EXIT_CONFIG
    gw = config.gateway
    pid = running_pid(gw.pid_file)
    if pid is not None:
        print(f"gateway: already running (pid {pid}, pid file {gw.pid_file})", file=sys.stderr)
        return EXIT_FAILURE
    try:
        log_fd = open_log(gw.log_file)
    except OSError as e:
        print(f"gateway: cannot open the log file {gw.log_file}: {e.strerror or e}", file=sys.stderr)
        return EXIT_FAILURE
    read_fd, write_fd = os.pipe()
    argv = [sys.executable, "-m", "gateway", "start", "--foreground", "--config", os.path.abspath(config_path),
            "--ready-fd", str(write_fd)]
    if workers:
        argv += ["--workers", str(workers)]
    with os.fdopen(log_fd, "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(write_fd,),
                                start_new_session=True)
    os.close(write_fd)
    line = _read_line(read_fd, START_TIMEOUT_S)
    if line.startswith("ready"):
        print(f"gateway started: {line[len('ready '):]}; log: {gw.log_file}")
        return EXIT_OK
    if proc.poll() is None:
        proc.terminate()
    reason = line[len("error "):] if line.startswith("error ") else f"no readiness within {START_TIMEOUT_S:g}s"
    print(f"gateway: cannot start: {reason} (see {gw.log_file})", file=sys.stderr)
    return EXIT_FAILURE


def _read_line(fd: int, timeout: float) -> str:
    import select

    data = b""
    deadline = time.monotonic() + timeout
    try:
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    return data.decode(errors="replace").split("\n", 1)[0]


def stop(config_path: str | None, timeout: float, pid_file: str | None = None) -> int:
    """Graceful stop (SIGTERM); after `timeout` seconds, a second SIGTERM forces it."""
    where = _located(config_path, pid_file, None)
    try:
        pid = _running_pid(where.pid_file)
    except NotRunning as e:
        print(f"gateway: {e}", file=sys.stderr)
        return EXIT_FAILURE
    os.kill(pid, signal.SIGTERM)
    if _wait_gone(pid, timeout):
        print(f"gateway stopped (pid {pid})")
        return EXIT_OK
    print(f"gateway: still draining after {timeout:g}s; forcing the stop", file=sys.stderr)
    _signal(pid, signal.SIGTERM)
    if _wait_gone(pid, FORCED_STOP_WAIT_S):
        print(f"gateway stopped (pid {pid}), forced")
        return EXIT_OK
    _signal(pid, signal.SIGKILL)
    print(f"gateway: pid {pid} did not stop; killed it (its children stop when they see it gone)", file=sys.stderr)
    return EXIT_FAILURE


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _wait_gone(pid: int, timeout: float) -> bool:
    """Until `pid` has exited: a zombie counts as gone (under a subreaper that has not reaped it yet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return not alive(pid)


def admin(config_path: str | None, cmd: str, args: dict[str, Any] | None = None, as_json: bool = True,
          pid_file: str | None = None, endpoint: str | None = None) -> int:
    """Send one admin command and print the reply; say so at once when no gateway runs."""
    where = _located(config_path, pid_file, endpoint)
    try:
        pid = _running_pid(where.pid_file)
    except NotRunning as e:
        print(f"gateway: {e}", file=sys.stderr)
        return EXIT_FAILURE
    timeout = RELOAD_TIMEOUT_S if cmd == "reload" else ADMIN_TIMEOUT_S
    try:
        reply = admin_call(where.admin, cmd, args, timeout=timeout)
    except AdminUnavailable as e:
        print(f"gateway: pid {pid} is running, but {e}; see its log ({where.log_file})", file=sys.stderr)
        return EXIT_FAILURE
    if not reply.ok:
        print(f"gateway: {cmd} failed: {reply.error}", file=sys.stderr)
        return EXIT_CONFIG if "config rejected" in (reply.error or "") else EXIT_FAILURE
    if as_json:
        print(json.dumps(reply.result, indent=2))
    elif cmd == "status":
        print(render_status(reply.result))
    elif cmd == "reload":
        result = reply.result
        print(f"reloaded {result['config']}: generation {result['generation']} serving, "
              f"generation {result['retiring']} draining")
        for key in result.get("restart_needed", []):
            print(f"note: gateway.{key} changed; it takes effect at the next start", file=sys.stderr)
    else:
        print(json.dumps(reply.result, indent=2))
    return EXIT_OK


def reload(config_path: str | None, pid_file: str | None = None, endpoint: str | None = None) -> int:
    """Reload the running gateway: with --config F, from F (which it then keeps: later reloads and SIGHUP re-read F,
    as `kong reload -c` does); without, from the file it was started with or last reloaded from."""
    args = {"config": os.path.abspath(config_path)} if config_path else None
    return admin(config_path, "reload", args, as_json=False, pid_file=pid_file, endpoint=endpoint)


def render_status(status: dict[str, Any]) -> str:
    """The tree as text: one line per supervisor and worker with pid, uptime and restarts."""
    lines = [f"gateway {status['version']}  pid {status['pid']}  up {_duration(status['uptime_s'])}  "
             f"generation {status['generation']}  listen {', '.join(status['listen'])}",
             f"config {status['config']}"]

    def walk(node: dict[str, Any], prefix: str, last: bool, top: bool) -> None:
        branch = "" if top else ("└─ " if last else "├─ ")
        detail = []
        if node.get("strategy"):
            detail.append(f"{node['strategy']} {node['intensity']}/{node['period_s']}s")
        if node.get("pid"):
            detail.append(f"pid {node['pid']}")
        if node.get("uptime_s") is not None:
            detail.append(f"up {_duration(node['uptime_s'])}")
        if "restarts" in node:
            detail.append(f"restarts {node['restarts']}")
        if node.get("state") and node["state"] != "running":
            detail.append(node["state"])
        lines.append(f"{prefix}{branch}{node['id']}  " + "  ".join(detail))
        children = node.get("children", [])
        for i, child in enumerate(children):
            walk(child, prefix + ("" if top else ("   " if last else "│  ")), i == len(children) - 1, False)

    walk(status["tree"], "", True, True)
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{seconds:.1f}s"
    if s < 7200:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
