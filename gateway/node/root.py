"""The root process (`gateway start --foreground`): the supervision tree, listener slots, signals, admin endpoint.

SIGTERM/SIGINT/SIGQUIT (SIGQUIT: nginx's and `kong quit`'s graceful stop) or admin `stop`: graceful stop (workers
drain); a SIGTERM or SIGINT during a stop forces it (workers are killed), a second SIGQUIT does not (nginx's master
only sets ngx_quit again; `gateway stop` sends SIGQUIT, and SIGTERM once its --timeout has passed).
SIGHUP or admin `reload`: re-read and validate the config; a bad one is rejected and the running generation keeps
serving untouched; a good one starts generation G+1 on the same listener slots, then retires G, whose workers
finish their in-flight requests and SSE streams (up to drain_timeout). SIGHUPs that come while a reload runs make one
more reload, however many they are, as nginx's master keeps one pending SIGHUP.
A retired generation's workers, and on a graceful stop every worker, are told to drain all at once (RETIRE_SIGNAL, as
nginx's master sends SIGQUIT to every worker); their supervisor's shutdown, one worker after another, then only
collects them: one drain_timeout for them all, never one per worker. A retired generation leaves the root supervisor
at once (gateway.node.generation) and a task of the root's nursery waits for its drain, so the root supervisor goes on
restarting children and starting generations meanwhile, as nginx's master goes on with its loop.
A generation's workers supervisor that gives up (worker_restart_intensity exceeded) is restarted by the root at once on
the same listener slots, while the workers that survived drain as a reload's old generation does (Node._retire), as
nginx's master respawns a dead worker and never stops the others: new connections are accepted meanwhile.
A graceful stop also closes the root's listening sockets at once (the workers close theirs as they start to drain):
new connections are refused, not queued for no one (as nginx's master and workers close theirs on SIGQUIT).
SIGUSR1 (nginx's reopen): the root reopens gateway.log_file (its stderr, when daemonised) and relays the signal to
its other processes, which reopen it and the access logs (gateway.node.logfile). SIGUSR2 (nginx's binary upgrade) is
ignored with a warning: restart the gateway to run an upgraded version.
Signals are handled at once, whatever the supervisors are busy with: nothing on their path asks a supervisor.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import math
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping
from functools import partial
from typing import Any

import trio
import zmq

from gateway import __version__
from gateway.bus.admin_protocol import AdminRequest, argument_problem
from gateway.bus.admin_server import AdminCommandError
from gateway.bus.curve import ZapHandler
from gateway.bus.ipc import in_use, listener_pid
from gateway.bus.keeper_link import KeeperLink, KeeperUnavailable
from gateway.bus.protocol import pub_endpoint
from gateway.cli import EXIT_FAILURE, EXIT_OK
from gateway.config import Config, ConfigError, kong_conf, parse_config, parse_host_port
from gateway.config.kong_forms import loaded_at
from gateway.config.listen import listen_flags, status_options
from gateway.config.loader import check_kept_status_listen, read_config_text
from gateway.discovery.backoff import Backoff
from gateway.discovery.registration import run_registration
from gateway.metrics import prepare_multiprocess_dir, retire_dead_processes
from gateway.node import logfile, tree
from gateway.node.admin import changes_state, curve_changes, open_admin, serve_admin
from gateway.node.control import STARTING
from gateway.node.files import (
    CURRENT_CONFIGS,
    PID_MODE,
    current_config_name,
    lock_run_dir,
    make_run_dir,
    snapshot_name,
    snapshot_names,
    write_atomically,
)
from gateway.node.generation import Generation
from gateway.node.locate import NotRunning, is_gateway, running_pid
from gateway.node.orphan import ROOT_PID_ENV
from gateway.node.paths import absolute_endpoint, keeper_state_file
from gateway.node.slots import AddressInUse, ListenerSlots, OptionKept
from gateway.node.start_only import changed, hand_down, keep
from gateway.node.status_source import NodeStatus
from gateway.runtime import compile_config
from gateway.status import StatusApp, serve_status
from gateway.status.collect import gateway_registry
from gateway.status.page import StatusPage
from gateway.telemetry.supervision import install_restart_counter
from gateway.worker import LOADED_AT_ENV, RETIRE_SIGNAL, listen_addresses
from supervisor import (
    ChildInfo,
    ChildSpec,
    Handle,
    ProcessStartError,
    RestartIntensityExceeded,
    StartError,
    SupervisorNotRunning,
    serve,
)
from supervisor.forkserver import ForkServer
from supervisor.process import Process, ProcessRef
from supervisor.refs import ChildRef

log = logging.getLogger("gateway.node")

KEEPER_COMMANDS = frozenset({"breakers", "limits", "targets", "proxy-cache"})  # answered by the state keeper
KEEPER_ANSWER_S = 2.0  # an operator's keeper command waits this long for its answer (less, if its client waits less)
# `status` and `workers` wait this long for a supervisor busy starting or stopping a child (the root, while a reload
# starts the new generation or a worker's start takes seconds), then show the children it last listed
SUPERVISOR_ANSWER_S = 0.5
# A satellite (health checker, discovery) that failed to start at a reload is tried again after 1 s, doubling to 30 s
SATELLITE_RETRY_INITIAL_S = 1.0
SATELLITE_RETRY_MAX_S = 30.0
# An admin read during the start waits for it until this long before its client gives up (then: "starting")
STARTING_ANSWER_MARGIN_S = 0.25
# A reload waits for the state keeper's answer this long, plus twice the time the root took to load the file (which
# the keeper reads and compiles too)
KEEPER_RELOAD_S = 2.0
# The metric files of a process that exited on its own (a crashed worker, keeper or satellite) are folded within this;
# a retired generation's as soon as it has stopped
METRICS_TIDY_S = 5.0


# The root's signals (its module docstring), handled from before its pid file names it to its exit
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
INTERRUPTED = "interrupted before it was ready (every process it had started is stopped)"


class StartupError(Exception):
    """The gateway could not start; the message says why (printed by `gateway start`)."""


class StartInterrupted(StartupError):
    """A stop (a signal, admin `stop`) came before the gateway was ready: its start ended (`gateway start` exits
    130, as on Ctrl-C)."""


def load_validated(path: str, environ: Mapping[str, str] | None = None) -> tuple[str, Config]:
    """The config text and its validated Config, kong.conf's KONG_ variables read from `environ` (this process's
    environment when not given); ConfigError lists every problem."""
    text = read_config_text(path)
    config = parse_config(text, path, environ)
    compile_config(config, path)
    return text, config


def _load_stamped(path: str, environ: Mapping[str, str] | None = None) -> tuple[str, Config, int]:
    """load_validated, and the Unix time that load gave the config's entities (their updated_at, and the created_at
    the file leaves out): the generation's one stamp, which each of its workers is given (LOADED_AT_ENV), as Kong's
    master stamps the entities once for every worker (kong/init.lua:737-738, kong/db/schema/init.lua:1920-1937)."""
    text, config = load_validated(path, environ)
    return text, config, loaded_at()


class Node:
    """One running gateway: owns the listener slots, the root supervisor and the admin endpoint."""

    def __init__(self, config_path: str, workers: int | None, ready: Callable[[str], None] | None = None) -> None:
        self.config_path = os.path.abspath(config_path)
        self.workers_override = workers
        self.ready = ready
        self.slots = ListenerSlots()
        self.generation = 0
        self.config: Config | None = None
        self.root: Handle | None = None
        self.started_at = time.time()
        self.run_dir = ""
        self.metrics_dir = ""
        self._current = ""  # the copy of the config the keeper reads (_write_current)
        self._stop = trio.Event()
        self._forced = False
        self._reload_lock = trio.Lock()
        self._sighup_pending = False  # a SIGHUP's reload waits for the reload lock (nginx: ngx_reconfigure is set)
        self._nursery: trio.Nursery | None = None
        self.fork_server: ForkServer | None = None
        # Every generation whose workers run: the serving one and those still draining (until their supervisor
        # has stopped: a reload's old ones, a give-up's survivors). Their workers are signalled from here, without
        # asking any supervisor.
        self._generations: list[Generation] = []
        self._last_listed: dict[str, list[ChildInfo[ChildRef]]] = {}  # supervisor id -> the children it last listed
        self._status_app: StatusApp | None = None  # the status server's, when status_listen is set
        self._satellite_retries: dict[str, trio.CancelScope] = {}  # satellite -> its restart after a failed one
        self._exited = trio.Event()  # set when a retired generation has stopped: its metric files are to fold
        self._zap: ZapHandler | None = None  # a tcp admin endpoint's ZAP handler (gateway.bus.curve)
        self._start_over = trio.Event()  # every worker of the first generation accepts, or a stop came before
        self.pid_file = ""  # the pid file that names this root: the start's, or the last reload's (nginx's reload)

    # ---- lifecycle ----------------------------------------------------------------------------------------------

    def worker_count(self, config: Config) -> int:
        return self.workers_override or config.gateway.workers or os.cpu_count() or 1

    async def run(self) -> int:
        """Run until stopped; the exit code says how it ended."""
        try:
            text, config, loaded = _load_stamped(self.config_path)
        except ConfigError as e:
            raise StartupError("\n".join(e.messages)) from None
        self.config = config
        gw = config.gateway
        try:
            self.run_dir = make_run_dir(os.path.dirname(os.path.abspath(gw.pid_file)))
            self._run_lock = lock_run_dir(self.run_dir)  # held until this process ends
        except OSError as e:
            why = f"{e.filename}: {e.strerror}" if e.filename else str(e.strerror or e)
            raise StartupError(f"{self.config_path}: gateway.pid_file: {why}") from None
        _remove(keeper_state_file(self.run_dir))  # a start begins from the config: the last run's overrides go
        count = self.worker_count(config)
        self.metrics_dir = prepare_multiprocess_dir(self.run_dir)  # before any child starts: they inherit it
        install_restart_counter()  # gateway_supervisor_restarts_total, from the supervisor's reports
        try:
            self.slots.ensure(listen_addresses(config), count)
        except OSError as e:
            raise StartupError(f"{self.config_path}: gateway.listen: {_listen_failure(e)}") from None
        # As nginx (src/core/nginx.c:345, 363), its signals are handled, then the pid file names it, before any child
        # starts: a `gateway stop` during the start finds it and ends the start
        with trio.open_signal_receiver(*HANDLED_SIGNALS) as signals:
            self.pid_file = gw.pid_file
            try:
                _write_pid(gw.pid_file)
            except OSError as e:
                self.slots.close()
                raise StartupError(f"{self.config_path}: gateway.pid_file: cannot write {gw.pid_file}: "
                                   f"{e.strerror or e}") from None
            try:
                return await self._open(text, config, loaded, signals)
            finally:
                _remove(self.pid_file)

    async def _open(self, text: str, config: Config, loaded: int, signals: AsyncIterator[int]) -> int:
        """run, once the pid file names this process: open the admin endpoint and serve until stopped."""
        gw = config.gateway
        ctx = zmq.Context()
        try:
            admin, self._zap = open_admin(ctx, absolute_endpoint(gw.admin), gw.admin_curve)
        except (ValueError, zmq.ZMQError) as e:
            self.slots.close()
            ctx.term()
            raise StartupError(f"gateway.admin: cannot bind {gw.admin}: {e}") from None
        bus = absolute_endpoint(gw.bus)
        for endpoint in (bus, pub_endpoint(bus)):  # (the keeper would take them from a running gateway's keeper)
            if endpoint.startswith("ipc://") and (holder := listener_pid(endpoint[len("ipc://"):])) is not None:
                admin.close(linger=0)
                if self._zap is not None:
                    self._zap.close()
                self.slots.close()
                ctx.term()
                raise StartupError(f"gateway.bus: {in_use(endpoint, _root_of(holder), 'gateway.bus')}")
        self.keeper = KeeperLink(ctx, bus)
        os.environ[ROOT_PID_ENV] = str(os.getpid())  # children check it is their parent (orphan.py)
        hand_down(gw)  # whatever file a reload gives them, children keep the bus and run directory of the start
        logfile.adopt(gw.log_file)  # when our stderr is the log file, SIGUSR1 reopens it in every process
        self.fork_server = ForkServer()
        try:
            return await self._serve(text, config, loaded, admin, signals)
        finally:
            self.fork_server.close()
            admin.close(linger=0)
            if self._zap is not None:
                self._zap.close()
            self.keeper.close()
            ctx.term()
            self.slots.close()
            if (endpoint := absolute_endpoint(gw.admin)).startswith("ipc://"):
                _remove(endpoint[len("ipc://"):])
            for name in [*snapshot_names(self.generation), *CURRENT_CONFIGS.values()]:
                _remove(os.path.join(self.run_dir, name))

    async def _serve(self, text: str, config: Config, loaded: int, admin: zmq.Socket,
                     signals: AsyncIterator[int]) -> int:
        self.generation = 1
        first = self._generation(1, text, config, loaded, source=self.config_path)
        current = self._write_current(text)
        spawner = self._spawner()
        children = [tree.keeper_spec(current, self.worker_count(config), config, spawner),
                    *self._satellites(current, config)]
        if spawner is not None:
            children.insert(0, tree.zygote_spec(spawner, config))
        gw = config.gateway
        address, flags = listen_flags(gw.status_listen) if gw.status_listen else ("", set())
        status_at = parse_host_port(address, None) if address else None
        if status_at is not None:
            host, port = status_at
            backlog, reuseport, _ = status_options(flags)
            assert port is not None  # validated at load: status_listen names a port
            registry, collector = gateway_registry(self.metrics_dir, node=f"{socket.gethostname()}:{self.run_dir}",
                                                   version=__version__, kong_enabled=self._prometheus_enabled)
            source = NodeStatus(self)
            page = StatusPage(source, collector.families, prepare=collector.prepare)
            app = StatusApp(source, registry, version=__version__, started_at=self.started_at,
                            prepare=collector.prepare, page=page, config=lambda: self.config,
                            config_text=self._current_text,
                            headers=lambda: (self.config or config).gateway.headers)
            self._status_app = app
            children.append(ChildSpec("status", partial(
                serve_status, app, host, port, backlog=backlog, reuseport=reuseport,
                proxy_protocol="proxy_protocol" in flags,
                settings=lambda: (self.config or config).gateway), shutdown=5000))
        children.append(first.child_spec())
        if gw.registration is not None:
            children.append(ChildSpec("registration", partial(run_registration, gw.registration, gw),
                                      shutdown=6000))
        exit_code = EXIT_OK
        startup_error: StartupError | None = None
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                first.nursery = nursery
                self._generations.append(first)
                await nursery.start(self._signals, signals)
                if self._zap is not None:  # (the admin server's nursery owns it: handshakes wait for it meanwhile)
                    nursery.start_soon(self._zap.run)
                await nursery.start(serve_admin, admin, self.handle_admin)  # ("starting" until it is ready)
                with trio.CancelScope() as starting:
                    nursery.start_soon(self._end_start_on_stop, starting)
                    async with self._reload_lock:  # a SIGHUP meanwhile reloads once it is ready, as nginx's master
                        await self._start_tree(nursery, config, children)
                if starting.cancelled_caught:
                    raise StartInterrupted(INTERRUPTED)
                assert self.root is not None  # (_start_tree started it)
                log.info("gateway %s started: pid %d, %d workers on %s", __version__, os.getpid(),
                         self.worker_count(config), ", ".join(f"{h}:{p}" for h, p in listen_addresses(config)))
                self._start_over.set()
                if self.ready:
                    self.ready(f"pid {os.getpid()}, {self.worker_count(config)} workers")
                await self._stop.wait()
                if self._forced:
                    self._kill_everything()
                else:
                    drain = self.config.gateway.drain_timeout if self.config else config.gateway.drain_timeout
                    log.info("stopping: workers drain for up to %gs; new connections are refused", drain)
                    for generation in self._generations:
                        if not generation.retiring:  # (those were told already)
                            generation.signal_workers(RETIRE_SIGNAL)
                    self.slots.stop_listening()
                    with trio.move_on_after(drain + 10):
                        await self.root.stop()
                        for generation in list(self._generations):  # retiring: their _retire stops them
                            await generation.wait_stopped()
                nursery.cancel_scope.cancel()
        except* RestartIntensityExceeded as group:
            log.critical("root supervisor gave up: more than %d restarts in %ds (last: %s); the gateway exits",
                         config.gateway.restart_intensity, config.gateway.restart_period_s, group.exceptions[0])
            exit_code = EXIT_FAILURE
        except* StartupError as group:
            startup_error = group.exceptions[0]  # type: ignore[assignment]
        if startup_error is not None:
            raise startup_error
        log.info("gateway stopped" if exit_code == EXIT_OK else "gateway exited after a failure")
        return exit_code

    async def _start_tree(self, nursery: trio.Nursery, config: Config, children: list[ChildSpec]) -> None:
        """Start the root supervisor (its children in order: the workers last) and the root's own tasks."""
        try:
            self.root = await nursery.start(serve, tree.root_spec(config, children))
        except StartError as e:
            if self._stop.is_set():  # (a forced stop killed what was starting)
                raise StartInterrupted(INTERRUPTED) from None
            explained = _child_said(e)
            raise StartupError(f"workers failed to start: {e}" if explained is None
                               else f"{self.config_path}: {explained}") from None
        self._last_listed["root"] = await self.root.which_children()  # (for a status while it is busy)
        if self.fork_server is not None and self.fork_server.enabled:
            nursery.start_soon(self.fork_server.run)
        nursery.start_soon(self.keeper.run)
        nursery.start_soon(self._tidy_metrics)

    async def _end_start_on_stop(self, starting: trio.CancelScope) -> None:
        """A stop (a signal, admin `stop`) before the gateway is ready cancels its start: what it started is stopped
        and the start fails, "interrupted" (nginx's master looks at ngx_quit / ngx_terminate as it starts workers)."""
        await self._stop.wait()
        self._start_over.set()
        starting.cancel()  # (nothing, once the start is over)

    def _prometheus_enabled(self) -> bool:
        """Is a prometheus plugin on? Kong's per-request families (kong_http_requests_total, latencies, bandwidth)
        are exported only then; its node families always (gateway.status.collect)."""
        config = self.config
        return config is not None and any(p.name == "prometheus" and p.enabled for p in config.plugins)

    async def _signals(self, signals: AsyncIterator[int],
                       task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Each signal as it comes (HANDLED_SIGNALS, from run's receiver), none awaiting anything: a busy supervisor
        never holds up the next signal."""
        task_status.started()
        async for signum in signals:
            if signum == signal.SIGHUP:
                if not self._sighup_pending:  # (else the reload it asks for is waiting already)
                    self._sighup_pending = True
                    self._nursery.start_soon(self._reload_logged)  # type: ignore[union-attr]
            elif signum == signal.SIGUSR1:
                self._reopen()
            elif signum == signal.SIGUSR2:  # nginx's binary upgrade: its default action would kill the root
                log.warning("SIGUSR2: ignoring it (nginx's binary upgrade): this gateway does not replace its "
                            "own code; restart it to run an upgraded version")
            elif self._stop.is_set() and signum == signal.SIGQUIT:  # nginx: ngx_quit = 1 again, still graceful
                log.info("SIGQUIT: the graceful stop goes on (SIGTERM forces it)")
            elif self._stop.is_set():
                log.warning("second %s: forcing the stop", signal.Signals(signum).name)
                self._forced = True
                self._kill_everything()  # the graceful stop in progress now ends at once
            else:
                log.info("%s: graceful stop%s", signal.Signals(signum).name,
                         "" if self._start_over.is_set() else " (before the gateway was ready: its start ends)")
                self._stop.set()

    def _reopen(self) -> None:
        """nginx's reopen: gateway.log_file here, then SIGUSR1 to every other process (they reopen it, and the
        workers their access logs), draining ones included, as nginx signals its exiting workers too."""
        path = logfile.reopen()
        log.info("SIGUSR1: reopening log files%s", f" ({path} and the access logs)" if path else "")
        root = self.root
        if root is not None:
            for ref in root.running_children():  # keeper, health, discovery, zygote (the others are tasks here)
                if ref.os_pid and ref.started_at is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(ref.os_pid, signal.SIGUSR1)
        for generation in self._generations:
            generation.signal_workers(signal.SIGUSR1)

    def _kill_everything(self) -> None:
        """SIGKILL every process below the root: found in /proc, not asked of the supervisor, which is busy with the
        graceful stop a forced one cuts short (and would answer only once it is over)."""
        for pid in descendants(os.getpid()):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    async def _tidy_metrics(self) -> None:
        """Fold the metric files of exited processes into the archives and remove their gauges (gateway.metrics.
        retire_dead_processes, in a thread) once a retired generation has stopped, and every METRICS_TIDY_S for the
        processes that exit otherwise: run/metrics follows the live processes whether or not anything scrapes."""
        while True:
            with trio.move_on_after(METRICS_TIDY_S):
                await self._exited.wait()
            self._exited = trio.Event()
            try:
                await trio.to_thread.run_sync(retire_dead_processes, self.metrics_dir)
            except Exception:  # the files stay, counted as they are; the next round tries again
                log.exception("metrics: tidying %s failed", self.metrics_dir)

    # ---- generations --------------------------------------------------------------------------------------------

    def _spawner(self) -> ForkServer | None:
        """The fork server children start through, when this platform lets the root be their subreaper."""
        return self.fork_server if self.fork_server is not None and self.fork_server.enabled else None

    def _satellites(self, current: str, config: Config) -> list[ChildSpec]:
        """The health checker and discovery processes, when the config has something for them to do."""
        kinds = [kind for kind, needed in (("health", tree.needs_health(config)),
                                           ("discovery", tree.needs_discovery(config))) if needed]
        return [tree.satellite_spec(kind, current, config, self._spawner()) for kind in kinds]

    async def _restart_satellites(self, current: str, config: Config) -> None:
        """They read the config at start: replace them with ones started on the new config. One that fails to start
        is started again with backoff until it runs (or the next reload replaces it): start_child forgets a spec whose
        start failed, as OTP's does, so the root keeps it rather than let the gateway run on without it."""
        root = self.root
        assert root is not None
        for scope in self._satellite_retries.values():  # (they wait for the reload lock this reload holds)
            scope.cancel()
        self._satellite_retries.clear()
        for kind in ("health", "discovery"):
            if await self.child(kind) is not None:
                await root.terminate_child(kind)
                await root.delete_child(kind)
        for spec in self._satellites(current, config):
            try:
                await root.start_child(spec)
            except Exception as e:
                log.error("reload: %s did not start on the new config: %s; trying again", spec.id, e)
                scope = self._satellite_retries[str(spec.id)] = trio.CancelScope()
                self._nursery.start_soon(self._start_satellite_again, spec, scope)  # type: ignore[union-attr]
        self._last_listed["root"] = await root.which_children()  # what listed_child answers while the root is busy

    async def _start_satellite_again(self, spec: ChildSpec, scope: trio.CancelScope) -> None:
        """Try to start `spec` (a satellite a reload could not start) with capped, jittered backoff until it runs, the
        gateway stops or a reload cancels `scope`; each attempt under the reload lock, so no reload runs meanwhile."""
        root = self.root
        assert root is not None
        backoff = Backoff(SATELLITE_RETRY_INITIAL_S, SATELLITE_RETRY_MAX_S)
        with scope:
            while True:
                await trio.sleep(backoff.next_delay())
                if self._stop.is_set():
                    return
                async with self._reload_lock:
                    try:
                        await root.start_child(spec)
                    except SupervisorNotRunning:
                        return  # the gateway is stopping
                    except Exception as e:
                        log.error("%s still does not start: %s; trying again", spec.id, e)
                        continue
                    log.warning("%s started on the reloaded config after %d failed attempt(s)", spec.id,
                                backoff.attempts)
                    self._last_listed["root"] = await root.which_children()
                    self._satellite_retries.pop(str(spec.id), None)
                    return

    async def child(self, child_id: str) -> ChildInfo[ChildRef] | None:
        """The root's child `child_id`, if it has one."""
        if self.root is None:
            return None
        return next((i for i in await self.root.which_children() if i.id == child_id), None)

    async def listed_child(self, child_id: str) -> ChildInfo[ChildRef] | None:
        """The root's child `child_id` as the root last listed it, while that incarnation still runs: for the status
        server, which must not wait for the root, busy for as long as it starts a child (a new generation). Only
        when it has exited since is the root asked (its restart, or its last listing after SUPERVISOR_ANSWER_S)."""
        if self.root is None:
            return None
        info = next((i for i in self._last_listed.get("root", []) if i.id == child_id), None)
        if info is None or (info.pid is not None and info.pid.reason is None):
            return info  # (the root's children change only through this Node, which lists them again each time)
        children, _ = await self._listed("root", self.root)
        return next((i for i in children if i.id == child_id), None)

    async def current_workers(self) -> list[ChildInfo[ChildRef]]:
        """The workers of the generation now serving."""
        return await self._workers_of(self.generation)

    async def _workers_of(self, generation: int) -> list[ChildInfo[ChildRef]]:
        """The workers of `generation`, asked of its supervisor (none while the root restarts it)."""
        known = self._serving(generation)
        handle = known.handle if known is not None else None
        if handle is None:
            return []
        try:
            return await handle.which_children()
        except SupervisorNotRunning:
            return []  # it has just given up: the root is restarting it

    def _serving(self, number: int) -> Generation | None:
        """Generation `number` in the root's tree (not its retiring survivors of a give-up), if it still is."""
        return next((g for g in self._generations if g.number == number and not g.retiring), None)

    def _write_current(self, text: str) -> str:
        """The config the keeper reads (at start, on reload_config, and after a restart), a copy of the file it runs
        from in that file's format (files.config_format); 0600. A copy in the other format, of a file it ran from
        before, goes: a process started on that name reads this one (files.current_config)."""
        name = current_config_name(self.config_path)
        path = os.path.join(self.run_dir, name)
        write_atomically(path, text)
        self._current = path
        for other in CURRENT_CONFIGS.values():
            if other != name:
                _remove(os.path.join(self.run_dir, other))
        return path

    def _current_text(self) -> str | None:
        """The text of the config the root serves, as its copy in the run directory holds it (the status server's
        config hash: its line ends untranslated, so the hash is of the file's bytes, as Kong's)."""
        try:
            with open(self._current, encoding="utf-8", newline="") as f:
                return f.read()
        except OSError:
            return None

    def _generation(self, generation: int, text: str, config: Config, loaded: int,
                    environ: Mapping[str, str] | None = None, *, source: str) -> Generation:
        """Write the config snapshot the generation's workers load (`text`, of the file `source`, in its format); the
        generation, to be started by the root. Its workers start with `environ` when given (the one its config was
        checked under), else with the root's, and with `loaded` (when the root loaded the config) as their entities'
        timestamps, a restarted worker's too."""
        snapshot = os.path.join(self.run_dir, snapshot_name(generation, source))
        write_atomically(snapshot, text)
        addresses = listen_addresses(config)
        count = self.worker_count(config)
        workers = [tree.worker_spec(snapshot, generation, i, count, self.slots.fds_for(addresses, i, count), config,
                                    self._spawner())
                   for i in range(count)]
        env = {**(os.environ if environ is None else environ), LOADED_AT_ENV: str(loaded)}
        workers = [_started_with(spec, env) for spec in workers]
        made = Generation(generation, tree.workers_supervisor(generation, workers, config),
                          drain_timeout=config.gateway.drain_timeout + tree.SHUTDOWN_MARGIN_MS / 1000)
        made.on_give_up = self._retire_survivors
        return made

    async def reload(self, config_path: str | None = None,
                     variables: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Apply the config file again (or `config_path`, which it then runs from): the new generation accepts before
        the old one stops accepting. `variables` (`gateway reload`'s KONG_* ones) apply over the root's environment
        and, once the reload succeeds, join it for later reloads and children, as `kong reload` writes what it loaded
        to the prefix's .kong_env. A rejected config changes nothing; why is logged and raised."""
        async with self._reload_lock:
            return await self._reload_locked(config_path, variables)

    async def _reload_locked(self, config_path: str | None, variables: Mapping[str, str] | None) -> dict[str, Any]:
        """reload, under the reload lock."""
        path = os.path.abspath(config_path) if config_path else self.config_path
        try:
            return await self._reload(path, dict(variables or {}))
        except AdminCommandError as e:
            log.error("reload of %s rejected: %s", path, e)
            raise
        except SupervisorNotRunning:  # a stop came meanwhile: nginx's master takes it before a reload
            log.info("reload cut short: the root supervisor has stopped%s",
                     " (the gateway is stopping)" if self._stop.is_set() else "")
            raise AdminCommandError("the gateway stopped during this reload") from None
        except trio.Cancelled:  # the stop ended the root's tasks while this one waited (on the keeper, say)
            if self._stop.is_set():
                log.info("reload cut short: the gateway is stopping")
            raise

    async def _reload(self, path: str, variables: dict[str, str]) -> dict[str, Any]:
        if self._stop.is_set():
            raise AdminCommandError("the gateway is stopping; start it again to run this config")
        environ = {**os.environ, **variables} if variables else None  # what the config is checked and run under
        started = trio.current_time()
        try:  # (in a thread: a large file takes seconds to check, while status and signals are answered)
            text, config, loaded = await trio.to_thread.run_sync(_load_stamped, path, environ)
        except ConfigError as e:
            raise AdminCommandError("config rejected, still serving the previous one:\n" + "\n".join(e.messages)) \
                from None
        previous = self.config
        assert previous is not None
        wanted_pid_file = config.gateway.pid_file  # (before keep: the run directory stays the start's)
        restart_needed = [key for key in changed(previous.gateway, config.gateway) if key != "pid_file"] \
            + curve_changes(previous.gateway, config.gateway)
        keep(config, previous.gateway)
        config.gateway.admin_curve = previous.gateway.admin_curve
        if clashes := check_kept_status_listen(config.gateway):  # the running status server's address in `listen`
            raise AdminCommandError("config rejected, still serving the previous one:\n"
                                    + "\n".join(f"{path}: {clash}" for clash in clashes))
        moved_pid_file = self._write_moved_pid_file(path, wanted_pid_file)
        addresses = listen_addresses(config)
        try:
            opened = self.slots.ensure(addresses, self.worker_count(config))
        except OSError as e:
            _remove_moved(moved_pid_file)
            raise AdminCommandError(f"config rejected, still serving the previous one:\n{path}: gateway.listen: "
                                    f"{_listen_failure(e)}") from None
        old = self.generation
        new = old + 1
        try:
            generation = self._generation(new, text, config, loaded, environ, source=path)
            generation.nursery = self._nursery
            await self.root.start_child(generation.child_spec())  # type: ignore[union-attr]
        except BaseException as e:
            self.slots.undo(opened)  # no worker serves what it opened: connections would queue there for no one
            _remove_moved(moved_pid_file)
            if not isinstance(e, Exception):
                raise
            explained = _child_said(e) if isinstance(e, StartError) else None
            why = str(e) if explained is None else f"{path}: {explained}"
            raise AdminCommandError(f"the new workers failed to start ({why}); still serving generation {old}") \
                from None
        retired = self._serving(old)
        assert retired is not None  # (the serving generation is retired only by the next reload: this one)
        self._generations.append(generation)
        self.generation = new
        self.config = config
        os.environ.update(variables)  # for later reloads and the children started from now on (satellites, keeper)
        if path != self.config_path:
            log.info("reload: the gateway now runs from %s (was %s)", path, self.config_path)
            self.config_path = path
        if moved_pid_file is not None:
            log.info("reload: pid file %s (was %s; the run directory stays %s until the next start)",
                     moved_pid_file, self.pid_file, self.run_dir)
            _remove(self.pid_file)
            self.pid_file = moved_pid_file
        # The old generation stops accepting as soon as the new one accepts (nginx's master signals the old workers
        # 100 ms after forking the new ones: ngx_process_cycle.c:234-243), not after the keeper's reload and the
        # satellites' restart (0.1-0.8 s): meanwhile the kernel gave it new connections, served on the old config.
        log.info("reload: generation %d accepting; generation %d draining", new, old)
        self._nursery.start_soon(self._retire, retired)  # type: ignore[union-attr]
        await self._reload_satellites(self._write_current(text), config, trio.current_time() - started)
        if self._status_app is not None:
            self._status_app.reloaded()
        for key in restart_needed:
            log.warning("reload: gateway.%s changed; it takes effect at the next start", key)
        return {"generation": new, "retiring": old, "config": path, "restart_needed": restart_needed}

    def _write_moved_pid_file(self, path: str, wanted: str) -> str | None:
        """nginx's reload with a new `pid` writes it, and removes the old one once the reload succeeds (src/core/
        ngx_cycle.c:335-345): `wanted` (the reloaded file's gateway.pid_file), written now, if it is not the pid file
        that names this root; None if it is. A reload that cannot write it, or whose pid file names another running
        gateway, is rejected (AdminCommandError)."""
        if os.path.realpath(wanted) == os.path.realpath(self.pid_file):
            return None
        try:
            other: int | None = running_pid(wanted, remove_stale=False)
        except NotRunning:
            other = None
        rejected = f"config rejected, still serving the previous one:\n{path}: gateway.pid_file: "
        if other is not None and other != os.getpid():
            raise AdminCommandError(f"{rejected}{wanted} is the pid file of the running gateway pid {other}; give "
                                    "this gateway a pid file of its own")
        try:
            _write_pid(wanted)
        except OSError as e:
            raise AdminCommandError(f"{rejected}cannot write {wanted}: {e.strerror or e}; make its directory one "
                                    "this user can write to, or choose another path") from None
        return wanted

    async def _reload_satellites(self, current: str, config: Config, took: float) -> None:
        """A reload's last step, while its old generation retires: the state keeper reads `current` (the root's copy
        of the config) again, then the health checker and discovery restart on it. The new workers already serve (as
        they did before the old generation was retired first): they started on the keeper's state as it was, and
        what they report of a target it does not know yet is ignored until it does (breaker outcomes, passive
        checks)."""
        # The keeper reads and compiles the file as the root did (in a thread, its heartbeats going on): it answers
        # in about the time the root took (`took`).
        try:  # under the environment the config was checked under (its KONG_ variables: the keeper reads it too)
            answer = await self.keeper.call("reload_config", kong_conf.carried(os.environ),
                                            timeout=KEEPER_RELOAD_S + 2 * took)
            if not answer.ok:
                log.error("reload: the state keeper could not read the new config, and keeps the previous one: %s",
                          answer.error)
        except KeeperUnavailable:
            log.warning("reload: the state keeper did not confirm; it reads the new config when it restarts")
        await self._restart_satellites(current, config)

    async def _reload_logged(self) -> None:
        """SIGHUP's reload; a stop that lands meanwhile ends it quietly (nginx's master takes ngx_quit / ngx_terminate
        before ngx_reconfigure), as the root supervisor it asks has stopped. SIGHUPs that come before it holds the
        reload lock are this reload; those that come while it runs make one more, whatever their number, as nginx's
        master leaves SIGHUP blocked while it reloads (src/os/unix/ngx_process_cycle.c:87-99, 163, 211-214)."""
        async with self._reload_lock:
            self._sighup_pending = False
            try:
                await self._reload_locked(None, None)
            except AdminCommandError:
                pass  # logged by _reload_locked (a stop that cut it short too)

    def _retire_survivors(self, survivors: Generation) -> None:
        """Generation.on_give_up: the workers left by a workers supervisor that gave up retire while the root
        restarts it, as a reload's old generation does."""
        log.warning("workers@%d gave up; the root restarts it while its %d surviving worker(s) drain",
                    survivors.number, len(survivors.workers()))
        self._generations.append(survivors)
        self._nursery.start_soon(self._retire, survivors)  # type: ignore[union-attr]

    async def _retire(self, generation: Generation) -> None:
        """Tell every worker of `generation` to drain, together; a reload's old generation also stops listening on
        the addresses the serving config no longer has and is taken out of the root supervisor at once (its link
        lets go; a give-up's survivors left it with theirs). Then wait here, not in the root supervisor, for its
        supervisor to collect them as they finish, and kill what is left past the drain's deadline."""
        root = self.root
        assert root is not None and self.config is not None
        generation.retiring = True
        generation.signal_workers(RETIRE_SIGNAL)
        if not generation.gave_up:
            self.slots.release(listen_addresses(self.config))
            try:
                await root.terminate_child(generation.id)  # (at once: a retiring link does not wait for the drain)
                await root.delete_child(generation.id)
            except SupervisorNotRunning:
                pass  # the root is stopping (its shutdown stops the link just as fast)
            self._last_listed.pop(generation.id, None)
            self._last_listed["root"] = [i for i in self._last_listed.get("root", []) if i.id != generation.id]
        with trio.move_on_after(generation.drain_timeout) as deadline:
            await generation.stop()
        if deadline.cancelled_caught:
            log.warning("generation %d: still draining %gs after its retirement; killing what is left",
                        generation.number, generation.drain_timeout)
            generation.kill()
            await generation.stop()
        self._generations.remove(generation)
        self._exited.set()
        if not generation.gave_up:  # (a give-up's generation goes on serving from it)
            for name in snapshot_names(generation.number):
                _remove(os.path.join(self.run_dir, name))
        if len(self._generations) == 1:  # the serving one alone: no worker was given a parked descriptor
            self.slots.free_parked()
        log.info("generation %d has stopped%s", generation.number,
                 " (the workers left when its supervisor gave up)" if generation.gave_up else "")

    # ---- admin --------------------------------------------------------------------------------------------------

    async def handle_admin(self, request: AdminRequest) -> Any:
        cmd = request.cmd
        if (problem := argument_problem(cmd, request.args)) is not None:
            raise AdminCommandError(problem)
        if self.root is None and cmd != "stop":  # (the root supervisor starts every child before it is set)
            await self._until_ready(request)
        if cmd == "status":
            return await self.status()
        if cmd == "reload":
            path = request.args.get("config")
            if path is not None and not isinstance(path, str):
                raise AdminCommandError("reload: config=PATH must be a string")
            if path == "":
                raise AdminCommandError("reload: config= is empty; give the config file's path, or leave config= out "
                                        "to re-read the file the gateway runs from")
            return await self.reload(path, _reload_variables(request.args))
        if cmd == "stop":
            self._stop.set()
            return {"stopping": True}
        if cmd == "workers":
            return [_child_json(info) for info in await self._listed_workers()] + [
                _draining_json(ref) for g in list(self._generations) if g.retiring
                for ref in g.workers()]  # (a reload's old workers, a give-up's survivors: still draining)
        if cmd in KEEPER_COMMANDS:
            try:
                reply = await self.keeper.call(cmd, request.args, _keeper_timeout(request))
            except KeeperUnavailable as e:
                raise AdminCommandError(str(e)) from None
            if not reply.ok:
                raise AdminCommandError(reply.error or "failed")
            return reply.result
        raise AdminCommandError(f"unknown command {cmd!r}; try: status, reload, stop, workers, "
                                f"{', '.join(sorted(KEEPER_COMMANDS))}")

    async def _until_ready(self, request: AdminRequest) -> None:
        """A read during the start waits for it to end, as long as its client waits (without bound for one that
        says no timeout), as which_children waits for a busy supervisor; a change waits for no start. Then
        AdminCommandError if the gateway is not ready: still starting, or stopped before it was."""
        if not changes_state(request):
            wait = math.inf if request.timeout_ms is None else request.timeout_ms / 1000 - STARTING_ANSWER_MARGIN_S
            with trio.move_on_after(max(wait, 0)):
                await self._start_over.wait()
        if self.root is not None and self._start_over.is_set():
            return
        if self._stop.is_set():
            raise AdminCommandError("the gateway is stopping: a stop came before it was ready")
        raise AdminCommandError(f"{STARTING} (pid {os.getpid()}, for {time.time() - self.started_at:.1f}s): not "
                                "every worker accepts yet; ask again once it is ready (`stop` ends the start)")

    async def _listed(self, key: str, handle: Handle) -> tuple[list[ChildInfo[ChildRef]], bool]:
        """The supervisor's children; while it is busy starting or stopping a child (it answers between operations,
        as OTP's do), those it last listed, and True."""
        with trio.move_on_after(SUPERVISOR_ANSWER_S):
            try:
                children = await handle.which_children()
            except SupervisorNotRunning:
                children = []  # (it has just stopped: a retired generation's)
            self._last_listed[key] = children
            return children, False
        return self._last_listed.get(key, []), True

    async def _listed_workers(self) -> list[ChildInfo[ChildRef]]:
        """Every worker of the generations in the root's tree, for `workers`, without waiting for a busy supervisor."""
        if self.root is None:
            return []
        out = []
        for info in (await self._listed("root", self.root))[0]:
            if info.pid is not None and isinstance(info.pid.value, Handle):
                out += (await self._listed(str(info.id), info.pid.value))[0]
        return out

    async def _tree_json(self, key: str, handle: Handle, out: dict[str, Any]) -> dict[str, Any]:
        """`out` (the supervisor's own entry) with its children, each supervisor's with theirs; "busy": true where
        a supervisor busy starting or stopping a child is shown with the children it last listed."""
        children, busy = await self._listed(key, handle)
        if busy:
            out["busy"] = True
        out["children"] = []
        for info in children:
            entry = _child_json(info)
            ref = info.pid
            if ref is not None and isinstance(ref.value, Handle):
                entry = await self._tree_json(str(info.id), ref.value, entry)
            out["children"].append(entry)
        return out

    async def status(self) -> dict[str, Any]:
        assert self.root is not None and self.config is not None
        gw = self.config.gateway
        root = {"id": "root", "type": "supervisor", "strategy": "one_for_one", "intensity": gw.restart_intensity,
                "period_s": gw.restart_period_s}
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started_at, 3),
            "config": self.config_path,
            "generation": self.generation,
            "listen": [f"{h}:{p}" for h, p in listen_addresses(self.config)],
            "tree": await self._tree_json("root", self.root, root),
            # reloads' old generations and give-ups' survivors, draining outside the root's tree
            # (gateway.node.generation) until they exit
            "retiring": [{"id": g.id, "type": "supervisor", "state": "retiring",
                          "children": [_draining_json(ref) for ref in g.workers()]}
                         for g in list(self._generations) if g.retiring],
        }


def _uptime(ref: ChildRef | None) -> float | None:
    """Seconds since `ref`'s child started, read as its entry is made: a `status` or `workers` that waited for a
    busy supervisor, which meanwhile restarted the child, counts from after that start, never a time before it."""
    started = ref.started_at if ref is not None else None
    return round(trio.current_time() - started, 3) if started is not None else None


def _draining_json(ref: ChildRef) -> dict[str, Any]:
    """A retiring generation's worker, as its supervisor (busy stopping it) cannot list it: asked of no one."""
    return {"id": ref.id, "type": "worker", "state": "draining", "pid": ref.os_pid, "uptime_s": _uptime(ref)}


def _child_json(info: ChildInfo[ChildRef]) -> dict[str, Any]:
    ref = info.pid
    return {"id": info.id, "type": str(getattr(info.type, "value", info.type)),
            "state": str(getattr(info.state, "value", info.state)),
            "pid": ref.os_pid if ref is not None else None,
            "uptime_s": _uptime(ref),
            "restarts": info.restart_count,
            **({"started_by": ref.started_by} if isinstance(ref, ProcessRef) else {})}


def _keeper_timeout(request: AdminRequest) -> float:
    """How long a keeper command waits for the keeper: KEEPER_ANSWER_S, or what is left of its client's timeout if
    less, so that the command's deadline at the keeper (gateway.bus.keeper_link) comes before the client gives up."""
    if request.timeout_ms is None:
        return KEEPER_ANSWER_S
    return min(KEEPER_ANSWER_S, request.timeout_ms / 1000)


def _reload_variables(args: Mapping[str, object]) -> dict[str, str]:
    """An admin `reload`'s KONG_<KEY> arguments (`gateway reload` sends its own environment's) that set kong.conf's
    keys; other KONG_ names are ignored, as Kong's conf loader ignores them (handle_admin refuses any other name)."""
    given: dict[str, str] = {}
    for key, value in args.items():
        if key.startswith(kong_conf.ENVIRONMENT_PREFIX):
            if not isinstance(value, str):
                raise AdminCommandError(f"reload: {key}=TEXT must be a string (a KONG_ variable's text)")
            given[key] = value
    return kong_conf.carried(given)


def _started_with(spec: ChildSpec, environ: Mapping[str, str]) -> ChildSpec:
    """`spec`, its process started with `environ` in place of the root's environment (a reload's KONG_ variables
    join the root's only once the reload has succeeded)."""
    assert isinstance(spec.start, Process)
    return dataclasses.replace(spec, start=dataclasses.replace(spec.start, env=dict(environ)))


def _child_said(e: StartError) -> str | None:
    """The line a child that could not start gave its supervisor (gateway.cli's _cannot_start: naming the setting
    and what to do), if it gave one (supervisor.ProcessStartError's `said`)."""
    reason: object = e
    while isinstance(reason, StartError):  # (a worker's start error within its generation's)
        reason = reason.reason
    return reason.said if isinstance(reason, ProcessStartError) else None


def _listen_failure(e: OSError) -> str:
    """Why a listen address could not be bound, and what to do (AddressInUse and OptionKept say both themselves)."""
    if isinstance(e, (AddressInUse, OptionKept)):
        return str(e.strerror)
    if e.errno == errno.EADDRNOTAVAIL:
        return (f"{e.strerror} (no interface of this machine has that address: `ip addr` lists them); change "
                "gateway.listen")
    return f"{e.strerror or e}; change gateway.listen"


def _write_pid(path: str) -> None:
    make_run_dir(os.path.dirname(os.path.abspath(path)))
    write_atomically(path, f"{os.getpid()}\n", PID_MODE)


def _remove_moved(pid_file: str | None) -> None:
    """Remove the pid file a rejected reload wrote (Node._write_moved_pid_file), if it wrote one."""
    if pid_file is not None:
        _remove(pid_file)


def _remove(path: str) -> None:
    """Remove a file of the run directory, if it is there; one that cannot be removed (a read-only filesystem, a
    directory that lost its write permission) is logged and left, as nginx's ngx_delete_pidfile: nothing stops on it."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        if os.path.lexists(path):  # (a read-only filesystem refuses to unlink what is not there too)
            log.error("cannot remove %s: %s; it is left behind (remove it once its directory is writable again)",
                      path, e.strerror or e)


def _root_of(pid: int) -> int:
    """The gateway root above `pid` (a state keeper's parent, say), or `pid` itself when there is none."""
    above = pid
    for _ in range(4):
        if is_gateway(above):
            return above
        try:
            with open(f"/proc/{above}/stat", "rb") as f:
                above = int(f.read().rpartition(b")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            return pid
        if above <= 1:
            return pid
    return pid


def descendants(pid: int) -> list[int]:
    """The pids of the processes below `pid` (its children, theirs, ...), from /proc; [] where there is none."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile
        parent = int(stat.rpartition(b")")[2].split()[1])  # (the name in parentheses may hold spaces)
        children.setdefault(parent, []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found
