"""PyJWT, loaded on first use: a process whose config has no jwt or ai-mcp-oauth2 plugin never imports it, nor the
`cryptography` it brings (about 10 MiB of every process, issue 19). The zygote preloads it when the config at start
needs it (gateway.node.zygote), so workers share those pages as they share the rest of the code.

The exception classes are imported where they are caught, inside the functions that catch them."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jwt.algorithms import Algorithm
    from jwt.api_jwt import PyJWT


@functools.cache
def algorithms() -> dict[str, Algorithm]:
    """PyJWT's algorithm objects by name (HS256, RS256, ES256, EdDSA, ...); PS256/384/512 verify a signature of any
    salt length, as OpenSSL does by default (Kong's jwt_parser sets none: a token signed with the maximum salt, as
    OpenSSL signed before 3.1, passes there; PyJWT takes only a salt of the hash's length)."""
    from jwt.algorithms import RSAPSSAlgorithm, get_default_algorithms

    class AnySaltPss(RSAPSSAlgorithm):
        def verify(self, msg: bytes, key: Any, sig: bytes) -> bool:
            from cryptography.exceptions import InvalidSignature
            from cryptography.hazmat.primitives.asymmetric import padding

            try:
                key.verify(sig, msg, padding.PSS(mgf=padding.MGF1(self.hash_alg()), salt_length=padding.PSS.AUTO),
                           self.hash_alg())
                return True
            except InvalidSignature:
                return False

    found = get_default_algorithms()
    for name in ("PS256", "PS384", "PS512"):
        if name in found:
            found[name] = AnySaltPss(getattr(RSAPSSAlgorithm, "SHA" + name[2:]))
    return found


@functools.cache
def parser() -> PyJWT:
    """One PyJWT parser for the process (it keeps no per-token state)."""
    from jwt.api_jwt import PyJWT

    return PyJWT()
