"""tcp-log and udp-log against Kong's spec tests spec/03-plugins/01-tcp-log/01-tcp-log_spec.lua and
02-udp-log/01-udp-log_spec.lua: what one request's entry says, as the collector receives it.

Not ported: the custom_fields_by_lua cases (Lua; the gateway refuses the field, tests/telemetry/test_tel_tcp_log.py),
the #grpc / #grpcs cases (the gateway forwards HTTP/1.1 only, no gRPC), the #stream cases (no TCP or TLS stream
proxying), "TLS client_verify can be overwritten" (a post-function's Lua sets it). Covered elsewhere: "performs a TLS
handshake on the remote TCP server" (test_tel_tcp_log.py's TLS case) and "tries field encoded as JSON array instead
of object #6390" (test_tel_access_log.py: the same serializer writes every log plugin's entry)."""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import Any

import pytest
import trio
from backends import EchoBackend, free_port, request, service, wait_until
from backends import UdpCollector as Datagrams
from test_tel_tcp_log import Collector as Lines
from tls_helpers import Pki, https_get

TIMEOUT = 10
DELAY_S = 1  # Kong's /delay/1 (udp-log's spec waits 2 s; one is enough to see the upstream's time in `proxy`)


@pytest.fixture
def http_codec() -> str:
    """One codec: what is checked here is the log entry, above HTTP framing."""
    return "llhttp"


async def _gateway(nursery: trio.Nursery, gateway: Any, plugin: dict[str, Any], **settings: Any) -> int:
    """An echo backend behind the gateway, `plugin` on every route: the gateway's port."""
    backend = EchoBackend()
    await nursery.start(backend.serve)
    return await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}")], "plugins": [plugin]},
                         **settings)


async def _tcp_entry(nursery: trio.Nursery, gateway: Any, target: str = "/request") -> dict[str, Any]:
    """The tcp-log entry of one GET `target` (answered 200)."""
    lines = Lines()
    await nursery.start(lines.serve)
    port = await _gateway(nursery, gateway, {"name": "tcp-log", "config": {"host": "127.0.0.1", "port": lines.port}})
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", target)).status == 200
    await wait_until(lambda: lines.lines, "the entry")
    return json.loads(lines.lines[0])


async def _udp_entry(nursery: trio.Nursery, gateway: Any, target: str = "/request") -> dict[str, Any]:
    """The udp-log entry of one GET `target` (answered 200)."""
    datagrams = Datagrams()
    await nursery.start(datagrams.serve)
    port = await _gateway(nursery, gateway, {"name": "udp-log",
                                             "config": {"host": "127.0.0.1", "port": datagrams.port}})
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", target)).status == 200
    await wait_until(lambda: datagrams.datagrams, "the entry")
    return datagrams.entries[0]


def _assert_latencies_add_up(latencies: dict[str, int]) -> None:
    """Kong's check: proxy under 3 s, and request (plus 1 ms for rounding) at least kong + proxy."""
    assert DELAY_S * 1000 <= latencies["proxy"] < 3000
    assert 1 + latencies["request"] >= latencies["kong"] + latencies["proxy"]


# --- 01-tcp-log_spec ---------------------------------------------------------------------------------------------


async def test_tcp_log_logs_the_client_ip_and_no_tls_over_http(nursery, gateway):
    """01-tcp-log_spec "logs to TCP": client_ip is the caller's, and a request over plain HTTP has no request.tls."""
    entry = await _tcp_entry(nursery, gateway)
    assert entry["client_ip"] == "127.0.0.1"
    assert "tls" not in entry["request"]


async def test_tcp_log_latencies_add_up(nursery, gateway):
    """01-tcp-log_spec "logs proper latencies" (GET /delay/1)."""
    entry = await _tcp_entry(nursery, gateway, f"/delay?delay={DELAY_S}")
    _assert_latencies_add_up(entry["latencies"])


async def test_tcp_log_logs_the_tls_version_cipher_and_client_verify_of_an_https_request(nursery, gateway,
                                                                                         tmp_path: Path):
    """01-tcp-log_spec "logs TLS info": over HTTPS, request.tls is {version: TLSv1.3, cipher, client_verify: NONE}
    (no client certificate was asked for)."""
    pki = Pki()
    lines = Lines()
    await nursery.start(lines.serve)
    tls_port = free_port()
    cert, key = pki.files(tmp_path, "default", "tcp-logging.test")
    await _gateway(nursery, gateway, {"name": "tcp-log", "config": {"host": "127.0.0.1", "port": lines.port}},
                   listen=[f"127.0.0.1:{tls_port} ssl"], ssl_cert=cert, ssl_cert_key=key)
    context = pki.client_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # the client offers what Kong's test client does: 1.2 and 1.3
    with trio.fail_after(TIMEOUT):
        status, *_ = await trio.to_thread.run_sync(lambda: https_get(tls_port, context, "tcp-logging.test"))
    assert status == 200
    await wait_until(lambda: lines.lines, "the entry")
    tls = json.loads(lines.lines[0])["request"]["tls"]
    assert tls["version"] == "TLSv1.3"
    assert isinstance(tls["cipher"], str) and tls["cipher"]
    assert tls["client_verify"] == "NONE"


# --- 01-udp-log_spec ---------------------------------------------------------------------------------------------


async def test_udp_log_logs_the_client_ip(nursery, gateway):
    """01-udp-log_spec "logs to UDP"."""
    entry = await _udp_entry(nursery, gateway)
    assert entry["client_ip"] == "127.0.0.1"


async def test_udp_log_latencies_add_up(nursery, gateway):
    """01-udp-log_spec "logs proper latencies" (GET /delay/2; 1 s here)."""
    entry = await _udp_entry(nursery, gateway, f"/delay?delay={DELAY_S}")
    _assert_latencies_add_up(entry["latencies"])
