"""Kong's ip-restriction: the client address (gateway.http.realip: the socket peer, or the real_ip_header of a
trusted peer) against `deny` first, then `allow`. Refused: `status` (403) with `{"message": message}`, by default
Kong's "IP address not allowed: <address>".

The address is matched as nginx holds it ($binary_remote_addr, which Kong hands to lua-resty-ipmatcher's match_bin):
an IPv4-mapped IPv6 address (`::ffff:10.1.2.3`) stays IPv6, so only IPv6 entries can match it, never `10.0.0.0/8`
(trusted_ips, as nginx's ngx_cidr_match, folds it to IPv4 instead: gateway.http.realip.AddressSet)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from gateway.http.realip import TRUST_CACHE, Network, parse_network
from gateway.http.server import Exchange
from gateway.memo import Memo
from gateway.policies.ip_restriction.schema import IpRestrictionConfig


class Matcher:
    """IPs and CIDRs matched as lua-resty-ipmatcher's match_bin does (IPv4 entries for an IPv4 address, IPv6 entries
    for any IPv6 one, mapped or not), with a bounded memo of the answers."""

    __slots__ = ("networks", "_memo")

    def __init__(self, networks: Iterable[Network]) -> None:
        self.networks = tuple(networks)
        self._memo: Memo[str, bool] = Memo(TRUST_CACHE)

    def __contains__(self, ip: str) -> bool:
        found = self._memo.get(ip)
        if found is None:
            found = self._memo.keep(ip, self._match(ip))
        return found

    def _match(self, ip: str) -> bool:
        if "%" in ip:  # (a zone id: no address nginx's parser takes)
            return False
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.networks)  # (False across versions)


class IpRestriction:
    name = "ip-restriction"
    priority = 990  # Kong's
    __slots__ = ("deny", "allow", "status", "message")

    def __init__(self, config: IpRestrictionConfig) -> None:
        self.deny = Matcher(parse_network(e, brackets=True) for e in config.deny) if config.deny else None
        self.allow = Matcher(parse_network(e, brackets=True) for e in config.allow) if config.allow else None
        self.status = config.status or 403
        self.message = config.message

    async def access(self, ex: Exchange) -> bool:
        ip = ex.client_ip
        if (self.deny is not None and ip in self.deny) or (self.allow is not None and ip not in self.allow):
            await ex.respond_error(self.status, self.message or f"IP address not allowed: {ip}")
            return True
        return False
