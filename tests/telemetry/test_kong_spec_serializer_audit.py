"""Kong 3.9.3 spec audit: the `it` blocks of spec/01-unit/10-log_serializer_spec.lua and 12-plugins_order_spec.lua no
other test covered, each a test citing its spec file and `it` title."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from backends import EchoBackend, log_lines, request, service

TIMEOUT = 10


# --- spec/01-unit/10-log_serializer_spec.lua -------------------------------------------------------------------------


async def test_log_entry_of_a_proxied_request_has_kongs_basic_fields(nursery, gateway, tmp_path):
    """10-log_serializer_spec.lua "serializes without API, Consumer or Authenticated entity": client_ip, started_at
    (ms), the four latencies, request headers (authorization REDACTED), method, querystring, url
    (scheme://host:port + request_uri), uri, upstream_uri, upstream_status, request size and id, response headers
    (set-cookie kept) and size, no api / consumer / authenticated_entity, a tries table, source "upstream"."""
    echo = EchoBackend()
    echo.extra_headers = [(b"set-cookie", b"delicious=delicacy"), (b"header1", b"respheader1")]
    await nursery.start(echo.serve)
    log = tmp_path / "file.log"
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}", [{"paths": ["/"]}])],
                          "plugins": [{"name": "file-log", "config": {"path": str(log)}}]})
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "POST", "/request_uri?arg1=foo&arg2",
                              host="test.test", headers=[("header1", "header1"), ("authorization", "authorization")],
                              body=b"abc")
        assert reply.status == 200
        (line,) = await log_lines(log, 1)
    assert line["client_ip"] == "127.0.0.1"
    assert isinstance(line["started_at"], int) and line["started_at"] > 1_600_000_000_000
    assert set(line["latencies"]) == {"kong", "proxy", "request", "receive"}
    assert all(isinstance(v, int) and v >= 0 for v in line["latencies"].values())
    req = line["request"]
    assert req["headers"]["header1"] == "header1" and req["headers"]["authorization"] == "REDACTED"
    assert req["method"] == "POST"
    assert req["querystring"] == {"arg1": "foo", "arg2": True}
    assert req["url"] == f"http://test.test:{port}/request_uri?arg1=foo&arg2"
    assert req["uri"] == "/request_uri?arg1=foo&arg2"
    assert req["id"] == reply.header("x-kong-request-id")
    assert isinstance(req["size"], int) and req["size"] > len(b"POST /request_uri?arg1=foo&arg2 HTTP/1.1\r\n")
    assert line["upstream_uri"] == "/request_uri?arg1=foo&arg2"
    assert line["upstream_status"] == "200"
    resp = line["response"]
    assert resp["status"] == 200 and resp["headers"]["set-cookie"] == "delicious=delicacy"
    assert resp["headers"]["header1"] == "respheader1"
    assert isinstance(resp["size"], int) and resp["size"] > len(reply.body)
    assert "api" not in line and "consumer" not in line and "authenticated_entity" not in line
    assert [(t["ip"], t["port"]) for t in line["tries"]] == [("127.0.0.1", echo.port)]
    assert line["source"] == "upstream"
    assert line["route"]["id"] and line["service"]["id"]


# --- spec/01-unit/12-plugins_order_spec.lua --------------------------------------------------------------------------


@pytest.mark.parametrize(("plugin", "header"), [
    ({"name": "cors"}, "access-control-allow-origin"),
    ({"name": "correlation-id", "config": {"echo_downstream": True}}, "kong-request-id"),
], ids=["cors", "correlation-id"])
async def test_the_header_filter_runs_in_priority_order(nursery, gateway, plugin: dict[str, Any], header: str):
    """12-plugins_order_spec.lua "run in the following order": cors (2000) and correlation-id (100001) come before
    response-transformer (800) in every phase, the header filter too, so response-transformer's remove.headers
    takes out the header their header_filter set (cors/handler.lua configure_origin: `*`; correlation-id/handler.lua
    header_filter with echo_downstream)."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    transformer = {"name": "response-transformer", "config": {"remove": {"headers": [header]}}}
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}", [{"paths": ["/"]}])],
                          "plugins": [transformer, plugin]})
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/", headers=[("origin", "http://a.example")])
    assert reply.status == 200 and reply.header(header) is None
