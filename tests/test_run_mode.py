"""`gateway run --config F` (one worker in the foreground, no supervisor) obeys what it accepts of a config as
`gateway start` does, or refuses it at start naming the key: signals, discovery, registration, the pid file."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import trio
from backends import EchoBackend, free_port, request
from consul_server import FakeConsul
from test_cli import gateway_cmd, wait_listening

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


@contextlib.asynccontextmanager
async def gateway_run(tmp_path: Path, text: str, port: int) -> AsyncIterator[trio.Process]:
    """`python -m gateway run` on `text` in `tmp_path` (its pid file: tmp_path/run/gateway.pid), once it answers."""
    config = tmp_path / "gw.yml"
    config.write_text(text)
    log = (tmp_path / "stderr.log").open("wb")
    proc = await trio.lowlevel.open_process([sys.executable, "-m", "gateway", "run", "--config", str(config)],
                                            cwd=tmp_path, env=ENV, stdout=log, stderr=log)
    try:
        await wait_listening(port, proc)
        with trio.fail_after(5):  # answered: its loop runs, its signal handlers are in (the kernel accepts sooner)
            await request(port, "GET", "/")
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()  # by its pid
            with trio.move_on_after(5):
                await proc.wait()
        log.close()


def _config(port: int, backend_port: int, extra: str = "") -> str:
    return f"""
gateway:
  listen: "127.0.0.1:{port}"
  status_listen: null
{extra}
services:
  - name: s
    url: http://127.0.0.1:{backend_port}
    routes: [{{paths: [/]}}]
"""


async def _pid_file(tmp_path: Path) -> Path:
    """The pid file, once written (just after the listeners accept)."""
    path = tmp_path / "run" / "gateway.pid"
    with trio.fail_after(2):
        while not path.exists():
            await trio.sleep(0.01)
    return path


async def _cli(tmp_path: Path, *args: str) -> trio.CompletedProcess[bytes]:
    with trio.fail_after(5):  # (a `gateway run` that serves never returns)
        return await trio.run_process([sys.executable, "-m", "gateway", *args], cwd=tmp_path, env=ENV,
                                      capture_stdout=True, capture_stderr=True, check=False)


async def _echo(nursery: trio.Nursery, name: str = "b") -> EchoBackend:
    backend = EchoBackend(name)
    await nursery.start(backend.serve)
    return backend


async def test_sighup_is_logged_and_run_keeps_serving(nursery, tmp_path):
    """nginx's one-process cycle answers SIGHUP rather than dying of it (src/os/unix/ngx_process_cycle.c:313-324,
    ngx_single_process_cycle: it reconfigures); `gateway run` reads its config once, so it says so and serves on."""
    backend = await _echo(nursery)
    port = free_port()
    async with gateway_run(tmp_path, _config(port, backend.port), port) as proc:
        proc.send_signal(signal.SIGHUP)
        await trio.sleep(0.3)
        assert proc.returncode is None, f"gateway run died on SIGHUP (returncode {proc.returncode})"
        with trio.fail_after(3):
            assert (await request(port, "GET", "/x")).status == 200
    assert "SIGHUP: gateway run does not reload its config" in (tmp_path / "stderr.log").read_text()


async def test_sigquit_stops_run_gracefully_with_exit_0(nursery, tmp_path):
    """nginx's one-process cycle quits on SIGQUIT (ngx_process_cycle.c:302-311: exit_process hooks, then
    ngx_master_process_exit, exit 0), as `kong quit` (kong/cmd/quit.lua) and `gateway stop` send it."""
    backend = await _echo(nursery)
    port = free_port()
    async with gateway_run(tmp_path, _config(port, backend.port), port) as proc:
        proc.send_signal(signal.SIGQUIT)
        with trio.fail_after(4):
            assert await proc.wait() == 0


async def test_second_sigint_during_the_drain_forces_the_stop(nursery, tmp_path):
    """The root: "a SIGTERM or SIGINT during the stop forces it" (README CLI; nginx's one-process cycle exits at the
    first, ngx_process_cycle.c:302-311): a second Ctrl-C does not wait out drain_timeout for a slow request."""
    backend = await _echo(nursery)
    port = free_port()
    async with gateway_run(tmp_path, _config(port, backend.port), port) as proc:
        nursery.start_soon(_quietly, port, "/x?delay=20")
        await trio.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        await trio.sleep(0.3)
        assert proc.returncode is None, "the first SIGINT must drain, not stop at once"
        proc.send_signal(signal.SIGINT)
        with trio.fail_after(3):
            assert await proc.wait() == 0


async def test_second_sigquit_during_the_drain_keeps_it_graceful(nursery, tmp_path):
    """A second SIGQUIT only sets nginx's ngx_quit again (ngx_process_cycle.c:1048), as the root keeps its stop
    graceful: the request in flight is answered, then `gateway run` exits 0."""
    backend = await _echo(nursery)
    port = free_port()
    answers: list[int] = []

    async def slow() -> None:
        answers.append((await request(port, "GET", "/x?delay=1")).status)

    async with gateway_run(tmp_path, _config(port, backend.port), port) as proc:
        nursery.start_soon(slow)
        await trio.sleep(0.3)
        proc.send_signal(signal.SIGQUIT)
        await trio.sleep(0.2)
        proc.send_signal(signal.SIGQUIT)
        await trio.sleep(0.2)
        assert proc.returncode is None, "a second SIGQUIT forced the stop"
        with trio.fail_after(4):
            assert await proc.wait() == 0
    assert answers == [200]


async def _quietly(port: int, target: str) -> None:
    with contextlib.suppress(Exception):
        await request(port, "GET", target)


async def test_run_serves_the_targets_consul_discovery_reports(nursery, tmp_path):
    """An upstream whose targets come from Consul is followed under `gateway run` too, before it accepts, as Kong
    creates an upstream's balancer however it is started (kong/runloop/balancer/upstreams.lua); not 503 for ever."""
    backend = await _echo(nursery, "from-consul")
    consul = FakeConsul()
    consul_port = await nursery.start(consul.serve)
    consul.register({"Name": "svc", "ID": "svc-1", "Address": "127.0.0.1", "Port": backend.port})
    port = free_port()
    text = f"""
gateway:
  listen: "127.0.0.1:{port}"
  status_listen: null
services:
  - name: s
    url: http://disc-up
    routes: [{{paths: [/]}}]
upstreams:
  - name: disc-up
    discovery: {{type: consul, endpoints: ["127.0.0.1:{consul_port}"], service: svc}}
"""
    async with gateway_run(tmp_path, text, port):
        with trio.fail_after(3):
            reply = await request(port, "GET", "/x")
        assert reply.status == 200, (reply.status, reply.body[:200])
        assert reply.json()["name"] == "from-consul"


async def test_gateway_stop_finds_run_through_its_pid_file(nursery, tmp_path):
    """nginx writes its pid file in one-process mode too (src/core/nginx.c:363, before the mode split at :375), so
    `nginx -s quit` finds it: `gateway stop --config F` stops a `gateway run` on F, which removes its pid file."""
    backend = await _echo(nursery)
    port = free_port()
    async with gateway_run(tmp_path, _config(port, backend.port), port) as proc:
        pid_file = await _pid_file(tmp_path)
        assert pid_file.read_text().strip() == str(proc.pid)
        out = await _cli(tmp_path, "stop", "--config", str(tmp_path / "gw.yml"))
        assert out.returncode == 0, out.stderr.decode()
        with trio.fail_after(3):
            assert await proc.wait() == 0
    assert not pid_file.exists()


async def test_status_names_a_run_process_as_having_no_admin_channel(nursery, tmp_path):
    """`gateway status` against a `gateway run`: at once, exit 1 (as for a gateway that does not answer), saying
    it is a `gateway run` without an admin channel, never waiting out the admin call's timeout."""
    backend = await _echo(nursery)
    port = free_port()
    async with gateway_run(tmp_path, _config(port, backend.port), port) as proc:
        await _pid_file(tmp_path)
        out = await _cli(tmp_path, "status", "--config", str(tmp_path / "gw.yml"))
        assert proc.returncode is None
    assert out.returncode == 1
    assert f"pid {proc.pid}" in out.stderr.decode() and "`gateway run` process, which has no admin channel" \
        in out.stderr.decode()


async def test_run_registers_itself_and_deregisters_at_stop(nursery, tmp_path):
    """`gateway.registration`: registered once `gateway run` accepts, as the root's registration task does (README
    Self-registration; Kong's own hooks register nothing), and withdrawn when it stops."""
    backend = await _echo(nursery)
    consul = FakeConsul()
    consul_port = await nursery.start(consul.serve)
    port = free_port()
    extra = f"  registration: {{backend: consul, address: '127.0.0.1:{consul_port}', service: gw, id: gw-1}}"
    async with gateway_run(tmp_path, _config(port, backend.port, extra), port) as proc:
        with trio.fail_after(3):
            while "gw-1" not in consul.services:
                await trio.sleep(0.05)
        kinds = [c["Type"] for c in consul.checks.values() if c["ServiceID"] == "gw-1"]
        assert kinds == ["ttl"], f"no status server answers an HTTP check here: {kinds}"
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(4):
            assert await proc.wait() == 0
    assert "gw-1" not in consul.services


async def test_run_refuses_an_explicit_status_listen(nursery, tmp_path):
    """`gateway run` serves no status server: a config that sets gateway.status_listen is refused at start (exit 2)
    naming the key and `gateway start`, rather than accepted and never listened on (Kong's status_listen, which
    kong/templates/nginx_kong.lua always serves)."""
    port, status_port = free_port(), free_port()
    text = _config(port, 9).replace("status_listen: null", f'status_listen: "127.0.0.1:{status_port}"')
    (tmp_path / "gw.yml").write_text(text)
    out = await _cli(tmp_path, "run", "--config", str(tmp_path / "gw.yml"))
    assert out.returncode == 2
    assert "gateway.status_listen: `gateway run` serves no status server" in out.stderr.decode()
    assert "gateway start" in out.stderr.decode()


async def test_run_reads_a_json_config_as_json_with_a_surrogate_pair_escape(nursery, tmp_path):
    """A kong.json written by json.dumps (ensure_ascii: an emoji as the escape pair \\ud83d\\ude80) is read as JSON,
    as Kong reads a file ending in json (kong/db/declarative/init.lua:109-112), by `gateway run`'s check of what it
    does not serve too (libyaml refuses the pair: it was a traceback)."""
    backend = EchoBackend("diff-backend")
    await nursery.start(backend.serve)
    port = free_port()
    doc = {"_format_version": "3.0",
           "gateway": {"listen": f"127.0.0.1:{port}", "pid_file": str(tmp_path / "gw.pid")},
           "services": [{"name": "s", "url": f"http://127.0.0.1:{backend.port}", "tags": ["rocket-\U0001F680"],
                         "routes": [{"name": "r", "paths": ["/"]}]}]}
    config = tmp_path / "kong.json"
    config.write_text(json.dumps(doc))
    assert "\\ud83d" in config.read_text()
    log = (tmp_path / "stderr.log").open("wb")
    proc = await trio.lowlevel.open_process(gateway_cmd("run", "--config", str(config)), cwd=tmp_path, env=ENV,
                                            stdout=log, stderr=log)
    try:
        await wait_listening(port, proc, timeout=4)
        with trio.fail_after(3):
            reply = await request(port, "GET", "/")
        assert reply.status == 200
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(3):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        log.close()
        stderr = (tmp_path / "stderr.log").read_text()
        assert "Traceback" not in stderr, stderr[-600:]
