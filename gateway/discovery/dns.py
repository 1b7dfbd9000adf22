"""Host names among an upstream's configured targets, resolved with this process's DNS client (gateway.dns) into
the targets Kong's balancer makes of them (kong/runloop/balancer/targets.lua, balancers.lua addAddress):

- A (or AAAA) records: each address of `name:port` is a target of its own (its own health checks, passive counts,
  breaker and MCP sessions) with the name's weight, and the name as its Host header and TLS name
  (TargetInfo.hostname). Its identity is (name, address, port): two names at one address are two targets, each
  with its weight, Host header and health (Kong's checker keys targets by ip, port and hostname).
- SRV records: those of the lowest priority, each ONE target with its own weight (0 counts as 1, Kong's
  SRV_0_WEIGHT) and its own port (0: the configured one) at the record's target, as Kong's address whose `ip` is
  the record's target: a name there is looked up for every try (gateway.http.net, Kong's toip), its addresses
  taking turns, so a record's share of the traffic is its weight however many addresses its target has. The Host
  header is the configured name, or, with the upstream's `use_srv_name`, the record's target when it is a name.
- An answer of TTL 0 (the first one, or the second in a row: Kong's guard against a cache counting a TTL down):
  ONE target `name:port` of the name's weight, looked up for every try, asked again after TTL0_RETRY_S (Kong's
  ttl0Interval), as Kong's virtual SRV record (targets.lua update_dns_result).
- Every address keeps the configured target it was made of (TargetInfo.target, `name:port`) and its record type
  (TargetInfo.dns): Kong's balancer keeps a name as ONE entry of balancer.targets whose addresses are its records, and
  consistent hashing (its points per address), the status API and the target health metric know it by that.
- A name without records is a target by its name (with itself as hostname) and weight 0, as Kong's balancer has
  it (queryDns: a failed query is an empty record, so the target has no address and no weight): it takes no
  request, the upstream's other targets take them all, its health is Kong's dns_error, and an upstream none of
  whose names resolved answers Kong's 503 "failure to get a peer from the ring-balancer".

The DNS client keeps a name's last records through a failing server for dns_stale_ttl, and drops them at a name
error, so a flapping nameserver moves no target. Each name is asked again half a second after its records expire
in the client's cache, or half a second after a stale answer, by when its background refresh is done (Kong's
renewal timer: `max(now, expire) + 0.5`), at least a second apart; one without records after REQUERY_S (Kong's
REQUERY_INTERVAL). A look-up takes as long as the DNS client does (its nameservers in turn, `timeout` a try, as
Kong's balancer, which sets no limit of its own); lookup_bound_s is only a net under it.
"""

from __future__ import annotations

import logging
import math
from typing import NamedTuple

import trio

from gateway.discovery.types import OnChange, TargetInfo, normalise, valid_host
from gateway.dns import process as dns
from gateway.dns.client import TYPE_A, TYPE_AAAA, TYPE_LAST, TYPE_SRV, DnsError, Record, Resolver
from gateway.http.net import is_ip

log = logging.getLogger("gateway.discovery")

REQUERY_S = 30.0  # Kong's REQUERY_INTERVAL: a name without records is asked again after this
RENEW_AFTER_S = 0.5  # Kong's renewal: this long after a name's records expire
MIN_RENEW_S = 1.0  # Kong's renewal timer runs once a second
SRV_0_WEIGHT = 1  # an SRV record of weight 0 takes as few requests as can be, not none (Kong's)
TTL0_RETRY_S = 60.0  # Kong's ttl0Interval (balancers.lua TTL_0_RETRY): a TTL-0 name is asked again after this
DNS_SOURCES = {TYPE_A: "A", TYPE_AAAA: "AAAA", TYPE_SRV: "SRV"}  # Kong's get_dns_name_from_record_type
TTL0_SOURCE = "ttl=0, virtual SRV"  # Kong's get_dns_source for a name answered with TTL 0


def has_names(targets: list[TargetInfo]) -> bool:
    """Does a target list name a host that must be resolved?"""
    return any(not is_ip(t.host) for t in targets)


def unresolved(info: TargetInfo) -> bool:
    """Is this the stand-in for a name that did not resolve (resolve_targets: by its name, weight 0)?"""
    return info.weight == 0 and info.hostname == info.host and not info.dns


def target_names(discovered: dict[str, list[TargetInfo]]) -> tuple[dict[str, str], set[str]]:
    """Over the sources' target lists: ("<upstream>|<target key>" -> the configured `name:port` it is an address of,
    the keys of names that did not resolve)."""
    named: dict[str, str] = {}
    missing: set[str] = set()
    for upstream, infos in discovered.items():
        for info in infos:
            if unresolved(info):
                missing.add(f"{upstream}|{info.name}")
            elif info.hostname:
                named[f"{upstream}|{info.name}"] = info.target or f"{info.hostname}:{info.port}"
    return named, missing


def made_by_dns(discovered: dict[str, list[TargetInfo]]) -> dict[str, TargetInfo]:
    """"<upstream>|<target key>" -> the address DNS made of a configured target (its record type and weight)."""
    return {f"{upstream}|{info.name}": info for upstream, infos in discovered.items() for info in infos if info.dns}


async def resolve_targets(targets: list[TargetInfo], use_srv_name: bool = False,
                          ttl0: dict[str, bool] | None = None) -> tuple[list[TargetInfo], float]:
    """(`targets` with each name replaced by the targets its records make, the seconds until a name is due to be
    asked again). The names are looked up at once, each once however many targets name it (two ports of one host
    are two targets, as in Kong), each resolution for at most lookup_bound_s. `ttl0`: name -> whether its last
    answer had TTL 0 (kept across calls by run_dns; a name not in it is asked for the first time)."""
    ttl0 = {} if ttl0 is None else ttl0
    found: dict[str, _Answer] = {}
    async with trio.open_nursery() as nursery:
        for name in dict.fromkeys(t.host for t in targets if not is_ip(t.host)):
            nursery.start_soon(_look_up, name, found, ttl0)
    out: list[TargetInfo] = []
    renew = math.inf
    for t in targets:
        if is_ip(t.host):
            out.append(t)
            continue
        answer = found.get(t.host)
        made, due = ([], REQUERY_S) if answer is None else _targets_of(t, answer, use_srv_name)
        renew = min(renew, due)
        out += made or [TargetInfo(t.host, t.port, 0, t.host)]
    return normalise(out), max(renew, MIN_RENEW_S)


class _Answer(NamedTuple):
    """A name's records, the seconds until it is due to be asked again, and whether its answer makes Kong's virtual
    SRV entry (TTL 0 on the first answer, or on two in a row: Kong's guard against a cache counting a TTL down)."""

    records: list[Record]
    renew: float
    virtual: bool


async def _look_up(name: str, found: dict[str, _Answer], ttl0: dict[str, bool]) -> None:
    """Put a name's answer in `found`; nothing when it has no records."""
    try:
        records, renew = await _resolve(name)
    except DnsError as e:
        # Kong's queryDns words, at its level (WARN), at each requery: the target takes no traffic meanwhile
        log.warning("querying dns for %s failed: %s", name, e.message)
        return
    zero = records[0].ttl == 0
    found[name] = _Answer(records, renew, zero and ttl0.get(name, True))
    ttl0[name] = zero


def lookup_bound_s(resolver: Resolver) -> float:
    """The longest the DNS client may take to resolve a name: Kong's resolve_max_wait (timeout x attempts + 1) for
    each query it makes in turn, one per record type of its order and search-list expansion of the name."""
    types = len(set(resolver.order) - {TYPE_LAST}) or 1
    return (resolver.timeout * resolver.attempts + 1) * types * (1 + len(resolver.search))


async def _resolve(name: str) -> tuple[list[Record], float]:
    """A name's records and the seconds until it is due to be asked again, half a second after they expire in the
    client's cache (half a second from now when they were answered stale: Kong's schedule_dns_renewal)."""
    resolver = dns.resolver()
    bound = lookup_bound_s(resolver)
    with trio.move_on_after(bound):
        records = await resolver.resolve(name)
        now = resolver.clock()
        expiry = resolver.expiry(name)
        if expiry is None:  # not cached (an IP literal)
            expiry = now + min(r.ttl for r in records)
        return records, max(now, expiry) - now + RENEW_AFTER_S
    raise DnsError(name, f"no answer from the resolver within {bound:g}s")


def _targets_of(target: TargetInfo, answer: _Answer, use_srv_name: bool) -> tuple[list[TargetInfo], float]:
    """The targets a configured `name:port`'s answer makes (each knowing that configured target), and when to ask
    again."""
    name = target.host
    records = answer.records
    configured = f"{name}:{target.port}"
    # Kong's update_dns_result: a virtual SRV entry of the target's own weight (an SRV answer's weights too are set
    # aside), its name resolved at each request
    if answer.virtual:
        return [TargetInfo(name, target.port, target.weight, name, configured, TTL0_SOURCE)], TTL0_RETRY_S
    source = DNS_SOURCES.get(records[0].type, "unknown")
    if records[0].type != TYPE_SRV:
        return [TargetInfo(r.address, target.port, target.weight, name, configured, source)
                for r in records], answer.renew
    top = min(r.priority for r in records)
    made = [TargetInfo(r.target, r.port or target.port, r.weight or SRV_0_WEIGHT,
                       r.target if use_srv_name and not is_ip(r.target) else name, configured, source)
            for r in records if r.priority == top and valid_host(r.target)]  # (a target no socket can reach: none)
    return made, answer.renew if made else REQUERY_S


async def run_dns(upstream: str, targets: list[TargetInfo], on_change: OnChange, use_srv_name: bool = False, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Report the upstream's targets with their names resolved, then again whenever they change."""
    last: list[TargetInfo] | None = None
    ttl0: dict[str, bool] = {}
    started = False
    while True:
        current, renew = await resolve_targets(targets, use_srv_name, ttl0)
        if current != last:
            on_change(upstream, current)
            last = current
        if not started:
            task_status.started()
            started = True
        await trio.sleep(renew)
