"""The request pipeline: route, run the route's policies in priority order, forward."""

from __future__ import annotations

from gateway.http.server import Exchange, json_error_body
from gateway.pipeline.forward import Forwarder
from gateway.runtime import Runtime

NO_ROUTE = json_error_body(404, "no route matched the request")


class Pipeline:
    """The handler the connection loop calls for every request. `runtime` is swapped whole on reload."""

    def __init__(self, runtime: Runtime, forwarder: Forwarder) -> None:
        self.runtime = runtime
        self.forwarder = forwarder

    async def __call__(self, ex: Exchange) -> None:
        req = ex.request
        host = None
        for name, value in req.headers:
            if name == b"host":
                host = value
                break
        match = self.runtime.router.match(req.method, req.target, host, req.headers)
        if match is None:
            await ex.respond(404, NO_ROUTE)
            return
        route = match.payload
        for policy in route.policies:
            if await policy.access(ex):
                return
        await self.forwarder.forward(ex, route, match)
