"""The log phase: run once after every request the pipeline handled, proxied or answered by the gateway itself.

It counts the request (gateway_requests_total) and each upstream try (per target: outcome and latency), then runs
the log step of the route's log plugins (opentelemetry, prometheus, http-log, file-log, in Kong's priority order):
those that log the whole entry (`entries = True`: file-log, http-log) get an `Entry` made once; the others get the
raw facts (the Exchange, its start and end on the Trio clock, its status). The access log gets the same Entry.
Nothing here waits or formats: counts and raw latencies go to plain dicts and lists (bucketed once a second, in
bulk), lines and spans to queues that tasks of their own write or send.

A request cut short before any response gets the status the client sees or would have seen: the 408 or 504 of a
timeout, the 4xx of a broken request body or 500 of a crash (sent by the connection loop after this), or nginx's
499 when the client went away.
"""

from __future__ import annotations

import logging
from typing import Any

from gateway.http.server import Exchange
from gateway.http.timers import Phase, run_clock
from gateway.metrics import MCP_TOOL_CALLS, METRIC_ERRORS, RECORDER, Recorder, TargetObservations, tool_label
from gateway.telemetry.entry import Entry
from gateway.telemetry.lines import LineWriter

log = logging.getLogger("gateway.telemetry")

CLIENT_CLOSED = 499  # nginx's status for a request whose client went away before the response
# ex.state key: the log steps collected for a request whose consumer has plugins of its own (the pipeline's
# _run_scoped: Kong's plugins_iterator collects each plugin's log with its access, as the consumer then was)
COLLECTED_LOGGERS = "collected-loggers"
_OUTCOMES = {-1: "connect_failure", -2: "timeout", 0: "error"}


class LogPhase:
    """One worker's log phase. `access_log`: gateway.access_log's writer, or None."""

    def __init__(self, recorder: Recorder = RECORDER, access_log: LineWriter | None = None) -> None:
        self.recorder = recorder
        self.access_log = access_log
        self.clock = run_clock()

    def done(self, ex: Exchange, started: float, runtime: Any, failed: int = 0) -> None:
        """`failed`: the status the connection loop answers when the handler raised (0: none, or cancelled)."""
        try:
            ended = self.clock()
            status = ex.status if ex.response_started else (failed or _closing_status(ex, ended))
            route = ex.route
            rec = self.recorder
            if route is not None:
                obs = route.facts.obs
                if not obs.dirty:
                    obs.dirty = True
                    rec.dirty.append(obs)
                obs.statuses.append(status)
                loggers = route.loggers
                if route.consumer_policies is not None and ex.state is not None:  # a consumer's: as collected
                    loggers = ex.state.get(COLLECTED_LOGGERS, loggers)
            else:
                rec.unrouted.append(status)
                loggers = runtime.global_loggers if runtime is not None else ()
            tries = ex.tries
            if tries is not None:
                for attempt in tries:
                    target = attempt.target
                    tobs = target.obs
                    if tobs is None:
                        tobs = target.obs = TargetObservations(attempt.group.name, target.name)
                    if not tobs.dirty:
                        tobs.dirty = True
                        rec.dirty.append(tobs)
                    head = attempt.head_at
                    code = attempt.code or (status if head else 0)  # 0: the client left mid-response
                    tobs.codes.append(code if code > 0 else _OUTCOMES.get(code, "error"))
                    if head:
                        tobs.sents.append(attempt.started)
                        tobs.heads.append(head)
            mcp = ex.mcp
            if mcp is not None:
                info = mcp.info
                if info is not None and info.method == "tools/call" and info.name is not None:
                    outcome = "ok" if 200 <= status < 300 else str(status)
                    rec.counts[(MCP_TOOL_CALLS, (tool_label(info.name), outcome))] += 1
            entry = None
            for logger in loggers:
                if logger.entries:
                    if entry is None:
                        entry = Entry(ex, started, ended, status)
                    logger.log_entry(entry)
                else:
                    logger.log(ex, started, ended, status)
            access_log = self.access_log
            if access_log is not None:
                access_log.defer(Entry.json_line, entry or Entry(ex, started, ended, status))
        except Exception:  # the log phase must never break the connection loop
            log.exception("log phase failed for %s %s", ex.request.method, ex.request.target)
            METRIC_ERRORS.inc()


def _closing_status(ex: Exchange, now: float) -> int:
    """The status of a request that ended without a response from the handler (see the module's docstring)."""
    timer = ex.timer
    if timer.at <= now and not timer.gone:
        if timer.phase in (Phase.UPSTREAM_WRITE, Phase.UPSTREAM_READ):
            return 504
        if timer.phase == Phase.CLIENT_BODY:
            return 408
    return CLIENT_CLOSED
