"""An upstream connection after a WebSocket handshake the upstream declines (any final answer but 101), as nginx
1.27.1's proxy module and Kong 3.9.3's balancer pool keep it: reused when the answer is complete and not `Connection:
close`, as after any answer. By both client codecs alike (sans-I/O, the upgrade request sent as the forwarder sends
it), then once through a gateway. nginx source: `git -C /work/.mirror/nginx+nginx/repo show
release-1.27.1:src/http/modules/ngx_http_proxy_module.c`; Kong's keepalive patch of lua-nginx-module: `git -C
/work/.mirror/Kong+kong/repo show 3.9.3:build/openresty/patches/ngx_lua-0.10.26_01-dyn_upstream_keepalive.patch`."""

from __future__ import annotations

import pytest
import trio
from backends import service

from gateway.http.codec import CLOSED, END, NEED_DATA, ProtocolError, Response
from gateway.http.codecs import codec_classes

CODECS = ["h11", "llhttp"]
# the handshake as the forwarder sends it (gateway.pipeline.headers: Kong's handler.lua:1330-1337)
HANDSHAKE = [(b"host", b"up"), (b"upgrade", b"websocket"), (b"connection", b"keep-alive, Upgrade")]
PLAIN = [(b"host", b"up")]
SWITCH = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
DECLINED = (b"HTTP/1.1 426 Upgrade Required\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nContent-Length: 4\r\n\r\n"
            b"nope")


def client_after(codec: str, headers: list[tuple[bytes, bytes]], answer: bytes) -> tuple[object, list[object]]:
    """A client codec (as the pool makes it) that sent a GET with `headers` and was fed `answer` in one read: it and
    the events it gave, a Response as its status, body bytes joined, ("error", message) for a refusal."""
    client = codec_classes(codec)[1]()
    client.request_head(b"GET", b"/ws", headers)
    client.end()
    return client, events_of(client, answer)


def events_of(client: object, data: bytes) -> list[object]:
    """The events `client` gives once fed `data` (see client_after)."""
    client.receive_data(data)  # type: ignore[attr-defined]
    events: list[object] = []
    while True:
        try:
            ev = client.next_event()  # type: ignore[attr-defined]
        except ProtocolError as e:
            return [*events, ("error", str(e))]
        if ev is NEED_DATA or ev is CLOSED:
            return events
        if type(ev) is Response:
            events.append(ev.status)
            if ev.status == 101:
                return events
        elif type(ev) is bytes and events and type(events[-1]) is bytes:
            events[-1] += ev
        else:
            events.append(ev)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize(("answer", "events"), [
    (DECLINED, [426, b"nope", END]),
    (b"HTTP/1.1 400 Bad Request\r\nContent-Length: 3\r\n\r\nbad", [400, b"bad", END]),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", [200, b"hello", END]),
    (b"HTTP/1.1 200 OK\r\nUpgrade: websocket\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"2\r\nok\r\n0\r\n\r\n", [200, b"ok", END]),
], ids=["426-upgrade", "400", "200-length", "200-chunked-keep-alive"])
def test_a_declined_websocket_upgrade_leaves_its_upstream_connection_reusable(
        codec: str, answer: bytes, events: list[object]) -> None:
    """nginx marks an upstream connection reusable once the answer is complete and not `Connection: close`
    (ngx_http_proxy_module.c:2072, 2088, 2392: u->keepalive = !connection_close), whatever the request's Upgrade:
    only a 101 clears it (2015-2020). Kong's pool then keeps it, with no look at the upgrade (its keepalive patch of
    ngx_http_lua_balancer.c, lua-nginx-module's own at 602-628 since)."""
    client, got = client_after(codec, HANDSHAKE, answer)
    assert got == events
    assert client.keep_alive  # type: ignore[attr-defined]


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 426 Upgrade Required\r\nUpgrade: WebSocket\r\nConnection: close\r\nContent-Length: 4\r\n\r\nnope",
    b"HTTP/1.0 426 Upgrade Required\r\nContent-Length: 4\r\n\r\nnope",
], ids=["connection-close", "http10"])
def test_a_declined_websocket_upgrade_that_says_close_ends_its_upstream_connection(codec: str, answer: bytes) -> None:
    """As after any answer, one that says close (ngx_http_upstream_process_headers' connection_close, an HTTP/1.0
    one's too) leaves u->keepalive 0 (ngx_http_proxy_module.c:2392): the connection is closed."""
    client, got = client_after(codec, HANDSHAKE, answer)
    assert got == [426, b"nope", END]
    assert not client.keep_alive  # type: ignore[attr-defined]


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("after", [SWITCH, b"x"], ids=["a-101", "a-byte"])
def test_bytes_after_a_declined_websocket_upgrade_keep_its_upstream_connection_out_of_the_pool(
        codec: str, after: bytes) -> None:
    """Bytes the upstream sent after a complete declining answer (a 101 among them) are no answer to anything: the
    connection is not reused, as after any answer (ngx_http_proxy_copy_filter, ngx_http_proxy_module.c:2119-2125 and
    2159-2166: "upstream sent more data than specified", u->keepalive left or set 0)."""
    client, got = client_after(codec, HANDSHAKE, DECLINED + after)
    assert got == [426, b"nope", END]
    assert not client.keep_alive  # type: ignore[attr-defined]


@pytest.mark.parametrize("codec", CODECS)
def test_a_101_to_the_next_request_after_a_declined_upgrade_is_refused(codec: str) -> None:
    """A declining final answer ends the request's "may switch": nginx tunnels a 101 only as the answer to a request
    with Upgrade (ngx_http_proxy_module.c:2015-2020, r->headers_in.upgrade of the request being answered), so a 101
    to the plain request the kept connection carries next is the 502 any unasked-for switch is."""
    client, got = client_after(codec, HANDSHAKE, DECLINED)
    assert got == [426, b"nope", END] and client.keep_alive  # type: ignore[attr-defined]
    client.start_next_cycle()  # type: ignore[attr-defined]
    client.request_head(b"GET", b"/plain", PLAIN)  # type: ignore[attr-defined]
    client.end()  # type: ignore[attr-defined]
    got = events_of(client, SWITCH + b"tunnel bytes")
    assert len(got) == 1 and type(got[0]) is tuple and got[0][0] == "error", got


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("interim", [
    b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"], ids=["100", "103"])
def test_an_interim_answer_before_the_101_keeps_the_switch_possible(codec: str, interim: bytes) -> None:
    """A 1xx before the final answer is no final answer: the 101 after it switches (nginx skips a 100 or 103 and
    reads the next head: ngx_http_proxy_process_status_line, then 2015-2020), its bytes after the head the tunnel's."""
    client, got = client_after(codec, HANDSHAKE, interim + SWITCH + b"frame")
    assert got == [101]
    assert client.take_upgraded() == b"frame"  # type: ignore[attr-defined]
    assert not client.keep_alive  # type: ignore[attr-defined]


@pytest.mark.parametrize("codec", CODECS)
def test_an_interim_answer_before_a_declining_one_leaves_the_connection_reusable(codec: str) -> None:
    """A 100 before the 426: the final answer is the 426, after which the connection is kept as after any answer
    (ngx_http_proxy_module.c:2392)."""
    client, got = client_after(codec, HANDSHAKE, b"HTTP/1.1 100 Continue\r\n\r\n" + DECLINED)
    assert got == [426, b"nope", END]
    assert client.keep_alive  # type: ignore[attr-defined]


async def test_an_upstream_connection_is_pooled_after_a_declined_websocket_upgrade(nursery, gateway) -> None:  # noqa: ANN001
    """Through the gateway: a WebSocket handshake the upstream answers 426 (Content-Length, keep-alive), then a plain
    request from another client, take one upstream connection, as through Kong (ngx_http_proxy_module.c:2392;
    Kong's balancer pool keeps it: ngx_lua-0.10.26_01-dyn_upstream_keepalive.patch, no upgrade condition)."""
    accepted = 0
    requests: list[bytes] = []

    async def serve(stream: trio.SocketStream) -> None:
        nonlocal accepted
        accepted += 1
        buf = b""
        async with stream:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                requests.append(head.split(b"\r\n")[0])
                await stream.send_all(DECLINED if b"\r\nupgrade: websocket" in head.lower()
                                      else b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    up = listeners[0].socket.getsockname()[1]
    nursery.start_soon(trio.serve_listeners, serve, listeners)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{up}", [{"paths": ["/"]}])]})

    async def ask(request: bytes, end: bytes) -> bytes:
        async with await trio.open_tcp_stream("127.0.0.1", port) as c:
            await c.send_all(request)
            got = b""
            with trio.fail_after(3):
                while not got.endswith(end):
                    data = await c.receive_some(65536)
                    assert data, got
                    got += data
            return got

    got = await ask(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", b"nope")
    assert got.startswith(b"HTTP/1.1 426 ")
    await trio.sleep(0.05)
    await ask(b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n", b"ok")
    assert requests == [b"GET /ws HTTP/1.1", b"GET /plain HTTP/1.1"]
    assert accepted == 1, f"{accepted} upstream connections for a declined handshake and a plain request"
