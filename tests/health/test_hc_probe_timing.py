"""When active probes run, against lua-resty-healthcheck 3.1.0 (kong-latest.rockspec pins it), lib/resty/
healthcheck.lua:

- `checker:start()` (3.1.0 healthcheck.lua:1400-1405): `self.checks.active.healthy.last_run = ngx_now()`
  with the comment "the first active check happens only after `interval`";
- the one timer that drives every checker (`active_check_timer` in `_M.new`) runs every CHECK_INTERVAL = 0.1 s
  (healthcheck.lua:137), and a state's targets are probed when `last_run + interval <= cur_time`: an interval
  under 0.1 s still probes about every 0.1 s.

Kong's schema takes any interval from 0 to 65535 seconds (kong/db/schema/entities/upstreams.lua:51-54 `seconds`).
"""

from __future__ import annotations

import trio

from gateway.discovery import TargetInfo
from gateway.health import ActivePolicy, Event, HealthChecker, Thresholds


class Counting:
    """A TCP server answering every request `HTTP/1.1 200 OK`; counts the probes and when each came."""

    def __init__(self) -> None:
        self.times: list[float] = []

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._conn, listeners)

    async def _conn(self, stream: trio.SocketStream) -> None:
        async with stream:
            self.times.append(trio.current_time())
            try:
                await stream.receive_some(65536)
                await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            except trio.BrokenResourceError:
                pass


def _policy(interval: float) -> ActivePolicy:
    return ActivePolicy(type="http", http_path="/", timeout_s=1.0, healthy_interval_s=interval,
                        unhealthy_interval_s=interval,
                        thresholds=Thresholds(successes=1, http_failures=1, tcp_failures=1, timeouts=1))


async def _start(nursery: trio.Nursery, interval: float) -> tuple[Counting, float]:
    from gateway.health.checker import UpstreamChecks

    backend = Counting()
    port = await nursery.start(backend.serve)
    events: list[Event] = []
    checker = HealthChecker([UpstreamChecks("u", _policy(interval), [TargetInfo("127.0.0.1", port, 100)])],
                            lambda up, target, event: events.append(event))
    t0 = trio.current_time()
    await nursery.start(checker.run)
    return backend, t0


async def test_the_first_probe_comes_an_interval_after_the_start(nursery: trio.Nursery) -> None:
    """healthchecks.active.healthy.interval 1: lua-resty-healthcheck's start() sets last_run to now, so Kong's
    first probe of a target comes about 1 s after the checker starts (healthcheck.lua 3.1.0 `checker:start`:
    "the first active check happens only after `interval`")."""
    backend, t0 = await _start(nursery, 1.0)
    await trio.sleep(0.6)
    early = [round(t - t0, 3) for t in backend.times]
    assert early == [], f"probed {early} s after start; Kong's first probe is after the 1 s interval"


async def test_an_interval_under_the_check_timer_probes_at_most_every_100ms(nursery: trio.Nursery) -> None:
    """healthy.interval 0.01 (Kong's schema takes it): lua-resty-healthcheck probes from its one timer, which
    fires every CHECK_INTERVAL = 0.1 s (healthcheck.lua:137 and the `active_check_timer` of `_M.new`), so a
    target gets about 10 probes a second, at most ~7 in 0.6 s (not ~60)."""
    backend, t0 = await _start(nursery, 0.01)
    await trio.sleep(0.6)
    n = len(backend.times)
    assert n <= 8, f"{n} probes in 0.6 s; Kong's 0.1 s check timer makes at most ~7"
