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


def prepare(cred: JwtCredential, secret_is_base64: bool) -> Any | None:
    """The verifying key, or None when `secret_is_base64` is set and the secret is not base64url as Kong's
    jwt:base64_decode reads it (Kong then answers "Invalid key/secret"). Raises KeyMaterialError for key material
    that can never verify anything."""
    from jwt.exceptions import InvalidKeyError, PyJWTError

    alg = algorithms()[cred.algorithm]
    try:
        if cred.algorithm.startswith("HS"):
            secret = (cred.secret or "").encode()
            if secret_is_base64:
                decoded = b64url_decode(secret)
                if decoded is None:
                    return None
                secret = decoded
            return alg.prepare_key(secret)
        key = alg.prepare_key(cred.public_key or "")
    except (InvalidKeyError, PyJWTError, ValueError, TypeError) as e:
        what = "secret" if cred.algorithm.startswith("HS") else "rsa_public_key"
        kind = "an HMAC secret" if what == "secret" else f"a {cred.algorithm} public key (PEM)"
        raise KeyMaterialError(f"{cred.where}.{what}: not usable as {kind}: {_reason(e)}") from None
    public = getattr(key, "public_key", None)  # a private key was given: verify with its public half
    return public() if callable(public) else key


def check_keys(directory: Directory) -> list[str]:
    """Every jwt secret's key material, as a config error each (Kong validates keys when the entity is written)."""
    errors = []
    for cred in directory.jwt.values():
        try:
            key = prepare(cred, False)
        except KeyMaterialError as e:
            errors.append(str(e))
            continue
        weak = algorithms()[cred.algorithm].check_key_length(key)
        if weak:
            log.warning("%s: %s", cred.where, weak)
    return errors


def _reason(e: Exception) -> str:
    text = str(e) or type(e).__name__
    return text if len(text) < 200 else text[:200] + "..."
