"""Host names among an upstream's configured targets, resolved into one target per address, as Kong's balancer
resolves them: each address of `name:port` is a target of its own (its own health checks, passive counts, breaker and
MCP sessions) with the name's weight, and the name as its Host header and TLS name (TargetInfo.hostname). IPv4
addresses when a name has any, as Kong asks for A records before AAAA.

Names are resolved again every `ttl` seconds (kong.conf's dns_valid_ttl: getaddrinfo gives no record TTL). A name
whose resolver fails (a server failure, no answer in time) or answers no address keeps its last addresses for
STALE_TTL_S (Kong's dns_stale_ttl default), as Kong's DNS client keeps a stale record through those
(kong/resty/dns/client.lua cacheinsert); a name that no longer exists (NXDOMAIN: EAI_NONAME) loses them at once, as
a name error replaces the record there. One without addresses (never resolved, gone, or whose last addresses are
older) is a target by its name (with itself as hostname), whose health is Kong's dns_error. run_dns reports such a
name with weight 0, as Kong's balancer has it (kong/runloop/balancer/targets.lua queryDns: a failed query is an
empty record, so the target has no address and no weight): it takes no request, the upstream's other targets take
them all, and an upstream none of whose names resolved answers Kong's 503 "failure to get a peer from the
ring-balancer".
"""

from __future__ import annotations

import logging
import socket

import trio

from gateway.discovery.types import OnChange, TargetInfo, normalise
from gateway.http.net import NameNotResolved, addresses_of, is_ip

log = logging.getLogger("gateway.discovery")

RESOLVE_TIMEOUT_S = 2.0  # a name the resolver does not answer for in time keeps its last addresses (or none)
STALE_TTL_S = 3600.0  # ... for this long after they were last resolved (Kong's dns_stale_ttl default)


def has_names(targets: list[TargetInfo]) -> bool:
    """Does a target list name a host that must be resolved?"""
    return any(not is_ip(t.host) for t in targets)


def target_names(discovered: dict[str, list[TargetInfo]]) -> tuple[dict[str, str], set[str]]:
    """Over the sources' target lists: ("<upstream>|<ip:port>" -> the `name:port` it is an address of, the keys of
    names that did not resolve)."""
    named: dict[str, str] = {}
    unresolved: set[str] = set()
    for upstream, infos in discovered.items():
        for info in infos:
            if info.hostname == info.host:
                unresolved.add(f"{upstream}|{info.name}")
            elif info.hostname:
                named[f"{upstream}|{info.name}"] = f"{info.hostname}:{info.port}"
    return named, unresolved


async def resolve_targets(targets: list[TargetInfo], known: dict[str, tuple[list[str], float]]) -> list[TargetInfo]:
    """`targets` with each name replaced by its addresses (the names looked up at once, each for at most
    RESOLVE_TIMEOUT_S). `known`: each name's last addresses and when they were resolved, used while it does not
    resolve, for at most STALE_TTL_S."""
    found: dict[str, list[str] | None] = {}
    async with trio.open_nursery() as nursery:
        for name, port in {t.host: t.port for t in targets if not is_ip(t.host)}.items():
            nursery.start_soon(_look_up, name, port, found)
    now = trio.current_time()
    for name, addresses in found.items():
        if addresses is None:
            known.pop(name, None)
        else:
            known[name] = (addresses, now)
    out: list[TargetInfo] = []
    for t in targets:
        last = known.get(t.host)
        if is_ip(t.host):
            out.append(t)
        elif last is not None and now - last[1] <= STALE_TTL_S:
            out += [TargetInfo(address, t.port, t.weight, t.host) for address in last[0]]
        else:  # (its own hostname: a name that did not resolve, not a registry's name)
            out.append(TargetInfo(t.host, t.port, t.weight, t.host))
    return normalise(out)


async def _look_up(name: str, port: int, found: dict[str, list[str] | None]) -> None:
    """Put a name's addresses in `found`, or None when it no longer exists (NXDOMAIN: its last ones are forgotten);
    nothing when the resolver failed otherwise, or gave no address (they are kept)."""
    with trio.move_on_after(RESOLVE_TIMEOUT_S):
        try:
            found[name] = [address for _, address in await addresses_of(name, port)]
        except NameNotResolved as e:
            log.debug("%s", e)
            if e.gai == socket.EAI_NONAME:
                found[name] = None
        return
    log.debug("%s: no answer from the resolver within %gs", name, RESOLVE_TIMEOUT_S)


async def run_dns(upstream: str, targets: list[TargetInfo], on_change: OnChange, ttl: float, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Report the upstream's targets with their names resolved, then again whenever the addresses change."""
    known: dict[str, tuple[list[str], float]] = {}
    last: list[TargetInfo] | None = None
    started = False
    while True:
        current = [TargetInfo(t.host, t.port, 0, t.host) if t.hostname == t.host else t
                   for t in await resolve_targets(targets, known)]  # (a name without an address: no weight)
        if current != last:
            on_change(upstream, current)
            last = current
        if not started:
            task_status.started()
            started = True
        await trio.sleep(ttl)
