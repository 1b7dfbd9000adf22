"""The status server's ASGI app: /health, /ready, /live and /metrics, in erlmcp's shapes.

    GET /health  -> 200 | 503  {"status": "healthy"|"degraded"|"unhealthy", "version", "uptime", "node",
                                "timestamp" (ms since the epoch, as the guide's erlang:system_time(millisecond)),
                                "time" (the same, ISO 8601), "checks": {"workers": {"status", "details"}, ...}}
    GET /ready   -> 200 | 503  {"ready": bool, "node", "timestamp", "checks": {name: "ready"|"not_ready"}}
    GET /live    -> 200        {"alive": true, "node", "uptime", "timestamp"}
    GET /metrics -> 200        Prometheus text 0.0.4 as Kong writes it (gateway.status.collect.encode_text), with
                               Kong's Content-Type, whatever the Accept (as Kong's exporter), from the registry given;
                               Kong's Status API route (its methods and trailing slash, as /status's)
    GET /status  -> 200        Kong's Status API /status JSON (gateway.status.kong); the status page
                               (gateway.status.page), when the app has one, to a request whose Accept prefers
                               text/html (a browser); /status.json the page's data
    GET /status/ready          Kong's readiness; POST /status/ready status=draining: 503 "draining" until a reload
    GET /status/dns  -> 501    Kong's answer with its legacy DNS client (new_dns_client off, the only one here)
    GET /upstreams/{u}/targets[/all|/{t}], /upstreams/{u}/health: Kong's read-only upstream routes (gateway.status.kong)
    /robots.txt* -> 200        Kong's `User-agent: *` / `Disallow: /` (its status server's prefix location)

Any other path is Kong's Status API's: 404 {"message": "Not found"}; a POST, PUT or PATCH whose body is not JSON, a
form or multipart is 415 there before any route answers (Kong's before_filter). Kong's JSON answers carry
`application/json; charset=utf-8`, as kong.response.exit writes them.

Every 200 passes nginx's conditional checks (`not_modified`), as on Kong's status server, an nginx server block.

/health answers 200 only when every check is healthy: degraded counts as not healthy (503), so a load balancer
in front takes a degraded gateway out. Checks run concurrently, each bounded by `check_timeout`; a check that
raises or times out is unhealthy with the reason in its details (erlmcp's try/catch around each check).
The data comes from a `StatusSource`; the root supplies the live one, tests a fake.
Every answer but /robots.txt's gets what Kong's admin_header_filter adds (Kong.status_header_filter is it:
kong/init.lua), as far as kong.conf's `headers` turns them on: `Server: <token>` and `X-Kong-Admin-Latency` (ms from
the request to its head).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, runtime_checkable

import msgspec
import trio
from prometheus_client import REGISTRY, CollectorRegistry

from gateway.http.conditional import NOT_MODIFIED_DROPS, precondition
from gateway.http.kong_headers import ADMIN_LATENCY, SERVER_TOKEN, enabled
from gateway.status import kong
from gateway.status.collect import ConnectionCounts

log = logging.getLogger("gateway.status")

HealthStatus = Literal["healthy", "degraded", "unhealthy"]
CHECKS = ("workers", "bus", "discovery", "upstreams", "memory")
_ORDER = {"healthy": 0, "degraded": 1, "unhealthy": 2}
KONG_HEADERS = "server_tokens, latency_tokens"  # kong.conf's default `headers`, as the Status API reads it


class CheckResult(msgspec.Struct):
    """One component's verdict; details are free-form JSON (counts, reasons, addresses)."""

    status: HealthStatus
    details: Any = None


@runtime_checkable
class StatusSource(Protocol):
    """Live data for the status server. Each method is awaited with a timeout; raising means unhealthy."""

    async def workers(self) -> CheckResult: ...

    async def bus(self) -> CheckResult: ...

    async def discovery(self) -> CheckResult: ...

    async def upstreams(self) -> CheckResult: ...

    async def memory(self) -> CheckResult: ...

    async def readiness(self) -> dict[str, bool]: ...


def _meminfo() -> dict[str, int]:
    out = {}
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            name, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                out[name] = int(parts[0]) * 1024
    return out


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def memory_check(warn_percent: float = 80.0, critical_percent: float = 90.0) -> CheckResult:
    """The host's memory in use (MemTotal - MemAvailable): healthy below 80 %, degraded below 90 %, else unhealthy
    (the guide's check_memory thresholds); the process's RSS is reported alongside."""
    details: dict[str, Any] = {"rss_bytes": _rss_bytes()}
    try:
        info = _meminfo()
        total, available = info["MemTotal"], info["MemAvailable"]
    except (OSError, KeyError):
        details["note"] = "system memory unknown on this platform"
        return CheckResult("healthy", details)
    usage = (total - available) / total * 100 if total else 0.0
    details.update({"usage_percent": round(usage, 1), "system_total_bytes": total,
                    "system_available_bytes": available})
    status: HealthStatus = "healthy" if usage < warn_percent else "degraded" if usage < critical_percent \
        else "unhealthy"
    return CheckResult(status, details)


class BaseStatusSource:
    """A StatusSource with placeholders: subclass and override what exists. Memory is real."""

    async def workers(self) -> CheckResult:
        return CheckResult("healthy", {"note": "not reported"})

    async def bus(self) -> CheckResult:
        return CheckResult("healthy", {"note": "not reported"})

    async def discovery(self) -> CheckResult:
        return CheckResult("healthy", {"note": "no discovery configured"})

    async def upstreams(self) -> CheckResult:
        return CheckResult("healthy", {"note": "no active health checks configured"})

    async def memory(self) -> CheckResult:
        return memory_check()

    async def readiness(self) -> dict[str, bool]:
        return {}


def overall(statuses: list[str]) -> HealthStatus:
    """The worst of the checks' statuses; anything unknown counts as unhealthy."""
    worst = max((_ORDER.get(s, 2) for s in statuses), default=0)
    return ("healthy", "degraded", "unhealthy")[worst]  # type: ignore[return-value]


def _timestamp() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


class StatusApp:
    """ASGI 3 app (run by hypercorn's trio worker: the checks use trio)."""

    def __init__(self, source: StatusSource, registry: CollectorRegistry | None = None, *, version: str = "",
                 node: str | None = None, started_at: float | None = None, check_timeout: float = 2.0,
                 prepare: Callable[[list[int]], None] | None = None, page: Any = None,
                 families: Callable[[], list[Any]] | None = None, config: Callable[[], Any] | None = None,
                 config_text: Callable[[], str | None] | None = None,
                 node_id: Callable[[], str] | None = None,
                 statistics: Callable[[], dict[str, int]] | None = None,
                 headers: Callable[[], list[str] | str] | None = None) -> None:
        self.source = source
        # kong.conf's `headers` as now loaded (it changes on a reload), and what it turns on: (setting, Server, latency)
        self.headers = headers or (lambda: KONG_HEADERS)
        self._admin_on: tuple[object, bool, bool] = (None, False, False)
        self.registry = registry if registry is not None else REGISTRY
        # run before each scrape with the workers' pids, in this thread (flush the root's counts, sweep dead pids)
        self.prepare = prepare
        self.version = version
        self.node = node or f"gateway@{socket.gethostname()}:{os.getpid()}"
        self.started_at = started_at if started_at is not None else time.time()
        self.check_timeout = check_timeout
        self.routes: dict[str, Callable[[dict[str, Any]], Awaitable[tuple[int, list[tuple[bytes, bytes]], bytes]]]] = {
            "/health": self.health, "/ready": self.ready, "/live": self.live, "/metrics": self.metrics,
            "/status/ready": self.kong_ready, "/status": self.kong_status, "/status/dns": self.kong_dns}
        self.page = page  # gateway.status.page.StatusPage: /status (HTML, for browsers) and /status.json
        if page is not None:
            self.routes["/status.json"] = self.status_data
        # Kong's Status API reads: every process's metric families (the page's, else the registry's), the loaded
        # config and its text (none given: no config), the node id (of the config, unless given).
        self.families = families or getattr(page, "families", None) or (lambda: list(self.registry.collect()))
        # the status server's own connections and requests (gateway.status.server counts them), which nginx counts
        # with the others: in /status "server" and the registry's kong_nginx_* counters
        self.counts = ConnectionCounts()
        if (include := getattr(self.registry, "include", None)) is not None:
            include(self.counts)
        # /status "server" (a thread): the registry's own reader of the few families it needs when it has one
        # (gateway.status.collect.GatewayRegistry), else derived from every family
        self.statistics = statistics or getattr(self.registry, "server_statistics", None) or self._statistics
        self.config = config or (lambda: None)
        self.config_text = config_text or (lambda: None)
        self.node_id = node_id or (lambda: _node_id(self.config()))
        self.kong_upstreams = kong.KongUpstreamRoutes(self.config, self.keeper_targets, self.node_id)
        self.draining = False  # Kong's kong:status:ready false: set by POST /status/ready, cleared by a reload

    def reloaded(self) -> None:
        """The gateway has reloaded its config: forget the draining flag, as `kong reload` flushes the kong shm
        but for its preserved keys, kong:status:ready not among them (kong/init.lua reset_kong_shm)."""
        if self.draining:
            log.info("status: reload: /status/ready no longer answers draining (POST status=draining again to drain)")
        self.draining = False

    @property
    def uptime(self) -> int:
        return int(time.time() - self.started_at)

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        started = time.monotonic()
        path = KONG_SLASHED.get(scope["path"], scope["path"])
        handler = self.routes.get(path)
        method = scope["method"]
        robots = path.startswith("/robots.txt")  # Kong's `location /robots.txt` (a prefix), without Lua
        upstream_route = kong.KongUpstreamRoutes.match(path) if handler is None else None
        if robots:
            status, headers, body = _robots(path)
        elif method in NEEDS_BODY and path not in GATEWAY_PATHS and _unsupported_body(scope):
            status, headers, body = 415, [(b"content-type", b"application/json")], b""  # (the default_type)
        elif upstream_route is not None or path.startswith("/upstreams/") or path == "/upstreams":
            status, headers, body = await self.kong_upstream(scope, upstream_route)
        elif path == "/status/ready" and method == "POST":
            status, headers, body = await self.kong_drain(scope, receive)
        elif path == "/status/ready" and method not in ("GET", "HEAD"):
            status, headers, body = _kong_method(method, b"GET, HEAD, OPTIONS, POST")
        elif path in KONG_GET_PATHS and method not in ("GET", "HEAD"):
            status, headers, body = _kong_method(method)
        elif handler is None:
            status, headers, body = _json(404, kong.NOT_FOUND)
        elif method not in ("GET", "HEAD"):
            status, headers, body = _json(405, {"error": f"method {method} not allowed"})
            headers.append((b"allow", b"GET, HEAD"))
        else:
            status, headers, body = await handler(scope)
        status, headers, body = not_modified(scope["headers"], status, headers, body)
        if status != 304:
            headers.append((b"content-length", str(len(body)).encode()))
        if not robots:
            self._add_admin_headers(headers, started)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})

    def _add_admin_headers(self, headers: list[tuple[bytes, bytes]], started: float) -> None:
        """Kong's admin_header_filter: X-Kong-Admin-Latency (ms since `started`) and Server, when `headers` has them
        on (the setting read anew only when a reload changed it)."""
        setting = self.headers()
        if setting is not self._admin_on[0]:
            on = enabled(setting)
            self._admin_on = (setting, "server" in on, ADMIN_LATENCY in on)
        _, server, latency = self._admin_on
        if latency:
            headers.append((b"x-kong-admin-latency", b"%d" % ((time.monotonic() - started) * 1000.0 + 0.5)))
        if server:
            headers.append((b"server", SERVER_TOKEN))

    # ---- endpoints ----------------------------------------------------------------------------------------------

    async def run_check(self, name: str) -> CheckResult:
        try:
            with trio.fail_after(self.check_timeout):
                result = await getattr(self.source, name)()
        except trio.TooSlowError:
            return CheckResult("unhealthy", {"error": f"no answer within {self.check_timeout:g}s"})
        except Exception as e:  # a broken check is an unhealthy component, never a 500
            log.exception("status: the %s check failed", name)
            return CheckResult("unhealthy", {"error": f"{e.__class__.__name__}: {e}"})
        if not isinstance(result, CheckResult) or result.status not in _ORDER:
            return CheckResult("unhealthy", {"error": f"invalid check result {result!r}"})
        return result

    async def checks(self) -> dict[str, CheckResult]:
        results: dict[str, CheckResult] = {}

        async def one(name: str) -> None:
            results[name] = await self.run_check(name)

        async with trio.open_nursery() as nursery:
            for name in CHECKS:
                nursery.start_soon(one, name)
        return {name: results[name] for name in CHECKS}

    async def health(self, scope: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        results = await self.checks()
        status = overall([r.status for r in results.values()])
        doc = {"status": status, "version": self.version, "uptime": self.uptime, "node": self.node,
               "timestamp": int(time.time() * 1000), "time": _timestamp(),
               "checks": {name: {"status": r.status, "details": r.details} for name, r in results.items()}}
        return _json(200 if status == "healthy" else 503, doc)

    async def readiness(self) -> tuple[dict[str, bool], str | None]:
        """The source's readiness parts, and the error of a check that failed (None: it answered)."""
        try:
            with trio.fail_after(self.check_timeout):
                return await self.source.readiness(), None
        except trio.TooSlowError:
            return {}, f"no answer within {self.check_timeout:g}s"
        except Exception as e:
            log.exception("status: the readiness check failed")
            return {}, f"{e.__class__.__name__}: {e}"

    async def ready(self, scope: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        parts, error = await self.readiness()
        ready = error is None and all(parts.values())
        doc: dict[str, Any] = {"ready": ready, "node": self.node, "timestamp": _timestamp(),
                               "checks": {k: "ready" if v else "not_ready" for k, v in parts.items()}}
        if error is not None:
            doc["error"] = error
        return _json(200 if ready else 503, doc)

    async def kong_ready(self, scope: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Kong's Status API readiness (kong/status/ready.lua), for probes written for Kong: 200 {"message":
        "ready"}, else 503 with what is not ready as the message; a loaded config without entities (the one whose
        /status configuration_hash is all zeros) is not ready, as Kong's is_dbless_ready says of the empty config's
        hash."""
        if self.draining:
            return _json(503, {"message": "draining"})
        parts, error = await self.readiness()
        if error is None:
            not_ready = [name for name, ok in parts.items() if not ok]
            config = self.config()
            if not_ready:
                error = "not ready: " + ", ".join(not_ready)
            elif config is not None and not kong.has_entities(config):
                error = "no configuration available (empty configuration present)"
            else:
                return _json(200, {"message": "ready"})
        return _json(503, {"message": error})

    async def kong_drain(self, scope: dict[str, Any], receive: Receive) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Kong's POST /status/ready: status=draining (query, form or JSON body) sets the node draining, so that
        GET /status/ready answers 503 {"message": "draining"} (a load balancer takes the node out) until a reload
        or a restart; 204. Anything else is 400."""
        body = await _read_body(receive, MAX_POST_BYTES)
        if body is None:
            return _json(413, {"message": "Request body too large"})
        status, doc = kong.ready_post(_header(scope, b"content-type"), body, kong.query_args(scope))
        if status != 204:
            return _json(status, doc)
        if not self.draining:
            log.warning("status: POST /status/ready status=draining: /status/ready answers 503 until a reload")
        self.draining = True
        return 204, [], b""

    async def kong_dns(self, scope: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Kong's GET /status/dns (kong/api/routes/dns.lua) with new_dns_client off, the only DNS client the
        gateway has: 501."""
        return _json(501, {"message": "not implemented with the legacy DNS client"})

    async def live(self, scope: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        return _json(200, {"alive": True, "node": self.node, "uptime": self.uptime, "timestamp": _timestamp()})

    async def metrics(self, scope: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Kong's exporter's text and Content-Type whatever the Accept (exporter.lua collect()): a Prometheus 2.x
        asking for OpenMetrics first still gets le="25" (its series of le="25.0" would be others)."""
        from gateway.status.collect import encode_text

        if self.prepare is not None:
            self.prepare(await self.worker_pids())
        body = await trio.to_thread.run_sync(encode_text, self.registry)  # collectors may read files (multiprocess)
        return 200, [(b"content-type", METRICS_CONTENT_TYPE), (b"cache-control", b"no-store")], body

    async def status_page(self, scope: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        body = await self.page.html()
        return 200, [(b"content-type", b"text/html; charset=utf-8"), (b"cache-control", b"no-store"),
                     (b"vary", b"Accept")], body

    async def kong_status(self, scope: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Kong's GET /status (kong/api/routes/health.lua, DB-less): memory, server, configuration_hash; the status
        page instead when there is one and the request's Accept prefers text/html."""
        if self.page is not None and kong.prefers_html(_header(scope, b"accept")):
            return await self.status_page(scope)
        memory_args = kong.memory_args(kong.query_args(scope))
        if isinstance(memory_args, str):
            return _vary(_json(400, {"message": memory_args}))
        unit, scale = memory_args
        pids = await self.worker_pids()
        if self.prepare is not None:
            self.prepare(pids)

        def read() -> tuple[dict[str, Any], dict[str, int], str]:
            return (kong.memory_stats(pids, unit, scale), self.statistics(),
                    kong.config_hash(self.config_text(), self.config()))

        memory, server, config_hash = await trio.to_thread.run_sync(read)  # files: metrics, /proc, the config
        return _vary(_json(200, {"memory": memory, "server": server, "configuration_hash": config_hash}))

    def _statistics(self) -> dict[str, int]:
        """/status "server" from every family and the status server's own counts (a registry without a reader of
        its own)."""
        from gateway.status.collect import server_statistics

        return server_statistics(self.families(), self.counts)

    async def worker_pids(self) -> list[int]:
        """The pids of the workers serving, as the workers check reports them (none when it cannot)."""
        workers = await self.run_check("workers")
        details = workers.details if isinstance(workers.details, dict) else {}
        return [p for p in details.get("pids") or () if isinstance(p, int) and p > 0]

    async def keeper_targets(self) -> list[dict[str, Any]] | None:
        """The keeper's target states (the source's overview), None when it does not answer (or there is none)."""
        overview = getattr(self.source, "overview", None)
        if overview is None:
            return None
        try:
            with trio.fail_after(self.check_timeout):
                answer = await overview()
        except Exception:  # a broken or slow keeper: health unknown, as Kong's when its balancer gives none
            log.exception("status: the keeper's target states are unavailable")
            return None
        targets = answer.get("targets") if isinstance(answer, dict) else None
        return targets if isinstance(targets, list) else None

    async def kong_upstream(self, scope: dict[str, Any], route: tuple[str, str, str | None] | None) \
            -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Kong's read-only upstream routes: GET (and HEAD), OPTIONS; 405 for another method, 404 elsewhere."""
        if route is None:
            return _json(404, kong.NOT_FOUND)
        method = scope["method"]
        if method not in ("GET", "HEAD"):
            return _kong_method(method)
        status, doc = await self.kong_upstreams.answer(*route, kong.query_args(scope))
        return _json(status, doc)

    async def status_data(self, scope: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        return _json(200, await self.page.data())


JSON_TYPE = b"application/json; charset=utf-8"  # kong.response.exit's for a table body (kong/pdk/response.lua:81)
METRICS_CONTENT_TYPE = b"text/plain; charset=UTF-8"  # Kong's exporter.lua collect(), whatever the Accept
# Kong's default_route drops the slash
KONG_SLASHED = {"/status/": "/status", "/status/ready/": "/status/ready", "/metrics/": "/metrics",
                "/status/dns/": "/status/dns"}
KONG_GET_PATHS = frozenset(("/status", "/metrics", "/status/dns"))  # Kong's routes with GET (and HEAD) alone
GATEWAY_PATHS = frozenset(("/health", "/ready", "/live", "/status.json"))  # the gateway's own, not Kong's Lapis app's
MAX_POST_BYTES = 64 * 1024  # a POST /status/ready body (status=draining) is a few bytes
# Kong's before_filter (kong/api/api_helpers.lua:241-270): the methods whose body it checks, the types it takes (its
# case-sensitive prefixes)
NEEDS_BODY = frozenset(("POST", "PUT", "PATCH"))
BODY_TYPES = ("application/json", "multipart/form-data", "application/x-www-form-urlencoded")


# The status server's `charset UTF-8` on nginx's own text/html and text/plain answers (kong/templates/nginx_kong.lua)
_HTML = b"text/html; charset=UTF-8"
# nginx's own 412 page (ngx_http_special_response.c's ngx_http_error_412_page, then the tail of `server_tokens off`,
# naming the server as gateway.http.kong_errors.nginx_page does): Kong's status server has no error_page
PRECONDITION_FAILED_PAGE = (b"<html>\r\n<head><title>412 Precondition Failed</title></head>\r\n<body>\r\n"
                            b"<center><h1>412 Precondition Failed</h1></center>\r\n"
                            b"<hr><center>mcp-gateway</center>\r\n</body>\r\n</html>\r\n")
# Kong's status server block: `location /robots.txt { return 200 'User-agent: *\nDisallow: /'; }`
ROBOTS_TXT = b"User-agent: *\nDisallow: /"
# the types nginx knows without a `types` block (ngx_http_core_default_types); any other extension: default_type
_DEFAULT_TYPES = {"html": _HTML, "gif": b"image/gif", "jpg": b"image/jpeg"}


def not_modified(request: list[tuple[bytes, bytes]], status: int, headers: list[tuple[bytes, bytes]], body: bytes) \
        -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """nginx's not_modified filter on the status server's answers, as on any 200 an nginx server block makes: a
    failed If-Match or If-Unmodified-Since is nginx's own 412 page (its headers cleared, as
    ngx_http_filter_finalize_request does), a matching If-None-Match a 304 without body; anything else as it is."""
    if status != 200 or not (verdict := precondition(request, headers)):
        return status, headers, body
    if verdict == 412:
        return 412, [(b"content-type", _HTML)], PRECONDITION_FAILED_PAGE
    return 304, [hv for hv in headers if hv[0] not in NOT_MODIFIED_DROPS], b""


def _robots(path: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """nginx's `return 200 '...'` in Kong's /robots.txt location: its type from the path's extension
    (ngx_http_set_exten, then ngx_http_set_content_type), text/plain (default_type) for `.txt`."""
    last = path.rpartition("/")[2]
    dot = last.rfind(".")
    exten = last[dot + 1:].lower() if dot > 0 else ""
    return 200, [(b"content-type", _DEFAULT_TYPES.get(exten, b"text/plain; charset=UTF-8"))], ROBOTS_TXT


def _header(scope: dict[str, Any], name: bytes) -> str:
    return ",".join(v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == name)


def _vary(answer: tuple[int, list[tuple[bytes, bytes]], bytes]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    answer[1].append((b"vary", b"Accept"))
    return answer


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The request's body, or None once it passes `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)  # (the client went away: what came is all there is)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _unsupported_body(scope: dict[str, Any]) -> bool:
    """Whether Kong's before_filter refuses the request's body (415): a Content-Type none of BODY_TYPES begins, or
    none with a body said to come (a Content-Length but "0"; chunked is none to lua-nginx-module's ngx.req.socket)."""
    content_type = content_length = None
    for name, value in scope.get("headers", []):
        name = name.lower()
        if name == b"content-type" and content_type is None:
            content_type = value.decode("latin-1")
        elif name == b"content-length" and content_length is None:
            content_length = value
    if content_type is None:
        return content_length is not None and content_length != b"0"
    return not content_type.startswith(BODY_TYPES)


def _kong_method(method: str, allow: bytes = b"GET, HEAD, OPTIONS") -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Kong's answer to a method a Status API route does not have (OPTIONS lists those it has)."""
    if method == "OPTIONS":
        return 204, [(b"allow", allow), (b"access-control-allow-methods", allow),
                     (b"access-control-allow-headers", b"Content-Type")], b""
    return _json(405, kong.METHOD_NOT_ALLOWED)


def _node_id(config: Any) -> str:
    from gateway.telemetry.node_id import gateway_node_id

    return gateway_node_id(getattr(config, "gateway", None))


def _json(status: int, doc: Any) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    body = json.dumps(doc, separators=(",", ":"), default=str).encode()
    return status, [(b"content-type", JSON_TYPE), (b"cache-control", b"no-store")], body
