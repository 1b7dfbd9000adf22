"""TLS listeners as nginx 1.27.1 under Kong 3.x runs them: the versions ssl_protocols names, what a connection that
starts no handshake is answered, how a cut response ends over TLS, and the https redirect of a request without a
Host. In-process gateways (the `gateway` fixture, once per codec) on 127.0.0.1 only, or no I/O at all."""

from __future__ import annotations

import socket
import ssl
from typing import Any

import pytest
import trio
from backends import BadBackend, EchoBackend, free_port, parse_raw_response, raw_exchange, service
from tls_helpers import Pki

from gateway.http.tls_contexts import ServerOptions, server_context

TIMEOUT = 10
PLAIN_HTTP_PAGE = b"The plain HTTP request was sent to HTTPS port"  # nginx's page for its 497


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


async def tls_gateway(gateway, nursery, pki: Pki, tmp_path, backend=None, routes=None,  # noqa: ANN001
                      **settings: Any) -> tuple[int, int]:
    """A gateway with a plain and a TLS listener (default certificate for default.test) before `backend` (an echo
    backend by default): (http port, tls port)."""
    if backend is None:
        backend = EchoBackend()
    await nursery.start(backend.serve)
    http_port, tls_port = free_port(), free_port()
    gw: dict[str, Any] = {"listen": [f"127.0.0.1:{http_port}", f"127.0.0.1:{tls_port} ssl"], **settings}
    gw["ssl_cert"], gw["ssl_cert_key"] = pki.files(tmp_path, "default", "default.test")
    await gateway({"services": [service("s", f"http://127.0.0.1:{backend.port}", routes)]}, **gw)
    return http_port, tls_port


def _negotiated(server: ssl.SSLContext, version: ssl.TLSVersion) -> str | None:
    """The version a client limited to `version` and `server` agree on, over memory buffers (no sockets); None when
    the handshake fails."""
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname, client_ctx.verify_mode = False, ssl.CERT_NONE
    client_ctx.minimum_version = client_ctx.maximum_version = version
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="default.test")
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    done = set()
    for _ in range(10):
        for side, name in ((client, "client"), (srv, "server")):
            if name in done:
                continue
            try:
                side.do_handshake()
                done.add(name)
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                return None
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if done == {"client", "server"}:
            return client.version()
    return None


def test_ssl_protocols_with_a_gap_does_not_serve_the_version_left_out(pki):
    """kong.conf `ssl_cipher_suite = custom` with `ssl_protocols = TLSv1.1 TLSv1.3`: Kong writes it as nginx's
    ssl_protocols (kong/conf_loader/constants.lua CONF_PARSERS ssl_protocols -> nginx_http_ssl_protocols), and nginx
    disables each version not named, one by one (src/event/ngx_event_openssl.c:378-382 at release-1.27.1:
    `if (!(protocols & NGX_SSL_TLSv1_2)) { SSL_CTX_set_options(ssl->ctx, SSL_OP_NO_TLSv1_2); }`): a TLS 1.2 client
    is refused, a TLS 1.3 one served."""
    ctx = server_context(ServerOptions("TLSv1.1 TLSv1.3", "custom"), [pki.issue("default.test")], "gateway")
    assert _negotiated(ctx, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
    assert _negotiated(ctx, ssl.TLSVersion.TLSv1_2) is None


def _without_request_id(response: bytes) -> tuple[int, bytes]:
    """(status, body) of a raw error response with its request id (one per request) cut off."""
    status, _, body = parse_raw_response(response)
    return status, body.partition(b"request_id")[0].partition(b"Request ID")[0]


async def test_what_starts_no_handshake_and_fails_the_parser_gets_the_plain_ports_400(gateway, nursery, pki,
                                                                                      tmp_path):
    """nginx looks at the first byte of a connection on an ssl listener: only 0x16, or one with the high bit set
    (SSLv2), starts a handshake; anything else is read as plain HTTP (src/http/ngx_http_request.c:754-803 at
    release-1.27.1, "plain http" -> ngx_http_wait_request_handler). What its parser refuses is a 400, as the plain
    port answers the same bytes: a first byte or method byte other than `A`-`Z`, `_`, `-` (src/http/ngx_http_parse.c
    :150-151 and 276-277, NGX_HTTP_PARSE_INVALID_METHOD), so a lower-case method too; an HTTP/1.1 request without
    Host (ngx_http_request.c:1975, ngx_http_process_request_header, which runs before the 497 of
    ngx_http_process_request)."""
    http_port, tls_port = await tls_gateway(gateway, nursery, pki, tmp_path)
    for refused in (b"\x00\x01\x02garbage\xff\r\n\r\n", b"get / HTTP/1.1\r\nHost: a\r\n\r\n",
                    b"GET / HTTP/1.1\r\n\r\n"):
        plain, _ = await raw_exchange(http_port, refused)
        data, _ = await raw_exchange(tls_port, refused)
        assert data.startswith(b"HTTP/1.1 400 ") and PLAIN_HTTP_PAGE not in data, (refused, data[:300])
        assert _without_request_id(data) == _without_request_id(plain)  # the plain port's answer


async def test_a_plain_request_nginxs_parser_takes_gets_the_497_page_on_the_tls_port(gateway, nursery, pki, tmp_path):
    """A method of `A`-`Z`, `_` and `-` passes nginx's parser (src/http/ngx_http_parse.c:150-151, 276-277 at
    release-1.27.1), whatever its first byte of those: the request read whole on a connection that started no
    handshake is answered nginx's 497 page (ngx_http_request.c:2067-2071, "client sent plain HTTP request to HTTPS
    port")."""
    _, tls_port = await tls_gateway(gateway, nursery, pki, tmp_path)
    for method in (b"_GET", b"-X", b"GET"):
        data, _ = await raw_exchange(tls_port, method + b" / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert data.startswith(b"HTTP/1.1 400 ") and PLAIN_HTTP_PAGE in data, (method, data[:300])


def _sslv2_client_hello() -> bytes:
    """An SSLv2-format ClientHello (RFC 6101 appendix E.2) offering TLS 1.0 and TLS_RSA_WITH_AES_128_CBC_SHA: a
    2-byte length with the high bit set, then msg_type 1, the version, the lengths, the cipher specs, a challenge."""
    body = b"\x01\x03\x01" + (3).to_bytes(2, "big") + (0).to_bytes(2, "big") + (16).to_bytes(2, "big")
    body += b"\x00\x00\x2f" + b"\x5a" * 16
    return (0x8000 | len(body)).to_bytes(2, "big") + body


async def test_a_first_byte_with_the_high_bit_on_the_tls_port_goes_to_openssl(gateway, nursery, pki, tmp_path):
    """A first byte with the high bit set is an SSLv2-format ClientHello to nginx (ngx_http_request.c:754 at
    release-1.27.1, `buf[0] & 0x80 /* SSLv2 */`): handed to OpenSSL, which answers it with a TLS alert record
    (content type 21) here, as it refuses TLS 1.0; not dropped unanswered, not answered as HTTP."""
    _, tls_port = await tls_gateway(gateway, nursery, pki, tmp_path)
    data, _ = await raw_exchange(tls_port, _sslv2_client_hello())
    assert data[:1] == b"\x15", data[:200]


def _http10_get_over_tls(port: int) -> tuple[bytes, str]:
    """An HTTP/1.0 GET over TLS read to its end: (what came, how it ended: "close_notify" for a clean TLS close)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="default.test", suppress_ragged_eofs=False) as tls:
            tls.sendall(b"GET /x HTTP/1.0\r\nHost: gw.test\r\n\r\n")
            data = b""
            try:
                while chunk := tls.recv(65536):
                    data += chunk
            except (OSError, ssl.SSLError) as e:
                return data, type(e).__name__
            return data, "close_notify"


async def test_a_cut_response_over_tls_does_not_end_with_close_notify(gateway, nursery, pki, tmp_path):
    """An HTTP/1.0 client's response is delimited by the connection's end. When the upstream breaks off mid-body the
    gateway aborts the client connection, a TCP reset on the plain port; over TLS, a close_notify first would be the
    peer's mark of a clean end, and the cut body would read as whole. nginx closes a connection in error without it
    (src/event/ngx_event_openssl.c:3261-3263 at release-1.27.1: `if (c->timedout || c->error || c->buffered) {
    mode = SSL_RECEIVED_SHUTDOWN|SSL_SENT_SHUTDOWN; SSL_set_quiet_shutdown(c->ssl->connection, 1); }`)."""
    _, tls_port = await tls_gateway(gateway, nursery, pki, tmp_path, BadBackend("truncate-chunked"))
    with trio.fail_after(TIMEOUT):
        data, ending = await trio.to_thread.run_sync(_http10_get_over_tls, tls_port)
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"0123456789")  # the head and the 10 bytes there were
    assert ending != "close_notify"


async def test_an_https_redirect_of_a_request_without_host_names_kongs_server_name(gateway, nursery, pki, tmp_path):
    """kong/runloop/handler.lua:1196 `ctx.host = var.host` and :1306 `header["Location"] = "https://" ..
    forwarded_host .. ctx.request_uri`; nginx's $host of a request without a Host (HTTP/1.0) is the server's
    server_name (src/http/ngx_http_variables.c:1230-1236 at release-1.27.1), Kong's `server_name kong`
    (kong/templates/nginx_kong.lua:91): Location `https://kong/x`, as X-Forwarded-Host says it."""
    routes = [{"paths": ["/"], "protocols": ["https"], "https_redirect_status_code": 301}]
    http_port, _ = await tls_gateway(gateway, nursery, pki, tmp_path, routes=routes)
    data, _ = await raw_exchange(http_port, b"GET /x HTTP/1.0\r\n\r\n")
    status, headers, _ = parse_raw_response(data)
    assert status == 301
    assert headers["location"] == "https://kong/x"
