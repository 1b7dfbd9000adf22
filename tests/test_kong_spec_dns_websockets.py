"""Name resolution of upstream targets and WebSocket proxying against Kong's own spec tests of
spec/02-integration/05-proxy/ (05-dns_spec, 09-websockets_spec) and the Kong source they exercise
(kong/runloop/balancer/init.lua, targets.lua and balancers.lua; kong/resty/dns/client.lua; kong/runloop/handler.lua;
kong/init.lua; nginx's ngx_http_upstream_process_upgraded, which relays Kong's upgraded connections), once per codec
where a gateway runs.

Names are resolved by the gateway's DNS client from a DNS server of the test (tests/dns_server.py Names), so a test
decides what a name's addresses are, and how a name fails. The tests marked xfail need changes outside the files
this audit could change (or to a behaviour the README documents): each states Kong's behaviour and turns into a
failure (strict) once the change is made."""

from __future__ import annotations

import base64
import os
import struct
from typing import Any

import pytest
import trio
from backends import EchoBackend, free_port, request, serve_on_addresses, service
from dns_server import Names, serve_names
from test_websocket import CLOSE, TEXT, accept_for, frame, handshake, parse_frames, read_eof, read_frames, read_head
from tls_helpers import Pki

from gateway import worker
from gateway.bus import protocol as p
from gateway.config.schema import GatewaySettings
from gateway.discovery import dns as discovery_dns
from gateway.discovery.dns import run_dns
from gateway.discovery.types import TargetInfo
from gateway.dns.process import serving
from gateway.http.kong_errors import NO_PEER

TIMEOUT = 10
PING, PONG = 0x9, 0xA
# The tunnel tests' timeout (read_timeout, write_timeout or send_timeout) and their 15 events, one every TALK_EVERY_S:
# the events last TALK_S, nearly twice the timeout, and each comes well within it of the one before.
TUNNEL_TIMEOUT_MS = 400
TALK_EVERY_S = 0.05
TALK_S = 15 * TALK_EVERY_S


# --- 05-dns_spec: a service's host name -----------------------------------------------------------------------------


async def _accept_and_close(accepted: list[int], task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """05-dns_spec's bad_tcp_server: accepts each connection and closes it at once, counting them."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])

    async def handler(stream: trio.SocketStream) -> None:
        accepted.append(1)
        await trio.aclose_forcefully(stream)

    await trio.serve_listeners(handler, listeners)


async def test_dns_spec_retries_a_server_that_closes_each_connection_is_502_after_retries_plus_one(nursery, gateway):
    """05-dns_spec "validates the number of retries": retries 3, a server that accepts and closes each connection:
    502, and the server saw the first try and 3 retries."""
    accepted: list[int] = []
    port = await nursery.start(_accept_and_close, accepted)
    gw = await gateway({"services": [service("tests-retries", f"http://127.0.0.1:{port}",
                                             [{"hosts": ["retries.test"]}], retries=3)]})
    with trio.fail_after(TIMEOUT):
        reply = await request(gw, "GET", "/", host="retries.test")
    assert reply.status == 502
    assert len(accepted) == 4


async def _unresolvable_service(nursery, gateway, empty: bool = False, failing: bool = False) -> tuple[int, Names]:  # noqa: ANN001
    """A service whose host the test's DNS server does not know (NXDOMAIN), knows without an address (`empty`) or
    fails on (`failing`: SERVFAIL)."""
    names = await serve_names(nursery)
    host = "nowthisdoesnotexistatall.test"
    if empty:
        names.names[host] = []
    if failing:
        names.failing.add(host)
    gw = await gateway({"services": [service("tests-retries", f"http://{host}:80/exist",
                                             [{"hosts": ["retries.test"], "protocols": ["http"]}])]},
                       **names.settings)
    return gw, names


ONE_LOOK_UP = 3  # the queries of one look-up of a name without records: SRV, A and CNAME (Kong's dns_order)


async def test_dns_spec_upstream_resolve_failure_is_503_name_resolution_failed(nursery, gateway):
    """05-dns_spec "upstream resolve failure": a service whose host does not resolve (and names no upstream) is 503,
    Kong's balancer's kong.response.error(503, "name resolution failed") (kong/runloop/balancer/init.lua execute:
    "3 name error" or "101 empty record received")."""
    gw, _ = await _unresolvable_service(nursery, gateway)
    with trio.fail_after(TIMEOUT):
        reply = await request(gw, "GET", "/", host="retries.test")
    assert reply.status == 503
    assert reply.header("content-type") == "application/json; charset=utf-8"
    assert reply.json() == {"message": "name resolution failed", "request_id": reply.header("x-kong-request-id")}


async def test_a_name_that_does_not_resolve_is_looked_up_once_and_answered_as_kongs_own_response(nursery, gateway):
    """kong/runloop/handler.lua access.after: the first balancer.execute (the name's look-up) runs in the access
    phase; its failure is kong.response.error there, before Kong.access sets KONG_PROXIED: no retries (each of which
    would look the name up again), and the answer is one of Kong's own (X-Kong-Response-Latency; no Via,
    X-Kong-Upstream-Latency or X-Kong-Proxy-Latency, which the header filter gives a proxied request only)."""
    gw, names = await _unresolvable_service(nursery, gateway)
    with trio.fail_after(TIMEOUT):
        reply = await request(gw, "GET", "/", host="retries.test")
    assert reply.status == 503
    assert names.asked("nowthisdoesnotexistatall.test") == ONE_LOOK_UP
    assert reply.header("x-kong-response-latency") is not None
    assert [reply.header(h) for h in ("via", "x-kong-upstream-latency", "x-kong-proxy-latency")] == [None] * 3


async def test_a_resolver_server_failure_is_kongs_500_with_the_dns_clients_words_looked_up_once(nursery, gateway):
    """kong/runloop/balancer/init.lua execute: a look-up that fails otherwise than "3 name error" or "101 empty
    record received" returns status 500, which kong/runloop/handler.lua balancer_execute words "failed the initial
    dns/balancer resolve for '<host>' with: <the error>": a SERVFAIL is Kong's DNS client's "dns server error: 2
    server failure" (kong/resty/dns/client.lua: the rcode and resty.dns.resolver's text for it). Answered in the
    access phase, as a name error is: one look-up, Kong's own answer."""
    gw, names = await _unresolvable_service(nursery, gateway, failing=True)
    with trio.fail_after(TIMEOUT):
        reply = await request(gw, "GET", "/", host="retries.test")
    assert reply.status == 500
    assert reply.header("content-type") == "application/json; charset=utf-8"
    assert reply.json() == {"message": "failed the initial dns/balancer resolve for 'nowthisdoesnotexistatall.test' "
                                       "with: dns server error: 2 server failure",
                            "request_id": reply.header("x-kong-request-id")}
    assert names.asked("nowthisdoesnotexistatall.test") == ONE_LOOK_UP
    assert reply.header("x-kong-response-latency") is not None
    assert reply.header("via") is None


async def test_an_empty_answer_is_kongs_503_name_resolution_failed(nursery, gateway):
    """A name with no address is Kong's "dns client error: 101 empty record received", which
    kong/runloop/balancer/init.lua execute answers 503 "name resolution failed" as a name error."""
    gw, names = await _unresolvable_service(nursery, gateway, empty=True)
    with trio.fail_after(TIMEOUT):
        reply = await request(gw, "GET", "/", host="retries.test")
    assert reply.status == 503
    assert reply.json()["message"] == "name resolution failed"
    assert names.asked("nowthisdoesnotexistatall.test") == ONE_LOOK_UP


async def test_an_upstream_target_name_resolved_per_connection_that_does_not_resolve_takes_no_try(nursery, gateway):
    """An upstream's target names resolved connection by connection (no discovery: `gateway run`): one without an
    address is not a try (Kong's balancer gives a name that does not resolve no weight, and never picks it), so with
    retries 0 every request reaches the other target; with no target resolving, Kong's 503 "failure to get a peer
    from the ring-balancer"."""
    names = await serve_names(nursery, {"mcp.test": ["127.0.0.2"]})
    port, _ = await serve_on_addresses(nursery, ["127.0.0.2"], EchoBackend)
    targets = [{"target": f"gone.test:{port}"}, {"target": f"mcp.test:{port}"}]
    gw = await gateway({"upstreams": [{"name": "up", "targets": targets},
                                      {"name": "lost", "targets": [{"target": "gone.test:80"},
                                                                   {"target": "lost.test:80"}]},
                                      {"name": "alone", "targets": [{"target": "gone.test:80"}]}],
                        "services": [service("svc", "http://up", [{"paths": ["/up"]}], retries=0),
                                     service("none", "http://lost", [{"paths": ["/lost"]}]),
                                     service("one", "http://alone", [{"paths": ["/alone"]}])]}, **names.settings)
    with trio.fail_after(TIMEOUT):
        replies = [await request(gw, "GET", "/up?framing=close") for _ in range(4)]
        lost = await request(gw, "GET", "/lost")
        alone = await request(gw, "GET", "/alone")  # an upstream of one target: its balancer's answer too
    assert [r.status for r in replies] == [200] * 4
    for reply in (lost, alone):
        assert reply.status == 503
        assert reply.json() == {"message": NO_PEER, "request_id": reply.header("x-kong-request-id")}
        assert reply.header("via") is None


# --- kong/runloop/balancer: an upstream's target names ---------------------------------------------------------------


class _Captured(worker.SharedState):
    """The worker's SharedState, kept where the test can reach it (the keeper's messages go to it)."""

    last: _Captured | None = None

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        _Captured.last = self


async def _discovered_gateway(nursery, gateway, monkeypatch, names: Names, targets: list[str],  # noqa: ANN001
                              settings: dict[str, Any] | None = None, reports: list[list[TargetInfo]] | None = None,
                              **fields) -> int:  # noqa: ANN003
    """A gateway whose upstream `up` has `targets` (host:port), resolved from `names` as the discovery service
    resolves them (gateway.discovery.dns.run_dns) and handed to the worker as the keeper hands them (each hand-over
    also appended to `reports`, when given)."""
    monkeypatch.setattr(worker, "SharedState", _Captured)
    gw = await gateway({"upstreams": [{"name": "up", "targets": [{"target": t} for t in targets]}],
                        "services": [service("svc", "http://up", **fields)]}, **names.settings, **(settings or {}))
    shared = _Captured.last
    assert shared is not None
    infos = [TargetInfo(t.rpartition(":")[0], int(t.rpartition(":")[2])) for t in targets]

    def hand_over(up: str, found: list[TargetInfo]) -> None:
        if reports is not None:
            reports.append(found)
        shared.on_message(p.UpstreamTargets(upstream=up, targets=found))

    await nursery.start(run_dns, "up", infos, hand_over)
    return gw


async def test_a_target_name_that_does_not_resolve_gets_no_traffic(nursery, gateway, monkeypatch):
    """kong/runloop/balancer/targets.lua queryDns: a target name whose query fails gets an empty record, so it has
    no address and no weight (balancers.lua addAddress / changeWeight): the balancer never picks it, and the
    upstream's other targets take every request (with retries 0, not one is lost to the name)."""
    port, _ = await serve_on_addresses(nursery, ["127.0.0.2"], EchoBackend)
    names = await serve_names(nursery, {"mcp.test": ["127.0.0.2"]})
    gw = await _discovered_gateway(nursery, gateway, monkeypatch, names, [f"mcp.test:{port}", f"gone.test:{port}"],
                                   retries=0)
    with trio.fail_after(TIMEOUT):
        replies = [await request(gw, "GET", "/x") for _ in range(6)]
    assert [r.status for r in replies] == [200] * 6
    assert {r.header("x-backend") for r in replies} == {"127.0.0.2"}


async def test_an_upstream_whose_target_names_all_fail_is_503_failure_to_get_a_peer(nursery, gateway, monkeypatch):
    """kong/runloop/balancer/balancers.lua: with no target resolved, the balancer's total weight is 0, so it is
    unhealthy and getPeer says "Balancer is unhealthy": init.lua execute's 503 "failure to get a peer from the
    ring-balancer" (not "name resolution failed", which is a service host's own look-up)."""
    names = await serve_names(nursery)
    gw = await _discovered_gateway(nursery, gateway, monkeypatch, names, ["gone.test:8080", "lost.test:8080"])
    with trio.fail_after(TIMEOUT):
        reply = await request(gw, "GET", "/x")
    assert reply.status == 503
    assert reply.json() == {"message": NO_PEER, "request_id": reply.header("x-kong-request-id")}


async def test_a_target_name_that_resolves_later_gets_its_share(nursery, gateway, monkeypatch):
    """targets.lua: a failed name is queried again (after REQUERY_INTERVAL, here shortened), and once it resolves
    its addresses are added with the name's weight."""
    monkeypatch.setattr(discovery_dns, "REQUERY_S", 0.1)
    monkeypatch.setattr(discovery_dns, "MIN_RENEW_S", 0.1)
    port, _ = await serve_on_addresses(nursery, ["127.0.0.2", "127.0.0.3"], EchoBackend)
    names = await serve_names(nursery, {"mcp.test": ["127.0.0.2"]})
    reports: list[list[TargetInfo]] = []
    gw = await _discovered_gateway(nursery, gateway, monkeypatch, names, [f"mcp.test:{port}", f"late.test:{port}"],
                                   {"dns_not_found_ttl_s": 0.1}, reports, retries=0)
    with trio.fail_after(TIMEOUT):
        assert {(await request(gw, "GET", "/x?framing=close")).header("x-backend") for _ in range(4)} == {"127.0.0.2"}
        names.names["late.test"] = ["127.0.0.3"]
        while not any(t.host == "127.0.0.3" and t.weight for t in reports[-1]):  # queried again, handed over
            await trio.sleep(0.02)
        seen = [(await request(gw, "GET", "/x?framing=close")).header("x-backend") for _ in range(4)]
    assert sorted(seen) == ["127.0.0.2", "127.0.0.2", "127.0.0.3", "127.0.0.3"]


async def test_a_target_name_that_stops_existing_loses_its_addresses_but_a_failing_resolver_keeps_them(
        nursery, autojump_clock):
    """kong/resty/dns/client.lua cacheinsert: a server failure or an empty answer leaves a stale record with data in
    place (for up to dns_stale_ttl), but a "3 name error" (NXDOMAIN) replaces it, so targets.lua queryDns gets the
    error and removes the name's addresses at its next query."""
    names = await serve_names(nursery, {"kept.test": ["127.0.0.2"], "gone.test": ["127.0.0.3"]}, ttl=5)
    reports: list[list[TargetInfo]] = []
    async with serving(GatewaySettings(**names.settings)), trio.open_nursery() as inner:
        await inner.start(run_dns, "up", [TargetInfo("kept.test", 80), TargetInfo("gone.test", 80)],
                          lambda _, found: reports.append(found))
        names.failing.add("kept.test")  # its nameserver fails: stale data is used
        del names.names["gone.test"]  # NXDOMAIN: the name is gone
        await trio.sleep(12)  # asked again once the records expire (stale, refreshed), then again
        inner.cancel_scope.cancel()
    assert [t.host for t in reports[-1] if t.weight] == ["127.0.0.2"]


# --- 09-websockets_spec -------------------------------------------------------------------------------------------


class KongWsServer:
    """A WebSocket server as Kong's mock upstream is one for 09-websockets_spec: answers the handshake, then echoes
    each text frame and answers each ping with a pong of the same payload; a close is answered and ends it.
    `upgrade`: its 101's Upgrade. `silent`: reads and records, answers nothing. `talk_every`: sends a text frame
    that often whatever happens (`talk_size` bytes more than "tick N") and (with `deaf`) reads nothing, until
    `quiet` is set."""

    def __init__(self, silent: bool = False, talk_every: float = 0.0, deaf: bool = False,
                 upgrade: bytes = b"websocket", talk_size: int = 0) -> None:
        self.silent = silent
        self.talk_size = talk_size
        self.upgrade = upgrade
        self.talk_every = talk_every
        self.deaf = deaf
        self.quiet = trio.Event()
        self.port = 0
        self.heads: list[tuple[bytes, dict[bytes, bytes]]] = []
        self.received: list[tuple[int, bytes]] = []
        self.eof = trio.Event()
        self.last_tick_at = 0.0  # when the sending of the last text frame of `talk_every` began

    async def serve(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            buf = bytearray()
            start, headers = await read_head(stream, buf)
            self.heads.append((start, headers))
            await stream.send_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: %b\r\nConnection: Upgrade\r\n"
                                  b"Sec-WebSocket-Accept: %b\r\n\r\n"
                                  % (self.upgrade, accept_for(headers[b"sec-websocket-key"])))
            async with trio.open_nursery() as nursery:
                if self.talk_every:
                    nursery.start_soon(self._talk, stream)
                if self.deaf:
                    await self.quiet.wait()
                    await trio.sleep(60)  # neither reads nor speaks: until the gateway closes
                await self._read(stream, buf)
                nursery.cancel_scope.cancel()
            self.eof.set()

    async def _talk(self, stream: trio.SocketStream) -> None:
        n = 0
        try:
            while not self.quiet.is_set():
                self.last_tick_at = trio.current_time()
                await stream.send_all(frame(TEXT, b"tick %d" % n + b"." * self.talk_size, mask=False))
                n += 1
                await trio.sleep(self.talk_every)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _read(self, stream: trio.SocketStream, buf: bytearray) -> None:
        try:
            while True:
                for opcode, payload in parse_frames(buf):
                    self.received.append((opcode, payload))
                    if opcode == CLOSE:
                        await stream.send_all(frame(CLOSE, payload, mask=False))
                        return
                    if not self.silent:
                        await stream.send_all(frame(PONG if opcode == PING else opcode, payload, mask=False))
                data = await stream.receive_some(65536)
                if not data:
                    return
                buf += data
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def _ws_gateway(nursery, gateway, server: KongWsServer | None = None, **settings) -> tuple[KongWsServer, int]:  # noqa: ANN001, ANN003
    """09-websockets_spec's setup: a service with path /ws, a route /up-ws (http, strip_path)."""
    server = server or KongWsServer()
    await nursery.start(server.serve)
    fields = {k: settings.pop(k) for k in ("read_timeout", "write_timeout") if k in settings}
    port = await gateway({"services": [service("ws", f"http://127.0.0.1:{server.port}/ws",
                                               [{"protocols": ["http", "https"], "paths": ["/up-ws"],
                                                 "strip_path": True}], **fields)]}, **settings)
    return server, port


def _spec_handshake(port: int, key: bytes) -> bytes:
    """09-websockets_spec check_headers' request, byte for byte."""
    return (b"GET /up-ws HTTP/1.1\r\nUpgrade: websocket\r\nHost: 127.0.0.1:%d\r\nSec-WebSocket-Key: %b\r\n"
            b"Sec-WebSocket-Version: 13\r\nConnection: Upgrade\r\n\r\n" % (port, key))


async def _spec_head(nursery, gateway) -> tuple[bytes, bytes, KongWsServer]:  # noqa: ANN001
    """09-websockets_spec check_headers through the gateway: (the 101's head as it came, the key, the server)."""
    server, port = await _ws_gateway(nursery, gateway)
    key = base64.b64encode(os.urandom(16))
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(_spec_handshake(port, key))
            head = b""
            while b"\r\n\r\n" not in head:
                head += await stream.receive_some(65536)
    return head.partition(b"\r\n\r\n")[0] + b"\r\n", key, server


async def test_websockets_spec_returns_correct_headers_on_handshake_with_kong(nursery, gateway):
    """09-websockets_spec "returns correct headers on handshake with Kong": the 101's head has
    "HTTP/1.1 101 Switching Protocols", `Connection: upgrade` (nginx's own), `Upgrade: websocket` and Kong's
    `Via: 1.1 <server token>` (the header filter's, the request being proxied); the upstream got the service path
    and Kong's Upgrade and Connection. (Header names compared in any case here; the next test takes them as the spec
    does.)"""
    head, key, server = await _spec_head(nursery, gateway)
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 101 Switching Protocols"
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(b":") for line in lines[1:-1])}
    assert headers[b"connection"] == b"upgrade"
    assert headers[b"upgrade"] == b"websocket"
    assert headers[b"via"].startswith(b"1.1 mcp-gateway/")
    assert headers[b"sec-websocket-accept"] == accept_for(key)
    start_line, seen = server.heads[0]
    assert start_line == b"GET /ws HTTP/1.1"
    assert (seen[b"upgrade"], seen[b"connection"]) == (b"websocket", b"keep-alive, Upgrade")


@pytest.mark.xfail(strict=True, reason="the codecs relay the upstream's header names in lower case (its Upgrade "
                   "line is `upgrade: websocket`), as the README says of every relayed name")
async def test_websockets_spec_handshake_headers_byte_for_byte(nursery, gateway):
    """09-websockets_spec check_headers looks for the literal text `Connection: upgrade` (nginx's
    ngx_http_header_filter writes it so for a 101) and `Upgrade: websocket` (the upstream's header, which nginx
    passes as the upstream wrote it)."""
    head, _, _ = await _spec_head(nursery, gateway)
    assert b"\r\nConnection: upgrade\r\n" in head
    assert b"\r\nUpgrade: websocket\r\n" in head


async def _text_and_ping(stream: trio.abc.Stream) -> None:
    """09-websockets_spec send_text_and_get_echo and send_ping_and_get_pong on one connection."""
    key = base64.b64encode(os.urandom(16))
    await stream.send_all(handshake(key, path=b"/up-ws"))
    buf = bytearray()
    assert (await read_head(stream, buf))[0].startswith(b"HTTP/1.1 101 ")
    await assert_text_ping_and_close(stream, buf)


async def assert_text_ping_and_close(stream: trio.abc.Stream, buf: bytearray) -> None:
    """The spec's exchange over an open WebSocket: a text echoed, a ping answered with its pong, a close echoed and
    the connection's end."""
    text = b'{"message":"hello websocket"}'
    await stream.send_all(frame(TEXT, text, mask=True))
    assert await read_frames(stream, buf, 1) == [(TEXT, text)]
    ping = b'{"message":"give me a pong"}'
    await stream.send_all(frame(PING, ping, mask=True))
    assert await read_frames(stream, buf, 1) == [(PONG, ping)]
    close = struct.pack("!H", 1000)
    await stream.send_all(frame(CLOSE, close, mask=True))
    assert await read_frames(stream, buf, 1) == [(CLOSE, close)]
    assert await read_eof(stream) == b""


async def test_websockets_spec_sends_and_gets_text_and_plays_ping_pong_with_kong(nursery, gateway):
    """09-websockets_spec "sends and gets text with Kong", "plays ping-pong with Kong"."""
    server, port = await _ws_gateway(nursery, gateway)
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await _text_and_ping(stream)
    assert [op for op, _ in server.received] == [TEXT, PING, CLOSE]


async def test_websockets_spec_text_and_ping_pong_with_kong_under_https(nursery, gateway, tmp_path):
    """09-websockets_spec "sends and gets text with kong under HTTPS", "plays ping-pong with kong under HTTPS"."""
    pki = Pki()
    cert, key = pki.files(tmp_path, "default", "default.test")
    tls_port = free_port()
    server, _ = await _ws_gateway(nursery, gateway, listen=[f"127.0.0.1:{tls_port} ssl"], ssl_cert=cert,
                                  ssl_cert_key=key)
    with trio.fail_after(TIMEOUT):
        stream = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", tls_port), pki.client_context(),
                                server_hostname="default.test", https_compatible=True)
        async with stream:
            await _text_and_ping(stream)
    assert server.heads[0][1][b"x-forwarded-proto"] == b"https"


async def test_a_client_that_keeps_talking_keeps_a_tunnel_open_though_the_upstream_is_silent(nursery, gateway):
    """nginx's ngx_http_upstream_process_upgraded (Kong's upgraded connections) runs on every event of either side
    and re-arms the upstream's read timer (proxy_read_timeout, the service's read_timeout) each time: the tunnel
    ends after read_timeout without an event, not after read_timeout of upstream silence while the client talks."""
    server, port = await _ws_gateway(nursery, gateway, KongWsServer(silent=True), read_timeout=TUNNEL_TIMEOUT_MS)
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(handshake(base64.b64encode(os.urandom(16)), path=b"/up-ws"))
            assert (await read_head(stream, bytearray()))[0].startswith(b"HTTP/1.1 101 ")
            for i in range(15):  # TALK_S of a message every TALK_EVERY_S: nearly twice read_timeout
                stopped = trio.current_time()  # (at the last, when the last event began)
                await stream.send_all(frame(TEXT, b"still here %d" % i, mask=True))
                await trio.sleep(TALK_EVERY_S)
            assert not server.eof.is_set()
            assert await read_eof(stream) == b""  # ... and read_timeout after the last, the tunnel ends
            waited = trio.current_time() - stopped
    assert len(server.received) == 15
    assert 0.2 <= waited < 3, waited


async def test_an_upstream_that_keeps_talking_keeps_a_tunnel_open_though_it_reads_nothing(nursery, gateway):
    """ngx_http_upstream_process_upgraded re-arms the upstream's write timer (proxy_send_timeout, the service's
    write_timeout) on every event too: a write to the upstream that waits ends the tunnel only after write_timeout
    without an event, and each frame the upstream sends is one."""
    server, port = await _ws_gateway(nursery, gateway, KongWsServer(talk_every=TALK_EVERY_S, deaf=True),
                                     write_timeout=TUNNEL_TIMEOUT_MS, read_timeout=60_000)
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(handshake(base64.b64encode(os.urandom(16)), path=b"/up-ws"))
            buf = bytearray()
            assert (await read_head(stream, buf))[0].startswith(b"HTTP/1.1 101 ")
            chunk = frame(TEXT, b"x" * 60000, mask=True)

            async def flood() -> None:  # until the gateway's writes to the upstream wait
                try:
                    for _ in range(2000):
                        await stream.send_all(chunk)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

            async with trio.open_nursery() as flooding:
                flooding.start_soon(flood)
                ticks = await read_frames(stream, buf, 15)  # TALK_S of ticks, the tunnel's writes waiting all along
                assert ticks[-1] == (TEXT, b"tick 14")
                server.quiet.set()  # (no tick after this: the last event is the last tick the upstream sent)
                rest = await read_eof(stream)  # ... and write_timeout after the last tick, the tunnel ends
                waited = trio.current_time() - server.last_tick_at
                flooding.cancel_scope.cancel()
    assert len(parse_frames(bytearray(rest))) <= 1
    assert 0.2 <= waited < 3, waited


async def test_a_client_that_keeps_talking_keeps_a_tunnel_open_though_it_reads_nothing(nursery, gateway):
    """ngx_http_upstream_process_upgraded re-arms the client's write timer (send_timeout) on every event as well: a
    write to a client that reads nothing ends the connection only after send_timeout without an event, and each
    frame the client sends is one."""
    # (ticks of 65 kB a millisecond fill the buffers to the client in about a tenth of a second)
    server, port = await _ws_gateway(nursery, gateway, KongWsServer(silent=True, talk_every=0.001, talk_size=65000),
                                     send_timeout_s=TUNNEL_TIMEOUT_MS / 1000)
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(handshake(base64.b64encode(os.urandom(16)), path=b"/up-ws"))
            # (the 101 and the first ticks are left unread: the gateway's writes to the client soon wait)
            for i in range(15):  # TALK_S of a message every TALK_EVERY_S: nearly twice send_timeout
                stopped = trio.current_time()  # (at the last, when the last event began)
                await stream.send_all(frame(TEXT, b"still here %d" % i, mask=True))
                await trio.sleep(TALK_EVERY_S)
            assert not server.eof.is_set()
            await server.eof.wait()  # ... and send_timeout after the last, the gateway gives up on the client
            waited = trio.current_time() - stopped
    server.quiet.set()
    assert len(server.received) == 15
    assert 0.2 <= waited < 3, waited


async def test_upgrade_websocket_is_passed_on_though_connection_does_not_name_it(nursery, gateway):
    """kong/runloop/handler.lua access.after: `Upgrade: websocket` (any case) alone sets upstream_connection
    "keep-alive, Upgrade" and upstream_upgrade "websocket", whatever Connection says; nginx tunnels a 101 to a
    request with an Upgrade header (ngx_http_proxy_process_header: r->headers_in.upgrade)."""
    server, port = await _ws_gateway(nursery, gateway)
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(handshake(base64.b64encode(os.urandom(16)), path=b"/up-ws",
                                            connection=b"keep-alive"))
            buf = bytearray()
            assert (await read_head(stream, buf))[0].startswith(b"HTTP/1.1 101 ")
            await stream.send_all(frame(TEXT, b"through", mask=True))
            assert await read_frames(stream, buf, 1) == [(TEXT, b"through")]
    assert (server.heads[0][1][b"upgrade"], server.heads[0][1][b"connection"]) == (b"websocket", b"keep-alive, Upgrade")


async def test_upgrade_websocket_without_any_connection_header_is_tunnelled(nursery, gateway):
    """kong/runloop/handler.lua access.after reads the Upgrade header alone: a handshake with no Connection header at
    all still goes upstream with Kong's `Upgrade: websocket` and `Connection: keep-alive, Upgrade`, and its 101
    makes a tunnel."""
    server, port = await _ws_gateway(nursery, gateway)
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(handshake(base64.b64encode(os.urandom(16)), path=b"/up-ws")
                                  .replace(b"Connection: Upgrade\r\n", b""))
            buf = bytearray()
            assert (await read_head(stream, buf))[0].startswith(b"HTTP/1.1 101 ")
            await stream.send_all(frame(TEXT, b"through", mask=True))
            assert await read_frames(stream, buf, 1) == [(TEXT, b"through")]
    assert (server.heads[0][1][b"upgrade"], server.heads[0][1][b"connection"]) == (b"websocket", b"keep-alive, Upgrade")


async def test_the_upstream_gets_kongs_upgrade_websocket_in_lower_case(nursery, gateway):
    """kong/runloop/handler.lua access.after: var.upstream_upgrade = "websocket", whatever the client's case."""
    server, port = await _ws_gateway(nursery, gateway)
    key = base64.b64encode(os.urandom(16))
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(handshake(key, path=b"/up-ws").replace(b"Upgrade: websocket", b"Upgrade: WebSocket"))
            assert (await read_head(stream, bytearray()))[0].startswith(b"HTTP/1.1 101 ")
    assert server.heads[0][1][b"upgrade"] == b"websocket"


async def test_a_101_that_upgrades_to_another_protocol_loses_its_upgrade_header(nursery, gateway):
    """kong/runloop/handler.lua header_filter.before: an upstream Upgrade other than the one Kong asked for
    (upstream_upgrade, "websocket") is removed from the response."""
    _, port = await _ws_gateway(nursery, gateway, KongWsServer(upgrade=b"h2c"))
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(handshake(base64.b64encode(os.urandom(16)), path=b"/up-ws"))
            start_line, headers = await read_head(stream, bytearray())
    assert start_line.startswith(b"HTTP/1.1 101 ")
    assert b"upgrade" not in headers


async def test_a_101_whose_upgrade_is_websocket_in_another_case_keeps_it(nursery, gateway):
    """kong/runloop/handler.lua header_filter.before compares the upstream's Upgrade with what it asked for in lower
    case: `WebSocket` is the same upgrade, and passes as the upstream wrote it."""
    _, port = await _ws_gateway(nursery, gateway, KongWsServer(upgrade=b"WebSocket"))
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(handshake(base64.b64encode(os.urandom(16)), path=b"/up-ws"))
            start_line, headers = await read_head(stream, bytearray())
    assert start_line.startswith(b"HTTP/1.1 101 ")
    assert headers[b"upgrade"] == b"WebSocket"
    assert headers[b"connection"] == b"upgrade"
