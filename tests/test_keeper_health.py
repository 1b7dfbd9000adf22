"""What a new state keeper publishes about target health before and after the health checker's first report.

A keeper that has just (re)started knows no verdicts. Publishing every target as healthy would send traffic to a
target the workers know is down until the checker's re-sent view arrives; so until then it publishes no verdict
(healthy=None) and workers keep theirs.
"""

from __future__ import annotations

import logging

import pytest

from gateway.bus import protocol as p
from gateway.config import parse_config
from gateway.discovery.types import TargetInfo
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
    _, broadcasts = k.handle(b"health", p.HealthReport(items=[("up", "127.0.0.1:9001", False)]), 0.0, 0.0)
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
