"""A graceful stop of a daemonised gateway (real processes), with a request in flight: new connections are refused
at once, and the signals that come meanwhile are handled at once.

nginx: on SIGQUIT the master signals the workers and closes its listening sockets at once
(src/os/unix/ngx_process_cycle.c, ngx_master_process_cycle: `if (ngx_quit) { ngx_signal_worker_processes(cycle,
NGX_SHUTDOWN_SIGNAL); ngx_close_listening_sockets(cycle); ...}`), and so does each worker (ngx_worker_process_cycle,
`if (ngx_quit)` ... ngx_close_listening_sockets); `kong quit` (kong/cmd/quit.lua) is that SIGQUIT. The master's loop
handles each signal flag at its next turn, also during a graceful stop: `if (ngx_reopen)` (ngx_reopen_files,
NGX_REOPEN_SIGNAL to the workers) and `if (ngx_terminate)` (SIGTERM, then SIGKILL, to the workers).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_helpers import (
    GatewayNode,
    HoldingBackend,
    admin_now,
    becomes_true,
    descendants_of,
    gateway_in_front_of,
    has_exited,
    request_in_flight,
    start_daemonised,
)


@pytest.fixture
def backend() -> HoldingBackend:
    return HoldingBackend(3.0)  # (closed by gateway_in_front_of)


@pytest.fixture
def gw(tmp_path: Path, backend: HoldingBackend) -> Iterator[GatewayNode]:
    yield from gateway_in_front_of(backend, tmp_path, drain_timeout=10)


@pytest.fixture
def held_long() -> HoldingBackend:
    return HoldingBackend(20.0)  # (far past the forced stop's bound: a stop that was not forced waits for it)


@pytest.fixture
def gw_held_long(tmp_path: Path, held_long: HoldingBackend) -> Iterator[GatewayNode]:
    yield from gateway_in_front_of(held_long, tmp_path, drain_timeout=30)


def _connect_and_ask(port: int) -> str:
    """What a new client sees: refused, answered, closed, reset, or left hanging (no answer within 2 s)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.settimeout(2)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            try:
                head = sock.recv(65536)
            except TimeoutError:
                return "hanging"
            except ConnectionResetError:
                return "reset"
            return f"answered {head[:12]!r}" if head else "closed"
    except ConnectionRefusedError:
        return "refused"


def test_a_graceful_stop_refuses_new_connections_while_the_in_flight_request_finishes(gw, backend):
    """The root and the workers close their listening sockets as the stop begins: a client connecting then is
    refused at once (and can try another instance), not queued in an accept queue no one reads until the drain
    ends; the request in flight is still answered."""
    root = start_daemonised(gw)
    backend.hold_s = 15.0  # (held until released below, past drain_timeout: a drain that ends first is forced at 10 s)
    thread, codes = request_in_flight(gw.port, backend)
    os.kill(root, signal.SIGTERM)
    # at once; a stop that closed the listening sockets only as its drain ended logs it at 10 s
    assert becomes_true(lambda: "new connections are refused" in gw.log(), 6)
    time.sleep(0.2)  # (the worker closes its copy when it starts to drain)
    assert _connect_and_ask(gw.port) == "refused"
    assert thread.is_alive()  # (still draining)
    backend.release()
    thread.join(timeout=15)
    assert codes == [200], "the in-flight request was cut by the graceful stop"
    assert becomes_true(lambda: has_exited(root), 10)


def test_sigusr1_during_a_graceful_stop_lets_the_stop_finish_cleanly(gw, backend):
    """logrotate's nightly SIGUSR1 landing during a stop reopens the log files and the stop goes on: the root ends
    with "gateway stopped", no traceback."""
    root = start_daemonised(gw)
    thread, codes = request_in_flight(gw.port, backend)
    os.kill(root, signal.SIGTERM)
    time.sleep(0.3)
    os.kill(root, signal.SIGUSR1)
    assert becomes_true(lambda: "SIGUSR1: reopening log files" in gw.log(), 5)
    assert thread.is_alive()  # (the stop still drains the request)
    backend.release()
    assert becomes_true(lambda: has_exited(root), 15), "the root did not exit"
    thread.join(timeout=15)
    assert codes == [200]
    log = gw.log()
    assert "SIGUSR1: reopening log files" in log
    assert "Traceback" not in log and "gateway stopped" in log, log[-1500:]


def test_a_second_sigterm_after_a_sigusr1_still_forces_the_stop_at_once(gw_held_long, held_long):
    """README: a second SIGTERM forces the stop. A SIGUSR1 before it is handled at once and holds nothing up."""
    gw = gw_held_long
    root = start_daemonised(gw)
    thread, _ = request_in_flight(gw.port, held_long)
    os.kill(root, signal.SIGTERM)
    time.sleep(0.3)
    os.kill(root, signal.SIGUSR1)
    time.sleep(0.2)
    os.kill(root, signal.SIGTERM)
    forced = time.monotonic()
    # at once: a busy host's scheduling aside; a stop that is not forced drains the request held for 20 s
    assert becomes_true(lambda: has_exited(root), 5), f"the root ran {time.monotonic() - forced:.1f}s more"
    assert "second SIGTERM: forcing the stop" in gw.log()
    thread.join(timeout=15)


def test_a_repeated_sigquit_or_a_second_gateway_stop_keeps_the_stop_graceful(gw, backend):
    """nginx (release-1.27.1) src/os/unix/ngx_process.c:346-347, the master's handler: `case
    ngx_signal_value(NGX_SHUTDOWN_SIGNAL): ngx_quit = 1;` -- a second SIGQUIT sets the same flag again, and
    ngx_process_cycle.c:203-207 (`if (ngx_quit) { ngx_signal_worker_processes(cycle, NGX_SHUTDOWN_SIGNAL); ...`)
    keeps the shutdown graceful; only SIGTERM/SIGINT (ngx_process.c:351-353, ngx_terminate) are fast. kong/cmd/quit.lua
    sends that SIGQUIT, and SIGTERM (`nginx_signals.stop`) only once its timeout has run out. `gateway stop` sends
    SIGQUIT: a second one (a deploy script and an operator), or a `kill -QUIT`, while the first drains, cuts nothing."""
    root = start_daemonised(gw)
    backend.hold_s = 8.0  # (under drain_timeout) held until both repeated stops are in, then released
    thread, codes = request_in_flight(gw.port, backend)
    first = subprocess.Popen([sys.executable, "-m", "gateway", "stop"], cwd=gw.dir, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    stop = [sys.executable, "-m", "gateway", "stop"]
    second_proc = None
    try:
        assert becomes_true(lambda: "graceful stop" in gw.log(), 5), gw.log()[-2000:]
        os.kill(root, signal.SIGQUIT)
        second_proc = subprocess.Popen(stop, cwd=gw.dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # the request is still held while the second SIGQUIT (kill) and the third (the second `gateway stop`) land
        becomes_true(lambda: gw.log().count("SIGQUIT: the graceful stop goes on (SIGTERM forces it)") >= 2, 8)
        backend.release()
        out, err = second_proc.communicate(timeout=20)
        second = subprocess.CompletedProcess(stop, second_proc.returncode, out, err)
        thread.join(timeout=8)
        assert codes == [200], f"a repeated graceful stop cut the in-flight request: {second.stdout}{second.stderr}"
        assert (second.returncode, second.stdout.strip()) == (0, f"gateway stopped (pid {root})"), second.stderr
        _, first_err = first.communicate(timeout=15)
        assert first.returncode == 0, first_err
    finally:
        for proc in (first, second_proc):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
    log = gw.log()
    assert "SIGQUIT: graceful stop" in log, log[-2000:]  # (`gateway stop`'s, as `kong quit`'s)
    assert log.count("SIGQUIT: the graceful stop goes on (SIGTERM forces it)") == 2, log[-2000:]
    assert "forcing the stop" not in log and "gateway stopped" in log


def test_a_stop_during_a_sighup_reload_ends_the_root_cleanly(gw):
    """nginx (release-1.27.1) src/os/unix/ngx_process_cycle.c:177-211: the master looks at `ngx_terminate` /
    `ngx_quit` before `ngx_reconfigure`, and `if (!live && (ngx_terminate || ngx_quit)) ngx_master_process_exit(cycle)`:
    a stop that comes while a reload is under way ends the master cleanly. The SIGHUP reload, once its new generation
    started, asks the root supervisor for its children after the stop has shut it down (SupervisorNotRunning): the
    root still ends with "gateway stopped", without a traceback. A stopped state keeper holds the reload at
    its reload_config call (up to 2 s), so that the SIGTERM lands there every time (in the wild, SIGHUP then SIGTERM
    5-20 ms later)."""
    root = start_daemonised(gw)
    keeper = next(c["pid"] for c in admin_now(gw, "status").result["tree"]["children"] if c["id"] == "keeper")
    os.kill(keeper, signal.SIGSTOP)
    try:
        os.kill(root, signal.SIGHUP)
        assert becomes_true(lambda: "supervisor root: started: child='workers@2'" in gw.log(), 5), gw.log()[-2000:]
        gw.pids.update(descendants_of(root))
        os.kill(root, signal.SIGTERM)  # the reload now waits for the keeper's answer to reload_config
        time.sleep(0.2)
    finally:
        os.kill(keeper, signal.SIGCONT)
    assert becomes_true(lambda: has_exited(root), 8), "the root did not exit"
    log = gw.log()
    assert "Traceback" not in log and "SupervisorNotRunning" not in log, log[log.find("Traceback") - 200:][:3000]
    # (the stop shut the root supervisor the reload then asked, or ended the reload's wait on the keeper first)
    assert ("reload cut short: the root supervisor has stopped (the gateway is stopping)" in log
            or "reload cut short: the gateway is stopping" in log), log[-2000:]
    assert "gateway stopped" in log, log[-2000:]
