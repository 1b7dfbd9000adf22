"""The status page's data and HTML from metric samples and the root's overview (no processes)."""

from __future__ import annotations

import math

import pytest

from gateway.status.page import RateHistory, Sample, build, quantile, render

TREE = {"id": "root", "type": "supervisor", "children": [
    {"id": "keeper", "type": "worker", "state": "running", "pid": 11, "uptime_s": 5, "restarts": 0},
    {"id": "workers@1", "type": "supervisor", "state": "running", "children": [
        {"id": "worker-1", "type": "worker", "state": "running", "pid": 12, "uptime_s": 5, "restarts": 2}]}]}


def overview(targets: list[dict] | None = None, breakers: dict | None = None) -> dict:
    return {"status": {"version": "1", "pid": 10, "uptime_s": 5, "generation": 1, "listen": ["127.0.0.1:8000"],
                       "tree": TREE},
            "targets": targets if targets is not None else [
                {"key": "up|a:1", "drained": False, "weight": None, "healthy": True},
                {"key": "up|b:2", "drained": False, "weight": None, "healthy": False}],
            "breakers": breakers if breakers is not None else {},
            "upstreams": {"up": {"checked": True, "targets": {"a:1": 100, "b:2": 50}}}}


def sample(at: float, counters: dict[tuple[str, ...], float] | None = None) -> Sample:
    return Sample(at, dict(counters or {}), {})


def gauges() -> dict:
    return {"active": {"up|a:1": 3}, "breaker": {}, "restarts": {}, "local_share": {}}


def test_quantiles_interpolate_within_buckets_like_prometheus():
    rows = [(1.0, 10.0), (5.0, 90.0), (10.0, 100.0), (math.inf, 100.0)]
    assert quantile(0.5, rows) == pytest.approx(1 + 4 * (50 - 10) / 80)
    assert quantile(0.99, rows) == pytest.approx(5 + 5 * (99 - 90) / 10)
    assert quantile(0.5, [(1.0, 0.0), (math.inf, 0.0)]) is None
    assert quantile(0.99, [(1.0, 1.0), (math.inf, 10.0)]) == 1.0  # beyond the last bound: its lower edge


def test_an_unhealthy_target_is_down_and_listed_first_among_problems():
    data = build(overview(), sample(10, {("target", "up|a:1"): 5}), None, gauges())
    rows = {t["key"]: t for u in data["upstreams"] for t in u["targets"]}
    assert rows["up|a:1"]["status"] == "UP" and rows["up|a:1"]["active"] == 3 and rows["up|a:1"]["weight"] == 100
    assert rows["up|b:2"]["status"] == "DOWN" and rows["up|b:2"]["weight"] == 50
    assert data["problems"] == ["target up|b:2 is DOWN (unhealthy)"]


def test_an_open_breaker_is_down_and_every_target_down_is_an_upstream_problem():
    data = build(overview(targets=[{"key": "up|a:1", "healthy": True}, {"key": "up|b:2", "healthy": False}],
                          breakers={"up|a:1": {"state": "open"}}), sample(1), None, gauges())
    assert data["problems"][0] == "upstream up has no target UP: its requests get 503"
    assert "target up|a:1 is DOWN (circuit breaker open)" in data["problems"]


def test_a_target_names_addresses_take_its_row_each_with_the_name_and_its_weight():
    ov = overview(targets=[{"key": "up|10.0.0.1:1", "healthy": True, "weight": None, "name": "b:2"},
                           {"key": "up|10.0.0.2:1", "healthy": True, "weight": None, "name": "b:2"},
                           {"key": "up|a:1", "healthy": True, "weight": None}])
    data = build(ov, sample(1), None, gauges())
    rows = {t["key"]: t for u in data["upstreams"] for t in u["targets"]}
    assert set(rows) == {"up|a:1", "up|10.0.0.1:1", "up|10.0.0.2:1"}  # no row for the name itself
    assert rows["up|10.0.0.1:1"]["target"] == "10.0.0.1:1 (b:2)" and rows["up|10.0.0.1:1"]["weight"] == 50


@pytest.mark.parametrize(("threshold", "unhealthy"), [(70, True), (60, False), (0, False)])
def test_an_upstream_below_its_healthchecks_threshold_is_an_unhealthy_upstream_problem(threshold, unhealthy):
    """a:1 (weight 100) healthy, b:2 (weight 50) not: 66.7% of the weight is healthy."""
    ov = overview()
    ov["upstreams"]["up"]["threshold"] = threshold
    problems = build(ov, sample(1), None, gauges())["problems"]
    message = ("upstream up is UNHEALTHY: its healthy targets' weight is not above its healthchecks.threshold of "
               f"{threshold}%, so its requests get 503")
    assert (problems[0] == message) == unhealthy
    assert "target up|b:2 is DOWN (unhealthy)" in problems


def test_rates_and_error_rates_come_from_two_samples():
    history = RateHistory()
    first = sample(100, {("target", "up|a:1"): 100, ("target_err", "up|a:1"): 0, ("route", "api"): 100,
                         ("route_5xx", "api"): 0})
    assert history.base(first) is None
    second = sample(102, {("target", "up|a:1"): 140, ("target_err", "up|a:1"): 10, ("route", "api"): 150,
                          ("route_5xx", "api"): 10})
    base = history.base(second)
    data = build(overview(), second, base, gauges())
    row = next(t for u in data["upstreams"] for t in u["targets"] if t["key"] == "up|a:1")
    assert row["rps"] == 20 and row["error_rate"] == 0.25
    (route,) = data["routes"]
    assert route["rps"] == 25 and route["rps_5xx"] == 5
    assert "target up|a:1: 25% of tries failed in the last 10s" in data["problems"]
    assert "route api: 20% of requests answered 5xx in the last 10s" in data["problems"]


def test_a_keeper_that_does_not_answer_is_a_problem_and_health_unknown():
    ov = overview()
    ov["targets"] = ov["breakers"] = None
    data = build(ov, sample(1), None, gauges())
    assert data["problems"][0].startswith("the state keeper is not answering")
    assert {t["health"] for u in data["upstreams"] for t in u["targets"]} == {"unknown"}


def test_the_html_escapes_names_and_marks_rows():
    ov = overview(targets=[{"key": "up|<b>:1", "healthy": False}])
    ov["upstreams"] = {"up": {"checked": True, "targets": {"<b>:1": 1}}}
    page = render(build(ov, sample(1), None, gauges()))
    assert "<b>:1" not in page and "&lt;b&gt;:1" in page
    assert 'class="target down" data-target="up|&lt;b&gt;:1"' in page
    assert 'data-process="worker-1"' in page and "<td class=\"restarts\">2</td>" in page
