"""TLS end to end with real processes (issue 18): the supervised gateway with two workers (started as `gateway start
--workers 2` starts it: e2e_helpers.GatewayNode.start) terminating HTTPS in front of HTTPS MCP SDK servers, driven by
the MCP SDK client, curl and `openssl s_client` (SNI, resumption, renegotiation), and a certificate replaced by
`gateway reload`.

The SDK servers serve every test here; so does one gateway, but for the reload's, which has a gateway of its own."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
import trio
from backends import free_port, stop_process, wait_port
from e2e_helpers import GatewayNode
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_helpers import SERVER_SCRIPT, bounded, whoami
from tls_helpers import Pki

NAMES = ["alpha", "beta"]
TEST_CA = "5a1c8e8e-7f6e-4c43-a2a1-0c0ffee00002"
OPENSSL = shutil.which("openssl")
CURL = shutil.which("curl")


class TlsNode(GatewayNode):
    """The supervised gateway in a scratch directory, listening with TLS only, over HTTPS upstreams."""

    def __init__(self, workdir: Path, pki: Pki, upstream_ports: list[int]) -> None:
        super().__init__(workdir, {})
        self.pki = pki
        self.ca_file = workdir / "ca.pem"
        self.ca_file.write_text(pki.ca_pem)
        self.config = workdir / "gateway.json"
        self.upstream_ports = upstream_ports
        self.write_config(pki.issue("mcp.test", "localhost"))

    def write_config(self, cert: tuple[str, str]) -> None:
        doc = {
            "gateway": {"listen": f"127.0.0.1:{self.port} ssl", "status_listen": None, "drain_timeout": 1,
                        "mcp": {"allowed_hosts": ["mcp.test", "localhost"]}},
            "certificates": [{"cert": cert[0], "key": cert[1], "snis": ["mcp.test", "localhost"]}],
            "ca_certificates": [{"id": TEST_CA, "cert": self.pki.ca_pem}],
            "services": [{"name": "mcp", "url": "https://mcp-cluster", "tls_verify": True,
                          "ca_certificates": [TEST_CA], "read_timeout": 10000,
                          "routes": [{"name": "mcp", "paths": ["/mcp"], "strip_path": False, "mcp": True}]}],
            "upstreams": [{"name": "mcp-cluster",
                           "targets": [{"target": f"127.0.0.1:{p}"} for p in self.upstream_ports]}],
        }
        self.config.write_text(json.dumps(doc))


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


@pytest.fixture(scope="module")
def upstream_ports(tmp_path_factory, pki) -> Iterator[list[int]]:
    """The HTTPS SDK servers alpha and beta (a certificate of the test CA for localhost and 127.0.0.1): their ports."""
    workdir = tmp_path_factory.mktemp("upstreams")
    procs = []
    try:
        cert_file = workdir / "upstream.pem"
        key_file = workdir / "upstream.key"
        cert, key = pki.issue("localhost", "127.0.0.1")
        cert_file.write_text(cert)
        key_file.write_text(key)
        ports = []
        for name in NAMES:
            port = free_port()
            ports.append(port)
            procs.append(subprocess.Popen([sys.executable, str(SERVER_SCRIPT), "--port", str(port), "--name", name,
                                           "--certfile", str(cert_file), "--keyfile", str(key_file)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port in ports:
            wait_port(port, timeout=30)
        yield ports
    finally:
        for proc in procs:
            stop_process(proc)


def running_node(workdir: Path, pki: Pki, upstream_ports: list[int]) -> Iterator[TlsNode]:
    node = TlsNode(workdir, pki, upstream_ports)
    try:
        trio.run(node.start, 2)
        yield node
    finally:
        node.cleanup()


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory, pki, upstream_ports) -> Iterator[TlsNode]:
    """The gateway of the tests that leave it as they found it."""
    yield from running_node(tmp_path_factory.mktemp("gateway"), pki, upstream_ports)


@pytest.fixture
def own_tls_node(tmp_path, pki, upstream_ports) -> Iterator[TlsNode]:
    """A gateway of its own, for a test that changes it."""
    yield from running_node(tmp_path / "gateway", pki, upstream_ports)


def test_mcp_sdk_session_over_https_through_two_workers_to_https_servers(tls_cluster, pki):
    node = tls_cluster
    url = f"https://localhost:{node.port}/mcp"

    async def scenario() -> list[str]:
        ctx = pki.client_context()
        async with httpx2.AsyncClient(verify=ctx, timeout=httpx2.Timeout(20, read=60),
                                      limits=httpx2.Limits(max_keepalive_connections=0)) as http:
            async with Client(streamable_http_client(url, http_client=http), mode="legacy") as client:
                first = client.server_info.name
                names = [await whoami(client) for _ in range(10)]
                return [first, *names]

    names = trio.run(bounded(60)(scenario))
    assert names[0] in NAMES
    assert names[1:] == [names[0]] * 10  # the session stays on its server across both workers


@pytest.mark.skipif(CURL is None, reason="curl is not installed (Debian package curl)")
def test_curl_verifies_the_gateway_certificate(tls_cluster):
    node = tls_cluster
    out = subprocess.run([CURL, "-sS", "--cacert", str(node.ca_file), "-o", "/dev/null", "-w", "%{http_code} "
                          "%{ssl_verify_result}", "-X", "POST", "-H", "content-type: application/json",
                          "-H", "accept: application/json, text/event-stream", "--data", "{}",
                          f"https://localhost:{node.port}/mcp"], capture_output=True, text=True, timeout=30)
    status, verify = out.stdout.split()
    assert verify == "0", out.stderr  # the chain verified against the test CA
    assert status == "400"  # the MCP server's answer to a body that is not JSON-RPC: TLS and proxying worked


def s_client(port: int, *args: str, stdin: str = "") -> str:
    out = subprocess.run([OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", *args], input=stdin,
                         capture_output=True, text=True, timeout=30)
    return out.stdout + out.stderr


@pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")
def test_openssl_sees_sni_alpn_and_resumes_a_session(tls_cluster, tmp_path):
    node = tls_cluster
    sess = tmp_path / "sess.pem"
    first = s_client(node.port, "-servername", "mcp.test", "-alpn", "http/1.1", "-tls1_2", "-sess_out", str(sess),
                     "-CAfile", str(node.ca_file))
    assert "Verify return code: 0 (ok)" in first
    assert "ALPN protocol: http/1.1" in first
    resumed = ""
    for _ in range(16):  # the kernel spreads connections over both workers; each has its own ticket keys
        resumed = s_client(node.port, "-servername", "mcp.test", "-tls1_2", "-sess_in", str(sess),
                           "-CAfile", str(node.ca_file))
        if "Reused, TLSv1.2" in resumed:
            break
    assert "Reused, TLSv1.2" in resumed


@pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")
def test_renegotiation_is_refused_and_the_gateway_serves_on(tls_cluster):
    node = tls_cluster
    out = s_client(node.port, "-servername", "mcp.test", "-tls1_2", "-CAfile", str(node.ca_file), stdin="R\n")
    assert "RENEGOTIATING" in out
    assert "Verify return code: 0 (ok)" in s_client(node.port, "-servername", "mcp.test", "-CAfile",
                                                     str(node.ca_file))


@pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")
def test_reload_serves_a_new_certificate(own_tls_node, pki):
    node = own_tls_node
    before = s_client(node.port, "-servername", "mcp.test", "-showcerts")
    node.write_config(pki.issue("mcp.test", "localhost", "renewed.test"))
    out = node.cli("reload", "--config", str(node.config))
    assert out.returncode == 0, out.stderr

    def leaf(text: str) -> str:
        return text.split("-----BEGIN CERTIFICATE-----", 1)[1].split("-----END CERTIFICATE-----", 1)[0]

    deadline = time.monotonic() + 10  # the old generation stops accepting once the new one accepts
    while leaf(s_client(node.port, "-servername", "mcp.test", "-showcerts")) == leaf(before):
        assert time.monotonic() < deadline, "the reloaded certificate was never served"
        time.sleep(0.2)
