"""Where a running gateway is, for `gateway stop | status | reload | admin`: its pid file and admin endpoint.

They come from `--pid-file` / `--admin`, else from the config named by `--config` (read leniently: a file that is
invalid elsewhere still names them, so a gateway can be stopped through its own broken config), else the defaults
(run/gateway.pid, ipc://run/admin.sock). Relative paths are relative to the working directory.

A pid file whose process has exited (or is a zombie: its parent has not reaped it yet), or now belongs to another
program, is stale: it is removed, and the gateway is reported as not running.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

import yaml

from gateway.cli import command_word
from gateway.config import ConfigError
from gateway.config.loader import read_config_text
from gateway.config.schema import MAX_UNIX_PATH, GatewaySettings
from gateway.node.paths import absolute_endpoint

DEFAULTS = GatewaySettings()
MAX_PID_FILE_BYTES = 64  # a pid and a newline; more is not a pid file
PID_MAX_LIMIT = 4_194_304  # Linux's highest possible pid (what /proc/sys/kernel/pid_max may be raised to)


class NotRunning(Exception):
    """No gateway runs at this pid file; the message says what was found (and what was cleaned up)."""


@dataclass(frozen=True)
class Location:
    pid_file: str
    admin: str  # absolute endpoint
    log_file: str
    note: str | None = None  # e.g. that the config is invalid but still named these


def locate(config_path: str | None, pid_file: str | None = None, admin: str | None = None) -> Location:
    """The pid file, admin endpoint and log file to use; ConfigError when the config cannot even name them."""
    found: dict[str, str] = {}
    note = None
    if config_path is not None:
        found, note = _read_gateway_block(config_path)
    return Location(pid_file=pid_file or found.get("pid_file", DEFAULTS.pid_file),
                    admin=absolute_endpoint(admin or found.get("admin", DEFAULTS.admin)),
                    log_file=found.get("log_file", DEFAULTS.log_file), note=note)


def _read_gateway_block(path: str) -> tuple[dict[str, str], str | None]:
    """`gateway.pid_file`, `admin` and `log_file` as the file spells them, and a note if the file is not valid."""
    from gateway.node.root import load_validated  # the full validation, to say whether the file is valid

    try:
        _, config = load_validated(path)
        gw = config.gateway
        return {"pid_file": gw.pid_file, "admin": gw.admin, "log_file": gw.log_file}, None
    except ConfigError as e:
        problems = e.messages
    hint = "pass --pid-file (and, to status or reload, --admin) to name the running gateway"
    try:
        text = read_config_text(path)
    except ConfigError as e:  # it cannot be read at all (validating it found the same): that one line says so
        raise ConfigError([*problems, *(m for m in e.messages if m not in problems)]) from None
    try:
        doc = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError:
        raise ConfigError([*problems, f"{path}: cannot find gateway.pid_file and gateway.admin in it; {hint}"]) \
            from None
    block = doc.get("gateway", {}) if isinstance(doc, dict) else None
    if not isinstance(block, dict):
        raise ConfigError([*problems, f"{path}: no gateway: mapping to find the pid file and admin endpoint in; "
                                      f"{hint}"])
    found = {}
    for key in ("pid_file", "admin", "log_file"):
        value = block.get(key)
        if value is not None and not isinstance(value, str):
            raise ConfigError([*problems, f"{path}: gateway.{key}: expected a string; {hint}"])
        if value is not None:
            found[key] = value
    count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
    return found, (f"note: {path} is not a valid config ({count}; `gateway check-config {path}` lists them); "
                   "using the pid file and admin endpoint it names")


def socket_path_problems(config_path: str, gw: GatewaySettings) -> list[str]:
    """gateway.admin and gateway.bus ipc:// paths too long for a Unix socket (once made absolute, as the root binds
    them): one line each, naming the file and the setting, for `check-config` and `start`."""
    from gateway.bus.protocol import pub_endpoint

    problems = []
    for key in ("admin", "bus"):
        endpoint = absolute_endpoint(getattr(gw, key))
        if not endpoint.startswith("ipc://"):
            continue
        paths = [endpoint, absolute_endpoint(pub_endpoint(endpoint))] if key == "bus" else [endpoint]
        size = max(len(os.fsencode(path[len("ipc://"):])) for path in paths)
        if size > MAX_UNIX_PATH:
            problems.append(f"{config_path}: gateway.{key}: the socket path {endpoint[len('ipc://'):]} is too long "
                            f"({size} bytes{', with its -pub twin' if key == 'bus' else ''}; a Unix socket path "
                            f"holds at most {MAX_UNIX_PATH}): use a shorter one, such as ipc://run/{key}.sock")
    return problems


def running_pid(pid_file: str, remove_stale: bool = True) -> int:
    """The pid of the gateway that wrote `pid_file`, if it runs; NotRunning otherwise (a stale file is removed)."""
    try:
        text = _read_pid_file(pid_file)
    except FileNotFoundError:
        raise NotRunning(f"not running (no pid file {pid_file})") from None
    except OSError as e:
        raise NotRunning(f"cannot read the pid file {pid_file}: {e.strerror or e}") from None
    pid = int(text) if text.isdigit() and len(text) <= 7 else 0
    if not 0 < pid <= PID_MAX_LIMIT:  # (0 and -1 mean "my process group" and "every process" to kill(2))
        why = f"{pid_file} holds no pid"
    elif not alive(pid):
        why = f"{pid_file} names pid {pid}, which has exited"
    elif not is_gateway(pid):
        why = f"{pid_file} names pid {pid}, which is not a gateway (the pid was reused)"
    else:
        return pid
    if remove_stale:
        try:
            os.unlink(pid_file)
            why += "; removed the stale pid file"
        except OSError:
            pass
    raise NotRunning(f"not running ({why})")


def _read_pid_file(pid_file: str) -> str:
    """Its text, stripped; opened without blocking (a FIFO with no writer would wait for ever) and refused unless it
    is a regular file (OSError, as a directory gets)."""
    fd = os.open(pid_file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "not a regular file")
        return os.read(fd, MAX_PID_FILE_BYTES).decode("ascii", "replace").strip()
    finally:
        os.close(fd)


def alive(pid: int) -> bool:
    """The process exists and has not exited: a zombie (exited, not reaped yet) is not alive."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)  # no /proc: ask the kernel
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return state not in (b"Z", b"X")


def is_gateway(pid: int) -> bool:
    """The process is a gateway's root: its command line runs `gateway start` or `gateway run` (the `gateway`
    script, or `python -m gateway`), after any global option (`gateway --log-level WARNING start`), not merely a
    word "gateway" (`tail -f run/gateway.log` holding a reused pid); True where /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = [os.fsdecode(arg) for arg in f.read().split(b"\0")]
    except OSError:
        return True
    return any(command_word(args[i + 1:]) in ("start", "run")
               for i, arg in enumerate(args) if arg == "gateway" or arg.endswith("/gateway"))
