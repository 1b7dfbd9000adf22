"""Active checks' schedules, as lua-resty-healthcheck 3.1.0 (Kong 3.9.3) runs them: a target entering a state is
probed at that state's next run, counted from the checker's start, not at once."""

from __future__ import annotations

import pytest
import trio
from e2e_helpers import request, started_backends, wait_for


def doc(targets: list[dict], checks: dict, **up: object) -> dict:
    return {"_format_version": "3.0",
            "upstreams": [{"name": "u", "healthchecks": checks, "targets": targets, **up}],
            "services": [{"name": "s", "url": "http://u", "connect_timeout": 50,
                          "routes": [{"name": "r", "paths": ["/"]}]}]}


async def send(port: int, n: int) -> list[int]:
    return [(await request(port, "GET", "/x")).status for _ in range(n)]


def active(successes: int = 1, http_failures: int = 1, hi: float = 0.1, ui: float = 0.1, **kw: object) -> dict:
    a = {"http_path": "/health", "timeout": 1,
         "healthy": {"interval": hi, "successes": successes},
         "unhealthy": {"interval": ui, "http_failures": http_failures}}
    for k, v in kw.items():
        if isinstance(v, dict) and k in a:
            a[k].update(v)  # type: ignore[union-attr]
        else:
            a[k] = v
    return {"active": a}


@pytest.mark.parametrize("http_codec", ["h11", "llhttp"])
async def test_a_target_passive_checks_take_out_waits_for_the_unhealthy_schedules_next_run(gateway, nursery) -> None:  # noqa: ANN001
    """healthy.interval 0, unhealthy.interval 2 (probe only unhealthy targets to bring them back), passive
    http_failures 1. Kong (lua-resty-healthcheck 3.1.0 healthcheck.lua:1405-1411 checker:start sets
    unhealthy.last_run = now; :1781-1787 the unhealthy targets are probed when last_run + interval <= now, then
    last_run = now): a target that passive checks take out 0.3 s after the start is first probed about 2 s after
    the start, so it gets no traffic for ~1.7 s (the gateway probed it at once: its /health answering 200, it was
    back within milliseconds, taking failing traffic again)."""
    one, two = await started_backends(nursery, "one", "two")
    checks = active(hi=0, ui=2)
    checks["passive"] = {"unhealthy": {"http_failures": 1, "http_statuses": [500]}}
    port = await gateway(doc([{"target": one.target}, {"target": two.target}], checks))
    await trio.sleep(0.3)
    two.status = 500
    statuses = await send(port, 2)
    assert sorted(statuses) == [200, 500] and two.hits == 1
    await trio.sleep(0.5)  # (still 1.2 s before Kong's first unhealthy probe)
    assert two.health_hits == 0, "probed at once"
    assert await send(port, 6) == [200] * 6
    assert two.hits == 1, (one.hits, two.hits)


@pytest.mark.parametrize("http_codec", ["h11"])
async def test_a_target_leaving_a_probed_healthy_state_waits_for_the_unhealthy_schedules_next_run(
        gateway, nursery) -> None:  # noqa: ANN001
    """healthy.interval 1, unhealthy.interval 0.5, passive http_failures 1. lua-resty-healthcheck 3.1.0
    (healthcheck.lua:1405-1411 start: unhealthy.last_run = now; :1781-1794 unhealthy targets probed when
    unhealthy.last_run + interval <= now): unhealthy runs at start+0.5, +1.0, +1.5, +2.0... A target taken out by
    passive checks ~0.6 s after its first healthy probe (start+1.0), i.e. at ~start+1.6, is first probed at
    start+2.0 (~0.4 s later), not from its last healthy probe (start+1.5, already past: at once)."""
    one, two = await started_backends(nursery, "one", "two")
    checks = {"active": {"http_path": "/health", "timeout": 1,
                         "healthy": {"interval": 1, "successes": 1},
                         "unhealthy": {"interval": 0.5, "http_failures": 1}},
              "passive": {"unhealthy": {"http_failures": 1, "http_statuses": [500]}}}
    port = await gateway(doc([{"target": one.target}, {"target": two.target}], checks))
    await wait_for(lambda: two.health_hits >= 1, 3, 0.005, "first healthy probe")
    first = trio.current_time()
    await trio.sleep_until(first + 0.6)
    two.status = 500
    for _ in range(4):  # one of them reaches `two` and takes it out
        await request(port, "GET", "/x")
        if two.hits:
            break
    assert two.hits == 1
    out = trio.current_time()
    with trio.move_on_after(0.2):  # (Kong's next unhealthy run is ~0.35 s away)
        await wait_for(lambda: two.health_hits > 1, 0.2, 0.002)
    assert two.health_hits == 1, f"probed {trio.current_time() - out:.3f} s after passive checks took it out"
