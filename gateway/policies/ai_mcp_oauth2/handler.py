"""ai-mcp-oauth2: the gateway as the OAuth 2.1 resource server in front of MCP servers (MCP authorization spec
2025-11-25; checks in gateway.mcp.bearer, keys in gateway.mcp.jwks).

A request needs `Authorization: Bearer <JWT>` signed by a key of the authorization server's JWKS, with `aud` naming
`resource` (unless insecure_relaxed_audience_validation), `iss` one of `authorization_servers`, `exp` / `nbf` in
time (± jwt_claims_leeway). Answers: no token, 401 `WWW-Authenticate: Bearer resource_metadata="<URL>"`; a bad
token, 401 with `error="invalid_token"` and a description; a token whose claims name no consumer (consumer_claim,
without consumer_optional), 403. The token names the request's consumer (consumer_claim, looked up by consumer_by)
or, without one, a credential (credential_claim, `sub`): rate limiting by consumer or credential counts per subject,
as Kong does. The token never reaches the upstream unless passthrough_credentials (the spec forbids passing it on);
claim_to_header / upstream_headers copy claims into upstream headers (client-sent copies are removed). A token also
in the query string or a form body is 400 invalid_request (RFC 6750 3.1). A CORS preflight (no body) passes without
a token, its Authorization and claim headers removed, unless its query names an access_token: that one is checked
like any request (MCP: no token in a URI, none passed on). The resource's metadata document (RFC 9728) is answered
here, for requests routed to the plugin's route at one of its paths (gateway.mcp.resource).

Verified tokens are cached per worker (bounded) until they expire or the keys are refreshed, so a token seen again
costs a dictionary lookup and the time checks. A token whose key id is unknown makes the worker refetch the JWKS (at
most once a second) and wait for it, bounded by `timeout`.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any
from urllib.parse import urlsplit

from gateway.http.codec import Headers
from gateway.http.server import Exchange
from gateway.mcp import body
from gateway.mcp.bearer import (
    UNKNOWN_KID,
    TokenError,
    TokenRules,
    bearer_token,
    challenge,
    claim_at,
    claim_strings,
    form_has_token,
    is_preflight,
    metadata_document,
    metadata_paths,
    query_has_token,
    verify,
)
from gateway.mcp.jwks import JwksSource
from gateway.mcp.resource import answer_metadata
from gateway.memo import Memo
from gateway.pipeline.headers import set_consumer
from gateway.policies.ai_mcp_oauth2.schema import AiMcpOauth2Config
from gateway.policies.consumers import Consumer, Directory, Identity, Rejection
from gateway.policies.request_body import FORM, media_type

log = logging.getLogger("gateway.policies")
_KEYS_UNAVAILABLE = Rejection(503, "the authorization server's keys (JWKS) could not be loaded; try again later")

CACHE_ENTRIES = 4096  # verified tokens remembered per plugin instance and worker
CACHE_TOKEN_BYTES = 8192  # longer tokens are verified every time
_AUTHORIZATION = b"authorization"
_TWO_METHODS = "the access token must be sent in the Authorization header only, not also in the query string or " \
    "a form body (RFC 6750 section 3.1)"
FORM_BODY_LIMIT = 1 << 20  # bytes of a form body searched for an access_token


class TokenIdentity:
    """A request authenticated by a token that names no consumer: Kong's credential without a consumer. It has the
    attributes later policies read from `ex.consumer` (id None: rate limiting by consumer counts per credential)."""

    __slots__ = ("consumer", "id", "username", "custom_id", "groups", "credential_id", "anonymous",
                 "upstream_headers", "_with_groups")
    authenticated_groups: tuple[str, ...] | None = None  # (the token's groups are its own: acl reads `groups`)

    def __init__(self, credential_id: str, groups: tuple[str, ...], upstream_headers: Headers) -> None:
        self.consumer = None
        self.id = None
        self.username = None
        self.custom_id = None
        self.groups = groups
        self.credential_id = credential_id
        self.anonymous = False
        self.upstream_headers = upstream_headers
        self._with_groups: TokenIdentity | None = None

    def with_groups_header(self) -> TokenIdentity:
        """The same identity with X-Consumer-Groups upstream (what acl adds when it admits)."""
        if self._with_groups is None:
            twin = TokenIdentity(self.credential_id, self.groups,
                                 [*self.upstream_headers, (b"x-consumer-groups", ", ".join(self.groups).encode())])
            twin._with_groups = twin
            self._with_groups = twin
        return self._with_groups


class TokenEntry:
    """A verified token: who it is, its claims (ai-mcp-proxy's ACL may read them), until when it holds."""

    __slots__ = ("identity", "claims", "exp", "nbf", "keyset", "challenge_url")

    def __init__(self, identity: Any, claims: dict[str, Any], keyset: object, challenge_url: str,
                 leeway: float) -> None:
        self.identity = identity
        self.claims = claims
        exp, nbf = claims["exp"], claims.get("nbf")
        self.exp = exp + leeway
        self.nbf = nbf - leeway if nbf is not None else None
        self.keyset = keyset  # a refreshed JWKS makes the entry stale (a key removed there stops working)
        self.challenge_url = challenge_url  # the metadata URL, for ai-mcp-proxy's insufficient_scope answers


class AiMcpOauth2:
    name = "ai-mcp-oauth2"
    priority = 1015  # Kong's

    def __init__(self, config: AiMcpOauth2Config, plugin_id: str, directory: Directory) -> None:
        self.rules = TokenRules(config.resource, config.authorization_servers, config.jwt_claims_leeway,
                                not config.insecure_relaxed_audience_validation)
        self.wait = config.timeout / 1000
        self.jwks = JwksSource(config.jwks_endpoint or "", config.jwks_cache_ttl, self.wait, config.ssl_verify,
                               f"ai-mcp-oauth2 {plugin_id}")
        self.background = [self.jwks.run]  # started in the worker's nursery (gateway.worker)
        self.metadata_url, paths = metadata_paths(config.resource, config.metadata_endpoint)
        self.document = metadata_document(config.resource, config.authorization_servers, config.scopes_supported)
        self.well_known = frozenset(path.encode() for path in paths)
        self.resource_path = (urlsplit(config.resource).path or "/").encode()  # (what routes a well_known path)
        scope = " ".join(config.scopes_supported) if config.scopes_supported else None
        self.scope = scope
        self.missing = Rejection(401, "Unauthorized", challenge(self.metadata_url, scope=scope))
        self.forbidden_consumer = Rejection(403, "Forbidden")
        self.passthrough = config.passthrough_credentials
        self.consumer_claim = config.consumer_claim
        self.consumer_by = config.consumer_by
        self.consumer_optional = config.consumer_optional
        self.groups_claim = config.consumer_groups_claim
        self.groups_optional = config.consumer_groups_optional
        self.credential_claim = config.credential_claim
        self.leeway = config.jwt_claims_leeway
        self.claim_headers: list[tuple[bytes, list[str]]] = [
            (c.header.lower().encode(), [c.claim]) for c in config.claim_to_header or ()] + [
            (u.header.lower().encode(), list(u.path)) for u in config.upstream_headers or ()]
        self.claim_header_names = frozenset(name for name, _ in self.claim_headers)
        self.preflight_strip = self.claim_header_names | {_AUTHORIZATION}
        self.two_methods = Rejection(400, _TWO_METHODS, challenge(self.metadata_url, "invalid_request", _TWO_METHODS,
                                                                  scope))
        self.index: dict[str, dict[str, Consumer]] = {"id": {}, "username": {}, "custom_id": {}}
        for consumer in directory.consumers.values():
            self.index["id"][consumer.id] = consumer
            if consumer.username is not None:
                self.index["username"][consumer.username] = consumer
            if consumer.custom_id is not None:
                self.index["custom_id"][consumer.custom_id] = consumer
        self.cache: Memo[bytes, TokenEntry] = Memo(CACHE_ENTRIES)

    async def access(self, ex: Exchange) -> bool:
        req = ex.request
        if req.target.partition(b"?")[0] in self.well_known:
            await answer_metadata(ex, self.document)
            return True
        if req.method == b"OPTIONS" and is_preflight(req.headers) and not query_has_token(req.target):
            # no MCP message and no token to check: what would pass for one (or for a claim header) stays here
            req.headers = [hv for hv in req.headers if hv[0] not in self.preflight_strip]
            return False
        authorization = None
        content_type = None
        for name, value in req.headers:
            if name == _AUTHORIZATION:
                if authorization is None:
                    authorization = value
            elif name == b"content-type":
                content_type = value
        if authorization is None:
            await self.missing.send(ex)
            return True
        if query_has_token(req.target) or (
                content_type is not None and media_type(content_type) == FORM and await _form_has_token(ex)):
            await self.two_methods.send(ex)  # (the token must not travel upstream in the URL or the body)
            return True
        now = time.time()
        entry = self.cache.get(authorization)  # keyed by the header as sent: a token seen again skips its parsing
        if entry is None or entry.keyset is not self.jwks.keyset or not entry.exp > now or (
                entry.nbf is not None and entry.nbf > now):
            token = bearer_token(authorization)
            if token is None:
                await self.missing.send(ex)
                return True
            found = await self._verify(token, authorization, now)
            if isinstance(found, Rejection):
                await found.send(ex)
                return True
            entry = found
        if not self.passthrough or self.claim_header_names:  # (before the claim headers go into the request)
            names = self.claim_header_names if self.passthrough else self.claim_header_names | {_AUTHORIZATION}
            req.headers = [hv for hv in req.headers if hv[0] not in names]
        set_consumer(ex, entry.identity)  # (its claim headers are in its upstream headers already: _identity)
        if ex.state is None:
            ex.state = {"oauth2": entry}
        else:
            ex.state["oauth2"] = entry
        return False

    async def _verify(self, token: bytes, authorization: bytes, now: float) -> TokenEntry | Rejection:
        """Check a token not in the cache; refetch the keys once when its key id is unknown."""
        keyset = self.jwks.keyset
        try:
            try:
                claims = verify(token, keyset, self.rules, now)
            except TokenError as e:
                if e.description != UNKNOWN_KID:
                    raise
                refetched = await self.jwks.refetch(self.wait)
                if refetched is None:  # the fetch hangs: the key may well be there
                    return _KEYS_UNAVAILABLE
                if not refetched:
                    raise
                keyset = self.jwks.keyset
                claims = verify(token, keyset, self.rules, time.time())
        except TokenError as e:
            if e.description == UNKNOWN_KID and (self.jwks.keyset is None or self.jwks.cache.failures):
                # the keys could not be loaded: the token may be good, and a client told it is not would throw it
                # away and authorize again, to the same end (RFC 6750's invalid_token is the token's fault)
                return _KEYS_UNAVAILABLE
            description = e.description if e.description != UNKNOWN_KID else \
                "the token's signing key is not among the authorization server's keys"
            return Rejection(401, "Unauthorized", challenge(self.metadata_url, "invalid_token", description,
                                                            self.scope))
        identity = self._identity(claims)
        if isinstance(identity, Rejection):
            return identity
        entry = TokenEntry(identity, claims, keyset, self.metadata_url, self.leeway)
        if len(authorization) <= CACHE_TOKEN_BYTES:
            self.cache.keep(authorization, entry)
        return entry

    def _identity(self, claims: dict[str, Any]) -> Any:
        """Who the token is: a consumer named by consumer_claim, or a credential (credential_claim); with the
        groups of consumer_groups_claim and the claim headers."""
        credentials = claim_strings(claim_at(claims, self.credential_claim))
        credential = credentials[0] if credentials else ""
        consumer = None
        if self.consumer_claim is not None:
            consumer = self._consumer(claim_strings(claim_at(claims, self.consumer_claim)))
            if consumer is None and not self.consumer_optional:
                log.info("ai-mcp-oauth2: a valid token's %s names no consumer (by %s): 403",
                         ".".join(self.consumer_claim), ", ".join(self.consumer_by))
                return self.forbidden_consumer
        groups: tuple[str, ...] = ()
        if self.groups_claim is not None:
            groups = tuple(g for g in claim_strings(claim_at(claims, self.groups_claim)) if _header_safe(g))
            if not groups and not self.groups_optional:
                log.info("ai-mcp-oauth2: a valid token has no groups in %s: 403", ".".join(self.groups_claim))
                return self.forbidden_consumer
        extra = self._claim_headers(claims)
        if consumer is not None:
            identity = Identity(consumer, credential, None)
            identity.groups = tuple(dict.fromkeys(consumer.groups + groups))
            if extra:
                identity.upstream_headers = identity.upstream_headers + extra
            return identity
        return TokenIdentity(credential, groups, extra)

    def _consumer(self, values: list[str]) -> Consumer | None:
        for value in values:
            for field in self.consumer_by:
                consumer = self.index[field].get(value)
                if consumer is not None:
                    return consumer
        return None

    def _claim_headers(self, claims: dict[str, Any]) -> Headers:
        out: Headers = []
        for name, path in self.claim_headers:
            value = claim_at(claims, path)
            if value is None:
                continue
            text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
            if _header_safe(text):
                out.append((name, text.encode()))
        return out


async def _form_has_token(ex: Exchange) -> bool:
    """Does the form body (its first FORM_BODY_LIMIT bytes) carry `access_token` (RFC 6750 2.2)? The bytes read are
    kept for the upstream."""
    mcp, _ = await body.whole(ex, FORM_BODY_LIMIT)
    return form_has_token(mcp.body or b"")


def _header_safe(text: str) -> bool:
    """No control characters (CR, LF, NUL, ...): safe to send in a header value."""
    return not any(c < " " and c != "\t" or c == "\x7f" for c in text)
