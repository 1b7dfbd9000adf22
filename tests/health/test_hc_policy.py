"""Reading Kong's healthchecks (and the nginx/HAProxy aliases) into policies; passive checks fed with outcomes."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, parse_config
from gateway.config.schema import Healthchecks
from gateway.health import TCP_FAILURE, TIMEOUT, ActivePolicy, Event, HealthBoard, PassivePolicy, State, Thresholds


def healthchecks(yaml_block: str) -> Healthchecks:
    return parse_config(f"upstreams:\n  - name: u\n    healthchecks: {yaml_block}\n").upstreams[0].healthchecks


def test_kong_defaults_leave_active_checks_off() -> None:
    p = ActivePolicy.from_config(Healthchecks())
    assert not p.enabled and p.type == "http" and p.http_path == "/" and p.timeout_s == 1 and p.concurrency == 10
    assert p.thresholds == Thresholds()
    assert p.classify_status(200) is Event.SUCCESS and p.classify_status(302) is Event.SUCCESS
    assert p.classify_status(500) is Event.HTTP_FAILURE and p.classify_status(404) is Event.HTTP_FAILURE
    assert p.classify_status(418) is None, "a status in neither list says nothing (Kong)"


def test_the_guides_kong_block() -> None:
    config = parse_config(open("configs/kong.yml", encoding="utf-8").read())
    p = ActivePolicy.from_config(config.upstreams[0].healthchecks)
    assert p.enabled and p.http_path == "/health"
    assert (p.healthy_interval_s, p.unhealthy_interval_s) == (10, 5)
    assert p.interval_for(True) == 10 and p.interval_for(False) == 5
    assert p.thresholds == Thresholds(successes=2, http_failures=3)


def test_kong_fields() -> None:
    p = ActivePolicy.from_config(healthchecks("""
      active:
        type: tcp
        timeout: 0.5
        concurrency: 3
        headers: {X-Probe: [a, b]}
        healthy: {interval: 0, successes: 1, http_statuses: [204]}
        unhealthy: {interval: 2, http_failures: 1, tcp_failures: 4, timeouts: 5, http_statuses: [500]}
"""))
    assert p.enabled and (p.healthy_interval_s, p.unhealthy_interval_s) == (0, 2), "probe only unhealthy targets"
    assert p.type == "tcp" and p.timeout_s == 0.5 and p.concurrency == 3
    assert p.headers == (("X-Probe", "a"), ("X-Probe", "b"))
    assert p.thresholds == Thresholds(successes=1, http_failures=1, tcp_failures=4, timeouts=5)
    assert p.classify_status(204) is Event.SUCCESS and p.classify_status(200) is None


def test_intervals_are_kongs_seconds_a_number_up_to_65535_and_counts_one_byte() -> None:
    p = ActivePolicy.from_config(healthchecks("{active: {healthy: {interval: 0.5}, unhealthy: {interval: 0.25}}}"))
    assert (p.healthy_interval_s, p.unhealthy_interval_s) == (0.5, 0.25)
    with pytest.raises(ConfigError) as err:
        healthchecks("{active: {healthy: {interval: 65536, successes: 256}}}")
    assert err.value.messages == [
        "<config>: upstreams[0].healthchecks.active.healthy.interval: expected number >= 0 and <= 65535, got 65536",
        "<config>: upstreams[0].healthchecks.active.healthy.successes: expected int >= 0 and <= 255, got 256"]


def test_nginx_aliases() -> None:
    p = ActivePolicy.from_config(healthchecks(
        "{check: {interval: 3000, rise: 2, fall: 3, timeout: 1000, path: /health, expect_status: [200]}}"))
    assert (p.healthy_interval_s, p.unhealthy_interval_s, p.timeout_s, p.http_path) == (3, 3, 1, "/health")
    assert p.thresholds == Thresholds(successes=2, failures=3)
    assert p.classify_status(200) is Event.SUCCESS
    assert p.classify_status(302) is Event.HTTP_FAILURE and p.classify_status(418) is Event.HTTP_FAILURE, \
        "HAProxy's `http-check expect status 200`: anything else fails"


def test_aliases_override_kong_fields_and_default_to_nginx() -> None:
    p = ActivePolicy.from_config(healthchecks("""
      active: {http_path: /k, healthy: {interval: 10, successes: 4}, unhealthy: {interval: 5, timeouts: 2}}
      check: {rise: 1, type: tcp}
"""))
    assert p.type == "tcp" and p.http_path == "/k" and (p.healthy_interval_s, p.unhealthy_interval_s) == (10, 5)
    assert p.thresholds == Thresholds(successes=1, timeouts=2), "Kong's failure counters stay; no nginx fall added"
    bare = ActivePolicy.from_config(healthchecks("{check: {}}"))
    assert bare.enabled and (bare.healthy_interval_s, bare.thresholds) == (30, Thresholds(successes=2, failures=5))


def test_the_nginx_check_block_without_a_type_is_a_tcp_check_as_nginxs() -> None:
    """The guide's `check interval=3000 rise=2 fall=3 timeout=1000`: nginx's check module defaults to tcp (a connect
    is a success). Probing HTTP GET / took out an MCP server, which answers 404 there."""
    assert ActivePolicy.from_config(healthchecks("{check: {interval: 3000, rise: 2, fall: 3, timeout: 1000}}")).type \
        == "tcp"


def test_the_check_block_with_a_path_or_expected_status_is_an_http_check_as_haproxys_httpchk() -> None:
    for block in ("{check: {path: /health}}", "{check: {expect_status: 200}}"):
        assert ActivePolicy.from_config(healthchecks(block)).type == "http", block


def test_passive_policy() -> None:
    p = PassivePolicy.from_config(healthchecks("{passive: {unhealthy: {http_failures: 2, timeouts: 1}}}"))
    assert p.enabled and p.thresholds == Thresholds(http_failures=2, timeouts=1)
    assert p.classify(500) is Event.HTTP_FAILURE and p.classify(429) is Event.HTTP_FAILURE
    assert p.classify(200) is Event.SUCCESS and p.classify(418) is None
    assert p.classify(TCP_FAILURE) is Event.TCP_FAILURE and p.classify(TIMEOUT) is Event.TIMEOUT
    tcp = PassivePolicy.from_config(healthchecks("{passive: {type: tcp, unhealthy: {tcp_failures: 1}}}"))
    assert tcp.classify(500) is Event.HTTP_FAILURE, "Kong reports statuses whatever the passive type"
    assert not PassivePolicy.from_config(Healthchecks()).enabled
    with pytest.raises(ValueError):
        p.classify("weird")


def test_an_upstreams_504_counts_as_a_timeout_as_kongs_log_phase_reports_it() -> None:
    for type_ in ("http", "tcp"):
        policy = PassivePolicy.from_config(healthchecks(f"{{passive: {{type: {type_}, unhealthy: {{timeouts: 1}}}}}}"))
        assert policy.classify(504) is Event.TIMEOUT


def test_passive_outcomes_on_the_board() -> None:
    """Proxied outcomes classified by the passive policy and counted with the passive thresholds."""
    config = parse_config("""
upstreams:
  - name: erl
    healthchecks:
      passive:
        healthy: {successes: 2}
        unhealthy: {http_failures: 3, tcp_failures: 1, timeouts: 2}
  - name: unchecked
""")
    board = HealthBoard.from_config(config)
    assert board.tracks("erl") and not board.tracks("unchecked")
    a, b = "10.0.1.10:8080", "10.0.1.11:8080"
    assert board.report("erl", a, 500) is None and board.report("erl", a, 503) is None
    assert board.state("erl", a) is State.MOSTLY_HEALTHY and board.healthy("erl", a)
    assert board.report("erl", a, 200) is None, "a success in between starts the count over"
    for _ in range(2):
        board.report("erl", a, 500)
    assert board.report("erl", a, 500) is False
    assert board.report("erl", a, 500) is None, "already unhealthy"
    assert board.report("erl", b, TCP_FAILURE) is False, "tcp_failures: 1"
    assert board.report("erl", a, 200) is None and board.report("erl", a, 201) is True
    assert board.report("erl", a, 418) is None and board.report("unchecked", a, 500) is None
    board.set_health("erl", b, True)
    assert board.healthy("erl", b)
    board.report("erl", b, TIMEOUT)
    board.retain("erl", {a})
    assert board.state("erl", b) is State.HEALTHY, "forgotten"
