"""A body a plugin sets goes upstream framed by its own length, whatever the request's headers say by then.

Kong's set_raw_body (ngx.req.set_body_data) sets Content-Length from the body (lua-nginx-module 0.10.28
src/ngx_http_lua_req_body.c:509-523: content_length_n = body.len, the header rewritten), and nginx's proxy frames
the body it sends by content_length_n ($proxy_internal_body_length; Transfer-Encoding is not passed). check-config
refuses a request-transformer that would touch the framing headers, so the case is a plugin's own mistake: here
key-auth's hide_credentials (which sets the body without the key) is made to leave the framing headers wrong after
it, and the forwarder still sends one Content-Length, the body's, and no Transfer-Encoding. The upstream reads exactly
the body: a head whose framing disagreed with it would have it wait for bytes that never come, or read the body as
the next request. Each case starts an in-process gateway (the `gateway` fixture, one per codec) before an upstream
that keeps the raw bytes, all on loopback."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from backends import request, service

from gateway.policies.key_auth import handler as key_auth

TIMEOUT = 10
QUIET = 0.1  # seconds without bytes after which the upstream takes the request as all sent
CONSUMERS = [{"username": "bob", "keyauth_credentials": [{"key": "kong"}]}]
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


class RawUpstream:
    """Keeps every byte of each connection the gateway opens, answers 200 once a head came and QUIET passed."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.port = 0

    async def serve(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._on_conn, listeners)

    async def _on_conn(self, stream: trio.SocketStream) -> None:
        data = b""
        async with stream:
            while True:
                with trio.move_on_after(QUIET if b"\r\n\r\n" in data else TIMEOUT):
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        break
                    data += chunk
                    continue
                break
            self.received.append(data)
            await stream.send_all(ANSWER)


def _framing(raw: bytes) -> tuple[list[bytes], list[bytes], bytes]:
    """(the Content-Length values, the Transfer-Encoding values, the bytes after the head) of what the upstream got."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    fields = [line.split(b":", 1) for line in head.split(b"\r\n")[1:]]
    return ([v.strip() for n, v in fields if n.lower() == b"content-length"],
            [v.strip() for n, v in fields if n.lower() == b"transfer-encoding"], rest)


@pytest.mark.parametrize("framing", [
    [(b"content-length", b"999")],  # a stale length, longer than the body
    [],  # no length at all
    [(b"content-length", b"3"), (b"transfer-encoding", b"chunked")],  # chunked beside the length
    [(b"content-length", b"3"), (b"content-length", b"1")],  # two lengths
], ids=["stale-length", "no-length", "chunked-too", "two-lengths"])
async def test_a_body_a_plugin_set_is_framed_by_its_length_whatever_the_headers_say(
        nursery, gateway, monkeypatch: pytest.MonkeyPatch, framing: list[tuple[bytes, bytes]]):
    rewrite = key_auth._rewrite_body

    def rewrite_then_misframe(ex: Any, *args: Any) -> None:
        rewrite(ex, *args)
        ex.request.headers = [hv for hv in ex.request.headers if hv[0] != b"content-length"] + framing

    monkeypatch.setattr(key_auth, "_rewrite_body", rewrite_then_misframe)
    upstream = RawUpstream()
    await nursery.start(upstream.serve)
    route = {"paths": ["/"], "plugins": [{"name": "key-auth", "config": {"key_in_body": True,
                                                                         "hide_credentials": True}}]}
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{upstream.port}", [route])],
                          "consumers": CONSUMERS})
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "POST", "/x", body=b"apikey=kong&a=1",
                              headers=[("content-type", "application/x-www-form-urlencoded")])
    assert reply.status == 200 and reply.body == b"ok"
    assert len(upstream.received) == 1
    assert _framing(upstream.received[0]) == ([b"3"], [], b"a=1")
