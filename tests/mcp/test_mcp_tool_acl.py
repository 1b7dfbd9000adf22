"""ai-mcp-proxy (passthrough-listener) in the gateway, in front of a scripted MCP server: a refused tools/call never
reaches the server and gets a JSON-RPC error with its id; tools/list answers are filtered per caller in JSON and in
event streams (also when events arrive in pieces); batches are judged element by element; bodies are bounded; what
cannot be judged is not forwarded."""

from __future__ import annotations

import gzip
import json
from typing import Any

import h11
import httpx2
import pytest
import trio
from backends import Client, Reply, parse_raw_response, raw_exchange, service
from mcp import Client as SdkClient
from mcp.client.caching import CacheConfig, InMemoryResponseCacheStore
from mcp.client.streamable_http import streamable_http_client
from mcp_helpers import TEST_KEY, bounded, mcp_config, session_keys
from oauth_helpers import JwksServer, ToolServer, call, oauth_plugin, sse_messages, token
from sdk_tools_server import sdk_tools_server

TOOLS = ["search", "book", "delete", "admin_reset"]
CONSUMERS = [
    {"username": "alice", "custom_id": "c-alice", "keyauth_credentials": [{"key": "alice-key"}],
     "acls": [{"group": "admins"}]},
    {"username": "bob", "keyauth_credentials": [{"key": "bob-key"}], "acls": [{"group": "developers"}]},
    {"username": "carol", "keyauth_credentials": [{"key": "carol-key"}], "acls": [{"group": "suspended"}]},
]
PROXY = {"mode": "passthrough-listener",
         "default_acl": [{"scope": "tools", "allow": ["alice", "bob", "carol"]}],
         "tools": [{"name": "search", "description": "anyone", "acl": {"deny": ["carol"]}},
                   {"name": "delete", "description": "alice only", "acl": {"allow": ["alice"]}},
                   {"name": "admin_reset", "description": "nobody but admins", "acl": {"allow": ["admins"]}}]}
RPC_HEADERS = [("content-type", "application/json"), ("accept", "application/json, text/event-stream")]


@pytest.fixture
def http_codec() -> str:
    return "llhttp"


async def setup(nursery: trio.Nursery, gateway: Any, mode: str = "json", proxy: dict | None = None,
                auth: list | None = None, **doc: Any) -> tuple[ToolServer, int]:
    server = ToolServer(TOOLS, mode)
    await nursery.start(server.serve)
    plugins = auth if auth is not None else [{"name": "key-auth", "config": {"key_names": ["apikey"]}}]
    port = await gateway({
        "services": [service("mcp", f"http://127.0.0.1:{server.port}", [
            {"name": "mcp", "paths": ["/mcp"], "strip_path": False}])],
        "consumers": CONSUMERS,
        "plugins": [*plugins, {"name": "ai-mcp-proxy", "config": proxy or PROXY}], **doc})
    return server, port


async def rpc(port: int, body: Any, key: str | None = "alice-key", headers: list | None = None) -> Reply:
    extra = [("apikey", key)] if key else []
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await call(port, "/mcp", [*RPC_HEADERS, *extra, *(headers or [])], "POST", body=raw)


def tool_call(name: Any, rpc_id: Any = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rpc_id, "method": "tools/call", "params": {"name": name, "arguments": {}}}


LIST = {"jsonrpc": "2.0", "id": 7, "method": "tools/list", "params": {}}


def listed(message: dict[str, Any]) -> list[str]:
    return [t["name"] for t in message["result"]["tools"]]


async def test_an_allowed_tool_call_reaches_the_server(nursery, gateway):
    server, port = await setup(nursery, gateway)
    reply = await rpc(port, tool_call("delete"), "alice-key")
    assert reply.status == 200 and reply.json()["result"]["content"][0]["text"] == "called delete"
    assert server.called == ["delete"]


async def test_a_refused_tool_call_is_answered_by_the_gateway_and_never_reaches_the_server(nursery, gateway):
    server, port = await setup(nursery, gateway)
    reply = await rpc(port, tool_call("delete", "req-9"), "bob-key")
    assert reply.status == 200
    assert reply.json() == {"jsonrpc": "2.0", "id": "req-9", "error": {
        "code": -32602, "message": "tool 'delete' is not allowed", "data": {"tool": "delete"}}}
    assert server.called == [] and server.bodies == []


@pytest.mark.parametrize(("key", "tool", "allowed"), [
    ("carol-key", "search", False),  # deny wins over the default allow
    ("carol-key", "book", True),  # the default ACL admits her
    ("bob-key", "admin_reset", False),  # groups are subjects only with include_consumer_groups
    ("alice-key", "admin_reset", False),
    (None, "book", False),  # no consumer: nobody is in an allow list
])
async def test_the_tools_acl_then_the_default_decide(nursery, gateway, key, tool, allowed):
    server, port = await setup(nursery, gateway, auth=[] if key is None else None)
    reply = await rpc(port, tool_call(tool), key)
    assert ("result" in reply.json()) is allowed, reply.json()
    assert server.called == ([tool] if allowed else [])


async def test_include_consumer_groups_makes_groups_subjects(nursery, gateway):
    server, port = await setup(nursery, gateway, proxy={**PROXY, "include_consumer_groups": True})
    assert "result" in (await rpc(port, tool_call("admin_reset"), "alice-key")).json()
    assert "error" in (await rpc(port, tool_call("admin_reset"), "bob-key")).json()
    assert server.called == ["admin_reset"]


async def test_consumer_identifier_custom_id(nursery, gateway):
    proxy = {"mode": "passthrough-listener", "consumer_identifier": "custom_id",
             "tools": [{"name": "delete", "description": "d", "acl": {"allow": ["c-alice"]}}]}
    _, port = await setup(nursery, gateway, proxy=proxy)
    assert "result" in (await rpc(port, tool_call("delete"), "alice-key")).json()
    assert "error" in (await rpc(port, tool_call("delete"), "bob-key")).json()


@pytest.mark.parametrize("mode", ["json", "sse", "sse-split"])
async def test_tools_list_is_filtered_per_caller(nursery, gateway, mode):
    _, port = await setup(nursery, gateway, mode)
    for key, expected in (("alice-key", ["search", "book", "delete"]), ("bob-key", ["search", "book"]),
                          ("carol-key", ["book"])):
        reply = await rpc(port, LIST, key)
        assert reply.status == 200
        message = reply.json() if mode == "json" else sse_messages(reply.body)[0]
        assert message["id"] == 7 and listed(message) == expected, (key, message)
        assert message["result"]["tools"][0]["description"].startswith("the ")  # the rest is untouched


async def test_an_unchanged_answer_passes_byte_for_byte(nursery, gateway):
    proxy = {"mode": "passthrough-listener", "tools": [{"name": "nothing-here", "description": "x",
                                                        "acl": {"allow": ["alice"]}}]}
    server, port = await setup(nursery, gateway, proxy=proxy)
    reply = await rpc(port, LIST, "bob-key")
    assert listed(reply.json()) == TOOLS
    assert reply.body == json.dumps({"jsonrpc": "2.0", "id": 7, "result": {"tools": [
        {"name": t, "description": f"the {t} tool", "inputSchema": {"type": "object"}} for t in TOOLS]}}).encode()


@pytest.mark.parametrize("mode", ["json", "sse"])
async def test_a_batch_is_judged_element_by_element(nursery, gateway, mode):
    server, port = await setup(nursery, gateway, mode)
    batch = [tool_call("search", 1), tool_call("delete", 2), LIST,
             {"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "delete"}},  # a refused notification
             {"jsonrpc": "2.0", "method": "notifications/initialized"}]
    reply = await rpc(port, batch, "bob-key")
    assert reply.status == 200
    messages = reply.json() if mode == "json" else sse_messages(reply.body)
    by_id = {m["id"]: m for m in messages}
    assert set(by_id) == {1, 2, 7}
    assert by_id[1]["result"]["content"][0]["text"] == "called search"
    assert by_id[2]["error"]["message"] == "tool 'delete' is not allowed"
    assert listed(by_id[7]) == ["search", "book"]
    assert server.called == ["search"]
    forwarded = json.loads(server.bodies[0])
    assert [m.get("id") for m in forwarded] == [1, 7, None]  # the refused ones never left the gateway


async def test_a_batch_refused_whole_is_answered_by_the_gateway(nursery, gateway):
    server, port = await setup(nursery, gateway)
    reply = await rpc(port, [tool_call("delete", 1), tool_call("admin_reset", 2)], "bob-key")
    assert [m["error"]["code"] for m in reply.json()] == [-32602, -32602]
    assert server.bodies == []


async def test_a_batch_whose_rest_is_notifications_gets_the_gateways_errors(nursery, gateway):
    server, port = await setup(nursery, gateway)
    reply = await rpc(port, [tool_call("delete", 1), {"jsonrpc": "2.0", "method": "notifications/initialized"}],
                      "bob-key")
    assert reply.status == 200 and [m["id"] for m in reply.json()] == [1]
    assert len(server.bodies) == 1  # the notification went on (the server answered it 202)


class QuietServer(ToolServer):
    """Accepts a body of notifications with `status` and no body (202, 204, or a 200 with Content-Length 0)."""

    status = 202

    async def handle_conn(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        while (seen := await self._read_request(stream, conn)) is not None:
            self.bodies.append(seen.body)
            headers = [] if self.status == 204 else [(b"content-length", b"0")]
            await stream.send_all(conn.send(h11.Response(status_code=self.status, headers=headers))
                                  + conn.send(h11.EndOfMessage()))
            conn.start_next_cycle()


async def test_a_batch_whose_rest_the_server_accepts_without_an_answer_gets_the_gateways_errors(nursery, gateway):
    """A batch [a refused call, a notification]: the gateway forwards the notification and owes the client the
    error of the call (JSON-RPC 2.0 section 6: an Array with "the corresponding Response objects"), whether the
    server accepts the rest with 202 (MCP's answer to notifications), 204 or a 200 without a body; the answer is
    then the gateway's own, "200 OK" (not the server's reason phrase)."""
    server = QuietServer(TOOLS)
    await nursery.start(server.serve)
    port = await gateway({"services": [service("mcp", f"http://127.0.0.1:{server.port}", [
        {"name": "mcp", "paths": ["/mcp"], "strip_path": False}])], "consumers": CONSUMERS, "plugins": [
        {"name": "key-auth", "config": {"key_names": ["apikey"]}}, {"name": "ai-mcp-proxy", "config": PROXY}]})
    body = json.dumps([tool_call("delete", 1), {"jsonrpc": "2.0", "method": "notifications/initialized"}]).encode()
    request = (b"POST /mcp HTTP/1.1\r\nhost: gateway.test\r\ncontent-type: application/json\r\naccept: "
               b"application/json, text/event-stream\r\napikey: bob-key\r\nconnection: close\r\n"
               b"content-length: %d\r\n\r\n%b" % (len(body), body))
    for status in (202, 204, 200):
        server.status = status
        data, _ = await raw_exchange(port, request)
        assert data.startswith(b"HTTP/1.1 200 OK\r\n"), (status, data)
        _, headers, answer = parse_raw_response(data)
        assert headers["content-type"] == "application/json" and headers["content-length"] == str(len(answer))
        assert [(m["id"], m["error"]["code"]) for m in json.loads(answer)] == [(1, -32602)], status
    assert [json.loads(b) for b in server.bodies] == [[{"jsonrpc": "2.0", "method": "notifications/initialized"}]] * 3


async def test_a_refused_notification_alone_gets_202(nursery, gateway):
    server, port = await setup(nursery, gateway)
    reply = await rpc(port, {"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "delete"}}, "bob-key")
    assert reply.status == 202 and server.bodies == []


async def test_where_the_gateway_answers_alone_an_unsupported_protocol_version_gets_the_servers_400(nursery, gateway):
    """MCP 2025-06-18 basic/transports, Protocol Version Header: "If the server receives a request with an invalid or
    unsupported MCP-Protocol-Version, it MUST respond with 400 Bad Request". A call the gateway refuses is answered
    in the server's place, so as the server would: python-sdk v1.12.0 src/mcp/server/streamable_http.py
    `_validate_protocol_version` (before it runs anything, notifications included) answers 400 with
    `_create_error_response`'s body, id "server-error", -32600. Supported: every released revision (the SDK's
    KNOWN_PROTOCOL_VERSIONS)."""
    server, port = await setup(nursery, gateway)
    bad = [("mcp-protocol-version", "1999-01-01")]
    expected = {"jsonrpc": "2.0", "id": "server-error", "error": {"code": -32600, "message": (
        "Bad Request: Unsupported protocol version: 1999-01-01. Supported versions: 2024-11-05, 2025-03-26, "
        "2025-06-18, 2025-11-25, 2026-07-28")}}
    refused_notification = {"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "delete"}}
    for body in (tool_call("delete"), [tool_call("delete", 1), tool_call("admin_reset", 2)], refused_notification):
        reply = await rpc(port, body, "bob-key", bad)
        assert (reply.status, reply.json()) == (400, expected), body
        assert reply.header("content-type") == "application/json"
    reply = await rpc(port, tool_call("delete"), "bob-key", [("mcp-protocol-version", "2025-06-18")])
    assert reply.status == 200 and reply.json()["error"]["code"] == -32602
    assert server.bodies == []


@pytest.mark.parametrize(("body", "status", "code"), [
    (b"{not json", 400, -32700),
    (b"[1, 2]", 400, -32600),
    (b"[]", 400, -32600),
    (json.dumps([tool_call("search", i) for i in range(1001)]).encode(), 400, -32600),
    (json.dumps(tool_call(42)).encode(), 200, -32602),
    (json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": ["search"]}).encode(), 200, -32602),
])
async def test_what_cannot_be_judged_is_answered_not_forwarded(nursery, gateway, body, status, code):
    server, port = await setup(nursery, gateway)
    reply = await rpc(port, body, "alice-key")
    assert reply.status == status
    assert reply.json()["error"]["code"] == code
    assert server.bodies == []


async def test_bodies_over_max_request_body_size_get_413(nursery, gateway):
    server, port = await setup(nursery, gateway, proxy={**PROXY, "max_request_body_size": 2048})
    big = tool_call("search")
    big["params"]["arguments"] = {"q": "x" * 3000}
    reply = await rpc(port, big, "alice-key")
    assert reply.status == 413 and reply.json()["error"]["code"] == -32600
    assert "max_request_body_size" in reply.json()["error"]["message"]
    small = tool_call("search")
    small["params"]["arguments"] = {"q": "x" * 1500}
    assert (await rpc(port, small, "alice-key")).status == 200
    assert server.called == ["search"]


async def test_a_get_stream_replaying_a_tools_list_answer_is_filtered(nursery, gateway):
    server, port = await setup(nursery, gateway)
    server.replay = [json.dumps({"jsonrpc": "2.0", "id": 3, "result": {"tools": [{"name": t} for t in TOOLS]}})
                     .encode(), b'{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}']
    reply = await call(port, "/mcp", [("accept", "text/event-stream"), ("apikey", "bob-key")])
    first, second = sse_messages(reply.body)
    assert listed(first) == ["search", "book"]
    assert second["method"] == "notifications/tools/list_changed"


async def test_scope_based_acls_answer_insufficient_scope(nursery, gateway):
    jwks = JwksServer()
    await nursery.start(jwks.serve)
    resource = "http://gateway.test/mcp"
    proxy = {"mode": "passthrough-listener", "acl_attribute_type": "oauth_access_token",
             "access_token_claim_field": "scope",
             "tools": [{"name": "delete", "description": "d", "acl": {"allow": ["mcp:write", "mcp:admin"]}}]}
    server, port = await setup(nursery, gateway, proxy=proxy, auth=[oauth_plugin(resource, jwks.url)])
    read_only = [("authorization", "Bearer " + token(resource, scope="mcp:read"))]
    reply = await rpc(port, tool_call("delete"), None, read_only)
    assert reply.status == 403
    www = reply.header("www-authenticate")
    assert 'error="insufficient_scope"' in www and 'scope="mcp:admin mcp:write"' in www
    assert 'resource_metadata="http://gateway.test/.well-known/oauth-protected-resource/mcp"' in www
    assert reply.json()["error"]["code"] == -32602
    writer = [("authorization", "Bearer " + token(resource, scope="mcp:read mcp:write"))]
    assert (await rpc(port, tool_call("delete"), None, writer)).status == 200
    assert listed((await rpc(port, LIST, None, read_only)).json()) == ["search", "book", "admin_reset"]
    assert server.called == ["delete"]


class LabelledToolServer(ToolServer):
    """Answers one request with the given Content-Type (None: none), its body gzipped when `gzipped` (as a server
    that compresses whatever the request's Accept-Encoding said)."""

    def __init__(self, content_type: bytes | None, gzipped: bool = False, unended: bool = False,
                 chunked: bool = False) -> None:
        super().__init__(TOOLS)
        self.content_type = content_type
        self.gzipped = gzipped
        self.unended = unended  # an event stream that ends without its last event's blank line
        self.chunked = chunked

    async def handle_conn(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        seen = await self._read_request(stream, conn)
        if seen is None:
            return
        body = json.dumps(self._answer_one(json.loads(seen.body))).encode()
        if self.content_type == b"text/event-stream":
            body = b"event: message\ndata: " + body + (b"" if self.unended else b"\n\n")
        headers = []
        if self.gzipped:
            body = gzip.compress(body)
            headers.append((b"content-encoding", b"gzip"))
        if self.content_type is not None:
            headers.append((b"content-type", self.content_type))
        if not self.chunked:
            headers.append((b"content-length", b"%d" % len(body)))
        await stream.send_all(conn.send(h11.Response(status_code=200, headers=headers))
                              + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))


async def labelled(nursery: trio.Nursery, gateway: Any, server: LabelledToolServer) -> Reply:
    await nursery.start(server.serve)
    port = await gateway({"services": [service("mcp", f"http://127.0.0.1:{server.port}", [
        {"name": "mcp", "paths": ["/mcp"], "strip_path": False}])], "consumers": CONSUMERS,
        "plugins": [{"name": "key-auth", "config": {"key_names": ["apikey"]}},
                    {"name": "ai-mcp-proxy", "config": PROXY}]})
    with trio.fail_after(10):
        return await rpc(port, LIST, key="bob-key")


@pytest.mark.parametrize("content_type", [b"text/plain", None, b"application/vnd.api+json"])
async def test_a_tools_list_answer_is_filtered_whatever_its_content_type_says(nursery, gateway, content_type):
    """The answer to a tracked tools/list is filtered as JSON whatever it is labelled (a governance review: text/plain,
    none and a +json type went through unfiltered, listing a tool the caller is refused)."""
    reply = await labelled(nursery, gateway, LabelledToolServer(content_type))
    names = [t["name"] for t in json.loads(reply.body)["result"]["tools"]]
    assert "delete" not in names and "search" in names


@pytest.mark.parametrize("content_type", [b"application/json", b"text/event-stream"])
async def test_a_compressed_tools_list_answer_is_refused_never_passed_on(nursery, gateway, content_type):
    """The gateway asks for no coding; a server that compresses anyway sends what it cannot filter: the caller gets
    a JSON-RPC error in its place (before, the gzip went through and the client unzipped the refused tool)."""
    reply = await labelled(nursery, gateway, LabelledToolServer(content_type, gzipped=True))
    assert reply.header("content-encoding") is None
    assert json.loads(reply.body)["error"]["code"] == -32603


@pytest.mark.parametrize("chunked", [False, True], ids=["sized", "chunked"])
async def test_an_event_stream_that_ends_mid_event_is_filtered_too(nursery, gateway, chunked):
    """The last event of a stream that ends without its blank line is edited as any other (a body review: it was
    passed on as it came, the refused tool in it)."""
    reply = await labelled(nursery, gateway, LabelledToolServer(b"text/event-stream", unended=True, chunked=chunked))
    assert reply.status == 200 and b'"search"' in reply.body and b'"delete"' not in reply.body


class CompressingStream(ToolServer):
    """GET: one event, then the stream stays open (as a session's stream does); gzip-compressed when the request's
    Accept-Encoding offers gzip, as a compressing server does. Records the Accept-Encoding it saw."""

    EVENT = b'event: message\ndata: {"jsonrpc":"2.0","method":"notifications/message","params":{}}\n\n'

    def __init__(self) -> None:
        super().__init__(TOOLS)
        self.accept_encoding: list[str | None] = []

    async def handle_conn(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        seen = await self._read_request(stream, conn)
        if seen is None:
            return
        offered = seen.header("accept-encoding")
        self.accept_encoding.append(offered)
        headers, data = [(b"content-type", b"text/event-stream")], self.EVENT
        if offered and "gzip" in offered:
            headers.append((b"content-encoding", b"gzip"))
            data = gzip.compress(data)
        await stream.send_all(conn.send(h11.Response(status_code=200, headers=headers)) +
                              conn.send(h11.Data(data=data)))
        await trio.sleep_forever()


async def test_a_governed_get_stream_asks_for_no_coding_and_its_events_flow(nursery, gateway):
    """The GET stream's answer is edited too (a replayed tools/list), so its Accept-Encoding goes as for a POST's:
    before, the server was asked for gzip, and the gateway read the compressed stream whole (no event reached the
    client while it was open)."""
    server = CompressingStream()
    await nursery.start(server.serve)
    port = await gateway({"services": [service("mcp", f"http://127.0.0.1:{server.port}", [
        {"name": "mcp", "paths": ["/mcp"], "strip_path": False}])], "consumers": CONSUMERS,
        "plugins": [{"name": "key-auth", "config": {"key_names": ["apikey"]}},
                    {"name": "ai-mcp-proxy", "config": PROXY}]})
    async with await Client.connect(port, host="localhost") as client:
        await client.stream.send_all(client.conn.send(h11.Request(method="GET", target="/mcp", headers=[
            ("host", "localhost"), ("accept", "text/event-stream"), ("accept-encoding", "gzip, deflate"),
            ("apikey", "alice-key")])) + client.conn.send(h11.EndOfMessage()))
        body = b""
        with trio.fail_after(5):
            while b"notifications/message" not in body:
                ev = client.conn.next_event()
                if ev is h11.NEED_DATA:
                    client.conn.receive_data(await client.stream.receive_some(65536))
                elif isinstance(ev, h11.Data):
                    body += bytes(ev.data)
                else:
                    assert isinstance(ev, h11.Response) and ev.status_code == 200, ev
    assert server.accept_encoding == [None]


async def sdk_tool_names(url: str, key: str, store: InMemoryResponseCacheStore) -> list[str]:
    """tools/list by an SDK client (default mode, 2026-07-28) of `key`'s principal, its response cache in `store`,
    which the principals of one host application share, public entries included (CacheConfig.share_public)."""
    cache = CacheConfig(store=store, partition=key, share_public=True, target_id=url)
    async with httpx2.AsyncClient(headers={"apikey": key}, timeout=20) as http:
        async with SdkClient(streamable_http_client(url, http_client=http), cache=cache) as client:
            assert client.protocol_version == "2026-07-28"
            return [t.name for t in (await client.list_tools()).tools]


@bounded(60)
async def test_a_filtered_tools_list_is_not_served_to_another_caller_from_a_shared_sdk_cache(gateway):
    """The SDK server marks its tools/list `cacheScope: "public"` (60 s). SEP-2549 (2026-07-28), as the SDK has it:
    "public" may be shared across authorization contexts, "private" only reused within the one that produced it
    (mcp/server/caching.py:29-31; mcp/client/caching.py:64-65, share_public at 119-124). ai-mcp-proxy's answer is
    alice's own view (`delete` in it): passed on public, a store shared by a host application's users served it to
    bob, who may not see `delete`. The gateway's filtered answers go out "private"."""
    with sdk_tools_server("--public-tools") as sport:
        doc = mcp_config([sport])
        doc["consumers"] = [{"username": "alice", "keyauth_credentials": [{"key": "alice-key"}]},
                            {"username": "bob", "keyauth_credentials": [{"key": "bob-key"}]}]
        doc["plugins"] = [{"name": "key-auth", "config": {"key_names": ["apikey"]}},
                          {"name": "ai-mcp-proxy", "config": {
                              "mode": "passthrough-listener",
                              "default_acl": [{"scope": "tools", "allow": ["alice", "bob"]}],
                              "tools": [{"name": "delete", "acl": {"allow": ["alice"]}}]}}]
        port = await gateway(doc, mcp=session_keys(TEST_KEY))
        url = f"http://127.0.0.1:{port}/mcp"
        assert "delete" not in await sdk_tool_names(url, "bob-key", InMemoryResponseCacheStore())  # his own view
        shared = InMemoryResponseCacheStore()
        assert "delete" in await sdk_tool_names(url, "alice-key", shared)
        assert "delete" not in await sdk_tool_names(url, "bob-key", shared)


@bounded(10)
async def test_a_refused_call_of_a_session_the_gateway_cannot_open_gets_404_not_the_refusal(gateway, nursery):
    """MCP 2025-11-25 basic/transports, Session Management: a request of a terminated (here: never sealed) session
    MUST get 404, so the client starts a new one. ai-mcp-proxy answering alone (a refused call: its error; a refused
    notification: 202) said the session was alive where the forwarder says 404 for the same id."""
    server = ToolServer(TOOLS, "json")
    await nursery.start(server.serve)
    port = await gateway({
        "services": [service("mcp", f"http://127.0.0.1:{server.port}", [
            {"name": "mcp", "paths": ["/mcp"], "strip_path": False}])],
        "consumers": CONSUMERS,
        "plugins": [{"name": "key-auth", "config": {"key_names": ["apikey"]}},
                    {"name": "ai-mcp-proxy", "config": PROXY}]}, mcp=session_keys(TEST_KEY))
    forged = [*RPC_HEADERS, ("apikey", "bob-key"), ("mcp-session-id", "forged-session")]
    note = {"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "delete"}}
    call_ = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "delete"}}
    async with await Client.connect(port, host="localhost") as client:
        for message in (note, call_):
            reply = await client.request("POST", "/mcp", forged, json.dumps(message).encode())
            assert reply.status == 404, (message, reply.status, reply.body)
            assert json.loads(reply.body)["error"]["code"] == -32001
    assert server.bodies == []  # (nothing reached the server)
