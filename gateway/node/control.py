"""The CLI's side of operations: start (daemonised or not), stop, reload, status, admin calls.

Where a running gateway is found: the pid file and admin endpoint named in the config's `gateway:` block
(`--config FILE`), or the defaults (run/gateway.pid, ipc://run/admin.sock) relative to the working directory.
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
from gateway.config.schema import GatewaySettings
from gateway.node.files import open_log
from gateway.node.root import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, load_validated

START_TIMEOUT_S = 60.0


def _settings(config_path: str | None) -> GatewaySettings:
    if config_path is None:
        return GatewaySettings()
    _, config = load_validated(config_path)
    return config.gateway


def _endpoint(gw: GatewaySettings) -> str:
    ep = gw.admin
    if ep.startswith("ipc://") and not ep.startswith("ipc:///"):
        return "ipc://" + os.path.abspath(ep[len("ipc://"):])
    return ep


def running_pid(gw: GatewaySettings) -> int | None:
    """The pid in the pid file if that process is alive."""
    try:
        with open(gw.pid_file) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return pid


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
    pid = running_pid(config.gateway)
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
    pid = running_pid(gw)
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


def stop(config_path: str | None, timeout: float) -> int:
    """Graceful stop (SIGTERM); after `timeout` seconds, a second SIGTERM forces it."""
    gw = _settings(config_path)
    pid = running_pid(gw)
    if pid is None:
        print(f"gateway: not running (no live pid in {gw.pid_file})", file=sys.stderr)
        return EXIT_FAILURE
    os.kill(pid, signal.SIGTERM)
    if _wait_gone(pid, timeout):
        print(f"gateway stopped (pid {pid})")
        return EXIT_OK
    print(f"gateway: still draining after {timeout:g}s; forcing the stop", file=sys.stderr)
    os.kill(pid, signal.SIGTERM)
    if _wait_gone(pid, 10):
        return EXIT_OK
    os.kill(pid, signal.SIGKILL)
    return EXIT_FAILURE


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def admin(config_path: str | None, cmd: str, args: dict[str, Any] | None = None, as_json: bool = True) -> int:
    """Send one admin command and print the reply."""
    gw = _settings(config_path)
    try:
        reply = admin_call(_endpoint(gw), cmd, args, timeout=60 if cmd == "reload" else 5)
    except AdminUnavailable as e:
        print(f"gateway: {e}", file=sys.stderr)
        return EXIT_FAILURE
    if not reply.ok:
        print(f"gateway: {cmd} failed: {reply.error}", file=sys.stderr)
        return EXIT_CONFIG if "config rejected" in (reply.error or "") else EXIT_FAILURE
    if as_json:
        print(json.dumps(reply.result, indent=2))
    elif cmd == "status":
        print(render_status(reply.result))
    elif cmd == "reload":
        print(f"reloaded: generation {reply.result['generation']} serving, "
              f"generation {reply.result['retiring']} draining")
    else:
        print(json.dumps(reply.result, indent=2))
    return EXIT_OK


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
