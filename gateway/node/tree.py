"""The gateway's supervision tree as OTP child specs (drawn in the README).

    root  one_for_one, intensity 5 / 60 s (erlmcp's)
     ├─ zygote      OS process: `gateway zygote`, the pre-imported template the others are forked from (exec without it)
     ├─ keeper      OS process: `gateway keeper`, the bus owner (rate-limit ledgers, breakers, target states)
     ├─ health      OS process: `gateway health`, active checks (when an upstream has them)
     ├─ discovery   OS process: `gateway discovery`, etcd / Consul watches (when an upstream has them)
     ├─ status      Trio task in the root: hypercorn serving /health /ready /live /metrics on status_listen
     └─ workers@G   one_for_one supervisor of generation G (a reload starts G+1 beside it, then retires G: it leaves
          │         the root at once, and drains in the root's nursery: gateway.node.generation)
          ├─ worker-1   OS process: `gateway worker`, inheriting its listener slots
          └─ worker-N
     └─ registration  Trio task in the root: the gateway's own entry in Consul or etcd (when configured)

Each runs `python -m gateway --log-level L COMMAND ...`, L the root's own `--log-level` (gateway.cli.command_line).

The root stops them in the reverse of this order (`place`), reloads or not. A reload's start_child adds workers@G+1,
and the health and discovery processes restarted on its config, after `registration`: in OTP's reverse start order
they would stop first, and the gateway would leave the registry only once its workers had drained.
"""

from __future__ import annotations

from collections.abc import Hashable

from gateway.cli import command_line
from gateway.config import Config
from gateway.discovery.service import discovered_upstreams
from gateway.node.zygote import needed_libraries
from supervisor import ChildSpec, Process, Restart, Strategy, SupervisorSpec, SupFlags
from supervisor.forkserver import ForkServer

ROOT_CHILDREN = ("zygote", "keeper", "health", "discovery", "status", "workers@", "registration")  # as drawn above
SHUTDOWN_MARGIN_MS = 5000  # beyond drain_timeout, before a draining worker is killed
ZYGOTE_SHUTDOWN_MS = 2000  # it holds nothing to clean up


def zygote_spec(fork_server: ForkServer, config: Config) -> ChildSpec:
    """`gateway zygote`: always started with exec; while it is down the others are too."""
    fd = fork_server.zygote_fd
    argv = command_line("zygote", "--control-fd", str(fd))
    libraries = needed_libraries()  # the root has compiled the config: what it imported, the children will
    if libraries:
        argv += ["--preload", ",".join(libraries)]
    return ChildSpec("zygote", Process(argv, start_timeout=config.gateway.worker_start_timeout_s, pass_fds=(fd,)),
                     restart=Restart.PERMANENT, shutdown=ZYGOTE_SHUTDOWN_MS)


def worker_spec(snapshot_path: str, generation: int, index: int, workers: int, fds: list[int],
                config: Config, spawner: ForkServer | None = None) -> ChildSpec:
    gw = config.gateway
    argv = command_line("worker", "--config", snapshot_path, "--fds", ",".join(map(str, fds)),
                        "--generation", str(generation), "--index", str(index), "--workers", str(workers))
    start = Process(argv, start_timeout=gw.worker_start_timeout_s, pass_fds=fds, spawner=spawner)
    return ChildSpec(f"worker-{index + 1}", start, restart=Restart.PERMANENT,
                     shutdown=int(gw.drain_timeout * 1000) + SHUTDOWN_MARGIN_MS)


def keeper_spec(snapshot_path: str, workers: int, config: Config, spawner: ForkServer | None = None) -> ChildSpec:
    argv = command_line("keeper", "--config", snapshot_path, "--workers", str(workers))
    return ChildSpec("keeper", Process(argv, start_timeout=config.gateway.worker_start_timeout_s, spawner=spawner),
                     restart=Restart.PERMANENT, shutdown=5000)


def satellite_spec(kind: str, config_path: str, config: Config, spawner: ForkServer | None = None) -> ChildSpec:
    """`gateway health` or `gateway discovery`: one process for the whole gateway, reporting to the keeper."""
    argv = command_line(kind, "--config", config_path)
    return ChildSpec(kind, Process(argv, start_timeout=config.gateway.worker_start_timeout_s, spawner=spawner),
                     restart=Restart.PERMANENT, shutdown=5000)


def needs_health(config: Config) -> bool:
    return any(up.healthchecks.active.healthy.interval or up.healthchecks.active.unhealthy.interval
               or up.healthchecks.check is not None for up in config.upstreams)


def needs_discovery(config: Config) -> bool:
    """A registry to follow, or target names to resolve (gateway.discovery)."""
    return bool(discovered_upstreams(config))


def workers_supervisor(generation: int, workers: list[ChildSpec], config: Config) -> SupervisorSpec:
    """workers@G's own spec; the root's child workers@G is its link (gateway.node.generation: permanent, supervisor)."""
    gw = config.gateway
    return SupervisorSpec(SupFlags(Strategy.ONE_FOR_ONE, gw.worker_restart_intensity, gw.worker_restart_period_s),
                          workers, name=f"workers@{generation}")


def place(child_id: Hashable) -> int:
    """The root's child `child_id`'s place in the tree as drawn (every workers@G at workers@'s); one it does not draw
    comes last, so is stopped first, as a child started last would be."""
    key = "workers@" if isinstance(child_id, str) and child_id.startswith("workers@") else child_id
    return ROOT_CHILDREN.index(key) if key in ROOT_CHILDREN else len(ROOT_CHILDREN)


def root_spec(config: Config, children: list[ChildSpec]) -> SupervisorSpec:
    gw = config.gateway
    return SupervisorSpec(SupFlags(Strategy.ONE_FOR_ONE, gw.restart_intensity, gw.restart_period_s), children,
                          name="root", place=place)
