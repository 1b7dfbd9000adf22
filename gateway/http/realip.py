"""The client's address, as kong.conf's trusted_ips / real_ip_header / real_ip_recursive set nginx's realip module.

A request whose socket peer is in `trusted_ips` takes its address from `real_ip_header`: the last address in it; with
`real_ip_recursive`, walking leftwards past addresses that are themselves trusted. X-Forwarded-For may come in
several header lines (read last to first, as one list); any other header name is read from its first line. A value
that is not an address (optionally with a port) ends the walk, keeping what was found so far. A peer that is not
trusted changes nothing: its headers cannot move the address that ip-restriction, rate limiting by ip, the
X-Forwarded-For / X-Real-IP sent upstream and the logs see. This is nginx's ngx_http_get_forwarded_addr, step for step.

Sans-I/O: `ClientAddress.resolve(peer, headers)` -> (client address, whether the peer is trusted).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from gateway.http.codec import Headers
from gateway.memo import Memo

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

TRUST_CACHE = 4096  # peers whose trust is remembered (a balancer's few addresses in practice)
_DECLINED, _DONE, _OK = 0, 1, 2  # nginx's NGX_DECLINED, NGX_DONE, NGX_OK
_SEPARATORS = b" ,"


def parse_network(text: str) -> Network:
    """An IP or CIDR as Kong's ip_or_cidr accepts it (host bits may be set: "127.0.0.1/8"); ValueError otherwise."""
    return ipaddress.ip_network(text, strict=False)


def normalized(addr: Address) -> Address:
    """An IPv4-mapped IPv6 address (a dual-stack socket's view of an IPv4 client) as the IPv4 address it is."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def parse_address(text: str) -> Address | None:
    """An IP address as nginx's ngx_parse_addr reads one (no zone ids), normalised; None if it is not one."""
    if "%" in text:
        return None
    try:
        return normalized(ipaddress.ip_address(text))
    except ValueError:
        return None


class AddressSet:
    """IPs and CIDRs, with a bounded memo of the answers (membership is asked once per request)."""

    __slots__ = ("networks", "_memo")

    def __init__(self, networks: Iterable[Network]) -> None:
        self.networks = tuple(networks)
        self._memo: Memo[str, bool] = Memo(TRUST_CACHE)

    def __contains__(self, ip: str) -> bool:
        memo = self._memo
        found = memo.get(ip)
        if found is None:
            addr = parse_address(ip)
            found = memo.keep(ip, addr is not None and any(addr in net for net in self.networks))
        return found

    def contains_address(self, addr: Address) -> bool:
        return any(addr in net for net in self.networks)


class ClientAddress:
    """The realip settings of one config load."""

    __slots__ = ("trusted", "header", "forwarded_for", "recursive")

    def __init__(self, trusted_ips: Iterable[str], header: str, recursive: bool) -> None:
        self.trusted = AddressSet(parse_network(t) for t in trusted_ips)
        self.header = header.lower().encode()
        self.forwarded_for = self.header == b"x-forwarded-for"
        self.recursive = recursive

    def resolve(self, peer: str, headers: Headers) -> tuple[str, bool]:
        """(the client's address, whether the socket peer is trusted)."""
        if peer not in self.trusted:
            return peer, False
        name = self.header
        if self.forwarded_for:
            values = [v for n, v in headers if n == name]
        else:
            values = next(([v] for n, v in headers if n == name), [])
        if not values:
            return peer, True
        addr = parse_address(peer)
        if addr is None:
            return peer, True
        rc, addr = self._walk(addr, values)
        return (str(addr) if rc != _DECLINED else peer), True

    def _walk(self, addr: Address, values: list[bytes]) -> tuple[int, Address]:
        """ngx_http_get_forwarded_addr: header lines from the last to the first."""
        if not self.forwarded_for:
            return self._walk_value(addr, values[0])
        rc, found = _DECLINED, False
        for value in reversed(values):
            rc, addr = self._walk_value(addr, value)
            if not self.recursive:
                break
            if rc == _DECLINED and found:
                rc = _DONE
                break
            if rc != _OK:
                break
            found = True
        return rc, addr

    def _walk_value(self, addr: Address, value: bytes) -> tuple[int, Address]:
        """ngx_http_get_forwarded_addr_internal: one header line's list, right to left."""
        found = False
        end = len(value)
        while True:
            if not self.trusted.contains_address(addr):
                return (_DONE if found else _DECLINED), addr
            p = end - 1
            while p > 0 and value[p] in _SEPARATORS:  # trailing separators
                p -= 1
                end -= 1
            while p > 0:  # back to the start of the last element
                if value[p] in _SEPARATORS:
                    p += 1
                    break
                p -= 1
            parsed = _parse_addr_port(value[max(p, 0):end]) if end > 0 else None
            if parsed is None:
                return (_DONE if found else _DECLINED), addr
            addr = parsed
            found = True
            end = p - 1
            if not (self.recursive and p > 0):
                return _OK, addr


def _parse_addr_port(text: bytes) -> Address | None:
    """ngx_parse_addr_port: "ip", "ip:port", "[ipv6]" or "[ipv6]:port"."""
    try:
        plain = text.decode("ascii")
    except UnicodeDecodeError:
        return None
    addr = parse_address(plain)
    if addr is not None:
        return addr
    if plain.startswith("["):
        close = plain.find("]")
        if close == len(plain) - 1:
            return parse_address(plain[1:-1])
        if close < 0 or plain[close + 1:close + 2] != ":":
            return None
        host, port = plain[1:close], plain[close + 2:]
    else:
        colon = plain.find(":")
        if colon < 0:
            return None
        host, port = plain[:colon], plain[colon + 1:]
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        return None
    return parse_address(host)
