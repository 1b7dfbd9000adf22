"""The proxy over real loopback sockets, once per codec (h11 and llhttp): framing, keep-alive, streaming, Host,
paths, balancing, SSE.

The gateway runs in-process (see conftest.py); backends are the small h11 servers in backends.py.
"""

from __future__ import annotations

import hashlib
from collections import Counter

import h11
import pytest
import trio
from backends import (
    Client,
    EchoBackend,
    ScriptedBackend,
    SseBackend,
    parse_raw_response,
    pattern_bytes,
    raw_exchange,
    request,
    service,
    upstream,
)

from gateway.pipeline import request_buffer
from gateway.runtime import TargetRuntime

TIMEOUT = 10


async def start_echo(nursery: trio.Nursery, name: str = "echo") -> EchoBackend:
    backend = EchoBackend(name)
    await nursery.start(backend.serve)
    return backend


async def one_service(nursery: trio.Nursery, gateway, routes=None, path: str = "", **fields):  # noqa: ANN001,ANN201
    """An echo backend behind one service; returns (backend, gateway port)."""
    backend = await start_echo(nursery)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}{path}", routes, **fields)]})
    return backend, port


# --- basic requests ---------------------------------------------------------------------------------------------


async def test_get_reaches_upstream_with_method_path_and_query(nursery, gateway):
    backend, port = await one_service(nursery, gateway)
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/tools/list?cursor=abc&n=2")
    assert reply.status == 200
    seen = reply.json()
    assert seen["method"] == "GET"
    assert seen["path"] == "/tools/list?cursor=abc&n=2"
    assert seen["body_len"] == 0
    assert reply.header("x-backend") == "echo"
    assert len(backend.requests) == 1


async def test_post_with_content_length_body_reaches_upstream(nursery, gateway):
    backend, port = await one_service(nursery, gateway)
    body = b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}'
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "POST", "/mcp", body=body, headers=[("content-type", "application/json")])
    assert reply.status == 200
    seen = backend.requests[0]
    assert seen.method == "POST"
    assert seen.body == body
    assert seen.header("content-length") == str(len(body))
    assert seen.header("content-type") == "application/json"


async def test_with_request_buffering_false_a_chunked_body_is_streamed_to_upstream(nursery, gateway):
    """nginx's proxy_request_buffering off: the upstream gets the first chunk while the client is still holding back
    the rest."""
    backend, port = await one_service(nursery, gateway, routes=[{"paths": ["/"], "request_buffering": False}])
    with trio.fail_after(TIMEOUT):
        async with await Client.connect(port) as client:
            conn, stream = client.conn, client.stream
            await stream.send_all(conn.send(h11.Request(method="POST", target="/upload", headers=[
                ("host", "gw"), ("transfer-encoding", "chunked")])))
            await stream.send_all(conn.send(h11.Data(data=b"first-part;")))
            await backend.body_started.wait()  # would hang (and fail_after fire) if the gateway buffered the body
            assert backend.requests == []  # the request is not complete yet at the upstream
            await stream.send_all(conn.send(h11.Data(data=b"second-part;")))
            await stream.send_all(conn.send(h11.Data(data=b"third-part")))
            await stream.send_all(conn.send(h11.EndOfMessage()))
            reply = await client.read_response()
    assert reply.status == 200
    seen = backend.requests[0]
    assert seen.body == b"first-part;second-part;third-part"
    assert seen.header("transfer-encoding") == "chunked"
    assert seen.header("content-length") is None


async def test_by_default_the_whole_body_is_read_before_the_upstream_and_sent_with_its_length(nursery, gateway):
    """Kong's request_buffering (true by default; nginx's proxy_request_buffering on): no byte reaches the upstream
    while the client is still sending, and a chunked body arrives with a Content-Length."""
    backend, port = await one_service(nursery, gateway)
    with trio.fail_after(TIMEOUT):
        async with await Client.connect(port) as client:
            conn, stream = client.conn, client.stream
            await stream.send_all(conn.send(h11.Request(method="POST", target="/upload", headers=[
                ("host", "gw"), ("transfer-encoding", "chunked")])))
            await stream.send_all(conn.send(h11.Data(data=b"first-part;")))
            await trio.sleep(0.3)
            assert backend.connections == 0 and not backend.body_started.is_set()
            await stream.send_all(conn.send(h11.Data(data=b"second-part")))
            await stream.send_all(conn.send(h11.EndOfMessage()))
            reply = await client.read_response()
    assert reply.status == 200
    seen = backend.requests[0]
    assert seen.body == b"first-part;second-part"
    assert seen.header("content-length") == "22"
    assert seen.header("transfer-encoding") is None


@pytest.mark.parametrize("buffering", [True, False])
async def test_a_chunked_body_that_came_whole_with_its_head_is_sent_with_its_length_too(nursery, gateway, buffering):
    """nginx sends every buffered body with its Content-Length, also one read in the same packet as the head (it
    went up chunked: an upstream that takes no chunked request body failed on small requests only); with
    request_buffering off too: a body read whole with its head is buffered for nginx (ngx_http_request_body.c)."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{echo.port}",
                                               [{"paths": ["/"], "request_buffering": buffering}])]})
    with trio.fail_after(TIMEOUT):
        data, _ = await raw_exchange(port, b"POST /post HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"
                                           b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert parse_raw_response(data)[0] == 200
    seen = echo.requests[-1]
    assert seen.body == b"hello"
    assert (seen.header("content-length"), seen.header("transfer-encoding")) == ("5", None)


class FailsFirst(EchoBackend):
    """Reads its first request and closes the connection without an answer; answers every later one."""

    async def handle_conn(self, stream: trio.SocketStream) -> None:
        if self.connections == 1:
            await self._read_request(stream, h11.Connection(h11.SERVER))
            return
        await super().handle_conn(stream)


async def test_without_request_buffering_a_put_whose_body_came_with_its_head_is_tried_again(nursery, gateway):
    """nginx resends a request whose body it read whole with the head (request_body_no_buffering is cleared then):
    proxy_request_buffering off stops a retry only once part of a body that is still coming has gone upstream."""
    backend = FailsFirst("b")
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{backend.port}",
                                               [{"paths": ["/"], "request_buffering": False}], retries=1)]})
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "PUT", "/x", body=b"hello")  # head and body in one write
    assert (reply.status, len(backend.requests), reply.json()["body"]) == (200, 2, "hello")


async def test_a_buffered_body_larger_than_memory_holds_is_spooled_and_sent_whole(nursery, gateway, monkeypatch):
    monkeypatch.setattr(request_buffer, "MEMORY_LIMIT", 1000)
    monkeypatch.setattr(request_buffer, "CHUNK", 700)
    backend, port = await one_service(nursery, gateway)
    body = [pattern_bytes(900), pattern_bytes(900)[::-1], b"end"]
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "POST", "/upload", body=body)
    assert reply.status == 200
    seen = backend.requests[0]
    assert seen.body == b"".join(body)
    assert seen.header("content-length") == "1803"


async def test_chunked_upstream_response_is_reframed(nursery, gateway):
    _, port = await one_service(nursery, gateway)
    with trio.fail_after(TIMEOUT):
        async with await Client.connect(port) as client:
            reply = await client.request("GET", "/data?bytes=300000&framing=chunked")
            again = await client.request("GET", "/again")  # the connection is still usable afterwards
    assert reply.status == 200
    assert reply.header("transfer-encoding") == "chunked"
    assert reply.body == pattern_bytes(300000)
    assert again.status == 200


async def test_close_delimited_upstream_response_is_reframed_and_client_kept_alive(nursery, gateway):
    """An upstream body that ends with the connection becomes a chunked body for an HTTP/1.1 client, so the
    client's connection survives it."""
    _, port = await one_service(nursery, gateway)
    with trio.fail_after(TIMEOUT):
        async with await Client.connect(port) as client:
            reply = await client.request("GET", "/data?bytes=100000&framing=close")
            again = await client.request("GET", "/data?bytes=10&framing=close")
    assert reply.status == 200
    assert reply.header("transfer-encoding") == "chunked"
    assert reply.header("connection") is None
    assert reply.body == pattern_bytes(100000)
    assert again.body == pattern_bytes(10)


async def test_keepalive_reuses_one_upstream_connection(nursery, gateway):
    backend, port = await one_service(nursery, gateway)
    with trio.fail_after(TIMEOUT):
        async with await Client.connect(port) as client:
            replies = [await client.request("POST" if i % 2 else "GET", f"/r{i}", body=b"x" * i) for i in range(6)]
    assert [r.status for r in replies] == [200] * 6
    assert [r.json()["path"] for r in replies] == [f"/r{i}" for i in range(6)]
    assert backend.connections == 1
    assert len(backend.requests) == 6


async def test_the_request_that_reaches_keepalive_requests_is_the_connections_last(nursery, gateway):
    """nginx's keepalive_requests: its answer says `Connection: close`, and the connection ends after it."""
    backend = await start_echo(nursery)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}")]}, keepalive_requests=3)
    with trio.fail_after(TIMEOUT):
        async with await Client.connect(port) as client:
            replies = [await client.request("GET", f"/r{i}") for i in range(3)]
            assert await client.stream.receive_some(1) == b""  # closed by the gateway
    assert [(r.status, r.header("connection")) for r in replies] == [(200, None), (200, None), (200, "close")]


async def test_the_first_request_after_keepalive_time_is_the_connections_last(nursery, gateway):
    backend = await start_echo(nursery)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}")]}, keepalive_time_s=0.3)
    with trio.fail_after(TIMEOUT):
        async with await Client.connect(port) as client:
            first = await client.request("GET", "/first")
            await trio.sleep(0.4)
            second = await client.request("GET", "/second")
            assert await client.stream.receive_some(1) == b""
    assert (first.header("connection"), second.header("connection")) == (None, "close")


async def test_five_megabyte_bodies_stream_both_ways_intact(nursery, gateway):
    backend, port = await one_service(nursery, gateway)
    payload = pattern_bytes(5 * 1024 * 1024 + 7)
    with trio.fail_after(30):
        reply = await request(port, "POST", "/reflect?reflect=1", body=payload)
    assert reply.status == 200
    assert backend.requests[0].body == payload
    assert len(reply.body) == len(payload)
    assert hashlib.sha256(reply.body).digest() == hashlib.sha256(payload).digest()


async def test_five_megabyte_chunked_upload_and_chunked_download_intact(nursery, gateway):
    backend, port = await one_service(nursery, gateway)
    payload = pattern_bytes(5 * 1024 * 1024)
    pieces = [payload[i:i + 300_000] for i in range(0, len(payload), 300_000)]
    with trio.fail_after(30):
        reply = await request(port, "POST", "/reflect?reflect=1&framing=chunked", body=pieces)
    assert reply.status == 200
    assert reply.header("transfer-encoding") == "chunked"
    assert hashlib.sha256(backend.requests[0].body).digest() == hashlib.sha256(payload).digest()
    assert reply.body == payload


async def test_head_response_has_no_body(nursery, gateway):
    _, port = await one_service(nursery, gateway)
    with trio.fail_after(TIMEOUT):
        async with await Client.connect(port) as client:
            head = await client.request("HEAD", "/data?bytes=100")
            after = await client.request("GET", "/data?bytes=5")  # stray body bytes would break this response
    assert head.status == 200
    assert head.header("content-length") == "100"
    assert head.body == b""
    assert after.body == pattern_bytes(5)


async def test_204_response_has_no_body(nursery, gateway):
    _, port = await one_service(nursery, gateway)
    with trio.fail_after(TIMEOUT):
        async with await Client.connect(port) as client:
            reply = await client.request("DELETE", "/mcp?status=204")
            after = await client.request("GET", "/data?bytes=5")
    assert reply.status == 204
    assert reply.body == b""
    assert reply.header("content-length") is None
    assert reply.header("transfer-encoding") is None
    assert after.body == pattern_bytes(5)


WRONG_204 = (b"HTTP/1.1 204 No Content\r\ncontent-type: application/json\r\ncontent-length: 5\r\n"
             b"last-modified: Sat, 05 Dec 2026 10:00:00 GMT\r\nx-kept: 1\r\n\r\n")


MCP_PROXY = {"name": "ai-mcp-proxy", "config": {"mode": "passthrough-listener",
                                                "tools": [{"name": "secret", "acl": {"allow": []}}]}}


@pytest.mark.parametrize("mcp", [False, True], ids=["plain", "mcp-route-with-ai-mcp-proxy"])
async def test_a_204_goes_out_with_the_upstreams_head_and_no_body(nursery, gateway, mcp):
    """nginx relays a proxied 204's Content-Type, Last-Modified and Content-Length as they came (its header filter
    drops them only from an answer without a status line: ngx_http_header_filter), and sends no body (a client
    reads none after a 204, RFC 9112 6.3, whatever its Content-Length says); an MCP route's edit skips it too."""
    upstream_port = await nursery.start(ScriptedBackend([WRONG_204], hold=1.0).serve)
    route: dict = {"paths": ["/"], "mcp": True, "plugins": [MCP_PROXY]} if mcp else {"paths": ["/"]}
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{upstream_port}", [route])]})
    body = b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}'
    headers = [("content-type", "application/json"), ("accept", "application/json, text/event-stream")]
    with trio.fail_after(TIMEOUT):
        async with await Client.connect(port, host="127.0.0.1") as client:
            reply = await client.request("POST", "/mcp", headers, body)
    assert (reply.status, reply.body, reply.header("x-kept")) == (204, b"", "1")
    assert [reply.header(h) for h in ("content-length", "content-type", "last-modified")] == \
        ["5", "application/json", "Sat, 05 Dec 2026 10:00:00 GMT"]


async def test_a_decoded_crlf_in_a_stripped_regex_prefix_adds_no_upstream_header_line(nursery, gateway):
    """X-Forwarded-Prefix is the part a strip_path route matched, of the decoded path: for a regex route, the
    client's own bytes. A %0D%0A there made a header line the client wrote upstream (llhttp) or a 500 (h11)."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}", [{"paths": [r"~/re/[^/]*"]}])]})
    with trio.fail_after(TIMEOUT):
        data, _ = await raw_exchange(port, b"GET /re/a%0D%0AX-Injected:%201/z HTTP/1.1\r\nHost: h\r\n"
                                           b"Connection: close\r\n\r\n")
    assert parse_raw_response(data)[0] == 200
    (seen,) = echo.requests
    assert seen.header("x-injected") is None and seen.header("x-forwarded-prefix") == "/re/a%0D%0AX-Injected: 1"


async def test_no_route_gets_404_json(nursery, gateway):
    backend, port = await one_service(nursery, gateway, routes=[{"paths": ["/api"]}])
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/other")
    assert reply.status == 404
    assert reply.header("content-type") == "application/json; charset=utf-8"
    assert reply.json()["message"] == "no Route matched with those values"
    assert backend.requests == []


async def test_the_routes_of_a_disabled_service_are_not_routed(nursery, gateway):
    """Kong: a service with enabled: false keeps its routes out of the router; another route may take the request."""
    off, on = EchoBackend("off"), EchoBackend("on")
    await nursery.start(off.serve)
    await nursery.start(on.serve)
    port = await gateway({"services": [
        service("off", f"http://127.0.0.1:{off.port}", routes=[{"paths": ["/api"]}], enabled=False),
        service("on", f"http://127.0.0.1:{on.port}", routes=[{"paths": ["/api/v2"]}])]})
    with trio.fail_after(TIMEOUT):
        missed = await request(port, "GET", "/api/v1")
        other = await request(port, "GET", "/api/v2")
    assert missed.status == 404 and missed.json()["message"] == "no Route matched with those values"
    assert other.status == 200 and other.json()["name"] == "on"
    assert off.requests == []


# --- headers sent upstream -----------------------------------------------------------------------------------------


async def test_host_sent_upstream_is_the_targets_host_and_port(nursery, gateway):
    backend, port = await one_service(nursery, gateway)
    with trio.fail_after(TIMEOUT):
        await request(port, "GET", "/", host="public.example.com")
    seen = backend.requests[0]
    assert [v for k, v in seen.headers if k == "host"] == [f"127.0.0.1:{backend.port}"]
    assert seen.header("x-forwarded-host") == "public.example.com"


async def test_preserve_host_sends_the_clients_host(nursery, gateway):
    backend, port = await one_service(nursery, gateway, routes=[{"paths": ["/"], "preserve_host": True}])
    with trio.fail_after(TIMEOUT):
        await request(port, "GET", "/", host="public.example.com:8443")
    assert [v for k, v in backend.requests[0].headers if k == "host"] == ["public.example.com:8443"]


async def test_upstream_host_header_setting_is_sent(nursery, gateway):
    backend = await start_echo(nursery)
    port = await gateway({"services": [service("svc", "http://mcp-cluster")],
                          "upstreams": [upstream("mcp-cluster", [backend.port], host_header="mcp.internal")]})
    with trio.fail_after(TIMEOUT):
        await request(port, "GET", "/")
    assert backend.requests[0].header("host") == f"mcp.internal:{backend.port}"  # Kong adds the target's port


@pytest.mark.parametrize(("port", "host_header", "http", "https"), [
    (80, None, "a.test", "a.test:80"), (443, None, "a.test:443", "a.test"), (8080, None, "a.test:8080", "a.test:8080"),
    (443, "in.test", "in.test:443", "in.test"), (8080, "in.test", "in.test:8080", "in.test:8080")])
def test_the_upstream_host_omits_only_the_schemes_own_port(port, host_header, http, https):
    """Kong's set_host_header: the target's host (or the upstream's host_header) and its port, unless it is 80 for
    an http service or 443 for an https one."""
    target = TargetRuntime("a.test", port, 100, host_header)
    assert (target.host_header, target.host_header_tls) == (http.encode(), https.encode())


async def test_forwarding_headers_and_request_id(nursery, gateway):
    backend, port = await one_service(nursery, gateway)
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/", headers=[
            ("x-request-id", "req-42"), ("traceparent", traceparent), ("connection", "keep-alive, x-hop"),
            ("x-hop", "secret"), ("x-forwarded-for", "6.6.6.6")])
    seen = backend.requests[0]
    assert seen.header("x-request-id") == "req-42"
    assert reply.header("x-request-id") == "req-42"
    assert seen.header("traceparent") == traceparent
    assert seen.header("x-hop") is None
    assert seen.header("x-forwarded-for") == "6.6.6.6, 127.0.0.1"  # kept with the peer appended, as Kong does
    assert seen.header("x-real-ip") == "127.0.0.1"  # the client address: a client's own value is not believed
    assert seen.header("x-forwarded-proto") == "http"
    assert seen.header("x-forwarded-port") == str(port)


async def test_response_headers_the_upstream_names_in_connection_stay_at_the_hop(nursery, gateway):
    _, port = await one_service(nursery, gateway)
    async with await Client.connect(port) as client:
        for _ in range(2):  # the second answer's Connection value is one the gateway has seen
            with trio.fail_after(TIMEOUT):
                reply = await client.request("GET", "/?hop=1")
            assert reply.status == 200
            assert reply.header("x-upstream-hop") is None
            assert reply.header("x-backend") == "echo"


async def test_request_id_is_generated_when_absent(nursery, gateway):
    backend, port = await one_service(nursery, gateway)
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/")
    rid = reply.header("x-request-id")
    assert rid is not None and len(rid) == 32 and int(rid, 16) >= 0
    assert backend.requests[0].header("x-request-id") == rid


# --- paths ---------------------------------------------------------------------------------------------------------


async def test_strip_path_true_removes_the_matched_prefix(nursery, gateway):
    backend, port = await one_service(nursery, gateway, routes=[{"paths": ["/api"], "strip_path": True}])
    with trio.fail_after(TIMEOUT):
        a = await request(port, "GET", "/api/items?x=1")
        b = await request(port, "GET", "/api")
    assert a.json()["path"] == "/items?x=1"
    assert b.json()["path"] == "/"


async def test_strip_path_false_keeps_the_path(nursery, gateway):
    backend, port = await one_service(nursery, gateway, routes=[{"paths": ["/api"], "strip_path": False}])
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/api/items?x=1")
    assert reply.json()["path"] == "/api/items?x=1"


async def test_regex_route_strips_the_matched_part(nursery, gateway):
    backend, port = await one_service(nursery, gateway, routes=[{"paths": [r"~/v\d+"], "strip_path": True}])
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/v12/tools")
    assert reply.json()["path"] == "/tools"


async def test_service_path_is_joined_with_the_stripped_path(nursery, gateway):
    _, port = await one_service(nursery, gateway, routes=[{"paths": ["/api"]}], path="/base")
    with trio.fail_after(TIMEOUT):
        paths = [(await request(port, "GET", p)).json()["path"] for p in ("/api", "/api/", "/api/items", "/api/a?q=1")]
    assert paths == ["/base", "/base/", "/base/items", "/base/a?q=1"]  # Kong v0: "/api/" keeps its slash


async def test_service_path_with_trailing_slash_is_joined_without_doubling(nursery, gateway):
    _, port = await one_service(nursery, gateway, routes=[{"paths": ["/api"], "strip_path": False}], path="/base/")
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/api/items")
    assert reply.json()["path"] == "/base/api/items"


async def test_header_route_selects_the_v2_service(nursery, gateway):
    """The reference guide's versioning: `api-version: v2` goes to the v2 service, everything else to v1."""
    v1 = await start_echo(nursery, "v1")
    v2 = await start_echo(nursery, "v2")
    port = await gateway({"services": [
        service("mcp-v1", f"http://127.0.0.1:{v1.port}", [{"name": "v1", "paths": ["/mcp"]}]),
        service("mcp-v2", f"http://127.0.0.1:{v2.port}",
                [{"name": "v2", "paths": ["/mcp"], "headers": {"api-version": ["v2"]}}]),
    ]})
    with trio.fail_after(TIMEOUT):
        plain = await request(port, "POST", "/mcp", body=b"{}")
        versioned = await request(port, "POST", "/mcp", body=b"{}", headers=[("api-version", "v2")])
        other = await request(port, "POST", "/mcp", body=b"{}", headers=[("api-version", "v3")])
    assert plain.json()["name"] == "v1"
    assert versioned.json()["name"] == "v2"
    assert other.json()["name"] == "v1"


# --- balancing -----------------------------------------------------------------------------------------------------


async def start_cluster(nursery, gateway, count: int, weights=None, **up_fields):  # noqa: ANN001,ANN201
    backends = [await start_echo(nursery, f"b{i}") for i in range(count)]
    port = await gateway({"services": [service("svc", "http://cluster")],
                          "upstreams": [upstream("cluster", [b.port for b in backends], weights, **up_fields)]})
    return backends, port


async def test_round_robin_follows_weights(nursery, gateway):
    _, port = await start_cluster(nursery, gateway, 3, [100, 100, 200], algorithm="round-robin")
    with trio.fail_after(TIMEOUT):
        names = [(await request(port, "GET", "/")).json()["name"] for _ in range(12)]
    assert Counter(names) == {"b0": 3, "b1": 3, "b2": 6}
    assert len(set(names[:4])) == 3  # smooth: every target appears within one period


async def test_round_robin_on_one_client_connection_spreads_requests(nursery, gateway):
    backends, port = await start_cluster(nursery, gateway, 2)
    with trio.fail_after(TIMEOUT):
        async with await Client.connect(port) as client:
            names = [(await client.request("GET", "/")).json()["name"] for _ in range(6)]
    assert Counter(names) == {"b0": 3, "b1": 3}
    assert [b.connections for b in backends] == [1, 1]  # one pooled upstream connection per target


async def test_least_connections_avoids_the_busy_target(nursery, gateway):
    backends, port = await start_cluster(nursery, gateway, 2, algorithm="least-connections")
    held: list = []

    async def held_request() -> None:
        held.append(await request(port, "GET", "/?hold=1"))

    with trio.fail_after(TIMEOUT):
        nursery.start_soon(held_request)
        while not any(b.active for b in backends):
            await trio.sleep(0.01)
        busy = next(b for b in backends if b.active)
        idle = next(b for b in backends if not b.active)
        names = [(await request(port, "GET", "/")).json()["name"] for _ in range(4)]
        assert names == [idle.name] * 4
        for b in backends:
            b.release.set()
        while not held:
            await trio.sleep(0.01)
    assert held[0].json()["name"] == busy.name


@pytest.mark.parametrize("algorithm", [{"algorithm": "consistent-hashing"}, {}, {"algorithm": "round-robin"}],
                         ids=["consistent-hashing", "hash_on-alone", "round-robin-as-kong-overrides"])
async def test_consistent_hashing_on_a_header_keeps_a_key_on_one_target(nursery, gateway, algorithm):
    """Kong's upstream shorthand: a hash_on other than none makes the algorithm consistent-hashing."""
    _, port = await start_cluster(nursery, gateway, 3, hash_on="header", hash_on_header="x-session", **algorithm)
    by_key: dict[str, set[str]] = {}
    with trio.fail_after(TIMEOUT):
        for key in range(10):
            for _ in range(3):
                reply = await request(port, "GET", "/", headers=[("x-session", f"session-{key}")])
                by_key.setdefault(f"session-{key}", set()).add(reply.json()["name"])
    assert all(len(names) == 1 for names in by_key.values()), by_key
    assert len(set().union(*by_key.values())) >= 2  # keys do spread over the targets


# --- server-sent events --------------------------------------------------------------------------------------------


async def test_sse_events_stream_as_sent_with_keepalive_comments(nursery, gateway):
    """Three events 0.6 s apart through a gateway with sse_keepalive 0.2 s (and a service read_timeout of 5 s, longer
    than the gaps: a silence past it cuts the stream, tests/test_event_stream_relay.py).

    Each event must reach the client when the backend sends it (not when the stream ends), whole and in order,
    with `: keepalive` comments in the gaps.
    """
    backend = SseBackend(events=3, gap=0.6)
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("sse", f"http://127.0.0.1:{backend.port}", read_timeout=5000)]},
                         sse_keepalive=0.2)
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/mcp", headers=[("accept", "text/event-stream")])
    assert reply.status == 200
    assert reply.header("content-type") == "text/event-stream"

    # Split what arrived into blank-line-terminated blocks, each stamped with the time its last byte arrived.
    blocks: list[tuple[float, bytes]] = []
    pending = b""
    for at, data in reply.chunks:
        pending += data
        while b"\n\n" in pending:
            block, pending = pending.split(b"\n\n", 1)
            blocks.append((at, block + b"\n\n"))
    assert pending == b""
    events = [(at, b) for at, b in blocks if not b.startswith(b":")]
    comments = [(at, b) for at, b in blocks if b.startswith(b":")]
    assert [b for _, b in events] == [SseBackend.event(i) for i in range(3)]
    assert {b for _, b in comments} == {b": keepalive\n\n"}
    for (arrived, _), sent in zip(events, backend.sent_at, strict=True):
        assert 0 <= arrived - sent < 0.4, "an event was held back instead of flushed as it was sent"
    for (before, _), (after, _) in zip(events, events[1:], strict=False):
        assert any(before < at < after for at, _ in comments), "no keep-alive comment in a gap between events"


class PiecewiseSse(SseBackend):
    """One event written as `pieces` (50 ms apart), then `gap` seconds of silence, then the stream's end."""

    def __init__(self, pieces: list[bytes], gap: float) -> None:
        super().__init__(events=1, gap=gap)
        self.pieces = pieces

    async def handle_conn(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        if await self._read_request(stream, conn) is None:
            return
        await stream.send_all(conn.send(h11.Response(status_code=200, headers=[(b"content-type",
                                                                                 b"text/event-stream")])))
        for piece in self.pieces:
            await stream.send_all(conn.send(h11.Data(data=piece)))
            await trio.sleep(0.05)
        await trio.sleep(self.gap)
        await stream.send_all(conn.send(h11.EndOfMessage()))


@pytest.mark.parametrize("pieces", [[b"id: 1\ndata: {}\n", b"\n"], [b"id: 1\ndata: {}\r", b"\n\r", b"\n"],
                                    [b"id: 1\rdata: {}\r\r"]], ids=["blank-line-alone", "crlf-split", "cr-endings"])
async def test_a_silence_after_an_event_gets_comments_however_its_end_was_written_or_spelt(nursery, gateway, pieces):
    """The blank line that ends an event may come in a write of its own (servers that write line by line), a CRLF
    split across writes, or lines may end with CR (the SSE format allows all three): the stream is between events
    all the same, and its silence gets keep-alive comments (found by an MCP review: none came)."""
    backend = PiecewiseSse(pieces, gap=0.45)
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("sse", f"http://127.0.0.1:{backend.port}")]}, sse_keepalive=0.1)
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/mcp", headers=[("accept", "text/event-stream")])
    assert reply.body.startswith(b"".join(pieces))
    assert reply.body.count(b": keepalive\n\n") >= 2, reply.body


async def test_an_event_stream_of_fixed_length_gets_no_comments_that_would_break_its_framing(nursery, gateway):
    """An upstream event stream with a Content-Length keeps it (no re-framing): a comment in one of its silences
    would add bytes the length does not count, a corrupt body and the start of a bogus next response on the
    connection. Its silences get none; the body arrives as sent and the connection serves the next request."""
    backend = SseBackend(events=2, gap=0.4, length=True)
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("sse", f"http://127.0.0.1:{backend.port}")]}, sse_keepalive=0.1)
    with trio.fail_after(TIMEOUT):
        async with await Client.connect(port) as client:
            reply = await client.request("GET", "/mcp", headers=[("accept", "text/event-stream")])
            assert reply.status == 200
            assert reply.body == SseBackend.event(0) + SseBackend.event(1)
            assert reply.header("content-length") == str(len(reply.body))
            assert (await client.request("GET", "/mcp", headers=[("accept", "text/event-stream")])).status == 200


@pytest.mark.parametrize("size", [b"8000000000000000", b"ffffffffffffffff"])
async def test_a_chunk_size_past_nginx_off_t_is_a_bad_request_at_once(nursery, gateway, size):
    """ngx_http_parse_chunked (src/http/ngx_http_parse.c, sw_chunk_size: "if (ctx->size > NGX_MAX_OFF_T_VALUE / 16)
    goto invalid;") refuses a size of 2**63 or more, and ngx_http_request_body_chunked_filter answers 400 at once:
    nothing waits for the bytes announced, nothing goes upstream."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}")]}, client_body_timeout_s=2)
    started = trio.current_time()
    data, _ = await raw_exchange(port, b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                                       b"%b\r\nhello" % size, timeout=5)
    elapsed = trio.current_time() - started
    assert parse_raw_response(data)[0] == 400 and elapsed < 1.0, (data[:40], elapsed)
    assert echo.requests == []
