"""The `gateway` command: run, check-config (and, with the supervisor, start/stop/reload/status)."""

from __future__ import annotations

import argparse
import logging
import sys

from gateway import __version__
from gateway.config import ConfigError, load_config

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gateway", description="A Trio-based L7 gateway for clusters of MCP servers.")
    p.add_argument("--version", action="version", version=f"gateway {__version__}")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    c = sub.add_parser("check-config", help="validate a config file without starting anything")
    c.add_argument("file")
    r = sub.add_parser("run", help="run one worker process in the foreground (no supervisor)")
    r.add_argument("--config", "-c", required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    if args.command == "check-config":
        return check_config(args.file)
    if args.command == "run":
        return run(args.config)
    return EXIT_FAILURE  # pragma: no cover - argparse rejects unknown commands


def check_config(path: str) -> int:
    """Validate `path` through every stage a start would run; print a summary or every error."""
    from gateway.runtime import compile_config

    try:
        config = load_config(path)
        compile_config(config, path)
    except ConfigError as e:
        for message in e.messages:
            print(message, file=sys.stderr)
        return EXIT_CONFIG
    print(f"{path}: OK: {len(config.services)} services, {len(config.routes)} routes, "
          f"{len(config.upstreams)} upstreams, {len(config.targets)} targets, {len(config.plugins)} plugins")
    return EXIT_OK


def run(path: str) -> int:
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
