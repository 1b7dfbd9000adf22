"""A real Redis for tests: Debian's redis-server (installed by scripts/setup), on a free loopback port, stopped by
pid."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from backends import apt_lock, free_port, stop_process


def find_redis() -> tuple[str | None, str]:
    """(path to `redis-server`, or None and why not): apt-get installs it when we are root and it is missing."""
    path = shutil.which("redis-server")
    if path is not None:
        return path, ""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None, "redis-server is not installed and apt-get cannot install it here (not root, or no apt-get)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "redis-server"]
    with apt_lock():  # (the other test process may be installing it: then it is there once we hold the lock)
        if shutil.which("redis-server") is None and \
                subprocess.run(cmd, env=env, capture_output=True, timeout=600).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
            proc = subprocess.run(cmd, env=env, capture_output=True, timeout=600, text=True)
            if proc.returncode != 0:
                return None, f"apt-get install redis-server failed: {proc.stderr.strip()[-300:]}"
    path = shutil.which("redis-server")
    return path, "" if path else "redis-server installed but not on PATH"


_NOAUTH = b"-NOAUTH Authentication required.\r\n"


class RedisProcess:
    """One redis-server on 127.0.0.1 without persistence, restartable on the same port (empty again)."""

    def __init__(self, binary: str, workdir: Path, *extra: str) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.extra = list(extra)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.workdir), "--daemonize", "no", "--loglevel", "warning", *self.extra]
        log = open(self.workdir / "redis.log", "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                if self.command("PING") in (b"+PONG\r\n", _NOAUTH):  # NOAUTH: up, with --requirepass
                    return
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer PING: {self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL (a crash: nothing is saved)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(5)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process(proc)

    def command(self, *words: str) -> bytes:
        """One command in RESP, the raw reply (enough for PING, CLIENT PAUSE, FLUSHALL and small answers)."""
        wire = f"*{len(words)}\r\n".encode() + b"".join(f"${len(w)}\r\n{w}\r\n".encode() for w in words)
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(wire)
            return sock.recv(65536)

    def log_tail(self) -> str:
        try:
            return (self.workdir / "redis.log").read_text(errors="replace")[-500:]
        except OSError:
            return ""


@contextlib.contextmanager
def running_redis(workdir: Path) -> Iterator[RedisProcess]:
    """A Redis on a free loopback port for the block, stopped by pid at its end (the test is skipped without one)."""
    binary, why = find_redis()
    if binary is None:
        import pytest
        pytest.skip(why)
    server = RedisProcess(binary, workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
