"""Kong 3.9.3 spec audit (jwt, session, hmac-auth, ldap-auth): spec `it` blocks not covered elsewhere."""

from __future__ import annotations

import jwt as pyjwt
from auth_helpers import (
    call,
    http_codec,  # noqa: F401 - the fixture: one codec
    jwt_secret,
    make_token,
    start,
    upstream,
)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed448

HS = "a-shared-secret-long-enough-for-hs512-which-wants-64-bytes-of-it"


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


# --- jwt (spec/03-plugins/16-jwt/03-access_spec.lua) ----------------------------------------------------------------


async def test_jwt_verifies_an_eddsa_token_signed_with_an_ed448_key(nursery, gateway):
    """16-jwt/03-access_spec.lua EdDSA "verifies JWT with Ed448 key": an EdDSA credential holding an Ed448 public
    key verifies a token its private key signed; X-Credential-Identifier is the key, no X-Credential-Username."""
    private = ed448.Ed448PrivateKey.generate()
    public_pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    consumers = [{"username": "ed448-user",
                  "jwt_secrets": [{"key": "ed448-key", "algorithm": "EdDSA", "rsa_public_key": public_pem}]}]
    _, port = await start(nursery, gateway, [{"paths": ["/"], "plugins": [{"name": "jwt"}]}], consumers=consumers)
    token = pyjwt.encode({"iss": "ed448-key"}, private, algorithm="EdDSA")
    seen = upstream(await call(port, headers=bearer(token)))
    assert seen["x-credential-identifier"] == "ed448-key"
    assert seen["x-consumer-username"] == "ed448-user"
    assert "x-credential-username" not in seen


async def test_jwt_accepts_a_lower_case_or_missing_typ(nursery, gateway):
    """16-jwt/01-jwt_parser_spec.lua "accepts a valid encoding request with lowercase TYP" and "... with missing
    TYP": jwt_parser reads only `alg` from the header; typ "jwt" or no typ at all verifies through the gateway."""
    consumers = [{"username": "alice", "jwt_secrets": [jwt_secret("alice-key")]}]
    _, port = await start(nursery, gateway, [{"paths": ["/"], "plugins": [{"name": "jwt"}]}], consumers=consumers)
    for headers in ({"typ": "jwt"}, {"typ": None}):
        token = make_token("alice-key", headers=headers)
        if headers["typ"] is None:  # PyJWT writes typ JWT by default: a header without typ, signed by hand
            token = pyjwt.api_jws.PyJWS().encode(b'{"iss":"alice-key"}', HS, algorithm="HS256",
                                                 headers={"typ": None})
        assert upstream(await call(port, headers=bearer(token)))["x-credential-identifier"] == "alice-key"


# --- session (spec/03-plugins/30-session/03-session_spec.lua: logout) ---------------------------------------------

SESSION_SECRET = "a-long-random-session-secret-for-the-tests"
SESSION_CONSUMERS = [{"username": "coop", "keyauth_credentials": [{"key": "kong"}]}, {"username": "anon"}]
EXPIRED = "Expires=Thu, 01 Jan 1970 00:00:01 GMT; Max-Age=0"


async def session_port(nursery, gateway, **config) -> int:  # noqa: ANN001,ANN003
    plugins = [{"name": "session", "config": {"secret": SESSION_SECRET, **config}},
               {"name": "key-auth", "config": {"anonymous": "anon"}}]
    _, port = await start(nursery, gateway, [{"paths": ["/"], "plugins": plugins}], consumers=SESSION_CONSUMERS)
    return port


def set_cookies(reply) -> list[str]:  # noqa: ANN001
    return [v for k, v in reply.headers if k == "set-cookie"]


async def session_cookie(port: int) -> str:
    reply = await call(port, headers=[("apikey", "kong")])
    assert reply.status == 200, reply.body
    return "; ".join(line.split(";", 1)[0] for line in set_cookies(reply))


FORM = ("content-type", "application/x-www-form-urlencoded")


async def test_session_logs_out_with_a_delete_body_arg_when_read_body_for_logout(nursery, gateway):
    """30-session/03-session_spec.lua "logs out with DELETE request with body": logout_methods [DELETE],
    read_body_for_logout, logout_post_arg in a DELETE body: 200 with the cookie expired (session.lua logout)."""
    port = await session_port(nursery, gateway, logout_methods=["DELETE"], read_body_for_logout=True)
    reply = await call(port, headers=[("cookie", await session_cookie(port)), FORM], method="DELETE",
                       body=b"session_logout=true")
    assert (reply.status, reply.body) == (200, b"")
    assert set_cookies(reply)[0].endswith(EXPIRED)


async def test_session_does_not_log_out_with_a_delete_body_arg_by_default(nursery, gateway):
    """30-session/03-session_spec.lua "doesn't log out with DELETE request with body (by default)" and
    "(read_body_for_logout=false)": the body is not read; the session authenticates the request."""
    for extra in ({}, {"read_body_for_logout": False}):
        port = await session_port(nursery, gateway, logout_methods=["DELETE"], **extra)
        reply = await call(port, headers=[("cookie", await session_cookie(port)), FORM], method="DELETE",
                           body=b"session_logout=true")
        assert reply.status == 200 and reply.json()["method"] == "DELETE"
        assert ["x-consumer-username", "coop"] in reply.json()["headers"]


async def test_session_does_not_log_out_when_the_method_is_not_a_logout_method(nursery, gateway):
    """30-session/03-session_spec.lua "does not logout with GET requests when method is not allowed" and "... POST
    requests ...": logout_methods [DELETE]; a GET with logout_query_arg and a POST with logout_post_arg go on."""
    port = await session_port(nursery, gateway, logout_methods=["DELETE"], read_body_for_logout=True)
    cookie = await session_cookie(port)
    reply = await call(port, "/?session_logout=true", headers=[("cookie", cookie)])
    assert ["x-consumer-username", "coop"] in reply.json()["headers"]
    reply = await call(port, headers=[("cookie", cookie), FORM], method="POST", body=b"session_logout=true")
    assert ["x-consumer-username", "coop"] in reply.json()["headers"]
    assert not any(c.endswith(EXPIRED) for c in set_cookies(reply))


async def test_session_logs_out_with_a_get_query_arg_when_get_is_a_logout_method(nursery, gateway):
    """30-session/03-session_spec.lua "logs out with GET request": logout_methods [GET, POST]."""
    port = await session_port(nursery, gateway, logout_methods=["GET", "POST"])
    reply = await call(port, "/?session_logout", headers=[("cookie", await session_cookie(port))])
    assert (reply.status, reply.body) == (200, b"")
    assert set_cookies(reply)[0].endswith(EXPIRED)
