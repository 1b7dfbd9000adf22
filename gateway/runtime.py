"""Compile a validated Config into what the data plane runs: routes, services, upstream groups, policy chains.

All per-request constants (header bytes, timeouts in seconds, balancers) are built here, once per config load.
Problems found here (an unknown algorithm, a bad plugin config) are config errors with field paths, so
`gateway check-config` reports them too.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

import msgspec

from gateway.balancing import Balancer, canonical_algorithm, make_balancer
from gateway.config import Config, ConfigError, parse_host_port, path_of
from gateway.config.errors import describe_validation_error
from gateway.config.loader import DEFAULT_TARGET_PORT
from gateway.config.schema import Plugin, Route, Service, Upstream
from gateway.policies import REGISTRY
from gateway.policies.base import Policy
from gateway.routing import Router, RouteSpec

log = logging.getLogger("gateway.runtime")


class TargetRuntime:
    """One upstream target: its address, and the Host header it expects (MCP servers check it)."""

    __slots__ = ("host", "port", "key", "name", "host_header", "weight")

    def __init__(self, host: str, port: int, weight: int, host_header: str | None = None) -> None:
        self.host = host
        self.port = port
        self.key = (host, port)
        self.weight = weight
        shown = f"[{host}]" if ":" in host else host
        self.name = f"{shown}:{port}"
        self.host_header = (host_header or (shown if port == 80 else self.name)).encode()


class UpstreamGroup:
    """The targets of an upstream (or of a service that names a host directly) and its balancer."""

    __slots__ = ("name", "targets", "balancer", "algorithm", "hash_on", "hash_fallback")

    def __init__(self, name: str, targets: list[TargetRuntime], algorithm: str, balancer: Balancer,
                 hash_on: tuple[str, bytes], hash_fallback: tuple[str, bytes]) -> None:
        self.name = name
        self.targets = targets
        self.algorithm = algorithm
        self.balancer = balancer
        self.hash_on = hash_on  # (kind, header/cookie/query name as bytes)
        self.hash_fallback = hash_fallback


class ServiceRuntime:
    """A service: where requests go and with which timeouts (seconds) and retries."""

    __slots__ = ("name", "path", "group", "connect_timeout", "write_timeout", "read_timeout", "retries")

    def __init__(self, name: str, path: bytes, group: UpstreamGroup, connect_timeout: float, write_timeout: float,
                 read_timeout: float, retries: int) -> None:
        self.name = name
        self.path = path
        self.group = group
        self.connect_timeout = connect_timeout
        self.write_timeout = write_timeout
        self.read_timeout = read_timeout
        self.retries = retries

    def upstream_target(self, path: bytes, query: bytes) -> bytes:
        """The request target sent upstream: the service path joined with the (stripped) request path."""
        base = self.path
        if base and base != b"/":
            path = base if path == b"/" else base.rstrip(b"/") + path
        return path + b"?" + query if query else path


class RouteRuntime:
    """A route as the pipeline uses it."""

    __slots__ = ("name", "service", "preserve_host", "policies")

    def __init__(self, name: str, service: ServiceRuntime, preserve_host: bool, policies: list[Policy]) -> None:
        self.name = name
        self.service = service
        self.preserve_host = preserve_host
        self.policies = policies


class Runtime:
    """Everything one config load produces for the data plane."""

    def __init__(self, config: Config, router: Router[RouteRuntime], services: dict[str, ServiceRuntime],
                 groups: dict[str, UpstreamGroup]) -> None:
        self.config = config
        self.router = router
        self.services = services
        self.groups = groups


def compile_config(config: Config, name: str = "<config>") -> Runtime:
    """Build the runtime, or raise ConfigError listing every problem found at this stage."""
    errors: list[str] = []
    groups = {up.name: _group(up, config, errors) for up in config.upstreams}
    services = {svc.name: _service(svc, groups, errors) for svc in config.services}
    plugin_objs = _plugins(config, errors)
    specs = []
    for i, route in enumerate(config.routes):
        svc = services.get(route.service or "")
        if svc is None:
            continue
        rname = route.name or f"routes[{i}]"
        runtime = RouteRuntime(rname, svc, route.preserve_host, _policies_for(route, plugin_objs))
        specs.append(RouteSpec(runtime, paths=route.paths, methods=route.methods, hosts=route.hosts,
                               headers=route.headers, query=route.query, regex_priority=route.regex_priority,
                               strip_path=route.strip_path))
    if errors:
        raise ConfigError([f"{name}: {e}" for e in errors])
    return Runtime(config, Router(specs), {k: v for k, v in services.items() if v}, groups)


def _group(up: Upstream, config: Config, errors: list[str]) -> UpstreamGroup:
    where = path_of(up)
    try:
        algorithm = canonical_algorithm(up.algorithm)
    except ValueError as e:
        errors.append(f"{where}.algorithm: {e}")
        algorithm = "round-robin"
    targets = []
    for t in config.targets:
        if t.upstream == up.name:
            host, port = parse_host_port(t.target, DEFAULT_TARGET_PORT)  # type: ignore[misc]
            targets.append(TargetRuntime(host, port, t.weight, up.host_header))  # type: ignore[arg-type]
    balancer = make_balancer(algorithm, [t.weight for t in targets], slots=up.slots)
    return UpstreamGroup(up.name, targets, algorithm, balancer, _hash_key(up.hash_on, up, "on"),
                         _hash_key(up.hash_fallback, up, "fallback"))


def _hash_key(kind: str, up: Upstream, which: str) -> tuple[str, bytes]:
    names = {"header": getattr(up, f"hash_{which}_header"), "cookie": up.hash_on_cookie,
             "query_arg": getattr(up, f"hash_{which}_query_arg")}
    name = names.get(kind) or ""
    return kind, name.lower().encode() if kind == "header" else name.encode()


def _service(svc: Service, groups: dict[str, UpstreamGroup], errors: list[str]) -> ServiceRuntime:
    if svc.url is not None:
        parts = urlsplit(svc.url)
        host, port, path = parts.hostname or "", parts.port or 80, parts.path or None
    else:
        host, port, path = svc.host or "", svc.port, svc.path
    group = groups.get(host)
    if group is None:  # a plain host:port: an implicit upstream of one target
        group = UpstreamGroup(f"{svc.name}:{host}:{port}", [TargetRuntime(host, port, 100)], "round-robin",
                              make_balancer("round-robin", [100]), ("none", b""), ("none", b""))
    elif not group.targets:
        log.warning("upstream %r of service %r has no targets: its requests will get 503", host, svc.name)
    return ServiceRuntime(svc.name, (path or "").encode(), group, svc.connect_timeout / 1000,
                          svc.write_timeout / 1000, svc.read_timeout / 1000, svc.retries)


def _plugins(config: Config, errors: list[str]) -> list[tuple[Plugin, Policy | None]]:
    built: list[tuple[Plugin, Policy | None]] = []
    for plugin in config.plugins:
        where = path_of(plugin)
        module: Any = REGISTRY.get(plugin.name)
        if module is None:
            errors.append(f"{where}.name: unknown plugin {plugin.name!r}; known: {', '.join(sorted(REGISTRY))}")
            continue
        try:
            cfg = msgspec.convert(plugin.config, module.schema)
        except msgspec.ValidationError as e:
            errors.append(describe_validation_error(e, plugin.config, module.schema, f"{where}.config"))
            continue
        except ValueError as e:
            errors.append(f"{where}.config: {e}")
            continue
        if not plugin.enabled:
            continue
        if not module.enforced:
            log.warning("plugin %s (%s) is validated but not enforced yet", plugin.name, where)
        built.append((plugin, module.build(cfg)))
    return built


def _policies_for(route: Route, plugins: list[tuple[Plugin, Policy | None]]) -> list[Policy]:
    """Kong's scoping: per plugin name, a route's instance beats its service's, which beats a global one."""
    chosen: dict[str, tuple[int, Policy | None]] = {}
    for plugin, policy in plugins:
        if plugin.consumer is not None:
            continue
        if plugin.route is not None:
            if plugin.route != route.name:
                continue
            rank = 3
        elif plugin.service is not None:
            if plugin.service != route.service:
                continue
            rank = 2
        else:
            rank = 1
        if rank > chosen.get(plugin.name, (0, None))[0]:
            chosen[plugin.name] = (rank, policy)
    policies = [p for _, p in chosen.values() if p is not None]
    return sorted(policies, key=lambda p: (-p.priority, p.name))
