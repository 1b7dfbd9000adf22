"""WebSocket (HTTP/1.1 Upgrade) requests proxied as Kong proxies them, once per codec: the handshake reaches the
backend with Upgrade and `Connection: keep-alive, Upgrade`, its 101 reaches the client, then bytes are relayed
both ways until either side closes (or the upstream is silent for the service's read_timeout).

The backend is a small Trio server written here: it answers the handshake (Sec-WebSocket-Accept from the key, as
RFC 6455 4.2.2), sends a greeting frame in the same packet as its 101, then echoes every text frame back, unmasked,
as "echo: <text>"; a close frame is answered with one and the connection closed (other modes: silent after its
101, not reading at all, or refusing or declining the handshake). The last tests take the pieces apart: the detection in
gateway.pipeline.headers and both codecs' side of a switch.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import struct
from types import SimpleNamespace
from typing import Any

import pytest
import trio
from backends import UdpCollector, free_port, service, wait_until
from tls_helpers import Pki

from gateway.http.codec import NEED_DATA, NO_BODY, ProtocolError, Request, Response
from gateway.http.codecs import codec_classes
from gateway.pipeline.forward import _client_headers
from gateway.pipeline.headers import UPGRADE, upstream_request_headers
from gateway.pipeline.tunnel import UPSTREAM_SILENT, UPSTREAM_STUCK

TIMEOUT = 10
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, CLOSE = 0x1, 0x8


def accept_for(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def frame(opcode: int, payload: bytes, mask: bool) -> bytes:
    """One final WebSocket frame (payloads under 64 KiB); a client's is masked (RFC 6455 5.3)."""
    head = bytes([0x80 | opcode])
    bit = 0x80 if mask else 0
    if len(payload) < 126:
        head += bytes([bit | len(payload)])
    else:
        head += bytes([bit | 126]) + struct.pack("!H", len(payload))
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def parse_frames(buf: bytearray) -> list[tuple[int, bytes]]:
    """The complete frames at the start of `buf` (taken out of it), unmasked."""
    frames = []
    while len(buf) >= 2:
        opcode, size, masked, at = buf[0] & 0x0F, buf[1] & 0x7F, buf[1] & 0x80, 2
        if size == 126:
            if len(buf) < 4:
                break
            size, at = struct.unpack("!H", buf[2:4])[0], 4
        key = b""
        if masked:
            key, at = bytes(buf[at:at + 4]), at + 4
        if len(buf) < at + size:
            break
        payload = bytes(buf[at:at + size])
        if masked:
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        del buf[:at + size]
        frames.append((opcode, payload))
    return frames


async def read_head(stream: trio.abc.Stream, buf: bytearray) -> tuple[bytes, dict[bytes, bytes]]:
    """Read a head (request or response) off `stream`; what came after it stays in `buf`. Headers: lower-cased
    names (repeated ones joined with ", ")."""
    while b"\r\n\r\n" not in buf:
        data = await stream.receive_some(65536)
        assert data, f"connection closed before a complete head: {bytes(buf)!r}"
        buf += data
    end = buf.index(b"\r\n\r\n")
    lines = bytes(buf[:end]).split(b"\r\n")
    del buf[:end + 4]
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        headers[name] = headers[name] + b", " + value.strip() if name in headers else value.strip()
    return lines[0], headers


async def read_frames(stream: trio.abc.Stream, buf: bytearray, n: int) -> list[tuple[int, bytes]]:
    frames = parse_frames(buf)
    while len(frames) < n:
        data = await stream.receive_some(65536)
        assert data, f"closed after {frames}"
        buf += data
        frames += parse_frames(buf)
    assert len(frames) == n, frames
    return frames


async def read_eof(stream: trio.abc.Stream) -> bytes:
    """Everything until the peer closes (a reset counts as a close)."""
    out = b""
    try:
        while data := await stream.receive_some(65536):
            out += data
    except trio.BrokenResourceError:
        pass
    return out


class WsBackend:
    """A WebSocket-ish echo server; `mode`: "echo", "silent" (says nothing after its 101), "sink" (nor reads),
    "flood" (sends without pause after its 101), "refuse" (400) or "decline" (426 naming websocket in Upgrade)."""

    def __init__(self, mode: str = "echo", switch: bytes = b"Upgrade: websocket\r\nConnection: Upgrade\r\n") -> None:
        self.mode = mode
        self.switch = switch  # its 101's Upgrade and Connection lines
        self.port = 0
        self.heads: list[tuple[bytes, dict[bytes, bytes]]] = []
        self.received: list[tuple[int, bytes]] = []  # frames from the client, unmasked
        self.eof = trio.Event()  # the gateway closed its side of a tunnel
        self.connections = 0

    async def serve(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.abc.Stream) -> None:
        self.connections += 1
        async with stream:
            buf = bytearray()
            start, headers = await read_head(stream, buf)
            self.heads.append((start, headers))
            if self.mode == "decline":  # RFC 9110 15.5.22: a 426 names the protocol to use in Upgrade
                await stream.send_all(b"HTTP/1.1 426 Upgrade Required\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                                      b"Sec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\r\n")
                return
            if self.mode == "refuse" or b"upgrade" not in headers:
                status = b"400 Bad Request" if self.mode == "refuse" else b"426 Upgrade Required"
                body = b"not a websocket handshake"
                await stream.send_all(b"HTTP/1.1 %b\r\ncontent-length: %d\r\n\r\n%b" % (status, len(body), body))
                return
            accept = accept_for(headers[b"sec-websocket-key"])
            greeting = frame(TEXT, b"hello", mask=False) if self.mode == "echo" else b""
            await stream.send_all(b"HTTP/1.1 101 Switching Protocols\r\n%bSec-WebSocket-Accept: %b\r\nX-Backend: ws\r\n"
                                  b"\r\n%b" % (self.switch, accept, greeting))
            if self.mode == "sink":
                await trio.sleep_forever()  # reads nothing more: the gateway's writes to it end up waiting
            if self.mode == "flood":
                chunk = frame(TEXT, b"x" * 60000, mask=False)
                try:
                    while True:
                        await stream.send_all(chunk)
                except trio.BrokenResourceError:
                    return
            try:
                while True:
                    for opcode, payload in parse_frames(buf):
                        self.received.append((opcode, payload))
                        if opcode == CLOSE:
                            await stream.send_all(frame(CLOSE, payload, mask=False))
                            return  # closes the connection: the gateway must close the client's too
                        if self.mode == "echo":
                            await stream.send_all(frame(TEXT, b"echo: " + payload, mask=False))
                    data = await stream.receive_some(65536)
                    if not data:
                        self.eof.set()
                        return
                    buf += data
            except trio.BrokenResourceError:
                self.eof.set()


async def start(nursery: trio.Nursery, gateway, mode: str = "echo", switch: bytes | None = None,  # noqa: ANN001
                **fields) -> tuple[WsBackend, int]:
    backend = WsBackend(mode) if switch is None else WsBackend(mode, switch)
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("ws", f"http://127.0.0.1:{backend.port}", **fields)]})
    return backend, port


def handshake(key: bytes, path: bytes = b"/chat", connection: bytes = b"Upgrade") -> bytes:
    return (b"GET %b HTTP/1.1\r\nHost: gw.example\r\nUpgrade: websocket\r\nConnection: %b\r\n"
            b"Sec-WebSocket-Key: %b\r\nSec-WebSocket-Version: 13\r\nOrigin: http://gw.example\r\n\r\n"
            % (path, connection, key))


async def test_handshake_and_frames_both_ways(nursery, gateway):
    backend, port = await start(nursery, gateway)
    key = base64.b64encode(os.urandom(16))
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            # The first frame goes in the same packet as the handshake: the gateway has read it with the head.
            await stream.send_all(handshake(key) + frame(TEXT, b"first", mask=True))
            buf = bytearray()
            start_line, headers = await read_head(stream, buf)
            assert start_line.startswith(b"HTTP/1.1 101 ")
            assert headers[b"sec-websocket-accept"] == accept_for(key)
            assert headers[b"upgrade"].lower() == b"websocket"
            assert headers[b"connection"].lower() == b"upgrade"
            assert headers[b"x-backend"] == b"ws"
            assert b"x-request-id" in headers
            assert b"transfer-encoding" not in headers and b"content-length" not in headers
            # The backend's greeting came in the same packet as its 101; then the echo of "first".
            assert await read_frames(stream, buf, 2) == [(TEXT, b"hello"), (TEXT, b"echo: first")]
            for i in range(3):  # several messages, one at a time
                await stream.send_all(frame(TEXT, b"message %d" % i, mask=True))
                assert await read_frames(stream, buf, 1) == [(TEXT, b"echo: message %d" % i)]
            # several in one write, one of them larger than 125 bytes (a 16-bit length)
            big = bytes(range(256)) * 4
            await stream.send_all(b"".join(frame(TEXT, p, mask=True) for p in (b"a", big, b"c")))
            assert await read_frames(stream, buf, 3) == [(TEXT, b"echo: a"), (TEXT, b"echo: " + big),
                                                         (TEXT, b"echo: c")]
    start_line, seen = backend.heads[0]
    assert start_line == b"GET /chat HTTP/1.1"
    assert seen[b"upgrade"] == b"websocket"
    assert seen[b"connection"] == b"keep-alive, Upgrade"  # Kong's upstream_connection
    assert seen[b"sec-websocket-key"] == key
    assert seen[b"sec-websocket-version"] == b"13"
    assert seen[b"host"] == b"127.0.0.1:%d" % backend.port
    assert seen[b"x-forwarded-for"] == b"127.0.0.1"
    assert b"content-length" not in seen and b"transfer-encoding" not in seen
    assert [p for _, p in backend.received] == [b"first", b"message 0", b"message 1", b"message 2", b"a", big, b"c"]


async def test_client_closing_closes_the_upstream_side(nursery, gateway):
    backend, port = await start(nursery, gateway)
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        buf = bytearray()
        async with stream:
            await stream.send_all(handshake(base64.b64encode(os.urandom(16))))
            assert (await read_head(stream, buf))[0].startswith(b"HTTP/1.1 101 ")
            await stream.send_all(frame(TEXT, b"ping", mask=True))
            assert await read_frames(stream, buf, 2) == [(TEXT, b"hello"), (TEXT, b"echo: ping")]
        await backend.eof.wait()  # the client's close went through the tunnel as the upstream's EOF


async def test_upstream_closing_closes_the_client_side(nursery, gateway):
    backend, port = await start(nursery, gateway)
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        buf = bytearray()
        async with stream:
            await stream.send_all(handshake(base64.b64encode(os.urandom(16))))
            assert (await read_head(stream, buf))[0].startswith(b"HTTP/1.1 101 ")
            close = struct.pack("!H", 1000) + b"bye"
            await stream.send_all(frame(CLOSE, close, mask=True))  # the backend answers it and closes
            assert await read_frames(stream, buf, 2) == [(TEXT, b"hello"), (CLOSE, close)]
            assert await read_eof(stream) == b""  # and the gateway closed the client's connection after it
    assert backend.received == [(CLOSE, close)]


async def test_upstream_refusing_the_upgrade_gives_the_client_its_answer(nursery, gateway):
    backend, port = await start(nursery, gateway, mode="refuse")
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        buf = bytearray()
        async with stream:
            await stream.send_all(handshake(base64.b64encode(os.urandom(16))))
            start_line, headers = await read_head(stream, buf)
            assert start_line.startswith(b"HTTP/1.1 400 ")
            while len(buf) < int(headers[b"content-length"]):
                buf += await stream.receive_some(65536)
            assert bytes(buf) == b"not a websocket handshake"
            # not a tunnel: the connection still speaks HTTP (a second request is answered)
            buf.clear()
            await stream.send_all(handshake(base64.b64encode(os.urandom(16))))
            assert (await read_head(stream, buf))[0].startswith(b"HTTP/1.1 400 ")
    assert backend.heads[0][1][b"upgrade"] == b"websocket"


async def test_a_426_to_a_handshake_keeps_the_upstreams_upgrade_websocket(nursery, gateway):
    """An upstream declining a handshake with 426 names the protocol to use in Upgrade (RFC 9110 15.5.22), and
    through Kong the client gets it: nginx 1.27.1 has no "Upgrade" in ngx_http_upstream_headers_in[]
    (src/http/ngx_http_upstream.c), so ngx_http_upstream_process_headers copies the upstream's Upgrade whatever the
    status; Kong's header_filter.before (kong/runloop/handler.lua 1529-1532) removes it only `if upgrade and
    lower(upgrade) ~= lower(var.upstream_upgrade)`, which access.before set to "websocket" for the handshake."""
    backend, port = await start(nursery, gateway, mode="decline")
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(handshake(base64.b64encode(os.urandom(16))))
            start_line, headers = await read_head(stream, bytearray())
    assert start_line.startswith(b"HTTP/1.1 426 ")
    assert backend.heads[0][1][b"upgrade"] == b"websocket"  # Kong's upstream_upgrade went upstream
    assert headers.get(b"sec-websocket-version") == b"13"  # the answer is relayed ...
    assert headers.get(b"upgrade") == b"websocket"  # ... with its Upgrade: websocket


@pytest.mark.parametrize(("upgrade", "lines", "kept"), [
    (True, [(b"upgrade", b"WebSocket")], b"WebSocket"),  # Kong compares in lower case, passes it as it came
    (True, [(b"upgrade", b"h2c")], None),  # not what Kong asked for
    (True, [(b"upgrade", b"websocket"), (b"upgrade", b"websocket")], None),  # two lines: "websocket, websocket"
    (False, [(b"upgrade", b"websocket")], None),  # no upgrade asked: var.upstream_upgrade is empty
])
def test_an_answers_upgrade_is_kept_only_when_it_is_the_websocket_kong_asked_for(upgrade, lines, kept):
    """kong/runloop/handler.lua header_filter.before: `local upgrade = var.upstream_http_upgrade` (nginx joins
    repeated lines with ", ") is removed `if upgrade and lower(upgrade) ~= lower(var.upstream_upgrade)`, and
    var.upstream_upgrade is "websocket" only for a request whose Upgrade is websocket (access.before)."""
    ex: Any = SimpleNamespace(settings=SimpleNamespace(kong_headers=None), request=SimpleNamespace(headers=[]))
    unused: Any = None  # the target and connection: only an MCP session id needs them
    out, _, _ = _client_headers([(b"content-length", b"0"), *lines], b"rid", None, unused, unused, ex, upgrade=upgrade)
    assert [value for name, value in out if name == b"upgrade"] == ([kept] if kept else [])


async def test_upgrade_without_connection_upgrade_is_kongs_upgrade(nursery, gateway):
    """Kong looks at Upgrade alone (kong/runloop/handler.lua access.after): `Upgrade: websocket` with a Connection
    that does not name it still goes upstream with `Upgrade: websocket` and `Connection: keep-alive, Upgrade`, and
    the backend's 101 makes a tunnel (nginx tunnels a 101 to a request with an Upgrade header)."""
    backend, port = await start(nursery, gateway)
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        buf = bytearray()
        async with stream:
            await stream.send_all(handshake(base64.b64encode(os.urandom(16)), connection=b"keep-alive"))
            assert (await read_head(stream, buf))[0].startswith(b"HTTP/1.1 101 ")
            await stream.send_all(frame(TEXT, b"ping", mask=True))
            assert await read_frames(stream, buf, 2) == [(TEXT, b"hello"), (TEXT, b"echo: ping")]
    seen = backend.heads[0][1]
    assert (seen[b"upgrade"], seen[b"connection"]) == (b"websocket", b"keep-alive, Upgrade")


async def test_first_frame_with_a_handshake_whose_connection_does_not_name_upgrade_reaches_the_upstream(
        nursery, gateway):
    """Sent in the same packet as such a handshake (tunnelled, as Kong reads Upgrade alone), the first frame goes
    upstream first once the 101 came, as nginx relays what followed the head (ngx_http_upstream.c
    ngx_http_upstream_process_upgraded: `if (r->header_in->last > r->header_in->pos)`); llhttp calls the request
    no upgrade, so its codec finds those bytes again."""
    backend, port = await start(nursery, gateway)
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        buf = bytearray()
        async with stream:
            await stream.send_all(handshake(base64.b64encode(os.urandom(16)), connection=b"keep-alive")
                                  + frame(TEXT, b"first", mask=True))
            assert (await read_head(stream, buf))[0].startswith(b"HTTP/1.1 101 ")
            assert await read_frames(stream, buf, 2) == [(TEXT, b"hello"), (TEXT, b"echo: first")]
    assert backend.received == [(TEXT, b"first")]


@pytest.mark.parametrize("switch", [
    b"Upgrade: websocket\r\n",  # no Connection
    b"Upgrade: websocket\r\nConnection: keep-alive\r\n",
    b"",  # neither
])
async def test_a_101_without_connection_upgrade_is_tunnelled_as_nginx_does(nursery, gateway, switch):
    """nginx decides on the client's request alone (ngx_http_proxy_module.c ngx_http_proxy_process_header: a 101 to
    a request with Upgrade sets u->upgrade; ngx_http_upstream_upgrade: "TODO: prevent upgrade if not requested or
    not possible"): the 101 goes out with nginx's own `Connection: upgrade` (ngx_http_header_filter_module.c) and
    the upstream's Upgrade when it is `websocket` (Kong's header filter, kong/runloop/handler.lua), then the
    tunnel."""
    backend, port = await start(nursery, gateway, switch=switch)
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        buf = bytearray()
        async with stream:
            await stream.send_all(handshake(base64.b64encode(os.urandom(16))))
            start_line, headers = await read_head(stream, buf)
            assert start_line.startswith(b"HTTP/1.1 101 ")
            assert headers[b"connection"] == b"upgrade"
            assert headers.get(b"upgrade") == (b"websocket" if switch else None)
            await stream.send_all(frame(TEXT, b"ping", mask=True))
            assert await read_frames(stream, buf, 2) == [(TEXT, b"hello"), (TEXT, b"echo: ping")]


async def test_upstream_silent_longer_than_read_timeout_ends_the_tunnel(nursery, gateway, caplog):
    caplog.set_level(logging.DEBUG, "gateway.forward")
    backend, port = await start(nursery, gateway, mode="silent", read_timeout=300)
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        buf = bytearray()
        async with stream:
            await stream.send_all(handshake(base64.b64encode(os.urandom(16))))
            assert (await read_head(stream, buf))[0].startswith(b"HTTP/1.1 101 ")
            started = trio.current_time()
            await stream.send_all(frame(TEXT, b"anyone?", mask=True))  # the client speaking does not help
            assert await read_eof(stream) == b""
            waited = trio.current_time() - started
        await backend.eof.wait()
    assert 0.25 <= waited < 3, waited
    assert any(UPSTREAM_SILENT in r.getMessage() for r in caplog.records)


async def test_a_write_to_the_upstream_that_waits_longer_than_write_timeout_ends_the_tunnel(nursery, gateway, caplog):
    caplog.set_level(logging.DEBUG, "gateway.forward")
    backend, port = await start(nursery, gateway, mode="sink", write_timeout=300, read_timeout=60_000)
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        buf = bytearray()
        async with stream:
            await stream.send_all(handshake(base64.b64encode(os.urandom(16))))
            assert (await read_head(stream, buf))[0].startswith(b"HTTP/1.1 101 ")
            chunk = frame(TEXT, b"x" * 60000, mask=True)

            async def flood() -> None:  # until the gateway stops taking it
                try:
                    for _ in range(2000):  # 120 MB at most: far more than the sockets' buffers on the way
                        await stream.send_all(chunk)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

            async with trio.open_nursery() as flooding:
                flooding.start_soon(flood)
                assert await read_eof(stream) == b""  # the gateway closed the tunnel
                flooding.cancel_scope.cancel()
    assert backend.connections == 1
    await wait_until(lambda: any(UPSTREAM_STUCK in r.getMessage() for r in caplog.records), "the reason logged")


async def test_the_tunnel_is_logged_as_a_101_and_header_filters_apply_to_its_head(nursery, gateway):
    """The log phase records the request once the tunnel is over (status 101, its upstream); the 101's head goes
    through the header filters as any answer's (response-transformer adds a header)."""
    backend = WsBackend()
    await nursery.start(backend.serve)
    collector = UdpCollector()
    await nursery.start(collector.serve)
    port = await gateway({"services": [service("ws", f"http://127.0.0.1:{backend.port}")], "plugins": [
        {"name": "udp-log", "config": {"host": "127.0.0.1", "port": collector.port}},
        {"name": "response-transformer", "config": {"add": {"headers": ["x-filtered:yes"]}}}]})
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        buf = bytearray()
        async with stream:
            await stream.send_all(handshake(base64.b64encode(os.urandom(16)), path=b"/logged"))
            start_line, headers = await read_head(stream, buf)
            assert start_line.startswith(b"HTTP/1.1 101 ")
            assert headers[b"x-filtered"] == b"yes"
            assert await read_frames(stream, buf, 1) == [(TEXT, b"hello")]
            assert collector.datagrams == []  # not logged while the tunnel lasts
        await wait_until(lambda: collector.datagrams, "the log entry")
    entry = collector.entries[0]
    assert entry["request"]["uri"] == "/logged"
    assert entry["response"]["status"] == 101
    assert entry["service"]["name"] == "ws"
    assert entry["upstream_uri"] == "/logged"


async def test_a_tunnel_the_send_timeout_ends_is_logged_with_the_bytes_it_relayed(nursery, gateway):
    """nginx's $bytes_sent (Kong's response.size) counts what the tunnel sent however it ended: a client that stops
    reading is cut by send_timeout_s, and its entry still has the bytes it read, not the 101 head's alone."""
    backend = WsBackend("flood")
    await nursery.start(backend.serve)
    collector = UdpCollector()
    await nursery.start(collector.serve)
    port = await gateway({"services": [service("ws", f"http://127.0.0.1:{backend.port}")], "plugins": [
        {"name": "udp-log", "config": {"host": "127.0.0.1", "port": collector.port}}]}, send_timeout_s=1)
    read_first = 256 * 1024
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(handshake(base64.b64encode(os.urandom(16))))
            received = 0
            while received < read_first:  # bytes the gateway certainly sent; then it reads nothing more
                received += len(await stream.receive_some(65536))
            await wait_until(lambda: collector.datagrams, "the log entry")
    entry = collector.entries[0]
    assert entry["response"]["status"] == 101
    assert entry["response"]["size"] >= read_first


# --- the pieces: detection, and both codecs' switch -----------------------------------------------------------------


def _headers_of(method: bytes, version: bytes, headers: list[tuple[bytes, bytes]]) -> tuple[list, int]:
    ex = SimpleNamespace(request=Request(method, b"/", headers, version, True), client_ip="203.0.113.7",
                         peer_trusted=False, peer_ip="203.0.113.7", consumer=None,
                         conn=SimpleNamespace(scheme=b"http", listen_port=b"8000"),
                         settings=SimpleNamespace(request_id_upstream=False))
    out, _, _, _, framing = upstream_request_headers(ex)
    return out, framing


WS = [(b"host", b"gw"), (b"upgrade", b"websocket"), (b"connection", b"keep-alive, Upgrade"),
      (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ==")]


@pytest.mark.parametrize("headers", [
    WS,
    [hv for hv in WS if hv[0] != b"connection"],  # Upgrade without Connection (Kong looks at Upgrade alone)
    [(b"connection", b"keep-alive") if hv[0] == b"connection" else hv for hv in WS],  # ... or not naming it
    [(b"upgrade", b"WebSocket") if hv[0] == b"upgrade" else hv for hv in WS],  # any case: Kong's "websocket"
])
def test_an_upgrade_request_gets_kongs_upgrade_and_connection(headers):
    """kong/runloop/handler.lua: `Upgrade: websocket` (any case) sets upstream_upgrade "websocket" and
    upstream_connection "keep-alive, Upgrade", whatever the client's Connection says."""
    out, framing = _headers_of(b"GET", b"1.1", headers)
    assert framing == UPGRADE
    assert [hv for hv in out if hv[0] in (b"upgrade", b"connection")] == [
        (b"upgrade", b"websocket"), (b"connection", b"keep-alive, Upgrade")]
    assert (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ==") in out


@pytest.mark.parametrize(("method", "version", "headers"), [
    (b"GET", b"1.1", [hv for hv in WS if hv[0] != b"upgrade"]),  # Connection: upgrade without Upgrade
    (b"GET", b"1.1", [(b"upgrade", b"h2c") if hv[0] == b"upgrade" else hv for hv in WS]),  # only websocket
])
def test_what_is_not_an_upgrade_is_an_ordinary_request(method, version, headers):
    """No Upgrade goes upstream, and Connection is Kong's upstream_connection for any request: keep-alive."""
    out, framing = _headers_of(method, version, headers)
    assert framing != UPGRADE
    assert [hv for hv in out if hv[0] in (b"upgrade", b"connection")] == [(b"connection", b"keep-alive")]


@pytest.mark.parametrize("codec", ["h11", "llhttp"])
def test_server_codec_switch_keeps_what_followed_the_head(codec):
    server = codec_classes(codec)[0]()
    server.receive_data(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
                        b"\x81\x85abcd-frame-bytes")
    assert type(server.next_event()) is Request
    assert server.take_body() == (b"", True)
    head = server.switch_protocols([(b"upgrade", b"websocket"), (b"connection", b"upgrade")], lines=b"x-a: 1\r\n")
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n") and head.endswith(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower() and b"connection: close" not in head.lower()
    assert b"x-a: 1\r\n" in head
    assert server.take_upgraded() == b"\x81\x85abcd-frame-bytes"
    assert server.keep_alive is False


FIRST = b"\x81\x85abcd-frame-bytes"  # a client's first frame (masked), the new protocol's first bytes
SOCKET = b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n"  # ... and its Connection, then its blank line


def _declined(server, status: int = 426) -> None:  # noqa: ANN001
    """Answer the request read with a `status` (not a switch) and go on to the next one."""
    assert server.take_body()[1]
    server.response_head(status, [(b"content-length", b"0")])
    server.end()
    server.start_next_cycle()


@pytest.mark.parametrize("codec", ["h11", "llhttp"])
@pytest.mark.parametrize(("before", "chunks"), [
    (b"", [SOCKET + b"Connection: keep-alive\r\n\r\n" + FIRST]),  # Connection not naming upgrade
    (b"", [SOCKET + b"\r\n" + FIRST]),  # no Connection
    (b"", [SOCKET + b"\r", b"\n" + FIRST]),  # the head split in its blank line, the frame in the next read
    (b"", [SOCKET + b"Content-Length: 3\r\n\r\nabc" + FIRST]),  # a body goes first (README)
    (b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n", [SOCKET + b"\r\n" + FIRST]),  # after another request, same read
    (b"GET /a HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n", [SOCKET + b"\r\n" + FIRST]),
], ids=["keep-alive", "no-connection", "split-head", "body", "pipelined", "after-a-declined-upgrade"])
def test_server_codec_switch_after_an_upgrade_without_connection_upgrade_keeps_what_followed(codec, before, chunks):
    """Kong tunnels a request whose Upgrade is websocket whatever its Connection (kong/runloop/handler.lua), nginx on
    any 101 to a request with Upgrade (ngx_http_proxy_module.c) and relays first what followed the head
    (ngx_http_upstream.c ngx_http_upstream_process_upgraded, r->header_in): so the codec keeps those bytes though
    llhttp calls such a request no upgrade (it wants Connection: upgrade too), as h11 keeps them."""
    server = codec_classes(codec)[0]()
    server.receive_data(before + chunks[0])
    if before:
        assert server.next_event().target == b"/a"
        _declined(server)
    for chunk in chunks[1:]:
        assert server.next_event() is NEED_DATA
        server.receive_data(chunk)
    ev = server.next_event()
    assert type(ev) is Request and ev.target == b"/ws"
    assert server.take_body()[1]
    server.switch_protocols([(b"upgrade", b"websocket"), (b"connection", b"upgrade")])
    assert server.take_upgraded() == FIRST
    assert server.keep_alive is False


@pytest.mark.parametrize("codec", ["h11", "llhttp"])
@pytest.mark.parametrize("connection", [b"", b"Connection: keep-alive\r\n", b"Connection: Upgrade\r\n"])
def test_server_codec_an_upgrade_not_switched_reads_what_followed_as_the_next_request(codec, connection):
    """An upgrade answered otherwise (a plugin's answer, the backend's 426; or not a WebSocket one) leaves the
    connection HTTP: what followed its head is the next request, as nginx reads the rest of r->header_in
    (ngx_http_set_keepalive); and that request's own switch gives what followed it."""
    server = codec_classes(codec)[0]()
    server.receive_data(SOCKET + connection + b"\r\n" + SOCKET + b"\r\n" + FIRST)
    assert type(server.next_event()) is Request
    _declined(server)
    assert type(server.next_event()) is Request
    assert server.take_body()[1]
    server.switch_protocols([(b"upgrade", b"websocket"), (b"connection", b"upgrade")])
    assert server.take_upgraded() == FIRST


@pytest.mark.parametrize("codec", ["h11", "llhttp"])
def test_client_codec_switch_on_101_to_an_upgrade_request(codec):
    client = codec_classes(codec)[1]()
    client.request_head(b"GET", b"/ws", [(b"host", b"up"), (b"upgrade", b"websocket"),
                                         (b"connection", b"keep-alive, Upgrade")], None)
    client.end()
    client.receive_data(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
                        b"\x81\x05hello")
    ev = client.next_event()
    assert type(ev) is Response and ev.status == 101
    assert (b"upgrade", b"websocket") in ev.headers
    assert client.next_event() is NEED_DATA
    assert client.take_upgraded() == b"\x81\x05hello"
    assert client.keep_alive is False


@pytest.mark.parametrize("codec", ["h11", "llhttp"])
def test_client_codec_an_upgrade_declined_is_an_answer_and_the_connection_is_reused(codec):
    """nginx keeps an upstream connection after any complete answer but a 101 (ngx_http_proxy_module.c:2015-2020,
    2072 at release-1.27.1), whatever the request's Upgrade said."""
    client = codec_classes(codec)[1]()
    client.request_head(b"GET", b"/ws", [(b"host", b"up"), (b"upgrade", b"websocket"),
                                         (b"connection", b"keep-alive, Upgrade")], None)
    client.end()
    client.receive_data(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 2\r\n\r\nno")
    ev = client.next_event()
    assert type(ev) is Response and ev.status == 426
    assert client.take_body() == (b"no", True)
    assert client.keep_alive is True


@pytest.mark.parametrize("codec", ["h11", "llhttp"])
@pytest.mark.parametrize("chunks", [
    [b"HTTP/1.1 101 Switching Protocols\r\n\r\n\x81\x05hello"],  # neither Upgrade nor Connection
    [b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello"],
    [b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: keep-alive\r\n\r\n\x81\x05hello"],
    [b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello"],
    [b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101 Switching", b" Protocols\r\nUpgrade: x\r\n\r", b"\n\x81\x05hello"],
], ids=["bare", "no-connection", "connection-keep-alive", "after-a-100", "split-after-a-100"])
def test_client_codec_a_101_without_upgrade_headers_switches_as_nginx(codec, chunks):
    """This was a 502. nginx decides on the request alone (ngx_http_proxy_process_header: a 101 to a request with
    Upgrade sets u->upgrade) and never reads the 101's Upgrade or Connection (ngx_http_upstream_upgrade: "TODO:
    prevent upgrade if not requested or not possible"): the codec hands the connection over, with what came after
    the 101's head."""
    client = codec_classes(codec)[1]()
    client.request_head(b"GET", b"/ws", [(b"host", b"up"), (b"upgrade", b"websocket"),
                                         (b"connection", b"keep-alive, Upgrade")], None)
    client.end()
    for chunk in chunks[:-1]:
        client.receive_data(chunk)
        assert client.next_event() is NEED_DATA
    client.receive_data(chunks[-1])
    ev = client.next_event()
    assert type(ev) is Response and ev.status == 101
    assert client.next_event() is NEED_DATA
    assert client.take_upgraded() == b"\x81\x05hello"
    assert client.keep_alive is False


@pytest.mark.parametrize("codec", ["h11", "llhttp"])
@pytest.mark.parametrize("switch", [b"Upgrade: websocket\r\nConnection: Upgrade\r\n", b""])
def test_client_codec_101_to_a_request_with_its_own_framing_is_502(codec, switch):
    """The proxy's ordinary requests (framing given) never carry Upgrade: a 101 to one is unsolicited (nginx would
    pass it on as a final answer; the gateway answers 502 on purpose, README "WebSockets")."""
    client = codec_classes(codec)[1]()
    client.request_head(b"GET", b"/", [(b"host", b"up")], NO_BODY)
    client.end()
    client.receive_data(b"HTTP/1.1 101 Switching Protocols\r\n%b\r\n" % switch)
    with pytest.raises(ProtocolError) as e:
        client.next_event()
    assert e.value.status == 502


async def test_over_a_tls_listener(nursery, gateway, tmp_path):
    """wss: the client's side of the tunnel is TLS (gateway.http.tls), the upstream's plain."""
    pki = Pki()
    backend = WsBackend()
    await nursery.start(backend.serve)
    tls_port = free_port()
    cert, key = pki.files(tmp_path, "default", "default.test")
    await gateway({"services": [service("ws", f"http://127.0.0.1:{backend.port}")]},
                  listen=[f"127.0.0.1:{tls_port} ssl"], ssl_cert=cert, ssl_cert_key=key)
    key_b64 = base64.b64encode(os.urandom(16))
    with trio.fail_after(TIMEOUT):
        stream = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", tls_port), pki.client_context(),
                                server_hostname="default.test", https_compatible=True)
        buf = bytearray()
        async with stream:
            await stream.send_all(handshake(key_b64) + frame(TEXT, b"first", mask=True))
            start_line, headers = await read_head(stream, buf)
            assert start_line.startswith(b"HTTP/1.1 101 ")
            assert headers[b"sec-websocket-accept"] == accept_for(key_b64)
            assert await read_frames(stream, buf, 2) == [(TEXT, b"hello"), (TEXT, b"echo: first")]
            for i in range(3):
                await stream.send_all(frame(TEXT, b"%d" % i * 5000, mask=True))
                assert await read_frames(stream, buf, 1) == [(TEXT, b"echo: " + b"%d" % i * 5000)]
        await backend.eof.wait()
    assert backend.heads[0][1][b"x-forwarded-proto"] == b"https"
