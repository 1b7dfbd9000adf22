"""What discovery reports: an upstream's full current target list, and the callback that receives it."""

from __future__ import annotations

import re
from collections.abc import Callable

import msgspec

from gateway.config.discovery import is_ipv6

# A host is a bracketed IPv6 address (its characters matched here, then parsed as an address by parse_host_port:
# "[10.0.0.1:80]" is none) or a name/IPv4 address of at most 253 characters (a DNS name's most) without ':',
# brackets, '/', whitespace, control characters or lone surrogates (JSON's "\ud800" decodes to one, which no UTF-8
# report to the keeper can carry); the port is ASCII digits (str's \d would take "٨٠" or, through int(), fail on
# "²").
_HOST_PORT = re.compile(
    r"^(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<host>[^:\[\]/\s\x00-\x1f\x7f\ud800-\udfff]{1,253})):(?P<port>[0-9]{1,5})$")


def address_text(host: str, port: int) -> str:
    """'host:port', '[v6]:port' for an IPv6 address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def target_key(host: str, port: int, hostname: str = "") -> str:
    """A target's identity: 'host:port' for an address given as it is (or a name standing for itself), and
    'hostname/host:port' for an address of a name, so that two names at one address are two targets, as Kong's
    balancer and health checker keep them (by ip, port and the target's name). '/' is in no host."""
    address = address_text(host, port)
    return address if not hostname or hostname == host else f"{hostname}/{address}"


def key_address(key: str) -> str:
    """The 'host:port' of a target_key (what it connects to)."""
    return key.rpartition("/")[2]


class TargetInfo(msgspec.Struct, frozen=True, order=True):
    """One target of an upstream: where it is and its balancing weight (0 = no traffic, as in Kong); `hostname`: the
    name it is an address of (gateway.discovery.dns), its Host and TLS name. `host` may itself be a name (an SRV
    record's target, a name answered with TTL 0): it is then resolved at each connection, as Kong's toip.
    For an address DNS made of a configured target: `target`, that target as Kong's balancer keeps it (`name:port`,
    one entry of balancer.targets however many records it has), and `dns`, where the address came from (Kong's
    get_dns_source: "A", "AAAA", "SRV", "ttl=0, virtual SRV"); both "" otherwise."""

    host: str
    port: int
    weight: int = 100
    hostname: str = ""
    target: str = ""
    dns: str = ""

    @property
    def name(self) -> str:
        """Its identity (target_key), the same spelling as the runtime's TargetRuntime.name."""
        return target_key(self.host, self.port, self.hostname)

    @property
    def address(self) -> str:
        """'host:port' ('[v6]:port'): where it connects."""
        return address_text(self.host, self.port)


OnChange = Callable[[str, list[TargetInfo]], None]
"""on_change(upstream name, full current target list): called whenever the list differs from the last one reported."""


def parse_host_port(text: str) -> tuple[str, int] | None:
    """'host:port' or '[v6]:port' -> (host, port); None when malformed, the port is out of range or what stands in
    brackets is no IPv6 address."""
    m = _HOST_PORT.match(text.strip())
    if not m:
        return None
    port = int(m.group("port"))
    if not 0 < port < 65536:
        return None
    v6 = m.group("v6")
    if v6 is not None and not is_ipv6(v6):
        return None
    return v6 or m.group("host"), port


def valid_host(host: str) -> bool:
    """Whether a bare host (a registry's address field: a name, an IPv4 or an unbracketed IPv6 address) is one
    parse_host_port accepts, so a target from a registry follows the same rules as one from a key's value."""
    return parse_host_port(f"[{host}]:1" if ":" in host else f"{host}:1") is not None


def normalise(targets: list[TargetInfo]) -> list[TargetInfo]:
    """One entry per target (its name: address and the name it is an address of; the last one wins), sorted: two
    reports of the same set compare equal."""
    return sorted({t.name: t for t in targets}.values())
