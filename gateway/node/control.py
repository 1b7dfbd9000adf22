"""The CLI's side of operations: start (daemonised or not), stop, reload, status, admin calls.

Where a running gateway is found: see gateway.node.locate (`--pid-file` / `--admin`, else the config named by
`--config`, even an invalid one, else run/gateway.pid and ipc://run/admin.sock relative to the working directory).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import zmq

from gateway.bus.admin_client import AdminRefused, AdminUnavailable, admin_call
from gateway.bus.admin_server import not_a_socket
from gateway.bus.curve import NEED_KEYS, ClientKeys, KeyFileError, client_keys, read_certificate, settings_problems
from gateway.cli import EXIT_CONFIG, EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, command_line
from gateway.config import Config, ConfigError, kong_conf, parse_host_port
from gateway.config.listen import listen_flags, status_options
from gateway.config.schema import GatewaySettings
from gateway.http.net import bind_listener
from gateway.node.files import body_temp_problem, file_problem, open_log
from gateway.node.locate import Location, NotRunning, alive, locate, socket_path_problems
from gateway.node.locate import running_pid as _running_pid
from gateway.node.paths import absolute_endpoint

START_TIMEOUT_S = 60.0
ADMIN_TIMEOUT_S = 5.0
RELOAD_TIMEOUT_S = 120.0  # a reload waits for the new generation to accept (worker_start_timeout_s per worker)
FORCED_STOP_WAIT_S = 10.0
STARTING = "starting"  # how the root's answer to an admin command begins until it is ready (said as it is)


def load_validated(path: str) -> tuple[str, Config]:
    """gateway.node.root's whole check of a config file, imported by the commands that need it: `status`, `stop`
    and `admin` load no data-plane module (a fifth of a second of imports for every command)."""
    from gateway.node.root import load_validated as validated

    return validated(path)


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

    from gateway.node.root import Node, StartInterrupted, StartupError

    pipe = [ready_fd] if ready_fd is not None else []  # to `gateway start`: one line, then closed
    started: list[str] = []  # the gateway was up (every worker accepted): a later failure is no failure to start

    def tell(line: str) -> None:
        while pipe:
            fd = pipe.pop()
            try:
                os.write(fd, f"{line}\n".encode())
            except OSError:
                pass  # `gateway start` stopped waiting
            finally:
                os.close(fd)

    def ready(info: str) -> None:
        started.append(info)
        tell(f"ready {info}")

    def failed(reason: str, code: int = EXIT_FAILURE) -> int:
        print(f"gateway: cannot start: {reason}", file=sys.stderr)
        tell(f"error {reason}")
        return code

    try:
        _, config = load_validated(config_path)
    except ConfigError as e:
        print("\n".join(e.messages), file=sys.stderr)
        return EXIT_CONFIG
    pid = running_pid(config.gateway.pid_file)
    if pid is not None and pid != os.getpid():
        return failed(_already_running(pid, config.gateway.pid_file))
    problem = startup_problem(config_path, config.gateway)
    if problem is not None:
        return failed(*problem)
    node = Node(config_path, workers, ready)
    try:
        return trio.run(node.run)
    except StartupError as e:  # (a stop before it was ready: interrupted, as by Ctrl-C)
        return failed(str(e), EXIT_INTERRUPTED if isinstance(e, StartInterrupted) else EXIT_FAILURE)
    except OSError as e:  # one startup_problem did not foresee (a race, or a file the root writes)
        why = f"{e.filename}: {e.strerror}" if e.filename else str(e.strerror or e)
        if started:
            print(f"gateway: stopped after it had started, on an error: {why}; fix that and start it again",
                  file=sys.stderr)
            return EXIT_FAILURE
        return failed(why)
    except BaseException as e:  # Ctrl-C before the gateway handles signals itself: trio.run may wrap it in a group
        if not isinstance(e, KeyboardInterrupt) and not (isinstance(e, BaseExceptionGroup)
                                                         and e.split(KeyboardInterrupt)[1] is None):
            raise
        return failed("interrupted before it was ready (every process it had started is stopped)",
                      EXIT_INTERRUPTED)


def _already_running(pid: int, pid_file: str) -> str:
    return (f"already running (pid {pid}, pid file {pid_file}); `gateway stop` it first, or give this one its "
            "own gateway.pid_file, listen and admin")


def startup_problem(config_path: str, gw: GatewaySettings) -> tuple[str, int] | None:
    """What would stop a start halfway, found before anything is started: (one line naming the file, the setting
    and what to do; the exit status), or None. The root would otherwise fail deep inside (a traceback in its log,
    or a zmq context that never terminates)."""
    problems = path_problems(config_path, gw)
    if problems:
        return problems[0]
    if gw.status_listen:
        address, flags = listen_flags(gw.status_listen)
        at = parse_host_port(address, None)
        if at is not None and at[1]:
            host, port = at[0], at[1]
            try:
                bind_listener(host, port, reuse_port=status_options(flags)[1]).close()
            except OSError as e:
                shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                todo = "stop what listens there (`ss -ltnp` names it), or " if e.errno == errno.EADDRINUSE else ""
                return (f"{config_path}: gateway.status_listen: cannot listen on {shown}: {e.strerror or e}; "
                        f"{todo}change gateway.status_listen", EXIT_FAILURE)
    return None


def path_problems(config_path: str, gw: GatewaySettings) -> list[tuple[str, int]]:
    """The files, directories and sockets a start would make that it could not (nothing is made): one line each,
    naming the file, the setting and what to do, with its exit status; `check-config` makes these checks too, as
    `nginx -t` opens the pid and log files and creates the temporary paths (src/core/ngx_cycle.c, ngx_init_cycle in
    test mode)."""
    problems = [(line, EXIT_CONFIG) for line in socket_path_problems(config_path, gw)]
    refused = dict(_not_sockets(gw))  # (a directory there: said once, as not a socket)
    problems += [(f"{config_path}: gateway.{key}: {problem}", EXIT_FAILURE) for key, problem in refused.items()]
    files = [("pid_file", gw.pid_file, False), ("log_file", gw.log_file, True),
             *((key, path[len("ipc://"):], False) for key in ("admin", "bus")
               if (path := absolute_endpoint(getattr(gw, key))).startswith("ipc://") and key not in refused)]
    for key, path, appended in files:
        problem = file_problem(path, appended)
        if problem is not None:
            problems.append((f"{config_path}: gateway.{key}: {problem} for gateway.{key}", EXIT_FAILURE))
    problem = body_temp_problem(os.path.dirname(os.path.abspath(gw.pid_file)), gw.client_body_temp_path)
    if problem is not None:  # (every worker would fail to make it)
        problems.append((f"{config_path}: gateway.client_body_temp_path: {problem}", EXIT_FAILURE))
    if gw.admin_curve is not None and gw.admin.startswith("tcp://"):  # (the key files the root's CURVE server reads)
        problems += [(f"{config_path}: gateway.{line}", EXIT_CONFIG)
                     for line in settings_problems(gw.admin_curve.secret_key_file, gw.admin_curve.authorized_keys)]
    return problems


def _not_sockets(gw: GatewaySettings) -> list[tuple[str, str]]:
    """(setting, why) for each ipc path of gateway.admin and gateway.bus (and the bus's PUB twin) that names something
    other than a socket, which a start's bind would destroy."""
    from gateway.bus.protocol import pub_endpoint

    found = []
    for key in ("admin", "bus"):
        endpoint = absolute_endpoint(getattr(gw, key))
        if endpoint.startswith("ipc://"):
            for bound in [endpoint, pub_endpoint(endpoint)] if key == "bus" else [endpoint]:
                problem = not_a_socket(bound[len("ipc://"):])
                if problem is not None:
                    found.append((key, problem))
    return found


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
        print(f"gateway: cannot start: {_already_running(pid, gw.pid_file)}", file=sys.stderr)
        return EXIT_FAILURE
    problem = startup_problem(config_path, gw)
    if problem is not None:
        print(f"gateway: cannot start: {problem[0]}", file=sys.stderr)
        return problem[1]
    try:
        log_fd = open_log(gw.log_file)
    except OSError as e:
        print(f"gateway: cannot start: {config_path}: gateway.log_file: cannot open {gw.log_file}: "
              f"{e.strerror or e}", file=sys.stderr)
        return EXIT_FAILURE
    log_start = os.fstat(log_fd).st_size
    read_fd, write_fd = os.pipe()
    argv = command_line("start", "--foreground", "--config", os.path.abspath(config_path), "--ready-fd", str(write_fd))
    if workers:
        argv += ["--workers", str(workers)]
    with os.fdopen(log_fd, "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(write_fd,),
                                start_new_session=True)
    os.close(write_fd)
    try:
        line = read_line(read_fd, START_TIMEOUT_S)
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)  # as Ctrl-C would stop it in the foreground: it cleans up after itself
        if _reap(proc, FORCED_STOP_WAIT_S) is None:
            proc.kill()
            _reap(proc, FORCED_STOP_WAIT_S)
        print(f"gateway: start interrupted; stopped the gateway that was starting (pid {proc.pid})", file=sys.stderr)
        return EXIT_INTERRUPTED
    if line.startswith("ready"):
        print(f"gateway started: {line[len('ready '):]}; log: {gw.log_file}")
        return EXIT_OK
    status = _reap(proc, 1.0)  # the pipe closed: it exits, or has
    if line.startswith("error "):
        reason = line[len("error "):]
    elif status is not None:
        last = _last_line(gw.log_file, log_start)
        reason = f"it exited (status {status}) before it was ready" + (f": {last}" if last else "")
    else:
        proc.terminate()
        _reap(proc, FORCED_STOP_WAIT_S)
        reason = f"no readiness within {START_TIMEOUT_S:g}s; stopped it"
    print(f"gateway: cannot start: {reason} (see {gw.log_file})", file=sys.stderr)
    return status if status in (EXIT_CONFIG, EXIT_INTERRUPTED) else EXIT_FAILURE


def _reap(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    """Its exit status once it has exited (within `timeout`), else None."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


def _last_line(path: str, offset: int) -> str:
    """The last non-blank line written to the log file after `offset` (for a traceback: the exception)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            lines = f.read()[-8192:].decode(errors="replace").splitlines()
    except OSError:
        return ""
    return next((line.strip() for line in reversed(lines) if line.strip()), "")


def read_line(fd: int, timeout: float) -> str:
    """The first line written to the pipe `fd` within `timeout` seconds (what came, if it closed or time ran out);
    `fd` is closed. How `gateway start` hears its root say it is ready (the tests' GatewayNode.start too)."""
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
    """Graceful stop (SIGQUIT, as `kong quit` sends: a second one, from a second `gateway stop`, keeps it graceful, as
    nginx's master does); after `timeout` seconds, SIGTERM forces it."""
    where = _located(config_path, pid_file, None)
    try:
        pid = _running_pid(where.pid_file)
    except NotRunning as e:
        print(f"gateway: {e}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        os.kill(pid, signal.SIGQUIT)
    except ProcessLookupError:
        print(f"gateway: not running (pid {pid}, named by {where.pid_file}, exited before it could be signalled)",
              file=sys.stderr)
        return EXIT_FAILURE
    except PermissionError:  # kong/cmd/utils/nginx_signals.lua: "could not send signal"
        print(f"gateway: could not send signal to pid {pid} (named by {where.pid_file}): permission denied; run "
              "`gateway stop` as the user the gateway runs as (or as root)", file=sys.stderr)
        return EXIT_FAILURE
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


@dataclass(frozen=True)
class CurveFiles:
    """--curve-server-key and --curve-client-key (default: $GATEWAY_ADMIN_SERVER_KEY, $GATEWAY_ADMIN_CLIENT_KEY): the
    key files a tcp admin endpoint's CURVE handshake takes (gateway.bus.curve.client_keys)."""

    server: str | None = None
    client: str | None = None


def curve_keys(files: CurveFiles, config_path: str | None) -> ClientKeys:
    """The keys to reach a tcp admin endpoint with; the server's, without --curve-server-key, from `config_path`'s
    gateway.admin_curve.secret_key_file (its public half) when this user can read it. KeyFileError saying what is
    missing or wrong."""
    server = files.server or _config_server_key(config_path)
    if not server or not files.client:
        raise KeyFileError(f"{NEED_KEYS} (or $GATEWAY_ADMIN_SERVER_KEY and $GATEWAY_ADMIN_CLIENT_KEY): the "
                           "gateway's public NAME.key, and this client's NAME.key_secret (`gateway curve-keys DIR "
                           "NAME` writes a pair)")
    return client_keys(server, files.client)


def _config_server_key(config_path: str | None) -> str | None:
    """gateway.admin_curve.secret_key_file as the file at `config_path` spells it, if it is a certificate this user
    can read; None otherwise (read leniently, as locate reads the pid file and admin endpoint)."""
    import yaml

    from gateway.config.loader import read_config_text

    if config_path is None:
        return None
    try:
        doc = yaml.load(read_config_text(config_path), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        path = doc["gateway"]["admin_curve"]["secret_key_file"]
        if not isinstance(path, str):
            return None
        read_certificate(path)
    except (ConfigError, yaml.YAMLError, KeyFileError, LookupError, TypeError, ValueError):
        return None
    return path


def admin(config_path: str | None, cmd: str, args: dict[str, Any] | None = None, as_json: bool = True,
          pid_file: str | None = None, endpoint: str | None = None, curve: CurveFiles | None = None) -> int:
    """Send one admin command and print the reply; say so at once when no gateway runs. `endpoint` (--admin) without
    `pid_file` names the gateway alone: it is asked there, whatever pid file the working directory has. A tcp
    endpoint is asked with the `curve` key files (curve_keys)."""
    where = _located(config_path, pid_file, endpoint)
    keys = None
    if where.admin.startswith("tcp://"):
        try:
            keys = curve_keys(curve or CurveFiles(), config_path)
        except KeyFileError as e:
            print(f"gateway: {e}", file=sys.stderr)
            return EXIT_FAILURE
    if cmd == "reload" and args and isinstance(args.get("config"), str) and args["config"]:
        args = {**args, "config": os.path.abspath(args["config"])}  # where the command runs, as `reload --config`
    problem = not_utf8(cmd, args or {})
    if problem is not None:
        print(f"gateway: {problem}", file=sys.stderr)
        return EXIT_FAILURE
    pid = None
    if endpoint is None or pid_file is not None:
        try:
            pid = _running_pid(where.pid_file)
        except NotRunning as e:
            print(f"gateway: {e}", file=sys.stderr)
            return EXIT_FAILURE
    socket_path = where.admin[len("ipc://"):] if where.admin.startswith("ipc://") else None
    problem = _socket_problem(socket_path) if socket_path is not None else None
    if problem is not None:
        if pid is None:
            print(f"gateway: not running at {where.admin} (its socket {socket_path} {problem})", file=sys.stderr)
        else:
            print(f"gateway: pid {pid} is running, but its admin socket {socket_path} {problem}; pass the --admin "
                  f"ipc://PATH it was started with (gateway.admin); see its log ({where.log_file})", file=sys.stderr)
        return EXIT_FAILURE
    timeout = RELOAD_TIMEOUT_S if cmd == "reload" else ADMIN_TIMEOUT_S
    try:
        reply = (admin_call(where.admin, cmd, args, timeout=timeout) if keys is None
                 else admin_call(where.admin, cmd, args, timeout=timeout, curve=keys))
    except AdminRefused as e:
        print(f"gateway: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except AdminUnavailable as e:
        if pid is None:
            print(f"gateway: {e}; is a gateway running there? (`--pid-file` names it by its pid file)",
                  file=sys.stderr)
        else:
            print(f"gateway: pid {pid} is running, but {e}; see its log ({where.log_file})", file=sys.stderr)
        return EXIT_FAILURE
    except zmq.ZMQError as e:
        print(f"gateway: cannot reach the admin endpoint {where.admin}: {e}; it takes ipc://PATH", file=sys.stderr)
        return EXIT_FAILURE
    if not reply.ok:
        said = reply.error or ""
        print(f"gateway: {said}" if said.startswith(f"{STARTING} (") else f"gateway: {cmd} failed: {said}",
              file=sys.stderr)
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


def not_utf8(cmd: str, args: dict[str, Any]) -> str | None:
    """The command word or KEY=VALUE argument that is not UTF-8 text (a file name's bytes as a shell passed them,
    held as surrogate escapes), which the admin channel's JSON cannot carry, and what to do; None if all are."""
    words = [("command", cmd), *(("argument", f"{k}={v}" if isinstance(v, str) else k) for k, v in args.items())]
    for what, word in words:
        try:
            word.encode()
        except UnicodeEncodeError:
            todo = "rename the file" if word.startswith("config=") else "give it as UTF-8 text"
            return f"the {what} {_shown(word)} is not UTF-8 text; the admin channel's JSON cannot carry it: {todo}"
    return None


def _shown(text: str) -> str:
    """`text` with the bytes that are not UTF-8 written \\xNN, as the shell was given them."""
    try:
        return text.encode(errors="surrogateescape").decode(errors="backslashreplace")
    except UnicodeEncodeError:  # (a surrogate no byte stands for: not from argv or the environment)
        return text.encode(errors="backslashreplace").decode()


def _socket_problem(path: str) -> str | None:
    """Why no gateway can answer on the admin socket `path`, when that is known at once (the call would wait out
    its timeout): none there, not a socket, or a socket file nothing listens on (connect(2) refused: a root killed
    with kill -9 leaves it)."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return "does not exist"
    except OSError as e:
        return f"cannot be reached ({e.strerror or e})"
    if not stat.S_ISSOCK(mode):
        return "is a directory, not a socket" if stat.S_ISDIR(mode) else "is not a socket"
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except ConnectionRefusedError:
        return "refuses connections: nothing listens on it"
    except OSError:
        pass  # (a full backlog, a path too long to connect to: the call says what it finds)
    finally:
        probe.close()
    return None


def reload(config_path: str | None, pid_file: str | None = None, endpoint: str | None = None,
           curve: CurveFiles | None = None) -> int:
    """Reload the running gateway: with --config F, from F (which it then keeps: later reloads and SIGHUP re-read F,
    as `kong reload -c` does); without, from the file it was started with or last reloaded from. This command's
    KONG_<KEY> variables go with it: the gateway applies them over its own, as `kong reload` loads kong.conf in its
    own process (kong/cmd/reload.lua), and keeps them for later reloads."""
    args: dict[str, Any] = {"config": os.path.abspath(config_path)} if config_path else {}
    args.update(kong_conf.carried(os.environ))
    if config_path is not None:  # a file that does not check is never reloaded: say so without asking the gateway
        try:
            load_validated(config_path)
        except ConfigError as e:
            print("\n".join(e.messages), file=sys.stderr)
            print(f"gateway: not reloaded: {config_path} does not check (a running gateway keeps serving the config "
                  f"it has); fix it, then reload again", file=sys.stderr)
            return EXIT_CONFIG
    return admin(config_path, "reload", args, as_json=False, pid_file=pid_file, endpoint=endpoint, curve=curve)


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
        if node.get("busy"):
            detail.append("busy starting or stopping a child: its children as last listed")
        lines.append(f"{prefix}{branch}{node['id']}  " + "  ".join(detail))
        children = node.get("children", [])
        for i, child in enumerate(children):
            walk(child, prefix + ("" if top else ("   " if last else "│  ")), i == len(children) - 1, False)

    walk(status["tree"], "", True, True)
    for generation in status.get("retiring", []):  # a reload's old workers, draining beside the tree
        walk(generation, "", True, True)
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{seconds:.1f}s"
    if s < 7200:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
