"""A pooled upstream connection the upstream closes or resets as a request crosses it, before a whole response head
(nginx's u->peer.cached, release-1.27.1 src/http/ngx_http_upstream.c:4366-4368): a request nginx resends goes again
at no cost, one it does not resend (POST, PATCH, a body not buffered) ends in a 502 whose try nginx logs 502
(ngx_http_upstream_next sets u->state->status, :4413, before the non-idempotent check, :4417-4426, ends the
request) and Kong's log phase reports to passive health checks (kong/runloop/handler.lua:1634-1636)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import trio
from backends import log_lines, raw_exchange, service
from backends import request as call

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
PART = b"HTTP/1.1 200 OK\r\nContent-Le"  # part of a head
RST = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # SO_LINGER on, 0 s: close() sends a reset


class Crossing:
    """Answers each connection's first request, and ends the connection at its second one's head (`ending`: fin,
    rst, or part of a head then either): the upstream's idle close crossing the gateway's next request."""

    def __init__(self, ending: str) -> None:
        self.ending = ending
        self.conns = 0
        self.requests = 0
        self.port = 0

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        sock = trio.socket.socket()
        await sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        self.port = sock.getsockname()[1]
        task_status.started()
        async with trio.open_nursery() as nursery:
            while True:
                conn, _ = await sock.accept()
                self.conns += 1
                nursery.start_soon(self._serve, trio.SocketStream(conn))

    async def _serve(self, stream: trio.SocketStream) -> None:
        buf = b""
        try:
            for n in (1, 2):
                while b"\r\n\r\n" not in buf:
                    if not (data := await stream.receive_some(65536)):
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                self.requests += 1
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")[1:]
                               if line.lower().startswith(b"content-length:")), 0)
                while len(buf) < length and n == 1:
                    buf += await stream.receive_some(65536)
                buf = buf[length:]
                if n == 1:
                    await stream.send_all(OK)
            if self.ending.startswith("head"):
                await stream.send_all(PART)
                await trio.sleep(0.05)
            if self.ending.endswith("rst"):
                stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RST)
        except (trio.BrokenResourceError, OSError):
            pass
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)


async def _crossed(nursery: trio.Nursery, gateway, tmp_path: Path, ending: str,  # noqa: ANN001
                   **fields: object) -> tuple[Crossing, int, Path]:
    """A gateway to one Crossing target, logging, its connection pooled by a first GET."""
    target = Crossing(ending)
    await nursery.start(target.serve)
    log = tmp_path / "access.log"
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{target.port}", **fields)]},
                         access_log=str(log))
    assert (await call(port, "GET", "/warm")).status == 200
    await trio.sleep(0.05)  # (the connection back in the pool)
    return target, port, log


@pytest.mark.parametrize("method", ["POST", "PATCH"])
@pytest.mark.parametrize("ending", ["fin", "rst"])
async def test_a_post_failed_on_a_stale_pooled_connection_is_logged_upstream_status_502(
        nursery, gateway, tmp_path: Path, method: str, ending: str) -> None:  # noqa: ANN001
    """ngx_http_upstream_next (release-1.27.1 src/http/ngx_http_upstream.c:4413) sets the try's status 502 before
    the non-idempotent check (:4417-4426) ends the request; u->peer.cached (:4366-4368) only buys a resendable
    request its free try. The gateway logged `-` (the try blamed on nobody), though no try followed it."""
    with trio.fail_after(10):
        target, port, log = await _crossed(nursery, gateway, tmp_path, ending, retries=0)
        status = (await call(port, method, "/x", body=b"x" * 100)).status
        entries = await log_lines(log, 2)
    assert (status, target.conns, target.requests) == (502, 1, 2)  # sent once, on the pooled connection
    assert entries[1]["upstream_status"] == "502"
    assert [(t.get("state"), t.get("code")) for t in entries[1]["tries"]] == [("failed", 502)]


@pytest.mark.parametrize("ending", ["head_fin", "head_rst"])
async def test_a_post_cut_mid_head_on_a_stale_pooled_connection_is_logged_upstream_status_502(
        nursery, gateway, tmp_path: Path, ending: str) -> None:  # noqa: ANN001
    """Part of a head then the close (or a reset) is nginx's "upstream prematurely closed connection", the same
    NGX_HTTP_UPSTREAM_FT_ERROR (ngx_http_upstream_process_header, release-1.27.1 ngx_http_upstream.c:2454-2461):
    status 502 at :4413. Logged `-` before."""
    with trio.fail_after(10):
        target, port, log = await _crossed(nursery, gateway, tmp_path, ending, retries=0)
        status = (await call(port, "POST", "/x", body=b"x" * 100)).status
        entries = await log_lines(log, 2)
    assert (status, target.conns, target.requests) == (502, 1, 2)
    assert entries[1]["upstream_status"] == "502"


@pytest.mark.parametrize("ending", ["head_fin", "head_rst"])
async def test_a_get_cut_mid_head_on_a_pooled_connection_goes_again_at_no_cost(
        nursery, gateway, tmp_path: Path, ending: str) -> None:  # noqa: ANN001
    """nginx keeps u->peer.cached once response bytes came (its reset to 0 is `#if 0`, release-1.27.1
    ngx_http_upstream.c:2468-2472), so a pooled connection cut mid-head costs a resendable request no try (:4366-
    4368): with retries 0 the GET goes again, on a new connection, and nginx logs `502, 200`. The gateway gave it no
    second try: 502, logged `-`."""
    with trio.fail_after(10):
        target, port, log = await _crossed(nursery, gateway, tmp_path, ending, retries=0)
        status = (await call(port, "GET", "/x")).status
        entries = await log_lines(log, 2)
    assert (status, target.conns, target.requests) == (200, 2, 3)
    assert entries[1]["upstream_status"] == "502, 200"


async def test_an_unbuffered_chunked_body_failed_on_a_stale_pooled_connection_is_logged_upstream_status_502(
        nursery, gateway, tmp_path: Path) -> None:  # noqa: ANN001
    """A body not buffered (request_buffering false) and not whole with its head is not resent, whatever the method
    (ngx_http_upstream_next's `u->request_sent && r->request_body_no_buffering`, release-1.27.1
    ngx_http_upstream.c:4430): a PUT whose pooled connection the upstream closes gets 502, its try's status 502
    (:4413). Logged `-` before."""
    target = Crossing("fin")
    await nursery.start(target.serve)
    log = tmp_path / "access.log"
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{target.port}", retries=0, routes=[
        {"paths": ["/"], "request_buffering": False}])]}, access_log=str(log))
    with trio.fail_after(10):
        assert (await call(port, "GET", "/warm")).status == 200
        await trio.sleep(0.05)
        head = b"PUT /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        answer, _ = await raw_exchange(port, [head + b"3\r\nabc\r\n", b"3\r\ndef\r\n0\r\n\r\n"], pause=0.2)
        entries = await log_lines(log, 2)
    assert answer.startswith(b"HTTP/1.1 502 "), answer[:40]
    assert (target.conns, target.requests) == (1, 2)
    assert entries[1]["upstream_status"] == "502"


async def test_a_post_failed_on_a_stale_pooled_connection_is_reported_to_passive_checks_by_its_502(
        nursery, gateway) -> None:  # noqa: ANN001
    """Kong's log phase reports the request's $upstream_status to passive health checks (kong/runloop/handler.lua:
    1634-1636, report_http_status): 502, counted when listed in http_statuses, so the sole target goes unhealthy and
    the next request finds no peer. The gateway reported nothing (the try blamed on nobody)."""
    target = Crossing("fin")
    await nursery.start(target.serve)
    checks = {"passive": {"unhealthy": {"http_failures": 1, "http_statuses": [502]}}}
    up = {"name": "one", "healthchecks": checks, "targets": [{"target": f"127.0.0.1:{target.port}"}]}
    port = await gateway({"services": [service("s", "http://one", retries=0)], "upstreams": [up]})
    with trio.fail_after(10):
        assert (await call(port, "GET", "/warm")).status == 200
        await trio.sleep(0.05)
        assert (await call(port, "POST", "/x", body=b"x")).status == 502
        await trio.sleep(0.2)  # (the keeper hears the report)
        after = await call(port, "GET", "/y")
    assert (after.status, after.json()["message"]) == (503, "failure to get a peer from the ring-balancer")
    assert target.requests == 2
