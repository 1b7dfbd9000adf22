"""The discovery process's start, at `gateway start` and at each reload: it is ready without waiting out a registry
that hangs (README "Health checks and discovery": the gateway starts on its config's targets when the registry is
down, and discovery is applied live), and a satellite a reload could not start is started again rather than
dropped (OTP: a permanent child is kept running; start_child forgets a spec whose start failed, so the root retries
it). Loopback only."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
import trio
import zmq
from backends import free_port

from gateway.config import parse_config
from gateway.discovery.process import serve
from gateway.discovery.service import first_wait
from gateway.node import root as root_module
from gateway.node.root import Node
from supervisor import ChildSpec, Handle, SupervisorSpec, SupFlags
from supervisor import serve as serve_supervisor


@pytest.fixture
def hung_port() -> Iterator[int]:
    """A registry that takes connections (the kernel's backlog) and never answers: a hung member, or a proxy to a
    blackholed one."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


async def test_the_discovery_process_is_ready_within_a_quarter_of_its_start_timeout_while_etcd_hangs(
        hung_port: int) -> None:
    """gateway/discovery/etcd.py run_etcd starts after its first attempt, which a hung etcd holds for the whole
    `timeout_s`; the process reported ready only then, so with `timeout_s` (8 s here) past `worker_start_timeout_s`
    (2 s) the root gave up on it ("discovery: not ready within 2.0 s") and `gateway start` failed. It is ready after
    first_wait (a quarter of the start timeout, here 0.5 s), the rest of the budget left to its own start."""
    config = parse_config(f"""
gateway: {{worker_start_timeout_s: 2}}
upstreams:
  - name: up
    discovery: {{type: etcd, endpoints: ["127.0.0.1:{hung_port}"], timeout_s: 8}}
""")
    ctx = zmq.Context()
    try:
        async with trio.open_nursery() as nursery:
            began = time.monotonic()
            await serve(config, f"tcp://127.0.0.1:{free_port()}", ctx, nursery)
            assert time.monotonic() - began < 1.0
            nursery.cancel_scope.cancel()
    finally:
        ctx.destroy(linger=0)


class _FlakySatellite:
    """A satellite task whose first `failures` starts fail, as a process not ready within its start timeout."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.starts = 0

    async def __call__(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.starts += 1
        if self.starts <= self.failures:
            raise RuntimeError("not ready within 2.0 s")
        task_status.started()
        await trio.sleep_forever()


async def _node_with_root(nursery: trio.Nursery, children: list[ChildSpec]) -> Node:
    """A Node whose root supervisor runs `children` as tasks (no process, no config file)."""
    node = Node("/nonexistent/gateway.yaml", workers=1)
    node._nursery = nursery
    node.root = await nursery.start(serve_supervisor, SupervisorSpec(SupFlags(intensity=5, period=60), children,
                                                                     name="root"))
    return node


async def _running(root: Handle, child_id: str) -> bool:
    return any(i.id == child_id and i.pid is not None and i.pid.reason is None for i in await root.which_children())


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(root_module, "SATELLITE_RETRY_INITIAL_S", 0.05)
    monkeypatch.setattr(root_module, "SATELLITE_RETRY_MAX_S", 0.1)


async def test_a_satellite_that_fails_to_start_at_a_reload_is_started_again(
        nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, fast_retries: None) -> None:
    """A reload terminated the running discovery process, start_child of the new one failed (a hung etcd held it
    past worker_start_timeout_s), the reload only logged "reload: discovery did not start on the new config" and
    reported success, and no discovery ran from then on. OTP keeps a permanent child running (a failed restart is
    tried again: supervisor.erl try_again_restart); start_child forgets the spec of a failed start, so the root
    starts it again with backoff until it runs."""
    old = _FlakySatellite(failures=0)
    node = await _node_with_root(nursery, [ChildSpec("discovery", old)])
    new = _FlakySatellite(failures=2)
    monkeypatch.setattr(node, "_satellites", lambda current, config: [ChildSpec("discovery", new)])
    await node._restart_satellites("/nonexistent/config.current.yaml", parse_config("{}"))
    assert node.root is not None
    with trio.fail_after(3):
        while not await _running(node.root, "discovery"):
            await trio.sleep(0.02)
    assert new.starts == 3


async def test_a_reload_replaces_the_retried_start_of_the_satellite_before_it(
        nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, fast_retries: None) -> None:
    """The retries of a satellite that did not start belong to its reload's config: the next reload cancels them
    and starts its own satellites, so a config that no longer has discovery does not see the old one come back."""
    node = await _node_with_root(nursery, [ChildSpec("discovery", _FlakySatellite(failures=0))])
    never = _FlakySatellite(failures=10**6)
    monkeypatch.setattr(node, "_satellites", lambda current, config: [ChildSpec("discovery", never)])
    await node._restart_satellites("/nonexistent/config.current.yaml", parse_config("{}"))
    with trio.fail_after(3):
        while never.starts < 3:
            await trio.sleep(0.02)
    monkeypatch.setattr(node, "_satellites", lambda current, config: [])  # the next config: no discovery
    await node._restart_satellites("/nonexistent/config.current.yaml", parse_config("{}"))
    tried = never.starts
    await trio.sleep(0.3)
    assert never.starts == tried
    assert node._satellite_retries == {}
    assert node.root is not None and not await _running(node.root, "discovery")


def test_a_hung_registry_delays_a_start_by_a_second_at_most() -> None:
    """A registry that answers does so within milliseconds: the wait for the first answers is at most FIRST_WAIT_S
    whatever the start timeout (15 s by default)."""
    assert first_wait(15.0) == 1.0
