"""One worker process: a Trio proxy on its own SO_REUSEPORT listener(s). `gateway run` runs one in the foreground.

SIGTERM/SIGINT drain it: stop accepting, finish in-flight requests (and SSE streams) for up to drain_timeout, then
exit. Without a root (`gateway run`) it answers signals as the root does: SIGQUIT drains too, a second SIGTERM or
SIGINT during the drain forces the stop, and SIGHUP is logged and ignored (there is no reload without the root).
The supervisor starts several of these; each reports readiness once its listeners accept. Under the root,
RETIRE_SIGNAL starts the same drain without the exit: the root sends it to every worker of a generation at once (as
nginx's master sends SIGQUIT to all its workers), and the supervisor's SIGTERM, sent to one worker after another,
then only collects them, each exiting as soon as its drain is over (never by itself, which would be a restart).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Callable

import msgspec
import trio
import zmq

from gateway.cli import SettingError
from gateway.config import Config, ConfigError, load_config, parse_host_port
from gateway.config.kong_forms import use_load_time
from gateway.config.listen import ListenAddress, listen_flags, listen_options
from gateway.config.schema import GatewaySettings
from gateway.discovery.local import run_local_discovery
from gateway.discovery.registration import run_registration
from gateway.dns import process as dns
from gateway.health.local import run_local_checks
from gateway.http.codecs import codec_classes, resolve_codec
from gateway.http.kong_errors import ERROR_DEFAULT_TYPES, templates_of
from gateway.http.kong_headers import KongHeaders, enabled
from gateway.http.limits import derived_max_connections, raise_nofile_limit, warn_beyond_nofile
from gateway.http.net import bind_listener
from gateway.http.pool import Pool
from gateway.http.server import ServerSettings, serve_listener
from gateway.http.tls import quiet_bad_server_names
from gateway.http.tls_contexts import ServerTls
from gateway.keeper.state import Keeper
from gateway.node import logfile
from gateway.node.files import PID_MODE, file_problem, make_body_temp_dir, make_run_dir, write_atomically
from gateway.node.orphan import parent_or_exit, stop_when_orphaned
from gateway.node.paths import absolute_endpoint
from gateway.node.start_only import inherited
from gateway.pipeline.forward import Forwarder
from gateway.pipeline.handler import Pipeline
from gateway.pipeline.request_buffer import use_temp_dir
from gateway.runtime import compile_config
from gateway.state.shared import SharedState
from gateway.telemetry.service import WorkerTelemetry

log = logging.getLogger("gateway.worker")

KEEPER_SYNC_TIMEOUT_S = 2.0  # a starting worker waits this long at most for the keeper's first snapshot
RETIRE_SIGNAL = signal.SIGUSR2  # from the root: drain now, exit at SIGTERM (SIGQUIT is blocked: a terminal's)
LOADED_AT_ENV = "GATEWAY_LOADED_AT"  # from the root: when it loaded the generation's config (Unix seconds)
# `gateway run`'s signals: the root's graceful stops (SIGQUIT: `gateway stop`, `kong quit`) and SIGHUP, refused
RUN_STOPS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
RUN_SIGNALS = (*RUN_STOPS, signal.SIGHUP)
SIGHUP_REFUSED = ("SIGHUP: gateway run does not reload its config; restart it, or run the gateway with `gateway "
                  "start`, which reloads")


def listen_addresses(config: Config) -> list[ListenAddress]:
    """The (host, port) of every listen entry, in order, each with the socket options its flags give (an entry may
    end with flags: "0.0.0.0:8443 ssl backlog=16384"), read once per start or reload."""
    listens = [config.gateway.listen] if isinstance(config.gateway.listen, str) else config.gateway.listen
    return [_listen_address(entry) for entry in listens]


def _listen_address(entry: str) -> ListenAddress:
    addr, flags = listen_flags(entry)
    host, port = parse_host_port(addr, None)  # type: ignore[misc]  # validated at load
    return ListenAddress(host, port, listen_options(flags, ":" in host)[0])  # type: ignore[arg-type]


def bind_all(config: Config) -> list[socket.socket]:
    """Bind every listen address, exclusively (one process: no SO_REUSEPORT, so nothing can share the port with it);
    raises OSError naming the address (e.g. port already in use)."""
    socks = []
    try:
        for addr in listen_addresses(config):
            host, port = addr
            try:
                socks.append(bind_listener(host, port, reuse_port=False, options=addr.options))
            except OSError as e:
                raise OSError(e.errno, f"cannot listen on {host}:{port}: {e.strerror}") from None
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


async def serve_worker(config: Config, listeners: list[socket.socket], *,
                       ready: Callable[[], None] | None = None, bus: str | None = None, worker_id: str = "1.0",
                       workers: int = 1, parent: int | None = None) -> None:
    """Serve until SIGTERM/SIGINT (under the root: or RETIRE_SIGNAL), then drain for up to drain_timeout seconds.

    With `bus` (under the supervisor) shared state comes from the state keeper; without it (`gateway run`, tests)
    the keeper's logic runs in this process, exact for this one worker.
    """
    gw = config.gateway
    quiet_bad_server_names()
    use_temp_dir(make_body_temp_dir(os.path.dirname(os.path.abspath(gw.pid_file)), gw.client_body_temp_path))
    shared = SharedState(worker_id, workers)
    runtime = compile_config(config, shared=shared)
    shared.attach(runtime)
    codec_name = resolve_codec(gw.http_codec)
    server_cls, client_cls = codec_classes(codec_name)
    nofile = raise_nofile_limit(gw.worker_rlimit_nofile)  # whether or not max_connections is set
    max_connections = gw.max_connections or derived_max_connections(nofile)
    if gw.max_connections:
        warn_beyond_nofile(gw.max_connections, nofile)
    settings = ServerSettings(server_cls, gw.header_timeout_s, gw.keepalive_timeout_s, gw.max_header_bytes,
                              max_connections, gw.send_timeout_s, gw.client_body_timeout_s,
                              ERROR_DEFAULT_TYPES[gw.error_default_type],
                              KongHeaders.from_setting(gw.headers, gw.charset),
                              "x-kong-request-id" in enabled(gw.headers_upstream), gw.keepalive_requests,
                              gw.keepalive_time_s, gw.max_header_line_bytes, templates_of(gw))
    pool = Pool(client_cls, gw.upstream_keepalive, gw.upstream_idle_timeout_s, gw.upstream_keepalive_max_requests,
                proxy_buffer_size=gw.proxy_buffer_size)
    forwarder = Forwarder(pool, gw.sse_keepalive, shared)
    shared.on_sweep = forwarder.sweep
    telemetry = WorkerTelemetry(config, settings.connections, forwarder.active)
    pipeline = Pipeline(runtime, forwarder, telemetry.log_phase)
    settings.log_refused = pipeline.log_refused
    settings.refused_phases = runtime.global_phases
    ctx = zmq.Context() if bus is not None else None
    stops = (signal.SIGTERM, signal.SIGINT, RETIRE_SIGNAL) if parent is not None else RUN_SIGNALS
    registering = trio.CancelScope()  # `gateway run`'s self-registration: withdrawn as the drain starts
    if parent is not None:  # a retirement during a drain a SIGTERM began adds nothing to it: never SIGUSR2's default
        signal.signal(RETIRE_SIGNAL, signal.SIG_IGN)  # action, when trio re-raises what is pending as `signals` closes
    try:
        with trio.open_signal_receiver(*stops) as signals, contextlib.ExitStack() as reopening:
            async with dns.serving(gw), trio.open_nursery() as nursery:
                nursery.start_soon(pool.watch_forever)
                nursery.start_soon(forwarder.keepalives.run_forever)
                nursery.start_soon(forwarder.streams.run_forever)
                nursery.start_soon(settings.connections.timers.expire_forever)
                await nursery.start(telemetry.run)
                reopening.enter_context(logfile.also_on_signal())  # SIGUSR1: gateway.log_file too, not just access logs
                for service in runtime.background:  # policies' background work (ai-mcp-oauth2's JWKS refresh)
                    nursery.start_soon(service)
                if parent is not None:
                    nursery.start_soon(stop_when_orphaned, parent)
                if ctx is not None:
                    await nursery.start(shared.run_bus, ctx, bus)
                    # Accept only once the keeper's snapshot is in: before it, an upstream whose targets come from
                    # discovery has none (503), and unhealthy or drained targets look usable. Bounded: without a
                    # keeper, serve on the config's state (the fault_tolerant fallback).
                    with trio.move_on_after(KEEPER_SYNC_TIMEOUT_S):
                        await shared.synced.wait()
                    shared.start_without_keeper()
                else:
                    await nursery.start(shared.run_local, Keeper(config, 1))
                    await nursery.start(run_local_checks, config, shared)  # (under the root: the health process)
                    await nursery.start(run_local_discovery, config, shared)  # (the discovery process)
                # The connections have a nursery of their own, so that those the drain_timeout cuts are over (their
                # log phase run) while the log writers and queues still run to flush what they wrote.
                async with trio.open_nursery() as serving:
                    # Draining closes the listeners rather than cancelling the accept loops, whose nurseries own
                    # the connections: those must be left to finish.
                    await serving.start(_serve_until_drained, listeners, pipeline, settings,
                                        _tls_of(config, listeners, runtime.server_tls),
                                        _flagged(config, listeners, "proxy_protocol"))
                    log.info("worker %d accepting on %s (codec %s)", os.getpid(),
                             ", ".join(f"{h}:{p}" for h, p in listen_addresses(config)), codec_name)
                    if ready is not None:
                        ready()
                    if ctx is None and gw.registration is not None:  # (under the root: its registration task)
                        nursery.start_soon(_registered, registering, gw)
                    async for signum in signals:
                        if signum == signal.SIGHUP:
                            log.warning("%s", SIGHUP_REFUSED)
                            continue
                        log.info("worker %d: %s, draining (up to %gs)", os.getpid(), signal.Signals(signum).name,
                                 gw.drain_timeout)
                        break
                    registering.cancel()
                    if parent is None:
                        await _drain_or_force(listeners, settings, pool, gw.drain_timeout, signals)
                    else:
                        await _drain(listeners, settings, pool, gw.drain_timeout)
                    serving.cancel_scope.cancel()
                shared.release()
                await telemetry.drain()
                if signum == RETIRE_SIGNAL:  # retired by the root: its supervisor's SIGTERM says when to exit
                    async for stop in signals:
                        if stop != RETIRE_SIGNAL:
                            break
                nursery.cancel_scope.cancel()
    finally:
        pool.close_all()  # also when cancelled: no pooled upstream socket is left open
        settings.connections.close_spare()
        if ctx is not None:
            ctx.term()


async def _registered(scope: trio.CancelScope, gw: GatewaySettings) -> None:
    """`gateway run`'s gateway.registration, as the root runs it once its workers accept, until `scope` is cancelled
    (deregistering then). No status server answers here, so the Consul check is the TTL one the gateway passes."""
    with scope:
        await run_registration(gw.registration, msgspec.structs.replace(gw, status_listen=None))  # type: ignore[arg-type]


async def _drain_or_force(listeners: list[socket.socket], settings: ServerSettings, pool: Pool, timeout: float,
                          signals: AsyncIterator[int]) -> None:
    """`gateway run`'s drain, reading signals as the root does during a stop: a SIGTERM or SIGINT forces it (what is
    left is closed at once), a SIGQUIT leaves it graceful (nginx: ngx_quit again), a SIGHUP is refused again."""
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    log.warning("%s", SIGHUP_REFUSED)
                elif signum == signal.SIGQUIT:
                    log.info("SIGQUIT: the graceful stop goes on (SIGTERM forces it)")
                else:
                    log.warning("second %s: forcing the stop", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()

        nursery.start_soon(watch)
        await _drain(listeners, settings, pool, timeout)
        nursery.cancel_scope.cancel()


async def _serve_until_drained(listeners: list[socket.socket], pipeline: Pipeline, settings: ServerSettings,
                               tls: list[ServerTls | None], proxied: list[bool],
                               task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    async with trio.open_nursery() as nursery:
        for sock, sock_tls, sock_proxied in zip(listeners, tls, proxied, strict=True):
            await nursery.start(serve_listener, sock, pipeline, settings, sock_tls, sock_proxied)
        task_status.started()


def _tls_of(config: Config, listeners: list[socket.socket], server_tls: ServerTls | None) -> list[ServerTls | None]:
    """Per listener socket, the certificates it serves when its listen entry says `ssl`, else None."""
    return [server_tls if ssl else None for ssl in _flagged(config, listeners, "ssl")]


def _flagged(config: Config, listeners: list[socket.socket], flag: str) -> list[bool]:
    """Per listener socket, whether its listen entry has `flag` (`ssl`, `proxy_protocol`)."""
    listens = [config.gateway.listen] if isinstance(config.gateway.listen, str) else config.gateway.listen
    ports: dict[int, set[str]] = {}
    for entry in listens:
        addr, flags = listen_flags(entry)
        host, port = parse_host_port(addr, None)  # type: ignore[misc]  # validated at load
        if flag in flags:
            ports.setdefault(port, set()).add(_normal_host(host))  # type: ignore[arg-type]
    out: list[bool] = []
    for sock in listeners:
        host, port = sock.getsockname()[:2]
        hosts = ports.get(port, set())
        out.append(_normal_host(host) in hosts or bool(hosts and len(listens) == 1))
    return out


def _normal_host(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        try:
            return str(ipaddress.ip_address(socket.gethostbyname(host)))
        except OSError:
            return host


async def _drain(listeners: list[socket.socket], settings: ServerSettings, pool: Pool, timeout: float) -> None:
    """Stop accepting, close idle kept-alive connections (clients' and pooled upstream ones: the pool keeps none from
    now on), wait for the busy ones (bounded by `timeout`)."""
    for sock in listeners:
        trio.lowlevel.notify_closing(sock)
        sock.close()
    settings.connections.start_drain()
    pool.stop_keeping()
    with trio.move_on_after(timeout):
        await settings.connections.wait_empty()
        return
    log.warning("drain timeout: closing %d connection(s) still open", settings.connections.active)


def run_supervised_worker(config_path: str, fds: list[int], worker_id: str = "1.0", workers: int = 1) -> int:
    """A worker under the root supervisor: serve on the inherited listener slots, report ready on the pipe."""
    from supervisor import notify_ready

    parent = parent_or_exit()
    stamp = os.environ.get(LOADED_AT_ENV)
    if stamp is not None:  # the generation's entities carry the root's load time, whenever this worker started
        use_load_time(int(stamp))
    config = inherited(load_config(config_path))  # a reload's snapshot, with the bus and run directory of the start
    listeners = []
    for fd in fds:
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        listeners.append(sock)
    bus = absolute_endpoint(config.gateway.bus)
    trio.run(lambda: serve_worker(config, listeners, ready=notify_ready, bus=bus, worker_id=worker_id,
                                  workers=workers, parent=parent))
    return 0


def run_worker(config_path: str, ready: Callable[[], None] | None = None) -> int:
    """`gateway run`: load the config, bind, serve, with the pid file written once accepting (so `gateway stop
    --config F` finds it, as nginx writes its pid file in one-process mode too) and removed at exit; returns a
    process exit code. Raises ConfigError, or SettingError naming the setting and what to do."""
    config = load_config(config_path)
    compile_config(config, config_path)  # report config errors before binding anything
    refuse_run_only(config_path, config)
    pid_file = config.gateway.pid_file
    if (pid := _running(pid_file)) is not None:
        raise SettingError(errno.EEXIST, f"{config_path}: gateway.pid_file: already running (pid {pid}, pid file "
                           f"{pid_file}); `gateway stop` it first, or give this one its own gateway.pid_file")
    if (problem := file_problem(pid_file, False)) is not None:
        raise SettingError(errno.EACCES, f"{config_path}: gateway.pid_file: {problem} for gateway.pid_file")
    listeners = bind_all(config)

    def accepting() -> None:
        _write_pid(config_path, pid_file)
        if ready is not None:
            ready()

    try:
        trio.run(lambda: serve_worker(config, listeners, ready=accepting))
    finally:
        _remove_pid(pid_file)
    return 0


def refuse_run_only(config_path: str, config: Config) -> None:
    """ConfigError for what only the root serves, set explicitly (the file's gateway block, or its KONG_ variable):
    gateway.status_listen. Its default is not served by `gateway run` (README: CLI)."""
    if config.gateway.status_listen is None:
        return
    from gateway.config import kong_conf
    from gateway.config.document import read_document
    from gateway.config.loader import read_config_text

    doc = read_document(read_config_text(config_path), config_path)  # (as load_config read it: JSON as JSON)
    block = doc.get("gateway") if isinstance(doc, dict) else None
    if (isinstance(block, dict) and block.get("status_listen") is not None) \
            or "status_listen" in kong_conf.from_environment(os.environ):
        raise ConfigError([f"{config_path}: gateway.status_listen: `gateway run` serves no status server (one "
                           "process, no supervisor); set it to null (or remove it) to run here, or run the gateway "
                           "with `gateway start`, which serves it"])


def _running(pid_file: str) -> int | None:
    """The pid of a gateway running on `pid_file` (a stale file is removed), else None."""
    from gateway.node.locate import NotRunning, running_pid

    try:
        return running_pid(pid_file)
    except NotRunning:
        return None


def _write_pid(config_path: str, pid_file: str) -> None:
    """Write this process's pid to `pid_file` (its directory made as the root makes it), once its signals are
    handled; a failure file_problem did not foresee (a race) is logged, and the gateway serves on."""
    try:
        make_run_dir(os.path.dirname(os.path.abspath(pid_file)))
        write_atomically(pid_file, f"{os.getpid()}\n", PID_MODE)
    except OSError as e:
        log.error("%s: gateway.pid_file: cannot write %s: %s; serving without it (`gateway stop` will not find this "
                  "process: stop it with Ctrl-C or SIGTERM)", config_path, pid_file, e.strerror or e)


def _remove_pid(pid_file: str) -> None:
    """Remove `pid_file` if it still names this process (never another gateway's)."""
    with contextlib.suppress(OSError):
        with open(pid_file, encoding="ascii") as f:
            if f.read().strip() != str(os.getpid()):
                return
        os.unlink(pid_file)
