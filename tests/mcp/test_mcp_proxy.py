"""The MCP step in the proxy, against scripted MCP upstreams (FakeMcp) and the in-process gateway, per codec:
session ids sealed and restored, pinning, 404s, retries that never move a session, header checks (-32020),
routing on JSON-RPC method and tool, batches, SSE (keep-alive, headers, Last-Event-ID), the Origin policy."""

from __future__ import annotations

import json

import pytest
from backends import Client, free_port, request, serve_on_addresses
from dns_server import serve_names
from mcp_helpers import INIT_BODY, JSON_HEADERS, TEST_KEY, FakeMcp, bounded, header, mcp_config, session_keys

from gateway.mcp.sessions import SessionCodec

CODEC = SessionCodec([(TEST_KEY[0], TEST_KEY[1].encode())])
UPSTREAM = b"mcp-cluster"  # the upstream of mcp_config and plain_config: the gateway's ids are bound to it


def seal(target: str, upstream_id: bytes) -> str:
    """A gateway session id of target `target` of the upstream mcp-cluster, as the gateway seals it."""
    return CODEC.encode(target, upstream_id, upstream=UPSTREAM).decode()
NOT_FOUND = {"jsonrpc": "2.0", "id": None, "error": {"code": -32001, "message": "Session not found"}}


async def start_fakes(nursery, *names: str, **kwargs) -> list[FakeMcp]:  # noqa: ANN001, ANN003
    fakes = [FakeMcp(n, **kwargs) for n in names]
    for f in fakes:
        await nursery.start(f.serve)
    return fakes


def rpc(method: str, rpc_id: int = 1, **params) -> bytes:  # noqa: ANN003
    return json.dumps({"jsonrpc": "2.0", "id": rpc_id, "method": method, "params": params}).encode()


async def initialize(client: Client) -> tuple[str, str]:
    """(gateway session id, name of the backend that answered)."""
    reply = await client.request("POST", "/mcp", JSON_HEADERS, json.dumps(INIT_BODY).encode())
    assert reply.status == 200, reply.body
    return reply.header("mcp-session-id"), reply.json()["result"]["name"]


@bounded(20)
async def test_session_id_is_sealed_and_restored_and_pinned(gateway, nursery):
    a, b, c = await start_fakes(nursery, "a", "b", "c")
    port = await gateway(mcp_config([a.port, b.port, c.port]), mcp=session_keys(TEST_KEY))
    async with await Client.connect(port, host="localhost") as client:
        sid, first = await initialize(client)
        target, upstream_sid, _ = CODEC.decode(sid.encode(), UPSTREAM)
        backend = {"a": a, "b": b, "c": c}[first]
        assert target == f"127.0.0.1:{backend.port}"
        assert upstream_sid == f"up-{first}-1".encode()
        assert "up-" not in sid  # the client never sees the upstream's own id in the clear form it was sent
        for i in range(6):  # round-robin would move unpinned requests; these stay
            reply = await client.request("POST", "/mcp", [*JSON_HEADERS, ("mcp-session-id", sid)], rpc("tools/list", i))
            assert reply.status == 200
            result = reply.json()["result"]
            assert result["name"] == first
            assert header(result["headers"], "mcp-session-id") == f"up-{first}-1"
        deleted = await client.request("DELETE", "/mcp", [("mcp-session-id", sid)])
        assert deleted.status == 204
    assert backend.requests[-1].method == "DELETE"
    assert backend.requests[-1].header("mcp-session-id") == f"up-{first}-1"


@bounded(20)
async def test_unknown_tampered_and_foreign_ids_get_404(gateway, nursery):
    (a,) = await start_fakes(nursery, "a")
    port = await gateway(mcp_config([a.port]), mcp=session_keys(TEST_KEY))
    sealed = seal(f"127.0.0.1:{a.port}", b"up-a-1")
    gone = seal("127.0.0.1:1", b"up-x-1")  # a target that is not (or no longer) in the upstream
    other_key = SessionCodec([("k1", b"another-secret-0123456789")]).encode(f"127.0.0.1:{a.port}", b"up-a-1",
                                                                            upstream=UPSTREAM).decode()
    unbound = CODEC.encode(f"127.0.0.1:{a.port}", b"up-a-1").decode()  # of no upstream (as sealed before binding)
    flipped = sealed[:-1] + ("A" if sealed[-1] != "A" else "B")
    async with await Client.connect(port, host="localhost") as client:
        ok = await client.request("POST", "/mcp", [*JSON_HEADERS, ("mcp-session-id", sealed)], rpc("ping"))
        assert ok.status == 200
        for bad in (flipped, gone, other_key, unbound, "up-a-1", "k1.", "k9." + sealed[3:], sealed + "x" * 2000):
            reply = await client.request("POST", "/mcp", [*JSON_HEADERS, ("mcp-session-id", bad)], rpc("ping"))
            assert reply.status == 404, bad
            assert reply.json() == NOT_FOUND
            assert reply.header("content-type") == "application/json"
    assert len(a.requests) == 1


@bounded(15)
async def test_a_session_of_one_upstream_does_not_open_on_another_upstream_sharing_its_address(gateway, nursery):
    """Two tenants' MCP servers behind one virtual-hosting address (an ingress on 127.0.0.1:P), each its own Kong
    upstream told apart by `host_header` (Kong's kong/runloop/balancer/init.lua:396-397 `if upstream and
    upstream.host_header ~= nil then balancer_data.hostname = upstream.host_header`, sent as Host by set_host_header,
    :441-454), each its own service and route. A session tenant A's server created opens on A's route only: the spec
    (2025-06-18 basic/transports "Session Management" 2-3) scopes a session id to the server that issued it, so on
    B's route it gets the 404 of an unknown session and A's upstream session id never reaches B's server."""
    (fake,) = await start_fakes(nursery, "ingress")
    doc = {
        "_format_version": "3.0",
        "services": [
            {"name": "tenant-a", "url": "http://tenant-a-up", "routes": [
                {"name": "a", "paths": ["/a/mcp"], "strip_path": False}]},
            {"name": "tenant-b", "url": "http://tenant-b-up", "routes": [
                {"name": "b", "paths": ["/b/mcp"], "strip_path": False}]},
        ],
        "upstreams": [
            {"name": "tenant-a-up", "host_header": "tenant-a.example",
             "targets": [{"target": f"127.0.0.1:{fake.port}"}]},
            {"name": "tenant-b-up", "host_header": "tenant-b.example",
             "targets": [{"target": f"127.0.0.1:{fake.port}"}]},
        ],
    }
    port = await gateway(doc, mcp=session_keys(TEST_KEY))
    async with await Client.connect(port, host="localhost") as client:
        init = await client.request("POST", "/a/mcp", JSON_HEADERS, json.dumps(INIT_BODY).encode())
        assert init.status == 200
        sid = init.header("mcp-session-id")
        assert sid and fake.requests[-1].header("host").startswith("tenant-a.example")
        seen = len(fake.requests)
        reply = await client.request("POST", "/b/mcp", [*JSON_HEADERS, ("mcp-session-id", sid)], rpc("tools/list"))
        assert reply.status == 404
        assert reply.json() == NOT_FOUND
        again = await client.request("POST", "/a/mcp", [*JSON_HEADERS, ("mcp-session-id", sid)], rpc("tools/list"))
        assert again.status == 200  # on its own upstream's route it still opens
    assert [r.header("mcp-session-id") for r in fake.requests[seen:]] == ["up-ingress-1"]


@bounded(20)
async def test_key_rotation_old_ids_still_open(gateway, nursery):
    (a,) = await start_fakes(nursery, "a")
    old = seal(f"127.0.0.1:{a.port}", b"up-a-7")
    keys = session_keys(("k2", "the-new-secret-0123456789"), TEST_KEY)  # k2 signs, k1 still verifies
    port = await gateway(mcp_config([a.port]), mcp=keys)
    async with await Client.connect(port, host="localhost") as client:
        reply = await client.request("POST", "/mcp", [*JSON_HEADERS, ("mcp-session-id", old)], rpc("ping"))
        assert reply.status == 200
        assert header(reply.json()["result"]["headers"], "mcp-session-id") == "up-a-7"
        sid, _ = await initialize(client)
        assert sid.startswith("k2.")
    port = await gateway(mcp_config([a.port]), mcp=session_keys(("k2", "the-new-secret-0123456789")))
    async with await Client.connect(port, host="localhost") as client:  # k1 retired: its ids no longer open
        reply = await client.request("POST", "/mcp", [*JSON_HEADERS, ("mcp-session-id", old)], rpc("ping"))
        assert reply.status == 404


@bounded(20)
async def test_pinned_target_down_is_404_and_never_retried_elsewhere(gateway, nursery):
    a, b = await start_fakes(nursery, "a", "b")
    dead = free_port()
    port = await gateway(mcp_config([dead, a.port, b.port]), mcp=session_keys(TEST_KEY))
    sid = seal(f"127.0.0.1:{dead}", b"up-dead-1")
    async with await Client.connect(port, host="localhost") as client:
        reply = await client.request("POST", "/mcp", [*JSON_HEADERS, ("mcp-session-id", sid)], rpc("tools/list"))
        assert reply.status == 404
        assert reply.json() == NOT_FOUND
        get = await client.request("GET", "/mcp", [("accept", "text/event-stream"), ("mcp-session-id", sid)])
        assert get.status == 404
        # Without a session the dead target is skipped as usual (nothing was sent to it).
        _, name = await initialize(client)
        assert name in ("a", "b")
    assert sum(len(f.requests) for f in (a, b)) == 1  # only the initialize reached a live target


@bounded(20)
async def test_a_call_ai_mcp_proxy_refuses_for_a_session_whose_server_is_unhealthy_gets_404(gateway, nursery):
    """A session pinned to an unhealthy (or circuit-open) target gets 404 from the forwarder, so the client starts a
    new one (MCP 2025-11-25 transports, Session Management); ai-mcp-proxy answering a refused call alone said the
    session was alive (its refusal, 200) once the target was down."""
    (a,) = await start_fakes(nursery, "a")
    dead = free_port()
    doc = mcp_config([dead, a.port], upstream={"healthchecks": {"passive": {"unhealthy": {"tcp_failures": 1}}}})
    doc["plugins"] = [{"name": "ai-mcp-proxy", "config": {
        "mode": "passthrough-listener", "tools": [{"name": "delete", "acl": {"allow": ["alice"]}}]}}]
    port = await gateway(doc, mcp=session_keys(TEST_KEY))
    pinned = [*JSON_HEADERS, ("mcp-session-id", seal(f"127.0.0.1:{dead}", b"up-dead-1"))]
    refused = rpc("tools/call", 5, name="delete", arguments={})
    async with await Client.connect(port, host="localhost") as client:
        reply = await client.request("POST", "/mcp", pinned, refused)
        assert reply.status == 200 and reply.json()["error"]["code"] == -32602  # its target not known down yet
        for n in range(3):  # round robin tries the dead target for one of these: a TCP failure marks it unhealthy
            assert (await client.request("POST", "/mcp", JSON_HEADERS, rpc("ping", n))).status == 200
        reply = await client.request("POST", "/mcp", pinned, refused)
        assert reply.status == 404
        assert reply.json() == NOT_FOUND
    assert [json.loads(r.body)["method"] for r in a.requests] == ["ping"] * 3  # the refused calls reached no one


@bounded(20)
async def test_header_body_mismatch_is_400_with_32020(gateway, nursery):
    (a,) = await start_fakes(nursery, "a")
    port = await gateway(mcp_config([a.port]), mcp=session_keys(TEST_KEY))
    modern = [*JSON_HEADERS, ("mcp-protocol-version", "2026-07-28")]
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
    call = rpc("tools/call", 7, name="whoami", arguments={}, _meta=meta)
    bad_cases = [
        ([("mcp-method", "tools/list"), ("mcp-name", "whoami")], call),  # method differs
        ([("mcp-method", "tools/call"), ("mcp-name", "other")], call),  # name differs
        ([("mcp-method", "tools/call")], call),  # name missing
        ([("mcp-method", "tools/call"), ("mcp-name", "whoami")], b"[" + call + b"]"),  # a batch
        ([("mcp-method", "tools/call"), ("mcp-name", "whoami")], b"not json"),
        ([("mcp-method", "resources/read"), ("mcp-name", "file:///a")], rpc("resources/read", 7, uri="file:///b")),
    ]
    async with await Client.connect(port, host="localhost") as client:
        for extra, body in bad_cases:
            reply = await client.request("POST", "/mcp", modern + extra, body)
            assert reply.status == 400, (extra, body)
            error = reply.json()["error"]
            assert error["code"] == -32020, error
        mixed_version = [*JSON_HEADERS, ("mcp-protocol-version", "2025-11-25"), ("mcp-method", "tools/call"),
                         ("mcp-name", "whoami")]
        reply = await client.request("POST", "/mcp", mixed_version, call)
        assert reply.status == 400 and reply.json()["id"] == 7
        good = [("mcp-method", "tools/call"), ("mcp-name", "whoami")]
        assert (await client.request("POST", "/mcp", modern + good, call)).status == 200
        sentinel = [("mcp-method", "tools/call"), ("mcp-name", "=?base64?d2hvYW1p?=")]  # "whoami"
        assert (await client.request("POST", "/mcp", modern + sentinel, call)).status == 200
    assert len(a.requests) == 2  # only the two consistent requests reached the upstream


@bounded(20)
async def test_an_mcp_name_on_a_method_that_names_nothing_passes_as_the_server_takes_it(gateway, nursery):
    """The spec compares Mcp-Name on tools/call, prompts/get and resources/read only (draft streamable-http "Server
    Validation"; python-sdk's classify_inbound_request): a tools/list carrying one is the server's to answer, 200,
    where no route on MCP method or tool could take it."""
    (a,) = await start_fakes(nursery, "a")
    port = await gateway(mcp_config([a.port]), mcp=session_keys(TEST_KEY))
    headers = [*JSON_HEADERS, ("mcp-protocol-version", "2026-07-28"), ("mcp-method", "tools/list"),
               ("mcp-name", "size")]
    async with await Client.connect(port, host="localhost") as client:
        reply = await client.request("POST", "/mcp", headers, rpc("tools/list", 3))
    assert reply.status == 200, reply.body
    assert [json.loads(r.body)["method"] for r in a.requests] == ["tools/list"]


DEEP_ID_CALL = (b'{"jsonrpc":"2.0","id":' + b"[" * 30000 + b"]" * 30000 +
                b',"method":"tools/call","params":{"name":"whoami","arguments":{}}}')  # 60 KB: within peek_bytes


@bounded(20)
async def test_a_deeply_nested_id_is_an_invalid_request_not_a_500(gateway, nursery):
    """An id nested 30,000 deep (which Python's parser recurses on) is what JSON-RPC calls an Invalid Request: a header
    check cannot confirm the headers on it (-32020), and a tool route cannot route it (-32600); before, the peek
    raised RecursionError and the client got Kong's 500."""
    a, b = await start_fakes(nursery, "a", "b")
    doc = mcp_config([a.port])
    doc["services"].append({"name": "tools", "url": f"http://127.0.0.1:{b.port}", "routes": [
        {"name": "whoami", "paths": ["/tool"], "strip_path": False, "mcp_tools": ["whoami"]}]})
    port = await gateway(doc, mcp=session_keys(TEST_KEY))
    async with await Client.connect(port, host="localhost") as client:
        checked = await client.request("POST", "/mcp", [*JSON_HEADERS, ("mcp-method", "tools/call"),
                                                        ("mcp-name", "whoami")], DEEP_ID_CALL)
        routed = await client.request("POST", "/tool", JSON_HEADERS, DEEP_ID_CALL)
    assert checked.status == 400 and checked.json()["error"]["code"] == -32020, checked.body
    assert routed.status == 400 and routed.json()["error"]["code"] == -32600, routed.body
    assert a.requests == [] and b.requests == []


def lying_header_config(tool_port: int, rest_port: int, catch_all: dict) -> dict:
    """A tools/call of `dangerous` has its own route (refused by request-termination, standing in for auth or a
    per-tool limit); everything else on /mcp goes to a catch-all route of another kind."""
    return {"_format_version": "3.0", "services": [
        {"name": "tools", "url": f"http://127.0.0.1:{tool_port}", "routes": [
            {"name": "dangerous", "paths": ["/mcp"], "strip_path": False, "mcp_tools": ["dangerous"],
             "plugins": [{"name": "request-termination", "config": {"status_code": 403}}]}]},
        {"name": "rest", "url": f"http://127.0.0.1:{rest_port}", "routes": [
            {"name": "rest", "paths": ["/mcp"], "strip_path": False, **catch_all}]}]}


@bounded(20)
@pytest.mark.parametrize("catch_all", [{}, {"mcp": False}, {"mcp": True}], ids=["default", "mcp-false", "mcp-true"])
async def test_a_lying_mcp_method_header_never_routes_a_call_past_its_route(gateway, nursery, catch_all):
    """Routing on Mcp-Method / Mcp-Name checks them against the body first, whatever the route they pick: before, a
    plain catch-all (which has no MCP step) took `tools/call dangerous` sent as `Mcp-Method: tools/list`."""
    tools, rest = await start_fakes(nursery, "tools", "rest")
    port = await gateway(lying_header_config(tools.port, rest.port, catch_all), mcp=session_keys(TEST_KEY))
    call = rpc("tools/call", 3, name="dangerous", arguments={})
    async with await Client.connect(port, host="localhost") as client:
        assert (await client.request("POST", "/mcp", JSON_HEADERS, call)).status == 403
        honest = [*JSON_HEADERS, ("mcp-method", "tools/call"), ("mcp-name", "dangerous")]
        assert (await client.request("POST", "/mcp", honest, call)).status == 403
        for lie in ([("mcp-method", "tools/list")], [("mcp-method", "tools/call"), ("mcp-name", "whoami")]):
            lying = await client.request("POST", "/mcp", [*JSON_HEADERS, *lie], call)
            assert lying.status == 400 and lying.json()["error"]["code"] == -32020 and lying.json()["id"] == 3, lie
        listing = await client.request("POST", "/mcp", [*JSON_HEADERS, ("mcp-method", "tools/list")],
                                       rpc("tools/list", 4))
        assert listing.status == 200  # an agreeing header routes as before
    assert len(rest.requests) == 1 and tools.requests == []


@bounded(20)
async def test_routes_on_method_and_tool(gateway, nursery):
    default, tools, prompts = await start_fakes(nursery, "default", "tools", "prompts")
    doc = mcp_config([default.port], extra_routes=[
        {"name": "special-tool", "service": "tools-svc", "paths": ["/mcp"], "strip_path": False,
         "mcp_tools": ["special"]},
    ])
    doc["services"].append({"name": "tools-svc", "url": f"http://127.0.0.1:{tools.port}"})
    doc["services"].append({"name": "prompts-svc", "url": f"http://127.0.0.1:{prompts.port}", "routes": [
        {"name": "prompts", "paths": ["/mcp"], "strip_path": False, "mcp_methods": ["prompts/get", "prompts/list"]}]})
    doc["services"][1]["routes"] = []
    doc["routes"] = [doc["services"][0]["routes"].pop()]  # the special-tool route, at the top level
    port = await gateway(doc, mcp=session_keys(TEST_KEY))

    async def served_by(headers, body) -> str:  # noqa: ANN001
        async with await Client.connect(port, host="localhost") as client:
            reply = await client.request("POST", "/mcp", JSON_HEADERS + headers, body)
        assert reply.status == 200, reply.body
        return reply.json()["result"]["name"]

    # 2025 clients: from the body, whole, in pieces, or beyond the first read
    assert await served_by([], rpc("tools/call", name="special", arguments={})) == "tools"
    assert await served_by([], rpc("tools/call", name="whoami", arguments={})) == "default"
    assert await served_by([], rpc("prompts/get", name="p")) == "prompts"
    assert await served_by([], rpc("tools/list")) == "default"
    assert await served_by([], b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}') == "default"
    big = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": "special", "arguments": {"blob": "x" * 200_000}}}).encode()
    async with await Client.connect(port, host="localhost") as client:
        reply = await client.request("POST", "/mcp", JSON_HEADERS, [big[:100], big[100:70_000], big[70_000:]])
    assert reply.status == 200 and reply.json()["result"] == {**reply.json()["result"], "name": "tools",
                                                               "body_len": len(big)}
    # 2026-07-28 clients: from the headers (checked against the body)
    modern = [("mcp-protocol-version", "2026-07-28"), ("mcp-method", "tools/call"), ("mcp-name", "special")]
    assert await served_by(modern, rpc("tools/call", name="special")) == "tools"
    # non-POSTs never match a method route and are not read
    async with await Client.connect(port, host="localhost") as client:
        reply = await client.request("DELETE", "/mcp")
    assert reply.status == 204 and default.requests[-1].method == "DELETE"


@bounded(20)
async def test_batch_goes_whole_to_one_target(gateway, nursery):
    a, b = await start_fakes(nursery, "a", "b")
    port = await gateway(mcp_config([a.port, b.port], extra_routes=[
        {"name": "tools", "paths": ["/mcp"], "strip_path": False, "mcp_methods": ["tools/call"]}]),
        mcp=session_keys(TEST_KEY))
    batch = b"[" + rpc("tools/list", 1) + b"," + rpc("ping", 2) + b"]"
    async with await Client.connect(port, host="localhost") as client:
        sid, first = await initialize(client)
        for _ in range(4):
            reply = await client.request("POST", "/mcp", [*JSON_HEADERS, ("mcp-session-id", sid)], batch)
            assert reply.status == 200
            assert reply.json()["result"]["batch"] is True
            assert reply.json()["result"]["name"] == first  # pinned, whole


@bounded(20)
async def test_sse_get_stream_keepalive_headers_and_last_event_id(gateway, nursery):
    (a,) = await start_fakes(nursery, "a", events=3, gap=0.7)
    port = await gateway(mcp_config([a.port]), mcp=session_keys(TEST_KEY), sse_keepalive=0.25)
    async with await Client.connect(port, host="localhost") as client:
        sid, _ = await initialize(client)
        reply = await client.request("GET", "/mcp", [("accept", "text/event-stream"), ("mcp-session-id", sid),
                                                     ("last-event-id", "41")])
    assert reply.status == 200
    assert reply.header("x-accel-buffering") is None  # hidden from the client, as nginx hides it for Kong
    assert reply.header("cache-control") == "no-cache"
    assert reply.header("content-type") == "text/event-stream"
    body = reply.body
    assert body.count(b": keepalive\n\n") >= 3
    events = [part for part in body.split(b"\n\n") if part.startswith(b"id:")]
    assert [e.split(b"\n")[0] for e in events] == [b"id: 0", b"id: 1", b"id: 2"]
    seen = a.requests[-1]
    assert seen.method == "GET"
    assert seen.header("last-event-id") == "41"
    assert seen.header("mcp-session-id") == "up-a-1"
    # keep-alive comments only between events: every chunk the client got is whole events or a comment
    for _, chunk in reply.chunks:
        assert chunk.endswith(b"\n\n"), chunk


@bounded(20)
async def test_a_jwt_long_upstream_session_id_is_sealed_and_its_session_stays_usable(gateway, nursery):
    """The spec names a JWT as a session id and bounds none: 725 bytes (an RS256 token) are sealed, and the next
    call reaches the server with them (over 512 bytes went out unsealed, then every call got 404)."""
    long_id = "eyJhbGciOiJSUzI1NiJ9." + "a" * 700 + ".sig"
    fake = FakeMcp("a", sid_prefix=long_id)
    await nursery.start(fake.serve)
    port = await gateway(mcp_config([fake.port]), mcp=session_keys(TEST_KEY))
    async with await Client.connect(port, host="localhost") as client:
        init = await client.request("POST", "/mcp", JSON_HEADERS, json.dumps(INIT_BODY).encode())
        sid = init.header("mcp-session-id")
        assert sid is not None and sid.startswith("k1.")
        call = await client.request("POST", "/mcp", [*JSON_HEADERS, ("mcp-session-id", sid)], rpc("tools/list"))
    assert call.status == 200, call.body
    assert header(call.json()["result"]["headers"], "mcp-session-id") == f"{long_id}-1"


@bounded(20)
async def test_non_mcp_routes_are_left_alone(gateway, nursery):
    (a,) = await start_fakes(nursery, "a")
    doc = mcp_config([a.port])
    doc["services"][0]["routes"][0]["mcp"] = False
    port = await gateway(doc, mcp=session_keys(TEST_KEY))
    async with await Client.connect(port, host="localhost") as client:
        init = await client.request("POST", "/mcp", JSON_HEADERS, json.dumps(INIT_BODY).encode())
        assert init.header("mcp-session-id") == "up-a-1"  # passed through unsealed
        reply = await client.request("POST", "/mcp", [*JSON_HEADERS, ("mcp-session-id", "anything"),
                                                      ("mcp-method", "tools/list")], rpc("ping"))
        assert reply.status == 200  # no header check, no session check
        assert header(reply.json()["result"]["headers"], "mcp-session-id") == "anything"


@bounded(20)
async def test_origin_allow_list_and_upstream_modes(gateway, nursery):
    (a,) = await start_fakes(nursery, "a")
    doc = mcp_config([a.port])
    allow = ["https://app.example.com", "http://localhost:*"]

    async def seen_origin(port: int, origin: str | None) -> tuple[int, str | None]:
        headers = JSON_HEADERS + ([("origin", origin)] if origin else [])
        reply = await request(port, "POST", "/mcp", headers=headers, body=rpc("ping"), host="localhost")
        if reply.status != 200:
            assert reply.json()["error"] == {"code": -32600, "message": "Origin not allowed"}
            return reply.status, None
        return 200, header(reply.json()["result"]["headers"], "origin")

    port = await gateway(doc, mcp={**session_keys(TEST_KEY), "origin": {"allow": allow, "upstream": "rewrite"}})
    assert await seen_origin(port, "https://app.example.com") == (200, f"http://127.0.0.1:{a.port}")
    assert await seen_origin(port, "http://localhost:3000") == (200, f"http://127.0.0.1:{a.port}")
    assert await seen_origin(port, "https://APP.example.com") == (200, f"http://127.0.0.1:{a.port}")
    assert await seen_origin(port, "https://evil.example.com") == (403, None)
    assert await seen_origin(port, "http://localhost.evil:3000") == (403, None)
    assert await seen_origin(port, None) == (200, None)  # non-browser clients send none
    port = await gateway(doc, mcp={**session_keys(TEST_KEY), "origin": {"allow": allow, "upstream": "strip"}})
    assert await seen_origin(port, "https://app.example.com") == (200, None)
    port = await gateway(doc, mcp={**session_keys(TEST_KEY), "origin": {"allow": allow}})  # pass
    assert await seen_origin(port, "https://app.example.com") == (200, "https://app.example.com")
    assert await seen_origin(port, "https://evil.example.com") == (403, None)
    port = await gateway(doc, mcp=session_keys(TEST_KEY))  # no allow list: pass, unchecked
    assert await seen_origin(port, "https://evil.example.com") == (200, "https://evil.example.com")


def plain_config(ports: list[int], **route_fields) -> dict:  # noqa: ANN003
    """A Kong config as a user writes it: a service, a route on /mcp with no MCP key, an upstream of `ports`."""
    return {"_format_version": "3.0",
            "services": [{"name": "mcp", "url": "http://mcp-cluster",
                          "routes": [{"name": "mcp", "paths": ["/mcp"], "strip_path": False, **route_fields}]}],
            "upstreams": [{"name": "mcp-cluster", "targets": [{"target": f"127.0.0.1:{p}"} for p in ports]}]}


@bounded(20)
async def test_a_route_without_mcp_keys_seals_and_pins_sessions(gateway, nursery):
    a, b, c = await start_fakes(nursery, "a", "b", "c")
    port = await gateway(plain_config([a.port, b.port, c.port]), mcp=session_keys(TEST_KEY))
    async with await Client.connect(port, host="localhost") as client:
        sid, first = await initialize(client)
        target, upstream_sid, _ = CODEC.decode(sid.encode(), UPSTREAM)
        assert upstream_sid == f"up-{first}-1".encode()
        for i in range(6):
            reply = await client.request("POST", "/mcp", [*JSON_HEADERS, ("mcp-session-id", sid)], rpc("tools/list", i))
            assert reply.status == 200
            assert reply.json()["result"]["name"] == first
            assert header(reply.json()["result"]["headers"], "mcp-session-id") == f"up-{first}-1"


@bounded(20)
async def test_a_route_without_mcp_keys_answers_404_to_an_id_the_gateway_did_not_seal(gateway, nursery):
    (a,) = await start_fakes(nursery, "a")
    port = await gateway(plain_config([a.port]), mcp=session_keys(TEST_KEY))
    sealed = seal(f"127.0.0.1:{a.port}", b"up-a-1")
    async with await Client.connect(port, host="localhost") as client:
        for bad in ("up-a-1", sealed[:-1] + ("A" if sealed[-1] != "A" else "B")):
            reply = await client.request("POST", "/mcp", [*JSON_HEADERS, ("mcp-session-id", bad)], rpc("ping"))
            assert reply.status == 404
            assert reply.json() == NOT_FOUND
        plain = await client.request("GET", "/mcp/anything", [])  # no session header: proxied as usual
        assert plain.status == 200
    assert len(a.requests) == 1


@bounded(20)
async def test_mcp_false_passes_session_ids_through_untouched(gateway, nursery):
    (a,) = await start_fakes(nursery, "a")
    port = await gateway(plain_config([a.port], mcp=False), mcp=session_keys(TEST_KEY))
    async with await Client.connect(port, host="localhost") as client:
        sid, _ = await initialize(client)
        assert sid == "up-a-1"  # the upstream's own id, not sealed
        reply = await client.request("POST", "/mcp", [*JSON_HEADERS, ("mcp-session-id", "client-made-id")],
                                     rpc("ping"))
        assert reply.status == 200
        assert header(reply.json()["result"]["headers"], "mcp-session-id") == "client-made-id"


@bounded(20)
async def test_a_session_of_a_named_target_stays_on_the_address_that_created_it(gateway, nursery):
    """A target named by a host name of several addresses (a headless service's pods), a target per address as Kong's
    balancer makes them (`gateway run` too): each session goes to the address it was created on, and a new session
    goes to the next address."""
    addresses = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    names = await serve_names(nursery, {"mcp.test": addresses})
    port, _ = await serve_on_addresses(nursery, addresses, FakeMcp)
    config = mcp_config([port])
    config["upstreams"][0]["targets"] = [{"target": f"mcp.test:{port}"}]
    gw = await gateway(config, mcp=session_keys(TEST_KEY), upstream_keepalive=0,  # a new connection per request
                       **names.settings)
    async with await Client.connect(gw, host="localhost") as client:
        sessions = [await initialize(client) for _ in range(3)]
        assert sorted(name for _, name in sessions) == addresses  # new sessions take turns
        for sid, created_on in sessions:
            target, _, _ = CODEC.decode(sid.encode(), UPSTREAM)
            assert target == f"mcp.test/{created_on}:{port}"
            for i in range(4):  # the name's next address would be another one each time
                reply = await client.request("POST", "/mcp", [*JSON_HEADERS, ("mcp-session-id", sid)],
                                             rpc("tools/list", i))
                assert reply.status == 200
                assert reply.json()["result"]["name"] == created_on


# A valid DNS name of 245 bytes (labels of at most 63): "name:port" fits the sealed id's 255-byte target field,
# but "name:port@address", what a named target's session is sealed with, does not.
LONG = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 48]) + ".test"


@bounded(15)
async def test_initialize_on_a_target_with_a_long_dns_name_gets_the_servers_answer_and_a_session(gateway, nursery):
    """Spec 2025-06-18 basic/transports.mdx, Session Management 1: the server MAY assign a session id on the
    response containing the InitializeResult; a proxy must deliver that response. A DNS name may be 253 bytes
    (RFC 1035), and a named target's session is sealed with its key `name/address:port`, past 255 bytes here (it
    was a 500 for an initialize the server accepted)."""
    assert len(LONG) == 245
    names = await serve_names(nursery, {LONG: ["127.0.0.2"]})
    port, _ = await serve_on_addresses(nursery, ["127.0.0.2"], FakeMcp)
    config = mcp_config([port])
    config["upstreams"][0]["targets"] = [{"target": f"{LONG}:{port}"}]
    gw = await gateway(config, mcp=session_keys(TEST_KEY), **names.settings)
    async with await Client.connect(gw, host="localhost") as client:
        reply = await client.request("POST", "/mcp", JSON_HEADERS, json.dumps(INIT_BODY).encode())
    assert reply.status == 200, (reply.status, reply.body[:200])
    assert reply.header("mcp-session-id"), "no session id given to the client"
