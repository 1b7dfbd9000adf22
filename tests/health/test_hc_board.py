"""One state machine per target for both checks (gateway.health.board), as Kong reports its probes and the proxied
traffic to one lua-resty-healthcheck checker per upstream: the counters are shared, each check only brings its
thresholds."""

from __future__ import annotations

from gateway.config import parse_config
from gateway.health import TCP_FAILURE, Event, HealthBoard, State

T = "10.0.1.10:8080"


def board(healthchecks: str) -> HealthBoard:
    return HealthBoard.from_config(parse_config(f"""
upstreams:
  - name: u
    healthchecks: {healthchecks}
    targets: [{{target: "{T}"}}]
"""))


BOTH = """
      active: {healthy: {interval: 1, successes: 1}, unhealthy: {interval: 60, http_failures: 1, tcp_failures: 3}}
      passive: {healthy: {successes: 2}, unhealthy: {http_failures: 2, tcp_failures: 1}}
"""


def test_a_probe_success_clears_the_passive_failures() -> None:
    b = board(BOTH)
    assert b.report("u", T, 500) is None and b.state("u", T) is State.MOSTLY_HEALTHY
    assert b.probed("u", T, Event.SUCCESS) is None and b.state("u", T) is State.HEALTHY
    assert b.report("u", T, 500) is None, "one failure in a row again: passive http_failures is 2"
    assert b.healthy("u", T)


def test_a_passive_success_clears_the_active_failures() -> None:
    b = board(BOTH)
    b.probed("u", T, Event.TCP_FAILURE)
    b.probed("u", T, Event.TCP_FAILURE)
    assert b.report("u", T, 200) is None, "one good proxied answer of the 2 passive successes"
    assert b.probed("u", T, Event.TCP_FAILURE) is None, "one probe failure in a row again, of active's 3"
    assert b.state("u", T) is State.MOSTLY_HEALTHY


def test_each_outcome_is_judged_by_its_own_checks_threshold() -> None:
    probe_trips = board(BOTH)
    assert probe_trips.probed("u", T, Event.HTTP_FAILURE) is False, "active http_failures 1"
    traffic = board(BOTH)
    assert traffic.report("u", T, 500) is None, "passive http_failures 2"
    assert traffic.report("u", T, TCP_FAILURE) is False, "passive tcp_failures 1"
    assert traffic.probed("u", T, Event.SUCCESS) is True, "active successes 1 bring back what passive took out"
    slow = board(BOTH)
    slow.report("u", T, TCP_FAILURE)
    assert slow.report("u", T, 200) is None and slow.report("u", T, 200) is True, "passive successes 2"


def test_the_nginx_check_alias_counts_on_the_same_machine() -> None:
    """`healthchecks.check` (fall 2, rise 1) for the probes beside Kong's passive block."""
    b = board("""
      check: {interval: 1000, rise: 1, fall: 2}
      passive: {unhealthy: {http_failures: 2}}
""")
    b.probed("u", T, Event.TCP_FAILURE)
    b.report("u", T, 500)
    b.probed("u", T, Event.SUCCESS)
    assert b.state("u", T) is State.HEALTHY, "the probe's success cleared both counts"
    b.probed("u", T, Event.TIMEOUT)
    assert b.probed("u", T, Event.TCP_FAILURE) is False, "fall 2: any two probe failures in a row"


def test_which_upstreams_are_tracked() -> None:
    config = parse_config("""
upstreams:
  - {name: active, healthchecks: {active: {healthy: {interval: 1}}}}
  - {name: passive, healthchecks: {passive: {unhealthy: {timeouts: 1}}}}
  - {name: alias, healthchecks: {check: {}}}
  - {name: none}
""")
    b = HealthBoard.from_config(config)
    assert [name for name in ("active", "passive", "alias", "none") if b.tracks(name)] == ["active", "passive", "alias"]
    assert b.report("none", T, 500) is None and b.probed("none", T, Event.TIMEOUT) is None
    assert b.healthy("none", T) and b.state("none", T) is State.HEALTHY
    b.set_health("none", T, False)
    assert b.healthy("none", T), "an upstream without checks has no machines"


def test_a_reload_keeps_the_machines_of_the_targets_that_stay() -> None:
    old = board(BOTH)
    old.report("u", T, 500)
    old.probed("u", "10.0.1.11:8080", Event.HTTP_FAILURE)
    new = board(BOTH)
    new.adopt(old, {("u", T)})
    assert new.state("u", T) is State.MOSTLY_HEALTHY
    assert new.report("u", T, 500) is False, "the count went on"
    assert new.healthy("u", "10.0.1.11:8080"), "a target that left starts afresh if it comes back"
    unchecked = board("{}")
    unchecked.adopt(old, {("u", T)})
    assert unchecked.targets == {}
