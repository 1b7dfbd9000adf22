"""Compile a validated Config into what the data plane runs: routes, services, upstream groups, policy chains.

All per-request constants (header bytes, timeouts in seconds, balancers) are built here, once per config load.
Problems found here (an unknown algorithm, a bad plugin config) are config errors with field paths, so
`gateway check-config` reports them too.
"""

from __future__ import annotations

import copy
import functools
import inspect
import ipaddress
import logging
import re
from collections.abc import Sequence
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import msgspec

from gateway.balancing import Balancer, canonical_algorithm, make_balancer
from gateway.balancing.base import hand_over
from gateway.breaker.config import BreakerConfig, probe_ttl
from gateway.config import Config, ConfigError, parse_host_port, path_of
from gateway.config.decode import kong_nulls, kong_shorthands, whole_numbers
from gateway.config.errors import describe_validation_error, in_file_order, key_part
from gateway.config.kong_forms import url_host
from gateway.config.loader import load_config
from gateway.config.schema import Healthchecks, NotGiven, Plugin, Route, Service, Target, Upstream
from gateway.discovery.service import target_address
from gateway.discovery.types import target_key
from gateway.health.machine import Event
from gateway.health.policy import TCP_FAILURE, TIMEOUT, Outcome, PassivePolicy
from gateway.http import kong_errors
from gateway.http.net import is_ip
from gateway.http.realip import ClientAddress
from gateway.http.tls_contexts import ClientTls, ServerTls
from gateway.mcp.affinity import SessionAffinity
from gateway.mcp.resource import MetadataPaths
from gateway.mcp.step import McpRoute, McpShared
from gateway.pipeline.phases import ResponsePhases
from gateway.plugin_index import Built, ConsumerChains, PluginIndex, RouteScoping, ordered
from gateway.policies import REGISTRY
from gateway.policies.base import Policy
from gateway.policies.consumers import Directory
from gateway.policies.jwt.keys import check_keys
from gateway.routing import Router, RouteSpec
from gateway.telemetry.entities import RouteFacts, assign_ids, entity_id, is_anonymous
from gateway.tls_runtime import compile_client_ssl, compile_client_tls, compile_server_tls

log = logging.getLogger("gateway.runtime")


class TargetRuntime:
    """One upstream target: its address, and the Host header it expects (MCP servers check it). `name` is its
    identity on the bus, in health and breakers: 'ip:port', or 'hostname/ip:port' for an address of a name
    (gateway.discovery.types.target_key), so two names at one address are two targets, as in Kong."""

    __slots__ = ("host", "port", "key", "name", "host_header", "host_header_tls", "weight", "server_name", "obs",
                 "named", "target", "configured")

    def __init__(self, host: str, port: int, weight: int, host_header: str | None = None, hostname: str = "",
                 configured: str = "") -> None:
        """`hostname`: the name `host` is an address of; `configured`: the upstream's target (`name:port`) DNS made
        it of (gateway.discovery.dns)."""
        self.obs: Any = None  # its tries' outcomes and latencies for metrics (made by the log phase when first used)
        self.host = host
        self.port = port
        self.key = (host, port)
        self.named = not is_ip(host)  # a host name: looked up for every try, its addresses in turn (forward.py)
        self.target = hostname or host  # what the upstream's target names: the name for an address of a name
        self.configured = configured
        self.weight = weight
        self.name = target_key(host, port, hostname)
        # Kong's set_host_header: the upstream's host_header, else the target's host (its name, or its address as
        # Kong's targets DAO stores it), and its port unless it is the scheme's own (80 for http, 443 for https)
        name = host_header or hostname or _kong_host(host)
        self.host_header = (name if port == 80 else f"{name}:{port}").encode()
        self.host_header_tls = (name if port == 443 else f"{name}:{port}").encode()
        # TLS: the name sent as SNI and verified in the certificate (the upstream's host_header, else the target)
        self.server_name = _without_port(host_header) if host_header else hostname or host


def _kong_host(host: str) -> str:
    """An address as Kong's target names it (kong/db/dao/targets.lua format_target): an IPv6 one bracketed and
    expanded (`[0000:0000:0000:0000:0000:0000:0000:0001]`, kong/tools/ip.lua normalize_ipv6), others as they are."""
    if ":" not in host:
        return host
    try:
        return f"[{ipaddress.IPv6Address(host).exploded}]"
    except ValueError:
        return f"[{host}]"


def balancer_addresses(targets: list[TargetRuntime]) -> list[tuple[str, str, int]]:
    """The targets as Kong's balancer knows them, (its target: `name:port` for an address DNS made, else the bare
    name, address, port): consistent-hashing places them on Kong's continuum by these, an SRV name's records as
    one target's addresses, so a key goes where Kong sends it."""
    return [(t.configured or t.target, t.host, t.port) for t in targets]


def _without_port(authority: str) -> str:
    """'api.example.com:8443' -> 'api.example.com'; '[::1]:443' -> '::1'."""
    if authority.startswith("["):
        return authority[1:authority.find("]")]
    return authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority


class UpstreamGroup:
    """The targets of an upstream (or of a service that names a host directly) and its balancer."""

    __slots__ = ("name", "targets", "balancer", "algorithm", "hash_on", "hash_fallback", "keys", "unusable",
                 "breakers", "sweep", "unbroken", "passive", "passive_failures", "panic", "slots", "host_header",
                 "discovered", "hashing", "cookie_path", "direct")

    def __init__(self, name: str, targets: list[TargetRuntime], algorithm: str, balancer: Balancer,
                 hash_on: tuple[str, bytes], hash_fallback: tuple[str, bytes]) -> None:
        self.name = name
        self.targets = targets
        self.algorithm = algorithm
        self.balancer = balancer
        self.hash_on = hash_on  # (kind, header/cookie/query name as bytes)
        self.hash_fallback = hash_fallback
        self.cookie_path = "/"  # the upstream's hash_on_cookie_path: the Path of the cookie hash_on cookie sets
        self.hashing = algorithm in ("consistent-hashing", "ip-hash")  # the balancer needs a key from the request
        self.keys = [f"{name}|{t.name}" for t in targets]  # the targets' names on the bus and the admin channel
        self.unusable: frozenset[int] = frozenset()  # drained by an operator, or circuit open (gateway.state)
        self.breakers = False  # a circuit-breaker plugin covers this upstream: report outcomes
        self.sweep = False  # its sweep_force_shutdown: a circuit that opens closes the target's connections
        # With `breakers`: what the requests the plugin does not run for skip (`unusable` without the targets skipped
        # for their open circuits), kept current with `unusable` (gateway.state); read through _Unbroken.
        self.unbroken: frozenset[int] = frozenset()
        self.passive = False  # passive health checks can trip: report outcomes
        self.passive_failures: frozenset[int] = frozenset()  # ... those that count towards unhealthy: sent at once
        self.panic = False  # all targets unhealthy: send to all of them rather than answer 503 (Envoy's panic)
        self.slots = 10000
        self.host_header: str | None = None  # the upstream's host_header, for targets discovery adds
        self.discovered = False  # its targets come from etcd or Consul at run time
        self.direct = False  # a service's own host (no upstream entity): Kong resolves it in access, not a balancer

    def replace_targets(self, targets: list[TargetRuntime], weights: list[int] | None = None) -> None:
        """Discovery changed the target list: a new balancer over the new list, weighted by `weights` (the admin
        channel's overrides) or else the targets' own, which takes over what the old one learnt of the targets that
        stay (their requests in flight, EWMAs: balancing.base.hand_over), as Kong keeps an address across a DNS
        update (targets.lua update_dns_result). The same list again (a keeper's Snapshot) changes nothing, as Kong
        runs no afterHostUpdate for an answer that changed nothing."""
        if _identities(targets) == _identities(self.targets):
            return
        now = {t.name: index for index, t in enumerate(targets)}
        balancer = make_balancer(self.algorithm, [t.weight for t in targets] if weights is None else weights,
                                 slots=self.slots, addresses=balancer_addresses(targets))
        hand_over(self.balancer, balancer, [now.get(t.name, -1) for t in self.targets])
        self.targets = targets
        self.keys = [f"{self.name}|{t.name}" for t in targets]
        self.balancer = balancer
        self.unusable = frozenset()


def _identities(targets: list[TargetRuntime]) -> list[tuple[str, str, int]]:
    """What makes a target list another one for its balancer: each target's key, configured target and weight."""
    return [(t.name, t.configured, t.weight) for t in targets]


class ServiceRuntime:
    """A service: where requests go and with which timeouts (seconds) and retries."""

    __slots__ = ("name", "path", "group", "connect_timeout", "write_timeout", "read_timeout", "retries", "tls")

    def __init__(self, name: str, path: bytes, group: UpstreamGroup, connect_timeout: float, write_timeout: float,
                 read_timeout: float, retries: int, tls: ClientTls | None = None) -> None:
        self.name = name
        self.path = path
        self.group = group
        self.connect_timeout = connect_timeout
        self.write_timeout = write_timeout
        self.read_timeout = read_timeout
        self.retries = retries
        self.tls = tls  # protocol https: how to speak TLS to the targets (gateway.tls_runtime)

    def upstream_target(self, path: bytes, query: bytes) -> bytes:
        """The request target sent upstream: the path the router joined (service path included) and the query."""
        return path + b"?" + query if query else path


class RouteRuntime:
    """A route as the pipeline uses it."""

    __slots__ = ("name", "service", "preserve_host", "policies", "consumer_policies", "mcp", "affinity", "phases",
                 "chain", "collected", "https_redirect", "facts", "loggers", "audit", "request_buffering",
                 "response_buffering")

    def __init__(self, name: str, service: ServiceRuntime | None, preserve_host: bool, policies: list[Policy],
                 mcp: McpRoute | None = None, consumer_policies: ConsumerChains | None = None,
                 affinity: SessionAffinity | None = None, facts: RouteFacts | None = None) -> None:
        self.name = name
        self.service = service  # None: Kong's route without a service (503 unless a plugin answers)
        self.preserve_host = preserve_host
        # The response phases (header_filter, body_filter) of the chain; None when no plugin of the chain has one
        # (gateway.pipeline.phases). A consumer's are what `collect` makes of the chains.
        self.phases = ResponsePhases.of(policies)
        # The route's whole chain (every phase), and what `collect` made of it and the consumers' chains.
        self.chain = policies
        self.collected: dict[Any, Collected] = {}
        # In priority order, as resolved for a request with no consumer: the policies with an access step here,
        # those with a log step (run after the response; `entries` says how they take it: gateway.telemetry.phase)
        # in `loggers`.
        self.policies = [p for p in policies if hasattr(p, "access")]
        self.loggers = [p for p in policies if is_logger(p)]
        # Consumer id -> the access steps of the chain resolved for that consumer (Kong resolves each plugin when its
        # turn comes, with the consumer authenticated so far), for the consumers whose chain is not the route's own;
        # None when no consumer-scoped plugin can apply to this route.
        self.consumer_policies = consumer_policies
        self.mcp = mcp  # `mcp: true`: header checks, Origin policy, method/tool routing (gateway.mcp.step)
        self.affinity = affinity  # MCP session affinity: every route unless `mcp: false` (gateway.mcp.affinity)
        self.https_redirect: int | None = None  # protocols [https] only: the status a plain HTTP request gets
        self.request_buffering = True  # Kong's default: the whole body is read before an upstream is contacted
        self.response_buffering = True  # Kong's default; false lifts an upstream's X-Accel-Limit-Rate (forward)
        self.facts = facts  # names, ids and entity JSON for logs, metrics and traces (gateway.telemetry.entities)
        # ai-mcp-proxy's audit (logging.log_audits) for a request with no consumer's chain: a line per tools/call
        # when the request ends (gateway.mcp.audit); a consumer's chain has its own (`collect`)
        self.audit = audit_of(policies)

    def collect(self, before: Collected | None, consumer_id: str | None, done: tuple[int, str]) -> Collected:
        """Kong's collected plugins (plugins_iterator.lua get_next_and_collect: each plugin is looked up once, when
        the access loop reaches it, for all its phases) once the loop, just past the policy `done` ((-priority,
        name)), moved to `consumer_id`'s chain (None: the route's own): the instances collected so far (`before`;
        None: the route's own chain) up to `done`, then the new chain's. Made once per path, then kept."""
        key = (before.key if before is not None else None, consumer_id, done)
        found = self.collected.get(key)
        if found is None:
            base = before.chain if before is not None else self.chain
            chains = self.consumer_policies
            new = chains.whole(consumer_id) if chains is not None and consumer_id is not None else self.chain
            chain = [p for p in base if (-p.priority, p.name) <= done] + \
                [p for p in new if (-p.priority, p.name) > done]
            found = Collected(key, chain)
            if len(self.collected) < 1024:  # (consumers with plugins of their own x authentication plugins)
                self.collected[key] = found
        return found


class Collected:
    """The plugins a request collected (`chain`, in priority order): their response phases, log steps and audit."""

    __slots__ = ("key", "chain", "phases", "loggers", "audit")

    def __init__(self, key: Any, chain: list[Policy]) -> None:
        self.key = key
        self.chain = chain
        self.phases = ResponsePhases.of(chain)
        self.loggers = [p for p in chain if is_logger(p)]
        self.audit = audit_of(chain)


def audit_of(chain: list[Policy]) -> Any:
    """The audit of the chain's ai-mcp-proxy (None: it has none, or its logging.log_audits is off): Kong gives a
    request the config of the instance it collected (plugins_iterator.lua get_next_and_collect), so a consumer's own
    instance decides for that consumer's calls."""
    return next((audit for p in chain if (audit := getattr(p, "audit", None)) is not None), None)


class _NoService:
    """The last step of a route without a service (Kong's): 503 "no Service found with those values"."""

    name = "no-service"
    priority = -(2**31)  # after every plugin

    async def access(self, ex: Any) -> bool:
        await ex.respond_error(503, kong_errors.NO_SERVICE)
        return True


NO_SERVICE = _NoService()


class Runtime:
    """Everything one config load produces for the data plane."""

    def __init__(self, config: Config, router: Router[RouteRuntime], services: dict[str, ServiceRuntime],
                 groups: dict[str, UpstreamGroup], mcp: McpShared | None = None,
                 consumers: Directory | None = None) -> None:
        self.config = config
        self.router = router
        self.services = services
        self.groups = groups
        self.mcp = mcp
        self.consumers = consumers
        self.breakers: dict[str, BreakerConfig] = {}  # target key -> its breaker (circuit-breaker plugins)
        self.breaker_upstreams: dict[str, BreakerConfig] = {}  # ... and per upstream, for targets a source reports
        self.stores: dict[str, Any] = {}  # plugin id -> its shared store (rate-limiting policy redis)
        self.server_tls: ServerTls | None = None  # the certificates of listeners with `ssl` (gateway.tls_runtime)
        self.global_phases: ResponsePhases | None = None  # global plugins' response phases: for a 404 (no route)
        self.global_loggers: list[Any] = []  # log steps of global plugins: what logs a request no route matched
        # ai-mcp-oauth2's RFC 9728 metadata paths, for a request that no route matched: routed as their resource's
        # path (gateway.mcp.resource); None when no plugin serves one.
        self.well_known: MetadataPaths | None = None
        # Background tasks of policies (ai-mcp-oauth2's JWKS refresh), run in each worker's nursery.
        self.background: list[Any] = []
        gw = config.gateway
        # The client address from a trusted balancer's header (gateway.trusted_ips); None: the socket peer's.
        self.client_address = ClientAddress(gw.trusted_ips, gw.real_ip_header, gw.real_ip_recursive) \
            if gw.trusted_ips else None

    def all_groups(self) -> list[UpstreamGroup]:
        """Named upstreams and the one-target groups of services that name a host directly."""
        groups = {id(g): g for g in self.groups.values()}
        for svc in self.services.values():
            groups.setdefault(id(svc.group), svc.group)
        return list(groups.values())


def compile_config(config: Config, name: str = "<config>", shared: Any = None) -> Runtime:
    """Build the runtime, or raise ConfigError listing every problem found at this stage.

    `shared` is the worker's view of the bus state (gateway.state.SharedState) for the policies that need it;
    None when only validating (check-config) or in the keeper."""
    errors: list[str] = []
    assign_ids(config)  # (before the plugins: an id of a plugin on an unnamed route or service holds its owner's)
    by_upstream = _targets_by_upstream(config)
    groups = {up.name: _group(up, by_upstream.get(up.name, ()), errors) for up in config.upstreams}
    client_ssl = compile_client_ssl(config, errors)  # kong.conf's client certificate for every https upstream
    services = {svc.name: _service(svc, groups, errors, compile_client_tls(svc, config, errors, client_ssl))
                for svc in config.services}
    server_tls = compile_server_tls(config, errors)
    consumers = Directory(config)
    errors += check_keys(consumers)
    gw = config.gateway
    listens = [gw.listen] if isinstance(gw.listen, str) else gw.listen
    listen_hosts = [hp[0] for hp in (parse_host_port(a.split()[0], None) for a in listens if a.split())
                    if hp is not None]
    mcp = McpShared(gw.mcp, gw.pid_file, errors, listen_hosts)
    plugin_objs = _plugins(config, errors, shared, consumers, mcp)
    index = PluginIndex(plugin_objs)
    # how the instances apply to each route; a route without a service ends with Kong's 503, after every plugin
    scoping = {id(route): index.route(route, (NO_SERVICE,) if route.service is None else ()) for route in config.routes}
    breakers = _breakers(config, services, plugin_objs, scoping, errors)
    services_by_name = {svc.name: svc for svc in config.services}
    specs = []
    v1_routes: list[str] = []
    for route in config.routes:
        svc = services.get(route.service or "")
        if svc is None and route.service is not None:
            continue  # an unknown service: reported by the loader
        if route.service is not None and not services_by_name[route.service].enabled:
            continue  # Kong: the routes of a disabled service are not put in the router (their requests get 404)
        svc = breakers.bypass.get(id(route), svc)  # (the circuit-breaker of its upstream does not run for it)
        rname = route.name or entity_id(route, "routes")  # an unnamed route is known by its id, as in Kong's labels
        mcp_route = None
        if route.mcp or route.mcp_methods or route.mcp_tools:
            mcp_route = McpRoute(mcp, route.mcp_methods, route.mcp_tools)
        affinity = None if route.mcp is False or svc is None else SessionAffinity(mcp, svc.group)
        scoped = scoping[id(route)]
        policies, consumer_policies = scoped.chain, scoped.consumer_chains()
        facts = RouteFacts(route, rname, services_by_name.get(route.service or ""))
        route_runtime = RouteRuntime(rname, svc, route.preserve_host, policies, mcp_route, consumer_policies, affinity,
                                     facts)
        if "http" not in route.protocols:
            route_runtime.https_redirect = route.https_redirect_status_code
        route_runtime.request_buffering = route.request_buffering
        route_runtime.response_buffering = route.response_buffering
        specs.append(RouteSpec(route_runtime, paths=route.paths, methods=route.methods, hosts=route.hosts,
                               snis=route.snis or (), headers=route.headers, query=route.query,
                               regex_priority=route.regex_priority, strip_path=route.strip_path,
                               mcp_methods=route.mcp_methods,
                               mcp_tools=route.mcp_tools, service_path=svc.path.decode() or None if svc else None,
                               hosts_given=not isinstance(route.hosts, NotGiven),
                               route_id=None if is_anonymous(route) else facts.route_id))
        if route.path_handling == "v1":
            v1_routes.append(route.name or path_of(route))
    if v1_routes:  # Kong's deprecation, in its words (kong/db/schema/entities/routes.lua)
        log.warning("%s: path_handling='v1' is deprecated and will not work under 'expressions' or "
                    "'traditional_compatible' router_flavor (Kong's default, and this gateway's router): the upstream "
                    "path is joined as v0; please use path_handling='v0' instead", ", ".join(v1_routes))
    if errors:
        raise ConfigError([f"{name}: {e}" for e in errors])
    runtime = Runtime(config, Router(specs), {k: v for k, v in services.items() if v}, groups, mcp,  # type: ignore[misc]
                      consumers)
    runtime.breakers, runtime.breaker_upstreams = breakers.targets, breakers.upstreams
    runtime.server_tls = server_tls
    runtime.global_phases = ResponsePhases.of(ordered(index.chosen([(0, (None, None, None))])))
    runtime.global_loggers = _global_loggers(plugin_objs)
    for _, _, policy in plugin_objs:
        store = getattr(policy, "store", None)
        if store is not None:
            runtime.stores[store.name] = store
        runtime.background += getattr(policy, "background", ())
    runtime.well_known = _well_known(plugin_objs)
    return runtime


def check_file(path: str) -> Runtime:
    """Load and compile the file at `path` (what check-config does), or raise ConfigError with every problem of
    both stages at once, in file order: a file refused by the loader is still compiled as far as it decoded."""
    try:
        config = load_config(path)
    except ConfigError as e:
        if e.partial is None:
            raise
        messages = list(e.messages)
        try:
            compile_config(e.partial, path)
        except ConfigError as later:
            messages += [m for m in later.messages if m not in messages]
        except Exception:  # noqa: BLE001 - a half-decoded config may trip a later stage: its first errors stand
            log.debug("compiling the decodable part of %s failed", path, exc_info=True)
        raise ConfigError(in_file_order(messages, e.order, f"{path}: "), e.partial, e.order) from None
    return compile_config(config, path)


def _well_known(plugins: list[Built]) -> MetadataPaths | None:
    """The paths policies serve a document at, with their resource's path; several policies may share a path (one
    per host): the routing of each one's resource tells them apart."""
    served = MetadataPaths()
    for _, _, policy in plugins:
        if getattr(policy, "well_known", None):
            served.add(policy)
    return served if served.by_path else None


def _targets_by_upstream(config: Config) -> dict[str | None, list[Target]]:
    """The config's targets by upstream name, in file order: one pass, so that compiling an upstream costs its own
    targets, as Kong selects them by upstream (kong/runloop/balancer/targets.lua:83-86 select_by_upstream_raw)."""
    by_upstream: dict[str | None, list[Target]] = {}
    for t in config.targets:
        by_upstream.setdefault(t.upstream, []).append(t)
    return by_upstream


def _group(up: Upstream, own: Sequence[Target], errors: list[str]) -> UpstreamGroup:
    """The runtime of upstream `up`, whose targets are `own`."""
    where = path_of(up)
    try:
        algorithm = canonical_algorithm(up.algorithm)
    except ValueError as e:
        errors.append(f"{where}.algorithm: {e}")
        algorithm = "round-robin"
    targets = []
    for t in own:
        address = target_address(t.target)
        if address is None:  # (the loader refuses what Kong's normalize_ip does: none should get here)
            errors.append(f"{path_of(t)}.target: {t.target!r} is no address or name Kong's balancer takes")
            continue
        targets.append(TargetRuntime(*address, t.weight, up.host_header))
    balancer = make_balancer(algorithm, [t.weight for t in targets], slots=up.slots,
                             addresses=balancer_addresses(targets))
    group = UpstreamGroup(up.name, targets, algorithm, balancer, _hash_key(up.hash_on, up, "on"),
                          _hash_key(up.hash_fallback, up, "fallback"))
    passive = up.healthchecks.passive
    unhealthy = passive.unhealthy  # (a passive success alone counts too: it clears the probes' failures, as in Kong)
    group.passive = bool(unhealthy.http_failures or unhealthy.tcp_failures or unhealthy.timeouts
                         or passive.healthy.successes)
    group.passive_failures = _passive_failures(up.healthchecks)
    group.panic = up.panic_mode
    group.slots = up.slots
    group.host_header = up.host_header
    group.cookie_path = up.hash_on_cookie_path
    group.discovered = up.discovery is not None and up.discovery.type != "static"
    return group


def _passive_failures(hc: Healthchecks) -> frozenset[int]:
    """The passive results (statuses; -1 a TCP failure, -2 a timeout, as gateway.pipeline.forward codes them) that
    count towards unhealthy by the keeper's own rule (PassivePolicy.classify, a counter above 0)."""
    policy = PassivePolicy.from_config(hc)
    outcomes: dict[int, Outcome] = {-1: TCP_FAILURE, -2: TIMEOUT, 504: 504}  # (504 is a timeout, listed or not)
    outcomes.update((status, status) for status in hc.passive.unhealthy.http_statuses)
    return frozenset(code for code, outcome in outcomes.items()
                     if (event := policy.classify(outcome)) not in (None, Event.SUCCESS)
                     and policy.thresholds.limit(event))


def _hash_key(kind: str, up: Upstream, which: str) -> tuple[str, bytes]:
    names = {"header": getattr(up, f"hash_{which}_header"), "cookie": up.hash_on_cookie,
             "query_arg": getattr(up, f"hash_{which}_query_arg"),
             "uri_capture": getattr(up, f"hash_{which}_uri_capture")}
    name = names.get(kind) or ""
    return kind, name.lower().encode() if kind == "header" else name.encode()


def _service(svc: Service, groups: dict[str, UpstreamGroup], errors: list[str],
             tls: ClientTls | None = None) -> ServiceRuntime:
    if svc.url is not None:  # Kong's url shorthand: 443 for an https URL without a port (services.lua:97-102)
        parts = urlsplit(svc.url)
        port = parts.port if parts.port is not None else 443 if tls is not None else 80  # (0 is a port: Kong's)
        host, path = url_host(parts), parts.path or None
    else:  # services.lua:18,38: `port` defaults to 80 whatever the protocol
        host, port, path = svc.host or "", 80 if svc.port is None else svc.port, svc.path
    group = groups.get(host)
    if group is None:  # a plain host:port: an implicit upstream of one target
        group = UpstreamGroup(f"{svc.name}:{host}:{port}", [TargetRuntime(host, port, 100)], "round-robin",
                              make_balancer("round-robin", [100]), ("none", b""), ("none", b""))
        group.direct = True
    elif not group.targets and not group.discovered:
        log.warning("upstream %r of service %r has no targets: its requests will get 503", host, svc.name)
    name: str = svc.name  # type: ignore[assignment]  # the loader names every service
    return ServiceRuntime(name, (path or "").encode(), group, svc.connect_timeout / 1000,
                          svc.write_timeout / 1000, svc.read_timeout / 1000, svc.retries, tls)


class Breakers(NamedTuple):
    """What the circuit-breaker instances make of a config (_breakers)."""

    targets: dict[str, BreakerConfig]  # one breaker per target of each upstream covered, keyed as on the bus
    upstreams: dict[str, BreakerConfig]  # each such upstream's, for the targets a source reports
    bypass: dict[int, ServiceRuntime]  # id(route) -> its service as seen by requests the plugin does not run for


def _breakers(config: Config, services: dict[str | None, ServiceRuntime], plugins: list[Built],
              scoping: dict[int, RouteScoping], errors: list[str]) -> Breakers:
    """A breaker for each target of every upstream the requests of a circuit-breaker instance go to: the instance
    of each route is Kong's (route, then service, then global), and a route without one is not covered (its
    requests neither skip open circuits nor count in them: `bypass`). The breakers are per target for the whole
    gateway, so the instances covering one upstream must agree (two that do not are an error, in `errors`); a
    probe's permit lasts `probe_ttl` of the longest-running service among those whose requests it covers."""
    instances = [(plugin, cfg) for plugin, cfg, _ in plugins if plugin.name == "circuit-breaker"]
    if not instances:
        return Breakers({}, {}, {})
    enabled = {svc.name for svc in config.services if svc.enabled}
    covering: dict[str, dict[int, tuple[Plugin, Any]]] = {}  # upstream name -> id(instance) -> its requests' ones
    groups: dict[str, UpstreamGroup] = {}
    ttls: dict[str, float] = {}
    uncovered: list[tuple[Route, ServiceRuntime]] = []
    for route in config.routes:
        svc = services.get(route.service or "")
        if svc is None or route.service not in enabled:
            continue  # no upstream (Kong's 503), or not routed at all
        found = scoping[id(route)].chosen.get("circuit-breaker")
        if found is None:
            uncovered.append((route, svc))
            continue
        plugin, cfg, _ = found[1]
        group = groups[svc.group.name] = svc.group
        covering.setdefault(group.name, {}).setdefault(id(plugin), (plugin, cfg))
        ttl = probe_ttl(svc.connect_timeout, svc.write_timeout, svc.read_timeout, svc.retries + 1)
        ttls[group.name] = max(ttls.get(group.name, 0.0), ttl)
    targets: dict[str, BreakerConfig] = {}
    upstreams: dict[str, BreakerConfig] = {}
    for name, by_id in covering.items():
        mine = list(by_id.values())
        group, (first, cfg) = groups[name], mine[0]
        other = next((plugin for plugin, c in mine[1:] if c != cfg), None)
        if other is not None:
            what = f"the host of service {name.split(':', 1)[0]!r}" if group.direct else f"upstream {name!r}"
            errors.append(f"{path_of(first)} and {path_of(other)}: two circuit-breaker instances with different "
                          f"configs run for requests to {what}, but a target has one breaker for the whole gateway, "
                          "which cannot follow both; give them the same config, or keep one of them")
            continue
        group.breakers = True
        group.sweep = cfg.sweep_force_shutdown
        breaker = upstreams[name] = BreakerConfig.from_plugin(cfg, ttls[name])
        for key in group.keys:
            targets[key] = breaker
    bypass: dict[int, ServiceRuntime] = {}
    seen: dict[int, ServiceRuntime] = {}  # id(service) -> its copy for uncovered routes, one per service
    for route, svc in uncovered:
        if svc.group.breakers:
            if (unbroken := seen.get(id(svc))) is None:
                unbroken = seen[id(svc)] = copy.copy(svc)
                unbroken.group = _Unbroken(svc.group)
            bypass[id(route)] = unbroken
    return Breakers(targets, upstreams, bypass)


class _Unbroken(UpstreamGroup):
    """An upstream as the requests the circuit-breaker does not run for see it (a route without an instance on an
    upstream other routes' instance covers): the upstream's own balancer, targets and settings, read through at
    each use (discovery's new lists show at once), but no breaker: it skips no target for its open circuit, and
    its requests are neither counted nor probes. Only routes hold it, never the worker's state (which keeps the
    upstream's `unusable` and `unbroken` current), so no field of its own is ever set but these."""

    __slots__ = ("_base",)

    def __init__(self, base: UpstreamGroup) -> None:  # (not UpstreamGroup's: every other field is the base's)
        self._base = base
        self.breakers = False
        self.sweep = False

    def __getattr__(self, name: str) -> Any:
        """A field this object does not set: the upstream's (only called when the usual lookup fails)."""
        if name == "_base":  # (unset: a copy made without __init__)
            raise AttributeError(name)
        return getattr(self._base, name)

    @property
    def unusable(self) -> frozenset[int]:  # type: ignore[override]
        return self._base.unbroken


# Kong's PROTOCOLS_WITH_SUBSYSTEM: a plugin runs on HTTP requests when one of its protocols is of the http subsystem.
_HTTP_PROTOCOLS = frozenset({"http", "https", "grpc", "grpcs"})
_PROTOCOLS = _HTTP_PROTOCOLS | {"tcp", "tls", "tls_passthrough", "udp"}
# The plugins whose Kong schema takes typedefs.protocols (any protocol, stream ones too); every other plugin's is
# typedefs.protocols_http, whose elements are the http subsystem's only
_ANY_PROTOCOL = frozenset({"datadog", "file-log", "http-log", "ip-restriction", "loggly", "prometheus", "proxy-cache",
                           "request-transformer", "session", "statsd", "syslog", "tcp-log", "udp-log", "zipkin"})

_WS_WHY = (" (ws and wss are Kong Enterprise's WebSocket protocols; a WebSocket upgrade comes through an http or "
           "https route, and plugins for http and https apply to it)")

_LLM = ("it calls LLM providers; the gateway's AI plugins are ai-mcp-proxy, ai-mcp-oauth2, ai-prompt-guard, "
        "ai-prompt-decorator and ai-prompt-template")
NOT_BUILT = {  # Kong's bundled plugins this gateway refuses, and why (any other unknown name: a typo, or custom)
    "oauth2": "it issues and keeps tokens in Kong's database, which this gateway does not have (Kong refuses it "
              "without a database too)",
    "acme": "it obtains certificates from an ACME CA; give the certificate files in `certificates` instead",
    "pre-function": "it runs Lua code, which this gateway cannot run",
    "post-function": "it runs Lua code, which this gateway cannot run",
    "aws-lambda": "it invokes AWS Lambda functions in place of an upstream; not built",
    "azure-functions": "it invokes Azure Functions in place of an upstream; not built",
    "grpc-gateway": "it needs gRPC (HTTP/2) upstreams; this gateway forwards HTTP/1.1",
    "grpc-web": "it needs gRPC (HTTP/2) upstreams; this gateway forwards HTTP/1.1",
    **{name: _LLM for name in ("ai-proxy", "ai-request-transformer", "ai-response-transformer")},
}
_CHECK_MESSAGE = re.compile(r"^(?P<path>\S+): (?P<field>[A-Za-z_][A-Za-z0-9_]*(?:\[\d+\])*): (?P<rest>.*)$", re.DOTALL)


def id_of(plugin: Plugin) -> str:
    """A plugin's id: its own, or one made of its name and scope (the same in every process of a generation): an
    unnamed route or service is named by its id (as compile_config noted it, gateway.telemetry.entities.assign_ids:
    its own, else derived from its definition and place), so that two unnamed routes' plugins keep apart counters,
    and a route a reload moves into a removed one's place does not take over its counters."""
    if plugin.id:
        return plugin.id
    owner = getattr(plugin, "_route", None)
    route = plugin.route if owner is None or owner.name is not None else entity_id(owner, "routes")
    parent = getattr(plugin, "_service", None)  # nested under a service (an unnamed one's label may be its place)
    service = entity_id(parent, "services") if parent is not None and is_anonymous(parent) else plugin.service
    return f"{plugin.name}:{service or ''}:{route or ''}:{plugin.consumer or ''}"


def owner_ids(plugin: Plugin, routes: dict[str, Route], services: dict[str, Service]) -> tuple[str | None, str | None]:
    """The ids of the route and service a plugin is configured on (None: it names none), by name or id in `routes`
    and `services`: Kong's conf.route_id and conf.service_id, the plugin's own, not the request's
    (kong/runloop/plugins_iterator.lua:164-165)."""
    route = getattr(plugin, "_route", None) or routes.get(plugin.route or "")
    service = getattr(plugin, "_service", None) or services.get(plugin.service or "")
    return (entity_id(route, "routes") if route is not None else None,
            entity_id(service, "services") if service is not None else None)


def _plugins(config: Config, errors: list[str], shared: Any, consumers: Directory,
             mcp: McpShared) -> list[Built]:
    """(plugin, its validated config, its policy object or None) for every enabled plugin that runs on HTTP."""
    built: list[Built] = []
    scopes: dict[tuple[str, Any, Any, Any], str] = {}
    routes = {ref: route for route in config.routes for ref in (route.name, route.id) if ref}  # (a plugin names
    services = {ref: svc for svc in config.services for ref in (svc.name, svc.id) if ref}  # either)
    for plugin in config.plugins:
        where = path_of(plugin)
        module: Any = REGISTRY.get(plugin.name)
        if module is None:
            why = NOT_BUILT.get(plugin.name)
            errors.append(f"{where}.name: plugin {plugin.name!r} is not supported" + (f" ({why})" if why else "")
                          + f"; supported: {', '.join(sorted(REGISTRY))}")
            continue
        cfg = _plugin_config(plugin, module, where, errors)
        if cfg is None:
            continue
        if plugin.consumer is not None and not getattr(module, "consumer_scoped", True):
            errors.append(f"{where}.consumer: the {plugin.name} plugin cannot be configured for a consumer (as in "
                          "Kong, it applies to whoever the request is)")
            continue
        allowed = _PROTOCOLS if plugin.name in _ANY_PROTOCOL else _HTTP_PROTOCOLS
        for i, protocol in enumerate(plugin.protocols):
            if protocol not in allowed:
                errors.append(f"{where}.protocols[{i}]: expected one of {', '.join(sorted(allowed))}, "
                              f"got {protocol!r}" + (_WS_WHY if protocol in ("ws", "wss") else ""))
        scope = (plugin.name, _route_key(plugin), plugin.service, plugin.consumer)
        if scope in scopes:
            errors.append(f"{where}: a {plugin.name} plugin is already configured for the same route, service and "
                          f"consumer at {scopes[scope]}")
            continue
        scopes[scope] = where
        if not plugin.enabled or _HTTP_PROTOCOLS.isdisjoint(plugin.protocols):
            continue  # Kong skips it: disabled, or for stream protocols only
        plugin_id = id_of(plugin)
        params = _parameters(module.build)  # what else the plugin needs: the consumers, MCP's, its owners' ids
        extra: dict[str, Any] = {name: value for name, value in (("consumers", consumers), ("mcp", mcp),
                                                                 ("gateway", config.gateway)) if name in params}
        if "owner_ids" in params:
            extra["owner_ids"] = owner_ids(plugin, routes, services)
        try:
            policy = module.build(cfg, plugin_id, shared, **extra)
        except ValueError as e:
            errors.append(f"{where}.{e}")
            continue
        built.append((plugin, cfg, policy))
    return built


def _plugin_config(plugin: Plugin, module: Any, where: str, errors: list[str]) -> Any:
    """The plugin's config decoded with its schema, its shorthands and nulls read as Kong's plugin code reads them;
    a key the gateway does not enforce is refused by name (with why, where the schema's `not_built` knows it)."""
    config, refused = _built_part(plugin.config, module.schema)
    errors.extend(f"{where}.config.{message}" for message in refused)
    known = _config_keys(module.schema)
    unknown = [k for k in config if k not in known]
    for key in unknown:
        errors.append(f"{where}.config.{key_part(key)} is not supported by the gateway's {plugin.name} plugin (it "
                      f"takes: {', '.join(sorted(known))})")
    if unknown or refused:
        return None
    found: list[str] = []  # Kong's shorthands, then its nulls, as its plugin code reads them (gateway.config.decode)
    raw = kong_shorthands(config, module.schema, f"{where}.config", found)
    raw = kong_nulls(raw, module.schema, f"{where}.config", found)
    if found:
        errors.extend(found)
        return None
    try:
        try:
            return msgspec.convert(raw, module.schema)
        except msgspec.ValidationError:
            whole = whole_numbers(raw, module.schema)  # (Kong's integer: any number equal to its floor)
            if whole is raw:
                raise
            return msgspec.convert(whole, module.schema)
    except msgspec.ValidationError as e:
        message = describe_validation_error(e, raw, module.schema, f"{where}.config")
        m = _CHECK_MESSAGE.match(message)
        if m is not None:  # a check's own message that names its field: "path: field[0]: why" -> "path.field[0]: why"
            message = f"{m['path']}.{m['field']}: {m['rest']}"
        errors.append(message)
    except ValueError as e:
        errors.append(f"{where}.config: {e}")
    return None


def _built_part(config: dict[str, Any], schema: Any) -> tuple[dict[str, Any], list[str]]:
    """A plugin's config without Kong's keys for what the gateway does not build, and why each of them that configures
    something is refused (the schema's `not_built`; a schema without one: the config as it is)."""
    trim = getattr(schema, "not_built", None)
    return (config, []) if trim is None else trim(config)


@functools.cache
def _parameters(build: Any) -> frozenset[str]:
    """The names of a plugin's build parameters (worked out once per plugin, not per instance)."""
    return frozenset(inspect.signature(build).parameters)


@functools.cache
def _config_keys(schema: Any) -> frozenset[str]:
    """The keys a plugin's config schema takes (worked out once per plugin, not per instance)."""
    return frozenset(f.encode_name for f in msgspec.structs.fields(schema))


def _is_global(plugin: Plugin) -> bool:
    return getattr(plugin, "_route", None) is None and plugin.route is plugin.service is plugin.consumer is None


def is_logger(policy: Any) -> bool:
    """Has `policy` a log step? Its `entries` (a bool: gateway.policies.base.Policy) says how it takes an entry; a
    plugin's own attribute of that name but another type (a list of rules) does not make it a logger."""
    return type(getattr(policy, "entries", None)) is bool


def _global_loggers(plugins: list[Built]) -> list[Any]:
    """The log steps of global plugins (no route, service or consumer), in priority order: Kong runs them for a
    request no route matched."""
    chosen = [policy for plugin, _, policy in plugins if policy is not None and is_logger(policy)
              and _is_global(plugin)]
    return sorted(chosen, key=lambda p: (-p.priority, p.name))


def _route_key(plugin: Plugin) -> Any:
    """What a plugin's route scope names: the route itself when nested under it (routes may be unnamed)."""
    owner = getattr(plugin, "_route", None)
    return plugin.route if owner is None or owner.name is not None else id(owner)
