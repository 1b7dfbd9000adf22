"""The MCP audit log: one JSON line per tools/call on a route whose ai-mcp-proxy has `logging.log_audits`.

    {"time": "2026-12-04T10:00:00.123Z", "route": "mcp", "consumer": "alice", "credential": "user-7",
     "client_ip": "10.0.0.5", "session": "k1.AbC...", "request_id": "…", "tool": "delete_flight",
     "decision": "denied", "reason": "tool 'delete_flight' is not allowed", "status": 200, "rpc_id": 4,
     "upstream": null, "latency_ms": 0.41, "worker": 4711}

`decision`: allowed (the gateway let the call reach a server; `status` and `upstream` say what came of it), denied
(the tool ACL), limited (rate limiting, 429), refused (answered by the gateway for another reason: a body too
large, authentication, ...). A batch gives one line per tools/call in it. Only calls the gateway read from a body
are logged: a request refused before anything read its body (a missing token) has no tool to log.

Lines are queued at the end of the request on the access log's writer (gateway.telemetry.lines.LineWriter) and
formatted and written by the worker's line task, one write() per batch on a file opened with O_APPEND and O_NONBLOCK
(line by line to a pipe or terminal, where a write is atomic only up to PIPE_BUF): lines from several workers never
interleave. `-` or `stdout` writes to standard output. A file that cannot be opened or written (a FIFO with no
reader) is logged once per reason and its lines are counted as dropped, never waited for; SIGUSR1 reopens it.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import msgspec
import trio

from gateway.http.server import Exchange
from gateway.mcp.body import leniently
from gateway.telemetry.lines import LINES

log = logging.getLogger("gateway.mcp")

FILE_MODE = 0o640  # (its lines name consumers, clients and sessions)
MAX_TOOL = 256  # longer tool names are cut in the line (a name is the client's to choose)
STDOUT_NAMES = ("-", "stdout")
_encode = msgspec.json.Encoder().encode


class AuditLog:
    """One audit destination: its records go to the process's line writer of that file (gateway.telemetry.lines, the
    access log's), which formats and writes them in the worker's line task and reopens the file on SIGUSR1."""

    __slots__ = ("path", "writer")

    def __init__(self, path: str) -> None:
        self.writer = LINES.stdout_writer() if path in STDOUT_NAMES else LINES.writer_for(path, FILE_MODE)
        self.path = self.writer.path

    def put(self, record: Record) -> None:
        """Queue one record (formatted when its batch is written, off the request path)."""
        self.writer.defer(format_line, record)

    def flush(self) -> int:
        """Write what is pending now; returns the number of lines written."""
        return self.writer.flush()


def audit_log_for(path: str) -> AuditLog:
    """An AuditLog for `path` (a file, relative to the working directory, or `-` / `stdout`): all of a path share the
    process's one writer."""
    return AuditLog(path)


# ---- records ------------------------------------------------------------------------------------------------------

class Record(msgspec.Struct):
    """One audit line's fields, in the line's order (`time` is the wall clock until formatted)."""

    time: Any
    route: str
    consumer: str | None
    credential: str | None
    client_ip: str
    session: str | None
    request_id: str | None
    tool: str | None
    decision: str
    reason: str | None
    status: int
    rpc_id: Any
    upstream: str | None
    latency_ms: float
    worker: int = 0


class _Clock:
    """The second part of an ISO time, formatted once per second; the pid, read once per process."""

    def __init__(self) -> None:
        self.second = -1
        self.text = ""
        self.pid = os.getpid()
        os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        self.pid = os.getpid()

    def iso(self, wall: float) -> str:
        second = int(wall)
        if second != self.second:
            self.second = second
            self.text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self.text}.{int((wall - second) * 1000):03d}Z"


_CLOCK = _Clock()


def format_line(record: Record) -> bytes:
    """One record as a JSON line (with the pid of the worker that served the request)."""
    record.time = _CLOCK.iso(record.time)
    record.worker = _CLOCK.pid
    return _encode(record) + b"\n"


class ToolAudit:
    """What ai-mcp-proxy's `logging.log_audits` adds to a route: a record per tools/call at the end of a request."""

    __slots__ = ("log",)

    def __init__(self, audit_log: AuditLog) -> None:
        self.log = audit_log

    def record(self, ex: Exchange, started: float, route: str) -> None:
        """Called by the pipeline once the request is over; never raises."""
        try:
            self._record(ex, started, route)
        except Exception:  # the audit must never break a request's end
            log.exception("MCP audit record failed")

    def _record(self, ex: Exchange, started: float, route: str) -> None:
        state = ex.state or {}
        calls = state.get("mcp_calls")  # ai-mcp-proxy's judgement: [(tool, Denial | None, rpc id)]
        status = ex.status if ex.response_started else 499  # nginx's code for a client gone before the answer
        if calls is None:
            calls = _calls_read(state.get("mcp"))
            if not calls:
                return
            decision = "limited" if status == 429 else "refused" if ex.response_started and "upstream" not in state \
                else "allowed"
        else:
            decision = None
        latency = trio.current_time() - started
        wall = time.time() - latency
        who = ex.consumer
        consumer = credential = None
        if who is not None:
            consumer = who.username or who.id
            credential = who.credential_id
        session = request_id = None
        for name, value in ex.request.headers:
            if name == b"mcp-session-id":
                session = value.decode("latin-1")
        if ex.request_id:  # the request's own id (X-Kong-Request-Id, the access log's request.id)
            request_id = ex.request_id.decode("latin-1")
        upstream = state.get("upstream")
        for tool, denial, rpc_id in calls:
            if decision is None:  # (a call the ACL allowed is "allowed" only once it reached a server)
                this = "denied" if denial is not None else "allowed" if upstream is not None else \
                    "limited" if status == 429 else "refused"
                reason = denial.message if denial is not None else None
                target = upstream if denial is None else None
            else:
                this, reason, target = decision, None, upstream if decision == "allowed" else None
            self.log.put(Record(wall, route, consumer, credential, ex.client_ip, session, request_id,
                                tool[:MAX_TOOL] if tool is not None else None, this, reason, status,
                                rpc_id if rpc_id is None or isinstance(rpc_id, (str, int, float)) else None, target,
                                round(latency * 1000, 3)))


def _calls_read(mcp: Any) -> list[tuple[str | None, None, Any]]:
    """The tools/calls of a body that some reader (rate limiting by tool, ai-mcp-proxy, the router's peek) looked at;
    one the strict decoder refused (NaN, Infinity) as a server reads it, which is how rate limiting counted it."""
    if mcp is None:
        return []
    decoded = mcp.decoded
    if decoded is False:
        decoded = leniently(mcp)
    if decoded:
        return [(m.name, None, m.answer_id) for m in decoded[0] if m.method == "tools/call"]
    info = mcp.info
    if info is None or info.method != "tools/call":
        return []
    return [(info.name, None, info.id)]
