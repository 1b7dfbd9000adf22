"""Overload (issue 19 part 3): a worker at max_connections closes its oldest reusable connections (accepted and silent,
or kept alive between requests) for a new client, as nginx's ngx_drain_connections does; with none, the new client
gets the fast 503 through a bounded lingering close, so that one still uploading reads it; a configured
max_connections the descriptor limit cannot hold is warned about; refusals at EMFILE log only what is true."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys

import pytest
import trio
from backends import EchoBackend, free_port, parse_raw_response, service, stop_process, upload, wait_port
from e2e_helpers import Backend, HttpConn
from e2e_helpers import request as http_request

from gateway.http.limits import SHED_LINGER_TIME_S, SHED_LINGERS, Shedder

TIMEOUT = 15
BODY = 8 * 1024 * 1024  # far past what the kernel's buffers hold on either side (as tests/http/test_lingering_close)
UNDER_WAY = b"GET /x HTTP/1.1\r\n"  # part of a request head: the connection is no longer reusable (nginx, below)


async def _busy(port: int, count: int) -> list[trio.SocketStream]:
    """`count` connections each with a request head under way: held, never reusable."""
    streams = []
    for _ in range(count):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(UNDER_WAY)
        streams.append(stream)
    await trio.sleep(0.2)  # the worker has read their first bytes
    return streams


async def _closed_by_gateway(stream: trio.SocketStream, within: float) -> bool:
    """True if the gateway ends `stream` (EOF or reset) within `within` seconds."""
    with trio.move_on_after(within):
        try:
            while await stream.receive_some(65536):
                pass
        except trio.BrokenResourceError:
            pass
        return True
    return False


async def test_the_shed_503_reaches_a_client_still_uploading_without_a_reset(gateway, nursery):
    """README (lingering close, gateway/http/server.py _linger): "Closing a socket with input unread sends a reset,
    which ends the client's upload with an error (urllib3 and curl then report that instead of the answer)". nginx's
    ngx_http_set_lingering_close reads and drops what the client still sends before closing: the shed 503 of a full
    worker (gateway.http.limits.Shedder) does the same, within bounds, for an MCP client POSTing to it."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}")]}, max_connections=1)
    held = await _busy(port, 1)  # the worker is full, with nothing reusable
    try:
        received, reset = await upload(port, b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % BODY,
                                        BODY)
        assert received and parse_raw_response(received)[0] == 503
        assert not reset, "the client's upload ended on a reset: it reports that, not the 503"
    finally:
        for stream in held:
            await stream.aclose()


async def test_a_shed_connection_lingers_no_longer_than_its_bound(gateway, nursery):
    """The shed connection's lingering close is bounded (gateway.http.limits SHED_LINGER_TIME_S), as nginx's
    lingering_time bounds its own (src/http/ngx_http_request.c ngx_http_lingering_close_handler: `timer =
    (ngx_msec_t) r->lingering_time - (ngx_msec_t) ngx_time(); if ((ngx_msec_int_t) timer <= 0) { close }`): a client
    that keeps sending for ever holds a descriptor of a full worker no longer than that."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}")]}, max_connections=1)
    held = await _busy(port, 1)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        began = trio.current_time()
        with trio.move_on_after(SHED_LINGER_TIME_S + 3):
            try:
                while True:
                    await stream.send_all(b"x" * 1024)
                    await trio.sleep(0.05)
            except trio.BrokenResourceError:
                pass
        assert trio.current_time() - began < SHED_LINGER_TIME_S + 2, "the shed connection lingered unbounded"
    finally:
        await stream.aclose()
        for s in held:
            await s.aclose()


async def test_at_most_shed_lingers_connections_linger_at_once():
    """A flood of shed connections cannot use up the worker's descriptors lingering: beyond SHED_LINGERS at once, a
    shed connection gets its 503 and is closed at once (as nginx closes when it has no connection to spare)."""
    shedder = Shedder()
    pairs = [socket.socketpair() for _ in range(SHED_LINGERS + 8)]
    try:
        async with trio.open_nursery() as nursery:
            for ours, _ in pairs:
                shedder.shed(ours, nursery)
            assert shedder.lingering == SHED_LINGERS
            assert sum(ours.fileno() < 0 for ours, _ in pairs) == 8  # closed at once
            for _, theirs in pairs:
                theirs.setblocking(False)
                assert theirs.recv(65536).startswith(b"HTTP/1.1 503 ")
                theirs.close()  # the client's end: each lingering one closes in turn
        assert shedder.lingering == 0 and all(ours.fileno() < 0 for ours, _ in pairs)
    finally:
        for ours, theirs in pairs:
            ours.close()
            theirs.close()


async def test_idle_keepalive_connections_are_reused_for_a_new_client_at_the_limit(gateway, nursery):
    """nginx, src/core/ngx_connection.c ngx_get_connection -> ngx_drain_connections: when free connections run out
    it closes the oldest reusable ones ("%ui worker_connections are not enough, reusing connections": `c->close = 1;
    c->read->handler(c->read);`), and ngx_http_set_keepalive marks an idle kept-alive connection reusable
    (`ngx_reusable_connection(c, 1)`): idle kept-alive connections do not lock new clients out of a full worker."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}")]}, max_connections=2)
    idle = [await HttpConn.open(port) for _ in range(2)]
    try:
        for conn in idle:
            assert (await conn.request("GET", "/x")).status == 200  # served, now idle between requests
        reply = await http_request(port, "GET", "/x", timeout=TIMEOUT)
        assert reply.status == 200, f"a new client got {reply.status} while the worker held only idle connections"
    finally:
        for conn in idle:
            await conn.aclose()


async def test_the_oldest_idle_connection_is_the_one_reused(gateway, nursery):
    """nginx, src/core/ngx_connection.c: ngx_reusable_connection inserts a connection at the head of the reusable
    queue (`ngx_queue_insert_head`), ngx_drain_connections takes the last (`ngx_queue_last`): the one idle longest
    makes room, and the one that was just used stays."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}")]}, max_connections=2)
    older, newer = await HttpConn.open(port), await HttpConn.open(port)
    try:
        assert (await older.request("GET", "/x")).status == 200
        assert (await newer.request("GET", "/x")).status == 200
        assert (await http_request(port, "GET", "/x", timeout=TIMEOUT)).status == 200
        assert await _closed_by_gateway(older.stream, 1.0)
        assert (await newer.request("GET", "/x")).status == 200
    finally:
        await older.aclose()
        await newer.aclose()


async def test_silent_connections_do_not_lock_real_clients_out_at_the_limit(gateway, nursery):
    """nginx, src/http/ngx_http_request.c ngx_http_init_connection: a connection waiting for its first byte is
    reusable (`ngx_add_timer(rev, cscf->client_header_timeout); ngx_reusable_connection(c, 1);`), so
    ngx_drain_connections closes such connections for new ones when worker_connections run out: max_connections
    connections that never send a byte (slowloris) do not lock a worker's real clients out for header_timeout_s."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}")]}, max_connections=4)
    silent = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(4)]
    try:
        await trio.sleep(0.2)  # accepted, waiting for a request head
        reply = await http_request(port, "GET", "/x", timeout=TIMEOUT)
        assert reply.status == 200, f"a real client got {reply.status}: 4 silent connections lock the worker"
    finally:
        for stream in silent:
            await stream.aclose()


async def test_a_connection_lingering_after_its_answer_is_reused_at_the_limit(gateway, nursery):
    """nginx, src/http/ngx_http_request.c ngx_http_set_lingering_close: `c->close = 0; ngx_reusable_connection(c,
    1);`, and ngx_http_lingering_close_handler closes it `if (rev->timedout || c->close)`: a connection answered
    before its body was read, lingering (up to LINGER_TIME_S) for a client that has gone quiet, makes room for a new
    one."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}", [{"paths": ["/x"]}])]},
                         max_connections=1)
    lingering = await trio.open_tcp_stream("127.0.0.1", port)
    try:  # no route: a 404 before the body, and Connection: close, so the connection lingers
        await lingering.send_all(b"POST /elsewhere HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"
                                 b"Content-Length: 100000\r\n\r\n" + b"x" * 1000)
        assert parse_raw_response(await lingering.receive_some(65536))[0] == 404
        reply = await http_request(port, "GET", "/x", timeout=TIMEOUT)
        assert reply.status == 200, f"a new client got {reply.status} while the worker held a lingering connection"
        assert await _closed_by_gateway(lingering, 1.0)
    finally:
        await lingering.aclose()


async def test_a_connection_with_a_request_under_way_is_not_reused(gateway, nursery):
    """nginx, src/http/ngx_http_request.c ngx_http_wait_request_handler: once a connection's first bytes are read it
    is no longer reusable (`ngx_reusable_connection(c, 0)`): a full worker whose connections all have a request
    under way refuses the new client (the fast 503), never cutting one of them."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}")]}, max_connections=2)
    held = await _busy(port, 2)
    try:
        reply = await http_request(port, "GET", "/x", timeout=TIMEOUT)
        assert reply.status == 503
        for stream in held:
            await stream.send_all(b"Host: a\r\n\r\n")  # the rest of the head: still served
            data = await stream.receive_some(65536)
            assert parse_raw_response(data)[0] == 200
    finally:
        for stream in held:
            await stream.aclose()


def _prlimit() -> str:
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        pytest.skip("prlimit (util-linux) is not installed")
    return prlimit


async def test_a_configured_max_connections_beyond_the_descriptor_limit_is_warned_about(tmp_path):
    """nginx, src/event/ngx_event.c ngx_event_module_init: `if (ecf->connections > (ngx_uint_t) rlmt.rlim_cur ...)
    ngx_log_error(NGX_LOG_WARN, cycle->log, 0, "%ui worker_connections exceed open file resource limit: %i", ...)`:
    max_connections 100000 under a limit of 1,024 descriptors is not enforced (EMFILE comes first), and the log says
    so, with what to do."""
    prlimit = _prlimit()
    port = free_port()
    config = tmp_path / "gateway.json"
    config.write_text(json.dumps({"gateway": {"listen": f"127.0.0.1:{port}", "status_listen": None,
                                              "max_connections": 100000}, "services": []}))
    proc = subprocess.Popen([prlimit, "--nofile=1024:1024", sys.executable, "-m", "gateway", "run", "--config",
                             str(config)], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        await trio.to_thread.run_sync(wait_port, port, 30.0)
        assert (await http_request(port, "GET", "/x")).status == 404  # serving: its start is logged
    finally:
        stop_process(proc)
    log = proc.stderr.read().decode()
    [line] = [line for line in log.splitlines() if "gateway.max_connections 100000" in line]
    assert "WARNING" in line and "1024" in line and "worker_rlimit_nofile" in line, line


async def test_refusals_at_emfile_do_not_report_a_missing_spare_descriptor(tmp_path):
    """After a burst refused through the spare descriptor, accept(2) still fails with EMFILE on the empty queue (it
    takes a descriptor before it looks: net/socket.c __sys_accept4_file calls get_unused_fd_flags first): that is the
    end of the burst, not "no spare descriptor", which the log said at ERROR with the spare in hand."""
    prlimit = _prlimit()
    backend = Backend("b")
    async with trio.open_nursery() as nursery:
        await nursery.start(backend.serve)
        port = free_port()
        config = tmp_path / "gateway.json"
        config.write_text(json.dumps({  # as tests/test_overload.py's: 64 descriptors, EMFILE before max_connections
            "gateway": {"listen": f"127.0.0.1:{port}", "status_listen": None, "max_connections": 10000,
                        "header_timeout_s": 120},
            "services": [service("s", f"http://127.0.0.1:{backend.port}")]}))
        proc = subprocess.Popen([prlimit, "--nofile=64:64", sys.executable, "-m", "gateway", "run", "--config",
                                 str(config)], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        held: list[trio.SocketStream] = []
        try:
            await trio.to_thread.run_sync(wait_port, port, 30.0)
            with trio.fail_after(TIMEOUT):
                for _ in range(80):  # more than the worker has descriptors for: the rest are refused
                    held.append(await trio.open_tcp_stream("127.0.0.1", port))
                    await trio.sleep(0.005)
                await trio.sleep(0.5)
        finally:
            for stream in held:
                await stream.aclose()
            stop_process(proc)
            nursery.cancel_scope.cancel()
    log = proc.stderr.read().decode()
    assert "no spare descriptor" not in log, log
