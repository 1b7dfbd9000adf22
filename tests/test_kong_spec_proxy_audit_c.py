"""Kong 3.9.3's spec/02-integration/05-proxy/ 04-plugins_triggering, 06-ssl, 11-handler, 18-upstream_tls,
23-context and 29-collect-plugin-errors, `it` by `it`, against the gateway: what the existing ports do not cover."""

from __future__ import annotations

import json
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
import trio
from backends import Client, EchoBackend, free_port, log_lines, parse_raw_response, raw_exchange, request, service
from tls_helpers import Pki

TIMEOUT = 10


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


async def echo(nursery: trio.Nursery) -> EchoBackend:
    backend = EchoBackend()
    await nursery.start(backend.serve)
    return backend


def _tls_requests(port: int, ctx: ssl.SSLContext, server_name: str | None,
                  requests: list[bytes]) -> list[tuple[int, dict[str, str], bytes]]:
    """Several requests on one TLS connection (each answered with a Content-Length), in a thread."""
    out = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name) as tls:
            buf = b""
            for req in requests:
                tls.sendall(req)
                while b"\r\n\r\n" not in buf:
                    buf += tls.recv(65536)
                head, _, rest = buf.partition(b"\r\n\r\n")
                status, headers, _ = parse_raw_response(head + b"\r\n\r\n")
                length = int(headers.get("content-length", "0"))
                while len(rest) < length:
                    rest += tls.recv(65536)
                out.append((status, headers, rest[:length]))
                buf = rest[length:]
    return out


def _insecure() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def tls_gateway(gateway: Any, pki: Pki, tmp_path: Path, doc: dict[str, Any],
                      **settings: Any) -> tuple[int, int]:
    http_port, tls_port = free_port(), free_port()
    cert, key = pki.files(tmp_path, "default", "default.test")
    await gateway(doc, listen=[f"127.0.0.1:{http_port}", f"127.0.0.1:{tls_port} ssl"], ssl_cert=cert,
                  ssl_cert_key=key, **settings)
    return http_port, tls_port


# --- 04-plugins_triggering: "Plugins triggering with TLS keepalive" -------------------------------------------------


async def test_a_terminated_route_leaves_nothing_behind_on_a_kept_alive_tls_connection(gateway, nursery, pki,
                                                                                       tmp_path):
    """04-plugins_triggering_spec "certificate phase clears context, fix #7054": over one TLS connection (no SNI),
    request-termination's 201 on the https route /route-1, then /route-2 of the same service proxied (200)."""
    backend = await echo(nursery)
    doc = {"services": [service("mock", f"http://127.0.0.1:{backend.port}", [
        {"paths": ["/route-1"], "protocols": ["https"],
         "plugins": [{"name": "request-termination", "config": {"status_code": 201}}]},
        {"paths": ["/route-2"], "protocols": ["https"]}])]}
    _, tls_port = await tls_gateway(gateway, pki, tmp_path, doc)
    reqs = [b"GET /route-1/status/200 HTTP/1.1\r\nHost: localhost\r\n\r\n",
            b"GET /route-2/status/200 HTTP/1.1\r\nHost: localhost\r\n\r\n"]
    with trio.fail_after(TIMEOUT):
        got = await trio.to_thread.run_sync(lambda: _tls_requests(tls_port, _insecure(), None, reqs))
    assert [g[0] for g in got] == [201, 200]
    assert len(backend.requests) == 1


# --- 06-ssl: "global SSL" (a request over TLS without SNI to an https route) --------------------------------------


async def test_an_https_route_is_served_to_a_client_without_sni(gateway, nursery, pki, tmp_path):
    """06-ssl_spec "fallbacks on the default proxy SSL certificate when SNI is not provided by client": GET
    /status/200, Host global.com, over TLS without SNI, to a route with protocols [https] and hosts [global.com]."""
    backend = await echo(nursery)
    doc = {"services": [service("global-cert", f"http://127.0.0.1:{backend.port}",
                                [{"protocols": ["https"], "hosts": ["global.com"]}])]}
    _, tls_port = await tls_gateway(gateway, pki, tmp_path, doc)
    reqs = [b"GET /status/200 HTTP/1.1\r\nHost: global.com\r\n\r\n"]
    with trio.fail_after(TIMEOUT):
        ((status, headers, body),) = await trio.to_thread.run_sync(
            lambda: _tls_requests(tls_port, _insecure(), None, reqs))
    assert status == 200, body
    seen = dict(json.loads(body)["headers"])
    assert seen["x-forwarded-proto"] == "https" and seen["x-forwarded-port"] == str(tls_port)


# --- 06-ssl: the https redirect's Location (kong/runloop/handler.lua:1237-1279) ------------------------------------


@pytest.mark.parametrize(("raw", "location"), [
    # nginx's $host: the Host without its port, in lower case
    (b"GET /redirect-301?foo=bar HTTP/1.1\r\nHost: Example.COM:8000\r\n\r\n", "https://example.com/redirect-301?foo=bar"),
    (b"GET /redirect-301 HTTP/1.1\r\nHost: Example.COM.\r\n\r\n", "https://example.com/redirect-301"),
    # $request_uri as sent, not normalized
    (b"GET /redirect-301/a/../b%2Fc?x=%20 HTTP/1.1\r\nHost: example.com\r\n\r\n",
     "https://example.com/redirect-301/a/../b%2Fc?x=%20"),
    # an absolute-form target: $host is its authority, $request_uri its path and query
    (b"GET http://example.com/redirect-301?q=1 HTTP/1.1\r\nHost: example.com\r\n\r\n",
     "https://example.com/redirect-301?q=1"),
])
async def test_the_https_redirect_location_is_host_and_request_uri(gateway, nursery, raw, location):
    """06-ssl_spec "returns 301 when route has https_redirect_status_code set to 301" (kong/runloop/handler.lua:1278:
    "https://" .. forwarded_host .. ctx.request_uri; forwarded_host = var.host, ctx.request_uri = var.request_uri)."""
    backend = await echo(nursery)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{backend.port}", [
        {"protocols": ["https"], "paths": ["/redirect-301"], "https_redirect_status_code": 301}])]})
    data, _ = await raw_exchange(port, raw.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
    status, headers, _ = parse_raw_response(data)
    assert (status, headers.get("location")) == (301, location)


async def test_a_trusted_x_forwarded_host_is_the_redirects_host(gateway, nursery):
    """kong/runloop/handler.lua:1237: from a trusted peer forwarded_host is the X-Forwarded-Host as sent."""
    backend = await echo(nursery)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{backend.port}", [
        {"protocols": ["https"], "hosts": ["example.com"], "https_redirect_status_code": 308}])]},
        trusted_ips=["127.0.0.1"])
    reply = await request(port, "GET", "/p?a=1", host="example.com",
                          headers=[("x-forwarded-host", "Public.Example:8443")])
    assert (reply.status, reply.header("location")) == (308, "https://Public.Example:8443/p?a=1")


async def test_a_route_of_http_and_https_never_redirects(gateway, nursery):
    """kong/runloop/handler.lua:1261: only `protocols.https and not protocols.http` redirects: a route of both with
    https_redirect_status_code is proxied over plain HTTP."""
    backend = await echo(nursery)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{backend.port}", [
        {"protocols": ["http", "https"], "hosts": ["example.com"], "https_redirect_status_code": 301}])]})
    reply = await request(port, "GET", "/", host="example.com")
    assert reply.status == 200


# --- 23-context: the phase timings a proxied request is logged with --------------------------------------------------


async def test_proxied_statuses_and_their_latencies_agree_with_the_headers(gateway, nursery, tmp_path):
    """23-context_spec "context values are correctly calculated" and "can run unbuffered request after a "response"
    one" (statuses 231-235 relayed, on one connection): ctx-tests checks that KONG_PROXY_LATENCY and KONG_WAITING_TIME
    are computed once; kong/pdk/log.lua:912-917 logs them as latencies.kong and .proxy, and kong/runloop/handler.lua's
    header_filter sends the same values as X-Kong-Proxy-Latency and X-Kong-Upstream-Latency."""
    backend = await echo(nursery)
    log = tmp_path / "file.log"
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{backend.port}", [
        {"paths": ["/"], "plugins": [{"name": "file-log", "config": {"path": str(log)}}]}])]})
    replies = []
    with trio.fail_after(TIMEOUT):
        async with await Client.connect(port) as client:
            for status in (231, 232, 233, 234, 235):
                replies.append(await client.request("GET", f"/status/{status}?status={status}&delay=0.03"))
    assert [r.status for r in replies] == [231, 232, 233, 234, 235]
    lines = await log_lines(log, 5)
    for reply, line in zip(replies, lines, strict=True):
        assert line["response"]["status"] == reply.status
        assert line["latencies"]["proxy"] == int(reply.header("x-kong-upstream-latency")) >= 30
        assert line["latencies"]["kong"] == int(reply.header("x-kong-proxy-latency"))
        assert line["latencies"]["request"] >= line["latencies"]["proxy"] + line["latencies"]["kong"] - 1



# --- 18-upstream_tls: an upstream entity's targets over TLS ---------------------------------------------------------


CA_ID = "6e0a3f5c-1d2b-4c3d-8e4f-5a6b7c8d9e77"


@pytest.mark.parametrize(("host_header", "sni"), [(None, "localhost"), ("upstream.test", "upstream.test")])
async def test_an_upstreams_target_name_or_host_header_is_the_sni_and_the_verified_name(gateway, nursery, pki,
                                                                                       host_header, sni):
    """18-upstream_tls "mutual TLS authentication against upstream with Upstream object" with tls_verify: Kong's
    upstream_host is balancer_data.hostname, the target's name or the upstream's host_header
    (kong/runloop/handler.lua access.after), and nginx's proxy_ssl_name $upstream_host sends it (port stripped) and
    verifies the certificate against it."""
    from test_kong_spec_tls import sni_echo

    backend = await sni_echo(nursery, pki.issue("localhost", "upstream.test"))
    up: dict[str, Any] = {"name": "backend-tls", "targets": [{"target": f"localhost:{backend.port}"}]}
    if host_header:
        up["host_header"] = host_header
    port = await gateway({"upstreams": [up],
                          "services": [service("s", "https://backend-tls", [{"paths": ["/"]}], retries=0,
                                               tls_verify=True, ca_certificates=[CA_ID])],
                          "ca_certificates": [{"id": CA_ID, "cert": pki.ca_pem}]})
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/")
    assert reply.status == 200, reply.body
    assert backend.server_names == [sni]
