"""Self-registration: the gateway announces itself in Consul or etcd on start and withdraws on stop.

The guide's Erlang client, `register_service()` / `deregister_service()`, done for the gateway:
- consul: PUT /v1/agent/service/register {ID, Name, Address, Port, Tags, Meta, Weights, Check{HTTP, Interval,
  Timeout}} and PUT /v1/agent/service/deregister/<id>. The registration is re-checked every `refresh_s`
  (GET /v1/agent/service/<id>) and made again if the agent lost it. Without an HTTP check to run (no status
  server, no `check`), the check is a TTL check of check_interval + check_timeout that the gateway passes
  (PUT /v1/agent/check/pass/service:<id>) every third of it: a gateway killed with SIGKILL turns critical, as it
  does with the HTTP check, instead of staying a passing instance with no check. Services belong to the agent
  they were registered with: every agent the gateway registered with (it moves to the next one when one fails) is
  deregistered from on stop.
- etcd: a lease of `ttl_s` seconds, the key `<prefix><id>` = {"target": "host:port", "weight": ...} attached to
  it, kept alive every ttl/3; revoking the lease on stop removes the key, and a gateway that dies without
  deregistering disappears when the lease runs out. Other gateways discover it with `discovery: {type: etcd}`.

`run_registration` is the supervised service: it registers (retrying with backoff while the registry is down),
keeps the registration alive, and deregisters when cancelled.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import trio

from gateway.config.discovery import (
    DEFAULT_CHECK_INTERVAL,
    DEFAULT_CHECK_TIMEOUT,
    DEFAULT_LEASE_TTL_S,
    DEFAULT_REFRESH_S,
    RegistrationSettings,
    consul_duration,
    go_duration,
    parse_duration,
)
from gateway.config.listen import listen_flags
from gateway.config.schema import GatewaySettings
from gateway.discovery.backoff import Backoff, LinkState
from gateway.discovery.consul import ConsulClient, ConsulError
from gateway.discovery.etcd import EtcdClient, EtcdError
from gateway.discovery.http import Endpoint, TransportError
from gateway.discovery.types import parse_host_port

log = logging.getLogger("gateway.discovery.registration")

_LOOPBACK = {4: "127.0.0.1", 6: "::1"}
DEREGISTER_TIMEOUT_S = 5.0


@dataclass
class Registration:
    """RegistrationSettings resolved against the gateway block: what is actually sent."""

    backend: str
    endpoints: list[str]
    service: str
    id: str
    host: str  # "" lets Consul use its node's address
    port: int
    check_url: str | None
    check_interval: str  # (Go durations, as Consul reads them)
    check_timeout: str
    check_ttl_s: float | None  # consul: a TTL check the gateway passes, when there is no HTTP check to run
    deregister_critical_after: str | None
    tags: list[str]
    meta: dict[str, str]
    weight: int
    prefix: str
    ttl_s: int
    refresh_s: float
    token: str | None
    timeout_s: float
    retry_initial_s: float
    retry_max_s: float
    lease: int | None = field(default=None)  # etcd, while registered

    @property
    def key(self) -> str:
        return self.prefix + self.id

    @property
    def target(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def check_id(self) -> str:
        """The service's check in Consul (the ID Consul gives a service's only check, set explicitly)."""
        return f"service:{self.id}"

    @property
    def refresh_interval(self) -> float:
        """Seconds between two checks of the registration: etcd renews the lease every third of it; consul reads
        the agent's service every refresh_s, or passes its TTL check every third of the TTL if that is sooner."""
        if self.backend == "etcd":
            return max(self.ttl_s / 3, 0.5)
        return min(self.refresh_s, self.check_ttl_s / 3) if self.check_ttl_s else self.refresh_s

    def consul_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"ID": self.id, "Name": self.service, "Tags": list(self.tags),
                                   "Address": self.host, "Port": self.port, "Meta": dict(self.meta),
                                   "Weights": {"Passing": self.weight, "Warning": 1}}
        check: dict[str, Any] = {}
        if self.check_url:
            check = {"HTTP": self.check_url, "Interval": self.check_interval, "Timeout": self.check_timeout}
        elif self.check_ttl_s:
            # registered once the workers accept: passing from the start, critical once no longer passed
            check = {"CheckID": self.check_id, "TTL": consul_duration(self.check_ttl_s), "Status": "passing",
                     "Notes": "passed by the gateway every third of its TTL (it has no status server to check)"}
        if check and self.deregister_critical_after:
            check["DeregisterCriticalServiceAfter"] = self.deregister_critical_after
        if check:
            payload["Check"] = check
        return payload

    def etcd_value(self) -> bytes:
        doc: dict[str, Any] = {"target": self.target, "weight": self.weight, "id": self.id, "service": self.service}
        if self.tags:
            doc["tags"] = list(self.tags)
        if self.meta:
            doc["meta"] = dict(self.meta)
        if self.check_url:
            doc["check"] = self.check_url
        return json.dumps(doc).encode()


def _first_listen(gateway: GatewaySettings) -> str:
    """The address of the first listen entry, without its flags (`0.0.0.0:8000 proxy_protocol`)."""
    return listen_flags(gateway.listen if isinstance(gateway.listen, str) else gateway.listen[0])[0]


def _family(host: str) -> int | None:
    """4 or 6 for an IP address, None for a name."""
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return None


def _wildcard_family(host: str) -> int | None:
    """The family whose every address a listener on `host` takes (`0.0.0.0`, `*` and no host: IPv4; `::`: IPv6
    only, as nginx's ipv6only=on and gateway.http.net bind it), None for one address or a name."""
    if host in ("", "*"):
        return 4
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return ip.version if ip.is_unspecified else None


def _check_host(status_host: str, host: str) -> str:
    """Where Consul's agent reaches the status server: its own address; for a wildcard, the registered host when it
    can be reached there (a name, or an address of the wildcard's family), else the family's loopback address (a
    `[::]` listener never answers 127.0.0.1)."""
    family = _wildcard_family(status_host)
    if family is None:
        return status_host
    return host if host and _family(host) in (family, None) else _LOOPBACK[family]


def ipv6_only_warning(settings: RegistrationSettings, gateway: GatewaySettings, reg: Registration) -> str | None:
    """What to tell the operator when the registration names no address of an IPv6-only first listener (`[::]:PORT`
    without `advertise`): Consul then gives the service its agent's node address, etcd's value the host name, and
    either may be an IPv4 address the listener never answers."""
    if settings.advertise is not None:
        return None
    listen = _first_listen(gateway)
    hp = parse_host_port(listen)
    if hp is None or _wildcard_family(hp[0]) != 6:
        return None
    named = "its Consul agent's node address" if reg.backend == "consul" else f"the host name {reg.host!r}"
    return (f"registration: the first gateway.listen address, {listen}, takes IPv6 connections only, and the "
            f"registration names {named} for it: others reach the gateway only if that is (or resolves to) an IPv6 "
            "address; set gateway.registration.advertise to the address they should use")


def resolve_registration(settings: RegistrationSettings, gateway: GatewaySettings) -> Registration:
    """Fill in the defaults: advertise = first listen address, check = the status server's /status/ready (consul
    without one: a TTL check of check_interval + check_timeout), id, and the unset fields' defaults."""
    hp = parse_host_port(settings.advertise or _first_listen(gateway))
    if hp is None:  # the loader validated gateway.listen; a bare port is the only other shape
        raise ValueError(f"cannot tell the address to register from {settings.advertise or gateway.listen!r}")
    host, port = hp
    if _wildcard_family(host) is not None:
        host = "" if settings.backend == "consul" else socket.gethostname()
    check_url = settings.check
    if check_url is None and gateway.status_listen:
        shp = parse_host_port(listen_flags(gateway.status_listen)[0])  # without `reuseport`, `backlog=N`, ...
        if shp is not None:
            chost = _check_host(shp[0], host)
            shown = f"[{chost}]" if ":" in chost else chost
            # readiness (workers up, config loaded, not draining), not /health: that is degraded by one dead backend
            # target, which every gateway sees at once, and would take the whole fleet out of the registry
            check_url = f"http://{shown}:{shp[1]}/status/ready"
    interval = go_duration(settings.check_interval or DEFAULT_CHECK_INTERVAL)
    timeout = go_duration(settings.check_timeout or DEFAULT_CHECK_TIMEOUT)
    check_ttl_s = None
    if settings.backend == "consul" and settings.check is None and not check_url:
        check_ttl_s = parse_duration(interval) + parse_duration(timeout)  # as long as an HTTP check could take
    critical_after = settings.deregister_critical_after
    return Registration(
        backend=settings.backend, endpoints=settings.address_list(), service=settings.service,
        id=settings.id or f"{settings.service}-{socket.gethostname()}-{port}", host=host, port=port,
        check_url=check_url or None, check_interval=interval, check_timeout=timeout, check_ttl_s=check_ttl_s,
        deregister_critical_after=go_duration(critical_after) if critical_after else None, tags=list(settings.tags),
        meta=dict(settings.meta), weight=settings.weight, prefix=settings.etcd_prefix(),
        ttl_s=settings.ttl_s if settings.ttl_s is not None else DEFAULT_LEASE_TTL_S,
        refresh_s=settings.refresh_s if settings.refresh_s is not None else DEFAULT_REFRESH_S, token=settings.token,
        timeout_s=settings.timeout_s, retry_initial_s=settings.retry_initial_s, retry_max_s=settings.retry_max_s)


def _consul(reg: Registration, endpoints: list[str] | None = None) -> ConsulClient:
    return ConsulClient(endpoints or reg.endpoints, reg.timeout_s, reg.token)


def _etcd(reg: Registration) -> EtcdClient:
    return EtcdClient(reg.endpoints, reg.timeout_s)


async def register_service(reg: Registration, *, client: ConsulClient | EtcdClient | None = None) -> None:
    """Register once (TransportError / ConsulError / EtcdError on failure). etcd: sets `reg.lease`."""
    if reg.backend == "consul":
        consul = client or _consul(reg)
        assert isinstance(consul, ConsulClient)
        await consul.put("/v1/agent/service/register", reg.consul_payload())
        return
    etcd = client or _etcd(reg)
    assert isinstance(etcd, EtcdClient)
    if reg.lease is not None:  # registering again (the key vanished): drop the old lease first
        try:
            await etcd.lease_revoke(reg.lease)
        except EtcdError:
            pass  # already expired
        reg.lease = None
    lease = await etcd.lease_grant(reg.ttl_s)
    try:
        await etcd.put(reg.key, reg.etcd_value(), lease)
    except BaseException:
        with trio.CancelScope(shield=True), trio.move_on_after(reg.timeout_s):
            try:
                await etcd.lease_revoke(lease)
            except (TransportError, EtcdError):
                pass
        raise
    reg.lease = lease


async def deregister_service(reg: Registration, *, client: ConsulClient | EtcdClient | None = None) -> None:
    """Remove the registration (consul: deregister; etcd: revoke the lease, which deletes the key)."""
    if reg.backend == "consul":
        consul = client or _consul(reg)
        assert isinstance(consul, ConsulClient)
        try:
            await consul.put(f"/v1/agent/service/deregister/{quote(reg.id, safe='')}")
        except ConsulError as e:
            if e.status != 404:  # 404: the agent does not have it (any more); nothing to remove
                raise
        return
    etcd = client or _etcd(reg)
    assert isinstance(etcd, EtcdClient)
    if reg.lease is not None:
        try:
            await etcd.lease_revoke(reg.lease)
        except EtcdError as e:
            if e.status != 404:  # 404: etcd's "lease not found": it expired, and the key went with it
                raise
        reg.lease = None
    else:
        await etcd.delete(reg.key)


async def _still_registered(reg: Registration, client: ConsulClient | EtcdClient) -> bool:
    """consul: the agent still has our service; etcd: the lease is alive (renewed) and the key still there.

    False only when the registry said so (a 404; a lease without TTL, no key; an agent refusing to pass our TTL
    check); an answer that is neither a yes nor a no raises, and is retried with backoff like a lost registry.
    """
    if isinstance(client, ConsulClient) and reg.check_ttl_s:
        return await client.pass_ttl_check(reg.check_id)  # (the pass is the check that it still holds it)
    if isinstance(client, ConsulClient):
        target = f"/v1/agent/service/{quote(reg.id, safe='')}"
        status, body = await client.get_json(target)
        if status == 200 and not (isinstance(body, dict) and body.get("ID") == reg.id):
            raise TransportError(f"{client.endpoint}: {target}: malformed answer: not the service {reg.id}")
        return status == 200
    assert reg.lease is not None
    if await client.lease_keepalive(reg.lease) <= 0:
        return False
    return await client.get(reg.key) is not None


async def _withdraw(reg: Registration, client: ConsulClient | EtcdClient, held: set[Endpoint | None]) -> None:
    """Deregister from every holder (each Consul agent registered with; etcd's cluster), concurrently, each within
    min(timeout_s, DEREGISTER_TIMEOUT_S); a failure is logged, not raised: the gateway is stopping."""
    limit = min(reg.timeout_s, DEREGISTER_TIMEOUT_S)

    async def one(where: Endpoint | None) -> None:
        at = f" at {where}" if len(held) > 1 else ""
        with trio.move_on_after(limit) as scope:
            try:
                await deregister_service(reg, client=client if where is None else _consul(reg, [str(where)]))
                log.info("registration: deregistered %s from %s%s", reg.id, reg.backend, at)
            except (TransportError, ConsulError, EtcdError) as e:
                log.error("registration: could not deregister %s%s: %s", reg.id, at, e)
        if scope.cancelled_caught:
            log.error("registration: could not deregister %s%s: no answer within %gs", reg.id, at, limit)

    with trio.CancelScope(shield=True):
        async with trio.open_nursery() as nursery:
            for where in held:
                nursery.start_soon(one, where)


async def run_registration(settings: RegistrationSettings, gateway: GatewaySettings, *,
                           task_status: trio.TaskStatus[LinkState] = trio.TASK_STATUS_IGNORED) -> None:
    """Register, keep registered, deregister on cancellation. started(link state) after the first attempt."""
    reg = resolve_registration(settings, gateway)
    warning = ipv6_only_warning(settings, gateway, reg)
    if warning:
        log.warning("%s", warning)
    client: ConsulClient | EtcdClient = _consul(reg) if reg.backend == "consul" else _etcd(reg)
    link = LinkState(f"registration: {reg.service} id {reg.id} in {reg.backend}", log)
    link.extra.update({"backend": reg.backend, "id": reg.id, "service": reg.service, "registered": False})
    backoff = Backoff(reg.retry_initial_s, reg.retry_max_s)
    registered = False
    # Where the registration is, or may be (sent, not answered): each Consul agent holds its own; None stands for
    # etcd's cluster, whichever member was asked.
    held: set[Endpoint | None] = set()
    started = False
    try:
        while True:
            try:
                if registered and not await _still_registered(reg, client):
                    log.warning("registration: %s is no longer registered in %s; registering again", reg.id,
                                reg.backend)
                    registered = False
                if not registered:
                    holder = client.endpoint if isinstance(client, ConsulClient) else None
                    new_holder = holder not in held
                    held.add(holder)  # from the moment it is sent: a stop before the answer must still deregister
                    try:
                        await register_service(reg, client=client)
                    except (ConsulError, EtcdError):
                        if new_holder:
                            held.discard(holder)  # the registry answered no: it does not hold it
                        raise
                    registered = True
                    link.extra["registered"] = True
                    log.info("registration: registered %s (%s) in %s at %s", reg.id, reg.target, reg.backend,
                             client.endpoint)
                link.up(str(client.endpoint))
                backoff.reset()
                delay = reg.refresh_interval
            except (TransportError, ConsulError, EtcdError) as e:
                link.down(str(client.endpoint), str(e))
                client.rotate()
                delay = backoff.next_delay()
            if not started:
                started = True
                task_status.started(link)
            await trio.sleep(delay)
    finally:
        if held:
            await _withdraw(reg, client, held)
