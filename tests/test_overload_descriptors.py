"""Out of descriptors (issue 19 part 3): a failed socket() for an upstream connection is the gateway's own failure
(nginx's 500, never the target's), and idle pooled upstream connections never hold the descriptor an accepted
client's upstream connection needs."""

from __future__ import annotations

import errno
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
from functools import partial

import pytest
import trio
from backends import free_port, service, stop_process, upstream, wait_port
from e2e_helpers import Backend, HttpConn
from e2e_helpers import request as http_request

from gateway.http import pool as pool_module
from gateway.http.codec_llhttp import LlhttpClient
from gateway.http.errors import ConnectError, LocalError
from gateway.http.net import NoSocket, open_connection
from gateway.http.pool import Pool

TIMEOUT = 15


def _prlimit() -> str:
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        pytest.skip("prlimit (util-linux) is not installed")
    return prlimit


async def _hold(stream: trio.SocketStream) -> None:
    await trio.sleep_forever()


async def _listener(nursery: trio.Nursery) -> int:
    """A server on 127.0.0.1 that accepts connections and holds them open; its port."""
    listeners = await nursery.start(partial(trio.serve_tcp, _hold, 0, host="127.0.0.1"))
    return listeners[0].socket.getsockname()[1]


def _without_sockets(monkeypatch: pytest.MonkeyPatch, fails: int | None = None) -> list[int]:
    """Make the pool's socket() fail with EMFILE (its first `fails` calls; without, every call); returns the ports
    of the calls as they are made."""
    calls: list[int] = []
    real = pool_module.open_connection

    async def opening(host: str, port: int) -> object:
        calls.append(port)
        if fails is None or len(calls) <= fails:
            raise NoSocket(errno.EMFILE, os.strerror(errno.EMFILE))
        return await real(host, port)

    monkeypatch.setattr(pool_module, "open_connection", opening)
    return calls


async def test_a_socket_the_process_has_no_descriptor_for_is_no_socket(nursery):
    """nginx, src/event/ngx_event_connect.c: `s = ngx_socket(...); if (s == (ngx_socket_t) -1) { ... return
    NGX_ERROR; }`, apart from a failed connect() (NGX_DECLINED, the peer's). Out of descriptors (EMFILE, here a real
    one under a lowered RLIMIT_NOFILE), open_connection says NoSocket, not a connect failure."""
    port = await _listener(nursery)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (3, hard))  # stdin, stdout and stderr: no descriptor left
    try:
        with pytest.raises(NoSocket) as failed:
            await open_connection("127.0.0.1", port)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert failed.value.errno == errno.EMFILE


async def test_out_of_sockets_with_none_idle_the_connect_is_the_gateways_own_500(nursery, monkeypatch):
    """nginx, ngx_http_upstream_connect: `if (rc == NGX_ERROR) { ngx_http_upstream_finalize_request(r, u,
    NGX_HTTP_INTERNAL_SERVER_ERROR); return; }`: a LocalError (500), not a ConnectError (the target's, retried)."""
    port = await _listener(nursery)
    _without_sockets(monkeypatch)
    with pytest.raises(LocalError) as failed:
        await Pool(LlhttpClient).connect(("127.0.0.1", port), 5)
    assert failed.value.status == 500 and not isinstance(failed.value, ConnectError)


async def test_out_of_sockets_an_idle_connection_gives_its_descriptor_to_the_new_one(nursery, monkeypatch):
    """nginx, src/core/ngx_connection.c ngx_get_connection -> ngx_drain_connections: out of connections, reusable
    idle ones are closed for the new one. Here socket() failing with EMFILE closes an idle pooled connection (of
    another target) and the connect is made on the descriptor it gave back."""
    idle_port, port = await _listener(nursery), await _listener(nursery)
    pool = Pool(LlhttpClient)
    idle = await pool.connect(("127.0.0.1", idle_port), 5)
    pool.put(idle, 0.0)
    calls = _without_sockets(monkeypatch, fails=1)
    fresh = await pool.connect(("127.0.0.1", port), 5)
    assert calls == [port, port] and idle.conn.closed and not fresh.conn.closed
    assert pool.idle_count() == 0


async def test_a_burst_of_failed_sockets_is_one_error_line_naming_the_descriptor_limit(nursery, monkeypatch,
                                                                                       caplog):
    """nginx logs a failed socket() at alert level (`ngx_log_error(NGX_LOG_ALERT, ..., ngx_socket_n " failed")`)
    and its "worker_connections are not enough" once a second (ngx_drain_connections' connections_reuse_time). Here
    a burst of upstream connects without a socket is one error line, naming the limit an operator would raise."""
    port = await _listener(nursery)
    _without_sockets(monkeypatch)
    pool = Pool(LlhttpClient)
    with caplog.at_level(logging.ERROR, logger="gateway.pool"):
        for _ in range(3):
            with pytest.raises(LocalError):
                await pool.connect(("127.0.0.1", port), 5)
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.pool"]
    assert len(lines) == 1, lines
    assert "RLIMIT_NOFILE" in lines[0] and str(resource.getrlimit(resource.RLIMIT_NOFILE)[0]) in lines[0]


async def test_a_connection_past_the_budget_closes_the_least_recently_used_idle_one(nursery):
    """gateway/http/limits.py: "each proxied connection needs two descriptors (client and upstream)": the pool's
    connections, idle ones of all targets included, stay within the upstream half. A new connection past it closes
    the idle connection unused the longest (nginx's ngx_drain_connections: the reusable queue's last), whatever its
    target."""
    ports = [await _listener(nursery) for _ in range(3)]
    pool = Pool(LlhttpClient, max_open=2)
    oldest = await pool.connect(("127.0.0.1", ports[0]), 5)
    newer = await pool.connect(("127.0.0.1", ports[1]), 5)
    pool.put(oldest, 1.0)
    pool.put(newer, 2.0)
    await pool.connect(("127.0.0.1", ports[2]), 5)
    assert oldest.conn.closed and not newer.conn.closed
    assert pool.idle_count() == 1 and pool.idle_count(newer.key) == 1


async def test_connections_carrying_requests_are_never_closed_for_the_budget(nursery):
    """Only idle connections give way (nginx drains reusable connections only): past the budget with none idle, the
    new connection is made and the busy ones go on."""
    port = await _listener(nursery)
    pool = Pool(LlhttpClient, max_open=1)
    busy = await pool.connect(("127.0.0.1", port), 5)
    other = await pool.connect(("127.0.0.1", port), 5)
    assert not busy.conn.closed and not other.conn.closed


async def test_a_connect_without_a_socket_is_answered_500_and_no_other_target_is_tried(gateway, nursery,
                                                                                       monkeypatch):
    """ngx_http_upstream_connect: NGX_ERROR finalizes the request with 500 (Kong's error handler: "An unexpected
    error occurred"), with no ngx_http_upstream_next: the other target of the upstream is not tried."""
    backends = [Backend("b0"), Backend("b1")]
    for backend in backends:
        await nursery.start(backend.serve)
    port = await gateway({"upstreams": [upstream("u", [b.port for b in backends])],
                          "services": [service("s", "http://u", retries=5)]})
    calls = _without_sockets(monkeypatch)
    reply = await http_request(port, "GET", "/x", timeout=TIMEOUT)
    assert reply.status == 500
    assert b"An unexpected error occurred" in reply.body
    assert len(calls) == 1 and sum(b.hits for b in backends) == 0


async def test_a_connect_without_a_socket_is_no_failure_of_the_target_for_passive_checks(gateway, nursery,
                                                                                        monkeypatch):
    """ngx_http_upstream_connect answers NGX_ERROR without ngx_http_upstream_next(..., NGX_HTTP_UPSTREAM_FT_ERROR):
    the peer is not marked failed. With tcp_failures: 1, one connect without a socket took the healthy target out
    (every request then 503 "failure to get a peer"): it is reported nowhere."""
    backend = Backend("b")
    await nursery.start(backend.serve)
    port = await gateway({"upstreams": [upstream("u", [backend.port],
                                                 healthchecks={"passive": {"unhealthy": {"tcp_failures": 1}}})],
                          "services": [service("s", "http://u")]})
    _without_sockets(monkeypatch)
    assert (await http_request(port, "GET", "/x", timeout=TIMEOUT)).status == 500
    monkeypatch.undo()
    await trio.sleep(0.3)  # (a report would have reached the health state by now)
    reply = await http_request(port, "GET", "/x", timeout=TIMEOUT)
    assert reply.status == 200, f"{reply.status} {reply.body[:100]!r}"


async def test_a_connect_without_a_socket_is_no_failure_for_the_circuit_breaker(gateway, nursery, monkeypatch):
    """As for passive checks: the gateway's own EMFILE is no outcome of the target's, so failure_threshold
    connects without a socket do not open its circuit."""
    backend = Backend("b")
    await nursery.start(backend.serve)
    port = await gateway({"upstreams": [upstream("u", [backend.port])],
                          "services": [service("s", "http://u")],
                          "plugins": [{"name": "circuit-breaker", "service": "s",
                                       "config": {"failure_threshold": 2}}]})
    _without_sockets(monkeypatch)
    for _ in range(3):
        assert (await http_request(port, "GET", "/x", timeout=TIMEOUT)).status == 500
    monkeypatch.undo()
    await trio.sleep(0.3)  # (outcomes would have reached the breaker by now)
    reply = await http_request(port, "GET", "/x", timeout=TIMEOUT)
    assert reply.status == 200, f"{reply.status} {reply.body[:100]!r}"


async def test_the_gateways_own_emfile_is_a_500_that_leaves_a_healthy_target_healthy(tmp_path):
    """nginx, src/event/ngx_event_connect.c: `s = ngx_socket(...); if (s == (ngx_socket_t) -1) { ngx_log_error(
    NGX_LOG_ALERT, ...); return NGX_ERROR; }`, and ngx_http_upstream_connect: `if (rc == NGX_ERROR) {
    ngx_http_upstream_finalize_request(r, u, NGX_HTTP_INTERNAL_SERVER_ERROR); return; }`: no socket for the upstream
    is the proxy's own failure (500), never the peer's. A worker really out of descriptors (64, max_connections far
    beyond) answers its accepted client 500, and once the descriptors are back the target (tcp_failures: 1) serves."""
    prlimit = _prlimit()
    backend = Backend("b")
    async with trio.open_nursery() as nursery:
        await nursery.start(backend.serve)
        port = free_port()
        config = tmp_path / "gateway.json"
        config.write_text(json.dumps({  # as tests/test_overload.py's: 64 descriptors, EMFILE before max_connections
            "gateway": {"listen": f"127.0.0.1:{port}", "status_listen": None, "max_connections": 10000,
                        "header_timeout_s": 120},
            "upstreams": [upstream("u", [backend.port],
                                   healthchecks={"passive": {"unhealthy": {"tcp_failures": 1}}})],
            "services": [service("s", "http://u")]}))
        proc = subprocess.Popen([prlimit, "--nofile=64:64", sys.executable, "-m", "gateway", "run", "--config",
                                 str(config)], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        held: list[HttpConn] = []
        try:
            await trio.to_thread.run_sync(wait_port, port, 30.0)
            with trio.fail_after(TIMEOUT):
                first = await HttpConn.open(port)  # accepted while descriptors remain
                held.append(first)
                for _ in range(70):  # then more than the worker has descriptors for (the rest are shed)
                    held.append(await HttpConn.open(port))
                    await trio.sleep(0.005)
                await trio.sleep(0.3)
                assert (await first.request("GET", "/x", timeout=5)).status == 500
                for conn in held:
                    await conn.aclose()
                held.clear()
                await trio.sleep(0.5)  # the descriptors are back
                reply = await http_request(port, "GET", "/x")
            assert reply.status == 200, f"{reply.status} {reply.body[:100]!r}: the target was blamed for EMFILE"
        finally:
            for conn in held:
                await conn.aclose()
            stop_process(proc)
            nursery.cancel_scope.cancel()


async def test_idle_upstream_connections_leave_descriptors_for_an_accepted_clients_upstream(tmp_path):
    """README (max_connections): "Not set: (the descriptor limit - 256) / 2"; gateway/http/limits.py: "each proxied
    connection needs two descriptors (client and upstream), and RESERVED_FDS stay free"; issue 19 part 3: an
    accepted client can always be served. The idle pool (upstream_keepalive: 512 per target) stays within the
    upstream half: with 300 descriptors (22 clients), 20 clients at a time reaching one service after another are
    all served, where idle connections left behind used to exhaust the descriptors (502s and shed 503s)."""
    prlimit = _prlimit()
    rounds, per_round = 16, 20  # 20 clients at a time, under the derived 22
    backends = [Backend(f"b{i}") for i in range(rounds)]
    async with trio.open_nursery() as nursery:
        for backend in backends:
            await nursery.start(backend.serve)
        port = free_port()
        config = tmp_path / "gateway.json"
        config.write_text(json.dumps({
            "gateway": {"listen": f"127.0.0.1:{port}", "status_listen": None},  # max_connections derived
            "services": [service(f"s{i}", f"http://127.0.0.1:{b.port}", [{"paths": [f"/{i}"]}])
                         for i, b in enumerate(backends)]}))
        proc = subprocess.Popen([prlimit, "--nofile=300:300", sys.executable, "-m", "gateway", "run", "--config",
                                 str(config)], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        statuses: list[int] = []
        try:
            await trio.to_thread.run_sync(wait_port, port, 30.0)

            async def one(i: int) -> None:
                try:
                    statuses.append((await http_request(port, "GET", f"/{i}/hold", timeout=10)).status)
                except (ConnectionError, trio.BrokenResourceError):
                    statuses.append(0)

            with trio.fail_after(30):
                for i in range(rounds):  # one service after another, per_round clients at once
                    answered = len(statuses)
                    async with trio.open_nursery() as clients:
                        for _ in range(per_round):
                            clients.start_soon(one, i)
                        # every request of the round is held upstream at once (or answered: a failure), on
                        # per_round upstream connections, then all are let go: they all go idle in the pool
                        while backends[i].in_flight + len(statuses) - answered < per_round:
                            await trio.sleep(0.01)
                        backends[i].gate.set()
                    await trio.sleep(0.1)
        finally:
            stop_process(proc)
            nursery.cancel_scope.cancel()
    answered = {status: statuses.count(status) for status in set(statuses)}
    assert answered == {200: rounds * per_round}, f"{answered}: EMFILE under the derived limit"
