"""One worker process: a Trio proxy on its own SO_REUSEPORT listener(s). `gateway run` runs one in the foreground.

SIGTERM/SIGINT drain it: stop accepting, finish in-flight requests (and SSE streams) for up to drain_timeout, then
exit. The supervisor starts several of these; each reports readiness once its listeners accept. Under the root,
RETIRE_SIGNAL starts the same drain without the exit: the root sends it to every worker of a generation at once (as
nginx's master sends SIGQUIT to all its workers), and the supervisor's SIGTERM, sent to one worker after another,
then only collects them, each exiting as soon as its drain is over (never by itself, which would be a restart).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import signal
import socket
from collections.abc import Callable

import trio
import zmq

from gateway.config import Config, load_config, parse_host_port
from gateway.config.kong_forms import use_load_time
from gateway.config.tls import listen_flags
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
from gateway.node.files import make_body_temp_dir
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


def listen_addresses(config: Config) -> list[tuple[str, int]]:
    """The (host, port) of every listen entry, in order (an entry may end with flags: "0.0.0.0:8443 ssl")."""
    listens = [config.gateway.listen] if isinstance(config.gateway.listen, str) else config.gateway.listen
    return [parse_host_port(a.split()[0], None) for a in listens]  # type: ignore[misc]  # validated at load


def bind_all(config: Config) -> list[socket.socket]:
    """Bind every listen address, exclusively (one process: no SO_REUSEPORT, so nothing can share the port with it);
    raises OSError naming the address (e.g. port already in use)."""
    socks = []
    try:
        for host, port in listen_addresses(config):
            try:
                socks.append(bind_listener(host, port, reuse_port=False))
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
    stops = (signal.SIGTERM, signal.SIGINT, RETIRE_SIGNAL) if parent is not None else (signal.SIGTERM, signal.SIGINT)
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
                    async for signum in signals:
                        log.info("worker %d: %s, draining (up to %gs)", os.getpid(), signal.Signals(signum).name,
                                 gw.drain_timeout)
                        break
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
    """Load the config, bind, serve; returns a process exit code."""
    config = load_config(config_path)
    compile_config(config, config_path)  # report config errors before binding anything
    listeners = bind_all(config)
    trio.run(lambda: serve_worker(config, listeners, ready=ready))
    return 0
