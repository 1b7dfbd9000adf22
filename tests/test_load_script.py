"""scripts/load: the MCP locust scenarios (loadtest/locustfile.py) against the demo (configs/demo.yaml in front of
three `mcp` SDK servers, on free ports), headless and short: every request type runs and none fails."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from backends import free_port, stop_process, wait_port

ROOT = Path(__file__).resolve().parent.parent
NAMES = ("alpha", "beta", "gamma")
# A session's life (each user's) and a stateless call run in any case; which of a session's tools/ calls (picked at
# random, by weight) fit in the time depends on the machine's speed.
LIFECYCLE = ["DELETE", "GET stream", "after DELETE", "initialize", "notifications/initialized",
             "tools/call whoami (stateless)"]
SESSION_CALLS = ["tools/call echo_headers", "tools/call slow", "tools/call whoami", "tools/list"]


@pytest.fixture
def demo(tmp_path):
    """The demo on free ports: configs/demo.yaml with its addresses replaced, `gateway start` in tmp_path."""
    ports = [free_port() for _ in NAMES]
    servers = [subprocess.Popen([sys.executable, str(ROOT / "scripts" / "mcp_demo_server.py"), "--port", str(port),
                                 "--name", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for port, name in zip(ports, NAMES, strict=True)]
    gateway_port = free_port()
    config = (ROOT / "configs" / "demo.yaml").read_text().replace("127.0.0.1:8080", f"127.0.0.1:{gateway_port}")
    config = config.replace("127.0.0.1:9901", f"127.0.0.1:{free_port()}")
    for i, port in enumerate(ports, 1):
        config = config.replace(f"127.0.0.1:900{i}", f"127.0.0.1:{port}")
    (tmp_path / "demo.yaml").write_text(config)
    gateway = [sys.executable, "-m", "gateway"]
    try:
        for port in ports:
            wait_port(port, timeout=60)  # the SDK's imports take seconds on a busy machine
        out = subprocess.run([*gateway, "start", "--config", "demo.yaml", "--workers", "2"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=90)
        assert out.returncode == 0, out.stderr
        yield f"http://127.0.0.1:{gateway_port}"
    finally:
        subprocess.run([*gateway, "stop", "--timeout", "20"], cwd=tmp_path, capture_output=True, timeout=60)
        for server in servers:
            stop_process(server)


def test_the_mcp_load_scenarios_run_against_the_demo_without_a_failure(demo):
    out = subprocess.run([str(ROOT / "scripts" / "load"), "--host", demo, "--time", "4s", "--users", "4",
                          "--spawn-rate", "4"], capture_output=True, text=True, timeout=240)
    report = out.stdout + out.stderr
    assert out.returncode == 0, report
    rows = {m[1].strip(): (int(m[2]), int(m[3])) for m in
            re.finditer(r"^(?:GET|POST|DELETE)\s+(.+?)\s{2,}(\d+)\s+(\d+)\(", report, re.M)}
    assert set(LIFECYCLE) <= set(rows) <= set(LIFECYCLE + SESSION_CALLS), report
    assert set(rows) & set(SESSION_CALLS), report
    assert all(count > 0 and failures == 0 for count, failures in rows.values()), rows
