"""A reload's handover from the old generation to the new, as nginx 1.27.1's master and workers make it: the old
workers stop accepting as soon as the new ones accept, not once the state keeper and the health checker have read
the new config. (Their idle keep-alive connections keep nginx's race away: a request on its way is answered, with
`Connection: close`, rather than lost to a close.)

The connection loop's drain runs here on one end of a socket pair (gateway.http.server.handle_connection,
ConnectionSet.start_drain); the handover between generations needs the root, its workers and its state keeper."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
from pathlib import Path
from typing import Any

import trio
from e2e_helpers import Backend, GatewayNode

from gateway.http.codecs import codec_classes
from gateway.http.net import Conn
from gateway.http.server import Exchange, ServerSettings, handle_connection

TIMEOUT = 5
REQUEST = b"GET /x HTTP/1.1\r\nHost: gw.test\r\n\r\n"


# ---- the old generation stops accepting once the new one accepts (root.py Node._reload) -------------------------


def _get(port: int, key: str) -> int:
    """One GET with `key` on a new connection (Connection: close): its status."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(f"GET /x HTTP/1.1\r\nHost: x\r\napikey: {key}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


async def _logged(gw: GatewayNode, line: str, seconds: float) -> bool:
    """Does the gateway's log say `line` within `seconds`?"""
    with trio.move_on_after(seconds):
        while line not in gw.log():
            await trio.sleep(0.02)
        return True
    return False


async def test_the_old_generation_stops_accepting_while_the_satellites_still_restart(nursery, tmp_path: Path
                                                                                     ) -> None:
    """nginx release-1.27.1 src/os/unix/ngx_process_cycle.c:234-243: the master starts the new workers, sleeps
    100 ms (`ngx_msleep(100)`) and signals the old ones to quit, whose ngx_close_listening_sockets (:734) ends their
    accepting. The root retired the old generation only after the state keeper had reloaded the config and the
    health checker had been restarted (0.1-0.8 s; here a stopped health checker holds its restart): meanwhile the
    kernel handed the old generation new connections, and a key the reload removed was refused by one request and
    accepted by the next. Now it is retired as soon as the new generation accepts, those going on beside."""
    backend = Backend("b")
    await nursery.start(backend.serve)
    doc: dict[str, Any] = {
        "services": [{"name": "s", "url": "http://u", "routes": [{"name": "r", "paths": ["/"]}]}],
        "upstreams": [{"name": "u", "targets": [{"target": backend.target}],  # (active checks: a health checker)
                       "healthchecks": {"active": {"healthy": {"interval": 1}, "unhealthy": {"interval": 1}}}}],
        "plugins": [{"name": "key-auth", "config": {}}],
        "consumers": [{"username": "alice", "keyauth_credentials": [{"key": "ka"}]},
                      {"username": "bob", "keyauth_credentials": [{"key": "kb"}]}]}
    gw = GatewayNode(tmp_path / "gw", doc, status_listen=None)
    health: int | None = None
    try:
        await gw.start(workers=1)
        [old] = await gw.worker_pids()
        health = await gw.child_pid("health")
        assert health is not None
        gw.doc["consumers"] = gw.doc["consumers"][:1]  # bob (key kb) removed
        gw.config.write_text(json.dumps(gw.doc))
        os.kill(health, signal.SIGSTOP)  # its restart (SIGTERM, then up to 5 s) waits until it goes on
        async with trio.open_nursery() as reloading:
            reloading.start_soon(gw.admin, "reload")
            assert await _logged(gw, "supervisor root: started: child='workers@2'", TIMEOUT), gw.log()[-2000:]
            assert await _logged(gw, f"worker {old}: SIGUSR2, draining", 1.0), \
                "the old generation was not retired while the health checker restarted\n" + gw.log()[-2000:]
            statuses = [await trio.to_thread.run_sync(_get, gw.port, "kb") for _ in range(8)]
            assert statuses == [401] * 8, statuses  # the new generation alone accepts
            os.kill(health, signal.SIGCONT)  # (the reload then ends)
    finally:
        if health is not None:
            with contextlib.suppress(ProcessLookupError):  # (gone once it went on: its restart stopped it)
                os.kill(health, signal.SIGCONT)
        gw.cleanup()


# ---- a draining worker's idle keep-alive connections (server.py ConnectionSet.start_drain) -----------------------


async def _answer_ok(ex: Exchange) -> None:
    await ex.respond(200, b"ok", b"text/plain")


def _serve(nursery: trio.Nursery, settings: ServerSettings, handler: Any = _answer_ok) -> socket.socket:
    """The connection loop on one end of a socket pair; the client's end (non-blocking: trio waits on it)."""
    nursery.start_soon(settings.connections.timers.expire_forever)
    ours, theirs = socket.socketpair()
    conn = Conn(ours)

    async def run() -> None:
        try:
            await handle_connection(conn, handler, settings)
        finally:
            conn.close()

    nursery.start_soon(run)
    theirs.setblocking(False)
    return theirs


async def _response(client: socket.socket) -> bytes:
    """One response (head and its 2-byte body "ok"), read as it comes."""
    received = b""
    with trio.fail_after(TIMEOUT):
        while not received.endswith(b"\r\n\r\nok"):
            await trio.lowlevel.wait_readable(client)
            chunk = client.recv(65536)
            assert chunk, f"closed after {received!r}"
            received += chunk
    return received


async def _closed_within(client: socket.socket, seconds: float) -> bytes | None:
    """What the server sent until it closed the connection, or None if it did not close within `seconds`."""
    received = b""
    with trio.move_on_after(seconds):
        while True:
            await trio.lowlevel.wait_readable(client)
            try:
                chunk = client.recv(65536)
            except ConnectionResetError:
                return received
            if not chunk:
                return received
            received += chunk
    return None


async def test_a_drain_answers_a_request_already_arrived_on_an_idle_connection_then_closes_it(nursery) -> None:
    """An idle connection whose next request had arrived (readable, not yet read) when the drain began is answered,
    with `Connection: close` (a drain's answers all say so: nginx's ngx_http_finalize_connection keeps no connection
    alive once exiting, src/http/ngx_http_request.c:2800-2806)."""
    settings = ServerSettings(codec_classes("llhttp")[0])
    with _serve(nursery, settings) as client:
        client.send(REQUEST)
        assert (await _response(client)).startswith(b"HTTP/1.1 200")
        await trio.sleep(0.05)
        client.send(REQUEST)  # (no checkpoint before the drain: the loop has not read it)
        settings.connections.start_drain()
        answer = await _closed_within(client, 1.0)
        assert answer is not None and answer.startswith(b"HTTP/1.1 200"), answer
        assert b"\r\nconnection: close\r\n" in answer.lower(), answer
