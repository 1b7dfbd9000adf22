"""The bench's MCP configurations (scripts/bench gw-mcp, gw-mcp-gov) are valid: the governance one's token is
accepted against the JWKS the bench's backend serves, its tool is allowed and another refused (checked through the
in-process gateway, not benchmarked); the backend's nginx config with that JWKS passes `nginx -t`."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import yaml
from oauth_helpers import JwksServer, call

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench"


def load_bench():  # noqa: ANN201 - the script as a module
    loader = importlib.machinery.SourceFileLoader("bench_script_mcp", str(SCRIPT))
    spec = importlib.util.spec_from_loader("bench_script_mcp", loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_script_mcp"] = module
    loader.exec_module(module)
    return module


bench = load_bench()
CONFIGS = {c.name: c for c in bench.CONFIGURATIONS if c.name in ("gw-mcp", "gw-mcp-session", "gw-mcp-gov")}


@pytest.fixture
def http_codec() -> str:
    return "llhttp"


def test_both_configurations_are_in_the_bench():
    assert set(CONFIGS) == {"gw-mcp", "gw-mcp-session", "gw-mcp-gov"}
    assert CONFIGS["gw-mcp-gov"].headers[0].startswith("Authorization: Bearer ey")


async def test_the_governance_configuration_admits_the_bench_call_only(nursery, gateway, tmp_path):
    backend = JwksServer()
    backend.body = bench.BENCH_JWKS.encode()  # /jwks; every other path gets the same 200, as the echo would
    await nursery.start(backend.serve)
    doc = yaml.safe_load(bench.fill(CONFIGS["gw-mcp-gov"].config, port=0, backend_port=backend.port,
                                    prefix=tmp_path))
    settings = doc.pop("gateway")
    port = await gateway(doc, mcp=settings["mcp"])
    headers = [tuple(h.split(": ", 1)) for h in CONFIGS["gw-mcp-gov"].headers]
    body = bench.load_payloads().tools_call_body().encode()
    rpc = [("content-type", "application/json"), ("accept", "application/json, text/event-stream")]
    assert (await call(port, "/", [*rpc, *headers], "POST", "127.0.0.1", body)).status == 200
    other = body.replace(b'"name":"echo"', b'"name":"other"')
    refused = await call(port, "/", [*rpc, *headers], "POST", "127.0.0.1", other)
    assert json.loads(refused.body)["error"]["message"] == "tool 'other' is not allowed"
    assert (await call(port, "/", rpc, "POST", "127.0.0.1", body)).status == 401
    with trio.fail_after(5):
        while not (tmp_path / "mcp-audit.log").exists() or b"other" not in (tmp_path / "mcp-audit.log").read_bytes():
            await trio.sleep(0.02)
    assert [json.loads(line)["decision"] for line in (tmp_path / "mcp-audit.log").read_bytes().splitlines()] == \
        ["allowed", "denied"]


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
def test_the_backend_config_with_the_jwks_passes_nginx_t(tmp_path):
    conf = tmp_path / "nginx.conf"
    conf.write_text(bench.fill(bench.NGINX_BACKEND_CONF, prefix=tmp_path, port=1, result=bench.BACKEND_RESULT))
    out = subprocess.run(["nginx", "-t", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "e.log")],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr


async def test_the_session_configurations_id_opens_to_the_backends_own_session(nursery, gateway):
    """gw-mcp-session's header is a session id this gateway sealed: each request goes to the backend with the
    backend's own id restored (not refused with 404 as an id the gateway did not seal is)."""
    from backends import EchoBackend

    backend = EchoBackend()
    await nursery.start(backend.serve)
    doc = yaml.safe_load(bench.fill(CONFIGS["gw-mcp-session"].config, port=0, backend_port=backend.port))
    settings = doc.pop("gateway")
    port = await gateway(doc, mcp=settings["mcp"])
    session, *mcp_headers = [tuple(bench.fill(h, mcp_session=bench.sealed_session_id(backend.port)).split(": ", 1))
                             for h in CONFIGS["gw-mcp-session"].headers]
    name, value = session
    assert name == "Mcp-Session-Id" and [n for n, _ in mcp_headers] == ["Mcp-Method", "Mcp-Name"]
    body = bench.load_payloads().tools_call_body().encode()
    rpc = [("content-type", "application/json"), ("accept", "application/json, text/event-stream"), *mcp_headers]
    reply = await call(port, "/", [*rpc, (name, value)], "POST", "127.0.0.1", body)
    assert reply.status == 200  # the headers match the body: checked and passed
    assert dict(json.loads(reply.body)["headers"])["mcp-session-id"] == "bench-upstream-session-1"
    tampered = value[:-1] + ("A" if value[-1] != "A" else "B")
    assert (await call(port, "/", [*rpc, (name, tampered)], "POST", "127.0.0.1", body)).status == 404
    other = body.replace(b'"name":"echo"', b'"name":"other"')
    assert (await call(port, "/", [*rpc, (name, value)], "POST", "127.0.0.1", other)).status == 400  # peeked
