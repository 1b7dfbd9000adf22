"""Signals to the root of a daemonised gateway (real processes): SIGUSR1 reopens gateway.log_file in every process,
SIGUSR2 is ignored, SIGHUPs that come during a reload make one more; and the state keeper applies a reload under
the KONG_ variables the root checked it under.

nginx: on SIGUSR1 the master runs ngx_reopen_files (src/core/ngx_cycle.c), which reopens every open file, the
error_log included, and ends with ngx_log_redirect_stderr so that stderr follows the reopened error log, and signals
its workers to do the same (ngx_process_cycle.c, `if (ngx_reopen)`); Kong's logrotate recipe is that SIGUSR1. The
master catches SIGUSR2 (src/os/unix/ngx_process.c, the signals[] table, NGX_CHANGEBIN_SIGNAL): a binary upgrade, or
", ignoring" when it cannot do one; it never dies of it.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from e2e_helpers import (
    GatewayNode,
    HoldingBackend,
    admin_now,
    becomes_true,
    blocking_get,
    descendants_of,
    gateway_in_front_of,
    has_exited,
    process_name,
    start_daemonised,
)

from gateway.bus import protocol as p
from gateway.config import parse_config
from gateway.keeper.state import Keeper


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[GatewayNode]:
    yield from gateway_in_front_of(HoldingBackend(0), tmp_path)


def _stderr_of(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/fd/2")
    except OSError:
        return ""  # (gone meanwhile)


def test_sigusr1_reopens_the_log_file_in_every_process_after_logrotate_moved_it(gw):
    """logrotate without copytruncate: rename, then `kill -USR1` the root. The root and each of its processes
    (keeper, zygote, workers) write to a new run/gateway.log from then on; what is logged next (a reload) is in it."""
    root = start_daemonised(gw)
    log_path = gw.dir / "run" / "gateway.log"
    rotated = gw.dir / "run" / "gateway.log.1"
    processes = [root, *(p for p in descendants_of(root) if process_name(p) != "gateway spare")]
    assert {process_name(p) for p in processes} >= {"gateway keeper", "gateway worker"}
    assert all(_stderr_of(p) == str(log_path) for p in processes)
    os.rename(log_path, rotated)
    os.kill(root, signal.SIGUSR1)

    def moved_on() -> bool:
        return all(_stderr_of(p) in (str(log_path), "") for p in processes)

    assert becomes_true(moved_on, 3), {process_name(p): _stderr_of(p) for p in processes}
    reply = admin_now(gw, "reload")
    assert reply.ok, reply.error
    assert becomes_true(lambda: "generation 2 accepting" in log_path.read_text(), 3), rotated.read_text()[-500:]
    assert "SIGUSR1: reopening log files" in log_path.read_text()
    assert "generation 2 accepting" not in rotated.read_text()
    new_worker = next(p for p in descendants_of(root) if process_name(p) == "gateway worker" and p not in processes)
    assert _stderr_of(new_worker) == str(log_path)  # (forked from a zygote whose stderr predates the rotation)


def test_sigusr2_to_the_root_is_ignored_and_says_so(gw):
    """SIGUSR2's default action would end the root with no drain or cleanup. The gateway does no binary upgrade
    (README: restart it to run an upgraded version), so the root logs that it ignores it and serves on, its workers
    untouched (SIGUSR2 is also the root's RETIRE_SIGNAL to workers: never relayed)."""
    root = start_daemonised(gw)
    workers = [p for p in descendants_of(root) if process_name(p) == "gateway worker"]
    os.kill(root, signal.SIGUSR2)
    assert becomes_true(lambda: "SIGUSR2: ignoring it" in gw.log(), 3), gw.log()[-1500:]
    assert not has_exited(root)
    assert blocking_get(gw.port) == 200
    assert [p for p in descendants_of(root) if process_name(p) == "gateway worker"] == workers
    assert "draining" not in gw.log()
    assert gw.cli("status", timeout=20).returncode == 0


@pytest.fixture
def held_backend() -> HoldingBackend:
    return HoldingBackend(1.0)


@pytest.fixture
def draining_gw(tmp_path: Path, held_backend: HoldingBackend) -> Iterator[GatewayNode]:
    yield from gateway_in_front_of(held_backend, tmp_path, drain_timeout=5)


def test_a_worker_retired_while_it_drains_for_a_sigterm_exits_as_shut_down_not_killed_by_sigusr2(draining_gw,
                                                                                                   held_backend):
    """A SIGTERM to every process of the unit (systemd's KillMode=control-group stop, `kill -TERM -PGID`) starts a
    worker's drain before the root's graceful stop retires it (RETIRE_SIGNAL, SIGUSR2): that retirement adds nothing
    to the drain and must not end the worker by SIGUSR2's default action when the drain is over (trio re-raises a
    signal still pending as its receiver closes). nginx's workers only set flags on a signal (ngx_signal_handler),
    so a second stop signal during a shutdown is absorbed. The supervisor logs a `shutdown`, no `shutdown_error`."""
    gw = draining_gw
    root = start_daemonised(gw)
    (worker,) = [p for p in descendants_of(root) if process_name(p) == "gateway worker"]
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(blocking_get, gw.port, "/slow")
        assert becomes_true(lambda: held_backend.held == 1, 5)
        os.kill(worker, signal.SIGTERM)
        assert becomes_true(lambda: f"worker {worker}: SIGTERM, draining" in gw.log(), 5), gw.log()[-2000:]
        os.kill(root, signal.SIGTERM)
        assert held.result(15) == 200
    assert becomes_true(lambda: has_exited(root), 15), gw.log()[-2000:]
    assert "killed by signal SIGUSR2" not in gw.log(), gw.log()[-2000:]


def test_sighups_that_come_during_a_reload_make_one_more_reload(gw):
    """nginx release-1.27.1 src/os/unix/ngx_process_cycle.c:87-99: the master keeps SIGHUP blocked but in sigsuspend
    (:163), and its handler only sets `ngx_reconfigure = 1` (src/os/unix/ngx_process.c:364-365); a reload clears the
    flag, then runs (ngx_process_cycle.c:211-240). SIGHUPs that come while one runs are one pending signal: one more
    reload, however many came. The root started a reload per SIGHUP: five made five generations, one after another.
    A stopped state keeper holds the first reload at its reload_config call, so the others come while it runs."""
    root = start_daemonised(gw)
    keeper = next(c["pid"] for c in admin_now(gw, "status").result["tree"]["children"] if c["id"] == "keeper")
    os.kill(keeper, signal.SIGSTOP)
    try:
        os.kill(root, signal.SIGHUP)
        assert becomes_true(lambda: "supervisor root: started: child='workers@2'" in gw.log(), 5), gw.log()[-2000:]
        for _ in range(4):
            os.kill(root, signal.SIGHUP)
            time.sleep(0.02)
    finally:
        os.kill(keeper, signal.SIGCONT)
    assert becomes_true(lambda: "reload: generation 3 accepting" in gw.log(), 8), gw.log()[-2000:]
    time.sleep(0.5)  # (a reload takes tens of milliseconds: one more would show by now)
    assert admin_now(gw, "status").result["generation"] == 3, gw.log()[-2000:]


def test_the_state_keeper_reloads_under_the_kong_variables_the_root_checked_the_config_under(tmp_path, monkeypatch):
    """kong/cmd/reload.lua:14-16 loads kong.conf with the `kong reload` process's KONG_<KEY> variables, and every
    process of the reloaded node runs that result. `gateway reload`'s variables reached the new workers and
    satellites, but the running state keeper re-read the config with the environment it started with (a
    KONG_DNS_HOSTSFILE reached it only at its next restart): the root now sends them with reload_config, and the
    keeper applies them over its own, keeping them for later reloads as the root does."""
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 redis.test\n")
    monkeypatch.setenv("KONG_DNS_HOSTSFILE", "unset")  # (so that the keeper's os.environ.update is undone)
    monkeypatch.delenv("KONG_DNS_HOSTSFILE")
    path = tmp_path / "config.current.yaml"
    path.write_text("_format_version: '3.0'\n")
    keeper = Keeper(parse_config(path.read_text()), workers=1, config_path=str(path))
    assert keeper.dns_settings.dns_hostsfile != str(hosts)
    replies, _ = keeper.handle(b"root", p.AdminOp(cmd="reload_config", args={"KONG_DNS_HOSTSFILE": str(hosts)}, id=1),
                               0.0, time.time())
    assert isinstance(replies[0], p.AdminResult) and replies[0].ok, replies
    assert keeper.dns_settings.dns_hostsfile == str(hosts)
    keeper.handle(b"root", p.AdminOp(cmd="reload_config", id=2), 0.0, time.time())  # (a later SIGHUP's)
    assert keeper.dns_settings.dns_hostsfile == str(hosts)
