"""Kong AI Gateway's ai-mcp-oauth2 plugin config, the part this gateway enforces (JWT access tokens checked against
the authorization server's JWKS). Kong's other keys (token introspection for opaque tokens, token exchange, mTLS,
HTTP proxies, discovery of the JWKS from the server's metadata) are not here, so check-config refuses them by name."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from gateway.config.errors import show
from gateway.mcp.httpget import Url

HeaderName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]+\Z")]
ClaimPath = Annotated[list[Annotated[str, msgspec.Meta(min_length=1)]], msgspec.Meta(min_length=1)]


class ClaimToHeader(msgspec.Struct, forbid_unknown_fields=True):
    claim: Annotated[str, msgspec.Meta(min_length=1)]
    header: HeaderName


class UpstreamHeader(msgspec.Struct, forbid_unknown_fields=True):
    header: HeaderName
    path: ClaimPath


class AiMcpOauth2Config(msgspec.Struct, forbid_unknown_fields=True):
    resource: str  # the canonical URI of the MCP endpoint: tokens must name it in `aud`
    authorization_servers: Annotated[list[str], msgspec.Meta(min_length=1)]
    scopes_supported: list[str] | None = None
    metadata_endpoint: str | None = None
    jwks_endpoint: str | None = None
    jwks_cache_ttl: Annotated[int, msgspec.Meta(ge=1)] = 3600
    jwt_claims_leeway: Annotated[int, msgspec.Meta(ge=0)] = 0
    timeout: Annotated[float, msgspec.Meta(gt=0)] = 10000  # ms, for fetching the JWKS
    ssl_verify: bool = True
    consumer_claim: ClaimPath | None = None
    consumer_by: Annotated[list[Literal["id", "username", "custom_id"]], msgspec.Meta(min_length=1)] = \
        msgspec.field(default_factory=lambda: ["custom_id", "username"])
    consumer_optional: bool = False
    consumer_groups_claim: ClaimPath | None = None
    consumer_groups_optional: bool = False
    credential_claim: ClaimPath = msgspec.field(default_factory=lambda: ["sub"])
    claim_to_header: list[ClaimToHeader] | None = None
    upstream_headers: list[UpstreamHeader] | None = None
    passthrough_credentials: bool = False
    insecure_relaxed_audience_validation: bool = False

    def __post_init__(self) -> None:
        if self.jwks_endpoint is None:
            raise ValueError("jwks_endpoint: required (the gateway verifies JWT access tokens with the authorization "
                             "server's keys; it does not discover them from the server's metadata)")
        for field in ("resource", "jwks_endpoint"):
            try:
                Url(getattr(self, field))
            except ValueError as e:
                raise ValueError(f"{field}: {e}") from None
        if "#" in self.resource:
            raise ValueError("resource: a resource URI has no fragment (RFC 8707)")
        for i, server in enumerate(self.authorization_servers):
            try:
                Url(server)
            except ValueError as e:
                raise ValueError(f"authorization_servers[{i}]: {e}") from None
        endpoint = self.metadata_endpoint
        if endpoint is not None and not endpoint.startswith("/"):
            try:
                Url(endpoint)
            except ValueError:
                raise ValueError('metadata_endpoint: expected a path ("/...") or an absolute URL, '
                                 f'got {show(endpoint)}') from None
        if self.claim_to_header and self.upstream_headers:
            raise ValueError("claim_to_header and upstream_headers: set only one of them (as in Kong)")
        for i, scope in enumerate(self.scopes_supported or ()):
            if not scope or any(c in scope for c in ' "\\') or not scope.isprintable():
                raise ValueError(f"scopes_supported[{i}]: a scope is printable ASCII without spaces, quotes or "
                                 "backslashes (RFC 6749)")
