"""Kong's jwt: a token from the query string, a cookie or a header; its `key_claim_name` claim (or header field)
names a consumer's jwt secret, whose algorithm the token must use and whose key must verify its signature; then the
registered claims named in `claims_to_verify` (exp, nbf) and `maximum_expiration`.

The token is read as Kong's jwt_parser reads it (gateway.policies.jwt.token); PyJWT's algorithm objects check its
signature, nothing here compares signatures. Kong's answers, all 401 with `WWW-Authenticate: Bearer` (+
`error="invalid_token"` once a token was found): "Unauthorized", "Multiple tokens provided", "Unrecognizable
token", "Bad token; invalid JSON" (also invalid base64), "Bad token; invalid alg", "Bad token; invalid claims",
"Bad token; invalid signature" (a signature that is not base64), "No mandatory 'iss' in claims", "Invalid 'iss' in
claims", "No credentials found for given 'iss'", "Invalid algorithm", "Invalid key/secret", "Invalid signature";
claim failures as a JSON object ({"exp": "token expired"}).

Verified tokens are cached (bounded, FIFO) with their exp/nbf, so a token seen again costs a dict lookup and the
time checks; failures are never cached.
"""

from __future__ import annotations

import re
import time
from typing import Any

from gateway.http.cookies import cookie_value
from gateway.http.server import Exchange
from gateway.jwtlib import algorithms
from gateway.memo import Memo
from gateway.policies.consumers import (
    AuthPolicy,
    Directory,
    Identity,
    Rejection,
    first_headers,
    header_value,
    query_values,
)
from gateway.policies.jwt.keys import FOREIGN_KEY, KeyMaterialError, prepare
from gateway.policies.jwt.schema import JwtConfig
from gateway.policies.jwt.token import decode_token
from gateway.policies.key_auth.handler import KeyName
from gateway.policies.luanumber import tonumber

CACHE_ENTRIES = 4096  # verified tokens remembered per plugin instance
CACHE_TOKEN_BYTES = 4096  # longer tokens are verified every time (bounds the cache's memory to ~16 MiB)
# Kong's pattern (PCRE, unanchored) \s*[Bb]earer\s+(.+), without its leading \s*: that changes no capture, and
# costs a scan per space (a quadratic search: 1.2 s for 20 KB of spaces inside a header)
_BEARER = re.compile(rb"[Bb]earer\s+(.+)")
_BARE = object()  # a bare `?jwt` query argument: Kong's `true`, an unrecognizable token


class _Key:
    """A jwt secret as one plugin instance verifies with it."""

    __slots__ = ("identity", "algorithm", "verifier", "key")

    def __init__(self, identity: Identity, algorithm: str, key: Any) -> None:
        self.identity = identity
        self.algorithm = algorithm
        self.verifier = algorithms()[algorithm]
        self.key = key  # None: Kong's "Invalid key/secret"; FOREIGN_KEY: its "Invalid signature"


def _keys(directory: Directory, secret_is_base64: bool = False) -> dict[str, _Key]:
    """The config's jwt secrets by key, prepared, as every instance looks them up (one table per config load, as
    Kong's one cache; two when instances differ in `secret_is_base64`)."""
    keys = {}
    for key, cred in directory.jwt.items():
        try:
            keys[key] = _Key(cred.identity, cred.algorithm, prepare(cred, secret_is_base64))
        except KeyMaterialError:
            continue  # (a config error check_keys reports, once, on the credential)
    return keys


def _base64_keys(directory: Directory) -> dict[str, _Key]:
    """`_keys` for instances with `secret_is_base64`."""
    return _keys(directory, True)


class Jwt(AuthPolicy):
    name = "jwt"
    priority = 1450  # Kong's
    __slots__ = ("params", "cookies", "headers", "claim", "claims_to_verify", "max_exp", "keys", "cache", "www",
                 "www_error", "missing", "errors")

    def __init__(self, config: JwtConfig, directory: Directory) -> None:
        super().__init__(directory.anonymous(config.anonymous), config.run_on_preflight)
        self.params = list(dict.fromkeys(config.uri_param_names))
        self.cookies = [c.lower().encode() for c in dict.fromkeys(config.cookie_names)]
        # per header name, the names get_headers()' table is read with: as configured, then a miss normalized
        self.headers = [KeyName(h).headers for h in dict.fromkeys(config.header_names)]
        self.claim = config.key_claim_name
        self.claims_to_verify = list(dict.fromkeys(config.claims_to_verify or ()))
        self.max_exp = config.maximum_expiration
        self.keys = directory.index(_base64_keys if config.secret_is_base64 else _keys)
        self.cache: Memo[bytes, tuple[Identity, Any, Any]] = Memo(CACHE_ENTRIES)
        if config.realm is not None:
            self.www = f'Bearer realm="{config.realm}"'
            self.www_error = f'{self.www}, error="invalid_token"'
        else:
            self.www, self.www_error = "Bearer", 'Bearer error="invalid_token"'
        self.missing = Rejection(401, "Unauthorized", self.www, exit=True)
        claim = self.claim
        self.errors = {message: Rejection(401, message, self.www_error, exit=True) for message in (
            "Multiple tokens provided", "Unrecognizable token", "Bad token; invalid JSON", "Bad token; invalid alg",
            "Bad token; invalid claims", "Bad token; invalid signature", f"No mandatory '{claim}' in claims",
            f"Invalid '{claim}' in claims", f"No credentials found for given '{claim}'", "Invalid algorithm",
            "Invalid key/secret", "Invalid signature")}

    def authenticate(self, ex: Exchange) -> Identity | Rejection:
        token = self._token(ex)
        if isinstance(token, Rejection):
            return token
        now = int(time.time())  # Kong compares with ngx.time(), whole seconds
        entry = self.cache.get(token)
        if entry is not None and self._in_time(entry[1], entry[2], now) is None:
            return entry[0]
        return self._verify(token, now)

    def _token(self, ex: Exchange) -> bytes | Rejection:
        """Kong's retrieve_tokens: every distinct non-empty token found; exactly one is wanted. Query arguments and
        header lines past the first MAX_ARGS are not looked at (Kong's get_query and get_headers stop there). A
        header name is looked up as get_headers()' table reads it: as configured (header_names ["x_token"] finds a
        line `x_token`), and only on a miss lower-cased with "_" as "-" (`x-token`)."""
        req = ex.request
        found: dict[Any, None] = {}
        target = req.target
        for name in self.params:
            for value in query_values(target, name):
                if value is None:
                    found[_BARE] = None
                elif value:
                    found[value.encode("utf-8", "surrogateescape")] = None
        for cookie_name in self.cookies:
            cookie = cookie_value(req.headers, cookie_name)
            if cookie:
                found[cookie] = None
        headers = first_headers(req.headers)
        for spellings in self.headers:
            for header_name in spellings:
                header = header_value(headers, header_name)
                if header is not None:
                    break
            if header is not None:
                m = _BEARER.search(header)
                if m is not None:
                    found[m.group(1)] = None
        if not found:
            return self.missing
        if len(found) > 1:
            return self.errors["Multiple tokens provided"]
        token = next(iter(found))
        return token if token is not _BARE else self.errors["Unrecognizable token"]

    def _verify(self, token: bytes, now: int) -> Identity | Rejection:
        errors = self.errors
        decoded = decode_token(token)
        if isinstance(decoded, str):
            return errors[f"Bad token; {decoded}"]
        header, claims = decoded.header, decoded.claims
        alg = header["alg"]
        claim = self.claim
        name = claims.get(claim)
        if name is None or name is False:
            name = header.get(claim)
        if name is None or name is False:
            return errors[f"No mandatory '{claim}' in claims"]
        if name == "":
            return errors[f"Invalid '{claim}' in claims"]
        key = self.keys.get(name) if isinstance(name, str) else None
        if key is None:
            return errors[f"No credentials found for given '{claim}'"]
        if alg != key.algorithm:
            return errors["Invalid algorithm"]
        if key.key is None:
            return errors["Invalid key/secret"]
        try:
            valid = key.key is not FOREIGN_KEY and key.verifier.verify(decoded.signing_input, key.key,
                                                                        decoded.signature)
        except Exception:  # noqa: BLE001 - a malformed signature is an invalid one
            valid = False
        if not valid:
            return errors["Invalid signature"]
        exp, nbf = claims.get("exp"), claims.get("nbf")
        failed = self._in_time(exp, nbf, now)
        if failed is not None:
            return Rejection(401, failed, self.www_error, exit=True)
        if len(token) <= CACHE_TOKEN_BYTES:
            self.cache.keep(token, (key.identity, exp, nbf))
        return key.identity

    def _in_time(self, exp: Any, nbf: Any, now: int) -> dict[str, str] | None:
        """Kong's verify_registered_claims (each of claims_to_verify must be a number, and in time), then
        check_maximum_expiration; None when they pass, else the JSON body of the 401."""
        failed: dict[str, str] = {}
        for claim in self.claims_to_verify:
            value = exp if claim == "exp" else nbf
            if not _is_number(value):
                failed[claim] = "must be a number"
            elif claim == "exp" and value <= now:
                failed[claim] = "token expired"
            elif claim == "nbf" and value > now:
                failed[claim] = "token not valid yet"
        if failed:
            return failed
        if self.max_exp > 0:
            # Kong's check_maximum_expiration refuses only a missing exp, then computes `exp - time()`: Lua takes a
            # numeric string as its number there (anything else fails in Kong with a 500: here the same 401)
            if isinstance(exp, str):
                exp = tonumber(exp)
            if not _is_number(exp) or exp - now > self.max_exp:
                return {"exp": "exceeds maximum allowed expiration"}
        return None



def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
