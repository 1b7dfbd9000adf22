"""Signals an operator (or a terminal) sends a running gateway, as nginx and Kong take them: SIGQUIT to the root is
a graceful stop (`nginx -s quit`, `kong quit`); SIGHUP and SIGQUIT to the whole process group (a dropped ssh session
under `start --foreground`, `systemctl kill -s HUP`, Ctrl-\\) reach the root alone: the children block them, as they
block Ctrl-C's SIGINT, so no request is cut (an operations review: every child died of them)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from e2e_helpers import GatewayNode, HoldingBackend, becomes_true, request_in_flight
from test_cli_failures import node  # noqa: F401  (the one-gateway fixture, stopped after the test)

HOLD_S = 30.0  # the backend holds a request until the test releases it (at the latest this long)


@pytest.fixture
def holding_backend() -> Iterator[HoldingBackend]:
    """A backend that answers `/slow` 200 once released: a request is in flight as long as the test needs."""
    backend = HoldingBackend(HOLD_S)
    try:
        yield backend
    finally:
        backend.release()
        backend.close()


@pytest.mark.parametrize(("signum", "acted", "done"), [
    (signal.SIGHUP, "reload: generation 2 accepting", "generation 1 has stopped"),  # a reload
    (signal.SIGQUIT, "SIGQUIT: graceful stop", "gateway stopped"),  # a graceful stop
], ids=["hup", "quit"])
def test_a_signal_to_the_process_group_reaches_the_root_alone_and_cuts_no_request(
        tmp_path: Path, holding_backend: HoldingBackend, signum: signal.Signals, acted: str, done: str) -> None:
    """The request is held by the backend from before the signal until the root has acted on it (`acted` in its
    output); the root's output is read once it is done with it (`done`: every process the signal came to has been
    collected), and stopped."""
    doc = {"services": [{"name": "s", "url": f"http://127.0.0.1:{holding_backend.port}",
                         "routes": [{"paths": ["/"]}]}]}
    gw = GatewayNode(tmp_path / "gw", doc, workers=1, status_listen=None)
    out_file = tmp_path / "root.out"

    def output() -> str:
        return out_file.read_text(errors="replace")

    with open(out_file, "wb") as out:
        root = subprocess.Popen([sys.executable, "-m", "gateway", "start", "--foreground", "--config", str(gw.config)],
                                cwd=gw.dir, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    gw.root = root.pid
    try:
        deadline = time.monotonic() + 30
        while gw.root_pid() != root.pid:
            assert time.monotonic() < deadline and root.poll() is None, "the gateway did not start"
            time.sleep(0.05)
        request, codes = request_in_flight(gw.port, holding_backend)  # (back once the backend holds it)
        os.killpg(root.pid, signum)
        assert becomes_true(lambda: acted in output(), 30), output()
        holding_backend.release()
        request.join(timeout=15)
        assert becomes_true(lambda: done in output(), 30), output()
        if root.poll() is None:  # (a reload leaves it running; a SIGQUIT's stop ends it)
            os.kill(root.pid, signal.SIGTERM)
        root.wait(timeout=30)
    finally:
        gw.cleanup()
        if root.poll() is None:
            root.kill()
            root.wait()
    assert f"killed by signal {signum.name}" not in output(), output()
    assert codes == [200]


def test_sigquit_to_the_root_is_a_graceful_stop_as_in_nginx_and_kong(node):  # noqa: F811
    trio.run(node.start, 1)  # the root, as `gateway start` starts it
    root = node.root_pid()
    assert root is not None
    os.kill(root, signal.SIGQUIT)
    assert node.proc is not None
    node.proc.wait(timeout=20)
    log = node.log()
    assert "SIGQUIT: graceful stop" in log and "gateway stopped" in log, log[-2000:]
    assert not (node.dir / "run" / "gateway.pid").exists()
