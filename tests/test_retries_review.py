"""Retries that Kong and nginx would not make: a balancer that has no target left to retry ends the request, and a
client that hangs up while its request is connected or written upstream ends it and its tries at once."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import trio
from backends import BadBackend, free_port, request, service, upstream, wait_until
from e2e_helpers import GatewayNode, wait_for
from e2e_helpers import request as node_request

TIMEOUT = 10
CONNECT_TIMEOUT_S = WRITE_TIMEOUT_S = 1.0  # the tries' timeouts (connect_timeout, write_timeout), in seconds
PAST_S = 0.6  # how long after a try's timeout its retry would have shown (the gateway runs in the test's loop)


def assert_error_page(reply, status: int, message: str) -> None:  # noqa: ANN001
    """Kong's error handler's page (kong/error_handlers.lua) for a request with no Accept or Content-Type."""
    assert reply.status == status, (reply.status, reply.body)
    assert reply.body.decode() == f"{message}\nrequest_id: {reply.header('x-request-id')}\n"


# --- when every target was tried: what each of Kong's balancers does ------------------------------------------------


async def test_the_latency_balancer_ends_the_retries_once_every_target_failed(nursery, gateway):
    """kong/runloop/balancer/latency.lua ewma:getPeer, lines 197-200: with no address left that has not failed,
    `ngx_log(ngx_WARN, "all endpoints have been retried") return nil, balancers.errors.ERR_NO_PEERS_AVAILABLE`;
    kong/runloop/balancer/init.lua execute (line 355) makes it `return nil, "failure to get a peer from the
    ring-balancer", 503` and kong/init.lua Kong.balancer (lines 1347-1360) `return ngx.exit(errcode)` for the retry:
    nginx's 503, through kong/error_handlers.lua (spec/01-unit/09-balancer/06-latency_spec.lua "retries, after all
    addresses failed, retry end"). Two failing targets and retries 5: each gets the GET once, the client a 503."""
    first, second = BadBackend("close", "first"), BadBackend("close", "second")
    await nursery.start(first.serve)
    await nursery.start(second.serve)
    port = await gateway({"services": [service("svc", "http://pair", retries=5)],
                          "upstreams": [upstream("pair", [first.port, second.port], algorithm="latency")]})
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/x")
    assert (len(first.requests), len(second.requests)) == (1, 1)
    assert_error_page(reply, 503, "The upstream server is currently unavailable")


async def test_least_connections_starts_over_once_every_target_failed(nursery, gateway):
    """kong/runloop/balancer/least_connections.lua getPeer: "we failed all addresses, so drop the list of failed
    ones, we are trying again, so we restart using the ones that previously failed us. Until eventually we hit the
    limit of retries": two failing targets and retries 3 make four tries, two each, and nginx's 502."""
    first, second = BadBackend("close", "first"), BadBackend("close", "second")
    await nursery.start(first.serve)
    await nursery.start(second.serve)
    port = await gateway({"services": [service("svc", "http://pair", retries=3)],
                          "upstreams": [upstream("pair", [first.port, second.port], algorithm="least-connections")]})
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/x")
    assert (len(first.requests), len(second.requests)) == (2, 2)
    assert_error_page(reply, 502, "An invalid response was received from the upstream server")


async def test_the_try_before_a_retry_with_no_peer_is_reported_by_the_requests_503(tmp_path: Path) -> None:
    """Kong's log phase (kong/runloop/handler.lua log.after) reports the balancer handle's last address by
    `tonumber(sub(var.upstream_status, -3)) or ngx.status`: after a retry whose getPeer failed, $upstream_status ends
    on that pick, with no status of its own, so the request's 503 is reported (report_http_status) against the last
    target tried, the one before it having been reported as a TCP failure by Kong.balancer. With http_failures 1 for
    503 only, the last target tried goes down, the first stays up."""
    first, second = (f"127.0.0.1:{free_port()}" for _ in range(2))  # nothing listens: connects refused
    checks = {"passive": {"unhealthy": {"http_failures": 1, "http_statuses": [503]}}}
    gw = GatewayNode(tmp_path / "gw", {
        "upstreams": [{"name": "pair", "algorithm": "latency", "healthchecks": checks,
                       "targets": [{"target": first}, {"target": second}]}],
        "services": [{"name": "svc", "url": "http://pair", "retries": 5, "routes": [{"paths": ["/"]}]}]})
    try:
        with trio.fail_after(30):
            await gw.start(workers=1)
            assert (await node_request(gw.port, "GET", "/x")).status == 503

            async def one_down() -> bool:
                return any(not state["healthy"] for state in (await gw.targets()).values())
            await wait_for(one_down, 5, interval=0.1, what="the request's 503 counted against the last try")
            await trio.sleep(0.3)  # (nothing else comes)
            states = await gw.targets()
        assert sorted(states[f"pair|{t}"]["healthy"] for t in (first, second)) == [False, True]
    finally:
        gw.cleanup()


# --- a client that hangs up while its request is connected or written upstream ---------------------------------------


async def _listening(rcvbuf: int = 0, mss: int = 0) -> trio.socket.SocketType:
    """A socket listening on a loopback port; with `rcvbuf` and `mss`, the receive buffer and segment size its
    connections inherit (a slow link)."""
    sock = trio.socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if mss:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, mss)
    await sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    return sock


async def _serve_each(sock: trio.socket.SocketType, handle: Any, task_status: Any) -> None:
    """Each connection `sock` accepts handed to `handle` (a task of its own), once the port is told to the starter."""
    async with trio.open_nursery() as nursery:
        task_status.started(sock.getsockname()[1])
        with sock:
            while True:
                conn, _ = await sock.accept()
                nursery.start_soon(handle, conn)


class SilentTls:
    """A TLS upstream that accepts connections and never answers the ClientHello (the connect, handshake included,
    runs into connect_timeout); it counts the connections and notes when the gateway closes each."""

    def __init__(self) -> None:
        self.port = 0
        self.accepted = 0
        self.first_at = 0.0  # when the first connection was accepted (its try's connect began just before)
        self.closed_at: list[float] = []

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:  # noqa: ANN001
        sock = await _listening()
        self.port = sock.getsockname()[1]
        await _serve_each(sock, self._hold, task_status)

    async def _hold(self, conn) -> None:  # noqa: ANN001
        self.accepted += 1
        self.first_at = self.first_at or trio.current_time()
        with conn:
            try:
                while await conn.recv(65536):
                    pass
            except OSError:
                pass
            self.closed_at.append(trio.current_time())


async def _connecting(nursery, gateway, **settings) -> tuple[SilentTls, trio.SocketStream]:  # noqa: ANN001, ANN003
    """A client whose GET waits on the connect to a target that never finishes it (connect_timeout 1 s, retries 5)."""
    silent = SilentTls()
    await nursery.start(silent.serve)
    port = await gateway({"services": [service("svc", f"https://127.0.0.1:{silent.port}",
                                               connect_timeout=int(CONNECT_TIMEOUT_S * 1000), retries=5)]}, **settings)
    client = await trio.open_tcp_stream("127.0.0.1", port)
    await client.send_all(b"GET /x HTTP/1.1\r\nhost: gw\r\n\r\n")
    await wait_until(lambda: silent.accepted >= 1, "the connect upstream")
    await trio.sleep(0.2)
    return silent, client


async def test_a_client_that_leaves_during_the_connect_ends_the_tries(nursery, gateway):
    """nginx watches the client from the start of the upstream request, the connect included:
    src/http/ngx_http_upstream.c ngx_http_upstream_init_request (line 661) sets `r->read_event_handler =
    ngx_http_upstream_rd_check_broken_connection` (proxy_ignore_client_abort off, Kong's setting) before the
    connect; ngx_http_upstream_check_broken_connection then closes the upstream connection ("client prematurely
    closed connection, so upstream connection is closed too", 499), and ngx_http_upstream_next (line 4677) tries no
    other server for a client connection in error. So the client's hang-up costs that one connect, abandoned."""
    with trio.fail_after(TIMEOUT):
        silent, client = await _connecting(nursery, gateway)
        await client.aclose()
        left = trio.current_time()
        await trio.sleep_until(silent.first_at + CONNECT_TIMEOUT_S + PAST_S)  # its connect_timeout has long passed
    assert silent.accepted == 1
    assert silent.closed_at and silent.closed_at[0] - left < 0.8


async def test_a_client_that_leaves_during_the_connect_is_logged_499(nursery, gateway, tmp_path):
    """ngx_http_upstream_check_broken_connection finalizes with NGX_HTTP_CLIENT_CLOSED_REQUEST: the log says 499,
    nothing sent, as for a client gone while the response head is awaited."""
    log = tmp_path / "access.log"
    with trio.fail_after(TIMEOUT):
        _, client = await _connecting(nursery, gateway, access_log=str(log))
        await client.aclose()
        await wait_until(lambda: log.exists() and log.read_text().strip(), "an access log line")
    response = json.loads(log.read_text().splitlines()[0])["response"]
    assert (response["status"], response["size"]) == (499, 0)


async def test_a_client_that_half_closes_during_the_connect_is_gone_as_for_nginx(nursery, gateway):
    """ngx_http_upstream_check_broken_connection takes a client's EOF for a client gone, whole request or not: on
    Linux epoll's EPOLLRDHUP (`ev->pending_eof`, line 1463), elsewhere `recv(c->fd, buf, 1, MSG_PEEK)` returning 0
    (lines 1511-1548: `ev->eof = 1; c->error = 1`), then 499; ngx_http_upstream_init_request even posts the check at
    once when the client's read event is ready (lines 651-652). So a client that sends its GET and then shuts its
    side down (a FIN) ends the try like one that closed."""
    with trio.fail_after(TIMEOUT):
        silent, client = await _connecting(nursery, gateway)
        await client.send_eof()
        left = trio.current_time()
        await wait_until(lambda: silent.closed_at, "the connect abandoned")
        await trio.sleep(1.5)
    assert silent.accepted == 1
    assert silent.closed_at[0] - left < 0.8


class Deaf:
    """An upstream that accepts connections and never reads from them (a write to it waits, then write_timeout)."""

    def __init__(self) -> None:
        self.port = 0
        self.accepted = 0

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:  # noqa: ANN001
        sock = await _listening()
        self.port = sock.getsockname()[1]
        held = []
        task_status.started(self.port)
        try:
            with sock:
                while True:
                    conn, _ = await sock.accept()
                    held.append(conn)
                    self.accepted += 1
        finally:
            for conn in held:
                conn.close()


async def test_a_client_that_leaves_while_its_request_is_written_ends_the_tries(nursery, gateway):
    """nginx's check of the client runs while the request is written upstream too (ngx_http_upstream.c:661 sets
    ngx_http_upstream_rd_check_broken_connection for the whole upstream exchange): a client that closes then ends
    the request at once with 499, and ngx_http_upstream_next (line 4677) tries no other server for it. An idempotent
    PUT whose client left while the upstream would not read it is not sent again after write_timeout."""
    deaf = Deaf()
    await nursery.start(deaf.serve)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{deaf.port}",
                                               write_timeout=int(WRITE_TIMEOUT_S * 1000), retries=5)]})
    size = 16 << 20  # more than loopback's socket buffers take
    with trio.fail_after(TIMEOUT):
        client = await trio.open_tcp_stream("127.0.0.1", port)
        await client.send_all(b"PUT /x HTTP/1.1\r\nhost: gw\r\ncontent-length: %d\r\n\r\n" % size)
        chunk = b"x" * (1 << 20)
        for _ in range(size // len(chunk)):
            await client.send_all(chunk)
        await wait_until(lambda: deaf.accepted >= 1, "the write upstream")
        await trio.sleep(0.2)
        await client.aclose()  # gone while the gateway writes the body to the first try's target
        await trio.sleep(WRITE_TIMEOUT_S + PAST_S)  # past the first try's write_timeout (its last write came before)
    assert deaf.accepted == 1


LC_TIMEOUT = 10


class Holder:
    """An HTTP/1.1 upstream on 127.0.0.1 that answers "<name>" to every request; one whose path starts with /hold
    after `hold` seconds. With `once`, it stops listening after its first connection (later connects are refused)
    while that connection is served on."""

    def __init__(self, name: str, hold: float = 4.0, once: bool = False) -> None:
        self.name = name
        self.hold = hold
        self.once = once
        self.port = 0
        self.paths: list[str] = []

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:  # noqa: ANN001
        sock = await _listening()
        self.port = sock.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started(self.port)
            try:
                while True:
                    conn, _ = await sock.accept()
                    nursery.start_soon(self._serve, conn)
                    if self.once:
                        sock.close()
                        return
            finally:
                sock.close()

    async def _serve(self, conn) -> None:  # noqa: ANN001
        with conn:
            data = b""
            try:
                while True:
                    while b"\r\n\r\n" not in data:
                        more = await conn.recv(65536)
                        if not more:
                            return
                        data += more
                    head, _, data = data.partition(b"\r\n\r\n")
                    path = head.split(b" ", 2)[1].decode()
                    self.paths.append(path)
                    if path.startswith("/hold"):
                        await trio.sleep(self.hold)
                    body = self.name.encode()
                    await conn.send(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            except OSError:
                return


async def test_least_connections_keeps_the_count_of_a_request_in_flight_when_another_connect_to_its_target_fails(
        nursery, gateway):
    """Each try gives back only the count it took: Kong's least-connections counts an address when getPeer picks
    it (kong/runloop/balancer/least_connections.lua getPeer: `updateConnectionCount(self.binaryHeap, address, 1)`)
    and gives that count back on the retry or at the end (releaseHandleAddress), a refused connect included.

    A (index 0) holds /hold-1 and then refuses connects; B holds /hold-2. One request in flight each: the tie goes
    to A, whose connect is refused (502, retries 0). A and B still have one request each in flight and A was picked
    last, so the next request goes to B (least_connections.py: the pass of the one served least), a 200. With A's
    count taken away by the refused connect, A (0 in flight) is picked again and refuses: a 502."""
    a, b = Holder("A", once=True), Holder("B")
    await nursery.start(a.serve)
    await nursery.start(b.serve)
    port = await gateway({"services": [service("svc", "http://pair", retries=0, connect_timeout=2000)],
                          "upstreams": [upstream("pair", [a.port, b.port], algorithm="least-connections")]})
    with trio.fail_after(LC_TIMEOUT):
        async with trio.open_nursery() as held:
            held.start_soon(request, port, "GET", "/hold-1")
            await wait_until(lambda: "/hold-1" in a.paths + b.paths, "the first request upstream")
            held.start_soon(request, port, "GET", "/hold-2")
            await wait_until(lambda: "/hold-2" in a.paths + b.paths, "the second request upstream")
            assert (a.paths, b.paths) == (["/hold-1"], ["/hold-2"])
            refused = await request(port, "GET", "/third")  # the tie: A, which refuses
            assert refused.status == 502, (refused.status, refused.body)
            reply = await request(port, "GET", "/fourth")
            assert (reply.status, reply.body) == (200, b"B"), (reply.status, reply.body)
            held.cancel_scope.cancel()


# --- write_timeout: between two writes, never over a whole body (nginx's proxy_send_timeout) --------------------------


class SlowLink:
    """An upstream behind a slow but steady link: small segments (MSS 536) and a small receive buffer (SO_RCVBUF
    4096, inherited by the accepted connections), 4 KiB read every 10 ms. A body goes through at some 400 KB/s, the
    sender's socket writable again every few tenths of a second (measured: at most ~0.35 s between two writes that
    go through), so no wait for the upstream to take more lasts anywhere near a second. It answers 200 once it has
    the whole body (Content-Length), and notes each body's size."""

    def __init__(self) -> None:
        self.port = 0
        self.connections = 0
        self.bodies: list[int] = []

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:  # noqa: ANN001
        sock = await _listening(rcvbuf=4096, mss=536)
        self.port = sock.getsockname()[1]
        await _serve_each(sock, self._one, task_status)

    async def _one(self, conn) -> None:  # noqa: ANN001
        self.connections += 1
        with conn:
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    more = await conn.recv(4096)
                    if not more:
                        return
                    data += more
                head, _, body = data.partition(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                while len(body) < length:
                    await trio.sleep(0.01)
                    more = await conn.recv(4096)
                    if not more:
                        return  # (the gateway gave up on the request)
                    body += more
                self.bodies.append(len(body))
                await conn.send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
            except OSError:
                return


async def test_write_timeout_runs_between_two_writes_of_a_body_a_plugin_set(nursery, gateway):
    """nginx's proxy_send_timeout (Kong sets it from the service's write_timeout: kong/init.lua balancer,
    `set_timeouts(connect_timeout, send_timeout, read_timeout)`) bounds each wait for the upstream to take more of
    the request, not the whole request: ngx_http_upstream_send_request runs on every write event of the upstream
    connection and, when the request is not all written yet, re-arms the timer (line 2113-2115: `if
    (!c->write->ready || u->request_body_blocked) { ngx_add_timer(c->write, u->conf->send_timeout); }`); only a
    write event that is itself the timer's ends the try (ngx_http_upstream_send_request_handler, line 2322: `if
    (c->write->timedout) { ngx_http_upstream_next(r, u, NGX_HTTP_UPSTREAM_FT_TIMEOUT);`). nginx's documentation:
    "The timeout is set only between two successive write operations, not for the transmission of the whole
    request."

    A PUT whose JSON body request-transformer rewrites (900 KB, in memory: ngx.req.set_body_data) goes to an
    upstream that takes it steadily in ~2.5 s, never pausing a second between two writes; write_timeout is 1 s. nginx
    delivers it (200). The gateway writes an in-memory body over 8 KiB (request_buffer.BodyInHand) in pieces of
    8 KiB, the deadline re-armed for each: one write_timeout over the whole body cut the try at 1 s (a 504, and with
    retries the PUT sent again and cut again). The same body from the client with no plugin (spooled,
    sent in 8 KiB pieces, the deadline re-armed for each) reaches the same upstream whole: 200 in ~3 s."""
    up = SlowLink()
    await nursery.start(up.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{up.port}", write_timeout=1000, retries=0)],
                          "plugins": [{"name": "request-transformer", "config": {"add": {"body": ["b:1"]}}}]})
    body = json.dumps({"a": "x" * 900_000}).encode()
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "PUT", "/x", body=body, headers=[("content-type", "application/json")])
    assert (reply.status, reply.body) == (200, b"ok"), (reply.status, reply.body[:80])
    assert up.connections == 1
    assert len(up.bodies) == 1 and up.bodies[0] > 900_000
