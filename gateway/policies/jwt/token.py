"""Kong's jwt_parser.decode_token (kong/plugins/jwt/jwt_parser.lua): a token is split at its first two dots (the
signature is all the rest), each part decoded with nginx's decode_base64url, the first two as JSON. Only the
header's `alg` is read here: other header parameters (kid, crit, b64, ...) mean nothing to Kong, whatever their form.
PyJWT's own parser is not used: it refuses tokens Kong takes (a non-string kid, an unknown crit, a signature with
stray bits in its last character) and reports its errors in another order.

The errors, in Kong's order, become "Bad token; <error>": "invalid JSON" (any part not base64, the first two not
JSON, fewer than two dots), "invalid alg" (not one of the 13 Kong verifies), "invalid claims", "invalid signature"
(the signature not base64)."""

from __future__ import annotations

import binascii
import re
from typing import Any

from gateway.config.consumers import JWT_ALGORITHMS
from gateway.policies import cjson

_URL_SAFE = re.compile(rb"[A-Za-z0-9_-]*")


class Token:
    """A token as decode_token leaves it: header, claims, signature bytes and the signed text."""

    __slots__ = ("header", "claims", "signature", "signing_input")

    def __init__(self, header: dict[str, Any], claims: dict[str, Any], signature: bytes, signing_input: bytes):
        self.header = header
        self.claims = claims
        self.signature = signature
        self.signing_input = signing_input


def b64url_decode(data: bytes) -> bytes | None:
    """jwt_parser's base64_decode: nginx's decode_base64url (the URL-safe alphabet up to the first "=", whatever
    follows it unread, never 4n+1 characters; unused low bits ignored); None if invalid."""
    encoded = data.partition(b"=")[0]
    if len(encoded) % 4 == 1 or not _URL_SAFE.fullmatch(encoded):
        return None
    return binascii.a2b_base64(encoded.replace(b"-", b"+").replace(b"_", b"/") + b"=" * (-len(encoded) % 4))


def _json(data: bytes | None) -> Any:
    """cjson.decode of a decoded part (raw bytes in its strings are kept, as cjson keeps them); raises if invalid."""
    if data is None:
        raise ValueError("not base64")
    return cjson.decode(data)


def decode_token(token: bytes) -> Token | str:
    """The decoded token, or the error decode_token reports for it."""
    header_64, _, rest = token.partition(b".")
    claims_64, dot, signature_64 = rest.partition(b".")
    if not dot:
        return "invalid JSON"  # (a missing part is a nil that Kong's base64_decode raises on, inside its pcall)
    try:
        header, claims = _json(b64url_decode(header_64)), _json(b64url_decode(claims_64))
    except (ValueError, RecursionError):
        return "invalid JSON"
    if isinstance(header, (list, str)):  # a Lua table or string: header.alg is nil
        return "invalid alg"
    if not isinstance(header, dict):  # a number, boolean or null: Kong's Lua fails (500); here a bad token
        return "invalid JSON"
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in JWT_ALGORITHMS:
        return "invalid alg"
    if isinstance(claims, (list, str)):  # a Lua table or string: no claim is found in it
        claims = {}
    elif not isinstance(claims, dict):
        return "invalid claims"
    signature = b64url_decode(signature_64)
    if signature is None:
        return "invalid signature"
    return Token(header, claims, signature, header_64 + b"." + claims_64)
