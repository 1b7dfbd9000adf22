"""A jwt secret's key material, prepared once per config load by PyJWT's own algorithm objects (with `cryptography`
for RS*, PS*, ES* and EdDSA): what the token's signature is checked against."""

from __future__ import annotations

import logging
from typing import Any

from gateway.jwtlib import algorithms
from gateway.policies.consumers import Directory, JwtCredential
from gateway.policies.jwt.token import b64url_decode

log = logging.getLogger("gateway.policies")


class KeyMaterialError(ValueError):
    """Key material PyJWT refuses (a config error, reported with the credential's path)."""


class ForeignKey:
    """A key OpenSSL reads, of another family than the credential's algorithm (an EC key on an RS256 secret): Kong's
    jwt_parser verifies with it and no signature matches, so its tokens get "Invalid signature"."""

    __slots__ = ()


FOREIGN_KEY = ForeignKey()
_OPENSSH = ("ssh-", "ecdsa-sha2-", "sk-")  # the OpenSSH public key formats


def prepare(cred: JwtCredential, secret_is_base64: bool) -> Any | None:
    """The verifying key; FOREIGN_KEY for a key of another family; None for one Kong takes but that verifies nothing
    and answers "Invalid key/secret" for: a secret that is not base64url when `secret_is_base64` (as Kong's
    jwt:base64_decode reads it), an ES* credential without a key (Kong checks no ES key; one that is no key at all,
    Kong's assert fails on: its 500, a 401 here). An HMAC secret is used as it is, as Kong uses it (PyJWT refuses
    PEM-looking ones; the algorithm is pinned per credential, so there is no confusion to guard against). Raises
    KeyMaterialError for what Kong refuses: an RS*, PS* or EdDSA `rsa_public_key` that is no key at all."""
    from jwt.exceptions import InvalidKeyError, PyJWTError

    if cred.algorithm.startswith("HS"):
        secret = (cred.secret or "").encode()
        return b64url_decode(secret) if secret_is_base64 else secret
    if (cred.public_key or "").lstrip().startswith(_OPENSSH):  # PyJWT reads these; OpenSSL's pkey.new does not
        if cred.algorithm.startswith("ES"):
            return None
        raise KeyMaterialError(f"{cred.where}.rsa_public_key: not usable as a {cred.algorithm} public key (PEM): an "
                               "OpenSSH key, which Kong (OpenSSL) does not read; convert it with ssh-keygen -e -m "
                               "PKCS8")
    try:
        key = algorithms()[cred.algorithm].prepare_key(cred.public_key or "")
    except (InvalidKeyError, PyJWTError, ValueError, TypeError) as e:
        if cred.public_key and _is_a_key(cred.public_key):
            return FOREIGN_KEY
        if cred.algorithm.startswith("ES"):
            return None
        raise KeyMaterialError(f"{cred.where}.rsa_public_key: not usable as a {cred.algorithm} public key (PEM): "
                               f"{_reason(e)}") from None
    public = getattr(key, "public_key", None)  # a private key was given: verify with its public half
    return public() if callable(public) else key


def _is_a_key(pem: str) -> bool:
    """Does OpenSSL read `pem` as a key of any kind (Kong's validate_ssl_key, resty.openssl.pkey.new)?"""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

    data = pem.encode()
    for load in (load_pem_public_key, lambda d: load_pem_private_key(d, None)):
        try:
            load(data)
        except (ValueError, TypeError):
            continue
        return True
    return False


def check_keys(directory: Directory) -> list[str]:
    """Every jwt secret's key material: a config error for each Kong refuses, a warning for each that Kong takes
    but that can verify no token (Kong validates keys when the entity is written)."""
    errors = []
    for cred in directory.jwt.values():
        if not cred.public_key and not cred.algorithm.startswith(("HS", "ES")):
            continue  # (the consumer's check reports the key missing: gateway.config.consumers)
        try:
            key = prepare(cred, False)
        except KeyMaterialError as e:
            errors.append(str(e))
            continue
        if key is None:
            log.warning("%s: no usable %s key: every token for it gets 401 \"Invalid key/secret\" (as in Kong)",
                        cred.where, cred.algorithm)
            continue
        if key is FOREIGN_KEY:
            log.warning("%s: a key of another family than %s: every token for it gets 401 \"Invalid signature\" (as "
                        "in Kong)", cred.where, cred.algorithm)
            continue
        weak = algorithms()[cred.algorithm].check_key_length(key)
        if weak:
            log.warning("%s: %s", cred.where, weak)
    return errors


def _reason(e: Exception) -> str:
    text = str(e) or type(e).__name__
    return text if len(text) < 200 else text[:200] + "..."
