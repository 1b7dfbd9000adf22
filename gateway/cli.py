"""The `gateway` command: start, stop, reload, status, admin, check-config, run (one worker, no supervisor),
curve-keys (key files for a tcp admin endpoint)."""

from __future__ import annotations

import argparse
import functools
import logging
import math
import os
import signal
import sys
from collections.abc import Sequence

from gateway import __version__

# gateway.config and the rest are imported where used: until then, a Ctrl-C has only a few milliseconds of
# imports to interrupt outside main()'s handler
EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2
EXIT_INTERRUPTED = 128 + signal.SIGINT  # as a shell reports a command that Ctrl-C ended
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")  # --log-level's choices


class SettingError(OSError):
    """What the system refused of a setting (a directory it cannot make, an address in use), its strerror one line
    naming the setting and what to do: a child of the root that meets it as it starts says that line, with no
    traceback (_cannot_start), as nginx says one [emerg] line."""


@functools.cache  # built once: the zygote's forked children reuse it (building it costs milliseconds)
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gateway", description="A Trio-based L7 gateway for clusters of MCP servers.")
    p.add_argument("--version", action="version", version=f"gateway {__version__}")
    p.add_argument("--log-level", default="INFO", choices=LOG_LEVELS,
                   help="the least severe line written, by every process of the gateway (default INFO)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    c = sub.add_parser("check-config", help="validate a config file without starting anything")
    c.add_argument("file", nargs="?")
    c.add_argument("--config", "-c", dest="config_file", help="the same, as start and run take it")
    s = sub.add_parser("start", help="start the gateway (supervisor and workers); returns once all accept")
    s.add_argument("--config", "-c", required=True)
    s.add_argument("--workers", "-w", type=_positive, help="worker processes (default: gateway.workers or CPUs)")
    s.add_argument("--foreground", "-f", action="store_true", help="stay in the foreground (for systemd, tests)")
    s.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    locating, by_pid = _locating(admin=True), _locating(admin=False)
    st = sub.add_parser("stop", parents=[by_pid], help="stop gracefully (workers drain); forced after --timeout")
    st.add_argument("--timeout", type=_seconds, default=60.0, help="seconds before the stop is forced (default 60)")
    sub.add_parser("reload", parents=[_locating(True, "the config to reload from, kept for later reloads; without "
                                                      "it, the gateway re-reads the file it runs from")],
                   help="re-read the config (with --config F: switch to F); a bad one is rejected and the running one "
                        "keeps serving")
    ss = sub.add_parser("status", parents=[locating], help="the supervision tree with pids, uptime and restart counts")
    ss.add_argument("--json", action="store_true")
    a = sub.add_parser("admin", parents=[locating], help="send one command to the admin channel, print the JSON reply")
    a.add_argument("cmd", help="status, reload, stop, workers; the state keeper's breakers, limits, targets, "
                   "proxy-cache (README: CLI, Shared state)")
    a.add_argument("args", nargs="*", default=[],  # (without a default, argparse would name it as required)
                   help="KEY=VALUE arguments; a bare word is the action (breakers open target=K)")
    r = sub.add_parser("run", help="run one worker process in the foreground (no supervisor)")
    r.add_argument("--config", "-c", required=True)
    ck = sub.add_parser("curve-keys", help="write a CURVE key pair, DIR/NAME.key and DIR/NAME.key_secret (0600), for "
                                           "a tcp admin endpoint (gateway.admin_curve) or one of its clients")
    ck.add_argument("dir", metavar="DIR")
    ck.add_argument("name", metavar="NAME")
    # The supervisor's own children: added without help=, which is what lists a command in --help
    k = sub.add_parser("keeper")  # started by the supervisor
    k.add_argument("--config", required=True)
    k.add_argument("--workers", type=int, default=1)
    for kind in ("health", "discovery"):
        sat = sub.add_parser(kind)  # started by the supervisor
        sat.add_argument("--config", required=True)
    z = sub.add_parser("zygote")  # started by the supervisor: the template children fork from
    z.add_argument("--control-fd", type=int, required=True)
    z.add_argument("--preload", default="", help="optional libraries to import (gateway.node.zygote)")
    w = sub.add_parser("worker")  # started by the supervisor
    w.add_argument("--config", required=True)
    w.add_argument("--fds", required=True)
    w.add_argument("--generation", type=int, default=1)
    w.add_argument("--index", type=int, default=0)
    w.add_argument("--workers", type=int, default=1)
    return p


def command_word(args: Sequence[str]) -> str | None:
    """The COMMAND of `gateway [--log-level L] COMMAND ...` (`args`: what follows `gateway`), past the global option
    as parser() reads it (`--log-level L`, `--log-level=L`, or an abbreviation such as `--log L`); None if there
    is none. How `stop` recognises a root started `gateway --log-level WARNING start`, and the zygote a child."""
    i = 0
    while i < len(args):
        word = args[i]
        option = word.partition("=")[0]
        if len(option) > 2 and "--log-level".startswith(option):
            i += 1 if "=" in word else 2
        elif word.startswith("-"):
            return None  # --version, --help, or no gateway command line at all
        else:
            return word
    return None


def command_line(command: str, *args: str) -> list[str]:
    """`python -m gateway --log-level L COMMAND ARGS...`: a process of this gateway, started at the level this one
    logs at (`--log-level`), as nginx writes every process's error log at one error_log level."""
    level = logging.getLevelName(logging.getLogger().level)
    option = ["--log-level", level] if level in LOG_LEVELS else []
    return [sys.executable, "-m", "gateway", *option, command, *args]


def _locating(admin: bool, config_help: str = "its config file") -> argparse.ArgumentParser:
    """The options that say which running gateway stop / reload / status / admin talk to."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("which gateway (default: as --config names it, else run/gateway.pid"
                                      + (" and ipc://run/admin.sock)" if admin else ")"))
    group.add_argument("--config", "-c", help=f"{config_help} (read for gateway.pid_file"
                       + (" and gateway.admin" if admin else "") + ", even if it is invalid elsewhere)")
    group.add_argument("--pid-file", help="its pid file (overrides the config's)")
    if admin:
        group.add_argument("--admin", help="its admin endpoint, ipc://PATH or tcp://HOST:PORT (overrides the "
                                           "config's)")
        keys = parent.add_argument_group("a tcp admin endpoint's CURVE keys (gateway.admin_curve; `gateway "
                                         "curve-keys` writes them)")
        keys.add_argument("--curve-server-key", metavar="FILE", default=os.environ.get("GATEWAY_ADMIN_SERVER_KEY"),
                          help="the gateway's public NAME.key (or its NAME.key_secret) (default: "
                               "$GATEWAY_ADMIN_SERVER_KEY, else --config's admin_curve.secret_key_file if readable)")
        keys.add_argument("--curve-client-key", metavar="FILE", default=os.environ.get("GATEWAY_ADMIN_CLIENT_KEY"),
                          help="this client's NAME.key_secret, whose NAME.key is in the gateway's "
                               "admin_curve.authorized_keys (default: $GATEWAY_ADMIN_CLIENT_KEY)")
    return parent


def _admin_args(words: list[str]) -> dict[str, str]:
    """KEY=VALUE words as a dict; a bare word is the action (`breakers open target=K`). ValueError for a key given
    twice (a second action among them) or none: one of the two would be dropped, and a command done on the other."""
    args: dict[str, str] = {}
    for word in words:
        key, _, value = word.partition("=") if "=" in word else ("action", "", word)
        if not key:
            raise ValueError(f"admin: {word!r} has no KEY before its '='; write KEY=VALUE")
        if key in args and key == "action":
            raise ValueError(f"admin: two actions, {args[key]!r} and {value!r} (a bare word is the action): a command "
                             "does one; send one command for each")
        if key in args:
            raise ValueError(f"admin: {key}= is given twice ({args[key]!r} and {value!r}): a command takes each "
                             "argument once; send one command for each value")
        args[key] = value
    return args


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"expected seconds (a number >= 0), got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()  # here, where a closed pipe can still be handled
        return code
    except BrokenPipeError:  # `gateway status | head -1`: the reader has all it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's own flush at exit does not fail again
        return EXIT_FAILURE
    except KeyboardInterrupt:  # Ctrl-C before the command could handle it (while importing, or waiting)
        print("gateway: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _main(argv: list[str] | None) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    if args.command == "check-config":
        if (args.file is None) == (args.config_file is None):
            cli.error("check-config takes one config file: gateway check-config FILE (or --config FILE)")
        return check_config(args.file or args.config_file)
    if args.command == "admin":
        try:
            args.words = _admin_args(args.args)
        except ValueError as e:
            cli.error(str(e))  # (exit 2, as argparse's own usage errors)
    if args.command == "run":
        return run(args.config)
    if args.command == "curve-keys":
        return curve_keys(args.dir, args.name)
    from gateway.config import ConfigError

    try:
        if args.command in CHILD_COMMANDS:
            return _child(args)
        from gateway.node import control  # not imported by children: it pulls in the root (hypercorn, ...)

        if args.command == "start":
            if args.foreground:
                return control.start_foreground(args.config, args.workers, args.ready_fd)
            return control.start_daemon(args.config, args.workers)
        if args.command == "stop":
            return control.stop(args.config, args.timeout, args.pid_file)
        if args.command in ("reload", "status", "admin") and (refused := _without_admin(args)) is not None:
            return refused
        curve = control.CurveFiles(args.curve_server_key, args.curve_client_key) if "admin" in args else None
        if args.command == "reload":
            return control.reload(args.config, args.pid_file, args.admin, curve)
        if args.command == "status":
            return control.admin(args.config, "status", as_json=args.json, pid_file=args.pid_file,
                                 endpoint=args.admin, curve=curve)
        if args.command == "admin":
            return control.admin(args.config, args.cmd, args.words, pid_file=args.pid_file, endpoint=args.admin,
                                 curve=curve)
    except ConfigError as e:
        for message in e.messages:
            print(message, file=sys.stderr)
        return EXIT_CONFIG
    return EXIT_FAILURE  # pragma: no cover - argparse rejects unknown commands


def _without_admin(args: argparse.Namespace) -> int | None:
    """EXIT_FAILURE, said at once, when the gateway the pid file names is a `gateway run` process, which has no admin
    channel (the call would wait out its timeout); None otherwise. `--admin` alone names an endpoint, not a pid."""
    from gateway.config import ConfigError
    from gateway.node.locate import NotRunning, locate, running_pid

    if args.admin is not None and args.pid_file is None:
        return None
    try:
        pid_file = locate(args.config, args.pid_file, args.admin).pid_file
    except ConfigError:
        return None  # (the command says what is wrong with the file)
    try:
        pid = running_pid(pid_file, remove_stale=False)
    except NotRunning:
        return None  # (the command says so itself, and removes a stale pid file)
    if _command_of(pid) != "run":
        return None
    print(f"gateway: pid {pid} (pid file {pid_file}) is a `gateway run` process, which has no admin channel: "
          f"`{args.command}` cannot reach it; `gateway stop` stops it, a restart loads a new config, and `gateway "
          "start` runs a gateway that answers status, reload and admin", file=sys.stderr)
    return EXIT_FAILURE


def _command_of(pid: int) -> str | None:
    """The gateway COMMAND process `pid` runs (`run`, `start`), from its command line; None if it cannot tell."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            words = [os.fsdecode(word) for word in f.read().split(b"\0")]
    except OSError:
        return None
    return next((command_word(words[i + 1:]) for i, word in enumerate(words)
                 if word == "gateway" or word.endswith("/gateway")), None)


CHILD_COMMANDS = frozenset({"keeper", "health", "discovery", "zygote", "worker"})  # started by the root


def _child(args: argparse.Namespace) -> int:
    """The processes the root supervises (forked from the zygote, or executed when it is not running)."""
    try:
        return _run_child(args)
    except SettingError as e:
        return _cannot_start(args.command, e)


def _cannot_start(command: str, e: SettingError) -> int:
    """One line in the log, and the same line to the supervisor waiting for this child to be ready, which fails its
    start with it (gateway.node.root shows it: `gateway start` and `reload` print it)."""
    from supervisor import READY_FD_ENV, START_ERROR

    reason = " ".join(str(e.strerror or e).split())
    logging.getLogger(f"gateway.{command}").error("%s cannot start: %s", command, reason)
    fd = os.environ.pop(READY_FD_ENV, None)  # (gone once it was ready: then it only exits)
    if fd is not None:
        try:
            with os.fdopen(int(fd), "w") as pipe:
                pipe.write(f"{START_ERROR} {reason}\n")
        except OSError:
            pass  # the supervisor stopped waiting: the log has it
    return EXIT_FAILURE


def _run_child(args: argparse.Namespace) -> int:
    if args.command == "keeper":
        from gateway.keeper.process import run_keeper

        return run_keeper(args.config, args.workers)
    if args.command in ("health", "discovery"):
        from gateway.node.satellites import run_satellite

        return run_satellite(args.command, args.config)
    if args.command == "zygote":
        from gateway.node.zygote import run_zygote

        return run_zygote(args.control_fd, [name for name in args.preload.split(",") if name])
    from gateway.worker import run_supervised_worker

    return run_supervised_worker(args.config, [int(fd) for fd in args.fds.split(",") if fd],
                                 f"{args.generation}.{args.index}", args.workers)


def check_config(path: str) -> int:
    """Validate `path` through every stage a start would run; print a summary or every error."""
    from gateway.config import ConfigError
    from gateway.node.control import path_problems
    from gateway.runtime import check_file

    try:
        config = check_file(path).config
        problems = path_problems(path, config.gateway)  # what start refuses of its files and sockets
        if problems:
            raise ConfigError([line for line, _ in problems])
    except ConfigError as e:
        for message in e.messages:
            print(message, file=sys.stderr)
        return EXIT_CONFIG
    print(f"{path}: OK: {len(config.services)} services, {len(config.routes)} routes, "
          f"{len(config.upstreams)} upstreams, {len(config.targets)} targets, {len(config.plugins)} plugins")
    return EXIT_OK


def curve_keys(directory: str, name: str) -> int:
    """Write DIR/NAME.key and DIR/NAME.key_secret (gateway.bus.curve.write_certificates); say where each goes."""
    from gateway.bus.curve import write_certificates

    try:
        public_file, secret_file, public = write_certificates(directory, name)
    except (OSError, ValueError) as e:
        why = f"{e.filename}: {e.strerror}" if isinstance(e, OSError) and e.filename and e.strerror else e
        print(f"gateway: curve-keys: {why}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"public key {public.decode()}\n"
          f"wrote {public_file} (public: give it to the other side) and {secret_file} (secret, mode 0600: keep it "
          "here)\n"
          f"for the gateway: set gateway.admin_curve.secret_key_file to {secret_file}, and give clients {public_file} "
          "as --curve-server-key\n"
          f"for a client: copy {public_file} into the gateway's admin_curve.authorized_keys directory, and pass "
          f"--curve-client-key {secret_file}")
    return EXIT_OK


def run(path: str) -> int:
    from gateway.config import ConfigError
    from gateway.worker import run_worker

    try:
        return run_worker(path)
    except ConfigError as e:
        for message in e.messages:
            print(message, file=sys.stderr)
        return EXIT_CONFIG
    except OSError as e:
        print(f"gateway: {e.strerror or e}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK
