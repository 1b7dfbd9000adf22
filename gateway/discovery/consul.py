"""Consul: an upstream's targets are the healthy instances of a service, followed with blocking queries.

GET /v1/health/service/<service>?passing&index=<X-Consul-Index>&wait=<wait> hangs until the result may have
changed or `wait` passes (Consul adds up to wait/16 of jitter). As Consul's "Blocking Queries" page asks of
clients, the index is reset to 0 when it goes backwards, kept >= 1 once set, and the loop is rate-limited
(a query returning at once - a change, or a misbehaving server - does not turn into a hot loop).

An instance's address is Service.Address, or Node.Address when that is empty; its weight is
Service.Weights.Passing (Weights.Warning for an instance in warning state when `passing_only: false`).

An answer that is not a JSON list, or comes without a usable X-Consul-Index, is refused as a whole (the last
targets stay, as when Consul is lost). An entry that is not a usable instance (not an object, no valid host or
port, a weight that is not an int 0..65535, checks that cannot be read) is left out with a warning naming its
position and ID; the other entries apply.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any, TypeGuard
from urllib.parse import quote, urlencode

import trio

from gateway.config.discovery import DiscoverySettings, consul_duration
from gateway.config.errors import show
from gateway.discovery.backoff import Backoff, LinkState
from gateway.discovery.http import Endpoint, TransportError, excerpt, request
from gateway.discovery.types import OnChange, TargetInfo, normalise, valid_host

log = logging.getLogger("gateway.discovery.consul")

MIN_QUERY_INTERVAL = 0.1  # seconds between the starts of two blocking queries (Consul's advice: rate-limit the loop)
_INDEX = re.compile(r"[0-9]{1,20}")  # a uint64 in ASCII digits (str.isdigit also takes "²", which int() refuses)


class ConsulError(Exception):
    """Consul answered, but with an error status (bad request, ACL denied, ...)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def next_index(old: int, header: str | None) -> int:
    """The index for the next blocking query from the X-Consul-Index just received (Consul's rules)."""
    if header is None or not _INDEX.fullmatch(header.strip()) or int(header) >= 2**64:
        raise TransportError(f"no usable X-Consul-Index header ({excerpt(show(header), 40)}): is this Consul?")
    new = int(header)
    if new < old:  # the index went backwards (e.g. a snapshot restore): start over with a non-blocking query
        return 0
    return max(new, 1)  # an index of 0 would make every query return at once


def _is_int(value: Any, low: int, high: int) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _instance(entry: Any, default_weight: int, passing_only: bool) -> TargetInfo | None:
    """One health entry's target; None when it is not passing (left out quietly); ValueError when unusable."""
    if not isinstance(entry, dict):
        raise ValueError(f"expected an object, got {show(entry)}")
    svc, node, checks = entry.get("Service"), entry.get("Node"), entry.get("Checks")
    if not isinstance(svc, dict):
        raise ValueError(f"Service: expected an object, got {show(svc)}")
    if checks is None:
        checks = []
    if not isinstance(checks, list) or not all(isinstance(c, dict) for c in checks):
        raise ValueError("Checks: expected a list of objects")
    statuses = [c.get("Status") for c in checks]
    if not all(isinstance(st, str) for st in statuses):
        raise ValueError("Checks: a Status that is not a string")
    if "critical" in statuses or "maintenance" in statuses:
        return None  # (?passing already left these out; without it we still never send traffic to them)
    warning = "warning" in statuses
    if passing_only and warning:
        return None
    host = svc.get("Address") or (node.get("Address") if isinstance(node, dict) else None)
    if not isinstance(host, str) or not valid_host(host):
        raise ValueError(f"no usable address (Service.Address {excerpt(show(svc.get('Address')), 80)}, "
                         f"Node.Address {excerpt(show(node.get('Address') if isinstance(node, dict) else node), 80)})")
    port = svc.get("Port")
    if not _is_int(port, 1, 65535):
        raise ValueError(f"Port: expected an int 1..65535, got {excerpt(show(port), 80)}")
    weight = default_weight
    weights = svc.get("Weights")
    if weights is not None:
        w = weights.get("Warning" if warning else "Passing", default_weight) if isinstance(weights, dict) else None
        if not _is_int(w, 0, 65535):
            raise ValueError(f"Weights: expected ints 0..65535, got {excerpt(show(weights), 80)}")
        weight = w
    return TargetInfo(host, port, weight)


def parse_health_entries(entries: Any, default_weight: int, passing_only: bool, *,
                         service: str = "") -> list[TargetInfo]:
    """Targets from a /v1/health/service answer (a list of {Node, Service, Checks}).

    TransportError when `entries` is not a list; an unusable entry is left out with a warning naming it.
    """
    if not isinstance(entries, list):
        raise TransportError(f"expected a JSON list from /v1/health/service, got {type(entries).__name__}")
    out: list[TargetInfo] = []
    for i, entry in enumerate(entries):
        try:
            target = _instance(entry, default_weight, passing_only)
        except ValueError as e:
            svc = entry.get("Service") if isinstance(entry, dict) else None
            sid = svc.get("ID") if isinstance(svc, dict) else None
            name = f" (ID {excerpt(show(sid), 80)})" if sid is not None else ""
            log.warning("consul service %s: ignoring entry %d%s: %s", service or "?", i, name, e)
            continue
        if target is not None:
            out.append(target)
    return normalise(out)


class ConsulClient:
    def __init__(self, endpoints: list[str], timeout: float = 5.0, token: str | None = None) -> None:
        self.endpoints = [Endpoint.parse(e) for e in endpoints]
        self.timeout = timeout
        self.token = token
        self._current = 0

    @property
    def endpoint(self) -> Endpoint:
        return self.endpoints[self._current]

    def rotate(self) -> None:
        self._current = (self._current + 1) % len(self.endpoints)

    def _headers(self) -> list[tuple[str, str]]:
        return [("X-Consul-Token", self.token)] if self.token else []

    async def health_service(self, service: str, *, index: int = 0, wait_s: float = 60.0, passing: bool = True,
                             tag: str | None = None, dc: str | None = None) -> tuple[int, Any]:
        """(X-Consul-Index, decoded body) of one (blocking, when index > 0) health query."""
        params: list[tuple[str, str]] = []
        if dc:
            params.append(("dc", dc))
        if tag:
            params.append(("tag", tag))
        if index > 0:
            params += [("index", str(index)), ("wait", consul_duration(wait_s))]
        query = urlencode(params)
        if passing:
            query = "passing" + ("&" + query if query else "")
        target = f"/v1/health/service/{quote(service, safe='')}" + (f"?{query}" if query else "")
        # Consul may hold the query for wait + wait/16; allow for that before calling the agent lost.
        timeout = self.timeout + (wait_s * 17 / 16 if index > 0 else 0)
        resp = await request(self.endpoint, "GET", target, headers=self._headers(), timeout=timeout)
        if resp.status != 200:
            message = excerpt(resp.body)
            if resp.status >= 500:
                raise TransportError(f"{self.endpoint}: HTTP {resp.status}: {message}")
            raise ConsulError(f"{target}: HTTP {resp.status}: {message}")
        try:
            body = json.loads(resp.body or b"null")
        except (ValueError, RecursionError):
            raise TransportError(f"{self.endpoint}: non-JSON answer to {target}") from None
        return next_index(index, resp.headers.get("x-consul-index")), body

    async def put(self, target: str, payload: Any | None = None) -> int:
        """A PUT to the agent API; returns the status (200 on success). ConsulError for 4xx."""
        body = json.dumps(payload).encode() if payload is not None else b""
        resp = await request(self.endpoint, "PUT", target, body=body, headers=self._headers(), timeout=self.timeout)
        if resp.status >= 500:
            raise TransportError(f"{self.endpoint}: {target}: HTTP {resp.status}")
        if resp.status != 200:
            raise ConsulError(f"{target}: HTTP {resp.status}: {excerpt(resp.body)}", resp.status)
        return resp.status

    async def pass_ttl_check(self, check_id: str) -> bool:
        """PUT /v1/agent/check/pass/<check_id>: True once the agent took it; False when it has no such TTL check
        (404, or the 500 "CheckID ... does not have associated TTL" Consul answers for it). ConsulError for another
        4xx (ACL denied, rate-limited: says nothing about what the agent has), TransportError for another 5xx."""
        target = f"/v1/agent/check/pass/{quote(check_id, safe=':')}"
        resp = await request(self.endpoint, "PUT", target, body=b"", headers=self._headers(), timeout=self.timeout)
        if resp.status == 200:
            return True
        if resp.status == 404 or (resp.status == 500 and b"does not have associated TTL" in resp.body):
            return False
        if resp.status >= 500:
            raise TransportError(f"{self.endpoint}: {target}: HTTP {resp.status}: {excerpt(resp.body)}")
        raise ConsulError(f"{target}: HTTP {resp.status}: {excerpt(resp.body)}", resp.status)

    async def get_json(self, target: str) -> tuple[int, Any]:
        """(200, decoded body) or (404, None): the agent does not know it. ConsulError for another 4xx."""
        resp = await request(self.endpoint, "GET", target, headers=self._headers(), timeout=self.timeout)
        if resp.status >= 500:
            raise TransportError(f"{self.endpoint}: {target}: HTTP {resp.status}")
        if resp.status not in (200, 404):  # (ACL denied, rate-limited: says nothing about what the agent has)
            raise ConsulError(f"{target}: HTTP {resp.status}: {excerpt(resp.body)}", resp.status)
        try:
            return resp.status, json.loads(resp.body) if resp.status == 200 else None
        except (ValueError, RecursionError):
            raise TransportError(f"{self.endpoint}: non-JSON answer to {target}") from None


async def run_consul(upstream: str, settings: DiscoverySettings, on_change: OnChange, *,
                     link: LinkState | None = None,
                     task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Follow the instances of `settings.consul_service(upstream)` and report them on every change, forever.

    task_status.started() after the first attempt, whether Consul answered or not (the gateway starts on its
    config's targets); on Consul loss the last known targets stay and queries resume with backoff.
    """
    service = settings.consul_service(upstream)
    client = ConsulClient(settings.endpoint_list(), settings.registry_timeout_s, settings.token)
    backoff = Backoff(settings.registry_retry_initial_s, settings.registry_retry_max_s)
    link = link or LinkState(f"discovery: upstream {upstream} (consul service {service})", log)
    link.extra.update({"type": "consul", "service": service})
    index = 0
    reported: list[TargetInfo] | None = None
    started = False
    while True:
        began = time.monotonic()
        try:
            index, body = await client.health_service(
                service, index=index, wait_s=settings.consul_wait_s, passing=settings.consul_passing_only,
                tag=settings.tag, dc=settings.datacenter)
            current = parse_health_entries(body, settings.registry_default_weight, settings.consul_passing_only,
                                           service=service)
            link.up(str(client.endpoint), f" ({len(current)} instances of {service})")
            link.extra.update({"targets": len(current), "index": index})
            backoff.reset()
            if current != reported:
                reported = current
                on_change(upstream, list(current))
        except (TransportError, ConsulError) as e:
            kept = f"; keeping {len(reported)} last known targets" if reported is not None else ""
            link.down(str(client.endpoint), str(e), kept)
            client.rotate()
            index = 0  # a different agent (or a restarted one) has its own index
            if not started:
                started = True
                task_status.started()
            await trio.sleep(backoff.next_delay())
            continue
        if not started:
            started = True
            task_status.started()
        elapsed = time.monotonic() - began
        if elapsed < MIN_QUERY_INTERVAL:
            await trio.sleep(MIN_QUERY_INTERVAL - elapsed)
