"""How a worker applies discovered target lists and target states (gateway.state.shared.SharedState).

A worker has one thread: each group it recomputes (which targets its balancer skips) is a walk over the whole group.
A message naming n targets of a group must recompute that group once, not once per target: otherwise one list of
n targets costs O(n^2) and a list growing one target at a time O(n^3), and every route of the worker stalls (500
targets added one by one stalled a worker for 10 s). The tests count recomputes, not seconds: timing assertions
are flaky on a shared machine.
"""

from __future__ import annotations

from typing import Any

import pytest

from gateway.breaker.messages import BreakerUpdate
from gateway.breaker.state import State
from gateway.bus import protocol as p
from gateway.config import parse_config
from gateway.runtime import UpstreamGroup, compile_config
from gateway.state.shared import SharedState

# least-connections: its balancer is built in linear time (round-robin's smooth_schedule walks every target for each
# entry of its period), so the tests' cost is the worker's own handling
CONFIG = """
_format_version: '3.0'
upstreams:
  - name: up
    algorithm: {algorithm}
    discovery: {{type: consul, endpoints: ['127.0.0.1:8500'], service: svc}}
  - name: fixed
    targets: [{{target: '127.0.0.1:9001'}}, {{target: '127.0.0.1:9002'}}]
services:
  - {{name: s, host: up}}
  - {{name: f, host: fixed}}
routes:
  - {{name: r, service: s, paths: ['/']}}
  - {{name: q, service: f, paths: ['/f']}}
"""


def infos(n: int, start: int = 0) -> list[p.TargetInfo]:
    return [p.TargetInfo(f"10.{i // 62500}.{i // 250 % 250}.{i % 250 + 1}", 8000, 100) for i in range(start, n)]


def key(info: p.TargetInfo) -> str:
    return f"up|{info.name}"


class Counted:
    """A worker's SharedState over CONFIG, counting the group recomputes it makes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, algorithm: str = "least-connections") -> None:
        self.shared = SharedState("w1", 1)
        self.runtime = compile_config(parse_config(CONFIG.format(algorithm=algorithm)))
        self.shared.attach(self.runtime)
        self.recomputes: list[str] = []
        real = self.shared._recompute_group

        def counting(group: UpstreamGroup) -> None:
            self.recomputes.append(group.name)
            real(group)

        monkeypatch.setattr(self.shared, "_recompute_group", counting)

    @property
    def group(self) -> UpstreamGroup:
        return self.runtime.groups["up"]

    def send(self, msg: p.Msg) -> list[str]:
        """Hand `msg` to the worker; the groups it recomputed, in order."""
        self.recomputes.clear()
        self.shared.on_message(msg)
        return list(self.recomputes)


async def test_a_list_of_thousands_of_targets_recomputes_its_group_once(monkeypatch: pytest.MonkeyPatch) -> None:
    worker = Counted(monkeypatch)
    assert worker.send(p.UpstreamTargets(upstream="up", targets=infos(3000))) == ["up"]
    assert len(worker.group.keys) == 3000
    assert worker.shared._groups[key(infos(3000)[2999])] == [(worker.group, 2999)]
    assert worker.send(p.TargetsChanged(targets=[p.TargetState(key(t), healthy=False) for t in infos(3000)])) == ["up"]
    assert worker.group.unusable == frozenset(range(3000))


async def test_a_list_growing_one_target_at_a_time_recomputes_once_per_message(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """As services register one by one: each new list, then the new target's state (as the keeper sends them)."""
    worker = Counted(monkeypatch)
    targets = infos(400)
    for n in range(1, len(targets) + 1):
        assert worker.send(p.UpstreamTargets(upstream="up", targets=targets[:n])) == ["up"]
        assert worker.send(p.TargetsChanged(targets=[p.TargetState(key(targets[n - 1]))])) == ["up"]
    assert len(worker.shared._groups) == 400 + 2  # the fixed upstream's two, and no key of an older list


async def test_a_snapshot_recomputes_each_group_once(monkeypatch: pytest.MonkeyPatch) -> None:
    worker = Counted(monkeypatch)
    targets = infos(3000)
    states = [p.TargetState(key(t), drained=i % 2 == 0) for i, t in enumerate(targets)]
    listed = [p.UpstreamTargets(upstream="up", targets=targets)]
    snapshot = p.Snapshot(incarnation="k1", targets=states, upstreams=listed)
    assert sorted(worker.send(snapshot)) == ["fixed", "up"]
    assert worker.group.unusable == frozenset(range(0, 3000, 2))


async def test_breaker_updates_for_many_targets_recompute_once_and_sweep_each(monkeypatch: pytest.MonkeyPatch) -> None:
    worker = Counted(monkeypatch)
    targets = infos(500)
    worker.send(p.UpstreamTargets(upstream="up", targets=targets))
    worker.group.sweep = True
    swept: list[int] = []
    worker.shared.on_sweep = lambda group, index: swept.append(index)
    updates = [BreakerUpdate(key(t), State.OPEN) for t in targets[:300]]
    assert worker.send(p.BreakersChanged(updates=updates)) == ["up"]
    assert worker.group.unusable == frozenset(range(300))
    assert swept == list(range(300))


async def test_target_states_without_a_weight_leave_the_balancer_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Re-weighting may rebuild a balancer's whole schedule (round-robin's): health flips must not pay it."""
    worker = Counted(monkeypatch)
    worker.send(p.UpstreamTargets(upstream="up", targets=infos(1000)))
    reweighted: list[Any] = []
    balancer = type(worker.group.balancer)
    monkeypatch.setattr(balancer, "set_weight", lambda self, index, weight: reweighted.append((index, weight)))
    worker.send(p.TargetsChanged(targets=[p.TargetState(key(t), healthy=False) for t in infos(1000)]))
    assert reweighted == []
    worker.send(p.TargetsChanged(targets=[p.TargetState(key(infos(1000)[7]), weight=0)]))
    worker.send(p.TargetsChanged(targets=[p.TargetState(key(infos(1000)[7]))]))  # the override lifted
    assert reweighted == [(7, 0), (7, 100)]


async def test_an_operators_weight_outlives_a_new_discovered_list(monkeypatch: pytest.MonkeyPatch) -> None:
    """The keeper keeps a weight set on the admin channel when discovery changes the list (and does not send it
    again): the worker's new balancer must have it too."""
    worker = Counted(monkeypatch, "round-robin")
    first, second, third = infos(3)
    worker.send(p.UpstreamTargets(upstream="up", targets=[first, second]))
    worker.send(p.TargetsChanged(targets=[p.TargetState(key(first), weight=0)]))
    worker.send(p.UpstreamTargets(upstream="up", targets=[first, second, third]))
    assert {worker.group.balancer.pick() for _ in range(20)} == {1, 2}
