"""The protected resource metadata endpoint (RFC 9728), answered without authentication, since an MCP client fetches it
precisely because it has no token yet. Browser-based clients fetch it cross-origin, so it allows any origin (it is
public by design).

ai-mcp-oauth2 answers it in its access step, for requests routed to its route (as Kong runs a plugin only with the
config of the route the request was routed to). A metadata path that no route covers (Kong: 404) is routed as the
resource's own path would be, with the request's host and headers (`MetadataPaths`), so that a client need not have
a route for every discovery URL it tries, while another host's routes, a disabled service's and another tenant's
plugin stay out of it."""

from __future__ import annotations

from typing import Any

from gateway.http.codec import Headers
from gateway.http.server import Exchange
from gateway.routing import Match, Router

_ALLOW = b"GET, HEAD, OPTIONS"
_CORS = [(b"access-control-allow-origin", b"*")]
_PREFLIGHT = [*_CORS, (b"access-control-allow-methods", _ALLOW),
              (b"access-control-allow-headers", b"mcp-protocol-version, authorization"),
              (b"access-control-max-age", b"86400"), (b"allow", _ALLOW)]
NOT_ALLOWED = "the protected resource metadata is read with GET"
_NO_MCP = (None, None)  # a metadata request carries no MCP message: routes on a JSON-RPC method or tool never match


async def answer_metadata(ex: Exchange, document: bytes) -> None:
    """GET (HEAD): the document; OPTIONS: a CORS preflight answer; anything else 405."""
    method = ex.request.method
    if method == b"GET" or method == b"HEAD":
        await ex.respond(200, document, extra=[*_CORS, (b"cache-control", b"max-age=3600")])
    elif method == b"OPTIONS":
        await ex.send_head(204, _PREFLIGHT, end=True)
    else:
        await ex.respond_error(405, NOT_ALLOWED, [(b"allow", _ALLOW)])


class MetadataPaths:
    """The policies serving a metadata document, by its path, each with its resource's path: what routes a request
    for that path when no route covers it."""

    __slots__ = ("by_path",)

    def __init__(self) -> None:
        self.by_path: dict[bytes, list[tuple[bytes, object]]] = {}

    def add(self, policy: Any) -> None:
        """A policy answering its document at the paths `policy.well_known`, for requests whose host reaches it at
        `policy.resource_path`."""
        for path in policy.well_known:
            self.by_path.setdefault(path, []).append((policy.resource_path, policy))

    def route(self, router: Router[Any], method: bytes, target: bytes, host: bytes | None, headers: Headers,
              port: int | None = None, sni: bytes | None = None) -> Match[Any] | None:
        """For a request no route matched: the route the first policy serving its path is reached by when the
        request asks for that policy's resource instead (same method, host, headers, query), if that route's chain
        runs the policy; None otherwise (404). The match keeps the request's own path and query."""
        path, sep, query = target.partition(b"?")
        candidates = self.by_path.get(path)
        if candidates is None:
            return None
        for resource_path, policy in candidates:
            found = router.match(method, resource_path + sep + query, host, headers, _NO_MCP, port, sni)
            if found is not None and any(p is policy for p in found.payload.chain):
                return Match(found.payload, path, query)
        return None
