"""nginx's stub status counters as the gateway keeps them across its workers (Kong's kong_nginx_requests_total,
kong_nginx_connections_total, /status "server"; kong/plugins/prometheus/exporter.lua:452-458, nginx release-1.27.1):
a request counts as its first bytes come, a connection that has sent nothing yet is waiting, and the metric files
of processes that have exited are folded by the root as they exit, whether or not anything scrapes.

The connection loop runs on one end of a socket pair (gateway.http.server.handle_connection); the files of exited
processes are written by short-lived writer processes; one test starts a gateway, for the files a reload leaves."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from backends import EchoBackend, request
from e2e_helpers import node_factory, wait_for

from gateway.config import parse_config
from gateway.http.codecs import codec_classes
from gateway.http.net import Conn
from gateway.http.server import ConnectionSet, Exchange, ServerSettings, handle_connection, serve_listener
from gateway.http.timers import ConnTimer, Phase
from gateway.metrics import CONNECTIONS, REQUESTS_STARTED, read_families
from gateway.node import root
from gateway.status.collect import gateway_registry
from gateway.telemetry.service import WorkerTelemetry

TIMEOUT = 5
HEAD = b"GET /a HTTP/1.1\r\nHost: gw.test\r\n\r\n"


# --- requests: counted as their first bytes come (ngx_http_create_request) --------------------------------------------


class Loop:
    """The connection loop on one end of a socket pair; `client` is the other end. Its handler answers 200 once
    `release` is set (at once by default), and notes each request it gets in `handled`."""

    def __init__(self, nursery: trio.Nursery, hold: bool = False) -> None:
        self.settings = ServerSettings(codec_classes("llhttp")[0])
        self.settings.log_refused = lambda exchange: None
        self.handled: list[bytes] = []
        self.release = trio.Event()
        if not hold:
            self.release.set()
        self.done = trio.Event()
        ours, theirs = socket.socketpair()
        self.client = trio.socket.from_stdlib_socket(theirs)
        nursery.start_soon(self.settings.connections.timers.expire_forever)
        nursery.start_soon(self._run, Conn(ours))

    async def _handler(self, ex: Exchange) -> None:
        self.handled.append(ex.request.target)
        await self.release.wait()
        await ex.respond(200, b"ok", b"text/plain")

    async def _run(self, conn: Conn) -> None:
        try:
            await handle_connection(conn, self._handler, self.settings)
        finally:
            conn.close()
            self.done.set()

    @property
    def requests(self) -> int:
        return self.settings.connections.requests

    def phase(self) -> Phase | None:
        """The connection's phase (None before the loop has begun)."""
        timer = next(iter(self.settings.connections.timers.live), None)
        return timer.phase if timer is not None else None

    async def until_closed(self) -> bytes:
        received = b""
        with trio.fail_after(TIMEOUT):
            while chunk := await self.client.recv(65536):
                received += chunk
            await self.done.wait()
        return received


async def test_a_request_counts_as_its_first_bytes_come(nursery: trio.Nursery) -> None:
    """nginx creates the request, and counts it, when the connection's first bytes arrive, before its head is whole
    (src/http/ngx_http_request.c:514-516 ngx_http_wait_request_handler -> ngx_http_create_request, :552
    `ngx_atomic_fetch_add(ngx_stat_requests, 1)`)."""
    loop = Loop(nursery)
    with loop.client:
        await loop.client.send(b"GET /a HTTP/1.1\r\n")  # the rest of the head never comes
        await wait_for(lambda: loop.phase() == Phase.HEAD, TIMEOUT, what="the first bytes read")
        assert (loop.requests, loop.handled) == (1, [])


async def test_a_request_in_progress_is_counted(nursery: trio.Nursery) -> None:
    """ngx_stat_requests is counted as the request is created (ngx_http_request.c:552), not as it ends: a request
    whose answer is still on its way (a long stream, a slow upstream) is in kong_nginx_requests_total already."""
    loop = Loop(nursery, hold=True)
    with loop.client:
        await loop.client.send(HEAD)
        await wait_for(lambda: loop.handled, TIMEOUT, what="the handler running")
        assert loop.requests == 1


async def test_each_request_of_a_kept_alive_connection_counts_once(nursery: trio.Nursery) -> None:
    """A kept-alive connection's next request is created as its bytes come (ngx_http_keepalive_handler, :3427-3429),
    and one already in the buffer at once (ngx_http_set_keepalive's pipelined request): each counts once, whole or
    in pieces."""
    loop = Loop(nursery)
    with loop.client:
        await loop.client.send(HEAD)
        await wait_for(lambda: len(loop.handled) == 1, TIMEOUT, what="the first request")
        await loop.client.send(HEAD + HEAD)  # the second whole, a third pipelined behind it
        await wait_for(lambda: len(loop.handled) == 3, TIMEOUT, what="the pipelined requests")
        await loop.client.send(b"GET /a HTTP/1.1\r\n")  # a fourth in pieces
        await wait_for(lambda: loop.requests == 4, TIMEOUT, what="the fourth request's first bytes")
        await loop.client.send(b"Host: gw.test\r\n\r\n")
        await wait_for(lambda: len(loop.handled) == 4, TIMEOUT, what="the fourth request")
        assert loop.requests == 4


async def test_a_connection_closed_before_its_first_byte_begins_no_request(nursery: trio.Nursery) -> None:
    """nginx closes a connection whose first read is its end without creating a request (ngx_http_wait_request_handler:
    `if (n == 0) { ... ngx_http_close_connection(c)`), and a kept-alive one likewise (ngx_http_keepalive_handler)."""
    silent, kept = Loop(nursery), Loop(nursery)
    silent.client.close()
    await kept.client.send(HEAD)
    await wait_for(lambda: kept.handled, TIMEOUT, what="the request")
    kept.client.shutdown(socket.SHUT_WR)
    assert (await kept.until_closed()).startswith(b"HTTP/1.1 200")
    kept.client.close()
    with trio.fail_after(TIMEOUT):
        await silent.done.wait()
    assert (silent.requests, kept.requests) == (0, 1)


async def test_a_refused_head_counts_as_a_request(nursery: trio.Nursery) -> None:
    """A head nginx refuses (400) was a request, created and counted at its first bytes (ngx_http_request.c:552),
    whether it came in pieces or whole (here after a kept-alive connection's first request)."""
    bad = b"GET /a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"  # two Hosts: 400
    pieces, kept = Loop(nursery), Loop(nursery)
    await pieces.client.send(bad[:20])
    await wait_for(lambda: pieces.phase() == Phase.HEAD, TIMEOUT, what="the first bytes read")
    await pieces.client.send(bad[20:])
    await kept.client.send(HEAD)
    await wait_for(lambda: kept.handled, TIMEOUT, what="the first request")
    await kept.client.send(bad)
    for loop in (pieces, kept):
        with loop.client:
            assert b"HTTP/1.1 400" in await loop.until_closed()
    assert (pieces.requests, kept.requests, pieces.handled, len(kept.handled)) == (1, 2, [], 1)


# --- the worker's sample: connections by state, requests begun --------------------------------------------------------


def _telemetry(connections: ConnectionSet) -> WorkerTelemetry:
    return WorkerTelemetry(parse_config('_format_version: "3.0"\ngateway: {access_log: false}\n'), connections)


async def test_a_connection_that_has_sent_nothing_yet_is_waiting_not_reading() -> None:
    """nginx puts an accepted connection in the reusable queue until its first byte (ngx_http_request.c:356
    ngx_http_init_connection: `ngx_reusable_connection(c, 1)`, counted in ngx_stat_waiting at
    src/core/ngx_connection.c:1366), and counts reading only from ngx_http_create_request (ngx_http_request.c:550).
    Kong exports them as kong_nginx_connections_total{state="waiting"|"reading"} (exporter.lua:454, 456)."""
    connections = ConnectionSet()
    for phase in (Phase.NEW, Phase.NEW, Phase.HEAD, Phase.IDLE, Phase.UPSTREAM_READ):
        connections.opened()
        connections.timers.add(ConnTimer(math.inf, phase))
    _telemetry(connections).sample()
    states = {state: CONNECTIONS.labels(state)._value.get() for state in ("active", "reading", "writing", "waiting")}
    assert states == {"active": 5, "reading": 1, "writing": 1, "waiting": 3}


async def test_connections_waiting_for_their_proxy_header_are_waiting_not_writing(nursery: trio.Nursery) -> None:
    """A connection waiting for its PROXY header is reusable in nginx from its accept (ngx_http_request.c:356,
    ngx_http_init_connection: `ngx_reusable_connection(c, 1)`), counted waiting (src/core/ngx_connection.c:1366);
    it has no request, so it is neither reading nor writing. The gateway's loop had no timer for it yet and the
    sample counted it active - reading - waiting: writing, "a request in progress"."""
    settings = ServerSettings(codec_classes("llhttp")[0])
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    await nursery.start(serve_listener, listener, lambda ex: ex.respond(200, b"ok"), settings, None, True)
    clients = [await trio.open_tcp_stream("127.0.0.1", listener.getsockname()[1]) for _ in range(3)]
    try:
        await clients[0].send_all(b"PROXY TCP4 ")  # a header begun, not whole
        await wait_for(lambda: settings.connections.active == 3, TIMEOUT, what="the three connections accepted")
        _telemetry(settings.connections).sample()
    finally:
        for client in clients:
            await trio.aclose_forcefully(client)
    states = {state: CONNECTIONS.labels(state)._value.get() for state in ("active", "reading", "writing", "waiting")}
    assert states == {"active": 3, "reading": 0, "writing": 0, "waiting": 3}


async def test_the_requests_begun_are_published_at_each_sample() -> None:
    """The connection loop adds to a plain int (ConnectionSet.requests); each flush's sample hands what it added
    since to gateway_requests_started_total, which kong_nginx_requests_total sums."""
    connections = ConnectionSet()
    telemetry = _telemetry(connections)
    before = REQUESTS_STARTED._value.get()
    connections.requests = 3
    telemetry.sample()
    assert REQUESTS_STARTED._value.get() == before + 3
    connections.requests = 5
    telemetry.sample()
    telemetry.sample()
    assert REQUESTS_STARTED._value.get() == before + 5


WRITER = textwrap.dedent("""
    import os, sys
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
    from gateway.metrics import REQUESTS, REQUESTS_STARTED
    REQUESTS.labels("api", "200").inc()  # answered
    REQUESTS_STARTED.inc(3)  # begun: that one, and two still in progress when the process exited
""")


def _write(path: Path) -> None:
    """Run WRITER in a process of its own writing its metric files to `path` (it exits: its files stay)."""
    proc = subprocess.run([sys.executable, "-c", WRITER, str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_kong_nginx_requests_are_the_requests_begun_not_those_answered(tmp_path: Path) -> None:
    """exporter.lua:452, 458: kong_nginx_requests_total and kong_nginx_connections_total{state="total"} are nginx's
    stub status `requests` (ngx_stat_requests, counted at ngx_http_request.c:552), as is /status total_requests
    (kong/api/routes/health.lua: kong.nginx.get_statistics); gateway_requests_total counts requests answered."""
    _write(tmp_path)
    registry, collector = gateway_registry(str(tmp_path), node="n")
    node = {"node_id": collector.node_id, "subsystem": "http"}
    get = registry.get_sample_value
    assert get("gateway_requests_total", {"route": "api", "code": "200"}) == 1
    assert get("kong_nginx_requests_total", node) == 3
    assert get("kong_nginx_connections_total", {**node, "state": "total"}) == 3
    assert registry.server_statistics()["total_requests"] == 3


# --- the files of exited processes: folded by the root, scrape or not -------------------------------------------------


def _dead_files(path: Path, live: Callable[[int], bool]) -> list[str]:
    """The metric files of `path` that belong to a process `live` says has exited (archives are no process's)."""
    out = []
    for name in os.listdir(path):
        pid = name.rpartition(".")[0].rpartition("_")[2]
        if pid.isdigit() and not live(int(pid)):
            out.append(name)
    return sorted(out)


def _running(pid: int) -> bool:
    """Alive and not a zombie (an exited process its parent has yet to reap)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def _requests_on_file(path: Path) -> float:
    (family,) = read_families(str(path), ["gateway_requests"])
    return sum(sample.value for sample in family.samples)


async def test_the_root_folds_the_files_of_a_process_that_exited_on_its_own(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Kong's metrics live in one fixed-size shared dict (kong/conf_loader/init.lua `prometheus_metrics 5m`): a
    crashed and respawned worker adds nothing on disk. The root folds such a process's counters into the archives
    and removes its gauges every METRICS_TIDY_S, scraped or not; its counts stay in the totals."""
    monkeypatch.setattr(root, "METRICS_TIDY_S", 0.05)
    for _ in range(2):
        _write(tmp_path)
    assert _dead_files(tmp_path, _running)
    node = root.Node(str(tmp_path / "gateway.yaml"), None)
    node.metrics_dir = str(tmp_path)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(node._tidy_metrics)
        await wait_for(lambda: not _dead_files(tmp_path, _running), TIMEOUT, what="the dead writers' files folded")
        nursery.cancel_scope.cancel()
    assert all("archive" in name for name in os.listdir(tmp_path))
    assert _requests_on_file(tmp_path) == 2


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Any]:
    with node_factory(tmp_path) as make:
        yield make


async def test_a_reload_leaves_no_metric_files_of_its_retired_workers_without_a_scrape(nursery: trio.Nursery,
                                                                                       node: Any) -> None:
    """As Kong's shared dict (kong/conf_loader/init.lua `prometheus_metrics 5m`), a reload adds nothing on disk:
    with `status_listen: null` nothing ever scrapes, and once a retired generation has stopped the root folds its
    workers' counters and histograms into the archives and removes their gauges, so run/metrics holds the files of
    live processes and one archive per type. No count is lost (gateway_requests_total still sums every request)."""
    backend = EchoBackend()
    await nursery.start(backend.serve)
    gw = node({"services": [{"name": "svc", "url": f"http://127.0.0.1:{backend.port}",
                             "routes": [{"name": "r", "paths": ["/"]}]}]}, status_listen=None)
    await gw.start(workers=2)
    metrics = gw.dir / "run" / "metrics"
    sent = 0
    for _ in range(2):
        for _ in range(3):
            assert (await request(gw.port, "GET", "/a")).status == 200
            sent += 1
        reload = await gw.admin("reload")
        assert reload["retiring"] == reload["generation"] - 1
    await gw.status()  # (the new workers' pids, for the cleanup)
    await wait_for(lambda: not _dead_files(metrics, _running) and _requests_on_file(metrics) == sent, 10,
                   what=f"no files of exited processes in {sorted(os.listdir(metrics))}, {sent} requests on file")
    assert {name for name in os.listdir(metrics) if "archive" in name} <= \
        {"counter_archive.db", "histogram_archive.db", "gauge_sum_archive.db"}
