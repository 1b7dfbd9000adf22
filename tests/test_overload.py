"""Overload (issue 19): a worker at its connection limit answers a fast 503 and closes, never leaving a client in its
accept queue; out of file descriptors it drains the queue the same way instead of spinning on EMFILE; the other
worker of the gateway serves normally meanwhile."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys

import pytest
import trio
from backends import EchoBackend, free_port, parse_raw_response, raw_exchange, request, service, stop_process, wait_port
from conftest import _run_gateway, build_config
from e2e_helpers import Backend, GatewayNode, HttpConn, owners
from e2e_helpers import request as http_request

from gateway.http.dates import parse_http_time
from gateway.http.limits import RESERVED_FDS, derived_max_connections, raise_nofile_limit
from gateway.http.net import bind_listener

TIMEOUT = 10


async def http_get(port: int, path: str) -> bytes:
    return (await http_request(port, "GET", path)).body


async def test_beyond_max_connections_a_new_connection_gets_a_fast_503(gateway, nursery):
    echo = EchoBackend()
    await nursery.start(echo.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}")]}, max_connections=3)
    held = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(3)]
    for stream in held:  # a request under way on each: none is reusable (tests/test_overload_reuse.py)
        await stream.send_all(b"GET /x HTTP/1.1\r\n")
    await trio.sleep(0.1)  # the worker has accepted them
    started = trio.current_time()
    data, _ = await raw_exchange(port, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n", timeout=TIMEOUT)
    status, headers, body = parse_raw_response(data)
    assert status == 503 and headers["connection"] == "close" and headers["retry-after"] == "1"
    assert parse_http_time(headers["date"].encode()) is not None
    assert "connection limit" in json.loads(body)["message"]
    took = trio.current_time() - started
    # (milliseconds, a few seconds on a busy host; a connection left to wait for a free slot waits for ever, here
    # until raw_exchange gives up at TIMEOUT)
    assert took < TIMEOUT / 2, f"the 503 took {took:.1f}s"
    await held.pop().aclose()
    await trio.sleep(0.1)
    assert (await request(port, "GET", "/x")).status == 200  # room again
    for stream in held:
        await stream.aclose()


def _devnull_fds() -> int:
    fds = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            fds.append(os.readlink(f"/proc/self/fd/{fd}"))
    return fds.count(os.devnull)


async def test_a_worker_that_stops_gives_its_spare_descriptor_back(http_codec):
    """The spare descriptor kept for refusing connections out of descriptors is closed when the worker stops (tests
    run many workers in one process: each left one open before)."""
    before = _devnull_fds()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            listener = bind_listener("127.0.0.1", 0, reuse_port=False)
            await nursery.start(_run_gateway, build_config({"services": []}, http_codec), [listener])
            assert _devnull_fds() == before + 1
            nursery.cancel_scope.cancel()
    assert _devnull_fds() == before


def test_the_descriptor_limit_is_raised_and_max_connections_derived_from_it():
    nofile = raise_nofile_limit()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert soft == nofile and (soft == hard or hard == resource.RLIM_INFINITY)
    assert derived_max_connections(20000) == (20000 - RESERVED_FDS) // 2


def _in_subprocess(code: str) -> subprocess.CompletedProcess:
    """Limits set in a process of its own (the test process keeps its own)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)


def test_worker_rlimit_nofile_sets_the_soft_and_the_hard_limit_as_nginx_does():
    done = _in_subprocess("import resource; from gateway.http.limits import raise_nofile_limit; "
                          "n = raise_nofile_limit(4096); print(n, *resource.getrlimit(resource.RLIMIT_NOFILE))")
    assert done.stdout.split() == ["4096", "4096", "4096"]


def test_a_worker_rlimit_nofile_that_cannot_be_set_is_logged_and_the_hard_limit_used():
    with open("/proc/sys/fs/nr_open") as f:
        beyond = int(f.read()) + 1  # more than the kernel allows anyone
    done = _in_subprocess(f"import logging, resource; logging.basicConfig(); "
                          f"from gateway.http.limits import raise_nofile_limit; "
                          f"print(raise_nofile_limit({beyond}), resource.getrlimit(resource.RLIMIT_NOFILE)[1])")
    used, hard = done.stdout.split()
    assert used == hard
    assert f"gateway.worker_rlimit_nofile: cannot set this worker's descriptor limit to {beyond}" in done.stderr


@pytest.mark.parametrize("max_connections", [None, 100])
async def test_worker_rlimit_nofile_is_the_limit_of_a_running_worker(tmp_path, max_connections):
    """Started under a soft limit of 1,024 (the hard one 8,192), the worker runs with 6,000 for both, as configured
    (whether max_connections is set or derived from it)."""
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        pytest.skip("prlimit (util-linux) is not installed")
    port = free_port()
    config = tmp_path / "gateway.json"
    config.write_text(json.dumps({"gateway": {"listen": f"127.0.0.1:{port}", "status_listen": None,
                                              "worker_rlimit_nofile": 6000, "max_connections": max_connections},
                                  "services": []}))
    proc = subprocess.Popen([prlimit, "--nofile=1024:8192", sys.executable, "-m", "gateway", "run", "--config",
                             str(config)], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        await trio.to_thread.run_sync(wait_port, port, 30.0)  # bound: the worker may not be serving yet
        assert (await http_request(port, "GET", "/x")).status == 404  # served: it set its limit before that
        with open(f"/proc/{proc.pid}/limits") as f:
            [line] = [line for line in f if line.startswith("Max open files")]
        assert line.split()[3:5] == ["6000", "6000"]
    finally:
        stop_process(proc)


async def test_a_full_worker_sheds_while_the_other_worker_serves(tmp_path):
    backend = Backend("b")
    async with trio.open_nursery() as nursery:
        await nursery.start(backend.serve)
        node = GatewayNode(tmp_path, {"services": [service("s", f"http://127.0.0.1:{backend.port}")]},
                           max_connections=4)
        try:
            await node.start(workers=2)
            workers = await node.worker_pids()
            full, other = workers[0], workers[1]
            held: list[HttpConn] = []
            with trio.fail_after(30):
                while len(held) < 4:  # keep the connections the kernel gives the first worker, until it is full
                    conn = await HttpConn.open(node.port)
                    assert (await conn.request("GET", "/x")).status == 200
                    owner = owners(workers, local_port=node.port).get((node.port, conn.local_port))
                    if owner == full:  # with a request under way: not reusable (tests/test_overload_reuse.py)
                        await conn.stream.send_all(b"GET /x HTTP/1.1\r\n")
                        held.append(conn)
                    else:
                        await conn.aclose()
                shed = served = 0
                while not (shed and served) or shed + served < 20:
                    conn = await HttpConn.open(node.port)
                    try:
                        reply = await conn.request("GET", "/x", timeout=5)
                        if reply.status == 200:  # served: by the other worker, whose connection it still is
                            assert owners(workers, local_port=node.port)[(node.port, conn.local_port)] == other
                            served += 1
                        else:
                            assert reply.status == 503 and reply.headers["connection"] == "close"
                            shed += 1
                    finally:
                        await conn.aclose()
                text = await _metrics_once_counted(node.status_port, 'gateway_connections_shed_total{reason='
                                                   '"max_connections"}', shed)  # the workers' flushes reach it
            assert f'gateway_connections_shed_total{{reason="max_connections"}} {float(shed)}' in text
        finally:
            node.cleanup()
            nursery.cancel_scope.cancel()


async def _metrics_once_counted(status_port: int, sample: str, count: float, timeout: float = 10.0) -> str:
    """/metrics as soon as `sample` has reached `count` (the workers flush their counts every second), or once
    `timeout` has run out: the caller checks the value."""
    deadline = trio.current_time() + timeout
    while True:
        text = (await http_get(status_port, "/metrics")).decode()
        values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(sample + " ")]
        if (values and values[0] >= count) or trio.current_time() > deadline:
            return text
        await trio.sleep(0.1)


async def test_out_of_descriptors_a_worker_refuses_with_503_instead_of_spinning(tmp_path):
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        pytest.skip("prlimit (util-linux) is not installed")
    backend = Backend("b")
    async with trio.open_nursery() as nursery:
        await nursery.start(backend.serve)
        port = free_port()
        config = tmp_path / "gateway.json"
        config.write_text(json.dumps({  # max_connections far above what 64 descriptors allow: EMFILE comes first
            "gateway": {"listen": f"127.0.0.1:{port}", "status_listen": None, "max_connections": 10000,
                        "header_timeout_s": 120},  # the idle connections held must outlive the test
            "services": [service("s", f"http://127.0.0.1:{backend.port}")]}))
        proc = subprocess.Popen([prlimit, "--nofile=64:64", sys.executable, "-m", "gateway", "run", "--config",
                                 str(config)], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        held: list[trio.SocketStream] = []
        try:
            await trio.to_thread.run_sync(wait_port, port, 30.0)
            answers: list[bytes] = []

            async def listen(stream: trio.SocketStream) -> None:
                data = b""
                with trio.move_on_after(0.5):  # a shed connection hears at once; an accepted one hears nothing
                    while chunk := await stream.receive_some(65536):
                        data += chunk
                answers.append(data)

            with trio.fail_after(60):
                async with trio.open_nursery() as listening:
                    for _ in range(80):
                        stream = await trio.open_tcp_stream("127.0.0.1", port)
                        held.append(stream)
                        listening.start_soon(listen, stream)
                        await trio.sleep(0.005)
                refused = sum(1 for data in answers if data)
                idle = len(answers) - refused
                assert all(parse_raw_response(data)[0] == 503 for data in answers if data)
                cpu_before = _cpu_ticks(proc.pid)
                await trio.sleep(1.0)
                spinning = _cpu_ticks(proc.pid) - cpu_before
                for stream in held:
                    await stream.aclose()
                held.clear()
                await trio.sleep(0.3)
                reply = await http_request(port, "GET", "/x")
            assert refused >= 10 and idle >= 10, (refused, idle)
            assert spinning < 20  # clock ticks in a second of holding: not looping on EMFILE
            assert reply.status == 200  # serving again once descriptors are back
            assert proc.poll() is None
        finally:
            for stream in held:
                await stream.aclose()
            stop_process(proc)
            nursery.cancel_scope.cancel()


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])
