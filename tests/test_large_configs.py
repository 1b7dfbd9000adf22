"""Large configs (thousands of upstreams, targets, routes): compiling one costs work that grows with the config, not
with the product of two of its parts. Each test counts work, never times it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from gateway.config import parse_config
from gateway.runtime import compile_config


class _CountingList(list):  # type: ignore[type-arg]
    """A list that counts the items its iterations hand out."""

    handed = 0

    def __iter__(self) -> Iterator[Any]:
        for item in super().__iter__():
            _CountingList.handed += 1
            yield item


def test_compile_reads_the_targets_once_not_once_per_upstream() -> None:
    """Kong loads an upstream's targets by its key (kong/runloop/balancer/targets.lua:83-86
    `load_targets_into_memory(upstream_id)`: `kong.db.targets:select_by_upstream_raw({ id = upstream_id }, ...)`),
    the work growing with that upstream's targets. Scanning every target of the config for each upstream costs
    upstreams x targets (measured: a compile took 0.38 s at 1,000 upstreams, 2.4 s at 4,000, in every worker and
    the root at each start and reload).

    Here: 300 upstreams of 2 targets; compiling must not look at the 600 targets once per upstream."""
    doc = {"_format_version": "3.0",
           "upstreams": [{"name": f"up{i}", "targets": [{"target": f"10.0.{i // 200}.{i % 200 + 1}:{80 + t}"}
                                                        for t in range(2)]} for i in range(300)],
           "services": [{"name": f"s{i}", "host": f"up{i}", "routes": [{"name": f"r{i}", "paths": [f"/r{i}"]}]}
                        for i in range(300)]}
    config = parse_config(json.dumps(doc), "scale.json")
    assert len(config.targets) == 600
    config.targets = _CountingList(config.targets)
    _CountingList.handed = 0
    runtime = compile_config(config, "scale.json")
    assert _CountingList.handed <= 10 * 600, (
        f"compiling handed out {_CountingList.handed} targets for 600: the list is scanned once per upstream")
    assert [(t.host, t.port) for t in runtime.groups["up299"].targets] == [("10.0.1.100", 80), ("10.0.1.100", 81)]


def test_health_checks_and_discovery_read_the_targets_once_not_once_per_upstream() -> None:
    """The same rule for the processes that list every upstream's targets at start and reload: the health checker
    (each upstream with active checks, lua-resty-healthcheck given its targets by Kong's balancer) and the state
    keeper and root asking which upstreams a source reports (named targets to resolve)."""
    from gateway.discovery.service import discovered_upstreams
    from gateway.health.checker import upstreams_from_config

    checks = {"active": {"healthy": {"interval": 5}, "unhealthy": {"interval": 5}}}
    doc = {"_format_version": "3.0",
           "upstreams": [{"name": f"up{i}", "healthchecks": checks,
                          "targets": [{"target": f"10.0.{i // 200}.{i % 200 + 1}:{80 + t}"} for t in range(2)]}
                         for i in range(300)]}
    config = parse_config(json.dumps(doc), "scale.json")
    config.targets = _CountingList(config.targets)
    _CountingList.handed = 0
    assert discovered_upstreams(config) == []  # (addresses only: nothing to resolve)
    checked = upstreams_from_config(config)
    assert _CountingList.handed <= 10 * 600, (
        f"{_CountingList.handed} targets handed out for 600: the list is scanned once per upstream")
    assert len(checked) == 300
    assert [(t.host, t.port) for t in checked[299].targets] == [("10.0.1.100", 80), ("10.0.1.100", 81)]
