"""What discovery reports: an upstream's full current target list, and the callback that receives it."""

from __future__ import annotations

import re
from collections.abc import Callable

import msgspec

# A host is a bracketed IPv6 address or a name/IPv4 address of at most 253 characters (a DNS name's most) without
# ':', brackets, '/', whitespace, control characters or lone surrogates (JSON's "\ud800" decodes to one, which no
# UTF-8 report to the keeper can carry); the port is ASCII digits (str's \d would take "٨٠" or, through int(), fail
# on "²").
_HOST_PORT = re.compile(
    r"^(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<host>[^:\[\]/\s\x00-\x1f\x7f\ud800-\udfff]{1,253})):(?P<port>[0-9]{1,5})$")


class TargetInfo(msgspec.Struct, frozen=True, order=True):
    """One target of an upstream: where it is and its balancing weight (0 = no traffic, as in Kong); `hostname`: the
    name it is an address of (gateway.discovery.dns), its Host and TLS name."""

    host: str
    port: int
    weight: int = 100
    hostname: str = ""

    @property
    def name(self) -> str:
        """'host:port' ('[v6]:port'), the same spelling as the runtime's TargetRuntime.name."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


OnChange = Callable[[str, list[TargetInfo]], None]
"""on_change(upstream name, full current target list): called whenever the list differs from the last one reported."""


def parse_host_port(text: str) -> tuple[str, int] | None:
    """'host:port' or '[v6]:port' -> (host, port); None when malformed or the port is out of range."""
    m = _HOST_PORT.match(text.strip())
    if not m:
        return None
    port = int(m.group("port"))
    if not 0 < port < 65536:
        return None
    return m.group("v6") or m.group("host"), port


def valid_host(host: str) -> bool:
    """Whether a bare host (a registry's address field: a name, an IPv4 or an unbracketed IPv6 address) is one
    parse_host_port accepts, so a target from a registry follows the same rules as one from a key's value."""
    return parse_host_port(f"[{host}]:1" if ":" in host else f"{host}:1") is not None


def normalise(targets: list[TargetInfo]) -> list[TargetInfo]:
    """One entry per address (the last one wins), sorted: two reports of the same set compare equal."""
    by_addr: dict[tuple[str, int], TargetInfo] = {}
    for t in targets:
        by_addr[(t.host, t.port)] = t
    return sorted(by_addr.values())
