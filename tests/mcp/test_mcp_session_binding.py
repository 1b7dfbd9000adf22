"""MCP sessions bound to the caller that created them (gateway.mcp.affinity): who a request is (caller_identity),
ids opened only for that caller (SessionAffinity.open), and two ai-mcp-oauth2 users behind the gateway, whose
server never sees a token, each kept out of the other's session (MCP Security Best Practices, "Session
Hijacking": session ids bound to user-specific information). Ids are bound to their upstream as well."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from backends import Client
from mcp_helpers import INIT_BODY, JSON_HEADERS, TEST_KEY, FakeMcp, bounded, mcp_config, session_keys
from oauth_helpers import AS_URL, JwksServer, oauth_plugin, token

from gateway.mcp.affinity import SessionAffinity, caller_identity
from gateway.mcp.sessions import SessionCodec
from gateway.policies.ai_mcp_oauth2.handler import TokenEntry, TokenIdentity
from gateway.policies.consumers import Consumer
from gateway.policies.ldap_auth.handler import CredentialIdentity

K1 = ("k1", b"first-secret-0123456789")
ALICE = b"consumer\x00alice-id"
MALLORY = b"consumer\x00mallory-id"
NOT_FOUND = {"jsonrpc": "2.0", "id": None, "error": {"code": -32001, "message": "Session not found"}}


def exchange(consumer: Any = None, claims: dict[str, Any] | None = None) -> Any:
    """What caller_identity reads of an Exchange: the consumer, and ai-mcp-oauth2's verified token."""
    state = None if claims is None else {"oauth2": TokenEntry(consumer, {"exp": 2**40, **claims}, None, "", 0)}
    return SimpleNamespace(consumer=consumer, state=state)


def affinity(codec: SessionCodec, *names: str, upstream: str = "up", direct: bool = False) -> SessionAffinity:
    """The affinity of a route to upstream `upstream` of targets `names` (`direct`: a service's own host:port)."""
    targets = [SimpleNamespace(name=n, named=False) for n in names]
    return SessionAffinity(SimpleNamespace(codec=codec), SimpleNamespace(targets=targets, name=upstream, direct=direct))


# --- who a request is ---------------------------------------------------------------------------------------------

def test_an_unauthenticated_or_anonymous_request_has_no_identity():
    assert caller_identity(exchange()) is None
    assert caller_identity(exchange(Consumer("anon-id", "anonymous", None).anonymous)) is None


def test_a_consumer_is_its_consumer_id_whichever_credential_authenticated_it():
    alice = Consumer("alice-id", "alice", None)
    assert caller_identity(exchange(alice.credential_identity("key-1", "key-1"))) == ALICE
    assert caller_identity(exchange(alice.identity("cred-2", None), {"iss": AS_URL, "sub": "x"})) == ALICE


def test_a_token_without_a_consumer_is_its_issuer_and_subject():
    who = TokenIdentity("alice", (), [])
    assert caller_identity(exchange(who, {"iss": AS_URL + "/", "sub": "alice"})) == \
        b"token\x00" + AS_URL.encode() + b"\x00alice"
    assert caller_identity(exchange(who, {"iss": AS_URL, "sub": "\ud800"})) == \
        b"token\x00" + AS_URL.encode() + b"\x00\xed\xa0\x80"  # a lone surrogate from JSON is no 500


def test_a_credential_without_a_consumer_is_its_credential_id():
    assert caller_identity(exchange(CredentialIdentity("ldap-cred", b"alice"))) == b"credential\x00ldap-cred"
    assert caller_identity(exchange(TokenIdentity("c-7", (), []), {"iss": AS_URL})) == b"credential\x00c-7"
    assert caller_identity(exchange(TokenIdentity("", (), []), {"iss": AS_URL})) is None  # a token naming no one


# --- opening ids for a caller -------------------------------------------------------------------------------------

def test_a_bound_id_opens_only_for_its_caller():
    aff = affinity(SessionCodec([K1]), "t:1")
    sid = aff.seal(SimpleNamespace(name="t:1", named=False), b"up-1", "127.0.0.1", ALICE)
    assert aff.open(sid, ALICE) == (0, None, b"up-1")
    assert aff.open(sid, MALLORY) is None
    assert aff.open(sid, None) is None
    assert aff.open(sid, ALICE) == (0, None, b"up-1")  # (a refusal does not evict the verified id)


def test_an_unbound_id_opens_for_anyone():
    aff = affinity(SessionCodec([K1]), "t:1")
    sid = aff.seal(SimpleNamespace(name="t:1", named=False), b"up-1", "127.0.0.1", None)
    assert aff.open(sid, None) == aff.open(sid, ALICE) == aff.open(sid, MALLORY) == (0, None, b"up-1")


def test_a_bound_id_sealed_under_a_rotated_out_signer_still_opens_for_its_caller():
    sid = affinity(SessionCodec([K1]), "t:1").seal(SimpleNamespace(name="t:1", named=False), b"u", "", ALICE)
    rotated = affinity(SessionCodec([("k2", b"second-secret-0123456789"), K1]), "t:1")
    assert rotated.open(sid, ALICE) == (0, None, b"u")
    assert rotated.open(sid, MALLORY) is None


def test_an_id_opens_only_on_routes_to_the_upstream_that_sealed_it():
    """Two upstreams with a target at one address (an ingress, each told apart by host_header) are two servers:
    an id opens on every route to the upstream that sealed it and on no other (affinity.py's contract: an id opens
    only to the target that created the session; the MCP spec's Session Management ties it to its server)."""
    codec = SessionCodec([K1])
    tenant_a = affinity(codec, "127.0.0.1:8000", upstream="tenant-a-up")
    sid = tenant_a.seal(SimpleNamespace(name="127.0.0.1:8000", named=False), b"up-1", "127.0.0.1", None)
    assert affinity(codec, "127.0.0.1:8000", upstream="tenant-a-up").open(sid, None) == (0, None, b"up-1")
    assert affinity(codec, "127.0.0.1:8000", upstream="tenant-b-up").open(sid, None) is None
    assert affinity(codec, "127.0.0.1:8000", upstream="s:127.0.0.1:8000", direct=True).open(sid, None) is None


def test_an_id_of_a_services_own_host_opens_on_no_upstream_with_that_target():
    """A service that names its host:port directly has no upstream entity: the target is its whole upstream, and
    its ids open on any route to that host:port, but not on an upstream's route whose target has the address."""
    codec = SessionCodec([K1])
    direct = affinity(codec, "127.0.0.1:8000", upstream="s:127.0.0.1:8000", direct=True)
    sid = direct.seal(SimpleNamespace(name="127.0.0.1:8000", named=False), b"up-1", "127.0.0.1", None)
    assert affinity(codec, "127.0.0.1:8000", upstream="t:127.0.0.1:8000", direct=True).open(sid, None) == \
        (0, None, b"up-1")
    assert affinity(codec, "127.0.0.1:8000", upstream="tenant-a-up").open(sid, None) is None


# --- end to end: two users of one ai-mcp-oauth2 route ---------------------------------------------------------

@bounded(10)
async def test_one_users_session_id_does_not_open_in_another_users_request(gateway, nursery):
    """The server sees no token (ai-mcp-oauth2 keeps it), so only the gateway can tell alice from mallory."""
    resource = "http://localhost/mcp"
    jwks = JwksServer()
    await nursery.start(jwks.serve)
    fake = FakeMcp("a")
    await nursery.start(fake.serve)
    doc = mcp_config([fake.port])
    doc["plugins"] = [oauth_plugin(resource, jwks.url)]
    port = await gateway(doc, mcp=session_keys(TEST_KEY))
    alice = [("authorization", "Bearer " + token(resource, sub="alice"))]
    mallory = [("authorization", "Bearer " + token(resource, sub="mallory"))]
    ping = json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}).encode()
    async with await Client.connect(port, host="localhost") as client:
        init = await client.request("POST", "/mcp", [*JSON_HEADERS, *alice], json.dumps(INIT_BODY).encode())
        assert init.status == 200, init.body
        sid = init.header("mcp-session-id")
        before = len(fake.requests)
        for method, body in (("POST", ping), ("GET", b""), ("DELETE", b"")):
            foreign = await client.request(method, "/mcp", [*JSON_HEADERS, *mallory, ("mcp-session-id", sid)], body)
            assert foreign.status == 404, (method, foreign.body)
            assert foreign.json() == NOT_FOUND
        assert len(fake.requests) == before, "mallory's requests reached alice's session"
        own = await client.request("POST", "/mcp", [*JSON_HEADERS, *alice, ("mcp-session-id", sid)], ping)
        assert own.status == 200
        assert own.json()["result"]["name"] == "a"
