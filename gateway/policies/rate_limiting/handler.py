"""Kong's rate-limiting, cluster-exact: tokens come from leases the worker holds (gateway.ratelimit), never from
a round trip per request. Over the limit: 429 (error_code) with Retry-After (none with hide_client_headers, as
Kong) and a JSON body; a JSON-RPC request limited by MCP method or tool gets a JSON-RPC error instead (with its id,
code RATE_LIMITED, data.retry_after).

Counters are Kong's: keyed by the route and service the plugin is configured on and the identifier, never by the
plugin's id, consumer or limits (policies/init.lua:50-72, EMPTY_UUID for a missing route or service), so instances
of one route and service (a global one and a consumer's) count on one counter, each with its own limits."""

from __future__ import annotations

from collections.abc import Callable
from hashlib import sha256
from time import monotonic, time

import trio

from gateway.http.server import Exchange
from gateway.mcp.governance import error_response
from gateway.mcp.jsonrpc import MAX_BATCH
from gateway.mcp.ratekeys import MAX_NAME, NOT_RPC, TOO_LARGE, UNREADABLE, WHOLE_LIMIT, BatchIds, counted
from gateway.metrics import LOCAL_SHARE, RATELIMIT_ADMITTED, RATELIMIT_REJECTED, RECORDER
from gateway.policies.header_list import request_header
from gateway.policies.rate_limiting.schema import RateLimitingConfig
from gateway.ratelimit.headers import RateLimitHeaders, header_pairs
from gateway.ratelimit.lease import WAIT_S, Decision, LeaseTable, Status
from gateway.ratelimit.redis_client import RedisSettings
from gateway.ratelimit.remote import wait_s
from gateway.ratelimit.spec import LimitSpec, spec_tag
from gateway.routing.normalize import normalize_path


class SharedStore:
    """A plugin's Redis (policy redis), as the state keeper needs it: where, and whether to fail open."""

    __slots__ = ("name", "settings", "fault_tolerant", "sync_rate")

    def __init__(self, name: str, config: RateLimitingConfig) -> None:
        r = config.redis
        self.name = name
        self.settings = RedisSettings(r.host or "", r.port, r.timeout, r.username, r.password, r.database, r.ssl,
                                      r.ssl_verify, r.server_name)
        self.fault_tolerant = config.fault_tolerant
        self.sync_rate = config.sync_rate


def identifier(ex: Exchange, limit_by: str) -> str:
    """Kong's get_identifier for limit_by consumer, credential and ip (rate-limiting's and response-ratelimiting's).

    consumer: the authenticated (or anonymous) consumer's id, else the credential's (a token that names no consumer,
    ai-mcp-oauth2); credential: the id of the credential it authenticated with (the anonymous consumer has none);
    either missing, and ip: the client's address (a trusted balancer's forwarded one: Exchange.client_ip)."""
    if limit_by == "consumer" or limit_by == "credential":
        who = ex.consumer
        if who is not None:
            ident = who.credential_id if limit_by == "credential" or who.id is None else who.id
            if ident is not None:
                return ident
    return ex.client_ip


RATE_LIMITED = -32029  # the JSON-RPC error code of a call refused by a limit (429 in the server-error range)
EMPTY_UUID = "00000000-0000-0000-0000-000000000000"  # Kong's id in a key for a plugin's missing route or service


def kong_scope(route_id: str | None, service_id: str | None) -> str:
    """`<route id>:<service id>` of Kong's counter keys for a plugin configured on that route and service
    (policies/init.lua:50-72; response-ratelimiting's are scoped alike, gateway.policies.response_ratelimiting)."""
    return f"{route_id or EMPTY_UUID}:{service_id or EMPTY_UUID}"


class RateLimiting:
    name = "rate-limiting"
    priority = 910  # Kong's

    def __init__(self, config: RateLimitingConfig, plugin_id: str, shared: object,
                 owner_ids: tuple[str | None, str | None] = (None, None)) -> None:
        """`owner_ids`: the ids of the route and service the plugin is configured on (None: none), which Kong's
        counter keys hold (get_service_and_route_ids); `plugin_id` names its metrics and its Redis."""
        self.spec = LimitSpec.from_plugin(config, plugin_id)
        self.store = SharedStore(plugin_id, config) if config.policy == "redis" else None
        # a request waits for a grant as long as the keeper waits for the plugin's Redis (remote.py rule 4)
        self.wait_s = wait_s(self.store.settings.timeout_s) if self.store is not None else WAIT_S
        self.shared = shared
        self.leases: LeaseTable | None = getattr(shared, "leases", None)
        self.local_share = LOCAL_SHARE.labels(plugin_id)
        # gateway_ratelimit_admitted_total / _rejected_total: one count per window (an admitted request passed
        # them all; a rejected one is counted against the window that was exhausted, or the bucket)
        self.windows = [w.period for w in self.spec.windows] + (["bucket"] if self.spec.bucketed else [])
        self.admitted = [(RATELIMIT_ADMITTED, (plugin_id, w)) for w in self.windows]
        self.plugin_id = plugin_id
        # a key: the spec's tag (its own leases and keeper state, gateway.ratelimit.spec), then Kong's counter:
        # `<route id>:<service id>|<identifier>`
        scope = spec_tag(self.spec) + kong_scope(*owner_ids)
        self.prefix = scope + "|"
        # an identifier past MAX_NAME characters is counted under its digest, so a client's long header value does not
        # make a long key (in every worker's leases and the keeper's ledger); "#", not "|", after the scope keeps such
        # keys apart from every short identifier's
        self.digest_prefix = scope + "#"
        self.limit_by = config.limit_by
        # kong.request.get_header(header_name) gets the name as configured: $http_<name> matches any case, "_" and
        # "-" alike, but a repeated header is looked up in get_headers() by it, where `x_id` finds `x_id` lines
        # before `x-id` ones (lower-cased here once: that table lower-cases a name first)
        self.header = (config.header_name or "").lower().encode()
        self.path = config.path or ""
        self.headers = None if config.hide_client_headers else RateLimitHeaders(
            self.spec, [getattr(config, w.period) for w in self.spec.windows])  # Kong reports 2.5 as 2.5
        self.error_code = config.error_code
        self.error_message = config.error_message
        # limit_by mcp-method / mcp-tool: what the body calls is counted (gateway.mcp.ratekeys)
        self.mcp = config.limit_by in ("mcp-method", "mcp-tool")
        self.tools = config.limit_by == "mcp-tool"
        # How a request's counter key is made (Kong's get_identifier, after the plugin's prefix): a function of
        # the class, not a bound method, so that the plugin holds no reference cycle
        self.by: Callable[[RateLimiting, Exchange], str] = {
            "service": RateLimiting._by_service, "path": RateLimiting._by_path,
            "header": RateLimiting._by_header}.get(config.limit_by, RateLimiting._by_identity)
        # limit_by path: the configured path (Kong's typedefs.path, so ASCII) and its key, built once
        self.path_bytes = self.path.encode("ascii", "replace")
        self.path_key = self._key(self.path)
        # a target equal to it needs no normalizing only if normalizing leaves it as it is (Kong compares the
        # normalized path: a `path` such as /a%41, /a%2fb or /a/./b never matches); b"" matches no target
        self.path_normal = self.path_bytes if normalize_path(self.path_bytes) == self.path_bytes else b""
        # limit_by service: route -> its service's key (built on a route's first request; as many as the config has
        # routes, and gone with the config)
        self.route_keys: dict[object, str] = {}

    def key(self, ex: Exchange) -> str:
        """The counter key of a request (not for limit_by mcp-method / mcp-tool, which count what the body calls):
        the plugin's prefix and Kong's identifier for limit_by, which falls back to the client's IP."""
        return self.by(self, ex)

    def _key(self, ident: str) -> str:
        """The counter key of an identifier: the plugin's prefix and the identifier, or past MAX_NAME characters its
        digest (as gateway.mcp.ratekeys counts long names)."""
        if len(ident) <= MAX_NAME:
            return self.prefix + ident
        return self.digest_prefix + sha256(ident.encode("utf-8", "surrogatepass")).hexdigest()

    def _by_identity(self, ex: Exchange) -> str:
        """consumer, credential, ip: like Kong, a missing consumer or credential falls back to the client's IP."""
        ident = identifier(ex, self.limit_by)
        return self.prefix + ident if len(ident) <= MAX_NAME else self._key(ident)

    def _by_header(self, ex: Exchange) -> str:
        """Kong's kong.request.get_header(header_name): nginx's $http_<name> (every Cookie line joined by "; ", of
        another header the first line: gateway.policies.header_list.request_header); without one, the client's IP."""
        value = request_header(ex.request.headers, self.header)
        if value is None:
            return self._key(ex.client_ip)
        if len(value) <= MAX_NAME:
            return self.prefix + value.decode("latin-1")
        return self.digest_prefix + sha256(value).hexdigest()  # (the bytes the client sent, not re-encoded)

    def _by_service(self, ex: Exchange) -> str:
        """Kong's kong.router.get_service().id: the matched route's service (its configured id, else the one the
        gateway derives from its name, gateway.telemetry.entities: the same on every worker and host, and the id
        logs show); a route without a service: the client's IP. A plugin on a service or a route thus has one counter
        (per scope); a global one, or one on a consumer, counts each service apart."""
        key = self.route_keys.get(ex.route)
        if key is None:
            route = ex.route
            facts = route.facts if route is not None else None
            service_id = facts.service_id if facts is not None else ""
            if not service_id:
                return self._key(ex.client_ip)
            key = self.route_keys[route] = self._key(service_id)
        return key

    def _by_path(self, ex: Exchange) -> str:
        """Kong's: the path is the identifier only for a request whose kong.request.get_path() (the path of the
        target the client sent, without the query, normalized as the router normalizes it) is `path`, exactly;
        any other request is counted by the client's IP."""
        uri = ex.request_uri()
        if uri == self.path_normal:  # the configured path, sent as it is normalized: nothing to normalize
            return self.path_key
        query = uri.find(b"?")
        if normalize_path(uri if query < 0 else uri[:query]) == self.path_bytes:
            return self.path_key
        return self._key(ex.client_ip)

    async def access(self, ex: Exchange) -> bool:
        leases = self.leases
        if leases is None:
            return False
        if self.mcp:
            return await self._access_mcp(ex, leases)
        key = self.by(self, ex)
        now, wall = monotonic(), time()  # the lease table's clocks
        lease = leases.spend(key, self.spec, now, wall)
        if lease is not None:  # the common case: a leased token, no Decision to build
            counts = RECORDER.counts
            for admitted in self.admitted:
                counts[admitted] += 1
            if self.headers is not None:
                if ex.phases is None:  # no header filter at all: the fast path, as in `_report`
                    ex.add_response_lines(self.headers.admitted(lease, wall))
                else:
                    self._report(ex, self.headers.admitted(lease, wall))
            return False
        return await self._decide(ex, leases, key, now, wall)

    def _report(self, ex: Exchange, lines: bytes) -> None:
        """Kong sets the headers in access (ngx.header), so every header filter of the request sees them: when one
        runs after this plugin in the chain (response-transformer removing or renaming them, adding one only when
        absent), they are set before the filters run (Exchange.set_response_headers); else (none, or only ones of
        higher priority, which set headers of their own: correlation-id, cors) they are appended to the head as
        they are, formatted: the fast path."""
        phases = ex.phases
        filters = phases.header_filters if phases is not None else None
        if filters and filters[-1].priority < self.priority:  # (the chain is in priority order: the last is latest)
            ex.set_response_headers(header_pairs(lines))
        else:
            ex.add_response_lines(lines)

    async def _access_mcp(self, ex: Exchange, leases: LeaseTable) -> bool:
        """limit_by mcp-method / mcp-tool: one token per method or tool the body calls (a batch: per element)."""
        found = await counted(ex, self.tools)
        if found is TOO_LARGE:
            ex.close_after = True
            await ex.respond(413, error_response(None, -32600, f"a body over {WHOLE_LIMIT} bytes cannot be rate "
                                                 "limited by method or tool"))
            return True
        if found is UNREADABLE:
            await ex.respond(400, error_response(None, -32600, "the body cannot be read as JSON-RPC calls (or is a "
                                                 f"batch of more than {MAX_BATCH}): it cannot be rate limited by "
                                                 "method or tool"))
            return True
        assert isinstance(found, list)  # TOO_LARGE and UNREADABLE are the only other answers
        last = len(found) - 1
        for i, (name, rpc_id) in enumerate(found):
            key = self._key(name)
            now, wall = monotonic(), time()
            lease = leases.spend(key, self.spec, now, wall)
            if lease is not None:
                if self.headers is not None and i == last:
                    self._report(ex, self.headers.admitted(lease, wall))
                continue
            if await self._decide(ex, leases, key, now, wall, rpc_id, headers=i == last):
                return True
        return False

    async def _decide(self, ex: Exchange, leases: LeaseTable, key: str, now: float, wall: float,
                      rpc_id: object = NOT_RPC, headers: bool = True) -> bool:
        """Everything but a leased token: wait for a grant, the local share, a delay, a denial or a 500."""
        decision = leases.take(key, self.spec, now, wall)
        if decision.status == Status.WAIT:
            decision = await self._wait_grant(leases, key, now + self.wait_s)
        if decision.status == Status.ADMIT:
            for admitted in self.admitted:
                RECORDER.counts[admitted] += 1
            if decision.local is not None:
                self.local_share.inc()
            if decision.delay:
                await trio.sleep(decision.delay)  # limit-req without nodelay: nginx delays, it does not reject
            if self.headers is not None and headers:
                self._report(ex, self.headers.decided(decision))
            return False
        if decision.status == Status.UNAVAILABLE:  # fault_tolerant is off and Redis is away or slow (Kong: 500)
            await ex.respond_error(500)  # Kong: "An unexpected error occurred"
            return True
        RECORDER.count(RATELIMIT_REJECTED, (self.plugin_id, self._exhausted(decision)))
        if self.headers is not None:  # Kong: hide_client_headers hides Retry-After too
            self._report(ex, self.headers.decided(decision))
        if rpc_id is NOT_RPC or rpc_id == []:  # (a batch of notifications only: no JSON-RPC answer is due)
            await ex.respond_error(self.error_code, self.error_message)  # keep-alive, as Kong (a small body is read)
            return True
        data = {"retry_after": decision.retry_after}
        if type(rpc_id) is BatchIds:
            await ex.respond(self.error_code, b"[" + b",".join(error_response(i, RATE_LIMITED, self.error_message, data)
                                                               for i in rpc_id) + b"]")
            return True
        await ex.respond(self.error_code, error_response(rpc_id, RATE_LIMITED, self.error_message, data))
        return True

    def _exhausted(self, decision: Decision) -> str:
        """The window a denial is for: the first with nothing left, else the token bucket."""
        if decision.spec is not None:
            for i, window in enumerate(decision.spec.windows):
                if decision.remaining(i) <= 0:
                    return window.period
        return "bucket" if self.spec.bucketed else (self.windows[0] if self.windows else "")

    async def _wait_grant(self, leases: LeaseTable, key: str, deadline: float) -> Decision:
        """Wait for the keeper's grant until `deadline` (a lost keeper ends the wait sooner: local shares)."""
        while True:
            await self.shared.wait_grant(key, max(0.0, deadline - monotonic()))  # type: ignore[attr-defined]
            now = monotonic()
            decision = leases.take(key, self.spec, now, time(), waited=True, final=now >= deadline)
            if decision.status != Status.WAIT:
                return decision
