"""The log phase: run once after every request the pipeline handled, proxied or answered by the gateway itself.

It counts the request (gateway_requests_total) and each upstream try (per target: outcome and latency), then, only
if something wants it, makes an `Entry` for the route's log plugins (prometheus, file-log, http-log, opentelemetry,
in Kong's priority order) and the access log. Nothing here waits: counts go to plain dicts, lines and spans to
queues that tasks of their own write or send.

A request cut short before any response gets the status the client sees or would have seen: the 408 or 504 of a
timeout, the 4xx of a broken request body or 500 of a crash (sent by the connection loop after this), or nginx's
499 when the client went away.
"""

from __future__ import annotations

import logging
from typing import Any

from gateway.http.server import Exchange
from gateway.http.timers import Phase, run_clock
from gateway.metrics import (
    MCP_TOOL_CALLS,
    METRIC_ERRORS,
    RECORDER,
    TARGET_LATENCY,
    TARGET_LATENCY_BUCKETS,
    TARGET_REQUESTS,
    Recorder,
)
from gateway.telemetry.entry import Entry
from gateway.telemetry.lines import LineWriter

log = logging.getLogger("gateway.telemetry")

CLIENT_CLOSED = 499  # nginx's status for a request whose client went away before the response
_OUTCOMES = {-1: "connect_failure", -2: "timeout", 0: "error"}


class LogPhase:
    """One worker's log phase. `access_log`: gateway.access_log's writer, or None."""

    def __init__(self, recorder: Recorder = RECORDER, access_log: LineWriter | None = None, port: int = 0) -> None:
        self.recorder = recorder
        self.access_log = access_log
        self.port = port  # the listening port, for the url in log lines
        self.clock = run_clock()

    def done(self, ex: Exchange, started: float, runtime: Any, failed: int = 0) -> None:
        """`failed`: the status the connection loop answers when the handler raised (0: none, or cancelled)."""
        try:
            self._done(ex, started, runtime, failed)
        except Exception:  # the log phase must never break the connection loop
            log.exception("log phase failed for %s %s", ex.request.method, ex.request.target)
            METRIC_ERRORS.inc()

    def _done(self, ex: Exchange, started: float, runtime: Any, failed: int) -> None:
        ended = self.clock()
        status = ex.status if ex.response_started else (failed or _closing_status(ex, ended))
        route = ex.route
        rec = self.recorder
        rec.requests[(route.name if route is not None else "-", status)] += 1
        tries = ex.tries
        if tries is not None:
            counts = rec.counts
            for attempt in tries:
                labels = (attempt.group.name, attempt.target.name)
                code = attempt.code or (status if attempt.head_at else 0)  # 0: the client left mid-response
                counts[(TARGET_REQUESTS, (*labels, code if code > 0 else _OUTCOMES.get(code, "error")))] += 1
                if attempt.head_at:
                    rec.observe(TARGET_LATENCY, TARGET_LATENCY_BUCKETS, labels,
                                (attempt.head_at - attempt.started) * 1000.0)
        mcp = ex.mcp
        if mcp is not None:
            info = mcp.info
            if info is not None and info.method == "tools/call" and info.name is not None:
                rec.counts[(MCP_TOOL_CALLS, (info.name, "ok" if 200 <= status < 300 else str(status)))] += 1
        if route is not None:
            loggers = route.loggers
            consumer = ex.consumer
            if consumer is not None and route.consumer_loggers is not None:
                loggers = route.consumer_loggers.get(consumer.id, loggers)
        else:
            loggers = runtime.global_loggers if runtime is not None else ()
        access_log = self.access_log
        if loggers or access_log is not None:
            entry = Entry(ex, started, ended, status, 0.0, self.port)
            for logger in loggers:
                logger.log(entry)
            if access_log is not None:
                access_log.defer(Entry.json_line, entry)


def _closing_status(ex: Exchange, now: float) -> int:
    """The status of a request that ended without a response from the handler (see the module's docstring)."""
    timer = ex.timer
    if timer.at <= now:
        if timer.phase in (Phase.UPSTREAM_WRITE, Phase.UPSTREAM_READ):
            return 504
        if timer.phase == Phase.CLIENT_BODY:
            return 408
    return CLIENT_CLOSED
