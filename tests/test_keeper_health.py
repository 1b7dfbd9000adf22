"""Target health in the state keeper: one state machine per target for both checks, and what a new keeper
publishes before and after the health checker's first report.

The keeper counts the probes the checker reports (ProbeOutcomes) and the workers' proxied outcomes
(PassiveOutcomes) on one machine per target, as Kong's one checker per upstream. A keeper that has just
(re)started knows only the verdicts of its state file, which may lag a flip. Publishing those could send traffic to a
target the workers know is down until the checker's re-sent view arrives; so until then it publishes no verdict
(healthy=None) and workers keep theirs. Without active checks there is no checker, and the file's verdicts stand.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path

import pytest
import trio
from e2e_helpers import Backend, GatewayNode, request, wait_for

from gateway.bus import protocol as p
from gateway.config import parse_config
from gateway.discovery.types import TargetInfo
from gateway.keeper import process
from gateway.keeper.saved import SavedState, SavedTarget, decode, encode, read_saved
from gateway.keeper.state import HEALTH_GRACE_S, LOG_TEXT, Keeper
from gateway.state.shared import SharedState

ACTIVE = """
    healthchecks:
      active:
        http_path: /health
        healthy: {interval: 1, successes: 1}
        unhealthy: {interval: 1, http_failures: 1}
"""


def keeper(checked: bool = True, discovered: bool = False) -> Keeper:
    targets = "" if discovered else "    targets: [{target: '127.0.0.1:9001'}, {target: '127.0.0.1:9002'}]\n"
    discovery = "    discovery: {type: consul, endpoints: ['127.0.0.1:8500'], service: svc}\n" if discovered else ""
    text = (
        "_format_version: '3.0'\n"
        "upstreams:\n"
        "  - name: up\n" + targets + discovery + (ACTIVE if checked else "") +
        "services:\n"
        "  - {name: s, host: up}\n"
        "routes:\n"
        "  - {name: r, service: s, paths: ['/']}\n"
    )
    return Keeper(parse_config(text), workers=2)


def verdicts(states: list[p.TargetState]) -> dict[str, bool | None]:
    return {s.key: s.healthy for s in states}


def published(broadcasts: list[p.Msg]) -> dict[str, bool | None]:
    out: dict[str, bool | None] = {}
    for msg in broadcasts:
        if isinstance(msg, p.TargetsChanged):
            out.update(verdicts(msg.targets))
    return out


A, B = "up|127.0.0.1:9001", "up|127.0.0.1:9002"


def test_a_new_keeper_with_health_checks_gives_no_verdict_in_its_snapshot():
    assert verdicts(keeper().snapshot().targets) == {A: None, B: None}


def test_the_checkers_first_report_publishes_every_verdict():
    k = keeper()
    _, broadcasts = k.handle(b"health", p.HealthReport(items=[("up", "127.0.0.1:9002", False)]), 0.0, 0.0)
    assert published(broadcasts) == {A: True, B: False}
    assert verdicts(k.snapshot().targets) == {A: True, B: False}


def test_an_empty_first_report_means_every_target_is_healthy():
    _, broadcasts = keeper().handle(b"health", p.HealthReport(items=[]), 0.0, 0.0)
    assert published(broadcasts) == {A: True, B: True}


def test_after_the_first_report_only_flips_are_published():
    k = keeper()
    k.handle(b"health", p.HealthReport(items=[]), 0.0, 0.0)
    _, broadcasts = k.handle(b"health", p.ProbeOutcomes(items=[("up", "127.0.0.1:9001", "http_failure")]), 0.0, 0.0)
    assert published(broadcasts) == {A: False}


def test_discovery_before_the_checker_adds_targets_without_a_verdict():
    k = keeper(discovered=True)
    broadcasts = k.discover("up", [TargetInfo("127.0.0.1", 9001), TargetInfo("127.0.0.1", 9002)])
    assert published(broadcasts) == {A: None, B: None}
    _, broadcasts = k.handle(b"health", p.HealthReport(items=[("up", "127.0.0.1:9002", False)]), 0.0, 0.0)
    assert published(broadcasts) == {A: True, B: False}


def test_without_active_checks_verdicts_are_published_from_the_start():
    assert verdicts(keeper(checked=False).snapshot().targets) == {A: True, B: True}


def test_a_silent_checker_ends_the_wait_after_the_grace():
    k = keeper()
    assert published(k.tick(100.0)[1]) == {}
    assert published(k.tick(100.0 + HEALTH_GRACE_S - 0.01)[1]) == {}
    assert published(k.tick(100.0 + HEALTH_GRACE_S)[1]) == {A: True, B: True}
    assert verdicts(k.snapshot().targets) == {A: True, B: True}


def test_a_drain_while_waiting_carries_no_verdict():
    k = keeper()
    _, broadcasts = k.admin("targets", {"action": "drain", "target": B}, 0.0, 0.0)
    assert published(broadcasts) == {B: None}


async def test_a_worker_keeps_its_verdict_when_the_keeper_gives_none():
    shared = SharedState("w1", 1)
    shared.on_message(p.TargetsChanged(targets=[p.TargetState(B, healthy=False)]))
    shared.on_message(p.TargetsChanged(targets=[p.TargetState(B, healthy=None)]))
    assert B in shared._unhealthy
    shared.on_message(p.TargetsChanged(targets=[p.TargetState(B, healthy=True)]))
    assert B not in shared._unhealthy


def test_the_keeper_ticks_fast_while_it_waits_for_the_checkers_first_report():
    k = keeper()
    assert k.ticking()  # waiting for the checker's first report
    k.handle(b"health", p.HealthReport(items=[]), 0.0, 0.0)
    assert not k.ticking()
    assert not keeper(checked=False).ticking()


def discovery_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "gateway.keeper" and "discovery:" in r.getMessage()]


def test_a_discovery_change_is_logged_as_what_changed_in_a_bounded_line(caplog: pytest.LogCaptureFixture) -> None:
    """README: registry text reaches the log as one line of at most 200 characters. A line naming every target made
    50,326 characters at 3,000 targets, and a list growing one key at a time wrote 75 MB; the line says what came
    and went instead: counts and the first few names."""
    caplog.set_level(logging.INFO, "gateway.keeper")
    k = keeper(discovered=True)
    many = [TargetInfo(f"10.{i // 62500}.{i // 250 % 250}.{i % 250 + 1}", 8000) for i in range(3000)]
    for n in range(1, 301):  # registered one by one
        k.discover("up", many[:n])
    k.discover("up", many)
    k.discover("up", many[5:] + [TargetInfo("10.9.9.9", 8000)])
    k.discover("up", [])
    lines = discovery_lines(caplog)
    assert len(lines) == 303
    fixed = len("discovery: upstream up now has 3000 target(s) ()")
    assert max(len(line) for line in lines) <= fixed + LOG_TEXT + len("...")
    assert lines[0] == "discovery: upstream up now has 1 target(s) (added 1: 10.0.0.1:8000)"
    assert lines[299] == "discovery: upstream up now has 300 target(s) (added 1: 10.0.1.50:8000)"
    assert lines[300] == ("discovery: upstream up now has 3000 target(s) (added 2700: 10.0.1.51:8000, 10.0.1.52:8000, "
                          "10.0.1.53:8000, 10.0.1.54:8000, 10.0.1.55:8000 and 2695 more)")
    assert lines[301] == ("discovery: upstream up now has 2996 target(s) (added 1: 10.9.9.9:8000; removed 5: "
                          "10.0.0.1:8000, 10.0.0.2:8000, 10.0.0.3:8000, 10.0.0.4:8000, 10.0.0.5:8000)")
    assert lines[302].startswith("discovery: upstream up now has 0 target(s) (removed 2996: 10.0.0.6:8000, ")


def test_a_discovered_name_reaches_the_log_on_one_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "gateway.keeper")
    k = keeper(discovered=True)
    k.discover("up", [TargetInfo("a\nb" + "x" * 300, 80)])
    k.discover("up", [TargetInfo("a\nb" + "x" * 300, 80, 7)])
    lines = discovery_lines(caplog)
    assert lines[0].startswith("discovery: upstream up now has 1 target(s) (added 1: a\\nbxxx")
    assert lines[0].endswith("x...)") and "\n" not in lines[0]
    assert lines[1].startswith("discovery: upstream up now has 1 target(s) (changed 1: a\\nbxxx")


# ---- both checks on one machine per target -------------------------------------------------------------------------

BOTH = """
    healthchecks:
      active:
        http_path: /health
        healthy: {interval: 1, successes: 1}
        unhealthy: {interval: 60, http_failures: 1}
      passive:
        healthy: {successes: 2}
        unhealthy: {http_failures: 2, tcp_failures: 2}
"""


def checked_keeper(checks: str = BOTH) -> Keeper:
    """A keeper with both checks on `up`, past the checker's first report."""
    k = Keeper(parse_config("upstreams:\n  - name: up\n    targets: [{target: '127.0.0.1:9001'}, "
                            "{target: '127.0.0.1:9002'}]\n" + checks), workers=1)
    k.handle(b"health", p.HealthReport(items=[]), 0.0, 0.0)
    return k


def traffic(k: Keeper, code: int, target: str = "127.0.0.1:9001") -> dict[str, bool | None]:
    return published(k.handle(b"w1", p.PassiveOutcomes(items=[("up", target, code)]), 0.0, 0.0)[1])


def probe(k: Keeper, event: p.ProbeEvent, target: str = "127.0.0.1:9001") -> dict[str, bool | None]:
    return published(k.handle(b"health", p.ProbeOutcomes(items=[("up", target, event)]), 0.0, 0.0)[1])


def test_a_passing_probe_clears_the_failures_real_traffic_counted():
    """Kong: passive http_failures 2; failure, passing probe, failure leaves the target healthy."""
    k = checked_keeper()
    assert traffic(k, 500) == {} and probe(k, "success") == {} and traffic(k, 500) == {}
    assert k.targets[A].healthy is True
    assert traffic(k, 500) == {A: False}, "two in a row take it out"


def test_a_passive_success_clears_the_failures_probes_counted():
    """Active tcp_failures 2: a failed probe, a good proxied answer (1 of passive's 2 successes), a failed probe."""
    k = checked_keeper(BOTH.replace("http_failures: 1}", "http_failures: 1, tcp_failures: 2}"))
    assert probe(k, "tcp_failure") == {} and traffic(k, 200) == {} and probe(k, "tcp_failure") == {}
    assert k.targets[A].healthy is True
    assert probe(k, "tcp_failure") == {A: False}


def test_each_outcome_is_judged_by_its_own_checks_threshold():
    k = checked_keeper()
    assert probe(k, "http_failure") == {A: False}, "active http_failures 1"
    assert traffic(k, 200) == {} and traffic(k, 200) == {A: True}, "passive successes 2 (a target in panic mode)"
    assert traffic(k, 500) == {}, "passive http_failures 2"
    assert probe(k, "success") == {} and traffic(k, -1) == {} and traffic(k, -1) == {A: False}, "tcp_failures 2"
    assert probe(k, "success") == {A: True}, "active successes 1 bring back what passive took out"


def test_outcomes_of_targets_the_keeper_does_not_know_are_not_counted():
    """As lua-resty-healthcheck's incr_counter ("trying to increment a target that is not in the list")."""
    k = checked_keeper()
    assert probe(k, "http_failure", "127.0.0.1:1") == {} and traffic(k, 500, "127.0.0.1:1") == {}
    assert k.health.targets == {}


def test_a_running_keeper_answers_the_checkers_view_with_the_verdicts_it_has_wrong():
    """The keeper owns the verdicts: a stale or empty view (the checker missed a publication, or restarted) is not
    applied; the keeper tells the checker, directly, what it has wrong, so it probes at the right interval."""
    k = checked_keeper()
    probe(k, "http_failure")
    replies, broadcasts = k.handle(b"health", p.HealthReport(items=[]), 0.0, 0.0)
    assert broadcasts == [] and published(replies) == {A: False}
    replies, broadcasts = k.handle(b"health", p.HealthReport(items=[("up", "127.0.0.1:9002", False),
                                                                    ("up", "127.0.0.1:9001", False)]), 0.0, 0.0)
    assert broadcasts == [] and published(replies) == {B: True}
    assert k.handle(b"health", p.HealthReport(items=[("up", "127.0.0.1:9001", False)]), 0.0, 0.0) == ([], [])
    assert k.targets[B].healthy is True and k.health.healthy("up", "127.0.0.1:9002")


def test_a_new_keeper_starts_each_machine_from_the_checkers_view():
    """After a keeper restart the view the checker re-sends sets both the verdicts and the machines: a target it held
    unhealthy is UNHEALTHY, so a passing probe (successes 1) brings it back and a failed one is not counted."""
    k = Keeper(parse_config("upstreams:\n  - name: up\n    targets: [{target: '127.0.0.1:9001'}, "
                            "{target: '127.0.0.1:9002'}]\n" + BOTH), workers=1)
    _, broadcasts = k.handle(b"health", p.HealthReport(items=[("up", "127.0.0.1:9001", False)]), 0.0, 0.0)
    assert published(broadcasts) == {A: False, B: True}
    assert probe(k, "success") == {A: True}


def test_a_reload_keeps_the_counts_of_the_targets_that_stay():
    k = checked_keeper()
    traffic(k, 500)
    k.configure(parse_config("upstreams:\n  - name: up\n    targets: [{target: '127.0.0.1:9001'}]\n" + BOTH))
    assert traffic(k, 500) == {A: False}, "the first failure still counts after the reload"


# ---- a reload that removes the checks, a restarted keeper, an operator's verdict -----------------------------------

PASSIVE = """
    healthchecks:
      passive:
        unhealthy: {http_failures: 1}
"""
UNCHECKED = "upstreams:\n  - name: up\n    targets: [{target: '127.0.0.1:9001'}, {target: '127.0.0.1:9002'}]\n"


def test_a_reload_that_removes_the_checks_brings_an_unhealthy_target_back():
    """Kong rebuilds its balancers at a reload (kong/runloop/handler.lua 3.9.1:693-697 stop_healthcheckers, :766-771
    balancer.init()); an upstream whose new healthchecks use no check gets no checker (balancer/healthcheckers.lua
    :253-254 `return populate_balancer(balancer)`), so every address is available again. Kept unhealthy, with no
    check left to revive it, the target got no traffic until a restart."""
    k = checked_keeper(PASSIVE)
    assert traffic(k, 500) == {A: False}
    k.reload(parse_config(UNCHECKED + PASSIVE))  # (Kong's delayed_clear keeps the states the new checker reads back)
    assert verdicts(k.snapshot().targets) == {A: False, B: True}
    k.reload(parse_config(UNCHECKED))
    assert verdicts(k.snapshot().targets) == {A: True, B: True}
    assert k.admin("health", {}, 0.0, 0.0)[0]["targets"] == {A: True, B: True}


def restarted(k: Keeper, config: str) -> Keeper:
    """The keeper the root starts after `k` is killed: it begins from the state file `k` left (keeper/saved.py)."""
    new = Keeper(parse_config(config), workers=1)
    new.restore(decode(encode(k.saved(0.0, 0.0))), 0.0, 0.0)
    return new


def test_a_passive_verdict_survives_a_keeper_restart():
    """Kong keeps each target's state in the kong_healthchecks shared dict (healthcheckers.lua:276), which outlives a
    worker: a new checker reads it back (lua-resty-healthcheck 3.1.0 healthcheck.lua:1682 `target.internal_health =
    INTERNAL_STATES[self.shm:get(state_key)]`). With passive checks only there is no health checker to re-send the
    verdicts, so a new keeper's first snapshot gave the dead target traffic again; the state file now holds them."""
    k = checked_keeper(PASSIVE)
    assert traffic(k, 500) == {A: False}
    new = restarted(k, UNCHECKED + PASSIVE)
    assert verdicts(new.snapshot().targets) == {A: False, B: True}
    assert traffic(new, 500, "127.0.0.1:9002") == {B: False}, "counted afresh: the other target still trips"
    assert traffic(new, 500) == {}, "a failure on an unhealthy target is not counted (its machine is UNHEALTHY)"
    assert verdicts(restarted(k, UNCHECKED).snapshot().targets) == {A: True, B: True}, "no checks: no verdict"


def test_the_checkers_first_report_replaces_the_verdicts_of_the_state_file():
    """The file follows the keeper's publications by up to SAVE_EVERY_S; the checker's view is those publications:
    a target it holds healthy is healthy, whatever the file said."""
    k = checked_keeper()
    probe(k, "http_failure")
    new = restarted(k, UNCHECKED + BOTH)
    _, broadcasts = new.handle(b"health", p.HealthReport(items=[("up", "127.0.0.1:9002", False)]), 0.0, 0.0)
    assert published(broadcasts) == {A: True, B: False}


async def test_a_verdict_reached_just_after_a_keeper_starts_is_saved_at_once(tmp_path: Path) -> None:
    """The saver wrote an empty file for the keeper's first snapshot, then waited SAVE_EVERY_S before the next
    write: a target that failed in that time and a keeper killed before it were a verdict lost."""
    path = tmp_path / "keeper.state.json"
    k = checked_keeper(PASSIVE)
    saver = process._Saver(k, str(path))
    saver.restore()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(saver.run)
        saver.wake()  # the first snapshot: nothing to save
        await trio.sleep(0.01)
        traffic(k, 500)
        saver.wake()
        await trio.sleep(0.01)
        assert read_saved(str(path)) == SavedState(targets={A: SavedTarget(healthy=False)})
        nursery.cancel_scope.cancel()


def test_an_operator_marks_a_target_unhealthy_and_healthy_again():
    """Kong's PUT /upstreams/{u}/targets/{t}/unhealthy and /healthy (kong/api/routes/upstreams.lua:236-246) set the
    state and clear the counters (lua-resty-healthcheck 3.1.0 set_target_status, healthcheck.lua:931-970)."""
    k = checked_keeper()
    traffic(k, 500)  # passive failure 1 of 2
    result, broadcasts = k.admin("targets", {"action": "healthy", "target": A}, 0.0, 0.0)
    assert result["healthy"] is True and published(broadcasts) == {A: True}
    assert traffic(k, 500) == {}, "the count was cleared: 1 of 2 again"
    result, broadcasts = k.admin("targets", {"action": "unhealthy", "target": A}, 0.0, 0.0)
    assert result["healthy"] is False and published(broadcasts) == {A: False}
    assert probe(k, "success") == {A: True}, "an UNHEALTHY machine: active successes 1 bring it back"


def test_an_operator_verdict_on_a_target_of_an_upstream_without_checks_is_refused():
    """Kong answers 400 "no healthchecker found for <upstream>" (kong/runloop/balancer/init.lua post_health)."""
    k = Keeper(parse_config(UNCHECKED), workers=1)
    with pytest.raises(ValueError, match="upstream 'up' has no health checks"):
        k.admin("targets", {"action": "unhealthy", "target": A}, 0.0, 0.0)
    assert k.targets[A].healthy is True


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="needs Linux /proc")
async def test_a_passive_verdict_outlives_a_keeper_kill_yields_to_an_operator_and_to_a_reload_without_checks(
        tmp_path: Path, nursery: trio.Nursery) -> None:
    """The unit tests above, through the processes. A target passive checks took out (one 500, http_failures 1)
    stays out after the keeper is killed and restarted (Kong's kong_healthchecks shared dict outlives a worker: the
    state file now holds the verdict); `gateway admin targets healthy|unhealthy target=K` are Kong's PUT
    /upstreams/{u}/targets/{t}/healthy and /unhealthy; a reload whose upstream has no checks gives every target
    traffic again (Kong's rebuilt balancer: healthcheckers.lua:253-254 populate_balancer)."""
    a = Backend("a")
    await nursery.start(a.serve)
    a.status = 500
    key = f"u|{a.target}"

    def doc(healthchecks: dict | None) -> dict:
        up: dict = {"name": "u", "targets": [{"target": a.target}]}
        if healthchecks is not None:
            up["healthchecks"] = healthchecks
        return {"upstreams": [up],
                "services": [{"name": "s", "url": "http://u", "routes": [{"name": "r", "paths": ["/"]}]}]}

    async def statuses(n: int = 3) -> list[int]:
        return [(await request(gw.port, "GET", "/x")).status for _ in range(n)]

    async def verdict(healthy: bool) -> bool:
        return (await gw.targets())[key]["healthy"] is healthy

    gw = GatewayNode(tmp_path / "gw", doc({"passive": {"unhealthy": {"http_failures": 1}}}))
    try:
        with trio.fail_after(40):
            await gw.start(workers=1)
            assert await statuses(1) == [500]
            await wait_for(lambda: verdict(False), 10, interval=0.05, what="a unhealthy")
            assert await statuses(1) == [503]  # Kong: failure to get a peer

            keeper = await gw.child_pid("keeper")
            assert keeper is not None
            os.kill(keeper, signal.SIGKILL)

            async def replaced() -> bool:
                pid = await gw.child_pid("keeper")
                return pid is not None and pid != keeper

            await wait_for(replaced, 15, interval=0.05, what="a new keeper")
            await trio.sleep(1.0)  # the new keeper's snapshot reaches the worker (it answers the worker's Hello)
            hits = a.hits
            assert await statuses() == [503] * 3 and a.hits == hits, await gw.targets()

            a.status = 200
            cli = await gw.acli("admin", "--config", str(gw.config), "targets", "healthy", f"target={key}")
            assert cli.returncode == 0 and json.loads(cli.stdout)["healthy"] is True, cli.stderr
            assert await statuses() == [200] * 3
            await gw.admin("targets", action="unhealthy", target=key)
            assert await statuses() == [503] * 3

            gw.config.write_text(json.dumps({**gw.doc, **doc(None)}, indent=1))
            await gw.admin("reload")
            await trio.sleep(0.5)  # the new generation serves
            assert await statuses() == [200] * 3, await gw.targets()
    finally:
        gw.cleanup()
