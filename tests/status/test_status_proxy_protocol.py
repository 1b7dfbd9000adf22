"""status_listen with `proxy_protocol`, as Kong takes it: kong/conf_loader/listeners.lua's http flags, which
status_listen is parsed with (kong/conf_loader/init.lua `{ name = "status_listen", subsystem = "http" ... }`), list
proxy_protocol, kong.conf.default documents it for status_listen, and kong/templates/nginx_kong.lua writes the entry
into the kong_status server's `listen`: nginx then reads a PROXY protocol header before each connection's request
(src/http/ngx_http_request.c:336-355,468-471 at release-1.27.1), within client_header_timeout."""

from __future__ import annotations

import json
import socket
import struct
from functools import partial

import trio
from backends import Client, raw_exchange
from prometheus_client import CollectorRegistry

from gateway.config import parse_config
from gateway.config.schema import GatewaySettings
from gateway.http.proxy_protocol import SIGNATURE
from gateway.status import BaseStatusSource, StatusApp, serve_status

TIMEOUT = 10
HEADER_TIMEOUT_S = 0.3
V1 = b"PROXY TCP4 198.51.100.7 127.0.0.1 40000 8100\r\n"
V2 = (SIGNATURE + b"\x21\x11" + struct.pack("!H", 12) + socket.inet_pton(socket.AF_INET, "198.51.100.7")
      + socket.inet_pton(socket.AF_INET, "127.0.0.1") + struct.pack("!HH", 40000, 8100))
LIVE = b"GET /live HTTP/1.1\r\nHost: status.test\r\n\r\n"


def test_a_status_listen_with_proxy_protocol_is_accepted():
    """The loader refused it as an unsupported option; with reuseport and backlog=N (Kong's default line) too."""
    for entry in ("127.0.0.1:8100 proxy_protocol", "127.0.0.1:8007 reuseport backlog=16384 proxy_protocol"):
        config = parse_config(json.dumps({"gateway": {"status_listen": entry}}), "f.yml")
        assert config.gateway.status_listen == entry


SETTINGS = GatewaySettings(header_timeout_s=HEADER_TIMEOUT_S)


async def _serve(nursery: trio.Nursery) -> int:
    app = StatusApp(BaseStatusSource(), CollectorRegistry())
    _, port = await nursery.start(partial(serve_status, app, "127.0.0.1", 0, proxy_protocol=True,
                                          settings=lambda: SETTINGS))
    return port


async def test_a_proxy_protocol_status_listener_reads_the_header_before_the_requests(nursery):
    """A v1 or v2 header, whole or cut anywhere, then requests on the kept-alive connection: each is answered."""
    port = await _serve(nursery)
    with trio.fail_after(TIMEOUT):
        for header in (V1, V2):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(header[:7])
            await trio.sleep(0.01)
            await stream.send_all(header[7:])
            async with Client(stream, "status.test") as client:
                assert [(await client.request("GET", "/live")).status for _ in range(2)] == [200, 200]


async def test_a_proxy_protocol_status_listener_closes_a_connection_without_a_whole_header_unanswered(nursery):
    """nginx's "broken header" (a request with no header, a malformed one) and a header not whole within
    client_header_timeout (header_timeout_s) close the connection with nothing sent."""
    port = await _serve(nursery)
    with trio.fail_after(TIMEOUT):
        assert (await raw_exchange(port, LIVE))[0] == b""
        assert (await raw_exchange(port, b"PROXY TCP4 1.2.3.4 5.6.7.8 x 80\r\n" + LIVE))[0] == b""
        began = trio.current_time()
        assert (await raw_exchange(port, V1[:20]))[0] == b""
        assert trio.current_time() - began >= HEADER_TIMEOUT_S * 0.9
