"""The request pipeline: the client address, route, the route's policies in priority order (switching to the
consumer's chain once one is authenticated), the MCP step on MCP routes, forward."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import MappingProxyType

from gateway.http.codec import SERVER_NAME, ProtocolError, answered_status, nginx_host
from gateway.http.kong_errors import NO_ROUTE, nginx_page
from gateway.http.server import ROUTER_PATH, UPSTREAM_PATH, URI_CAPTURES, Exchange, RequestFailed
from gateway.mcp.body import attach, current
from gateway.mcp.step import peek_for_routing, routing_key
from gateway.pipeline.forward import Forwarder
from gateway.pipeline.headers import kong_forwarded_reads
from gateway.policies.base import Policy
from gateway.routing import NEEDS_MCP, Router
from gateway.runtime import RouteRuntime, Runtime
from gateway.telemetry.phase import CLIENT_CLOSED, COLLECTED_LOGGERS, LogPhase

log = logging.getLogger("gateway.pipeline")
_NOT_FORWARDED: Mapping[bytes, bytes] = MappingProxyType({})  # what Kong reads off an untrusted peer's request
AUDIT = "audit"  # ex.state: (the audit of the ai-mcp-proxy the request collected, the route's name)


class Pipeline:
    """The handler the connection loop calls for every request. `runtime` is swapped whole on reload."""

    def __init__(self, runtime: Runtime, forwarder: Forwarder, log_phase: LogPhase | None = None) -> None:
        self.runtime = runtime
        self.forwarder = forwarder
        self.log_phase = log_phase if log_phase is not None else LogPhase()

    async def __call__(self, ex: Exchange) -> None:
        """Route, run policies, forward; then the log phase, which reads the route and MCP request from the Exchange
        (one coroutine, not two: its frame is held by every open stream, and its call is made for every request)."""
        started = ex.started  # (the connection loop's: when the head's first bytes came)
        failed = 0  # the status the connection loop answers when the handling raises
        try:
            req = ex.request
            runtime = self.runtime
            if runtime.client_address is not None:
                ex.client_ip, ex.peer_trusted = runtime.client_address.resolve(ex.client_ip, req.headers,
                                                                               ex.conn.proxied)
            host = req.host  # as it arrived: policies run after routing
            router = runtime.router
            if router.needs_conn:  # a route's hosts name a port (the listener's), or a route has snis
                port, sni = _conn_facts(ex, router)
                match = router.match(req.method, req.target, host, req.headers, None, port, sni)
            else:
                match = router.match(req.method, req.target, host, req.headers)
            mcp = None
            if match is NEEDS_MCP:  # a route on JSON-RPC method / tool name could match: look (bounded), match again
                mcp = ex.mcp = await peek_for_routing(ex, runtime.mcp)  # type: ignore[arg-type]
                if mcp is None:
                    return
                attach(ex, mcp)  # policies reading the body go on from what the peek read
                port, sni = _conn_facts(ex, router) if router.needs_conn else (None, None)
                match = router.match(req.method, req.target, host, req.headers, routing_key(mcp), port, sni)
            if match is None and runtime.well_known is not None:
                # an ai-mcp-oauth2 metadata path no route covers: routed as its resource is, the plugin answers it
                port, sni = _conn_facts(ex, router) if router.needs_conn else (None, None)
                match = runtime.well_known.route(router, req.method, req.target, host, req.headers, port, sni)
            if match is None:
                ex.phases = runtime.global_phases  # Kong runs the global plugins' header_filter on a 404
                await ex.respond_error(404, NO_ROUTE)
                return
            route = match.payload
            if route.https_redirect is not None:  # an https-only route
                forwarded = kong_forwarded_reads(req.headers) if ex.peer_trusted else _NOT_FORWARDED
                if _scheme(ex, forwarded) != b"https":
                    # answered by Kong's router step, before ctx.route is set and any plugin collected: the
                    # global ones'
                    ex.phases = runtime.global_phases
                    await _use_https(ex, route.https_redirect, host, forwarded)
                    return
            ex.route = route
            if route.audit is not None:  # ai-mcp-proxy's audit log: a line per tools/call once the request is over
                if ex.state is None:
                    ex.state = {}
                ex.state[AUDIT] = (route.audit, route.name)
            if match.captures is not None:  # a regex path with groups: for the policies' templates and echo
                if ex.state is None:
                    ex.state = {}
                ex.state[URI_CAPTURES] = match.captures
            target = req.target
            ex.phases = route.phases
            try:
                if route.consumer_policies is None:
                    for policy in route.policies:
                        if await policy.access(ex):
                            _answered_in_access(ex, match.path)
                            return
                elif await _run_scoped(ex, route):
                    _answered_in_access(ex, match.path)
                    return
            except (ProtocolError, RequestFailed, BrokenPipeError, ConnectionError):  # (RequestFailed: the body
                raise  # could not be stored, nginx's own 500, not the plugin's failure)
            except Exception:
                if ex.response_started:  # it failed mid-answer: the connection loop cuts the connection
                    raise
                _answered_in_access(ex, match.path)
                await _plugin_failed(ex)
                return
            state = ex.state
            if req.target is not target or (state is not None and UPSTREAM_PATH in state):
                # a policy changed the query (key-auth's hide_credentials) or the path (request-transformer)
                match = match.rewritten(state.get(UPSTREAM_PATH) if state else None, req.target.partition(b"?")[2])
            if state is not None:  # a policy read the body (rate limiting by MCP tool, ai-mcp-proxy)
                mcp = ex.mcp = current(ex)
            if route.mcp is not None:
                mcp = ex.mcp = await route.mcp.inbound(ex, mcp)
                if mcp is None:
                    return
            await self.forwarder.forward(ex, route, match, mcp)
        except ProtocolError as e:
            failed = answered_status(e.status)
            raise
        except (BrokenPipeError, ConnectionError):
            failed = CLIENT_CLOSED
            raise
        except Exception:
            failed = 500
            raise
        finally:
            self.log_phase.done(ex, started, self.runtime, failed)
            state = ex.state
            if state is not None and (audit := state.get(AUDIT)) is not None:
                audit[0].record(ex, started, audit[1])  # also when the client left mid-answer


    def log_refused(self, ex: Exchange) -> None:
        """The log phase of a request the connection loop refused before its head was read (nginx's 400, 408, 414):
        no route, so the global log plugins, the access log and the metrics, as Kong logs its error pages."""
        self.log_phase.done(ex, ex.started, self.runtime)


def _answered_in_access(ex: Exchange, path: bytes) -> None:
    """A plugin answered (or failed) in access: the log's upstream_uri is still the router's, as Kong's access.before
    set var.upstream_uri before the plugins ran."""
    if ex.state is None:
        ex.state = {}
    ex.state[ROUTER_PATH] = path


async def _plugin_failed(ex: Exchange) -> None:
    """A policy's access step raised: Kong's delayed response for a plugin's runtime error (init.lua
    execute_collecting_plugins_iterator, flush_delayed_response): kong.response.error(500, "An unexpected error
    occurred"), in the client's Accept format, through the chain's header and body filters (Kong collected every
    plugin, also those after the one that failed); the log phase then says source "error"."""
    log.exception("a plugin failed in access: %s %s", ex.request.method.decode("latin-1"),
                  ex.request.target[:200].decode("latin-1"))
    ex.close_after = True  # what the failed step left unread or half-done is not worth a kept connection
    await ex.respond_error(500)


def _conn_facts(ex: Exchange, router: Router[RouteRuntime]) -> tuple[int | None, bytes | None]:
    """What the router needs of the connection: the listener port, and the TLS server name (None: plain HTTP)."""
    conn = ex.conn
    return conn.sock.getsockname()[1] if router.needs_port else None, conn.server_name if router.needs_sni else None


async def _run_scoped(ex: Exchange, route: RouteRuntime) -> bool:
    """Run the chain, moving to the consumer's own chain (at the same point in priority order) whenever a policy
    changes who the request is: Kong looks each plugin up when its turn comes, for all its phases (plugins_iterator.lua
    get_next_and_collect), so the response phases and log steps of the plugins already passed stay those of the
    instances that were looked up then (a global correlation-id's, not the consumer's own), and the audit is the
    collected ai-mcp-proxy's. True if a policy answered."""
    policies = route.policies
    by_consumer: dict[str, list[Policy]] = route.consumer_policies  # type: ignore[assignment]
    chain = policies
    consumer = None
    collected = None
    i = 0
    while i < len(chain):
        policy = chain[i]
        i += 1
        if await policy.access(ex):
            return True
        if ex.consumer is not consumer:
            consumer = ex.consumer
            cid = consumer.id if consumer is not None and consumer.id in by_consumer else None
            new = by_consumer[cid] if cid is not None else policies
            if new is not chain:
                done = (-policy.priority, policy.name)
                i = next((j for j, p in enumerate(new) if (-p.priority, p.name) > done), len(new))
                chain = new
                # the response phases and log steps: those collected so far, up to this policy, then the new chain's
                collected = route.collect(collected, cid, done)
                ex.phases = collected.phases
                state = ex.state
                if state is None:
                    state = ex.state = {}
                state[COLLECTED_LOGGERS] = collected.loggers
                if collected.audit is not None:  # the collected ai-mcp-proxy's audit setting, not the route's
                    state[AUDIT] = (collected.audit, route.name)
                else:
                    state.pop(AUDIT, None)
    return False


def _scheme(ex: Exchange, forwarded: Mapping[bytes, bytes]) -> bytes:
    """The client's scheme: the connection's, or the X-Forwarded-Proto Kong reads off a trusted balancer's request
    (`forwarded`: headers.kong_forwarded_reads), as sent (Kong's rule: `HTTPS` is not https; handler.lua:1236)."""
    return forwarded.get(b"x-forwarded-proto", ex.conn.scheme)


async def _use_https(ex: Exchange, status: int, host: bytes | None, forwarded: Mapping[bytes, bytes]) -> None:
    """Kong's answer to plain HTTP on an https-only route: 426 with Upgrade, or a redirect to the https URL, whose
    body is nginx's own page for the status (Kong's kong.response.exit(status) has none: nginx makes the answer)."""
    if status == 426:
        await ex.respond_error(426, "Please use HTTPS protocol",
                               [(b"connection", b"Upgrade"), (b"upgrade", b"TLS/1.2, HTTP/1.1")])
        return
    location = b"https://" + _forwarded_host(forwarded, host) + ex.request.target
    await ex.respond(status, nginx_page(status), b"text/html", [(b"location", location)])


def _forwarded_host(forwarded: Mapping[bytes, bytes], host: bytes | None) -> bytes:
    """Kong's forwarded_host: the X-Forwarded-Host Kong reads off a trusted balancer's request (`forwarded`,
    handler.lua:1237), else nginx's $host (the Host without its port, in lower case), so a redirect to https does not
    keep the plain listener's port; without a Host, $host is Kong's server_name (ngx_http_variables.c:1230-1236,
    kong/templates/nginx_kong.lua `server_name kong`)."""
    value = forwarded.get(b"x-forwarded-host")
    if value is not None:
        return value
    return nginx_host(host) if host else SERVER_NAME
