"""A worker's telemetry tasks: the line writers, the metric flushes and samples, the log plugins' queues, and the
SIGUSR1 handler that reopens log files (as nginx's `reopen` does, for log rotation)."""

from __future__ import annotations

import logging
import os
import signal

import trio

from gateway.config import Config
from gateway.http.server import ConnectionSet
from gateway.http.timers import Phase
from gateway.metrics import (
    ACCEPTED,
    CONNECTIONS,
    KONG_NGINX_TIMERS,
    RECORDER,
    REQUESTS_STARTED,
    TARGET_ACTIVE,
    Recorder,
)
from gateway.telemetry.batch import QUEUES
from gateway.telemetry.lines import LINES, Lines
from gateway.telemetry.phase import LogPhase

log = logging.getLogger("gateway.telemetry")

DRAIN_S = 2.0  # at the end of a worker's drain, the log plugins' queues get this long to send what they hold
# nginx's reading: a request head has begun (ngx_http_create_request); waiting: a connection that has sent nothing
# yet, its PROXY header too, or is kept alive between requests (reusable: ngx_http_init_connection,
# ngx_http_set_keepalive). One in its TLS handshake, in none of nginx's three, is counted waiting: it has no request.
_READING = Phase.HEAD
_WAITING = (Phase.NEW, Phase.IDLE)


def access_log_path(config: Config) -> str | None:
    """gateway.access_log as a path: true is access.log beside the pid file."""
    gw = config.gateway
    if gw.access_log is False:
        return None
    if gw.access_log is True:
        return os.path.join(os.path.dirname(os.path.abspath(gw.pid_file)), "access.log")
    return os.path.abspath(gw.access_log)


class WorkerTelemetry:
    """What one worker runs beside its connections: made before serving, `run` in the worker's nursery."""

    def __init__(self, config: Config, connections: ConnectionSet, active: dict[str, int] | None = None,
                 recorder: Recorder = RECORDER, lines: Lines = LINES) -> None:
        self.connections = connections
        self.active = active if active is not None else {}  # the forwarder's requests in progress per target key
        self.recorder = recorder
        self.lines = lines
        path = access_log_path(config)
        self.log_phase = LogPhase(recorder, lines.writer_for(path) if path else None)
        self._accepted = 0
        self._requests = 0

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Until cancelled; on the way out, what is counted and written so far is flushed."""
        self.recorder.samplers.append(self.sample)
        try:
            with trio.open_signal_receiver(signal.SIGUSR1) as reopen:
                async with trio.open_nursery() as nursery:
                    await nursery.start(self.lines.run)
                    nursery.start_soon(self.recorder.flush_forever)
                    await nursery.start(QUEUES.run)
                    task_status.started()
                    async for _ in reopen:
                        log.info("worker %d: SIGUSR1, reopening log files", os.getpid())
                        self.lines.reopen()
        finally:
            self.recorder.samplers.remove(self.sample)

    async def drain(self, timeout: float = DRAIN_S) -> None:
        """Write the pending lines and give the log plugins' queues up to `timeout` to send what they hold; then stop
        them: what they still hold is lost, logged and counted per queue."""
        self.lines.flush()
        with trio.move_on_after(timeout):
            await QUEUES.drain()
        await QUEUES.close()

    def sample(self) -> None:
        """At each flush: connections by state, the requests begun, requests in progress per target and the worker's
        Trio tasks (never on the request path). One pass over the connections, comparing small ints; those relaying a
        stream are not in it (they write)."""
        connections = self.connections
        reading = waiting = 0
        for timer in connections.timers.live:
            phase = timer.phase
            if phase == _READING:
                reading += 1
            elif phase in _WAITING:
                waiting += 1
        total = connections.active
        CONNECTIONS.labels("active").set(total)
        CONNECTIONS.labels("reading").set(reading)
        CONNECTIONS.labels("waiting").set(waiting)
        CONNECTIONS.labels("writing").set(max(0, total - reading - waiting))
        if connections.accepted > self._accepted:
            ACCEPTED.inc(connections.accepted - self._accepted)
            self._accepted = connections.accepted
        if connections.requests > self._requests:
            REQUESTS_STARTED.inc(connections.requests - self._requests)
            self._requests = connections.requests
        active = {tuple(key.split("|", 1)): n for key, n in self.active.items()}
        for labels in list(TARGET_ACTIVE._metrics):  # targets no longer busy go back to 0
            if labels not in active:
                TARGET_ACTIVE.labels(*labels).set(0)
        for (upstream, target), n in active.items():
            TARGET_ACTIVE.labels(upstream, target).set(n)
        tasks = trio.lowlevel.current_statistics()  # Kong's nginx timers: runnable tasks run, the others pend
        KONG_NGINX_TIMERS.labels("running").set(tasks.tasks_runnable)
        KONG_NGINX_TIMERS.labels("pending").set(tasks.tasks_living - tasks.tasks_runnable)
