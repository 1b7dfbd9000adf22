"""Signals an operator (or a terminal) sends a running gateway, as nginx and Kong take them: SIGQUIT to the root is
a graceful stop (`nginx -s quit`, `kong quit`); SIGHUP and SIGQUIT to the whole process group (a dropped ssh session
under `start --foreground`, `systemctl kill -s HUP`, Ctrl-\\) reach the root alone: the children block them, as they
block Ctrl-C's SIGINT, so no request is cut (an operations review: every child died of them)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_helpers import GatewayNode
from test_cli_failures import node  # noqa: F401  (the one-gateway fixture, stopped after the test)

SLOW_S = 2.0  # the backend's answer time: a request is in flight when the signal comes


@pytest.fixture
def slow_backend() -> Iterator[int]:
    """A backend that answers every request 200 after SLOW_S seconds."""
    server = socket.create_server(("127.0.0.1", 0))

    def answer(conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            time.sleep(SLOW_S)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


def get(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        head = sock.recv(65536)
    return int(head.split(b" ", 2)[1]) if head else 0


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGQUIT], ids=["hup", "quit"])
def test_a_signal_to_the_process_group_reaches_the_root_alone_and_cuts_no_request(tmp_path: Path, slow_backend: int,
                                                                                  signum: signal.Signals) -> None:
    doc = {"services": [{"name": "s", "url": f"http://127.0.0.1:{slow_backend}", "routes": [{"paths": ["/"]}]}]}
    gw = GatewayNode(tmp_path / "gw", doc, workers=1, status_listen=None)
    root = subprocess.Popen([sys.executable, "-m", "gateway", "start", "--foreground", "--config", str(gw.config)],
                            cwd=gw.dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    gw.root = root.pid
    try:
        deadline = time.monotonic() + 30
        while gw.root_pid() != root.pid:
            assert time.monotonic() < deadline and root.poll() is None, "the gateway did not start"
            time.sleep(0.05)
        codes: list[int] = []
        request = threading.Thread(target=lambda: codes.append(get(gw.port)))
        request.start()
        time.sleep(0.5)  # the request is with the backend
        os.killpg(root.pid, signum)
        request.join(timeout=15)
        time.sleep(1)
        os.kill(root.pid, signal.SIGTERM)
        output, _ = root.communicate(timeout=30)
    finally:
        gw.cleanup()
        if root.poll() is None:
            root.kill()
            root.wait()
    assert f"killed by signal {signum.name}" not in output, output
    assert codes == [200]


def test_sigquit_to_the_root_is_a_graceful_stop_as_in_nginx_and_kong(node):  # noqa: F811
    assert node.cli("start", "--config", str(node.config), timeout=40).returncode == 0
    root = node.root_pid()
    assert root is not None
    os.kill(root, signal.SIGQUIT)
    deadline = time.monotonic() + 20
    while os.path.exists(f"/proc/{root}") and time.monotonic() < deadline:
        time.sleep(0.05)
    log = node.log()
    assert "SIGQUIT: graceful stop" in log and "gateway stopped" in log, log[-2000:]
    assert not (node.dir / "run" / "gateway.pid").exists()
