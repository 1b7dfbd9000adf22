"""Listeners with the `proxy_protocol` flag, over an in-process gateway: the PROXY protocol header a balancer in
`mode tcp` sends before its client's bytes names the client that realip (`real_ip_header: proxy_protocol`, the
balancer in trusted_ips) makes the address everything sees: X-Real-IP and X-Forwarded-For upstream, ip-restriction,
rate limiting by ip (nginx 1.27.1's ngx_http_wait_request_handler and ngx_http_ssl_handshake read the header first;
ngx_http_realip_module.c, NGX_HTTP_REALIP_PROXY; Kong's kong/runloop/handler.lua X-Forwarded-For). And behind
Debian's HAProxy with send-proxy-v2, when it is installed."""

from __future__ import annotations

import json
import shutil
import socket
import struct
import subprocess
from typing import Any

import pytest
import trio
from backends import Client, EchoBackend, free_port, raw_exchange, service, stop_process, wait_port
from tls_helpers import Pki

from gateway.http.proxy_protocol import SIGNATURE

TIMEOUT = 10
HEADER_TIMEOUT_S = 0.5
SOURCE = "198.51.100.7"
DENIED = "203.0.113.9"
REQUEST = b"GET /echo HTTP/1.1\r\nHost: pp.test\r\n\r\n"


@pytest.fixture
def http_codec() -> str:
    """The listener's header is read before any codec: one codec is enough."""
    return "llhttp"


def v1(source: str, port: int = 40000) -> bytes:
    family = "TCP6" if ":" in source else "TCP4"
    return f"PROXY {family} {source} {'::1' if ':' in source else '127.0.0.1'} {port} 8000\r\n".encode()


def v2_inet6(source: str, port: int = 40000) -> bytes:
    block = socket.inet_pton(socket.AF_INET6, source) + socket.inet_pton(socket.AF_INET6, "::1")
    return SIGNATURE + b"\x21\x21" + struct.pack("!H", 36) + block + struct.pack("!HH", port, 8000)


V2_LOCAL = SIGNATURE + b"\x20\x00\x00\x00"


async def _start(nursery, gateway, tmp_path, listen: list[str], **settings: Any) -> EchoBackend:  # noqa: ANN001
    """A gateway on `listen` before an echo backend: /echo plain, /limited at 1 a minute per client address,
    /restricted denying DENIED."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    routes = [{"paths": ["/echo"]},
              {"paths": ["/limited"], "plugins": [{"name": "rate-limiting",
                                                   "config": {"minute": 1, "limit_by": "ip", "policy": "local"}}]},
              {"paths": ["/restricted"], "plugins": [{"name": "ip-restriction", "config": {"deny": [DENIED]}}]}]
    doc = {"services": [service("s", f"http://127.0.0.1:{echo.port}", routes)]}
    await gateway(doc, listen=listen, trusted_ips=["127.0.0.1"], real_ip_header="proxy_protocol", **settings)
    return echo


async def _client(port: int, header: bytes = b"", local: str | None = None) -> Client:
    stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=local)
    if header:
        await stream.send_all(header)
    return Client(stream, "pp.test")


async def _seen(client: Client, target: str = "/echo", headers: list[tuple[str, str]] | None = None
                ) -> dict[str, str]:
    """The headers the upstream received (a 200 expected)."""
    reply = await client.request("GET", target, headers=headers)
    assert reply.status == 200, reply.body
    return dict(reply.json()["headers"])


async def _status(port: int, header: bytes, target: str) -> int:
    async with await _client(port, header) as client:
        return (await client.request("GET", target)).status


async def test_a_proxy_protocol_listener_takes_the_client_from_the_header(nursery, gateway, tmp_path):
    """On a proxy_protocol listener of a trusted balancer, the header's source is the client: X-Real-IP, and
    X-Forwarded-For when the request has none (Kong: `$remote_addr`), or the request's with the balancer appended
    (`realip_remote_addr`); for every request of the connection; v1 or v2, IPv4 or IPv6; a LOCAL header leaves the
    balancer's address. A listener without the flag reads no header: a PROXY line there is a bad request."""
    pp, plain = free_port(), free_port()
    await _start(nursery, gateway, tmp_path, [f"127.0.0.1:{pp} proxy_protocol", f"127.0.0.1:{plain}"])
    with trio.fail_after(TIMEOUT):
        async with await _client(pp, v1(SOURCE)) as client:
            for _ in range(2):
                seen = await _seen(client)
                assert (seen["x-real-ip"], seen["x-forwarded-for"]) == (SOURCE, SOURCE)
            seen = await _seen(client, headers=[("X-Forwarded-For", "10.9.9.9")])
            assert (seen["x-real-ip"], seen["x-forwarded-for"]) == (SOURCE, "10.9.9.9, 127.0.0.1")
        async with await _client(pp, v2_inet6("2001:db8::7")) as client:
            assert (await _seen(client))["x-real-ip"] == "2001:db8::7"
        async with await _client(pp, V2_LOCAL) as client:
            assert (await _seen(client))["x-real-ip"] == "127.0.0.1"
        async with await _client(plain) as client:
            assert (await _seen(client))["x-real-ip"] == "127.0.0.1"
        assert (await raw_exchange(plain, v1(SOURCE) + REQUEST))[0].startswith(b"HTTP/1.1 400 ")


async def test_ip_restriction_and_rate_limiting_see_the_header_s_client(nursery, gateway, tmp_path):
    """ip-restriction denies by the header's source, and rate-limiting `limit_by: ip` counts each source apart,
    though all come from the one balancer (kong.client.get_forwarded_ip() is $remote_addr after realip)."""
    pp = free_port()
    await _start(nursery, gateway, tmp_path, [f"127.0.0.1:{pp} proxy_protocol"])
    with trio.fail_after(TIMEOUT):
        assert await _status(pp, v1(DENIED), "/restricted") == 403
        assert await _status(pp, v1(SOURCE), "/restricted") == 200
        assert [await _status(pp, v1("192.0.2.1"), "/limited") for _ in range(2)] == [200, 429]
        assert await _status(pp, v1("192.0.2.2"), "/limited") == 200


async def test_zipkin_reports_the_header_s_client_and_port(nursery, gateway, tmp_path):
    """zipkin's request span names the client by kong.client.get_forwarded_ip() and get_forwarded_port()
    (zipkin/handler.lua), $remote_addr and $remote_port after realip: the PROXY header's source and source port."""
    echo, collector = EchoBackend(), EchoBackend("zipkin")
    await nursery.start(echo.serve)
    await nursery.start(collector.serve)
    pp = free_port()
    plugin = {"name": "zipkin", "config": {"http_endpoint": f"http://127.0.0.1:{collector.port}/api/v2/spans",
                                           "sample_ratio": 1, "queue": {"max_coalescing_delay": 0.01}}}
    await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}", [{"paths": ["/echo"]}])],
                   "plugins": [plugin]},
                  listen=[f"127.0.0.1:{pp} proxy_protocol"], trusted_ips=["127.0.0.1"], real_ip_header="proxy_protocol")
    with trio.fail_after(TIMEOUT):
        async with await _client(pp, v1(SOURCE, 40123)) as client:
            await _seen(client)
        while not (servers := [span for seen in collector.requests for span in json.loads(seen.body)
                                if span["kind"] == "SERVER"]):
            await trio.sleep(0.02)
    [request_span] = servers
    assert request_span["remoteEndpoint"] == {"ipv4": SOURCE, "port": 40123}


async def test_a_broken_late_or_missing_header_closes_the_connection_unanswered(nursery, gateway, tmp_path):
    """ngx_proxy_protocol_read's "broken header" (a request with no header, a malformed one) closes the connection
    with nothing sent; so does a header not whole within client_header_timeout (header_timeout_s)."""
    pp = free_port()
    await _start(nursery, gateway, tmp_path, [f"127.0.0.1:{pp} proxy_protocol"], header_timeout_s=HEADER_TIMEOUT_S)
    with trio.fail_after(TIMEOUT):
        assert (await raw_exchange(pp, REQUEST))[0] == b""
        assert (await raw_exchange(pp, b"PROXY TCP4 1.2.3.4 5.6.7.8 x 80\r\n" + REQUEST))[0] == b""
        began = trio.current_time()
        assert (await raw_exchange(pp, v1(SOURCE)[:20]))[0] == b""
        assert trio.current_time() - began >= HEADER_TIMEOUT_S * 0.9


async def test_a_tls_listener_reads_the_header_before_the_handshake(nursery, gateway, tmp_path):
    """`listen ... ssl proxy_protocol`: ngx_http_ssl_handshake takes the header first, then the ClientHello."""
    pki = Pki()
    cert, key = pki.files(tmp_path, "default", "pp.test")
    pp = free_port()
    await _start(nursery, gateway, tmp_path, [f"127.0.0.1:{pp} ssl proxy_protocol"], ssl_cert=cert, ssl_cert_key=key)
    with trio.fail_after(TIMEOUT):
        raw = await trio.open_tcp_stream("127.0.0.1", pp)
        await raw.send_all(v1(SOURCE))
        tls = trio.SSLStream(raw, pki.client_context(), server_hostname="pp.test")
        async with Client(tls, "pp.test") as client:  # type: ignore[arg-type]
            seen = await _seen(client)
    assert (seen["x-real-ip"], seen["x-forwarded-proto"]) == (SOURCE, "https")


def v2_inet_of(size: int, source: str) -> bytes:
    """A v2 header over TCP4 from `source` of `size` bytes, a NOOP TLV filling it."""
    block = socket.inet_aton(source) + socket.inet_aton("127.0.0.1") + struct.pack("!HH", 40000, 8000)
    fill = size - 16 - len(block) - 3
    return SIGNATURE + b"\x21\x11" + struct.pack("!H", size - 16) + block + b"\x04" + struct.pack("!H", fill) + (
        bytes(fill))


async def test_a_tls_listener_takes_a_header_larger_than_a_plain_listeners_first_read(nursery, gateway, tmp_path):
    """ngx_http_ssl_handshake peeks NGX_PROXY_PROTOCOL_MAX_HEADER + 1 bytes (ngx_http_request.c:666, 694-729) where
    a plain listener parses its 1k first read: a 2000-byte v2 header is taken before the handshake."""
    pki = Pki()
    cert, key = pki.files(tmp_path, "default", "pp.test")
    pp, plain = free_port(), free_port()
    listen = [f"127.0.0.1:{pp} ssl proxy_protocol", f"127.0.0.1:{plain} proxy_protocol"]
    await _start(nursery, gateway, tmp_path, listen, ssl_cert=cert, ssl_cert_key=key)
    with trio.fail_after(TIMEOUT):
        raw = await trio.open_tcp_stream("127.0.0.1", pp)
        await raw.send_all(v2_inet_of(2000, SOURCE))
        tls = trio.SSLStream(raw, pki.client_context(), server_hostname="pp.test")
        async with Client(tls, "pp.test") as client:  # type: ignore[arg-type]
            seen = await _seen(client)
        refused = (await raw_exchange(plain, v2_inet_of(2000, SOURCE) + REQUEST))[0]
    assert seen["x-real-ip"] == SOURCE
    assert refused == b""


def _haproxy_config(port: int, gateway_port: int) -> str:
    return f"""global
  maxconn 100
defaults
  mode tcp
  timeout connect 2s
  timeout client 10s
  timeout server 10s
frontend clients
  bind 127.0.0.1:{port}
  default_backend gateways
backend gateways
  server gw 127.0.0.1:{gateway_port} send-proxy-v2
"""


async def test_behind_haproxy_send_proxy_v2_the_client_is_haproxy_s_client(nursery, gateway, tmp_path):
    """README's several-hosts deployment: HAProxy `mode tcp` with `send-proxy-v2` before a proxy_protocol listener.
    The client connects from 127.0.0.2; HAProxy (127.0.0.1, trusted) forwards it: the upstream sees 127.0.0.2."""
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        pytest.skip("haproxy is not installed (scripts/setup installs Debian's haproxy)")
    pp, front = free_port(), free_port()
    await _start(nursery, gateway, tmp_path, [f"127.0.0.1:{pp} proxy_protocol"])
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(_haproxy_config(front, pp))
    proc = subprocess.Popen([haproxy, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await trio.to_thread.run_sync(wait_port, front)
        with trio.fail_after(TIMEOUT):
            async with await _client(front, local="127.0.0.2") as client:
                seen = await _seen(client)
    finally:
        stop_process(proc)
    assert (seen["x-real-ip"], seen["x-forwarded-for"]) == ("127.0.0.2", "127.0.0.2")
