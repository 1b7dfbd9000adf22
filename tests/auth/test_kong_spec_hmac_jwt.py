"""hmac-auth and jwt against Kong's own source and spec tests (kong/plugins/jwt/jwt_parser.lua, handler.lua,
schema.lua; spec/03-plugins/16-jwt): where the gateway used to differ from Kong."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import msgspec
import pytest
from auth_helpers import (
    HS_SECRET,
    call,
    http_codec,  # noqa: F401 - the fixture: one codec
    jwt_secret,
    make_token,
    message,
    start,
    upstream,
)

from gateway.config import ConfigError, parse_config
from gateway.policies.jwt.schema import JwtConfig
from gateway.runtime import compile_config


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed(header: dict[str, Any], claims: dict[str, Any], secret: bytes = HS_SECRET.encode()) -> str:
    """An HS256 token over any header (PyJWT refuses to write some that Kong reads), signed properly."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


async def jwt_gateway(nursery: Any, gateway: Any, config: dict[str, Any] | None = None,
                      secrets: list[dict[str, Any]] | None = None) -> int:
    """A route with the jwt plugin; consumer alice holds `secrets` (an HS256 secret keyed 'alice-key' by default)."""
    plugin = {"name": "jwt", "config": config or {}}
    consumers = [{"username": "alice", "jwt_secrets": secrets or [jwt_secret("alice-key")]}]
    _, port = await start(nursery, gateway, [{"paths": ["/"], "plugins": [plugin]}], consumers=consumers)
    return port


# --- jwt: reading the token as jwt_parser.lua does -----------------------------------------------------------------


async def test_a_signature_with_stray_low_bits_in_its_last_character_verifies(nursery, gateway):
    """jwt_parser's base64_decode is nginx's decode_base64url, which ignores the bits past the last byte: a signature
    spelled with them set is the same signature (PyJWT's own decoder refuses it)."""
    port = await jwt_gateway(nursery, gateway)
    token = make_token("alice-key")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(token[-1])  # 43 characters for 32 bytes: the last one carries 2 unused bits
    assert last % 4 == 0
    spelled = token[:-1] + alphabet[last + 3]
    seen = upstream(await call(port, headers=bearer(spelled)))
    assert seen["x-credential-identifier"] == "alice-key"


async def test_what_follows_an_equals_sign_in_the_signature_is_ignored(nursery, gateway):
    """nginx's base64 decoder stops at the first "=": text after it is not read."""
    port = await jwt_gateway(nursery, gateway)
    seen = upstream(await call(port, headers=bearer(make_token("alice-key") + "=anything")))
    assert seen["x-credential-identifier"] == "alice-key"


async def test_a_fourth_segment_makes_the_signature_invalid_base64(nursery, gateway):
    """jwt_parser's tokenize splits at the first two dots: the signature is all the rest, dots included, which is
    not base64, so "Bad token; invalid signature"."""
    port = await jwt_gateway(nursery, gateway)
    reply = await call(port, headers=bearer(make_token("alice-key") + ".extra"))
    assert (reply.status, message(reply)) == (401, {"message": "Bad token; invalid signature"})
    assert reply.header("www-authenticate") == 'Bearer error="invalid_token"'


async def test_an_unknown_alg_is_reported_before_a_signature_that_is_not_base64(nursery, gateway):
    """decode_token checks the header's alg before the signature's decoding."""
    port = await jwt_gateway(nursery, gateway)
    head, claims = b64(b'{"alg":"none"}'), b64(b'{"iss":"alice-key"}')
    token = f"{head}.{claims}.!!!"
    reply = await call(port, headers=bearer(token))
    assert (reply.status, message(reply)) == (401, {"message": "Bad token; invalid alg"})


async def test_a_standard_alphabet_signature_is_invalid_base64(nursery, gateway):
    """decode_base64url takes "-" and "_" only: "+" or "/" in the signature is "Bad token; invalid signature"."""
    port = await jwt_gateway(nursery, gateway)
    token = next(t for t in (make_token("alice-key", n=n) for n in range(200)) if "-" in t.rsplit(".", 1)[1])
    head, _, signature = token.rpartition(".")
    reply = await call(port, headers=bearer(f"{head}.{signature.replace('-', '+')}"))
    assert (reply.status, message(reply)) == (401, {"message": "Bad token; invalid signature"})


@pytest.mark.parametrize("extra", [{"kid": 5}, {"kid": None}, {"crit": ["exp"]}, {"crit": "x"}, {"b64": False}],
                         ids=["numeric-kid", "null-kid", "unknown-crit", "malformed-crit", "b64-false"])
async def test_header_parameters_kong_does_not_read_are_ignored(nursery, gateway, extra):
    """jwt_parser reads alg from the header (and the key claim when it is not in the claims), nothing else: a token
    with other header parameters of any form (PyJWT refuses these) verifies."""
    port = await jwt_gateway(nursery, gateway)
    token = signed({"typ": "JWT", "alg": "HS256", **extra}, {"iss": "alice-key"})
    seen = upstream(await call(port, headers=bearer(token)))
    assert seen["x-credential-identifier"] == "alice-key"


# --- jwt: where tokens are looked for (handler.lua retrieve_tokens) ------------------------------------------------


async def test_jwt_reads_only_the_first_100_query_arguments(nursery, gateway):
    """retrieve_tokens reads kong.request.get_query(): at most lua_max_uri_args (100) arguments, empty names not
    counted; a token past them is not found."""
    port = await jwt_gateway(nursery, gateway)
    token = make_token("alice-key")
    padding = "&".join(f"a{i}=x" for i in range(99))
    assert (await call(port, f"/?{padding}&&=z&jwt={token}")).status == 200
    reply = await call(port, f"/?{padding}&b=y&jwt={token}")
    assert (reply.status, reply.body, reply.header("www-authenticate")) == (
        401, b'{"message":"Unauthorized"}', "Bearer")


async def test_jwt_reads_only_the_first_100_header_lines(nursery, gateway):
    """retrieve_tokens reads kong.request.get_headers(): at most lua_max_req_headers (100) lines, Host the first
    here; an Authorization header past them is not found."""
    port = await jwt_gateway(nursery, gateway)
    token = make_token("alice-key")
    assert (await call(port, headers=[*[(f"x-pad-{i}", "x") for i in range(98)], *bearer(token)])).status == 200
    reply = await call(port, headers=[*[(f"x-pad-{i}", "x") for i in range(99)], *bearer(token)])
    assert (reply.status, reply.body) == (401, b'{"message":"Unauthorized"}')


# --- jwt: secret_is_base64 -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("alphabet", ["standard", "url-safe"])
async def test_secret_is_base64_decodes_the_secret_with_the_url_safe_alphabet_only(nursery, gateway, alphabet):
    """handler.lua: jwt:base64_decode(secret) is nginx's decode_base64url: a secret written with "+" or "/" does
    not decode, and Kong answers "Invalid key/secret"."""
    raw = b"\xfb\xff\xfe" * 11  # its base64 is all "+" and "/" (or "-" and "_")
    encoded = base64.b64encode(raw) if alphabet == "standard" else base64.urlsafe_b64encode(raw)
    secrets = [{"key": "alice-key", "secret": encoded.decode()}]
    port = await jwt_gateway(nursery, gateway, {"secret_is_base64": True}, secrets)
    reply = await call(port, headers=bearer(signed({"alg": "HS256"}, {"iss": "alice-key"}, raw)))
    if alphabet == "standard":
        assert (reply.status, message(reply)) == (401, {"message": "Invalid key/secret"})
    else:
        assert upstream(reply)["x-credential-identifier"] == "alice-key"


async def test_secret_is_base64_reads_the_secret_up_to_its_first_equals_sign(nursery, gateway):
    """nginx's base64 decoder stops at the first "=", so "QUJD=rest" is the secret "ABC"."""
    port = await jwt_gateway(nursery, gateway, {"secret_is_base64": True},
                             [{"key": "alice-key", "secret": "QUJD=rest"}])
    reply = await call(port, headers=bearer(signed({"alg": "HS256"}, {"iss": "alice-key"}, b"ABC")))
    assert upstream(reply)["x-credential-identifier"] == "alice-key"


# --- jwt: maximum_expiration without claims_to_verify ---------------------------------------------------------------


async def test_maximum_expiration_without_claims_to_verify_refuses_a_token_without_exp(nursery, gateway):
    """claims_to_verify has no default (null): schema.lua's conditional check passes on null, and
    check_maximum_expiration refuses a token with no exp."""
    port = await jwt_gateway(nursery, gateway, {"maximum_expiration": 300})
    reply = await call(port, headers=bearer(make_token("alice-key")))
    assert (reply.status, reply.body) == (401, b'{"exp":"exceeds maximum allowed expiration"}')
    assert reply.header("www-authenticate") == 'Bearer error="invalid_token"'


async def test_maximum_expiration_without_claims_to_verify_refuses_a_token_living_longer(nursery, gateway):
    port = await jwt_gateway(nursery, gateway, {"maximum_expiration": 300})
    reply = await call(port, headers=bearer(make_token("alice-key", exp=int(time.time()) + 3600)))
    assert (reply.status, reply.body) == (401, b'{"exp":"exceeds maximum allowed expiration"}')


async def test_maximum_expiration_without_claims_to_verify_lets_an_expired_token_pass(nursery, gateway):
    """Without exp in claims_to_verify nothing checks that exp is in the future: only that it is not too far."""
    port = await jwt_gateway(nursery, gateway, {"maximum_expiration": 300})
    reply = await call(port, headers=bearer(make_token("alice-key", exp=int(time.time()) - 3600)))
    assert upstream(reply)["x-credential-identifier"] == "alice-key"


# --- jwt: configuration (schema.lua, 06-schema_spec.lua) ------------------------------------------------------------

SERVICE = "services: [{name: s, url: 'http://127.0.0.1:1', routes: [{name: r, paths: [/]}]}]\n"


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        compile_config(parse_config(SERVICE + text, "t.yml"), "t.yml")
    return [m.removeprefix("t.yml: ") for m in info.value.messages]


def load(text: str) -> None:
    compile_config(parse_config(SERVICE + text, "t.yml"), "t.yml")


def test_claims_to_verify_null_is_kongs_default():
    """claims_to_verify has no default: the Admin API and deck dumps write it as null."""
    load("plugins: [{name: jwt, config: {claims_to_verify: null, anonymous: null, realm: null}}]")
    assert msgspec.convert({"claims_to_verify": None}, JwtConfig).claims_to_verify is None


def test_maximum_expiration_is_accepted_without_claims_to_verify():
    """The conditional entity check validates a null claims_to_verify as passing."""
    load("plugins: [{name: jwt, config: {maximum_expiration: 60}}]")
    load("plugins: [{name: jwt, config: {maximum_expiration: 60, claims_to_verify: null}}]")


@pytest.mark.parametrize("claims", ["[nbf]", "[]"])
def test_maximum_expiration_with_claims_to_verify_lacking_exp_is_refused(claims):
    """06-schema_spec: when 'maximum_expiration' is specified without 'exp' in 'claims_to_verify'."""
    [error] = errors(f"plugins: [{{name: jwt, config: {{maximum_expiration: 60, claims_to_verify: {claims}}}}}]")
    assert error.startswith("plugins[0].config")
    assert "claims_to_verify" in error and "exp" in error


@pytest.mark.parametrize(("field", "value"), [
    ("key_claim_name", "''"), ("uri_param_names", "['']"), ("cookie_names", "['']"), ("header_names", "['']"),
])
def test_empty_names_are_refused_as_kong_refuses_empty_strings(field, value):
    """Kong's schema strings are at least one character long (kong/db/schema/init.lua: len_min defaults to 1)."""
    [error] = errors(f"plugins: [{{name: jwt, config: {{{field}: {value}}}}}]")
    assert error.startswith(f"plugins[0].config.{field}")
    assert error.endswith(": length must be at least 1")


# --- jwt: key material Kong takes ------------------------------------------------------------------------------------


async def test_an_hmac_secret_that_looks_like_a_pem_key_verifies_as_an_hmac_secret(nursery, gateway):
    """Kong uses any secret as the HMAC key (PyJWT would refuse a PEM-looking one)."""
    from auth_helpers import key_pair

    pem = key_pair("RS256")[1]
    port = await jwt_gateway(nursery, gateway, secrets=[{"key": "alice-key", "secret": pem}])
    token = signed({"alg": "HS256", "typ": "JWT"}, {"iss": "alice-key"}, pem.encode())
    assert (await call(port, "/", bearer(token))).status == 200


async def test_an_es_credential_without_a_key_answers_invalid_key_secret(nursery, gateway):
    """handler.lua: an ES* secret's rsa_public_key is nil, so "Invalid key/secret"."""
    port = await jwt_gateway(nursery, gateway, secrets=[{"key": "alice-key", "algorithm": "ES256"}])
    token = signed({"alg": "ES256", "typ": "JWT"}, {"iss": "alice-key"})
    reply = await call(port, "/", bearer(token))
    assert (reply.status, message(reply)) == (401, {"message": "Invalid key/secret"})
