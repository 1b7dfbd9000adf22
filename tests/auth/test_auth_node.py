"""Authentication and access control in the real gateway: `gateway start --workers 2`, requests from IPv4 and IPv6
loopback, every plugin; both workers identify consumers the same way (the same X-Consumer-ID and credential ids);
behind a trusted balancer the client address comes from X-Forwarded-For, and rate limiting by ip counts it across
both workers."""

from __future__ import annotations

import base64
import json
import socket
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
from auth_helpers import consumer_id, jwt_secret, make_token, message
from backends import Client, EchoBackend, Reply, service
from e2e_helpers import GatewayNode, conns_per_worker

TIMEOUT = 10
FAMILIES = ["HS256", "RS256", "ES256", "PS256", "EdDSA"]


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


HOSTS = ["127.0.0.1", "::1"] if ipv6_loopback() else ["127.0.0.1"]


@pytest.fixture
def node(tmp_path: Path):  # noqa: ANN201 - a factory; every gateway made is stopped by pid at the end
    made: list[GatewayNode] = []

    def make(doc: dict[str, Any], **settings: Any) -> GatewayNode:
        gw = GatewayNode(tmp_path / f"gw{len(made)}", doc, **settings)
        if len(HOSTS) > 1:
            gw.doc["gateway"]["listen"] = [f"127.0.0.1:{gw.port}", f"[::1]:{gw.port}"]
            gw.config.write_text(json.dumps(gw.doc, indent=1))
        made.append(gw)
        return gw

    try:
        yield make
    finally:
        for gw in made:
            gw.cleanup()


async def clients_per_worker(port: int, gw: GatewayNode) -> list[Client]:
    """One kept-alive IPv4 connection to each worker (found through /proc), as clients that can send headers."""
    by_worker = await conns_per_worker(port, await gw.worker_pids())
    clients = []
    for conns in by_worker.values():
        client = Client(conns[0].stream)
        client.conn = h11.Connection(h11.CLIENT)
        clients.append(client)
    return clients


async def send(host: str, port: int, target: str = "/", headers: list[tuple[str, str]] | None = None) -> Reply:
    with trio.fail_after(TIMEOUT):
        client = Client(await trio.open_tcp_stream(host, port))
        client.conn = h11.Connection(h11.CLIENT)
        async with client:
            return await client.request("GET", target, headers=headers)


def seen_headers(reply: Reply) -> dict[str, str]:
    assert reply.status == 200, (reply.status, reply.body)
    return {k: v for k, v in reply.json()["headers"]}


CONSUMERS = [
    {"username": "alice", "custom_id": "A-1",
     "jwt_secrets": [jwt_secret(f"alice-{alg}", alg) for alg in FAMILIES],
     "keyauth_credentials": [{"key": "alice-api-key"}],
     "basicauth_credentials": [{"username": "alice", "password": "wonderland"}],
     "acls": [{"group": "admins"}]},
    {"username": "bob", "keyauth_credentials": [{"key": "bob-api-key"}]},
]


async def test_every_plugin_from_ipv4_and_ipv6_with_two_workers(nursery, node):
    backend = EchoBackend()
    await nursery.start(backend.serve)
    routes = [
        {"paths": ["/jwt"], "plugins": [{"name": "jwt", "config": {"claims_to_verify": ["exp"]}}]},
        {"paths": ["/key"], "plugins": [{"name": "key-auth", "config": {"hide_credentials": True}}]},
        {"paths": ["/basic"], "plugins": [{"name": "basic-auth"}]},
        {"paths": ["/acl"], "plugins": [{"name": "key-auth"}, {"name": "acl", "config": {"allow": ["admins"]}}]},
        {"paths": ["/v4-only"], "plugins": [{"name": "ip-restriction", "config": {"allow": ["127.0.0.0/8"]}}]},
        {"paths": ["/v6-only"], "plugins": [{"name": "ip-restriction", "config": {"allow": ["::1/128"]}}]},
    ]
    gw = node({"services": [service("svc", f"http://127.0.0.1:{backend.port}", routes)], "consumers": CONSUMERS})
    await gw.start(workers=2)
    port = gw.port
    exp = 2**31 - 1
    basic = "Basic " + base64.b64encode(b"alice:wonderland").decode()
    for host in HOSTS:
        for alg in FAMILIES:
            token = make_token(f"alice-{alg}", alg, exp=exp)
            seen = seen_headers(await send(host, port, "/jwt", [("authorization", f"Bearer {token}")]))
            assert (seen["x-consumer-username"], seen["x-credential-identifier"]) == ("alice", f"alice-{alg}")
        reply = await send(host, port, "/jwt")
        assert (reply.status, reply.json(), reply.header("www-authenticate")) == (
            401, {"message": "Unauthorized"}, "Bearer")
        reply = await send(host, port, "/jwt", [("authorization", f"Bearer {make_token('alice-HS256', exp=1)}")])
        assert (reply.status, reply.json()) == (401, {"exp": "token expired"})
        seen = seen_headers(await send(host, port, "/key?apikey=alice-api-key&x=1"))
        assert seen["x-consumer-id"] == consumer_id("alice") and seen["x-consumer-custom-id"] == "A-1"
        assert "apikey" not in seen
        reply = await send(host, port, "/key", [("apikey", "nope")])
        assert (reply.status, message(reply), reply.header("www-authenticate")) == (401, {"message": "Unauthorized"},
                                                                                 "Key")
        assert seen_headers(await send(host, port, "/basic", [("authorization", basic)]))["x-credential-identifier"] \
            == "alice"
        reply = await send(host, port, "/basic", [("authorization", "Basic Ym9iOm5vcGU=")])
        assert (reply.status, reply.header("www-authenticate")) == (401, 'Basic realm="service"')
        assert seen_headers(await send(host, port, "/acl", [("apikey", "alice-api-key")]))["x-consumer-groups"] \
            == "admins"
        reply = await send(host, port, "/acl", [("apikey", "bob-api-key")])
        assert (reply.status, message(reply)) == (403, {"message": "You cannot consume this service"})
        v4, v6 = await send(host, port, "/v4-only"), await send(host, port, "/v6-only")
        mine, other = (v4, v6) if host == "127.0.0.1" else (v6, v4)
        assert seen_headers(mine)["x-real-ip"] == host
        assert (other.status, message(other)) == (403, {"message": f"IP address not allowed: {host}"})

    # every worker: the same consumer id, and the same id for a key-auth credential Kong would make random
    identities = set()
    for client in await clients_per_worker(port, gw):
        async with client:
            seen = seen_headers(await client.request("GET", "/key?apikey=alice-api-key"))
            identities.add((seen["x-consumer-id"], seen["x-credential-identifier"]))
    assert len(identities) == 1
    assert "Traceback" not in gw.log()


async def test_a_trusted_balancers_x_forwarded_for_is_the_client_address_in_every_worker(nursery, node):
    backend = EchoBackend()
    await nursery.start(backend.serve)
    routes = [{"paths": ["/"], "plugins": [
        {"name": "ip-restriction", "config": {"allow": ["10.0.0.0/8"]}},
        {"name": "rate-limiting", "config": {"day": 1, "limit_by": "ip"}}]}]
    gw = node({"services": [service("svc", f"http://127.0.0.1:{backend.port}", routes)]},
              trusted_ips=["127.0.0.0/8"], real_ip_header="X-Forwarded-For", real_ip_recursive=True)
    await gw.start(workers=2)
    port = gw.port
    xff = [("x-forwarded-for", "10.1.1.1, 127.0.0.5")]  # the last hop is trusted too: recursion skips it
    seen = seen_headers(await send("127.0.0.1", port, "/", xff))
    assert seen["x-real-ip"] == "10.1.1.1"
    assert seen["x-forwarded-for"] == "10.1.1.1, 127.0.0.5, 127.0.0.1"
    reply = await send("127.0.0.1", port, "/", [("x-forwarded-for", "8.8.8.8")])
    assert (reply.status, message(reply)) == (403, {"message": "IP address not allowed: 8.8.8.8"})
    # the same client through both workers: 1 a day for the gateway as a whole, keyed by its address
    statuses = []
    for client in await clients_per_worker(port, gw):
        async with client:
            statuses.append((await client.request("GET", "/", headers=[("x-forwarded-for", "10.3.3.3")])).status)
    assert sorted(statuses) == [200, 429]
    assert (await send("127.0.0.1", port, "/", [("x-forwarded-for", "10.4.4.4")])).status == 200  # its own count
    if "::1" in HOSTS:  # ::1 is not trusted: its spoofed header changes nothing
        reply = await send("::1", port, "/", [("x-forwarded-for", "10.1.1.1")])
        assert (reply.status, message(reply)) == (403, {"message": "IP address not allowed: ::1"})

