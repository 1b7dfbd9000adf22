"""Kong's ip-restriction: the client address (gateway.http.realip: the socket peer, or the real_ip_header of a
trusted peer) against `deny` first, then `allow`. Refused: `status` (403) with `{"message": message}`, by default
Kong's "IP address not allowed: <address>"."""

from __future__ import annotations

import json

from gateway.http.realip import AddressSet, parse_network
from gateway.http.server import Exchange
from gateway.policies.consumers import JSON_UTF8
from gateway.policies.ip_restriction.schema import IpRestrictionConfig


class IpRestriction:
    name = "ip-restriction"
    priority = 990  # Kong's
    __slots__ = ("deny", "allow", "status", "body")

    def __init__(self, config: IpRestrictionConfig) -> None:
        self.deny = AddressSet(parse_network(e) for e in config.deny) if config.deny else None
        self.allow = AddressSet(parse_network(e) for e in config.allow) if config.allow else None
        self.status = config.status or 403
        self.body = json.dumps({"message": config.message}).encode() if config.message is not None else None

    async def access(self, ex: Exchange) -> bool:
        ip = ex.client_ip
        if (self.deny is not None and ip in self.deny) or (self.allow is not None and ip not in self.allow):
            body = self.body or json.dumps({"message": f"IP address not allowed: {ip}"}).encode()
            await ex.respond(self.status, body, JSON_UTF8)
            return True
        return False
