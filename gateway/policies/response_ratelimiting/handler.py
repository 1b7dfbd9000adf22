"""Kong's response-ratelimiting: limits counted from what the upstream says each response cost.

access: the counters of every (name, period) of the identifier (limit_by, as rate-limiting's) are read once; the
upstream request gets X-RateLimit-Remaining-<name>; with block_on_first_violation a used-up name answers 429 "API
rate limit exceeded for '<name>'". Counters that cannot be read (policy redis: Redis away; policy local's cannot
fail, as Kong's shared dict): Kong's 500 unless fault_tolerant (then the request goes on unlimited, without the
headers).
header_filter: the upstream's `header_name` header (`name=n, ...`) is read (among the lines Kong's
kong.service.response.get_header reads: router.resp_get_headers) and removed; the client gets
X-RateLimit-Limit-<name>-<period> and X-RateLimit-Remaining-<name>-<period> unless hide_client_headers; a positive
increment for a name already used up turns the response into a 429 without a body (phases.Exit).
log: the increments are added to the counters (all six periods of each name), unless the response became that 429.
The arithmetic is in usage.py, the period windows in periods.py, the stores in counters.py.
"""

from __future__ import annotations

import logging
import time

from gateway.http.codec import Headers
from gateway.http.server import Exchange
from gateway.pipeline.phases import Exit
from gateway.policies.header_list import clear_header, get_header, set_header
from gateway.policies.rate_limiting.handler import identifier
from gateway.policies.response_ratelimiting.counters import LocalCounters, RedisCounters, UsageError
from gateway.policies.response_ratelimiting.periods import Clock, Window
from gateway.policies.response_ratelimiting.schema import ResponseRateLimitingConfig
from gateway.policies.response_ratelimiting.usage import Plan, kong_scope, parse_increments
from gateway.ratelimit.redis_client import RedisSettings
from gateway.routing.router import MAX_RESP_HEADERS, resp_get_headers  # lua_max_resp_headers

log = logging.getLogger("gateway.policies.response_ratelimiting")

LOG_EVERY_S = 1.0  # "failed to get usage" is logged at most this often per plugin (Kong: every request)


class _Request:
    """What access found, for the response's phases (Kong's kong.ctx.plugin)."""

    __slots__ = ("identifier", "windows", "remaining", "increments", "stopped")

    def __init__(self, ident: str, windows: tuple[Window, ...], remaining: list[float]) -> None:
        self.identifier = ident
        self.windows = windows
        self.remaining = remaining
        self.increments: dict[str, int] | None = None  # the usage the response declared (None: no response yet)
        self.stopped = False  # the response became the 429: nothing is counted


class ResponseRateLimiting:
    name = "response-ratelimiting"
    priority = 900  # Kong's
    entries = False  # a log step (gateway.telemetry.phase) taking the raw facts: the increments are added there

    def __init__(self, config: ResponseRateLimitingConfig, plugin_id: str, shared: object,
                 owner_ids: tuple[str | None, str | None] = (None, None)) -> None:
        """`owner_ids`: the ids of the route and service the plugin is configured on (None: none), which Kong's
        counter keys hold (usage.kong_scope)."""
        self.plan = Plan(config.limits)
        self.scope = kong_scope(*owner_ids)
        self.state_key = "response-ratelimiting:" + plugin_id  # this instance's _Request in Exchange.state
        self.limit_by = config.limit_by
        # Kong reads and clears it through kong.service.response.get_header / kong.response.clear_header, whose
        # names are case-insensitive with "_" for "-"
        self.header = config.header_name.lower().replace("_", "-").encode()
        self.fault_tolerant = config.fault_tolerant
        self.block = config.block_on_first_violation
        self.hide = config.hide_client_headers
        self.clock = Clock()
        self.counters: LocalCounters | RedisCounters
        self.background: list[object] = []
        if config.policy == "redis":
            r = config.redis
            self.counters = RedisCounters(RedisSettings(r.host or "", r.port, r.timeout, r.username, r.password,
                                                        r.database, r.ssl, r.ssl_verify, r.server_name))
            self.background = [self.counters.run]  # in the worker's nursery (gateway.worker)
        else:
            self.counters = LocalCounters(shared)
        self._logged_at = -LOG_EVERY_S

    async def access(self, ex: Exchange) -> bool:
        now = int(time.time())  # Kong's timestamp.get_utc(): whole seconds
        ident = identifier(ex, self.limit_by)
        windows = self.clock.windows(now)
        plan = self.plan
        try:
            counts = await self.counters.usage(plan.usage_keys(self.scope, ident, windows), plan.usage_ends(windows))
        except UsageError as e:
            self._failed(e)
            if not self.fault_tolerant:
                await ex.respond_error(500)  # Kong's error(err): "An unexpected error occurred"
                return True
            return False
        remaining = plan.remaining(counts)
        if self.block:
            name = plan.violation(remaining)
            if name is not None:
                await ex.respond_error(429, f"API rate limit exceeded for '{name}'")
                return True
        headers = list(ex.request.headers)
        for header, value in plan.upstream_headers(remaining):
            set_header(headers, header, value)
        ex.request.headers = headers
        if ex.state is None:
            ex.state = {}
        ex.state[self.state_key] = _Request(ident, windows, remaining)
        return False

    def header_filter(self, ex: Exchange, status: int, headers: Headers) -> Headers:
        req = ex.state.get(self.state_key) if ex.state is not None else None
        if req is None:  # access did not run to its end (Kong: no usage): the header is left alone
            return headers
        plan = self.plan
        if req.increments is None:  # (a gateway page in place of the response whose usage was read: kept, as Kong
            read = headers if len(headers) < MAX_RESP_HEADERS else resp_get_headers(headers)  # counts a cut body's)
            req.increments = parse_increments(get_header(read, self.header), plan.names)
        if not self.hide:
            for name, value in plan.client_headers(req.remaining, req.increments):
                set_header(headers, name, value)
        clear_header(headers, self.header)
        if plan.exceeded(req.remaining, req.increments):
            req.stopped = True
            raise Exit(429, headers)
        return headers

    def log(self, ex: Exchange, started: float, ended: float, status: int) -> None:
        req = ex.state.get(self.state_key) if ex.state is not None else None
        if req is None or req.stopped or not req.increments:
            return
        items = self.plan.increments(self.scope, req.identifier, req.windows, req.increments, time.time())
        if items:
            self.counters.increment(items)

    def _failed(self, error: UsageError) -> None:
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_S:
            self._logged_at = now
            log.error("response-ratelimiting: failed to get usage: %s", error)
