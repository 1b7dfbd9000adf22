"""The client's address, as kong.conf's trusted_ips / real_ip_header / real_ip_recursive set nginx's realip module.

A request whose socket peer is in `trusted_ips` takes its address from `real_ip_header`: the last address in it; with
`real_ip_recursive`, walking leftwards past addresses that are themselves trusted. X-Forwarded-For may come in
several header lines (read last to first, as one list) when `real_ip_header` is spelled `X-Forwarded-For` exactly
(nginx's realip compares the name case-sensitively: `x-forwarded-for` is a header like any other); any other header
name is read from its first line. A value that is not an address (optionally with a port) ends the walk, keeping what
was found so far. A peer that is not trusted changes nothing: its headers cannot move the address that
ip-restriction, rate limiting by ip, the X-Forwarded-For / X-Real-IP sent upstream and the logs see. This is nginx's
ngx_http_get_forwarded_addr, step for step, with its address parser (ngx_parse_addr_port: ngx_inet_addr,
ngx_inet6_addr) and the address written back as nginx writes $remote_addr (ngx_sock_ntop: an IPv4-mapped address as
`::ffff:1.2.3.4`).

With `real_ip_header: proxy_protocol` (nginx's NGX_HTTP_REALIP_PROXY) no header is read: a trusted peer's client is
the source address and port of the PROXY protocol header its connection began with (`proxied_client`, once per
connection), on a listener with the `proxy_protocol` flag; elsewhere, or for a header without an address, the peer.

Sans-I/O: `ClientAddress.resolve(peer, headers, proxied)` -> (client address, whether the peer is trusted);
`ClientAddress.forwarded_port(peer, port, headers, proxied)` -> the client port (Kong's
kong.client.get_forwarded_port).
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
_HEX = {c: int(chr(c), 16) for c in b"0123456789abcdefABCDEF"}
# the prefix lengths Kong's ip.lua takes, as written: its tables keyed tostring(0..32) and tostring(0..128)
_PREFIXES = {4: frozenset(map(str, range(33))), 6: frozenset(map(str, range(129)))}


def parse_network(text: str, brackets: bool = False) -> Network:
    """An IP or CIDR as Kong's ip_or_cidr accepts it (kong/tools/ip.lua), for ip-restriction and trusted_ips alike: an
    address as inet_pton reads it (no IPv6 zone), a prefix length written "0".."32" ("0".."128" for IPv6), never a
    netmask or a zero-padded number; host bits may be set ("127.0.0.1/8" is 127.0.0.0/8, as lua-resty-ipmatcher and
    nginx's set_real_ip_from take it). With `brackets`, an IPv6 address may be in brackets, as lua-resty-ipmatcher's
    parse_ipv6 takes it (ip-restriction; nginx's set_real_ip_from does not). ValueError otherwise."""
    address, slash, prefix = text.partition("/")
    if brackets and address[:1] == "[" and address[-1:] == "]" and ":" in address:
        address = address[1:-1]
    if "%" in address:
        raise ValueError(f"{text!r}: an IPv6 zone is not part of an address")
    addr = ipaddress.ip_address(address)
    if not slash:
        return ipaddress.ip_network(addr)
    if prefix not in _PREFIXES[addr.version]:
        raise ValueError(f"{text!r}: the prefix length is not a number from 0 to {addr.max_prefixlen}")
    return ipaddress.ip_network((addr, int(prefix)), strict=False)


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

    __slots__ = ("trusted", "header", "forwarded_for", "recursive", "proxy_protocol")

    def __init__(self, trusted_ips: Iterable[str], header: str, recursive: bool) -> None:
        self.trusted = AddressSet(parse_network(t) for t in trusted_ips)
        self.header = header.lower().encode()
        # nginx's realip reads every X-Forwarded-For line only for the header spelled so (ngx_http_realip: strcmp)
        self.forwarded_for = header == "X-Forwarded-For"
        self.recursive = recursive
        self.proxy_protocol = header == "proxy_protocol"  # (strcmp too: any other spelling is a header's name)

    def resolve(self, peer: str, headers: Headers, proxied: tuple[str, int] | None = None) -> tuple[str, bool]:
        """(the client's address, whether the socket peer is trusted): nginx's $remote_addr, Kong's
        kong.client.get_forwarded_ip(). `proxied`: the connection's PROXY protocol client (proxied_client)."""
        if peer not in self.trusted:
            return peer, False
        if self.proxy_protocol:
            return (proxied[0] if proxied is not None else peer), True
        found = self._forwarded(peer, headers)
        return (ntop(found[0]) if found is not None else peer), True

    def forwarded_port(self, peer: str, port: int | None, headers: Headers,
                       proxied: tuple[str, int] | None = None) -> int | None:
        """The client's port as nginx's $remote_port says it after realip (Kong's kong.client.get_forwarded_port()):
        the socket peer's `port`, unless a trusted peer's header gave the address: then the port written with it, or
        None for an address without one; the PROXY protocol header's source port with proxy_protocol."""
        if peer not in self.trusted:
            return port
        if self.proxy_protocol:
            return proxied[1] if proxied is not None else port
        found = self._forwarded(peer, headers)
        return found[1] if found is not None else port

    def _forwarded(self, peer: str, headers: Headers) -> tuple[Address, int | None] | None:
        """The address (and port) the header of a trusted peer gives; None when it gives none (nginx's DECLINED)."""
        name = self.header
        if self.forwarded_for:
            values = [v for n, v in headers if n == name]
        else:
            values = next(([v] for n, v in headers if n == name), [])
        if not values:
            return None
        addr = parse_address(peer)
        if addr is None:
            return None
        rc, found = self._walk((addr, None), values)
        return found if rc != _DECLINED else None

    def _walk(self, addr: tuple[Address, int | None], values: list[bytes]) -> tuple[int, tuple[Address, int | None]]:
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

    def _walk_value(self, addr: tuple[Address, int | None], value: bytes) -> tuple[int, tuple[Address, int | None]]:
        """ngx_http_get_forwarded_addr_internal: one header line's list, right to left. (An IPv4-mapped address is
        matched against the IPv4 ranges, as ngx_cidr_match does.)"""
        found = False
        end = len(value)
        while True:
            if not self.trusted.contains_address(normalized(addr[0])):
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


def proxied_client(source: str | None, port: int) -> tuple[str, int] | None:
    """The client a PROXY protocol header names, as realip makes it $remote_addr and $remote_port: its source
    address read by ngx_parse_addr_port (a text nginx does not take there leaves the peer's: None), written as
    nginx writes addresses, with the header's source port (ngx_inet_set_port, whatever port the text had)."""
    found = _parse_addr_port(source.encode()) if source else None
    return (ntop(found[0]), port) if found is not None else None


def _parse_addr_port(text: bytes) -> tuple[Address, int | None] | None:
    """ngx_parse_addr_port of nginx 1.27.1 (Kong 3.x's): "ip", "ip:port" or "[ipv6]:port" -> (address, port or None);
    a bracketed address without a port is declined (src/core/ngx_inet.c:642; taken from nginx 1.27.3 on)."""
    addr = _parse_addr(text)
    if addr is not None:
        return addr, None
    if text[:1] == b"[":
        close = text.find(b"]")
        if close < 0 or text[close + 1:close + 2] != b":":
            return None
        host, port = text[1:close], text[close + 2:]
    else:
        colon = text.find(b":")
        if colon < 0:
            return None
        host, port = text[:colon], text[colon + 1:]
    if not (port.isdigit() and 1 <= int(port) <= 65535):  # ngx_atoi: ASCII digits only
        return None
    addr = _parse_addr(host)
    return (addr, int(port)) if addr is not None else None


def _parse_addr(text: bytes) -> Address | None:
    """ngx_parse_addr: ngx_inet_addr's IPv4, else ngx_inet6_addr's IPv6; not normalised (an IPv4-mapped address stays
    IPv6, as nginx keeps it)."""
    v4 = _inet_addr(text)
    if v4 is not None:
        return ipaddress.IPv4Address(v4)
    v6 = _inet6_addr(text)
    return ipaddress.IPv6Address(v6) if v6 is not None else None


def _inet_addr(text: bytes) -> int | None:
    """ngx_inet_addr: four decimal octets (leading zeros allowed, an empty one is 0: `1..2.3`), else None (also for
    255.255.255.255, which is nginx's INADDR_NONE)."""
    addr = octet = dots = 0
    for c in text:
        if 48 <= c <= 57:
            octet = octet * 10 + c - 48
            if octet > 255:
                return None
        elif c == 46:  # "."
            addr = (addr << 8) + octet
            octet = 0
            dots += 1
        else:
            return None
    if dots != 3:
        return None
    addr = ((addr << 8) + octet) & 0xFFFFFFFF
    return addr if addr != 0xFFFFFFFF else None


def _inet6_addr(text: bytes) -> bytes | None:
    """ngx_inet6_addr, step for step: the 16 bytes of an IPv6 address (an IPv4 tail allowed), else None."""
    if not text:
        return None
    out = bytearray()
    zero = -1  # where "::" stands, in out
    digit = 0  # where the current group starts in text (for an IPv4 tail)
    nibbles = word = 0
    n = 8
    i = 1 if text[0] == 58 else 0  # a leading ":" is skipped
    size = len(text)
    while i < size:
        c = text[i]
        i += 1
        if c == 58:  # ":"
            if nibbles:
                digit = i
                out += bytes((word >> 8, word & 0xFF))
                n -= 1
                if n:
                    nibbles = word = 0
                    continue
            elif zero < 0:
                digit = i
                zero = len(out)
                continue
            return None
        if c == 46 and nibbles:  # "." after digits: the rest is an IPv4 address
            if n < 2 or not digit:
                return None
            v4 = _inet_addr(text[digit:])
            if v4 is None:
                return None
            out += v4.to_bytes(4, "big")[:2]
            word = v4 & 0xFFFF
            n -= 1
            break
        nibbles += 1
        if nibbles > 4:
            return None
        value = _HEX.get(c)
        if value is None:
            return None
        word = word * 16 + value
    else:
        if nibbles == 0 and zero < 0:
            return None
    out += bytes((word >> 8, word & 0xFF))
    n -= 1
    if n:
        if zero >= 0:
            return bytes(out[:zero]) + bytes(2 * n) + bytes(out[zero:])
        return None
    return bytes(out) if zero < 0 else None


def ntop(addr: Address) -> str:
    """An address as nginx writes it (ngx_sock_ntop / ngx_inet6_ntop): IPv4 dotted; IPv6 in lower-case hex, the first
    longest run of two or more zero groups as "::", and `::ffff:a.b.c.d`, `::a.b.c.d` (and `::0.0.x.y` for a lone last
    group that is neither `::1` nor under 256) with the IPv4 tail dotted."""
    if isinstance(addr, ipaddress.IPv4Address):
        return str(addr)
    p = addr.packed
    zero = last = -1
    best = 1
    n = 0
    for i in range(0, 16, 2):
        if p[i] or p[i + 1]:
            if best < n:
                zero, best = last, n
            n = 0
            continue
        if n == 0:
            last = i
        n += 1
    if best < n:
        zero, best = last, n
    parts = []
    end = 16
    if zero == 0:
        if (best == 5 and p[10] == 0xFF and p[11] == 0xFF) or best == 6 or (best == 7 and p[14] != 0 and p[15] != 1):
            end = 12
        parts.append(":")
    i = 0
    while i < end:
        if i == zero:
            parts.append(":")
            i += best * 2
            continue
        parts.append(f"{p[i] * 256 + p[i + 1]:x}")
        if i < 14:
            parts.append(":")
        i += 2
    if end == 12:
        parts.append(f"{p[12]}.{p[13]}.{p[14]}.{p[15]}")
    return "".join(parts)
