"""Kong's ip-restriction: the client address (gateway.http.realip: the socket peer, or the real_ip_header of a
trusted peer) against `deny` first, then `allow`. Refused: `status` (403) with `{"message": message}`, by default
Kong's "IP address not allowed: <address>"."""

from __future__ import annotations

from gateway.http.realip import AddressSet, parse_network
from gateway.http.server import Exchange
from gateway.policies.ip_restriction.schema import IpRestrictionConfig


class IpRestriction:
    name = "ip-restriction"
    priority = 990  # Kong's
    __slots__ = ("deny", "allow", "status", "message")

    def __init__(self, config: IpRestrictionConfig) -> None:
        self.deny = AddressSet(parse_network(e, brackets=True) for e in config.deny) if config.deny else None
        self.allow = AddressSet(parse_network(e, brackets=True) for e in config.allow) if config.allow else None
        self.status = config.status or 403
        self.message = config.message

    async def access(self, ex: Exchange) -> bool:
        ip = ex.client_ip
        if (self.deny is not None and ip in self.deny) or (self.allow is not None and ip not in self.allow):
            await ex.respond_error(self.status, self.message or f"IP address not allowed: {ip}")
            return True
        return False
