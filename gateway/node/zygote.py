"""The gateway's zygote (`gateway zygote`, a child of the root): the template its other children are forked from.

It imports the worker, state keeper and satellite code once, then forks a child per request from the root
(supervisor.zygote), so a killed worker or keeper is replaced in milliseconds instead of the second a fresh
interpreter spends on imports. It runs no Trio loop and holds no socket but its control socket; listener slots and
the readiness pipe arrive with each request. A child runs what `python -m gateway <command> ...` would run, with the
same argv, environment and descriptors. A reload forks from the same template, so it applies a new config, not new
code on disk (as nginx's reload): restart the gateway to run an upgraded version.
"""

from __future__ import annotations

import importlib
import signal
import sys
from collections.abc import Sequence

from gateway.cli import command_word
from gateway.metrics import release_metric_files
from gateway.node import logfile
from supervisor.zygote import Entry, serve, set_process_name

WARM_UP_CONFIG = "_format_version: '3.0'\nservices: [{name: s, url: 'http://127.0.0.1:1', routes: [{paths: [/]}]}]\n"
FORKABLE = frozenset({"worker", "keeper", "health", "discovery"})  # the commands a zygote's fork can run
# Libraries the gateway imports only when a config needs them (gateway.jwtlib; TLS certificates; session): ~10 MiB a
# process. The root names those its config used (`needed_libraries`), and the zygote imports them for every child.
OPTIONAL_LIBRARIES = ("jwt", "cryptography.x509", "cryptography.hazmat.primitives.ciphers.aead")


def needed_libraries() -> list[str]:
    """The optional libraries this process has imported so far: after compiling a config, those it needs."""
    return [name for name in OPTIONAL_LIBRARIES if name in sys.modules]


def preload(libraries: Sequence[str] = ()) -> None:
    """Import what the forked commands run, including what they would import lazily at start, and `libraries`
    (names from OPTIONAL_LIBRARIES)."""
    import gateway.cli
    import gateway.discovery.process  # noqa: F401
    import gateway.health.process  # noqa: F401
    import gateway.http.codec_h11  # noqa: F401
    import gateway.http.codec_llhttp  # noqa: F401
    import gateway.keeper.process  # noqa: F401
    import gateway.node.satellites  # noqa: F401
    import gateway.worker  # noqa: F401
    import supervisor  # noqa: F401
    from gateway.config import parse_config
    from gateway.runtime import compile_config

    # msgspec builds its decoders' type information on first use (~12 ms for the config schema): do it here, once;
    # likewise the CLI's argument parser.
    compile_config(parse_config(WARM_UP_CONFIG, "<zygote warm-up>", environ={}))  # (not the operator's KONG_*)
    gateway.cli.parser()
    for name in libraries:
        if name in OPTIONAL_LIBRARIES:
            importlib.import_module(name)


def resolve(argv: Sequence[str]) -> Entry | None:
    """`[sys.executable, "-m", "gateway", (--log-level L,) COMMAND, ...]` for a forkable command: run the CLI on it
    (at that level); else None."""
    command = command_word(argv[3:])
    if list(argv[:3]) != [sys.executable, "-m", "gateway"] or command not in FORKABLE:
        return None
    args = list(argv[3:])

    def entry() -> int:
        from gateway.cli import main

        set_process_name(f"gateway {command}")
        return main(args)

    return entry


def run_zygote(control_fd: int, libraries: Sequence[str] = ()) -> int:
    """Preload, then serve fork requests until the root is gone. Ctrl-C in a terminal (and a hang-up, or Ctrl-\\)
    reaches the whole process group: the zygote leaves them to the root, which stops it last."""
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):  # (also sent to the group: the root's alone)
        signal.signal(signum, signal.SIG_IGN)
    logfile.follow()  # SIGUSR1 (relayed by the root): what it writes goes to the rotated log file's successor
    preload(libraries)
    release_metric_files()
    set_process_name("gateway zygote")
    return serve(control_fd, resolve, spare_name="gateway spare")
