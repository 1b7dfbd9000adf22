"""The status server's ASGI app: /health, /ready, /live and /metrics, in erlmcp's shapes.

    GET /health  -> 200 | 503  {"status": "healthy"|"degraded"|"unhealthy", "version", "uptime", "node",
                                "timestamp" (ms since the epoch, as the guide's erlang:system_time(millisecond)),
                                "time" (the same, ISO 8601), "checks": {"workers": {"status", "details"}, ...}}
    GET /ready   -> 200 | 503  {"ready": bool, "node", "timestamp", "checks": {name: "ready"|"not_ready"}}
    GET /live    -> 200        {"alive": true, "node", "uptime", "timestamp"}
    GET /metrics -> 200        Prometheus text (OpenMetrics when the scraper asks for it) from the registry given
    GET /status  -> 200        the status page (gateway.status.page), when the app has one; /status.json its data

/health answers 200 only when every check is healthy: degraded counts as not healthy (503), so a load balancer
in front takes a degraded gateway out. Checks run concurrently, each bounded by `check_timeout`; a check that
raises or times out is unhealthy with the reason in its details (erlmcp's try/catch around each check).
The data comes from a `StatusSource`; the root supplies the live one, tests a fake.
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
from prometheus_client.exposition import choose_encoder

log = logging.getLogger("gateway.status")

HealthStatus = Literal["healthy", "degraded", "unhealthy"]
CHECKS = ("workers", "bus", "discovery", "upstreams", "memory")
_ORDER = {"healthy": 0, "degraded": 1, "unhealthy": 2}


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
                 prepare: Callable[[], None] | None = None, page: Any = None) -> None:
        self.source = source
        self.registry = registry if registry is not None else REGISTRY
        self.prepare = prepare  # run before each scrape, in this thread (flush the root's counts, sweep dead pids)
        self.version = version
        self.node = node or f"gateway@{socket.gethostname()}:{os.getpid()}"
        self.started_at = started_at if started_at is not None else time.time()
        self.check_timeout = check_timeout
        self.routes: dict[str, Callable[[dict[str, Any]], Awaitable[tuple[int, list[tuple[bytes, bytes]], bytes]]]] = {
            "/health": self.health, "/ready": self.ready, "/live": self.live, "/metrics": self.metrics,
            "/status/ready": self.kong_ready}
        self.page = page  # gateway.status.page.StatusPage: /status (HTML) and /status.json
        if page is not None:
            self.routes["/status"] = self.status_page
            self.routes["/status.json"] = self.status_data

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
        handler = self.routes.get(scope["path"])
        method = scope["method"]
        if handler is None:
            status, headers, body = _json(404, {"error": "not found", "paths": sorted(self.routes)})
        elif method not in ("GET", "HEAD"):
            status, headers, body = _json(405, {"error": f"method {method} not allowed"})
            headers.append((b"allow", b"GET, HEAD"))
        else:
            status, headers, body = await handler(scope)
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})

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
        "ready"}, else 503 with what is not ready as the message."""
        parts, error = await self.readiness()
        if error is None:
            not_ready = [name for name, ok in parts.items() if not ok]
            if not not_ready:
                return _json(200, {"message": "ready"})
            error = "not ready: " + ", ".join(not_ready)
        return _json(503, {"message": error})

    async def live(self, scope: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        return _json(200, {"alive": True, "node": self.node, "uptime": self.uptime, "timestamp": _timestamp()})

    async def metrics(self, scope: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        accept = ",".join(v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == b"accept")
        encoder, content_type = choose_encoder(accept)
        if self.prepare is not None:
            self.prepare()
        body = await trio.to_thread.run_sync(encoder, self.registry)  # collectors may read files (multiprocess)
        return 200, [(b"content-type", content_type.encode()), (b"cache-control", b"no-store")], body


    async def status_page(self, scope: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        body = await self.page.html()
        return 200, [(b"content-type", b"text/html; charset=utf-8"), (b"cache-control", b"no-store")], body

    async def status_data(self, scope: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        return _json(200, await self.page.data())


def _json(status: int, doc: Any) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    body = json.dumps(doc, separators=(",", ":"), default=str).encode()
    return status, [(b"content-type", b"application/json"), (b"cache-control", b"no-store")], body
