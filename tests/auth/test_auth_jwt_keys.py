"""jwt credentials' key material as Kong takes it: RSA-PSS signatures of any salt length, empty strings refused,
OpenSSH public keys refused (Kong's jwt_parser.lua and daos.lua)."""

from __future__ import annotations

import base64
import json

import pytest
from auth_helpers import call, http_codec, jwt_secret, key_pair, start  # noqa: F401 - http_codec: the fixture
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from gateway.config import ConfigError, parse_config
from gateway.runtime import compile_config

SERVICE = ("services: [{name: s, url: 'http://127.0.0.1:1', routes: [{name: r, paths: [/], "
           "plugins: [{name: jwt}]}]}]\n")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def pss_token(alg: str, salt_length) -> str:  # noqa: ANN001
    private = serialization.load_pem_private_key(key_pair(alg)[0].encode(), None)
    digest = {"PS256": hashes.SHA256, "PS384": hashes.SHA384, "PS512": hashes.SHA512}[alg]()
    signing_input = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode()) + "." + b64(b'{"iss":"ps-key"}')
    sig = private.sign(signing_input.encode(), padding.PSS(mgf=padding.MGF1(digest), salt_length=salt_length), digest)
    return signing_input + "." + b64(sig)


@pytest.mark.parametrize("alg", ["PS256", "PS384", "PS512"])
@pytest.mark.parametrize("salt", [padding.PSS.MAX_LENGTH, 0], ids=["max-salt", "no-salt"])
async def test_a_pss_token_with_another_salt_length_verifies_as_in_kong(nursery, gateway, alg, salt):
    """Kong's jwt_parser verifies RSA-PSS with OpenSSL's default (the salt length read from the signature): a token
    signed with the maximum salt (OpenSSL's default before 3.1) passes; PyJWT took only a hash-length salt."""
    plugin = {"name": "jwt", "config": {}}
    consumers = [{"username": "alice", "jwt_secrets": [jwt_secret("ps-key", alg)]}]
    _, port = await start(nursery, gateway, [{"paths": ["/"], "plugins": [plugin]}], consumers=consumers)
    reply = await call(port, "/", [("authorization", f"Bearer {pss_token(alg, salt)}")])
    assert reply.status == 200, reply.body


@pytest.mark.parametrize(("cred", "field"), [
    ("{key: alice-key, secret: ''}", "secret"),
    ("{key: '', secret: a-secret}", "key"),
    ("{key: alice-key, algorithm: ES256, rsa_public_key: ''}", "rsa_public_key"),
], ids=["empty-secret", "empty-key", "empty-rsa_public_key"])
def test_an_empty_jwt_secret_string_is_refused_as_kong_refuses_it(cred, field):
    """Kong's schema strings are one character at least (len_min 1): an empty HS256 secret loaded here and verified
    any token signed with the empty key."""
    text = SERVICE + f"consumers: [{{username: alice, jwt_secrets: [{cred}]}}]\n"
    with pytest.raises(ConfigError) as info:
        compile_config(parse_config(text, "t.yml"), "t.yml")
    assert any(f"jwt_secrets[0].{field}" in m for m in info.value.messages), info.value.messages


def ssh_key(alg: str) -> str:
    if alg == "EdDSA":
        public = ed25519.Ed25519PrivateKey.generate().public_key()
    else:
        public = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    return public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


@pytest.mark.parametrize("alg", ["RS256", "PS256", "EdDSA"])
def test_an_openssh_public_key_is_refused_as_kong_refuses_it(alg):
    """Kong's validate_ssl_key (resty.openssl pkey.new: PEM, DER, JWK) does not read the OpenSSH format; PyJWT does,
    so such a credential loaded here and verified tokens."""
    cred = {"key": "k", "algorithm": alg, "rsa_public_key": ssh_key(alg)}
    text = SERVICE + f"consumers: [{{username: alice, jwt_secrets: [{json.dumps(cred)}]}}]\n"
    with pytest.raises(ConfigError) as info:
        compile_config(parse_config(text, "t.yml"), "t.yml")
    assert any("jwt_secrets[0].rsa_public_key" in m for m in info.value.messages), info.value.messages
