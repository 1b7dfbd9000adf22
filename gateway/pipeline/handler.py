"""The request pipeline: route, run the route's policies in priority order, the MCP step on MCP routes, forward."""

from __future__ import annotations

from gateway.http.server import Exchange, json_error_body
from gateway.mcp.step import peek_for_routing, routing_key
from gateway.metrics import RequestStats
from gateway.pipeline.forward import Forwarder
from gateway.routing import NEEDS_MCP
from gateway.runtime import Runtime

NO_ROUTE = json_error_body(404, "no route matched the request")


class Pipeline:
    """The handler the connection loop calls for every request. `runtime` is swapped whole on reload."""

    def __init__(self, runtime: Runtime, forwarder: Forwarder, stats: RequestStats | None = None) -> None:
        self.runtime = runtime
        self.forwarder = forwarder
        self.stats = stats if stats is not None else RequestStats()

    async def __call__(self, ex: Exchange) -> None:
        route_name = "-"
        try:
            route_name = await self._handle(ex)
        finally:
            if ex.response_started:
                self.stats.record(route_name, ex.status)

    async def _handle(self, ex: Exchange) -> str:
        """Route, run policies, forward; returns the route's name (for metrics)."""
        req = ex.request
        host = None
        for name, value in req.headers:
            if name == b"host":
                host = value
                break
        runtime = self.runtime
        match = runtime.router.match(req.method, req.target, host, req.headers)
        mcp = None
        if match is NEEDS_MCP:  # a route on JSON-RPC method / tool name could match: look (bounded), match again
            mcp = await peek_for_routing(ex, runtime.mcp)  # type: ignore[arg-type]
            if mcp is None:
                return "-"
            match = runtime.router.match(req.method, req.target, host, req.headers, routing_key(mcp))
        if match is None:
            await ex.respond(404, NO_ROUTE)
            return "-"
        route = match.payload
        for policy in route.policies:
            if await policy.access(ex):
                return route.name
        if route.mcp is not None:
            mcp = await route.mcp.inbound(ex, mcp)
            if mcp is None:
                return route.name
        await self.forwarder.forward(ex, route, match, mcp)
        return route.name
