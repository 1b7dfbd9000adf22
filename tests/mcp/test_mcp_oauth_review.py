"""ai-mcp-oauth2 under adversarial review: which requests count as a CORS preflight (and what of them reaches the
upstream, its URL included), a token sent in more than one way, keys sharing a kid, a JWKS refetch that hangs, and
time claims that are no times. In-process gateway and helper servers on 127.0.0.1 in the test's nursery, as
test_mcp_oauth.py."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import trio
from backends import Reply
from oauth_helpers import JwksServer, call, jwk, oauth_plugin, start, token

RESOURCE = "http://gateway.test/mcp"
ROUTES = [{"name": "mcp", "paths": ["/mcp"], "strip_path": False}]
TOOL_CALL = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete_everything","arguments":{}}}'
PREFLIGHT = [("access-control-request-method", "POST"), ("origin", "http://app.test")]


@pytest.fixture
def http_codec() -> str:
    return "llhttp"


async def setup(nursery: trio.Nursery, gateway: Any, jwks: JwksServer | None = None,
                **config: Any) -> tuple[int, JwksServer]:
    jwks = jwks or JwksServer()
    await nursery.start(jwks.serve)
    _, port = await start(nursery, gateway, ROUTES, plugins=[oauth_plugin(RESOURCE, jwks.url, **config)])
    return port, jwks


def bearer(tok: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {tok}")]


def params(reply: Reply) -> dict[str, str]:
    value = reply.header("www-authenticate") or ""
    return dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', value))


def forwarded_headers(reply: Reply) -> dict[str, str]:
    """The headers the echo backend received ({} when the gateway answered itself)."""
    if reply.status != 200:
        return {}
    return {name: value for name, value in reply.json()["headers"]}


# ---- the CORS preflight exemption ------------------------------------------------------------------------------


async def test_an_options_request_with_a_body_is_no_preflight_and_needs_a_token(nursery, gateway):
    """MCP authorization spec (2025-06-18, Access Token Usage): "authorization MUST be included in every HTTP
    request from client to server". A Fetch-standard preflight has no body; an OPTIONS request with
    Access-Control-Request-Method and a JSON-RPC tools/call body is an MCP message: 401 like any request."""
    port, _ = await setup(nursery, gateway)
    reply = await call(port, "/mcp", [*PREFLIGHT, ("content-type", "application/json")], method="OPTIONS",
                       body=TOOL_CALL)
    assert reply.status == 401, (reply.status, reply.body[:300])
    assert json.loads(reply.body)["message"] == "Unauthorized"


async def test_a_preflight_does_not_forward_the_authorization_header(nursery, gateway):
    """MCP authorization spec (2025-06-18, Token Passthrough): passing the client's token on is forbidden; README:
    the token is not forwarded upstream unless passthrough_credentials. A preflight's Authorization header, never
    verified, is removed before the request goes on."""
    port, _ = await setup(nursery, gateway)
    reply = await call(port, "/mcp", [*PREFLIGHT, *bearer(token(RESOURCE))], method="OPTIONS")
    assert reply.status == 200, reply.status
    assert "authorization" not in forwarded_headers(reply), "the bearer token reached the upstream"


async def test_a_preflight_does_not_forward_client_copies_of_claim_headers(nursery, gateway):
    """README (claim_to_header): "copies sent by the client are removed". The upstream trusts X-User-Id to come
    from a verified token, so a client's own X-User-Id: admin on a preflight is removed too."""
    port, _ = await setup(nursery, gateway, claim_to_header=[{"claim": "sub", "header": "X-User-Id"}])
    reply = await call(port, "/mcp", [*PREFLIGHT, ("x-user-id", "admin")], method="OPTIONS")
    assert reply.status == 200, reply.status
    assert "x-user-id" not in forwarded_headers(reply), "a client-sent claim header reached the upstream"


async def test_a_preflight_with_an_access_token_in_its_query_is_no_exemption(nursery, gateway):
    """MCP authorization spec (2025-06-18 and 2025-11-25, Access Token Usage): "Access tokens MUST NOT be included
    in the URI query string"; Token Passthrough: the resource server does not pass a client's token on. RFC 6750
    section 2.3 names `access_token` in the query as a token. A preflight carrying one is checked like any request
    (no Authorization header: 401), so the URL with the token never reaches the upstream."""
    port, _ = await setup(nursery, gateway)
    tok = token(RESOURCE)
    reply = await call(port, f"/mcp?access_token={tok}", PREFLIGHT, method="OPTIONS")
    assert reply.status == 401, (reply.status, reply.body[:200])
    assert tok not in reply.body.decode(errors="replace"), "the bearer token reached the upstream in the URL"


# ---- how the token travels --------------------------------------------------------------------------------------


async def test_a_token_in_the_query_string_beside_the_header_is_refused_with_400(nursery, gateway):
    """RFC 6750 section 3.1, invalid_request: a request that "uses more than one method for including an access
    token" SHOULD get 400; MCP authorization spec (2025-06-18, Access Token Usage): "Access tokens MUST NOT be
    included in the URI query string". The URL carrying the token never reaches the upstream."""
    port, _ = await setup(nursery, gateway)
    tok = token(RESOURCE)
    reply = await call(port, f"/mcp?access_token={tok}", bearer(tok))
    assert reply.status == 400, reply.status
    assert params(reply).get("error") == "invalid_request"
    assert "Authorization header only" in json.loads(reply.body)["message"]
    assert tok not in reply.body.decode(errors="replace")


async def test_a_token_in_a_form_body_beside_the_header_is_refused_with_400(nursery, gateway):
    """RFC 6750 section 2.2 (form-encoded body parameter) and 3.1: a token sent both in the Authorization header
    and as a form body's access_token is more than one method: 400 invalid_request, the body not forwarded."""
    port, _ = await setup(nursery, gateway)
    tok = token(RESOURCE)
    reply = await call(port, "/mcp", [*bearer(tok), ("content-type", "application/x-www-form-urlencoded")],
                       method="POST", body=b"a=1&access_token=" + tok.encode())
    assert reply.status == 400, reply.status
    assert params(reply).get("error") == "invalid_request"


# ---- JWKS key selection -----------------------------------------------------------------------------------------


async def test_a_kid_shared_by_an_rsa_and_an_ec_key_still_verifies_the_rsa_token(nursery, gateway):
    """RFC 7517 section 4.5: keys of different "kty" may share a "kid" as equivalent alternatives. With an RSA and
    an EC key under kid k1, an RS256 token with kid k1 signed by the RSA key passes (the alg picks the key)."""
    jwks = JwksServer([jwk("k1"), {**jwk("ec1", "ES256"), "kid": "k1"}])
    port, _ = await setup(nursery, gateway, jwks)
    reply = await call(port, "/mcp", bearer(token(RESOURCE, kid="k1")))
    assert reply.status == 200, (reply.status, params(reply))


# ---- JWKS fetch failures ----------------------------------------------------------------------------------------


class HangingJwks(JwksServer):
    """Answers the first fetch (the start-up one); every later fetch hangs (a stuck authorization server)."""

    async def handle_conn(self, stream: trio.SocketStream) -> None:
        if self.fetches >= 1:
            self.fetches += 1
            await trio.sleep(30)  # cancelled with the test's nursery
            return
        await super().handle_conn(stream)


async def test_a_new_key_id_while_the_jwks_refetch_hangs_gets_503(nursery, gateway):
    """README: while the keys cannot be loaded, a token whose key is not in hand gets 503, not a 401
    invalid_token (RFC 6750 3.1: invalid_token is the token's own fault) that would make an MCP client throw a good
    token away. A refetch that does not end within `timeout` leaves the key's existence unknown: 503."""
    jwks = HangingJwks()
    port, _ = await setup(nursery, gateway, jwks, timeout=500)
    await trio.sleep(1.1)  # past the refetch bound of the start-up fetch
    with trio.fail_after(5):
        reply = await call(port, "/mcp", bearer(token(RESOURCE, kid="k2")))
    assert jwks.fetches == 2  # the refetch was asked for (and hangs)
    assert reply.status == 503, (reply.status, params(reply))


# ---- the time claims --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("claim", "value"), [("exp", float("nan")), ("exp", float("inf")), ("nbf", float("nan")),
                                              ("nbf", float("-inf")), ("iat", float("nan"))])
async def test_a_time_claim_that_is_not_a_finite_number_is_malformed(nursery, gateway, claim, value):
    """RFC 7519 sections 2 and 4.1.4-4.1.6: exp, nbf and iat are NumericDates, seconds since the epoch. A NaN or
    infinite one (JSON's NaN / Infinity, or 1e400) is no time: compared with the clock it would hold forever, so
    the signed token is refused, 401 invalid_token, as malformed claims."""
    port, _ = await setup(nursery, gateway)
    reply = await call(port, "/mcp", bearer(token(RESOURCE, **{claim: value})))
    assert reply.status == 401, reply.status
    assert params(reply).get("error") == "invalid_token"
    assert params(reply)["error_description"].startswith(f"malformed claims: {claim}")
