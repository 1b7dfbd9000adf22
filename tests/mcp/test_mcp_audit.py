"""The MCP audit log: a JSON line per tools/call with who, which tool, the decision, the status, where it went and
how long it took; written whole from several processes at once without interleaving."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path
from typing import Any

import pytest
import trio
from backends import service
from oauth_helpers import ToolServer, call

from gateway.mcp.audit import AuditLog, Record, format_line

RPC_HEADERS = [("content-type", "application/json"), ("accept", "application/json, text/event-stream")]
CONSUMERS = [{"username": "alice", "keyauth_credentials": [{"key": "alice-key"}]},
             {"username": "bob", "keyauth_credentials": [{"key": "bob-key"}]}]
PROXY = {"mode": "passthrough-listener", "logging": {"log_audits": True},
         "tools": [{"name": "delete", "description": "alice only", "acl": {"allow": ["alice"]}}]}


@pytest.fixture
def http_codec() -> str:
    return "llhttp"


def test_a_record_is_one_json_line():
    record = Record(1767225600.25, "mcp", "alice", "cred", "127.0.0.1", "k1.x", "rid", "delete", "denied",
                    "tool 'delete' is not allowed", 200, 4, None, 0.5)
    line = format_line(record)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    doc = json.loads(line)
    assert doc["time"] == "2026-01-01T00:00:00.250Z"
    assert doc["tool"] == "delete" and doc["decision"] == "denied" and doc["rpc_id"] == 4 and doc["upstream"] is None
    assert list(doc) == ["time", "route", "consumer", "credential", "client_ip", "session", "request_id", "tool",
                         "decision", "reason", "status", "rpc_id", "upstream", "latency_ms", "worker"]


def _writer(path: str, name: str, count: int) -> None:
    audit = AuditLog(path)
    for i in range(count):
        audit.put(Record(1767225600.0, "r", name, None, "127.0.0.1", None, None, "t" * (i % 300), "allowed", None,
                         200, i, "127.0.0.1:1", 0.1))
        if i % 37 == 0:
            audit.flush()
    audit.flush()


def test_four_processes_write_whole_lines(tmp_path: Path):
    path = str(tmp_path / "audit.log")
    procs = [multiprocessing.get_context("fork").Process(target=_writer, args=(path, f"w{i}", 2000))
             for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    lines = Path(path).read_bytes().split(b"\n")
    assert lines[-1] == b""
    docs = [json.loads(line) for line in lines[:-1]]
    assert len(docs) == 8000
    assert {d["consumer"] for d in docs} == {"w0", "w1", "w2", "w3"}


async def setup(nursery: trio.Nursery, gateway: Any, tmp_path: Path, limit: bool = False) -> tuple[ToolServer, int]:
    server = ToolServer(["search", "delete"])
    await nursery.start(server.serve)
    plugins = [{"name": "key-auth", "config": {}}, {"name": "ai-mcp-proxy", "config": PROXY}]
    if limit:
        plugins.append({"name": "rate-limiting", "config": {"day": 1, "limit_by": "mcp-tool"}})
    port = await gateway({"services": [service("mcp", f"http://127.0.0.1:{server.port}", [
        {"name": "mcp", "paths": ["/mcp"], "strip_path": False}])], "consumers": CONSUMERS, "plugins": plugins},
        mcp={"audit_log": str(tmp_path / "audit.log")})
    return server, port


async def audit_lines(tmp_path: Path, count: int) -> list[dict[str, Any]]:
    path = tmp_path / "audit.log"
    with trio.fail_after(5):
        while not path.exists() or path.read_bytes().count(b"\n") < count:
            await trio.sleep(0.02)
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def rpc_body(*calls: tuple[str, int]) -> bytes:
    messages = [{"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": n}} for n, i in calls]
    return json.dumps(messages if len(messages) > 1 else messages[0]).encode()


async def test_allowed_and_denied_calls_are_logged(nursery, gateway, tmp_path):
    server, port = await setup(nursery, gateway, tmp_path)
    session = [("mcp-session-id", "k1.not-sealed")]
    await call(port, "/mcp", [*RPC_HEADERS, ("apikey", "alice-key")], "POST", body=rpc_body(("delete", 1)))
    refused = await call(port, "/mcp", [*RPC_HEADERS, ("apikey", "bob-key"), ("x-request-id", "req-7")], "POST",
                         body=rpc_body(("delete", 2)))
    await call(port, "/mcp", [*RPC_HEADERS, ("apikey", "bob-key")], "POST",
               body=rpc_body(("search", 3), ("delete", 4)))
    await call(port, "/mcp", [*RPC_HEADERS, ("apikey", "bob-key")], "POST",
               body=b'{"jsonrpc":"2.0","id":5,"method":"tools/list"}')  # not a call: no line
    await call(port, "/mcp", [*RPC_HEADERS, ("apikey", "bob-key"), *session], "POST", body=rpc_body(("search", 6)))
    lines = await audit_lines(tmp_path, 5)
    assert [(d["consumer"], d["tool"], d["decision"], d["rpc_id"]) for d in lines] == [
        ("alice", "delete", "allowed", 1), ("bob", "delete", "denied", 2), ("bob", "search", "allowed", 3),
        ("bob", "delete", "denied", 4), ("bob", "search", "refused", 6)]  # (an unsealed session: the 404)
    first, denied = lines[0], lines[1]
    assert first["upstream"] == f"127.0.0.1:{server.port}" and first["status"] == 200
    assert first["latency_ms"] > 0 and first["route"] == "mcp" and first["time"].endswith("Z")
    assert denied["upstream"] is None and denied["reason"] == "tool 'delete' is not allowed"
    assert denied["request_id"] == refused.header("x-kong-request-id")  # the gateway's id, as the access log's
    assert lines[2]["upstream"] == first["upstream"] and lines[3]["upstream"] is None  # one batch, two fates


async def test_calls_refused_by_a_rate_limit_are_logged_as_limited(nursery, gateway, tmp_path):
    _, port = await setup(nursery, gateway, tmp_path, limit=True)
    for i in range(2):
        await call(port, "/mcp", [*RPC_HEADERS, ("apikey", "alice-key")], "POST", body=rpc_body(("search", i)))
    lines = await audit_lines(tmp_path, 2)
    assert [(d["decision"], d["status"]) for d in lines] == [("allowed", 200), ("limited", 429)]
    assert lines[1]["upstream"] is None


def _scoped_audit_config(server: ToolServer, tmp_path: Path, consumer_proxy: dict[str, Any],
                         global_proxy: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """key-auth for alice and bob, bob with his own ai-mcp-proxy, and a global one unless `global_proxy` is None:
    (the config, the gateway's MCP settings)."""
    plugins: list[dict[str, Any]] = [{"name": "key-auth"}]
    if global_proxy is not None:
        plugins.append({"name": "ai-mcp-proxy", "config": global_proxy})
    return ({"services": [service("mcp", f"http://127.0.0.1:{server.port}",
                                  [{"name": "mcp", "paths": ["/mcp"], "strip_path": False}])],
             "consumers": [CONSUMERS[0], {**CONSUMERS[1], "plugins": [{"name": "ai-mcp-proxy",
                                                                        "config": consumer_proxy}]}],
             "plugins": plugins},
            {"audit_log": str(tmp_path / "audit.log")})


async def test_a_consumers_own_ai_mcp_proxy_without_audits_keeps_its_calls_out_of_the_log(nursery, gateway, tmp_path):
    """kong/runloop/plugins_iterator.lua:215-266 (lookup_cfg: a consumer's instance beats a global one) and :372-410
    (get_next_and_collect: every phase gets the config of the instance looked up): bob's own ai-mcp-proxy
    (log_audits false) decides for bob's calls, the global one (log_audits true) for alice's."""
    server = ToolServer(["search"])
    await nursery.start(server.serve)
    config, mcp = _scoped_audit_config(server, tmp_path, {"mode": "passthrough-listener"},
                                       {"mode": "passthrough-listener", "logging": {"log_audits": True}})
    port = await gateway(config, mcp=mcp)
    bob = await call(port, "/mcp", [*RPC_HEADERS, ("apikey", "bob-key")], "POST", body=rpc_body(("search", 1)))
    alice = await call(port, "/mcp", [*RPC_HEADERS, ("apikey", "alice-key")], "POST", body=rpc_body(("search", 2)))
    assert bob.status == alice.status == 200
    lines = await audit_lines(tmp_path, 1)  # (alice's line is written after bob's would have been)
    assert [(d["consumer"], d["rpc_id"]) for d in lines] == [("alice", 2)]


async def test_a_consumers_own_ai_mcp_proxy_with_audits_logs_only_that_consumers_calls(nursery, gateway, tmp_path):
    """kong/runloop/plugins_iterator.lua:215-266: alice has no ai-mcp-proxy instance (none global, none of hers), so
    nothing of that plugin runs on her requests and her calls are not audited; bob's own instance (log_audits true)
    audits his."""
    server = ToolServer(["search"])
    await nursery.start(server.serve)
    config, mcp = _scoped_audit_config(server, tmp_path,
                                       {"mode": "passthrough-listener", "logging": {"log_audits": True}}, None)
    port = await gateway(config, mcp=mcp)
    alice = await call(port, "/mcp", [*RPC_HEADERS, ("apikey", "alice-key")], "POST", body=rpc_body(("search", 1)))
    bob = await call(port, "/mcp", [*RPC_HEADERS, ("apikey", "bob-key")], "POST", body=rpc_body(("search", 2)))
    assert alice.status == bob.status == 200
    lines = await audit_lines(tmp_path, 1)  # (bob's line is written after alice's would have been)
    assert [(d["consumer"], d["rpc_id"]) for d in lines] == [("bob", 2)]
