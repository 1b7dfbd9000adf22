"""ai-mcp-oauth2 in the gateway (in-process, one worker): the resource server's answers (RFC 6750 challenges with
RFC 9728's resource_metadata), its metadata document, RS256/ES256 tokens checked against a JWKS fetched over HTTP
(aud, iss, exp, unknown key ids), who the token names (consumer, credential, groups, claim headers), and that the
token never reaches the upstream unless passthrough_credentials."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import trio
from backends import Reply
from oauth_helpers import AS_URL, JwksServer, call, consumer_id, jwk, oauth_plugin, start, token, upstream

RESOURCE = "http://gateway.test/mcp"
METADATA_URL = "http://gateway.test/.well-known/oauth-protected-resource/mcp"
ROUTES = [{"name": "mcp", "paths": ["/mcp"], "strip_path": False}]


@pytest.fixture
def http_codec() -> str:
    return "llhttp"


async def setup(nursery: trio.Nursery, gateway: Any, jwks: JwksServer | None = None, plugins: list | None = None,
                **config: Any) -> tuple[Any, int, JwksServer]:
    jwks = jwks or JwksServer()
    await nursery.start(jwks.serve)
    backend, port = await start(nursery, gateway, ROUTES,
                                plugins=plugins or [oauth_plugin(RESOURCE, jwks.url, **config)])
    return backend, port, jwks


def bearer(tok: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {tok}")]


def params(reply: Reply) -> dict[str, str]:
    """The parameters of a `WWW-Authenticate: Bearer k="v", ...` challenge."""
    value = reply.header("www-authenticate")
    assert value.startswith("Bearer "), value
    return dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', value))


async def test_a_request_without_a_token_gets_401_naming_the_metadata(nursery, gateway):
    _, port, _ = await setup(nursery, gateway, scopes_supported=["mcp:tools", "mcp:admin"])
    reply = await call(port, "/mcp", method="POST", body=b"{}")
    assert reply.status == 401
    assert params(reply) == {"resource_metadata": METADATA_URL, "scope": "mcp:tools mcp:admin"}
    assert "error" not in params(reply)  # RFC 6750 3.1: no error code when no credentials were sent
    assert json.loads(reply.body)["message"] == "Unauthorized"  # and its request_id, as every Kong error


async def test_another_authorization_scheme_is_no_token(nursery, gateway):
    _, port, _ = await setup(nursery, gateway)
    reply = await call(port, "/mcp", [("authorization", "Basic dXNlcjpwYXNz")])
    assert reply.status == 401 and "error" not in params(reply)


async def test_the_metadata_document_is_served_without_a_token_at_rfc_9728_and_kong_paths(nursery, gateway):
    _, port, _ = await setup(nursery, gateway, scopes_supported=["mcp:tools"])
    for path in ("/.well-known/oauth-protected-resource/mcp", "/mcp/.well-known/oauth-protected-resource"):
        reply = await call(port, path)
        assert reply.status == 200, (path, reply.body)
        assert reply.json() == {"resource": RESOURCE, "authorization_servers": [AS_URL],
                                "scopes_supported": ["mcp:tools"], "bearer_methods_supported": ["header"]}
        assert reply.header("access-control-allow-origin") == "*"
    preflight = await call(port, "/.well-known/oauth-protected-resource/mcp", method="OPTIONS")
    assert preflight.status == 204 and "GET" in preflight.header("access-control-allow-methods")
    post = await call(port, "/.well-known/oauth-protected-resource/mcp", method="POST", body=b"{}")
    assert post.status == 405 and post.header("allow") == "GET, HEAD, OPTIONS"


async def test_a_configured_metadata_endpoint_is_the_only_path_served(nursery, gateway):
    _, port, _ = await setup(nursery, gateway, metadata_endpoint="/meta/mcp")
    assert (await call(port, "/meta/mcp")).status == 200
    reply = await call(port, "/mcp")
    assert params(reply)["resource_metadata"] == "http://gateway.test/meta/mcp"
    assert (await call(port, "/.well-known/oauth-protected-resource/mcp")).status == 404  # no route, not served


async def test_a_valid_rs256_token_passes_and_is_not_forwarded_upstream(nursery, gateway):
    backend, port, jwks = await setup(nursery, gateway)
    reply = await call(port, "/mcp", bearer(token(RESOURCE)))
    seen = upstream(reply)
    assert "authorization" not in seen
    assert not any(k.startswith("x-consumer") for k in seen)  # the token names no consumer
    assert jwks.fetches == 1


async def test_an_es256_token_from_the_jwks_passes(nursery, gateway):
    jwks = JwksServer([jwk("k1"), jwk("ec1", "ES256")])
    _, port, _ = await setup(nursery, gateway, jwks)
    assert (await call(port, "/mcp", bearer(token(RESOURCE, kid="ec1", alg="ES256")))).status == 200


async def test_passthrough_credentials_forwards_the_token(nursery, gateway):
    _, port, _ = await setup(nursery, gateway, passthrough_credentials=True)
    tok = token(RESOURCE)
    assert upstream(await call(port, "/mcp", bearer(tok)))["authorization"] == f"Bearer {tok}"


@pytest.mark.parametrize(("claims", "reason"), [
    ({"aud": "http://other.test/mcp"}, "audience"),
    ({"aud": None}, "audience"),
    ({"iss": "http://evil.test"}, "not issued"),
    ({"lifetime": -10}, "expired"),
    ({"exp": None}, "no expiry"),
    ({"nbf": 4102444800}, "not valid yet"),
])
async def test_a_token_failing_a_claim_check_gets_invalid_token(nursery, gateway, claims, reason):
    _, port, _ = await setup(nursery, gateway)
    reply = await call(port, "/mcp", bearer(token(RESOURCE, **claims)))
    assert reply.status == 401
    p = params(reply)
    assert p["error"] == "invalid_token" and reason in p["error_description"], p
    assert p["resource_metadata"] == METADATA_URL


async def test_relaxed_audience_validation_accepts_another_audience(nursery, gateway):
    _, port, _ = await setup(nursery, gateway, insecure_relaxed_audience_validation=True)
    assert (await call(port, "/mcp", bearer(token(RESOURCE, aud="http://other.test/mcp")))).status == 200


async def test_leeway_accepts_a_token_just_expired(nursery, gateway):
    _, port, _ = await setup(nursery, gateway, jwt_claims_leeway=60)
    assert (await call(port, "/mcp", bearer(token(RESOURCE, lifetime=-10)))).status == 200


async def test_symmetric_and_unsigned_tokens_never_pass(nursery, gateway):
    import jwt as pyjwt

    _, port, _ = await setup(nursery, gateway)
    claims = {"iss": AS_URL, "aud": RESOURCE, "exp": 4102444800}
    for tok in (pyjwt.encode(claims, "a-secret-long-enough-for-hs256-0123456789", algorithm="HS256",
                             headers={"kid": "k1"}),
                pyjwt.encode(claims, None, algorithm="none"), "not.a.token", "x" * 3000):
        reply = await call(port, "/mcp", bearer(tok))
        assert reply.status == 401 and params(reply)["error"] == "invalid_token", tok[:20]


async def test_a_token_signed_by_another_key_with_a_known_kid_is_refused(nursery, gateway):
    jwks = JwksServer([{**jwk("k2"), "kid": "k1"}])  # k2's key published under id k1
    _, port, _ = await setup(nursery, gateway, jwks)
    reply = await call(port, "/mcp", bearer(token(RESOURCE, kid="k1")))
    assert reply.status == 401 and params(reply)["error_description"] == "invalid signature"


async def test_an_unknown_key_id_refetches_the_jwks_once(nursery, gateway):
    _, port, jwks = await setup(nursery, gateway)
    assert (await call(port, "/mcp", bearer(token(RESOURCE)))).status == 200
    jwks.keys.append(jwk("k2"))  # the authorization server rotates in a new key
    await trio.sleep(1.1)  # past the refetch bound of the start-up fetch
    reply = await call(port, "/mcp", bearer(token(RESOURCE, kid="k2")))
    assert reply.status == 200, reply.body
    assert jwks.fetches == 2


async def test_made_up_key_ids_cost_at_most_one_fetch_a_second(nursery, gateway):
    _, port, jwks = await setup(nursery, gateway)
    await trio.sleep(1.1)
    for i in range(20):
        reply = await call(port, "/mcp", bearer(token(RESOURCE, kid="k1", headers={"kid": f"nope-{i}"})))
        assert reply.status == 401
        assert "signing key is not among" in params(reply)["error_description"]
    assert jwks.fetches <= 3  # start-up, and at most one per second of the loop


async def test_an_unreachable_jwks_answers_503_not_the_tokens_fault_until_it_answers(nursery, gateway):
    """A client told its token is invalid (401 invalid_token) would throw a good one away and authorize again, to
    the same end: the keys that cannot be loaded are the gateway's trouble, a 503 (a governance review)."""
    jwks = JwksServer()
    jwks.status = 503
    _, port, _ = await setup(nursery, gateway, jwks)
    refused = await call(port, "/mcp", bearer(token(RESOURCE)))
    assert refused.status == 503 and refused.header("www-authenticate") is None
    assert "could not be loaded" in refused.json()["message"]
    jwks.status = 200
    await trio.sleep(1.1)
    assert (await call(port, "/mcp", bearer(token(RESOURCE)))).status == 200


CONSUMERS = [{"username": "alice", "custom_id": "u-alice", "acls": [{"group": "admins"}]}, {"username": "bob"}]


async def test_consumer_claim_names_the_consumer_by_custom_id_or_username(nursery, gateway):
    jwks = JwksServer()
    await nursery.start(jwks.serve)
    _, port = await start(nursery, gateway, ROUTES, consumers=CONSUMERS, plugins=[
        oauth_plugin(RESOURCE, jwks.url, consumer_claim=["sub"])])
    alice = upstream(await call(port, "/mcp", bearer(token(RESOURCE, sub="u-alice"))))
    assert alice["x-consumer-username"] == "alice" and alice["x-consumer-id"] == consumer_id("alice")
    assert upstream(await call(port, "/mcp", bearer(token(RESOURCE, sub="bob"))))["x-consumer-username"] == "bob"
    nobody = await call(port, "/mcp", bearer(token(RESOURCE, sub="mallory")))
    assert nobody.status == 403


async def test_consumer_optional_lets_an_unmapped_token_through_without_a_consumer(nursery, gateway):
    jwks = JwksServer()
    await nursery.start(jwks.serve)
    _, port = await start(nursery, gateway, ROUTES, consumers=CONSUMERS, plugins=[
        oauth_plugin(RESOURCE, jwks.url, consumer_claim=["sub"], consumer_optional=True)])
    seen = upstream(await call(port, "/mcp", bearer(token(RESOURCE, sub="mallory"))))
    assert "x-consumer-id" not in seen


async def test_groups_from_the_token_feed_the_acl_plugin(nursery, gateway):
    jwks = JwksServer()
    await nursery.start(jwks.serve)
    _, port = await start(nursery, gateway, ROUTES, plugins=[
        oauth_plugin(RESOURCE, jwks.url, consumer_groups_claim=["realm_access", "roles"]),
        {"name": "acl", "config": {"allow": ["mcp-users"]}}])
    ok = await call(port, "/mcp", bearer(token(RESOURCE, realm_access={"roles": ["mcp-users", "x"]})))
    assert upstream(ok)["x-consumer-groups"] == "mcp-users, x"
    other = await call(port, "/mcp", bearer(token(RESOURCE, realm_access={"roles": ["x"]})))
    assert other.status == 403
    none = await call(port, "/mcp", bearer(token(RESOURCE)))
    assert none.status == 403  # consumer_groups_optional is off: a token without groups is refused


async def test_claims_are_copied_into_upstream_headers_and_client_copies_dropped(nursery, gateway):
    _, port, _ = await setup(nursery, gateway, claim_to_header=[{"claim": "sub", "header": "X-User-Id"},
                                                                {"claim": "scope", "header": "X-Scope"}])
    reply = await call(port, "/mcp", [*bearer(token(RESOURCE, sub="user-7", scope="a b")), ("x-user-id", "admin")])
    seen = upstream(reply)
    assert seen["x-user-id"] == "user-7" and seen["x-scope"] == "a b"


async def test_rate_limiting_by_consumer_counts_per_token_subject(nursery, gateway):
    jwks = JwksServer()
    await nursery.start(jwks.serve)
    _, port = await start(nursery, gateway, ROUTES, plugins=[
        oauth_plugin(RESOURCE, jwks.url), {"name": "rate-limiting", "config": {"day": 1, "limit_by": "consumer"}}])
    assert (await call(port, "/mcp", bearer(token(RESOURCE, sub="a")))).status == 200
    assert (await call(port, "/mcp", bearer(token(RESOURCE, sub="a", jti="2")))).status == 429
    assert (await call(port, "/mcp", bearer(token(RESOURCE, sub="b")))).status == 200


async def test_a_cors_preflight_passes_without_a_token(nursery, gateway):
    _, port, _ = await setup(nursery, gateway)
    reply = await call(port, "/mcp", [("access-control-request-method", "POST"), ("origin", "http://app.test")],
                       method="OPTIONS")
    assert reply.status == 200  # the upstream answered it
