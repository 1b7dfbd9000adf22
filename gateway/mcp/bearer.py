"""The gateway as an OAuth 2.1 resource server for MCP (sans-I/O): bearer tokens, their checks, the answers.

What the MCP authorization spec (2025-11-25) asks of a resource server, and the RFCs it builds on:
- RFC 6750: the token comes in `Authorization: Bearer <token>`; no token is answered 401 with a `WWW-Authenticate:
  Bearer` challenge without an error code; a bad token with `error="invalid_token"`; too little scope with 403
  and `error="insufficient_scope"`.
- RFC 9728: the challenge names the protected resource metadata (`resource_metadata="<URL>"`), a JSON document at
  `/.well-known/oauth-protected-resource` + the resource's path, listing the authorization servers.
- RFC 8707 / RFC 9068: the token's `aud` must name this resource (the canonical URI of the MCP endpoint), its `iss`
  one of the authorization servers, and `exp` / `nbf` must hold (with a leeway for clock skew).

Tokens are JWTs verified with the authorization server's published keys (gateway.mcp.jwks); symmetric algorithms
and `none` never pass.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

from gateway.http.codec import Headers
from gateway.jwtlib import algorithms, parser
from gateway.mcp.jwks import KeySet

WELL_KNOWN = "/.well-known/oauth-protected-resource"
ASYMMETRIC = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "ES256K",
                        "EdDSA"})
_BEARER = re.compile(rb"[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*) *$")  # RFC 6750's b64token
_UNVERIFIED = {"verify_signature": False, "verify_exp": False, "verify_nbf": False, "verify_iat": False,
               "verify_aud": False, "verify_iss": False, "verify_sub": False, "verify_jti": False}
UNKNOWN_KID = "unknown key id"
_TIMES = ("exp", "nbf", "iat")  # the NumericDate claims


class TokenError(Exception):
    """Why a token is refused; `description` goes into the challenge's error_description."""

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


def bearer_token(authorization: bytes | None) -> bytes | None:
    """The token of an `Authorization: Bearer <token>` value; None when absent or another scheme."""
    if authorization is None:
        return None
    m = _BEARER.match(authorization.strip())
    return m.group(1) if m is not None else None


def _names_token(args: bytes) -> bool:
    """Is one of these `&`-separated form arguments named `access_token` (its name %-decoded, `+` a space)?"""
    for arg in args.split(b"&"):
        name = arg.partition(b"=")[0]
        if name == b"access_token" or b"%" in name and unquote_to_bytes(name.replace(b"+", b" ")) == b"access_token":
            return True
    return False


def query_has_token(target: bytes) -> bool:
    """Does the request target's query carry an `access_token` (RFC 6750 2.3's method, which MCP forbids)?"""
    query = target.partition(b"?")[2]
    return bool(query) and _names_token(query)


def form_has_token(body: bytes) -> bool:
    """Does a form-encoded body carry an `access_token` (RFC 6750 2.2's method)?"""
    return _names_token(body)


def is_preflight(headers: Headers) -> bool:
    """A CORS preflight (of an OPTIONS request): Access-Control-Request-Method and no body (neither a
    Content-Length above 0 nor a Transfer-Encoding), as the Fetch standard sends it. Anything more may carry an
    MCP message."""
    asks = False
    for name, value in headers:
        if name == b"access-control-request-method":
            asks = True
        elif name == b"transfer-encoding" or name == b"content-length" and value.strip(b" \t0"):  # (a digit but 0)
            return False
    return asks


class TokenRules:
    """The checks a token's claims must pass, from the plugin config."""

    __slots__ = ("resource", "audiences", "issuers", "leeway", "check_audience")

    def __init__(self, resource: str, issuers: list[str], leeway: float, check_audience: bool = True) -> None:
        self.resource = resource
        # The resource as configured, and with or without a trailing slash (RFC 8707 URIs differ only there).
        self.audiences = frozenset({resource, resource.rstrip("/"), resource.rstrip("/") + "/"})
        self.issuers = frozenset(i for s in issuers for i in (s, s.rstrip("/"), s.rstrip("/") + "/"))
        self.leeway = leeway
        self.check_audience = check_audience


def decode(token: bytes) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    """(header, claims, signature) of a JWT, unverified; TokenError when it is not one."""
    from jwt.exceptions import PyJWTError

    try:
        decoded = parser().decode_complete(token, options=_UNVERIFIED)  # type: ignore[arg-type]
    except PyJWTError as e:
        raise TokenError(f"malformed token: {e}") from None
    except Exception:  # noqa: BLE001 - whatever a hostile token makes the parser raise is a malformed token
        raise TokenError("malformed token") from None
    return decoded["header"], decoded["payload"], decoded["signature"]


def verify(token: bytes, keyset: KeySet | None, rules: TokenRules, now: float) -> dict[str, Any]:
    """The claims of a token whose signature and claims pass; TokenError (description UNKNOWN_KID when its key id
    is not in `keyset`, so the caller may refetch the keys) otherwise."""
    header, claims, signature = decode(token)
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ASYMMETRIC:  # (a list or an object is no algorithm: a 401, not a 500)
        raise TokenError(f"algorithm {alg!r} is not accepted (asymmetric algorithms only)")
    if keyset is None:
        raise TokenError(UNKNOWN_KID)
    keys = keyset.candidates(header.get("kid"), alg)
    if keys is None:
        raise TokenError(UNKNOWN_KID)
    signing_input = token.rpartition(b".")[0]
    verifier = algorithms()[alg]
    for key in keys:
        try:
            if verifier.verify(signing_input, key.key, signature):
                break
        except Exception:  # noqa: BLE001 - a malformed signature is an invalid one
            continue
    else:
        raise TokenError("invalid signature" if keys else f"no key for algorithm {alg}")
    check_claims(claims, rules, now)
    return claims


def check_claims(claims: dict[str, Any], rules: TokenRules, now: float) -> None:
    """exp (required), nbf, iss and aud, as RFC 9068 asks of a resource server; TokenError on the first failure."""
    exp = claims.get("exp")
    if not _number(exp):
        raise TokenError("the token has no expiry (exp)")
    for name in _TIMES:  # a NaN or infinite time compares as "in time" forever (RFC 7519 2: a NumericDate is a time)
        value = claims.get(name)
        if value is not None and not (_number(value) and (isinstance(value, int) or math.isfinite(value))):
            raise TokenError(f"malformed claims: {name} is not a finite number (a NumericDate)")
    assert exp is not None  # _number
    if exp + rules.leeway <= now:
        raise TokenError("the token has expired")
    nbf = claims.get("nbf")
    if nbf is not None and nbf - rules.leeway > now:
        raise TokenError("the token is not valid yet")
    iss = claims.get("iss")
    if not isinstance(iss, str) or iss not in rules.issuers:
        raise TokenError("the token was not issued by an authorization server of this resource")
    if rules.check_audience:
        aud = claims.get("aud")
        names = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if not any(isinstance(a, str) and a in rules.audiences for a in names):
            raise TokenError(f"the token's audience is not {rules.resource}")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def claim_at(claims: dict[str, Any], path: list[str] | tuple[str, ...]) -> Any:
    """The value at a claim path (["realm_access", "roles"]: a nested claim), or None."""
    value: Any = claims
    for name in path:
        if not isinstance(value, dict):
            return None
        value = value.get(name)
    return value


def claim_strings(value: Any) -> list[str]:
    """A claim as a list of strings: a string is one, a list keeps its strings, anything else none."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


# ---- the resource's metadata (RFC 9728) and its challenges (RFC 6750) ----------------------------------------------


def metadata_paths(resource: str, metadata_endpoint: str | None) -> tuple[str, list[str]]:
    """(the metadata URL named in challenges, the paths the document is served at).

    Default: RFC 9728's `/.well-known/oauth-protected-resource` + the resource's path (section 3.1: only a slash
    right after the host is dropped, so `/mcp/` keeps its own), which MCP clients also try on their own; the same
    without the path's final slash (what the TypeScript SDK asks for); and Kong's default (the resource's path +
    `/.well-known/oauth-protected-resource`). A configured `metadata_endpoint` (a path, or an absolute URL) is served
    at its path only."""
    parts = urlsplit(resource)
    origin = f"{parts.scheme}://{parts.netloc}"
    if metadata_endpoint is not None:
        if metadata_endpoint.startswith("/"):
            return origin + metadata_endpoint, [metadata_endpoint]
        return metadata_endpoint, [urlsplit(metadata_endpoint).path or "/"]
    path = parts.path if parts.path != "/" else ""
    rfc = WELL_KNOWN + path
    bare = path.rstrip("/")
    paths = [rfc] + ([WELL_KNOWN + bare] if bare != path else []) + ([bare + WELL_KNOWN] if bare else [])
    return origin + rfc, paths


def metadata_document(resource: str, authorization_servers: list[str], scopes: list[str] | None) -> bytes:
    """RFC 9728's protected resource metadata for this resource."""
    doc: dict[str, Any] = {"resource": resource, "authorization_servers": authorization_servers}
    if scopes:
        doc["scopes_supported"] = scopes
    doc["bearer_methods_supported"] = ["header"]
    return json.dumps(doc).encode()


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def challenge(metadata_url: str, error: str | None = None, description: str | None = None,
              scope: str | None = None) -> str:
    """A `WWW-Authenticate: Bearer ...` value: resource_metadata first (what MCP clients look for), then the
    RFC 6750 error, its description and the scope needed."""
    params = [f"resource_metadata={_quoted(metadata_url)}"]
    if error is not None:
        params.append(f"error={_quoted(error)}")
    if description is not None:
        params.append(f"error_description={_quoted(_printable(description))}")
    if scope:
        params.append(f"scope={_quoted(scope)}")
    return "Bearer " + ", ".join(params)


def _printable(text: str) -> str:
    """RFC 6750 limits error_description to printable ASCII without \" and \\."""
    return "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in text)[:200]
