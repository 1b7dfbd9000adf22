"""A real etcd for tests: Debian's etcd-server, installed on demand (as scripts/setup does), stopped by pid."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

from backends import apt_lock, free_port, stop_process


def find_etcd() -> tuple[str | None, str]:
    """(path to `etcd`, or None and why not): apt-get installs etcd-server when we are root and it is missing."""
    path = shutil.which("etcd")
    if path is not None:
        return path, ""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None, "etcd is not installed and apt-get cannot install it here (not root, or no apt-get)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "etcd-server"]
    with apt_lock():  # (the other test process may be installing it: then it is there once we hold the lock)
        if shutil.which("etcd") is None and \
                subprocess.run(cmd, env=env, capture_output=True, timeout=600).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
            proc = subprocess.run(cmd, env=env, capture_output=True, timeout=600, text=True)
            if proc.returncode != 0:
                return None, f"apt-get install etcd-server failed: {proc.stderr.strip()[-300:]}"
    path = shutil.which("etcd")
    return path, "" if path else "etcd-server installed but no `etcd` on PATH"


class EtcdProcess:
    """One single-member etcd on 127.0.0.1 (client and peer ports free), restartable on the same ports and data."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.client_port = free_port()
        self.peer_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def start(self) -> None:
        client = f"http://127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        argv = [self.binary, "--name", "gw-test", "--data-dir", str(self.workdir / "data"),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"gw-test={peer}", "--log-level", "error"]
        log = open(self.workdir / "etcd.log", "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{client}/health", timeout=0.5) as resp:
                    if json.loads(resp.read()).get("health") == "true":
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"etcd did not become healthy: {self.log_tail()}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process(proc)

    def log_tail(self) -> str:
        try:
            return (self.workdir / "etcd.log").read_text(errors="replace")[-500:]
        except OSError:
            return ""
