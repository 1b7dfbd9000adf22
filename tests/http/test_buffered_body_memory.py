"""What a buffered request body (a route's `request_buffering`, Kong's default: nginx's `proxy_request_buffering on`)
holds in the worker while it arrives and while it waits on its upstream: about nginx's client_body_buffer_size (Kong's
8k), not the body.

nginx reads such a body into one buffer of client_body_buffer_size and writes it to the temporary file each time it
fills (nginx release-1.27.1 src/http/ngx_http_request_body.c:175-195, `size = clcf->client_body_buffer_size; ...
rb->buf = ngx_create_temp_buf(r->pool, size);`, and :1340-1343, ngx_http_write_request_body), then sends it upstream
through one buffer of the same size (src/http/ngx_http_upstream.c:652-653, `u->output.bufs.size =
clcf->client_body_buffer_size`). The read is shown sans-I/O on a real codec and Exchange over a socket pair; the whole
of it on a real worker (`gateway run`, one process) whose RSS is read by pid (/proc/PID/status VmRSS), its backend in
the test's nursery, on loopback, stopped by pid (tests/backends.py stop_process).
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from backends import (
    _Backend,
    free_port,
    held_while_the_last_chunk_waits,
    pattern_bytes,
    service,
    stop_process,
    wait_port,
)

from gateway.http.codec import Request, ServerCodec
from gateway.http.codec_h11 import H11Server
from gateway.http.codec_llhttp import LlhttpServer
from gateway.http.net import RECV_SIZE, Conn
from gateway.http.server import Exchange, ServerSettings
from gateway.http.timers import ConnTimer, Phase
from gateway.pipeline.request_buffer import SpooledBody, read_whole

MiB = 1 << 20
BUFFER = 8192  # nginx's client_body_buffer_size as Kong sets it (kong/templates/kong_defaults.lua:91)
TIMEOUT = 10


@pytest.mark.parametrize("codec_cls", [H11Server, LlhttpServer], ids=["h11", "llhttp"])
async def test_a_buffered_body_still_arriving_holds_one_buffer_not_the_body(
        codec_cls: type[ServerCodec], conn_pair: tuple[Conn, socket.socket]) -> None:
    """Request buffering (read_whole) keeps MEMORY_LIMIT, nginx's client_body_buffer_size as Kong sets it (8k), in
    memory, and a larger body goes to its file as it comes: 1 MiB of a body whose end has not come holds a read or
    two (RECV_SIZE each), not the megabyte, which the gateway kept in memory (its bound was 1 MiB)."""
    conn, peer = conn_pair
    body = pattern_bytes(MiB)
    sent = b"%x\r\n" % MiB + body + b"\r\n"
    codec = codec_cls()
    codec.receive_data(b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    req = codec.next_event()
    assert type(req) is Request
    ex = Exchange(req, conn, codec, ConnTimer(math.inf, Phase.BUSY), ServerSettings(codec_cls))
    spooled, held = await held_while_the_last_chunk_waits(ex, peer, lambda ex: read_whole(ex, b""), sent, MiB)
    assert held < BUFFER + 2 * RECV_SIZE, f"1 MiB of a buffered body still arriving held {held} bytes"
    assert isinstance(spooled, SpooledBody) and spooled.size == MiB
    spooled.rewind()
    assert b"".join(iter(spooled.read, b"")) == body


class DeafBackend(_Backend):
    """Accepts connections (a 4 KiB receive buffer) and never reads from them: an upstream that takes no request."""

    async def serve(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await sock.bind(("127.0.0.1", 0))
        sock.listen(1024)
        self.port = sock.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started(self.port)
            await trio.serve_listeners(self._on_conn, [trio.SocketListener(sock)], handler_nursery=nursery)

    async def handle_conn(self, stream: trio.SocketStream) -> None:
        await trio.sleep_forever()


def rss(pid: int) -> int:
    """The process's resident set, in bytes (/proc/PID/status VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def start_worker(tmp_path: Path, doc: dict[str, Any], port: int) -> subprocess.Popen[bytes]:
    """`gateway run` on `doc` (one worker, in the foreground), once it accepts on 127.0.0.1:port."""
    config = tmp_path / "gateway.json"
    config.write_text(json.dumps(doc))
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config", str(config)], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, 30.0)
    except BaseException:
        stop_process(proc)
        raise
    return proc


async def test_buffered_request_bodies_waiting_on_an_upstream_hold_no_copy_of_themselves(tmp_path: Path) -> None:
    """60 requests of 1 MiB waiting on an upstream that takes nothing hold some 16 KiB each in nginx, about 1 MiB in
    all. The gateway held each body in memory 2.4 times, 150 MiB for these 60 (read_whole's bytes copy of its
    buffer, and _exchange's head + body copy while the forwarder kept the body for a retry): now each is in its
    file, read back and sent in MEMORY_LIMIT pieces. What a request still holds is its connection's reads of the
    client (RECV_SIZE, 64 KiB each: the head's, the codec's last), hence the bound of 0.4 MiB a request."""
    deaf = DeafBackend("deaf")
    port = free_port()
    clients = 60
    async with trio.open_nursery() as nursery:
        await nursery.start(deaf.serve)
        doc = {"gateway": {"listen": [f"127.0.0.1:{port}"], "status_listen": None},
               "services": [service("s", f"http://127.0.0.1:{deaf.port}")]}
        proc = start_worker(tmp_path, doc, port)
        streams: list[trio.SocketStream] = []
        try:
            await trio.sleep(0.3)
            before = rss(proc.pid)
            upload = b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % MiB + b"z" * MiB
            with trio.fail_after(TIMEOUT):
                for _ in range(clients):
                    streams.append(await trio.open_tcp_stream("127.0.0.1", port))
                async with trio.open_nursery() as sending:
                    for stream in streams:
                        sending.start_soon(stream.send_all, upload)
                await trio.sleep(1.0)  # every body read, every request being written to the upstream
                grown = rss(proc.pid) - before
        finally:
            for stream in streams:
                await trio.aclose_forcefully(stream)
            stop_process(proc)
            nursery.cancel_scope.cancel()
    assert grown < 24 * MiB, f"{clients} buffered 1 MiB request bodies grew the worker by {grown / MiB:.1f} MiB " \
                             f"({grown / clients / MiB:.2f} MiB each)"
