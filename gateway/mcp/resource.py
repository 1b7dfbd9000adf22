"""The protected resource metadata endpoint (RFC 9728): answered before routing, without authentication, since an
MCP client fetches it precisely because it has no token yet. Browser-based clients fetch it cross-origin, so it
allows any origin (it is public by design)."""

from __future__ import annotations

from gateway.http.server import Exchange

_ALLOW = b"GET, HEAD, OPTIONS"
_CORS = [(b"access-control-allow-origin", b"*")]
_PREFLIGHT = [*_CORS, (b"access-control-allow-methods", _ALLOW),
              (b"access-control-allow-headers", b"mcp-protocol-version, authorization"),
              (b"access-control-max-age", b"86400"), (b"allow", _ALLOW)]
NOT_ALLOWED = "the protected resource metadata is read with GET"


async def answer_metadata(ex: Exchange, document: bytes) -> None:
    """GET (HEAD): the document; OPTIONS: a CORS preflight answer; anything else 405."""
    method = ex.request.method
    if method == b"GET" or method == b"HEAD":
        await ex.respond(200, document, extra=[*_CORS, (b"cache-control", b"max-age=3600")])
    elif method == b"OPTIONS":
        await ex.send_head(204, _PREFLIGHT, end=True)
    else:
        await ex.respond_error(405, NOT_ALLOWED, [(b"allow", _ALLOW)])
