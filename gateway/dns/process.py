"""This process's DNS client: each worker resolves its services' host names with it, the discovery process its
upstreams' target names. `serving(settings)` makes one from the gateway's dns_* settings for the life of the
process's nursery (its stale answers are refreshed in the background there); outside it (a test, a tool) a client
with Kong's defaults, reading /etc/resolv.conf and /etc/hosts, refreshes in the foreground. `renew` replaces a
block's resolver by one from a reload's settings (the state keeper's: a worker's reload is a new process)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import trio

from gateway.dns.client import Resolver

if TYPE_CHECKING:
    from gateway.config.schema import GatewaySettings


class _Block:
    """A `serving` block open now: its resolver, which `renew` may replace."""

    __slots__ = ("resolver",)

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver


_serving: list[_Block] = []  # the `serving` blocks open now, the latest last
_default: Resolver | None = None


def resolver() -> Resolver:
    """The resolver of this process: the latest `serving` block's, else one with Kong's defaults."""
    global _default
    if _serving:
        return _serving[-1].resolver
    if _default is None:
        _default = Resolver.from_system()
    return _default


def from_settings(gw: GatewaySettings, nursery: trio.Nursery | None = None) -> Resolver:
    """A resolver set by kong.conf's dns_* keys, as Kong's kong/tools/dns.lua sets its client up."""
    return Resolver.from_system(dns_resolver=list(gw.dns_resolver), hostsfile=gw.dns_hostsfile,
                                order=list(gw.dns_order), valid_ttl=gw.dns_valid_ttl_s, stale_ttl=gw.dns_stale_ttl_s,
                                not_found_ttl=gw.dns_not_found_ttl_s, error_ttl=gw.dns_error_ttl_s,
                                no_sync=gw.dns_no_sync, cache_size=gw.dns_cache_size, nursery=nursery)


@asynccontextmanager
async def serving(gw: GatewaySettings) -> AsyncIterator[Resolver]:
    """Make the resolver of `gw`'s settings this process's for the block (blocks may overlap, as gateways started
    side by side in one test process do: the latest open one serves)."""
    async with trio.open_nursery() as nursery:
        mine = _Block(from_settings(gw, nursery))
        _serving.append(mine)
        try:
            yield mine.resolver
        finally:
            _serving.remove(mine)
            nursery.cancel_scope.cancel()


def renew(current: Resolver, gw: GatewaySettings) -> Resolver:
    """Put a resolver made from `gw` (its cache empty, the hosts file and resolv.conf read again) in the place of
    `current`, a `serving` block's: Kong's reload takes a new DNS client from the reloaded kong.conf
    (kong/init.lua:654-656 `kong.dns`, which conf_loader made). Refreshes `current` has under way end in the block's
    nursery."""
    block = next((block for block in _serving if block.resolver is current), None)
    if block is None:
        raise ValueError("renew: the resolver given is no open `serving` block's (its block has ended)")
    block.resolver = from_settings(gw, current.nursery)
    return block.resolver
