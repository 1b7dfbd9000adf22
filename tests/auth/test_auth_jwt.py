"""Kong's jwt plugin through the in-process gateway: every answer of kong/plugins/jwt (statuses, bodies,
WWW-Authenticate) and what reaches the upstream, with tokens made by PyJWT for every algorithm Kong takes."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest
import trio
from auth_helpers import (
    ALGORITHMS,
    call,
    consumer_id,
    http_codec,  # noqa: F401 - the fixture: one codec
    jwt_secret,
    make_token,
    message,
    sign_raw,
    start,
    upstream,
)

import gateway.policies.jwt.handler as jwt_handler
from gateway.config import load_config
from gateway.http.net import bind_listener
from gateway.worker import serve_worker

OTHER_SECRET = "another-secret-long-enough-for-hs512-which-wants-64-bytes-of-it!"


def consumers(*extra: dict) -> list[dict]:
    """alice (HS256 key 'alice-key'), bob (HS256 key 'bob-key', another secret), the anonymous 'no-body'."""
    return [
        {"username": "alice", "custom_id": "A-1", "jwt_secrets": [jwt_secret("alice-key")]},
        {"username": "bob", "jwt_secrets": [jwt_secret("bob-key", secret=OTHER_SECRET)]},
        {"username": "no-body"},
        *extra,
    ]


async def jwt_gateway(nursery, gateway, config: dict | None = None, extra: list[dict] | None = None,
                      routes: list[dict] | None = None):  # noqa: ANN201
    plugin = {"name": "jwt", "config": config or {}}
    return await start(nursery, gateway, routes or [{"paths": ["/"], "plugins": [plugin]}],
                       consumers=consumers(*(extra or [])))


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


# --- refusals ------------------------------------------------------------------------------------------------------


async def test_no_token_is_401_unauthorized_with_a_bare_bearer_challenge(nursery, gateway):
    _, port = await jwt_gateway(nursery, gateway)
    reply = await call(port)
    assert reply.status == 401
    assert reply.body == b'{"message":"Unauthorized"}'
    assert reply.header("www-authenticate") == "Bearer"
    assert reply.header("content-type") == "application/json; charset=utf-8"


@pytest.mark.parametrize(("claims", "expected"), [
    ({}, "No mandatory 'iss' in claims"),
    ({"iss": ""}, "Invalid 'iss' in claims"),
    ({"iss": "123456789"}, "No credentials found for given 'iss'"),
    ({"iss": 42}, "No credentials found for given 'iss'"),
    ({"iss": ["alice-key"]}, "No credentials found for given 'iss'"),
], ids=["missing", "empty", "unknown", "number", "list"])
async def test_the_key_claim_must_name_a_credential(nursery, gateway, claims, expected):
    _, port = await jwt_gateway(nursery, gateway)
    reply = await call(port, headers=bearer(sign_raw(json.dumps(claims).encode())))
    assert reply.status == 401
    assert message(reply) == {"message": expected}
    assert reply.header("www-authenticate") == 'Bearer error="invalid_token"'


async def test_a_token_signed_with_another_secret_is_invalid_signature(nursery, gateway):
    _, port = await jwt_gateway(nursery, gateway)
    reply = await call(port, headers=bearer(make_token("alice-key", secret=OTHER_SECRET)))
    assert reply.status == 401
    assert message(reply) == {"message": "Invalid signature"}
    assert reply.header("www-authenticate") == 'Bearer error="invalid_token"'


async def test_a_token_naming_one_consumer_signed_by_another_is_refused(nursery, gateway):
    _, port = await jwt_gateway(nursery, gateway)
    forged = make_token("alice-key", secret=OTHER_SECRET)  # bob's secret, alice's key
    reply = await call(port, headers=bearer(forged))
    assert (reply.status, message(reply)) == (401, {"message": "Invalid signature"})


async def test_an_algorithm_other_than_the_credentials_is_refused(nursery, gateway):
    _, port = await jwt_gateway(nursery, gateway)
    token = make_token("alice-key", alg="HS512")  # the credential says HS256
    reply = await call(port, headers=bearer(token))
    assert (reply.status, message(reply)) == (401, {"message": "Invalid algorithm"})


async def test_a_header_naming_rs256_on_an_hs256_signed_token_is_refused(nursery, gateway):
    """Kong's spec: the header's alg is what is compared (here it lies about the signature's algorithm)."""
    _, port = await jwt_gateway(nursery, gateway)
    good = make_token("alice-key")
    head = base64.urlsafe_b64encode(json.dumps({"typ": "JWT", "alg": "RS256"}).encode()).rstrip(b"=").decode()
    reply = await call(port, headers=bearer(head + good[good.index("."):]))
    assert (reply.status, message(reply)) == (401, {"message": "Invalid algorithm"})


def unsigned(claims: dict, alg: str = "none") -> str:
    seg = [base64.urlsafe_b64encode(json.dumps(x).encode()).rstrip(b"=").decode()
           for x in ({"typ": "JWT", "alg": alg}, claims)]
    return ".".join(seg) + "."


@pytest.mark.parametrize("alg", ["none", "None", "HS1", ""])
async def test_alg_none_and_unknown_algorithms_are_bad_tokens(nursery, gateway, alg):
    _, port = await jwt_gateway(nursery, gateway)
    reply = await call(port, headers=bearer(unsigned({"iss": "alice-key"}, alg)))
    assert (reply.status, message(reply)) == (401, {"message": "Bad token; invalid alg"})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


GOOD_HEAD = b64(b'{"alg":"HS256","typ":"JWT"}')


@pytest.mark.parametrize(("token", "expected"), [
    ("garbage", "Bad token; invalid JSON"),
    ("a.b.c", "Bad token; invalid JSON"),
    (f"{GOOD_HEAD}.{b64(b'not json')}.c2ln", "Bad token; invalid JSON"),
    (f"{b64(b'[1]')}.{b64(b'{}')}.c2ln", "Bad token; invalid alg"),  # Kong: a table without alg
    (f"{GOOD_HEAD}.{b64(b'[1, 2]')}.c2ln", "No mandatory 'iss' in claims"),  # Kong: a table without claims
    (f"{GOOD_HEAD}.{b64(b'5')}.c2ln", "Bad token; invalid claims"),
    (f"{GOOD_HEAD}.{b64(b'{}')}.!!!", "Bad token; invalid signature"),
    (f"{GOOD_HEAD}.%%%.c2ln", "Bad token; invalid JSON"),
], ids=["one-segment", "not-base64", "claims-not-json", "header-array", "claims-array", "claims-number",
        "signature-not-base64", "claims-not-base64"])
async def test_malformed_tokens_are_bad_tokens(nursery, gateway, token, expected):
    _, port = await jwt_gateway(nursery, gateway)
    reply = await call(port, headers=bearer(token))
    assert (reply.status, message(reply)) == (401, {"message": expected})
    assert reply.header("www-authenticate") == 'Bearer error="invalid_token"'


async def test_a_token_in_the_query_and_another_in_the_header_is_multiple_tokens(nursery, gateway):
    _, port = await jwt_gateway(nursery, gateway)
    reply = await call(port, f"/?jwt={make_token('alice-key')}", headers=bearer("invalid.jwt.token"))
    assert (reply.status, message(reply)) == (401, {"message": "Multiple tokens provided"})
    assert reply.header("www-authenticate") == 'Bearer error="invalid_token"'


async def test_the_same_token_twice_is_one_token(nursery, gateway):
    _, port = await jwt_gateway(nursery, gateway)
    token = make_token("alice-key")
    reply = await call(port, f"/?jwt={token}&jwt={token}", headers=bearer(token))
    assert reply.status == 200


async def test_a_bare_query_argument_is_an_unrecognizable_token(nursery, gateway):
    _, port = await jwt_gateway(nursery, gateway)
    reply = await call(port, "/?jwt")
    assert (reply.status, message(reply)) == (401, {"message": "Unrecognizable token"})


async def test_options_is_authenticated_unless_run_on_preflight_is_false(nursery, gateway):
    _, port = await jwt_gateway(nursery, gateway, routes=[
        {"paths": ["/on"], "plugins": [{"name": "jwt"}]},
        {"paths": ["/off"], "plugins": [{"name": "jwt", "config": {"run_on_preflight": False}}]}])
    on = await call(port, "/on", method="OPTIONS")
    assert (on.status, on.body, on.header("www-authenticate")) == (401, b'{"message":"Unauthorized"}', "Bearer")
    off = await call(port, "/off", method="OPTIONS")
    assert off.status == 200


async def test_maximum_expiration_refuses_tokens_living_longer(nursery, gateway):
    _, port = await jwt_gateway(nursery, gateway, {"claims_to_verify": ["nbf", "exp"], "maximum_expiration": 300})
    now = int(time.time())
    long_lived = make_token("alice-key", exp=now + 3600, nbf=now - 30)
    reply = await call(port, f"/?jwt={long_lived}")
    assert reply.status == 401
    assert reply.body == b'{"exp":"exceeds maximum allowed expiration"}'
    assert reply.header("www-authenticate") == 'Bearer error="invalid_token"'
    short = make_token("alice-key", exp=now + 270, nbf=now - 30)
    assert (await call(port, f"/?jwt={short}")).status == 200


# --- claims_to_verify ----------------------------------------------------------------------------------------------


async def test_claims_to_verify_must_be_present_and_numbers(nursery, gateway):
    _, port = await jwt_gateway(nursery, gateway, {"claims_to_verify": ["nbf", "exp"]})
    reply = await call(port, f"/?jwt={make_token('alice-key')}")
    assert (reply.status, message(reply)) == (401, {"nbf": "must be a number", "exp": "must be a number"})
    wrong_types = make_token("alice-key", exp="tomorrow", nbf=True)
    reply = await call(port, f"/?jwt={wrong_types}")
    assert (reply.status, message(reply)) == (401, {"nbf": "must be a number", "exp": "must be a number"})


async def test_an_expired_token_is_refused(nursery, gateway):
    _, port = await jwt_gateway(nursery, gateway, {"claims_to_verify": ["nbf", "exp"]})
    now = int(time.time())
    reply = await call(port, f"/?jwt={make_token('alice-key', exp=now - 10, nbf=now - 10)}")
    assert (reply.status, reply.body) == (401, b'{"exp":"token expired"}')


async def test_a_token_not_valid_yet_is_refused(nursery, gateway):
    _, port = await jwt_gateway(nursery, gateway, {"claims_to_verify": ["nbf", "exp"]})
    now = int(time.time())
    reply = await call(port, f"/?jwt={make_token('alice-key', exp=now + 10, nbf=now + 5)}")
    assert (reply.status, reply.body) == (401, b'{"nbf":"token not valid yet"}')


async def test_exp_is_not_checked_unless_asked(nursery, gateway):
    _, port = await jwt_gateway(nursery, gateway)
    reply = await call(port, headers=bearer(make_token("alice-key", exp=int(time.time()) - 100)))
    assert reply.status == 200


async def test_a_cached_token_is_refused_once_it_expires(nursery, gateway, monkeypatch):
    class Clock:
        now = time.time()

        def time(self) -> float:
            return self.now

    clock = Clock()
    monkeypatch.setattr(jwt_handler, "time", clock)
    _, port = await jwt_gateway(nursery, gateway, {"claims_to_verify": ["exp"]})
    token = make_token("alice-key", exp=int(clock.now) + 60)
    assert (await call(port, headers=bearer(token))).status == 200
    assert (await call(port, headers=bearer(token))).status == 200  # from the cache
    clock.now += 61
    reply = await call(port, headers=bearer(token))
    assert (reply.status, reply.body) == (401, b'{"exp":"token expired"}')


# --- success -------------------------------------------------------------------------------------------------------


async def test_a_verified_token_reaches_upstream_with_kongs_consumer_headers(nursery, gateway):
    _, port = await jwt_gateway(nursery, gateway)
    token = make_token("alice-key")
    seen = upstream(await call(port, headers=bearer(token)))
    assert seen["authorization"] == f"Bearer {token}"
    assert seen["x-consumer-username"] == "alice"
    assert seen["x-consumer-custom-id"] == "A-1"
    assert seen["x-consumer-id"] == consumer_id("alice")
    assert seen["x-credential-identifier"] == "alice-key"
    assert "x-anonymous-consumer" not in seen


async def test_spoofed_consumer_headers_never_reach_upstream(nursery, gateway):
    _, port = await jwt_gateway(nursery, gateway)
    spoof = [("x-consumer-username", "admin"), ("x-consumer-id", "0"), ("x-credential-identifier", "root"),
             ("x-anonymous-consumer", "false"), ("x-consumer-groups", "admins"), ("x-consumer-custom-id", "x")]
    seen = upstream(await call(port, headers=bearer(make_token("bob-key", secret=OTHER_SECRET)) + spoof))
    assert seen["x-consumer-username"] == "bob"
    assert seen["x-credential-identifier"] == "bob-key"
    assert "x-consumer-groups" not in seen and "x-consumer-custom-id" not in seen
    assert "x-anonymous-consumer" not in seen


@pytest.mark.parametrize("alg", ALGORITHMS)
async def test_every_algorithm_family_verifies_and_identifies_the_consumer(nursery, gateway, alg):
    extra = [{"username": f"user-{alg}", "jwt_secrets": [jwt_secret(f"key-{alg}", alg)]}]
    _, port = await jwt_gateway(nursery, gateway, extra=extra)
    seen = upstream(await call(port, headers=bearer(make_token(f"key-{alg}", alg=alg))))
    assert seen["x-consumer-username"] == f"user-{alg}"
    assert seen["x-credential-identifier"] == f"key-{alg}"


@pytest.mark.parametrize("alg", ["RS256", "ES256", "PS256", "EdDSA"])
async def test_a_token_signed_by_another_private_key_is_invalid_signature(nursery, gateway, alg):
    extra = [{"username": "holder", "jwt_secrets": [jwt_secret("the-key", alg)]}]
    _, port = await jwt_gateway(nursery, gateway, extra=extra)
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    other = {"R": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
             "P": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
             "E": lambda: ec.generate_private_key(ec.SECP256R1()) if alg == "ES256" else
             ed25519.Ed25519PrivateKey.generate()}[alg[0]]()
    forged = jwt.encode({"iss": "the-key"}, other, algorithm=alg)
    reply = await call(port, headers=bearer(forged))
    assert (reply.status, message(reply)) == (401, {"message": "Invalid signature"})


async def test_an_hs256_token_signed_with_a_public_key_is_refused(nursery, gateway):
    """The classic confusion: the RS256 credential's public key used as an HMAC secret."""
    extra = [{"username": "rsa-user", "jwt_secrets": [jwt_secret("rsa-key", "RS256")]}]
    _, port = await jwt_gateway(nursery, gateway, extra=extra)
    import hmac
    from hashlib import sha256
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"iss": "rsa-key"}).encode())
    from auth_helpers import key_pair
    sig = hmac.new(key_pair("RS256")[1].encode(), f"{head}.{body}".encode(), sha256).digest()
    reply = await call(port, headers=bearer(f"{head}.{body}.{b64(sig)}"))
    assert (reply.status, message(reply)) == (401, {"message": "Invalid algorithm"})


async def test_the_key_may_be_in_the_token_header(nursery, gateway):
    _, port = await jwt_gateway(nursery, gateway, {"key_claim_name": "kid"})
    token = make_token(None, headers={"kid": "bob-key"}, secret=OTHER_SECRET)
    seen = upstream(await call(port, headers=bearer(token)))
    assert seen["x-consumer-username"] == "bob"


async def test_the_key_may_be_in_another_claim(nursery, gateway):
    _, port = await jwt_gateway(nursery, gateway, {"key_claim_name": "aud"})
    token = make_token("nobody", aud="alice-key")
    assert upstream(await call(port, headers=bearer(token)))["x-consumer-username"] == "alice"
    reply = await call(port, headers=bearer(make_token("alice-key")))
    assert (reply.status, message(reply)) == (401, {"message": "No mandatory 'aud' in claims"})


async def test_secret_is_base64_signs_with_the_decoded_secret(nursery, gateway):
    raw = b"\x00\x01binary secret bytes of 32 length!"
    extra = [{"username": "b64", "jwt_secrets": [{"key": "b64-key", "secret": base64.b64encode(raw).decode()}]}]
    _, port = await jwt_gateway(nursery, gateway, {"secret_is_base64": True}, extra=extra)
    import jwt
    seen = upstream(await call(port, headers=bearer(jwt.encode({"iss": "b64-key"}, raw, algorithm="HS256"))))
    assert seen["x-consumer-username"] == "b64"


async def test_secret_is_base64_with_a_secret_that_is_not_base64_is_invalid_key(nursery, gateway):
    secret = "this secret has spaces, so it is not base64 at all (nor base64url)"
    extra = [{"username": "plain", "jwt_secrets": [{"key": "plain-key", "secret": secret}]}]
    _, port = await jwt_gateway(nursery, gateway, {"secret_is_base64": True}, extra=extra)
    reply = await call(port, headers=bearer(make_token("plain-key", secret=secret)))
    assert (reply.status, message(reply)) == (401, {"message": "Invalid key/secret"})


async def test_tokens_in_cookies_and_the_realm(nursery, gateway):
    _, port = await jwt_gateway(nursery, gateway, {"cookie_names": ["silly", "crumble"], "realm": "test-jwt"})
    token = make_token("alice-key")
    for cookie in (f"crumble={token}; path=/;domain=.jwt9.test", f"silly={token}; path=/;domain=.jwt9.test"):
        assert (await call(port, headers=[("cookie", cookie)])).status == 200
    reply = await call(port, headers=[("cookie", f"silly={make_token('incorrect-issuer')}")])
    assert (reply.status, message(reply)) == (401, {"message": "No credentials found for given 'iss'"})
    assert reply.header("www-authenticate") == 'Bearer realm="test-jwt", error="invalid_token"'
    reply = await call(port, headers=[("cookie", f"silly=no-way-this-works{token}")])
    assert (reply.status, reply.body) == (401, b'{"message":"Bad token; invalid JSON"}')
    reply = await call(port)
    assert (reply.status, reply.header("www-authenticate")) == (401, 'Bearer realm="test-jwt"')


async def test_custom_header_names_and_the_first_of_duplicated_headers(nursery, gateway):
    _, port = await jwt_gateway(nursery, gateway, {"header_names": ["CustomAuthorization"]})
    token = make_token("alice-key")
    assert (await call(port, headers=[("CustomAuthorization", f"Bearer {token}")])).status == 200
    both = [("customauthorization", f"Bearer {token}"), ("customauthorization", "Bearer other-token")]
    assert (await call(port, headers=both)).status == 200
    swapped = [("customauthorization", "Bearer other-token"), ("customauthorization", f"Bearer {token}")]
    reply = await call(port, headers=swapped)
    assert (reply.status, message(reply)) == (401, {"message": "Bad token; invalid JSON"})


async def test_duplicate_authorization_headers_are_nginxs_400(nursery, gateway):
    """nginx takes Authorization once ("client sent duplicate header line"): Kong never sees such a request."""
    _, port = await jwt_gateway(nursery, gateway)
    token = make_token("alice-key")
    assert (await call(port, headers=bearer(token) + bearer("x.y.z"))).status == 400


async def test_custom_uri_param_names(nursery, gateway):
    _, port = await jwt_gateway(nursery, gateway, {"uri_param_names": ["token", "jwt"]})
    token = make_token("alice-key")
    assert (await call(port, f"/?token={token}")).status == 200
    assert (await call(port, f"/?jwt={token}")).status == 200


async def test_a_non_bearer_authorization_header_is_no_token(nursery, gateway):
    _, port = await jwt_gateway(nursery, gateway)
    reply = await call(port, headers=[("authorization", f"Token {make_token('alice-key')}")])
    assert (reply.status, reply.header("www-authenticate")) == (401, "Bearer")


# --- anonymous -----------------------------------------------------------------------------------------------------


async def test_anonymous_with_right_credentials_is_the_consumer(nursery, gateway):
    _, port = await jwt_gateway(nursery, gateway, {"anonymous": consumer_id("no-body")})
    seen = upstream(await call(port, headers=bearer(make_token("alice-key"))))
    assert seen["x-consumer-username"] == "alice"
    assert seen["x-credential-identifier"] == "alice-key"
    assert "x-anonymous-consumer" not in seen


@pytest.mark.parametrize("ref", ["id", "username"])
async def test_anonymous_with_wrong_or_no_credentials_is_the_anonymous_consumer(nursery, gateway, ref):
    anonymous = consumer_id("no-body") if ref == "id" else "no-body"
    _, port = await jwt_gateway(nursery, gateway, {"anonymous": anonymous})
    for headers in ([], bearer(make_token("alice-key", secret=OTHER_SECRET)), bearer("garbage")):
        seen = upstream(await call(port, headers=headers))
        assert seen["x-anonymous-consumer"] == "true"
        assert seen["x-consumer-username"] == "no-body"
        assert seen["x-consumer-id"] == consumer_id("no-body")
        assert "x-credential-identifier" not in seen


# --- the reference guide's configs/kong.yml ------------------------------------------------------------------------


async def _serve_kong_yml(listener, task_status=trio.TASK_STATUS_IGNORED) -> None:  # noqa: ANN001
    config = load_config(Path(__file__).resolve().parents[2] / "configs" / "kong.yml")
    try:
        await serve_worker(config, [listener], ready=task_status.started)
    finally:
        listener.close()


async def test_the_reference_kong_yml_refuses_requests_without_a_valid_token(nursery):
    """The guide's kong.yml puts jwt on its service and names no consumer: every request gets Kong's 401."""
    listener = bind_listener("127.0.0.1", 0, reuse_port=False)
    port = listener.getsockname()[1]
    await nursery.start(_serve_kong_yml, listener)
    body = b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}'
    reply = await call(port, "/v1", method="POST", body=body, headers=[("content-type", "application/json")])
    assert (reply.status, reply.body, reply.header("www-authenticate")) == (
        401, b'{"message":"Unauthorized"}', "Bearer")
    reply = await call(port, "/v1?jwt=garbage")
    assert (reply.status, message(reply)) == (401, {"message": "Bad token; invalid JSON"})
    reply = await call(port, "/v1", headers=bearer(make_token("anyone")))
    assert (reply.status, message(reply)) == (401, {"message": "No credentials found for given 'iss'"})
