"""The files the gateway writes, with modes that keep the operator's config and secrets private.

Config copies (run/config.current.yaml, run/config.genN.yaml; .json for a JSON config) may hold literal secrets, so
they are 0600; the log file is 0640; the run directory the gateway creates is 0750 (never world-writable: a file
planted there would be read as config), the directory of spooled request bodies 0700, as nginx makes its temporary
paths. Files are replaced atomically, through a new temporary file that is never a symlink.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import stat

from gateway.cli import SettingError
from gateway.node.paths import KEEPER_STATE

log = logging.getLogger("gateway.node")

DIR_MODE = 0o750
BODY_TEMP_MODE = 0o700  # nginx's ngx_create_paths (nginx release-1.27.1 src/core/ngx_file.c:607)
PRIVATE_MODE = 0o600
LOG_MODE = 0o640
PID_MODE = 0o644


def make_run_dir(path: str) -> str:
    """Create `path` (and its parents) 0750 if missing; warn about an existing one that anyone may write to."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        os.makedirs(path, mode=DIR_MODE, exist_ok=True)  # the umask may take more away, never add
    elif os.stat(path).st_mode & stat.S_IWOTH and not os.stat(path).st_mode & stat.S_ISVTX:
        log.warning("%s is writable by every user: anyone could replace the gateway's files in it; "
                    "use a directory only this user can write to (chmod 750)", path)
    return path


# The run directory's own files (the pid file's directory): what each name is
LOCK_NAME = "gateway.lock"
CONFIG_FORMATS = ("yaml", "json")  # a config copy keeps its file's format, named by it (config_format)
# the config the state keeper and satellites read: one of these, the root removes the other
CURRENT_CONFIGS = {fmt: f"config.current.{fmt}" for fmt in CONFIG_FORMATS}
METRICS_DIR = "metrics"  # emptied at each start (gateway.metrics.prepare_multiprocess_dir)
CLIENT_BODY_TEMP = "client_body_temp"  # gateway.client_body_temp_path's default (nginx's, in Kong's prefix)
RUN_DIR_FILES = {LOCK_NAME: "lock file", **{name: "copy of the current config" for name in CURRENT_CONFIGS.values()},
                 KEEPER_STATE: "state keeper's state file", METRICS_DIR: "metrics directory",
                 "mcp-session.key": "default MCP session key file",
                 CLIENT_BODY_TEMP: "directory of spooled request bodies"}
SNAPSHOT = re.compile(r"config\.gen[0-9]+\.(?:yaml|json)")  # a generation's config, which its workers read


def make_body_temp_dir(run_dir: str, setting: str) -> str:
    """The directory of spooled request bodies, gateway.client_body_temp_path (`setting`: relative to the run
    directory, as nginx's client_body_temp_path to Kong's prefix), created 0700 if missing, as nginx creates it at
    start (ngx_create_paths: the last component only; here also the run directory itself, for `gateway run`, which
    no root made). Every worker makes sure of it as it starts, with its generation's setting. Raises SettingError
    saying what failed and what to do (body_temp_problem foresees it)."""
    run_dir, path = _body_temp_path(run_dir, setting)
    try:
        if os.path.dirname(path) == run_dir:
            os.makedirs(run_dir, DIR_MODE, exist_ok=True)
        os.mkdir(path, BODY_TEMP_MODE)
    except FileExistsError:
        if not os.path.isdir(path):
            raise SettingError(errno.ENOTDIR, f"gateway.client_body_temp_path: {_not_a_directory(path)}") from None
    except OSError as e:
        raise SettingError(e.errno, "gateway.client_body_temp_path: "
                           f"{_cannot_create(path, e.strerror or str(e))}") from None
    return path


def body_temp_problem(run_dir: str, setting: str) -> str | None:
    """Why make_body_temp_dir could not make the directory gateway.client_body_temp_path names, and what to do, if
    so. Nothing is created: `check-config` looks as a start does (nginx -t creates it: ngx_init_cycle runs
    ngx_create_paths in test mode too, src/core/ngx_cycle.c:354 at release-1.27.1)."""
    run_dir, path = _body_temp_path(run_dir, setting)
    if os.path.lexists(path):
        return None if os.path.isdir(path) else _not_a_directory(path)
    parent = os.path.dirname(path)
    if parent != run_dir:  # (the run directory is made with its parents, by the root or make_body_temp_dir)
        try:
            if not stat.S_ISDIR(os.stat(parent).st_mode):
                return _cannot_create(path, os.strerror(errno.ENOTDIR))
        except OSError as e:  # as mkdir(2) would fail: missing, or a file on the way
            return _cannot_create(path, e.strerror or str(e))
    problem = directory_problem(path)
    return None if problem is None else f"{problem}; create it, or choose another path"


def _body_temp_path(run_dir: str, setting: str) -> tuple[str, str]:
    """(the run directory, the spool directory `setting` names in it), both absolute."""
    run_dir = os.path.abspath(run_dir)
    return run_dir, os.path.normpath(os.path.join(run_dir, setting))


def _not_a_directory(path: str) -> str:
    return f"{path} is not a directory; remove it, or choose another path"


def _cannot_create(path: str, why: str) -> str:
    return f"cannot create the directory {path} ({why}); create it, or choose another path"


def config_format(source: str) -> str:
    """The format of the config file `source` names, which its copies keep: json when the name ends in json, as
    read_document (and Kong, kong/db/declarative/init.lua:109-112) reads it, else yaml. Its processes then read a copy
    as check-config read the file: a JSON document need not be YAML (a key over 1,024 characters), and JSON reads
    several times faster."""
    return "json" if source.endswith("json") else "yaml"


def current_config_name(source: str) -> str:
    """The file name of the copy of the config file `source` that the keeper and satellites read, in the run
    directory."""
    return CURRENT_CONFIGS[config_format(source)]


def current_config(path: str) -> str:
    """The copy of the current config a process given `path` (a current config's name, at its start) reads: `path`,
    or the other format's name once a reload ran a file of the other format (the root keeps one copy)."""
    directory, name = os.path.split(path)
    if name not in CURRENT_CONFIGS.values() or os.path.exists(path):
        return path
    others = (os.path.join(directory, other) for other in CURRENT_CONFIGS.values() if other != name)
    return next((other for other in others if os.path.exists(other)), path)


def snapshot_name(generation: int, source: str) -> str:
    """The file name of the config snapshot `generation`'s workers read, in the run directory: a copy of the config
    file `source`, in its format."""
    return f"config.gen{generation}.{config_format(source)}"


def snapshot_names(generation: int) -> list[str]:
    """Every name `generation`'s snapshot may have (it has one): those to remove when the generation is gone."""
    return [f"config.gen{generation}.{fmt}" for fmt in CONFIG_FORMATS]


def run_dir_file(name: str) -> str | None:
    """What the gateway keeps under the file name `name` in its run directory, if anything."""
    if SNAPSHOT.fullmatch(name):
        return "config snapshot of a generation"
    return RUN_DIR_FILES.get(name)


def directory_problem(directory: str) -> str | None:
    """Why the gateway could not create its files in `directory` (made with its parents if missing, as the root
    makes it), if so. Nothing is created: `check-config` looks as `start` does."""
    directory = os.path.abspath(directory)
    existing = directory
    while not os.path.lexists(existing):  # (what the root would create, up to what is there)
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"{existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        if existing == directory:
            return f"cannot write in the directory {directory} (permission denied)"
        return f"cannot create the directory {directory}: cannot write in {existing} (permission denied)"
    return None


def file_problem(path: str, appended: bool) -> str | None:
    """Why the gateway could not write the file `path` (replaced by a rename, or `appended` to: the log file), and
    what to do, ending "choose another path" (for the caller to name the setting), if so; as nginx -t opens its pid
    and log files, but nothing is created."""
    if os.path.isdir(path):
        return f"{path}: is a directory; choose another path"
    if appended and os.path.lexists(path) and not os.access(path, os.W_OK):
        return f"{path}: cannot open it for writing (permission denied); let this user write it, or choose another path"
    problem = directory_problem(os.path.dirname(os.path.abspath(path)))
    if problem is None:
        return None
    return f"{problem}; make it a directory this user can write to, or choose another path"


def lock_run_dir(path: str) -> int:
    """Hold the run directory for this process (a file lock the kernel drops when it dies, however): its config
    snapshots and sockets are one gateway's. Returns the lock's fd, kept open for the process's life; raises
    OSError naming the gateway that holds it (Kong: "Kong is already running in <prefix>")."""
    lock = os.path.join(path, LOCK_NAME)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, PRIVATE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise OSError(errno.EBUSY, f"the run directory {path} (the pid file's) is in use by gateway pid "
                      f"{holder or '?'}; give this gateway a pid_file in a directory of its own") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def write_atomically(path: str, text: str, mode: int = PRIVATE_MODE) -> None:
    """Replace `path` with `text`: a new file with `mode` (O_EXCL, so never through a planted symlink), renamed."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.unlink(tmp)  # left by a process that had our pid and died mid-write
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def open_log(path: str) -> int:
    """A descriptor appending to the log file, which is created 0640."""
    make_run_dir(os.path.dirname(os.path.abspath(path)))
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, LOG_MODE)

