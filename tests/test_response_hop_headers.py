"""An upstream's hop-by-hop response headers as nginx and Kong treat them: Connection, Keep-Alive and
Transfer-Encoding are the connection's (ngx_http_upstream.c ngx_http_upstream_headers_in), Kong's header filter
drops what Connection names, an Upgrade not asked for and a Trailer not asked for (kong/runloop/handler.lua
header_filter.before), and every other field, Proxy-Connection and TE among them, reaches the client. The header walk
is pinned sans-I/O (forward._client_headers); one exchange per codec checks what a client gets
(03-upstream_headers_spec.lua "are removed from response")."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import trio
from backends import ScriptedBackend, parse_raw_response, raw_exchange, service

from gateway.pipeline.forward import _client_headers

TIMEOUT = 5
# Kong's mock upstream's /hop-by-hop (spec/fixtures/1.2_custom_nginx.template:330-347), as nginx writes it
_BODY = b"hello\r\n\r\nExpires: Wed, 21 Oct 2015 07:28:00 GMT\r\n\r\n"
HOP_BY_HOP_ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nKeep-Alive: timeout=5, max=1000\r\n"
                     b"Proxy: Remove-Me\r\nProxy-Connection: close\r\nProxy-Authenticate: Basic\r\n"
                     b"Proxy-Authorization: Basic YWxhZGRpbjpvcGVuc2VzYW1l\r\nTransfer-Encoding: chunked\r\n"
                     b"TE: trailers, deflate;q=0.5\r\nTrailer: Expires\r\nUpgrade: example/1, foo/2\r\n"
                     b"Connection: keep-alive\r\n\r\n" + b"%x\r\n" % len(_BODY) + _BODY + b"\r\n0\r\n\r\n")
# the same head as the upstream codec gives it
HOP_BY_HOP_LINES = [(b"keep-alive", b"timeout=5, max=1000"), (b"proxy-connection", b"close"),
                    (b"transfer-encoding", b"chunked"), (b"te", b"trailers, deflate;q=0.5"),
                    (b"trailer", b"Expires"), (b"upgrade", b"example/1, foo/2"), (b"connection", b"keep-alive")]


def client_names(lines: list[tuple[bytes, bytes]], upgrade: bool = False) -> dict[bytes, bytes]:
    """The fields _client_headers relays of an upstream's `lines` (request without TE), X-Request-Id apart."""
    ex: Any = SimpleNamespace(settings=SimpleNamespace(kong_headers=None), request=SimpleNamespace(headers=[]),
                              phases=None)
    unused: Any = None  # the target and connection: only an MCP session id needs them
    out, _, _ = _client_headers(lines, b"rid", None, unused, unused, ex, upgrade=upgrade)
    return {name: value for name, value in out if name != b"x-request-id"}


def test_an_upstreams_proxy_connection_and_te_are_relayed() -> None:
    """nginx copies every upstream field but Connection, Keep-Alive and Transfer-Encoding
    (ngx_http_upstream.c ngx_http_upstream_headers_in) and proxy_hide_header's (ngx_http_proxy_module.c:835-845);
    Kong's header_filter.before (kong/runloop/handler.lua:1487-1508) removes only what Connection names, an Upgrade
    not asked for and a Trailer not asked for."""
    assert client_names(HOP_BY_HOP_LINES) == {b"proxy-connection": b"close", b"te": b"trailers, deflate;q=0.5"}


def test_a_switching_answers_proxy_connection_and_te_are_relayed() -> None:
    """The answer to a WebSocket handshake goes through the same filter: its Upgrade kept (websocket, Kong's
    upstream_upgrade), Proxy-Connection and TE too (ngx_http_upstream_headers_in has no entry for them)."""
    lines = [(b"upgrade", b"websocket"), (b"connection", b"upgrade"), (b"proxy-connection", b"keep-alive"),
             (b"te", b"trailers")]
    assert client_names(lines, upgrade=True) == {b"proxy-connection": b"keep-alive", b"te": b"trailers",
                                                 b"upgrade": b"websocket"}


def test_a_proxy_connection_or_te_the_upstreams_connection_names_is_dropped() -> None:
    """Kong's header_filter.before clears every header the upstream's Connection lists (handler.lua:1488-1499)."""
    lines = [(b"connection", b"te, proxy-connection"), (b"proxy-connection", b"close"), (b"te", b"trailers"),
             (b"x-kept", b"1")]
    assert client_names(lines) == {b"x-kept": b"1"}


async def test_kongs_hop_by_hop_answer_reaches_the_client_as_kong_sends_it(nursery, gateway):  # noqa: ANN001
    """03-upstream_headers_spec.lua "are removed from response" (GET /hop-by-hop, Host headers-inspect.test):
    Keep-Alive, Trailer (no TE: trailers asked) and Upgrade are gone, Transfer-Encoding is chunked; the spec's
    commented asserts leave Proxy, Proxy-Connection, Proxy-Authenticate, Proxy-Authorization and TE ("This is a
    request header, so we don't remove it"), which nginx copies (ngx_http_upstream_headers_in has no entry for them)."""
    backend = ScriptedBackend([HOP_BY_HOP_ANSWER])
    await nursery.start(backend.serve)
    svc = service("s", f"http://127.0.0.1:{backend.port}", [{"hosts": ["headers-inspect.test"]}])
    port = await gateway({"services": [svc]})
    with trio.fail_after(TIMEOUT):
        data, _ = await raw_exchange(
            port, b"GET /hop-by-hop HTTP/1.1\r\nHost: headers-inspect.test\r\nConnection: close\r\n\r\n")
    status, headers, _ = parse_raw_response(data)
    assert status == 200
    for gone in ("keep-alive", "trailer", "upgrade"):
        assert gone not in headers, gone
    assert headers["transfer-encoding"] == "chunked"
    assert headers["proxy"] == "Remove-Me"
    assert headers["proxy-authenticate"] == "Basic"
    assert headers["proxy-authorization"] == "Basic YWxhZGRpbjpvcGVuc2VzYW1l"
    assert headers.get("proxy-connection") == "close"
    assert headers.get("te") == "trailers, deflate;q=0.5"
