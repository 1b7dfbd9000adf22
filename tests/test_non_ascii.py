"""Non-ASCII and odd bytes end to end: what reaches the router, the log line and the MCP peek keeps its bytes, and
nothing a client can send makes a 500 or loses a log line."""

from __future__ import annotations

import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).parent / "mcp"))
from backends import EchoBackend, log_lines, request, service

TIMEOUT = 5


async def test_route_query_with_percent_encoded_utf8_beyond_latin1_is_routed_not_500(nursery, gateway):
    """A route with `query` (the gateway's own field) reads the request's arguments as bytes: a "€" (%E2%82%AC) or an
    octet that is no UTF-8 (%FF) among them is routed, never a 500 (it was a UnicodeEncodeError)."""
    backend = EchoBackend()
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}", [
        {"name": "q", "paths": ["/q"], "query": {"v": ["1"]}},
        {"name": "all", "paths": ["/"]}])]})
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/q?v=1")).status == 200
        assert (await request(port, "GET", "/q?v=1&x=%E2%82%AC")).status == 200
        assert (await request(port, "GET", "/q?v=1&x=%FF")).status == 200


async def test_route_query_value_non_ascii_matches_percent_encoded_utf8(nursery, gateway):
    """A route's query value "é" (UTF-8 in the config) matches `?v=%C3%A9`, its percent-encoded form, as it matches
    the raw bytes."""
    backend = EchoBackend()
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}", [
        {"name": "q", "paths": ["/q"], "query": {"v": ["é"]}}])]})
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/q?v=%C3%A9")).status == 200


async def test_correlation_id_from_client_utf8_is_logged_as_sent_not_mojibake(nursery, gateway, tmp_path):
    """kong/plugins/correlation-id/handler.lua:56-66 (3.9.3): the client's header value is passed to
    kong.log.set_serialize_value("correlation_id", ...) as it is, and file-log's cjson writes its bytes raw
    (UTF-8 "café" stays "café"; it was decoded as latin-1, "cafÃ©")."""
    backend = EchoBackend()
    await nursery.start(backend.serve)
    log = tmp_path / "file.log"
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}", [
        {"name": "api", "paths": ["/api"], "plugins": [
            {"name": "correlation-id", "config": {"header_name": "X-Cid"}},
            {"name": "file-log", "config": {"path": str(log)}}]}])]})
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/api", headers=[("x-cid", "caf\u00e9".encode())])
        assert reply.status == 200
        [line] = await log_lines(log, 1)
    assert line["request"]["headers"]["x-cid"] == "café"
    assert line["correlation_id"] == "café", line["correlation_id"]


async def test_mcp_tool_name_with_a_lone_surrogate_escape_still_gets_its_log_line(nursery, gateway, tmp_path):
    """A tools/call whose name is the JSON escape of a lone surrogate ("\\udcff": msgspec refuses the body, the
    prefix scanner's json.scanstring reads it into the str 'a\\udcffb', kept as RpcInfo.name when a route on
    mcp_tools makes the router peek) is spelt out, as jsonrpc's lenient reader spells it (`_encodable`): the line
    could not be encoded and was lost. Every request gets its line (kong/plugins/file-log/handler.lua:66-68)."""
    import json

    from mcp_helpers import JSON_HEADERS, TEST_KEY, FakeMcp, mcp_config, session_keys
    fake = FakeMcp("a")
    await nursery.start(fake.serve)
    log = tmp_path / "file.log"
    doc = mcp_config([fake.port], route={"plugins": [{"name": "file-log", "config": {"path": str(log)}}]},
                     extra_routes=[{"name": "special", "paths": ["/mcp"], "strip_path": False, "mcp_tools": ["x"]}])
    port = await gateway(doc, mcp=session_keys(TEST_KEY))
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a\\udcffb","arguments":{}}}'
    assert json.loads(body)["params"]["name"] == "a\udcffb"
    with trio.fail_after(TIMEOUT):
        first = await request(port, "POST", "/mcp", headers=JSON_HEADERS, body=body, host="localhost")
        second = await request(port, "POST", "/mcp", headers=JSON_HEADERS,
                               body=b'{"jsonrpc":"2.0","id":2,"method":"ping"}', host="localhost")
        assert second.status == 200
        await trio.sleep(0.3)
    lines = log.read_text().splitlines() if log.exists() else []
    assert len(lines) == 2, (first.status, lines)
