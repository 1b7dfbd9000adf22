"""Every response reaches the client that asked for it, whole or visibly cut: chaos under load with real processes.

A 2-worker gateway (`gateway start`, tests/test_node.py's `node` fixture) in front of echoing backends
(scripts/demo_backend.py answers a request carrying X-Load-Id with a body derived from it: tests/loadgen.py). Every
request has an id of its own and a body of its own size (most small, some 64-300 KB, asking for answers of either
kind); every 200 is compared byte for byte with the answer to THAT request. A 200 that is another request's answer
(`misdelivered`), shorter than the answer (`truncated`) or otherwise different (`corrupt`) is never acceptable;
faults may only cost requests the client sees failing (an error status, a connection cut before the end).

Scenarios, each under load for as long as its faults take and half a second more (2-4 s on an idle host), stopping
by itself: reloads every second; backend targets killed and restarted; clients that abort mid-request or mid-response
and clients that pipeline, mixed into normal load (for LOAD_S); each worker killed with SIGKILL, in turn.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import h11
import pytest
import test_node
import trio
from backends import free_port, stop_process, wait_port
from e2e_helpers import admin_now, becomes_true
from loadgen import (
    INTEGRITY_KINDS,
    MAX_EVENT,
    Ids,
    LoadResult,
    echo_answer,
    load_body,
    read_response,
    request_headers,
    run_load,
    verdict,
)
from test_node import DEMO_BACKEND, gateway_config

from gateway.node.control import RELOAD_TIMEOUT_S

backend, node = test_node.backend, test_node.node  # the fixtures: a demo backend, a 2-worker gateway in front of it

LOAD_S = 3.0  # the load of a scenario without faults of its own to wait for (the aborting and pipelining clients)
TAIL_S = 0.5  # how long the load goes on after a scenario's last fault (a few hundred requests on an idle host)
# What a fault may cost, as the client sees it: an error status, or a connection cut before the response's end.
VISIBLE = {"status 502", "status 503", "status 504", "ConnectionError", "RemoteProtocolError", "BrokenResourceError"}


async def mixed_load(port: int, seconds: float = LOAD_S, clients: int = 4, large: float = 0.25, slow: float = 0.0,
                     paths: tuple[str, ...] = ("/",), during: Callable[[], Awaitable[None]] | None = None,
                     tail: float = TAIL_S) -> LoadResult:
    """On each of `paths`, `clients` clients on kept-alive connections and as many on a new connection per request:
    for `seconds`, or, with `during`, while it runs and `tail` seconds after it is done (so every fault it makes
    happens under load, however long it takes on a busy host); the merged counts."""
    total = LoadResult()
    stop = trio.Event()

    async def load(keepalive: bool, path: str) -> None:
        await run_load(port, concurrency=clients, duration=seconds if during is None else math.inf,
                       keepalive=keepalive, large=large, slow=slow, path=path, stop=stop, result=total)

    async with trio.open_nursery() as nursery:
        for path in paths:
            nursery.start_soon(load, True, path)
            nursery.start_soon(load, False, path)
        if during is not None:
            await during()
            await trio.sleep(tail)
            stop.set()
    return total


def assert_delivered(result: LoadResult, floor: int, allowed: set[str] | None = None) -> None:
    """No integrity failure at all; failures only of the `allowed` kinds (none when None); more than `floor` ok."""
    assert result.misdelivered == 0 and result.truncated == 0 and result.corrupt == 0, result
    if allowed is None:
        assert result.failed == 0, result
    else:
        assert set(result.errors) <= allowed, result
    assert result.ok > floor, result


def report(title: str, **results: object) -> None:
    print(f"\n[{title}] " + "; ".join(f"{k}: {v}" for k, v in results.items()))


def test_the_check_tells_an_answer_of_another_request_or_a_cut_one_from_the_right_one():
    ids = Ids(large=1.0, seed=7)
    (mine, body), (other, other_body) = ids.next(0), ids.next(0)
    answer = echo_answer(mine, body)
    assert len(body) >= 64 << 10 and len(answer) >= 64 << 10
    assert verdict(mine, body, 200, [(b"x-load-id", mine.encode())], answer) is None
    assert verdict(mine, body, 200, [(b"x-load-id", other.encode())], answer) == "misdelivered"
    assert verdict(mine, body, 200, [], echo_answer(other, other_body)) == "misdelivered"
    assert verdict(mine, body, 200, [], answer[:-1000]) == "truncated"
    assert verdict(mine, body, 200, [], answer[:30]) == "truncated"
    assert verdict(mine, body, 200, [], answer[:-3] + b"xyz") == "corrupt"
    assert verdict(mine, body, 502, [], b"") == "status 502"


# ---- a. reloads ----------------------------------------------------------------------------------------------------


RELOADING_S = 3.0  # reloads start in the load's first RELOADING_S (the first two whenever they can)


def test_reload_every_second_under_mixed_load_delivers_every_answer_whole_to_its_client(node):
    assert node.start(workers=2).returncode == 0
    reloads = []

    def reload() -> object:
        """What `gateway reload` asks the root over its admin socket, asked from this process: the CLI's own process
        would cost most of a second of imports, on a host busy with the load (test_node runs the CLI's reload)."""
        reply = admin_now(node, "reload", timeout=RELOAD_TIMEOUT_S)
        assert reply.ok, reply.error
        return reply.result

    async def reload_every_second() -> None:
        """A reload starts every second from half a second in (at once if the previous one took longer), until
        RELOADING_S into the load, and at least two (the load goes on until the last one is done, and TAIL_S more)."""
        began = time.monotonic()
        last = began + RELOADING_S
        while (at := began + 0.5 + len(reloads)) < last and time.monotonic() < last or len(reloads) < 2:
            await trio.sleep(max(0.0, at - time.monotonic()))
            reloads.append(await trio.to_thread.run_sync(reload))

    result = trio.run(lambda: mixed_load(node.port, during=reload_every_second))
    report("reload every second", reloads=len(reloads), load=result)
    # (3 when each takes less than a second, as they do but on a host loaded by other work: what is checked is
    # delivery across each of them, not their pace)
    assert len(reloads) >= 2
    assert node.status()["generation"] == len(reloads) + 1
    assert_delivered(result, floor=200)


# ---- b. backend targets killed and restarted -----------------------------------------------------------------------


class Targets:
    """Echoing backends (scripts/demo_backend.py) as processes, each on its own port; one can be killed (SIGKILL)
    and started again on the same port."""

    def __init__(self, count: int) -> None:
        self.ports = [free_port() for _ in range(count)]
        self.procs: list[subprocess.Popen | None] = [None] * count

    def start(self, i: int) -> None:
        self.procs[i] = subprocess.Popen([sys.executable, str(DEMO_BACKEND), "--port", str(self.ports[i]), "--name",
                                          f"t{i}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        assert proc is not None
        proc.kill()
        proc.wait(5)

    def __enter__(self) -> Targets:
        for i in range(len(self.ports)):
            self.start(i)
        for port in self.ports:
            wait_port(port, timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            if proc is not None:
                stop_process(proc)


def upstream_config(port: int, targets: list[int]) -> str:
    return json.dumps({
        "_format_version": "3.0",
        "gateway": {"listen": f"127.0.0.1:{port}", "status_listen": None, "drain_timeout": 10},
        "upstreams": [{"name": "up", "targets": [{"target": f"127.0.0.1:{p}"} for p in targets]}],
        "services": [{"name": "b", "url": "http://up", "read_timeout": 10000, "connect_timeout": 1000}],
        "routes": [{"name": "all", "service": "b", "paths": ["/"], "strip_path": False}],
    })


def test_backends_killed_and_restarted_mid_load_cost_only_visible_failures(node):
    with Targets(3) as targets:
        node.config.write_text(upstream_config(node.port, targets.ports))
        assert node.start(workers=2).returncode == 0
        kills = []

        async def kill_and_restart() -> None:
            for i in (0, 1, 2, 0):
                await trio.sleep(0.4)  # (each target takes hundreds of requests a second)
                targets.kill(i)
                kills.append(i)
                await trio.sleep(0.3)
                targets.start(i)
                await trio.to_thread.run_sync(wait_port, targets.ports[i], 30)

        result = trio.run(lambda: mixed_load(node.port, large=0.4, slow=0.5, during=kill_and_restart))
    report("backends killed and restarted", kills=len(kills), load=result)
    assert len(kills) == 4
    assert_delivered(result, floor=150, allowed=VISIBLE)


# ---- c. clients that abort, clients that pipeline ------------------------------------------------------------------


PATHS = ("/", "/stream")  # a route with Kong's default request buffering, and one that streams both bodies


def two_routes_config(port: int, backend_port: int, **gateway: object) -> str:
    doc = json.loads(gateway_config(port, backend_port, **gateway))
    doc["routes"].append({"name": "stream", "service": "b", "paths": ["/stream"], "strip_path": False,
                          "request_buffering": False, "response_buffering": False})
    return json.dumps(doc)


def _reset_on_close(stream: trio.SocketStream) -> None:
    """Close with a reset (SO_LINGER 0) rather than a FIN."""
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _wire(conn: h11.Connection, port: int, path: str, load_id: str, body: bytes) -> bytes:
    """A whole request on `conn` (its state moves on)."""
    return conn.send(h11.Request(method="POST", target=path, headers=request_headers(port, body, False, load_id))) + \
        conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())


async def _exchange_first(stream: trio.SocketStream, conn: h11.Connection, port: int, path: str, ids: Ids,
                          index: int, tally: Counter[str]) -> None:
    """A whole checked exchange, so that what follows happens on a kept-alive connection."""
    load_id, body = ids.next(index)
    await stream.send_all(_wire(conn, port, path, load_id, body))
    status, headers, data = await read_response(stream, conn)
    tally[verdict(load_id, body, status, headers, data) or "ok before abort"] += 1
    conn.start_next_cycle()


async def abort_mid_request(port: int, deadline: float, ids: Ids, index: int, tally: Counter[str]) -> None:
    """Send a head announcing a 200 KB body and part of that body, then hang up (FIN or reset, by turns); every
    other time on a kept-alive connection, after a whole exchange on it."""
    n = 0
    while time.monotonic() < deadline:
        n += 1
        path = PATHS[n % 2]
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_EVENT)
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                with trio.fail_after(10):
                    if n % 4 >= 2:
                        await _exchange_first(stream, conn, port, path, ids, index, tally)
                    load_id = ids.next(index)[0]
                    body = load_body(load_id, 200_000, 1000)
                    head = conn.send(h11.Request(method="POST", target=path,
                                                 headers=request_headers(port, body, False, load_id)))
                    await stream.send_all(head + body[:(n % 5) * 30_000])
                    await trio.sleep(0.01 * (n % 3))
                    if n % 2:
                        _reset_on_close(stream)
            tally["aborted mid-request"] += 1
        except (OSError, trio.BrokenResourceError, trio.TooSlowError, h11.ProtocolError, ConnectionError) as e:
            tally[type(e).__name__] += 1
        await trio.sleep(0.005)


async def abort_mid_response(port: int, deadline: float, ids: Ids, index: int, tally: Counter[str]) -> None:
    """Ask for a large answer (sent slowly, at times), read none or part of it, then hang up (FIN or reset, by
    turns); every other time on a kept-alive connection, after a whole exchange on it."""
    n = 0
    while time.monotonic() < deadline:
        n += 1
        path = PATHS[n % 2]
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_EVENT)
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                with trio.fail_after(10):
                    if n % 4 >= 2:
                        await _exchange_first(stream, conn, port, path, ids, index, tally)
                    load_id = ids.next(index)[0]
                    body = load_body(load_id, 500, 280_000 + n, Ids.PACE if n % 3 == 0 else 0.0)
                    await stream.send_all(_wire(conn, port, path, load_id, body))
                    want, got = (n % 3) * 40_000, 0
                    while got < want and (chunk := await stream.receive_some(65536)):
                        got += len(chunk)
                    if n % 8 < 4:
                        _reset_on_close(stream)
            tally["aborted mid-response"] += 1
        except (OSError, trio.BrokenResourceError, trio.TooSlowError, h11.ProtocolError, ConnectionError) as e:
            tally[type(e).__name__] += 1
        await trio.sleep(0.005)


async def pipeline(port: int, deadline: float, ids: Ids, index: int, result: LoadResult, started: float) -> None:
    """On kept-alive connections, pairs of requests written in one send (bodies and answers of any size; the
    answers are read while the pair is sent); both answers are checked, in order."""
    while time.monotonic() < deadline:
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_EVENT)
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                for _ in range(3):
                    if time.monotonic() >= deadline:
                        break
                    pair = [(PATHS[ids.rng.randrange(2)], *ids.next(index)) for _ in range(2)]
                    (path1, id1, body1), (path2, id2, body2) = pair
                    wire = _wire(conn, port, path1, id1, body1) + _wire(h11.Connection(h11.CLIENT), port, path2, id2,
                                                                         body2)  # h11 itself sends one at a time
                    failure: list[BaseException] = []

                    async def send_pair(wire: bytes = wire, stream: trio.SocketStream = stream) -> None:
                        try:
                            await stream.send_all(wire)
                        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                            pass  # the reading side tells

                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(send_pair)
                        try:
                            with trio.fail_after(10):
                                for i, (path, load_id, body) in enumerate(pair):
                                    if i:  # the second one is sent already: only move `conn` on to it
                                        conn.start_next_cycle()
                                        _wire(conn, port, path, load_id, body)
                                    status, headers, data = await read_response(stream, conn)
                                    why = verdict(load_id, body, status, headers, data)
                                    if why is None:
                                        result.ok += 1
                                    else:
                                        result.fail(why, started, f"pipelined request {i + 1} {load_id}"
                                                    if why in INTEGRITY_KINDS else "")
                        except (OSError, ConnectionError, trio.BrokenResourceError, h11.ProtocolError,
                                trio.TooSlowError) as e:
                            failure.append(e)
                            nursery.cancel_scope.cancel()
                    if failure:
                        raise failure[0]
                    conn.start_next_cycle()
        except (OSError, ConnectionError, trio.BrokenResourceError, h11.ProtocolError, trio.TooSlowError) as e:
            result.fail(type(e).__name__, started)
        await trio.sleep(0.005)


@pytest.mark.parametrize("codec", ["llhttp", "h11"])
def test_aborting_and_pipelining_clients_get_no_other_clients_answers(node, backend, codec):
    node.config.write_text(two_routes_config(node.port, backend, http_codec=codec))
    assert node.start(workers=2).returncode == 0
    tally: Counter[str] = Counter()
    pipelined = LoadResult()

    async def abusers() -> None:
        started = time.monotonic()
        deadline = started + LOAD_S
        ids = Ids(large=0.25)
        async with trio.open_nursery() as nursery:
            for i in range(2):
                nursery.start_soon(abort_mid_request, node.port, deadline, ids, 100 + i, tally)
                nursery.start_soon(abort_mid_response, node.port, deadline, ids, 200 + i, tally)
                nursery.start_soon(pipeline, node.port, deadline, ids, 300 + i, pipelined, started)

    result = trio.run(lambda: mixed_load(node.port, clients=2, paths=PATHS, during=abusers, tail=0.0))  # (LOAD_S)
    report(f"aborting and pipelining clients, {codec}", normal=result, pipelined=pipelined, abusers=dict(tally))
    assert tally["aborted mid-request"] > 20 and tally["aborted mid-response"] > 20, tally
    assert tally["misdelivered"] == tally["truncated"] == tally["corrupt"] == 0, tally
    assert_delivered(result, floor=150)
    assert_delivered(pipelined, floor=50)


# ---- d. a worker killed --------------------------------------------------------------------------------------------


def test_a_worker_killed_with_sigkill_under_load_cuts_answers_visibly_never_misdelivers(node):
    assert node.start(workers=2).returncode == 0
    clients = 4
    killed = []

    async def kill_each_worker() -> None:
        for _ in range(2):
            await trio.sleep(1.0)  # (a replaced worker is back within milliseconds: test_node)
            pids = await trio.to_thread.run_sync(node.worker_pids)
            victim = pids[len(killed) % len(pids)]
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)

    result = trio.run(lambda: mixed_load(node.port, clients=clients, large=0.3, slow=0.3, during=kill_each_worker))
    report("worker killed", kills=len(killed), load=result)
    assert len(killed) == 2
    assert becomes_true(lambda: not set(killed) & set(node.worker_pids()), timeout=10), \
        f"killed workers still in the tree: {killed}, {node.worker_pids()}"  # both replaced
    assert_delivered(result, floor=200, allowed=VISIBLE)
    # a kill can cost each client (2 * clients: kept-alive and new-connection ones) at most the request it had on the
    # killed worker
    assert result.failed <= len(killed) * 2 * clients, result
