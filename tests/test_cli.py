"""The `gateway` command as an operator runs it: `python -m gateway ...` in a subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
from backends import EchoBackend, free_port, request
from e2e_helpers import GatewayNode, descendants_of

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
BROKEN = """\
services:
  - name: s
    url: http://127.0.0.1:9000
upstreams:
  - name: u
    healthchecks:
      active:
        healthy:
          interval: ten
"""


def gateway_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway", *args]


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(gateway_cmd(*args), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)


def test_check_config_accepts_the_reference_kong_yml():
    result = run_cli("check-config", "configs/kong.yml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "configs/kong.yml: OK: 1 services, 1 routes, 1 upstreams, 3 targets, 4 plugins"]
    assert "Traceback" not in result.stderr


def test_check_config_takes_the_file_as_start_takes_it_too():
    result = run_cli("check-config", "--config", "configs/kong.yml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("configs/kong.yml: OK: ")


@pytest.mark.parametrize("args", [(), ("configs/kong.yml", "--config", "configs/demo.yaml")])
def test_check_config_needs_exactly_one_file(args):
    result = run_cli("check-config", *args)
    assert result.returncode == 2
    assert "check-config takes one config file: gateway check-config FILE (or --config FILE)" in result.stderr


def test_admin_without_a_command_names_only_the_command_as_missing():
    """KEY=VALUE arguments are optional (`gateway admin status`): argparse must not call them required too."""
    result = run_cli("admin")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == "gateway admin: error: the following arguments are required: cmd"


def test_check_config_reports_a_broken_file_with_the_field_path(tmp_path):
    path = tmp_path / "broken.yml"
    path.write_text(BROKEN)
    result = run_cli("check-config", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f'{path}: upstreams[0].healthchecks.active.healthy.interval: expected number >= 0 and <= 65535, got "ten"']


def test_check_config_reports_every_error_one_per_line(tmp_path):
    path = tmp_path / "two.yml"
    path.write_text("services: [{name: s, url: 'http://a:1', colour: red}]\nupstreams: [{name: u, slots: 1}]\n")
    result = run_cli("check-config", str(path))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{path}: services[0].colour: unknown field")
    assert lines[1].startswith(f"{path}: upstreams[0].slots: expected int >= 10")


def test_check_config_reports_compile_stage_errors(tmp_path):
    path = tmp_path / "plugin.yml"
    path.write_text("plugins: [{name: request-size-limiting, config: {size_unit: tb}}]\n"
                    "upstreams: [{name: u, algorithm: fastest}]\n")
    result = run_cli("check-config", str(path))
    assert result.returncode == 2
    assert "upstreams[0].algorithm: unknown algorithm 'fastest'" in result.stderr
    assert 'plugins[0].config.size_unit: expected one of "bytes", "kilobytes", "megabytes", got "tb"' in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("content", "expected"), [
    (None, "cannot read the config file"),
    ("services: [\n", "YAML syntax error"),
    ("- just\n- a list\n", "the document must be a mapping"),
], ids=["missing", "yaml-syntax", "not-a-mapping"])
def test_check_config_unreadable_files_get_a_clear_message(tmp_path, content, expected):
    path = tmp_path / "config.yml"
    if content is not None:
        path.write_text(content)
    result = run_cli("check-config", str(path))
    assert result.returncode == 2
    assert expected in result.stderr
    assert str(path) in result.stderr
    assert "Traceback" not in result.stderr


def test_run_with_a_broken_config_exits_2_without_serving(tmp_path):
    path = tmp_path / "broken.yml"
    path.write_text(BROKEN)
    result = run_cli("run", "--config", str(path))
    assert result.returncode == 2
    assert "upstreams[0].healthchecks.active.healthy.interval" in result.stderr
    assert "Traceback" not in result.stderr


async def wait_listening(port: int, proc: trio.Process, timeout: float = 15) -> None:
    with trio.fail_after(timeout):
        while True:
            assert proc.returncode is None, "the gateway exited before listening"
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.05)
                continue
            await stream.aclose()
            return


async def test_run_serves_and_exits_0_on_sigterm(nursery, tmp_path):
    backend = EchoBackend("cli-backend")
    await nursery.start(backend.serve)
    port = free_port()
    config = tmp_path / "gw.yml"
    config.write_text(f"""
gateway:
  listen: "127.0.0.1:{port}"
  http_codec: llhttp
  pid_file: "{tmp_path}/gateway.pid"
services:
  - name: s
    url: http://127.0.0.1:{backend.port}
    routes: [{{paths: [/]}}]
""")
    log = (tmp_path / "stderr.log").open("wb")
    proc = await trio.lowlevel.open_process(gateway_cmd("run", "--config", str(config)), cwd=REPO, env=ENV,
                                            stdout=log, stderr=log)
    try:
        await wait_listening(port, proc)
        with trio.fail_after(10):
            reply = await request(port, "GET", "/hello")
        assert reply.status == 200
        assert reply.json()["name"] == "cli-backend"
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            code = await proc.wait()
        assert code == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            with trio.move_on_after(5):
                await proc.wait()
        log.close()
    stderr = (tmp_path / "stderr.log").read_text()
    assert "Traceback" not in stderr
    assert "SIGTERM" in stderr


def test_run_on_a_port_already_in_use_fails_with_a_clear_message(tmp_path):
    with socket.socket() as holder:  # no SO_REUSEPORT: the gateway cannot share this port
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = tmp_path / "gw.yml"
        config.write_text(f'gateway: {{listen: "127.0.0.1:{port}", pid_file: "{tmp_path}/gateway.pid"}}\n'
                          "services: [{name: s, url: 'http://127.0.0.1:9', routes: [{paths: [/]}]}]\n")
        result = run_cli("run", "--config", str(config))
    assert result.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Address already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_lists_the_operators_commands_and_not_the_supervisors_own():
    """`gateway --help` names what an operator runs; the children the supervisor starts (keeper, health, discovery,
    zygote, worker) are not listed, nor as argparse's `==SUPPRESS==` marker."""
    out = run_cli("--help")
    assert out.returncode == 0
    assert "check-config" in out.stdout and "reload" in out.stdout
    assert "SUPPRESS" not in out.stdout
    assert not any(line.split()[:1] == [name] for line in out.stdout.splitlines()
                   for name in ("keeper", "health", "discovery", "zygote", "worker"))


def test_every_process_of_a_gateway_started_with_a_log_level_logs_at_it(tmp_path):
    """Kong's kong.conf `log_level` is nginx's one `error_log ... ${{LOG_LEVEL}}` for the master and every worker
    (kong/templates/nginx.lua:7, nginx_kong.lua:121); the gateway's is `gateway --log-level L start` (check-config
    points kong.conf's log_level there: gateway/config/kong_conf.py). The daemonised start ran its root as `gateway
    start --foreground` without the option, and the root started its keeper and workers (forked from the zygote, or
    executed) without it, a reload's workers too: at WARNING the log was still their INFO lines. `gateway stop` then
    finds the root, whose command line is `gateway --log-level WARNING start --foreground`."""
    doc = {"services": [{"name": "s", "url": f"http://127.0.0.1:{free_port()}", "routes": [{"paths": ["/"]}]}]}
    gw = GatewayNode(tmp_path / "gw", doc, workers=1, status_listen=None)
    try:
        out = gw.cli("--log-level", "WARNING", "start", "--config", str(gw.config), timeout=40)
        assert out.returncode == 0, out.stderr
        gw.root = gw.root_pid()
        assert gw.root is not None
        gw.pids.add(gw.root)
        out = gw.cli("reload", "--config", str(gw.config), timeout=40)
        assert "generation 2 serving" in out.stdout, out.stderr
        gw.pids.update(descendants_of(gw.root))
        time.sleep(0.3)  # (the old worker's drain line, had it been written)
        assert [line for line in gw.log().splitlines() if " INFO " in line] == []
        out = gw.cli("stop", "--config", str(gw.config), "--timeout", "10", timeout=30)
        assert (out.returncode, out.stdout.strip()) == (0, f"gateway stopped (pid {gw.root})"), out.stderr
    finally:
        gw.cleanup()
