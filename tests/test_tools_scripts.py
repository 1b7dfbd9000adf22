"""The operator's and developer's tools (scripts/, loadtest/, configs/) as the README runs them: every shipped config
checks, bad arguments get a clear one-line error (exit 2) before anything starts, a port in use or a missing gateway
is said plainly (no traceback, no wait), and the ops scripts work against a real `gateway start` run from a
python3 without pyzmq, which then stops leaving no process. All on loopback, each test a few seconds at most."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from backends import free_port

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
OPS = SCRIPTS / "ops"
PY = sys.executable
# a long enough secret for configs/multihost.yaml's `env:MCP_SESSION_SECRET` (every host of it sets the same one)
ENV = {**os.environ, "MCP_SESSION_SECRET": "tools-test-session-secret-0123456789"}


def run(*argv: str | Path, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess[str]:  # noqa: ANN003
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout,
                          **{"env": ENV, "cwd": ROOT, **kwargs})


def plain(out: subprocess.CompletedProcess[str]) -> str:
    """stdout + stderr, checked to hold no traceback and no shell error."""
    said = out.stdout + out.stderr
    assert "Traceback" not in said and "unbound variable" not in said, said
    return said


@pytest.fixture
def listening():
    """A socket listening on a free 127.0.0.1 port: a port in use by another program."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").iterdir()))
def test_every_shipped_config_checks(name):
    out = run(PY, "-m", "gateway", "check-config", f"configs/{name}")
    assert out.returncode == 0 and f"configs/{name}: OK: " in out.stdout, plain(out)


def test_the_multihost_config_says_which_variable_it_needs_when_it_is_not_set():
    env = {k: v for k, v in ENV.items() if k != "MCP_SESSION_SECRET"}
    out = run(PY, "-m", "gateway", "check-config", "configs/multihost.yaml", env=env)
    assert out.returncode == 2 and "MCP_SESSION_SECRET is not set" in plain(out)


@pytest.mark.parametrize(("args", "said"), [
    (["--users"], "--users needs a value"),
    (["--users", "0"], "--users takes a whole number"),
    (["--users", "many"], "--users takes a whole number"),
    (["--spawn-rate", "0"], "--spawn-rate takes a number"),
    (["--time", "0"], "--time takes a duration above 0"),
    (["--time", "5x"], "--time takes a duration above 0"),
    (["--host", "nonsense"], "--host takes the gateway's base URL"),
    (["--host", "http://127.0.0.1:8080/mcp"], "--host takes the gateway's base URL"),
])
def test_load_refuses_bad_arguments_before_it_starts_anything(args, said):
    out = run(SCRIPTS / "load", *args, timeout=30)
    assert out.returncode == 2 and said in plain(out) and "scripts/setup" not in out.stderr, out.stderr


def test_load_help_names_its_options():
    out = run(SCRIPTS / "load", "--help", timeout=30)
    assert out.returncode == 0
    assert all(o in out.stdout for o in ("--host", "--users", "--spawn-rate", "--time")), out.stdout


def test_no_bash_script_pipes_into_grep_q_under_pipefail():
    """`cmd | grep -q X` under `set -o pipefail` fails now and then (grep stops at the match, cmd dies of SIGPIPE):
    scripts/setup ran apt-get again for a library that was there."""
    for script in [*SCRIPTS.iterdir(), *OPS.iterdir()]:
        if script.is_file() and script.read_text(errors="replace").startswith("#!/usr/bin/env bash"):
            text = script.read_text()
            assert not ("pipefail" in text and re.search(r"\|\s*grep\s+(-\w*q|--quiet)", text)), script


@pytest.mark.parametrize("script", ["breakers", "drain-target"])
@pytest.mark.parametrize(("args", "code", "said"), [
    (["--timeout", "-1"], 2, "expected seconds > 0"),
    (["--timeout", "nan"], 2, "expected seconds > 0"),
    (["--timeout", "soon"], 2, "invalid seconds value"),
    (["--admin", "no-scheme"], 1, "cannot use --admin 'no-scheme'"),
    (["--admin", "ipc://run/nobody.sock", "--timeout", "0.2"], 1, "no answer from ipc://"),
])
def test_ops_scripts_say_what_is_wrong_without_a_traceback(tmp_path, script, args, code, said):
    extra = ["--list"] if script == "drain-target" else []
    out = run(PY, OPS / script, *args, *extra, cwd=tmp_path, timeout=30)
    assert out.returncode == code and said in plain(out), out.stderr


def test_drain_target_wants_a_target_or_list_not_both(tmp_path):
    for args in ([], ["--list", "up|127.0.0.1:1"]):
        out = run(PY, OPS / "drain-target", *args, cwd=tmp_path, timeout=30)
        assert out.returncode == 2 and "drain-target: error:" in plain(out), out.stderr


def test_ops_scripts_against_a_started_shipped_config_from_a_python_without_pyzmq(tmp_path):
    """configs/demo.yaml on free ports under `gateway start`; the ops scripts run as `python -S` (no site-packages,
    so no pyzmq: they run again with .venv's python), then `gateway stop` leaves no process of the gateway's."""
    config = (ROOT / "configs" / "demo.yaml").read_text()
    config = config.replace("127.0.0.1:8080", f"127.0.0.1:{free_port()}")
    config = config.replace("127.0.0.1:9901", f"127.0.0.1:{free_port()}")
    (tmp_path / "demo.yaml").write_text(config)
    gateway = [PY, "-m", "gateway"]
    started = run(*gateway, "start", "--config", "demo.yaml", "--workers", "1", cwd=tmp_path, timeout=90)
    assert started.returncode == 0, started.stderr
    root = int((tmp_path / "run" / "gateway.pid").read_text())
    try:
        python_without_pyzmq = [PY, "-S"]
        assert run(*python_without_pyzmq, "-c", "import zmq").returncode != 0
        table = run(*python_without_pyzmq, OPS / "breakers", cwd=tmp_path)
        assert table.returncode == 0 and table.stdout.split() == ["TARGET", "STATE", "REQUESTS", "FAILURES", "PROBES"]
        target = "mcp-cluster|127.0.0.1:9002"
        drained = run(*python_without_pyzmq, OPS / "drain-target", target, cwd=tmp_path)
        rows = {line.split()[0]: line.split()[1:] for line in plain(drained) and drained.stdout.splitlines()[1:]}
        assert drained.returncode == 0 and rows[target] == ["yes", "config"], drained.stderr
        enabled = run(PY, OPS / "drain-target", "--enable", target, cwd=tmp_path)
        assert enabled.returncode == 0 and f"{target}" in enabled.stdout and " yes " not in enabled.stdout
        refused = run(PY, OPS / "breakers", "--open", target, cwd=tmp_path)  # demo.yaml has no circuit-breaker
        assert refused.returncode == 1 and "open failed: no circuit breaker" in plain(refused)
        head = subprocess.run(f"{PY} {OPS / 'drain-target'} --list | head -1", shell=True, cwd=tmp_path, env=ENV,
                              capture_output=True, text=True, timeout=30)
        assert head.stdout.startswith("TARGET") and "Error" not in head.stderr, head.stderr
    finally:
        stopped = run(*gateway, "stop", "--timeout", "20", cwd=tmp_path, timeout=60)
    assert stopped.returncode == 0, stopped.stderr
    deadline = time.monotonic() + 10
    while _session_members(root) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _session_members(root)


def _session_members(sid: int) -> list[int]:
    """Live processes of session `sid` (the daemonised root leads its own), zombies not counted."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                found.append(int(entry))
    return found


@pytest.mark.parametrize(("args", "said"), [
    (["--requests", "0"], "expected a whole number of at least 1"),
    (["--top", "-1"], "expected a whole number of at least 0"),
    (["--plugins", "nope"], "invalid choice"),
])
def test_opcount_refuses_bad_arguments(args, said):
    out = run(SCRIPTS / "opcount", *args, timeout=30)
    assert out.returncode == 2 and said in plain(out), out.stderr


def test_opcount_checks_the_baseline_before_it_counts():
    started = time.monotonic()
    out = run(SCRIPTS / "opcount", "--baseline", "no-such-revision", timeout=30)
    assert out.returncode == 1 and "--baseline no-such-revision: not a commit" in plain(out), out.stderr
    assert time.monotonic() - started < 15


def test_bench_help_lists_every_target_and_refuses_a_negative_count():
    helped = run(PY, SCRIPTS / "bench", "--help", timeout=30, env={**ENV, "COLUMNS": "10000"})  # no wrapping
    text = helped.stdout
    assert helped.returncode == 0
    assert "gw-llhttp-1w CPU <= 1.30 x floor" in text and "gw-mcp-session CPU <= 300" in text, text
    assert "worker <= 50 ms" in text and "keeper <= 100 ms" in text, text
    refused = run(PY, SCRIPTS / "bench", "--instructions", "-1", timeout=30)
    assert refused.returncode == 2 and "--instructions at least 0" in plain(refused)


@pytest.mark.parametrize("script", ["floor_proxy.py", "demo_backend.py"])
def test_test_servers_say_a_port_is_in_use(script, listening):
    args = (["--listen", f"127.0.0.1:{listening}", "--upstream", "127.0.0.1:1"] if script == "floor_proxy.py"
            else ["--port", str(listening)])
    out = run(PY, SCRIPTS / script, *args, timeout=30)
    assert out.returncode == 1 and f"cannot listen on 127.0.0.1:{listening}" in plain(out), out.stderr


@pytest.mark.parametrize(("script", "args"), [
    ("floor_proxy.py", ["--listen", "127.0.0.1:70000", "--upstream", "127.0.0.1:1"]),
    ("floor_proxy.py", ["--listen", "nowhere", "--upstream", "127.0.0.1:1"]),
    ("demo_backend.py", ["--port", "0"]),
    ("mcp_demo_server.py", ["--port", "70000"]),
])
def test_test_servers_refuse_a_bad_port(script, args):
    out = run(PY, SCRIPTS / script, *args, timeout=60)
    assert out.returncode == 2 and "error: argument" in plain(out), out.stderr


def test_demo_refuses_to_start_beside_a_program_on_a_demo_port():
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", 9002))
        except OSError:
            pytest.skip("127.0.0.1:9002 is taken already")
        sock.listen()
        proc = subprocess.Popen([str(SCRIPTS / "demo")], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(30)
    assert proc.returncode == 1 and "127.0.0.1:9002 is in use by another program" in err, err
    assert "Traceback" not in out + err


@pytest.mark.parametrize(("args", "said"), [
    (["--streams", "0"], "argument --streams"),
    (["--probes", "0"], "argument --probes"),
    (["--idle", "nan"], "argument --idle"),
    (["--clients", "300"], "argument --clients"),
    (["client", "--port", "1"], "needs --count, --source"),
])
def test_streams_refuses_bad_arguments(args, said):
    out = run(PY, ROOT / "loadtest" / "streams.py", *args, timeout=30)
    assert out.returncode == 2 and said in plain(out), out.stderr


def test_streams_stops_at_once_when_the_gateway_does_not_start():
    """A config the gateway refuses (sse_keepalive under its 1 ms floor): its message, at once, and nothing left."""
    started = time.monotonic()
    out = run(PY, ROOT / "loadtest" / "streams.py", "--streams", "2", "--idle", "0.5", "--probes", "2",
              "--sse-keepalive", "0.0001", timeout=60)
    assert out.returncode == 1 and "the gateway exited (2)" in plain(out) and "sse_keepalive" in out.stderr
    assert time.monotonic() - started < 30
