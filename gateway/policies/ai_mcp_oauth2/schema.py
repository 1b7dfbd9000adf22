"""Kong AI Gateway's ai-mcp-oauth2 plugin config, the part this gateway enforces (JWT access tokens checked against
the authorization server's JWKS). Kong's other keys (token introspection for opaque tokens, token exchange, mTLS,
HTTP proxies, discovery of the JWKS from the server's metadata) are not here: check-config refuses each by name and
why, unless it configures nothing (null, as Kong stores and exports an unset key, or Kong's default, see _INERT)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from gateway.config.decode import not_built
from gateway.config.errors import show
from gateway.mcp.httpget import Url

_INTROSPECTION = ("token introspection (opaque tokens) is not built: the gateway verifies JWT access tokens with the "
                  "keys from jwks_endpoint; remove the key")
_EXCHANGE = ("token exchange is not built: the upstream gets the client's token (passthrough_credentials) or none; "
             "remove the key")
_PROXY = "HTTP proxies to the authorization server are not built: the gateway fetches the JWKS directly; remove the key"
_MTLS = ("mTLS to the authorization server is not built: the JWKS is fetched without a client certificate; "
         "remove the key")
_DISCOVERY = ("discovery from the authorization server's metadata is not built: give jwks_endpoint (required); "
              "remove the key")
# Kong's keys for what the gateway does not build, and why (developer.konghq.com, AiMcpOauth2.json 3.12-3.15)
_NOT_BUILT = {
    **dict.fromkeys(("introspection_endpoint", "mtls_introspection_endpoint", "introspection_format",
                     "cache_introspection", "client_id", "client_secret", "client_auth", "client_alg", "client_jwk",
                     "args", "headers"), _INTROSPECTION),
    "token_exchange": _EXCHANGE,
    **dict.fromkeys(("http_proxy", "http_proxy_authorization", "https_proxy", "https_proxy_authorization",
                     "no_proxy"), _PROXY),
    **dict.fromkeys(("tls_client_auth_cert", "tls_client_auth_key", "tls_client_auth_ssl_verify"), _MTLS),
    **dict.fromkeys(("metadata_discovery_endpoint", "metadata_cache_ttl", "metadata_discovery_retry"), _DISCOVERY),
    "keepalive": ("Kong takes true or false, both of which change nothing here (the gateway opens a connection for "
                  "each JWKS fetch); remove the key"),
    "http_version": "the gateway fetches the JWKS over HTTP/1.1 only (Kong's default, 1.1); remove the key",
}
# Values of those keys that change nothing in what the gateway does, Kong's defaults (which every export writes) among
# them: a setting of a feature that is not on (no introspection_endpoint, no metadata discovery, no client
# certificate), and the connection settings of the JWKS fetch that it already has (HTTP/1.1; keepalive only pools)
_INERT: dict[str, tuple[Any, ...]] = {"cache_introspection": (True,), "metadata_cache_ttl": (3600,),
                                      "metadata_discovery_retry": (3,), "tls_client_auth_ssl_verify": (True,),
                                      "keepalive": (True, False), "http_version": (1.1,)}

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

    @classmethod
    def not_built(cls, config: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """`config` without Kong's keys for what the gateway does not build, and why each that configures something
        is refused."""
        return not_built(config, _NOT_BUILT, _INERT)
