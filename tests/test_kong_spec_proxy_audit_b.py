"""Kong 3.9.3's spec/02-integration/05-proxy/ (24-buffered, 27-unbuffered, 30-max-args, 32-query-params,
08-uri_encoding, 07-upstream_timeouts, 25-upstream_keepalive, 34-proxy_with_compress, 09-websockets) against the
gateway: the `it` blocks no other test covered, with real plugins standing in for the specs' test-only ones
(enable-buffering -> response-transformer, which reads an upstream body whole; max-args -> request-termination's
echo, which reads the request through the same PDK calls; ctx-checker-last's balancer_data -> the log entry's
`tries`); and what Kong's plugins read of more than 100 request arguments or response headers (lua_max_req_headers,
lua_max_resp_headers)."""

from __future__ import annotations

import base64
import os
from urllib.parse import urlencode

import msgspec
import pytest
import trio
from backends import BadBackend, Client, EchoBackend, log_lines, request, service
from test_kong_spec_dns_websockets import KongWsServer, assert_text_ping_and_close
from test_kong_spec_proxy import SynDrop, assert_pooled_per_preserved_host
from test_websocket import handshake, read_head
from tls_helpers import Pki

from gateway.policies.response_transformer.handler import ResponseTransformer
from gateway.policies.response_transformer.schema import ResponseTransformerConfig
from gateway.routing.router import MAX_RESP_HEADERS, resp_get_headers

TIMEOUT = 10


async def start_echo(nursery: trio.Nursery, name: str = "echo") -> EchoBackend:
    backend = EchoBackend(name)
    await nursery.start(backend.serve)
    return backend


def transformer(**config: object) -> dict:
    return {"name": "response-transformer", "config": config}


# --- 24-buffered_spec, with response-transformer as the plugin that reads the upstream's body -------------------------


async def test_a_json_body_transform_keeps_an_unusual_status_and_sets_its_header(nursery, gateway):
    """24-buffered_spec "header can be set from upstream response body and body can be modified on header_filter
    phase" (GET /2/status/233: the status stays 233, json.modified is true, `Modified: yes`): here response-
    transformer's add.json modified:true (json_types boolean) and add.headers Modified:yes."""
    echo = await start_echo(nursery)
    route = {"paths": ["/2"], "plugins": [transformer(add={"json": ["modified:true"], "json_types": ["boolean"],
                                                           "headers": ["Modified:yes"]})]}
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}", [route])]})
    with trio.fail_after(TIMEOUT):
        async with await Client.connect(port) as client:
            replies = [await client.request("GET", f"/2/status?status={s}") for s in (233, 234)]
    assert [r.status for r in replies] == [233, 234]
    assert [r.json()["modified"] for r in replies] == [True, True]
    assert [r.header("modified") for r in replies] == ["yes", "yes"]
    assert [r.header("content-length") for r in replies] == [str(len(r.body)) for r in replies]


async def test_a_head_through_a_json_body_transform_is_a_head_without_a_body(nursery, gateway):
    """24-buffered_spec "HEAD request work the same, without a body" / "response phase works in HEAD request": HEAD
    /1/status/231 is 231, an empty body, and the header the plugin set. Kong's response-transformer clears the
    Content-Length of a JSON answer it transforms (header_transformer.lua transform_headers: `if
    is_body_transform_set(conf) and is_json_body(...) then clear_header("Content-Length")`), so its HEAD answer has
    none (nginx's chunked filter skips HEAD); the connection serves the next request."""
    echo = await start_echo(nursery)
    route = {"paths": ["/1"], "plugins": [transformer(add={"json": ["x:1"], "headers": ["MD5:d41d8cd9"]})]}
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}", [route])]})
    with trio.fail_after(TIMEOUT):
        async with await Client.connect(port) as client:
            head = await client.request("HEAD", "/1/status?status=231")
            after = await client.request("GET", "/1/status?status=232")
    assert (head.status, head.body, head.header("md5")) == (231, b"", "d41d8cd9")
    assert head.header("content-length") is None
    assert (after.status, after.json()["x"]) == (232, "1")


async def test_a_json_body_transform_route_answers_502_on_a_refused_connection(nursery, gateway):
    """24-buffered_spec "returns 502 on connectivity errors" (the route has a response plugin): 502. Kong's error
    page (kong/error_handlers.lua, JSON for Accept: application/json) goes through the plugins' header and body
    filters (Kong.handle_error restores the request's ctx), so response-transformer's add.json lands in it."""
    route = {"paths": ["/502"], "plugins": [transformer(add={"json": ["x:1"]})]}
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    dead = sock.getsockname()[1]
    sock.close()
    port = await gateway({"services": [service("502", f"http://127.0.0.1:{dead}", [route])]})
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/502", headers=[("accept", "application/json")])
    assert reply.status == 502
    assert reply.json() == {"message": "An invalid response was received from the upstream server",
                            "request_id": reply.header("x-kong-request-id"), "x": "1"}


# --- 07-upstream_timeouts_spec "sets status for last try": the tries in the log entry ---------------------------------


async def test_every_timed_out_try_is_logged_failed_with_code_504(nursery, gateway, tmp_path):
    """07-upstream_timeouts_spec "sets status for last try": GET with read_timeout 1 ms is 504 and ctx.balancer_data
    .tries (Kong's log serializer's `tries`, kong/pdk/log.lua:918) holds six tries, each `state = "failed"`, `code =
    504` (kong/init.lua:1323 records get_last_failure() for a retried try; the header filter the last one)."""
    hang = BadBackend("hang")
    await nursery.start(hang.serve)
    log = tmp_path / "file.log"
    route = {"paths": ["/"], "plugins": [{"name": "file-log", "config": {"path": str(log)}}]}
    port = await gateway({"services": [service("api-3", f"http://127.0.0.1:{hang.port}", [route], read_timeout=40)]})
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/delay/2")
    assert reply.status == 504
    [entry] = await log_lines(log, 1)
    assert [(t.get("state"), t.get("code")) for t in entry["tries"]] == [("failed", 504)] * 6
    assert entry["upstream_status"] == "504, 504, 504, 504, 504, 504"


# --- 25-upstream_keepalive_spec "pools with crc32 collision" ---------------------------------------------------------


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


async def test_names_whose_pool_keys_collide_in_crc32_keep_pools_of_their_own(nursery, gateway, pki):
    """25-upstream_keepalive_spec "pools with crc32 collision": plumless.xxx and buckeroo.xxx (preserve_host, one https
    target) have pool names of equal crc32 (nginx's keepalive hashes them), yet each gets its own SNI and its own
    connection, reused by its next request."""
    await assert_pooled_per_preserved_host(nursery, gateway, pki, "plumless.xxx", "buckeroo.xxx")


# --- 30-max-args_spec through request-termination's echo (kong.request.get_headers / get_query / get_body) -----------


def max_args_request(n: int) -> tuple[str, list[tuple[str, str]], bytes, dict[str, str]]:
    """30-max-args_spec get_parameters(n): a1..an as query and form body, a5..an as headers, with content-length,
    content-type, user-agent and host: n header lines in all."""
    query = {f"a{i}": f"v{i}" for i in range(1, n + 1)}
    body = urlencode(query).encode()
    headers = [(k, v) for k, v in query.items() if k not in ("a1", "a2", "a3", "a4")]
    headers += [("content-type", "application/x-www-form-urlencoded"), ("user-agent", "kong")]
    return f"/max-args?{urlencode(query)}", headers, body, query


@pytest.mark.parametrize("n", [100, 101])
async def test_the_pdk_reads_at_most_100_query_form_and_header_arguments(nursery, gateway, n):
    """30-max-args_spec "no truncation when using 100 parameters" / "truncation when using 101 parameters" (Kong's
    defaults, lua_max_uri_args = lua_max_req_headers = lua_max_post_args = 100): kong.request.get_query, get_headers
    and get_body (a form) read all of 100, and only 100 of 101."""
    route = {"paths": ["/max-args"], "plugins": [
        {"name": "request-termination", "config": {"status_code": 200, "echo": True}}]}
    port = await gateway({"services": [service("svc", "http://127.0.0.1:1", [route])]})
    target, headers, body, query = max_args_request(n)
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "POST", target, body=body, headers=headers, host="mock_upstream")
    assert reply.status == 200
    seen = reply.json()["request"]
    keep = min(n, 100)
    assert len(seen["query"]) == keep and all(seen["query"][k] == v for k, v in list(query.items())[:keep])
    assert len(seen["headers"]) == keep
    assert len(seen["body"]) == keep


# --- 09-websockets_spec "with buffering on": a global response plugin on the handshake ------------------------------


async def test_a_websocket_through_a_global_json_body_transform_is_tunnelled(nursery, gateway):
    """09-websockets_spec "Websockets with buffering on" (a global plugin that buffers the response): text and
    ping-pong still go both ways. Here a global response-transformer with json and header changes: Kong runs its
    header_filter on the 101 (the header added), and no body filter on the tunnel."""
    server = KongWsServer()
    await nursery.start(server.serve)
    port = await gateway({
        "services": [service("ws", f"http://127.0.0.1:{server.port}/ws", [{"paths": ["/up-ws"], "strip_path": True}])],
        "plugins": [transformer(add={"json": ["x:1"], "headers": ["X-Added:yes"]})]})
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(handshake(base64.b64encode(os.urandom(16)), path=b"/up-ws"))
            buf = bytearray()
            start, headers = await read_head(stream, buf)
            assert start.startswith(b"HTTP/1.1 101 ")
            assert headers.get(b"x-added") == b"yes"
            await assert_text_ping_and_close(stream, buf)


# --- 30-max-args_spec: what Kong's plugins see of more than 100 arguments (beyond the spec's own plugin) -------------


async def test_request_transformer_sends_only_the_100_query_arguments_kong_read(nursery, gateway):
    """30-max-args_spec's limit through a real plugin: request-transformer's add.querystring rebuilds the query from
    kong.request.get_query() (access.lua:242, 100 arguments by default) and set_query() writes that back
    (access.lua:271), so of 150 arguments the upstream gets the first 100 and the added one."""
    echo = await start_echo(nursery)
    route = {"paths": ["/"], "plugins": [
        {"name": "request-transformer", "config": {"add": {"querystring": ["dummy:1"]}}}]}
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{echo.port}", [route])]})
    query = urlencode({f"a{i}": f"v{i}" for i in range(1, 151)})
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", f"/x?{query}")
    got = reply.json()["path"].partition("?")[2].split("&")
    assert len(got) == 101 and "dummy=1" in got and "a100=v100" in got and "a101=v101" not in got


@pytest.mark.parametrize("where", ["query", "header"])
async def test_a_key_past_the_100th_argument_is_not_seen_by_key_auth(nursery, gateway, where):
    """30-max-args_spec "truncation when using 101 parameters": kong.request.get_query / get_headers stop at 100, so
    key-auth (handler.lua reads the key through them) does not find an apikey that comes 101st: 401."""
    echo = await start_echo(nursery)
    route = {"paths": ["/"], "plugins": [{"name": "key-auth"}]}
    doc = {"services": [service("svc", f"http://127.0.0.1:{echo.port}", [route])],
           "consumers": [{"username": "c", "keyauth_credentials": [{"key": "secret"}]}]}
    port = await gateway(doc)
    fillers = [(f"a{i}", f"v{i}") for i in range(1, 101)]
    with trio.fail_after(TIMEOUT):
        if where == "query":
            late = await request(port, "GET", "/x?" + urlencode([*fillers, ("apikey", "secret")]))
            early = await request(port, "GET", "/x?" + urlencode([*fillers[:99], ("apikey", "secret")]))
        else:  # host is the first line: 99 fillers make the apikey the 101st
            late = await request(port, "GET", "/x", headers=[*fillers[:99], ("apikey", "secret")])
            early = await request(port, "GET", "/x", headers=[*fillers[:98], ("apikey", "secret")])
    assert (late.status, early.status) == (401, 200)


async def test_every_timed_out_connect_is_logged_failed_with_code_504(nursery, gateway, tmp_path):
    """07-upstream_timeouts_spec "sets upstream connect timeout value" (HEAD, connect_timeout 1 ms): 504 after six
    tries, each logged `state = "failed"`, `code = 504` (nginx's NGX_HTTP_UPSTREAM_FT_TIMEOUT is a 504)."""
    drop = SynDrop()
    try:
        log = tmp_path / "file.log"
        route = {"methods": ["HEAD"], "plugins": [{"name": "file-log", "config": {"path": str(log)}}]}
        svc = service("api-1", f"http://127.0.0.1:{drop.port}", [route], connect_timeout=30)
        port = await gateway({"services": [svc]})
        with trio.fail_after(TIMEOUT):
            reply = await request(port, "HEAD", "/")
        assert reply.status == 504
        [entry] = await log_lines(log, 1)
    finally:
        drop.close()
    assert [(t.get("state"), t.get("code")) for t in entry["tries"]] == [("failed", 504)] * 6


async def test_a_head_answered_chunked_through_a_json_body_transform_ends_at_its_head(nursery, gateway):
    """24-buffered_spec "HEAD request work the same, without a body", the upstream's head saying chunked: there is
    no body to read (a HEAD's answer has none, RFC 9112 6.3), the transform does not wait for one."""
    echo = await start_echo(nursery)
    route = {"paths": ["/1"], "plugins": [transformer(add={"json": ["x:1"], "headers": ["MD5:d41d8cd9"]})]}
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}", [route])]})
    with trio.fail_after(3):
        async with await Client.connect(port) as client:
            head = await client.request("HEAD", "/1/status?status=231&framing=chunked")
            after = await client.request("GET", "/1/status?status=232&framing=chunked")
    assert (head.status, head.body, head.header("md5")) == (231, b"", "d41d8cd9")
    assert (after.status, after.json()["x"]) == (232, "1")


async def test_an_unbuffered_upload_the_upstream_stops_reading_is_504_after_write_timeout(nursery, gateway):
    """07-upstream_timeouts_spec "sets upstream send timeout value" on a route with request_buffering false (27-
    unbuffered_spec's /unbuffered): the body streams to an upstream that never reads it; once a write waits
    write_timeout, nginx's proxy ends the request 504 (ngx_http_upstream_send_request: NGX_HTTP_UPSTREAM_FT_TIMEOUT,
    not retried: the request was sent with a body not buffered)."""
    deaf = trio.socket.socket()
    await deaf.bind(("127.0.0.1", 0))
    deaf.listen(8)
    held = []

    async def hold() -> None:
        while True:
            held.append((await deaf.accept())[0])

    route = {"paths": ["/"], "request_buffering": False}
    svc = service("api-2", f"http://127.0.0.1:{deaf.getsockname()[1]}", [route], write_timeout=200)
    port = await gateway({"services": [svc]})
    piece = b"a" * (1 << 20)
    status = None
    async with trio.open_nursery() as holding:
        holding.start_soon(hold)
        with trio.fail_after(TIMEOUT):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"POST /post HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\n\r\n")

            async def feed() -> None:
                try:
                    while True:
                        await stream.send_all(b"%x\r\n%b\r\n" % (len(piece), piece))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

            async with trio.open_nursery() as n:
                n.start_soon(feed)
                buf = bytearray()
                start, _ = await read_head(stream, buf)
                status = int(start.split()[1])
                n.cancel_scope.cancel()
            await trio.aclose_forcefully(stream)
        holding.cancel_scope.cancel()
    for conn in held:
        conn.close()
    deaf.close()
    assert status == 504
    assert len(held) == 1


# --- 30-max-args_spec "response headers truncated": what a plugin reads of the upstream's headers --------------------


async def test_response_transformer_reads_only_the_first_100_response_headers(nursery, gateway):
    """30-max-args_spec "truncation when using 101 parameters" asserts kong.response.get_headers() is truncated
    (lua_max_resp_headers = 100, kong.conf.default:1756 "used to limit Kong and its plugins from reading too many
    response headers"; kong/globalpatches.lua:160-175 passes it to ngx.resp.get_headers). response-transformer's
    header_filter tests rename / replace / add against that table (header_transformer.lua:86-121), so for an
    upstream header past the 100th: replace and rename see it absent and do nothing, add sees it absent and sets it
    (set_header replaces the upstream's line). With 150 upstream headers x-h1..x-h150, x-h147..x-h149 are past it;
    x-h5 (within it) is the control."""
    echo = await start_echo(nursery)
    echo.extra_headers = [(b"x-h%d" % i, b"v%d" % i) for i in range(1, 151)]
    route = {"paths": ["/"], "plugins": [transformer(
        replace={"headers": ["x-h149:replaced", "x-h5:replaced"]},
        add={"headers": ["x-h148:added"]},
        rename={"headers": ["x-h147:x-renamed"]})]}
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}", [route])]})
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/x")
    assert reply.status == 200
    got = {name: reply.header(name) for name in ("x-h5", "x-h147", "x-renamed", "x-h148", "x-h149")}
    assert got == {"x-h5": "replaced", "x-h147": "v147", "x-renamed": None, "x-h148": "added", "x-h149": "v149"}


async def test_response_ratelimiting_does_not_see_a_cost_header_past_the_100th(nursery, gateway):
    """The same lua_max_resp_headers limit through response-ratelimiting: header_filter.lua:61 reads the cost with
    kong.service.response.get_header(conf.header_name), which is `response.get_headers()[name]`
    (kong/pdk/service/response.lua:268, ngx.resp.get_headers() at 100). An `x-kong-limit: video=1` after 150 other
    upstream headers is not seen: nothing is charged (remaining stays 2, then 2 again), though the header is still
    cleared (clear_header does not read)."""
    echo = await start_echo(nursery)
    echo.extra_headers = [(b"x-h%d" % i, b"v%d" % i) for i in range(1, 151)] + [(b"x-kong-limit", b"video=1")]
    route = {"paths": ["/"], "plugins": [{"name": "response-ratelimiting",
                                          "config": {"limits": {"video": {"minute": 2}}}}]}
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}", [route])]})
    with trio.fail_after(TIMEOUT):
        replies = [await request(port, "GET", "/x") for _ in range(2)]
    assert [r.status for r in replies] == [200, 200]
    assert [r.header("x-kong-limit") for r in replies] == [None, None]
    assert [r.header("x-ratelimit-remaining-video-minute") for r in replies] == ["2", "2"]


def numbered(count: int) -> list[tuple[bytes, bytes]]:
    """x-h1: v1 .. x-hN: vN, lines of a response head as the codec gives them."""
    return [(b"x-h%d" % i, b"v%d" % i) for i in range(1, count + 1)]


def test_get_headers_reads_content_type_content_length_and_97_other_response_lines():
    """lua-nginx-module ngx_http_lua_ngx_resp_get_headers (ngx_http_lua_headers.c, v0.10.26:489-547): Content-Type
    and Content-Length (nginx's headers_out fields, not list entries: ngx_http_upstream_copy_content_type, the
    Content-Length line ignored) go into the table first, with Connection, and count against max (100): of the list
    it reads `max - extra` lines, so 97 here, wherever the two stand."""
    head = [(b"content-type", b"application/json"), *numbered(150), (b"content-length", b"2")]
    read = resp_get_headers(head)
    assert sorted(read) == sorted([head[0], head[-1], *numbered(97)])


def test_get_headers_reads_99_response_lines_without_content_type_or_length():
    """The same count without Content-Type and Content-Length: Connection alone is extra, 99 list lines are read."""
    assert resp_get_headers(numbered(150)) == numbered(99)


def test_get_headers_reads_a_response_of_99_lines_whole():
    """Kong's limit is passed only when lines plus the extras exceed it (`count + extra > max`): 97 lines with
    Content-Type and Content-Length are all read, as are 99 plain ones, so a shorter list than MAX_RESP_HEADERS
    never needs the helper (the plugins' guard)."""
    head = [(b"content-type", b"text/plain"), *numbered(97), (b"content-length", b"2")]
    assert len(head) == MAX_RESP_HEADERS - 1
    assert resp_get_headers(head) is head
    plain = numbered(MAX_RESP_HEADERS - 1)
    assert resp_get_headers(plain) is plain


def test_response_transformer_tests_replace_against_the_lines_get_headers_reads():
    """header_transformer.lua:106-110 replaces a header only when `headers[name] ~= nil` in kong.response.get_headers()
    (lua_max_resp_headers = 100, Content-Type, Content-Length and Connection among them): of x-h1..x-h150 after those
    two, x-h97 is replaced and x-h98, the 98th list line, is not."""
    rt = ResponseTransformer(msgspec.convert({"replace": {"headers": ["x-h97:new", "x-h98:new"]}},
                                             ResponseTransformerConfig))
    head = [(b"content-type", b"text/plain"), (b"content-length", b"2"), *numbered(150)]
    out = dict(rt.header_filter(None, 200, list(head)))
    assert (out[b"x-h97"], out[b"x-h98"]) == (b"new", b"v98")


def test_response_transformer_removes_a_header_past_the_100th_line():
    """header_transformer.lua:91-93: remove is kong.response.clear_header(name), which clears every line of the name
    without reading get_headers(): x-h150 of 150 lines goes, as x-h1 does."""
    rt = ResponseTransformer(msgspec.convert({"remove": {"headers": ["x-h150", "x-h1"]}}, ResponseTransformerConfig))
    out = rt.header_filter(None, 200, numbered(150))
    assert out == numbered(149)[1:]
