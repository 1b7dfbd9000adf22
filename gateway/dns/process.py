"""This process's DNS client: each worker resolves its services' host names with it, the discovery process its
upstreams' target names. `serving(settings)` makes one from the gateway's dns_* settings for the life of the
process's nursery (its stale answers are refreshed in the background there); outside it (a test, a tool) a client
with Kong's defaults, reading /etc/resolv.conf and /etc/hosts, refreshes in the foreground."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import trio

from gateway.dns.client import Resolver

if TYPE_CHECKING:
    from gateway.config.schema import GatewaySettings

_serving: list[Resolver] = []  # the resolvers of `serving` blocks open now, the latest last
_default: Resolver | None = None


def resolver() -> Resolver:
    """The resolver of this process: the latest `serving` block's, else one with Kong's defaults."""
    global _default
    if _serving:
        return _serving[-1]
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
        mine = from_settings(gw, nursery)
        _serving.append(mine)
        try:
            yield mine
        finally:
            _serving.remove(mine)
            nursery.cancel_scope.cancel()
