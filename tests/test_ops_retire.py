"""A reload's old generation drains beside the root supervisor, not inside it (real processes: `gateway start`,
then `gateway reload` while a request holds the old worker): the root supervisor goes on starting generations and
restarting children meanwhile, and the root goes on handling signals. The workers left when a generation's
supervisor gives up after too many crashes drain the same way, while the root restarts it.

nginx's master never waits for old workers: on SIGHUP it starts new workers and signals the old ones
(src/os/unix/ngx_process_cycle.c, ngx_master_process_cycle: `if (ngx_reconfigure)` ... ngx_start_worker_processes,
ngx_signal_worker_processes(cycle, NGX_SHUTDOWN_SIGNAL)), and every later signal (reopen, reload, respawn on SIGCHLD
through ngx_reap_children) is handled at the next turn of the same loop.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from backends import EchoBackend, wait_until
from e2e_helpers import (
    GatewayNode,
    HoldingBackend,
    admin_now,
    becomes_true,
    blocking_get,
    descendants_of,
    gateway_in_front_of,
    has_exited,
    owners,
    process_name,
    request_in_flight,
    start_daemonised,
)

from gateway.bus.admin_client import AdminUnavailable
from gateway.node.generation import Generation
from supervisor import ChildSpec, Strategy, SupervisorSpec, SupFlags, serve

HOLD_S = 8.0  # the longest the held request keeps generation 1 draining; each test releases it once it has checked
# what it checks during the drain (under drain_timeout: were it not released, it still ends within the drain)


@pytest.fixture
def backend() -> HoldingBackend:
    return HoldingBackend(HOLD_S)  # (closed by gateway_in_front_of)


@pytest.fixture
def gw(tmp_path: Path, backend: HoldingBackend) -> Iterator[GatewayNode]:
    yield from gateway_in_front_of(backend, tmp_path, drain_timeout=10)


@pytest.fixture
def gw_with_access_log(tmp_path: Path, backend: HoldingBackend) -> Iterator[GatewayNode]:
    yield from gateway_in_front_of(backend, tmp_path, drain_timeout=10, access_log=True)


def drained(thread: threading.Thread, codes: list[int], backend: HoldingBackend) -> None:
    """The held request answered (the backend lets it go), through generation 1's draining worker."""
    backend.release()
    thread.join(timeout=15)
    assert codes == [200]


def _reload(gw: GatewayNode) -> None:
    reply = admin_now(gw, "reload", timeout=30)
    assert reply.ok, reply.error


def test_a_second_reload_starts_its_generation_while_the_first_ones_old_workers_still_drain(gw, backend):
    """`kong reload` is nginx's SIGHUP (kong/cmd/reload.lua): a reload during another's drain starts new workers at
    once; it never waits for the draining ones (nor, with an SSE stream held, for drain_timeout)."""
    start_daemonised(gw)
    thread, codes = request_in_flight(gw.port, backend)  # generation 1 drains it until released
    _reload(gw)  # generation 2 accepts; generation 1 drains
    _reload(gw)  # generation 3
    assert thread.is_alive(), "the second reload returned only once generation 1's drain was over"
    assert blocking_get(gw.port) == 200
    drained(thread, codes, backend)


def test_status_and_workers_show_a_draining_generation_until_it_exits(gw, backend):
    """nginx's old workers stay visible while they shut down (ps: "worker process is shutting down"): the status
    lists a retiring generation beside the tree, with its worker's pid, and `workers` lists that worker too,
    until the drain is over."""
    start_daemonised(gw)
    thread, codes = request_in_flight(gw.port, backend)
    _reload(gw)
    status = admin_now(gw, "status").result
    assert [g["id"] for g in status["retiring"]] == ["workers@1"]
    (old_worker,) = status["retiring"][0]["children"]
    assert old_worker["pid"] and status["retiring"][0]["state"] == "retiring"
    assert old_worker["pid"] in [w["pid"] for w in admin_now(gw, "workers").result]
    assert thread.is_alive()  # (all of it while generation 1 drained)
    drained(thread, codes, backend)
    assert becomes_true(lambda: admin_now(gw, "status").result["retiring"] == [], 5)


def test_sigusr1_during_a_drain_reopens_the_access_log_at_once(gw_with_access_log, backend):
    """nginx's master handles SIGUSR1 at once, whatever old workers do (ngx_master_process_cycle: `if (ngx_reopen)`
    -> ngx_reopen_files, ngx_signal_worker_processes(cycle, NGX_REOPEN_SIGNAL)): after logrotate's rename, the
    serving workers write into a new access.log while the old generation still drains."""
    gw = gw_with_access_log
    root = start_daemonised(gw)
    log_path = gw.dir / "run" / "access.log"
    thread, codes = request_in_flight(gw.port, backend)
    _reload(gw)
    assert blocking_get(gw.port) == 200  # generation 2's worker has the access log open
    assert becomes_true(lambda: log_path.exists() and log_path.read_text().count("\n") >= 1, 3)
    os.rename(log_path, gw.dir / "run" / "access.log.1")
    os.kill(root, signal.SIGUSR1)

    def reopened() -> bool:
        assert blocking_get(gw.port) == 200
        return log_path.exists() and log_path.stat().st_size > 0

    assert becomes_true(reopened, 2.5, interval=0.2), "requests are still logged to the rotated access.log.1"
    assert thread.is_alive()  # (all of it while generation 1 drained)
    drained(thread, codes, backend)


def test_a_keeper_killed_during_a_drain_is_restarted_at_once(gw, backend):
    """An OTP supervisor restarts a crashed permanent child as soon as it sees the exit; nginx's master respawns a
    dead process at the next turn of its loop (ngx_process_cycle.c: `if (ngx_reap)` -> ngx_reap_children ->
    ngx_spawn_process), old workers draining or not: the bus (rate limits, breakers, targets) is back in
    milliseconds, not after the drain."""
    root = start_daemonised(gw)
    keeper = next((p for p in descendants_of(root) if process_name(p) == "gateway keeper"), None)
    assert keeper is not None, [(p, process_name(p)) for p in descendants_of(root)]
    thread, codes = request_in_flight(gw.port, backend)
    _reload(gw)
    gw.pids.update(descendants_of(root))
    os.kill(keeper, signal.SIGKILL)

    def keeper_back() -> bool:
        try:
            return bool(admin_now(gw, "breakers", timeout=1).ok)
        except AdminUnavailable:
            return False

    assert becomes_true(keeper_back, 2.5, interval=0.1), "the keeper was not restarted while generation 1 drained"
    assert thread.is_alive()
    drained(thread, codes, backend)


# ---- the link between the root supervisor and a generation (gateway.node.generation), with task children ----------


def _generation(stop_s: float = 10.0, crashes: list[int] | None = None) -> Generation:
    """Generation 1 with one task worker that takes `stop_s` to stop (a drain), or that crashes at start of each
    run while `crashes` holds anything (intensity 1 / 5 s)."""

    async def worker(*, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        if crashes:
            crashes.pop()
            raise RuntimeError("crashed")
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(stop_s)

    spec = SupervisorSpec(SupFlags(Strategy.ONE_FOR_ONE, 1, 5), [ChildSpec("worker-1", worker, shutdown=60000)],
                          name="workers@1")
    return Generation(1, spec, drain_timeout=30)


async def test_a_retired_generation_leaves_the_root_supervisor_at_once_and_drains_beside_it(autojump_clock):
    """Retiring: the root supervisor's terminate_child of workers@G returns at once (it is free for the next
    request); the generation's own supervisor then collects its draining worker, awaited in the root's nursery."""
    generation = _generation()
    async with trio.open_nursery() as nursery:
        generation.nursery = nursery
        root = await nursery.start(serve, SupervisorSpec(children=[generation.child_spec()], name="root"))
        began = trio.current_time()
        generation.retiring = True
        await root.terminate_child("workers@1")
        await root.delete_child("workers@1")
        assert trio.current_time() == began
        assert len(generation.workers()) == 1  # still draining
        await generation.stop()
        assert trio.current_time() - began == pytest.approx(10)
        assert generation.workers() == []
        await root.stop()


async def test_a_generation_stopped_by_the_root_is_waited_for_as_a_supervisor_child(autojump_clock):
    """The root's own shutdown (a graceful stop) waits for the generation's, as for a supervisor child with an
    `infinity` shutdown (so the children started before it, the keeper among them, stop after its workers)."""
    generation = _generation()
    async with trio.open_nursery() as nursery:
        generation.nursery = nursery
        root = await nursery.start(serve, SupervisorSpec(children=[generation.child_spec()], name="root"))
        began = trio.current_time()
        await root.stop()
        assert trio.current_time() - began == pytest.approx(10)
        assert generation.workers() == []


async def test_a_generation_giving_up_is_restarted_by_the_root_with_a_new_supervisor(autojump_clock):
    """OTP's escalation: past its intensity the generation's supervisor exits, its link exits with that reason, and
    the root restarts it (counting it against its own intensity) with a new supervisor."""
    crashes = [1, 1]  # two crashes in a second: more than intensity 1
    generation = _generation(stop_s=0, crashes=crashes)
    async with trio.open_nursery() as nursery:
        generation.nursery = nursery
        root = await nursery.start(serve, SupervisorSpec(SupFlags(Strategy.ONE_FOR_ONE, 3, 5),
                                                         [generation.child_spec()], name="root"))
        first = generation.handle
        await trio.sleep(1)
        (link,) = await root.which_children()
        assert link.restart_count == 1 and link.pid is not None and link.pid.value is generation.handle
        assert generation.handle is not first and len(generation.workers()) == 1
        await root.stop()


async def test_a_generation_giving_up_hands_its_draining_workers_over_and_is_restarted_at_once(autojump_clock):
    """nginx's master respawns a dead worker at once and never stops the others (release-1.27.1
    src/os/unix/ngx_process_cycle.c:593-598, ngx_reap_children). Giving up, the generation's supervisor is handed
    over as it begins stopping its workers: the root restarts workers@1 (counted against its own intensity) with no
    wait for the surviving worker's drain, which goes on in a retiring Generation of its own (`on_give_up`)."""
    crashes = [1, 1]  # two crashes in a second: more than intensity 1

    async def draining(*, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(10)  # its drain

    async def crashing(*, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        if crashes:
            crashes.pop()
            raise RuntimeError("crashed")
        await trio.sleep_forever()

    spec = SupervisorSpec(SupFlags(Strategy.ONE_FOR_ONE, 1, 5), [ChildSpec("worker-1", draining, shutdown=60000),
                                                                 ChildSpec("worker-2", crashing, shutdown=60000)],
                          name="workers@1")
    generation = Generation(1, spec, drain_timeout=30)
    handed: list[Generation] = []
    generation.on_give_up = handed.append
    async with trio.open_nursery() as nursery:
        generation.nursery = nursery
        root = await nursery.start(serve, SupervisorSpec(SupFlags(Strategy.ONE_FOR_ONE, 3, 5),
                                                         [generation.child_spec()], name="root"))
        await trio.sleep(0.001)
        (survivors,) = handed
        assert survivors.retiring and survivors.gave_up and survivors.id == "workers@1"
        assert [ref.id for ref in survivors.workers()] == ["worker-1"]  # still draining
        (link,) = await root.which_children()
        assert link.restart_count == 1 and link.pid is not None and link.pid.value is generation.handle
        assert sorted(ref.id for ref in generation.workers()) == ["worker-1", "worker-2"]  # the restarted ones
        began = trio.current_time()
        await survivors.stop()
        assert trio.current_time() - began == pytest.approx(10, abs=0.01)
        assert survivors.workers() == [] and len(generation.workers()) == 2
        await root.stop()


GIVE_UP_DRAIN_S = 4  # the surviving worker's drain_timeout: the checks below run within it


async def test_workers_giving_up_after_crashes_leave_the_port_accepting_while_the_survivors_drain(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    """nginx's master respawns a worker that exited at once, whatever happened before, and never stops the others:
    release-1.27.1 src/os/unix/ngx_process_cycle.c:593-598 (ngx_reap_children)
        if (ngx_processes[i].respawn && !ngx_processes[i].exiting && !ngx_terminate && !ngx_quit)
        { if (ngx_spawn_process(cycle, ngx_processes[i].proc, ...

    Once worker crashes pass worker_restart_intensity, workers@1 gives up and the root restarts it at once (one
    restart against its own intensity) on the same listener slots: a new client is answered while the surviving
    worker, listed as retiring, drains its request; that request is cut at drain_timeout, and a graceful stop
    (`gateway stop`'s SIGQUIT) meanwhile stops every process."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    node = GatewayNode(tmp_path / "gw", {"services": [
        {"name": "echo", "url": f"http://127.0.0.1:{echo.port}", "routes": [{"paths": ["/echo"]}]}]},
        drain_timeout=GIVE_UP_DRAIN_S, worker_restart_intensity=1, worker_restart_period_s=30)
    try:
        await node.start(workers=2)
        workers = await node.worker_pids()
        with trio.fail_after(20):
            held = await trio.open_tcp_stream("127.0.0.1", node.port)  # a slow request on one worker
            await held.send_all(b"GET /echo?hold=1 HTTP/1.1\r\nHost: x\r\n\r\n")
            await wait_until(lambda: echo.active == 1, "the held request at the upstream")
            local = held.socket.getsockname()[1]
            survivor = owners(workers, local_port=node.port, remote_port=local)[(node.port, local)]
            crashing = next(p for p in workers if p != survivor)
            os.kill(crashing, signal.SIGKILL)  # restarted (1 restart: within the intensity)
            replacement: list[int] = []
            while not replacement:
                await trio.sleep(0.05)
                replacement = [p for p in await node.worker_pids() if p not in workers]
            os.kill(replacement[0], signal.SIGKILL)  # the second within the period: workers@1 gives up
            await wait_until(lambda: "reached_max_restart_intensity" in node.log(), "workers@1 giving up")
            gave_up_at = trio.current_time()
            head = await _head_of_new_request(node.port, timeout=3.0)
            while len(restarted := await node.worker_pids()) < 2:  # (both of the restarted workers@1 accept)
                await trio.sleep(0.05)
            status = await node.status()
            (link,) = [c for c in status["tree"]["children"] if c["id"] == "workers@1"]
            retiring = status["retiring"]
            root, proc = node.root, node.proc
            assert root is not None and proc is not None
            processes = descendants_of(root)
            os.kill(root, signal.SIGQUIT)  # `gateway stop` sends it
            exit_code = await trio.to_thread.run_sync(proc.wait)
            stopped_after = trio.current_time() - gave_up_at
            answer = await _until_closed(held)
    finally:
        echo.release.set()
        await trio.to_thread.run_sync(node.cleanup)
    assert head is not None, "a new connection got no answer within 3 s: no process accepted on the port"
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert link["restarts"] == 1, link
    assert survivor not in restarted
    assert [(g["id"], [w["pid"] for w in g["children"]]) for g in retiring] == [("workers@1", [survivor])]
    assert exit_code == 0
    assert stopped_after < GIVE_UP_DRAIN_S + 2.5, f"the stop took {stopped_after:.1f}s after the give-up"
    assert not answer.startswith(b"HTTP/1.1 200 "), answer  # cut at drain_timeout (the upstream never answered)
    assert [p for p in processes if not has_exited(p)] == []


async def _head_of_new_request(port: int, timeout: float) -> bytes | None:
    """One request on a new connection: the response head, or None when none came within `timeout`."""
    with trio.move_on_after(timeout):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return data
                data += chunk
            return data.partition(b"\r\n\r\n")[0]
    return None


async def _until_closed(stream: trio.SocketStream) -> bytes:
    """What `stream` received until the gateway closed or reset it."""
    received = b""
    async with stream:
        try:
            while chunk := await stream.receive_some(65536):
                received += chunk
        except trio.BrokenResourceError:
            pass
    return received
