"""Shared pieces of the authentication tests: key pairs of every JWT family, PyJWT-made tokens, and a gateway in
front of an echo backend that reports the headers it received."""

from __future__ import annotations

import functools
import json
import time
from typing import Any

import jwt
import pytest
import trio
from backends import Client, EchoBackend, Reply, service
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.config.consumers import kong_consumer_id

TIMEOUT = 10


@pytest.fixture
def http_codec() -> str:
    """One codec for the authentication tests (imported by each module): what they check is above HTTP framing."""
    return "llhttp"

HS_SECRET = "a-shared-secret-long-enough-for-hs512-which-wants-64-bytes-of-it"  # PyJWT warns below the hash size
ALGORITHMS = ["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384",
              "PS512", "EdDSA"]


@functools.cache
def key_pair(alg: str) -> tuple[str, str]:
    """(private PEM, public PEM) for an asymmetric algorithm; made once per test run."""
    if alg.startswith(("RS", "PS")):
        private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif alg.startswith("ES"):
        curve = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}[alg]()
        private = ec.generate_private_key(curve)
    else:
        private = ed25519.Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()).decode()
    public_pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private_pem, public_pem


def jwt_secret(key: str, alg: str = "HS256", secret: str = HS_SECRET) -> dict[str, Any]:
    """A jwt_secrets entry for `alg`: the shared secret for HS*, the public key otherwise."""
    if alg.startswith("HS"):
        return {"key": key, "algorithm": alg, "secret": secret}
    return {"key": key, "algorithm": alg, "rsa_public_key": key_pair(alg)[1]}


def make_token(iss: str | None, alg: str = "HS256", secret: str = HS_SECRET, headers: dict[str, Any] | None = None,
               **claims: Any) -> str:
    """A token signed by PyJWT: with the shared secret for HS*, the private key of `key_pair(alg)` otherwise."""
    payload = {"iat": int(time.time()), **claims}
    if iss is not None:
        payload["iss"] = iss
    key = secret if alg.startswith("HS") else key_pair(alg)[0]
    return jwt.encode(payload, key, algorithm=alg, headers=headers)


def sign_raw(payload: bytes, alg: str = "HS256", secret: str = HS_SECRET,
             headers: dict[str, Any] | None = None) -> str:
    """A token over any payload bytes (PyJWT's JWS layer: claims of any type or shape), signed properly."""
    key = secret if alg.startswith("HS") else key_pair(alg)[0]
    return jwt.api_jws.PyJWS().encode(payload, key, algorithm=alg, headers=headers)


def consumer_id(username: str) -> str:
    return kong_consumer_id(username)


async def start(nursery: trio.Nursery, gateway: Any, routes: list[dict[str, Any]] | None = None,
                settings: dict[str, Any] | None = None, **doc: Any) -> tuple[EchoBackend, int]:
    """An echo backend behind service `svc` (routes nested under it) and the gateway, with `settings` in its
    `gateway:` block and `doc`'s other sections (consumers, plugins, ...): (backend, gateway port)."""
    backend = EchoBackend()
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}", routes)], **doc},
                         **(settings or {}))
    return backend, port


async def call(port: int, target: str = "/", headers: list[tuple[str, str]] | None = None, method: str = "GET",
               host: str = "gateway.test", body: bytes = b"") -> Reply:
    with trio.fail_after(TIMEOUT):
        async with await Client.connect(port) as client:
            return await client.request(method, target, headers=headers, host=host, body=body)


def upstream(reply: Reply) -> dict[str, str]:
    """The headers the backend received (the echo's JSON), as a dict; the request's path is under ':path'."""
    assert reply.status == 200, (reply.status, reply.body)
    seen = reply.json()
    out = {":path": seen["path"]}
    for name, value in seen["headers"]:
        if name in out:
            assert not name.startswith(("x-consumer", "x-credential", "x-anonymous")), f"{name} arrived twice"
            out[name] += ", " + value
        else:
            out[name] = value
    return out


def message(reply: Reply) -> Any:
    """The JSON body, without the request id Kong's kong.response.error adds to its errors (checked present)."""
    body = json.loads(reply.body)
    if isinstance(body, dict) and "request_id" in body:
        assert isinstance(body["request_id"], str) and len(body["request_id"]) >= 16, body
        del body["request_id"]
    return body
