"""Where the DNS client's settings come from: a hosts file, resolv.conf (with LOCALDOMAIN and RES_OPTIONS), and
kong.conf's dns_resolver list, parsed as Kong's kong/resty/dns/utils.lua (parseHosts, parseResolvConf, applyEnv)
and kong/tools/dns.lua do.

Names come out lower-cased; IPv6 addresses come out without brackets (Kong brackets them; a socket wants them plain).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

MAXNS = 3  # nameservers taken from resolv.conf (utils.lua MAXNS)
MAXSEARCH = 6  # search domains taken from resolv.conf (utils.lua MAXSEARCH)

_BOOL_OPTIONS = frozenset({
    "debug", "rotate", "no-check-names", "inet6", "ip6-bytestring", "ip6-dotint", "no-ip6-dotint", "edns0",
    "single-request", "single-request-reopen", "no-tld-query", "use-vc"})
_NUM_OPTIONS = frozenset({"ndots", "timeout", "attempts"})
_OPTION = re.compile(r"^([^:]+):*(\d*)$")

Nameserver = tuple[str, int]


@dataclass
class HostsEntry:
    """The addresses the hosts file gives a name: its first IPv4 and its first IPv6 line win."""

    ipv4: str | None = None
    ipv6: str | None = None


@dataclass
class ResolvConf:
    """What resolv.conf says: nameserver entries as written (at most 3), `domain` or `search` (whichever comes
    last), and its options (ndots, timeout and attempts as numbers, the others as flags)."""

    nameservers: list[str] = field(default_factory=list)
    domain: str | None = None
    search: list[str] | None = None
    options: dict[str, int | bool] = field(default_factory=dict)


def _data(line: str) -> str | None:
    """The part of a line before a `#` or `;` comment, or None when there is none."""
    data = re.split(r"[#;]", line, maxsplit=1)[0]
    return data if data.strip() else None


def ip_family(text: str) -> str | None:
    """"ipv4" or "ipv6" when `text` is an address of that family (an IPv6 one may be in brackets), else None."""
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
        try:
            ipaddress.IPv6Address(text)
        except ValueError:
            return None
        return "ipv6"
    try:
        return "ipv4" if ipaddress.ip_address(text).version == 4 else "ipv6"
    except ValueError:
        return None


def parse_hosts(text: str) -> dict[str, HostsEntry]:
    """name (canonical names and aliases, lower-cased) -> its addresses, from the text of a hosts file. Lines whose
    first field is not an IP address are skipped; a name's first address of each family wins."""
    hosts: dict[str, HostsEntry] = {}
    for line in text.lower().splitlines():
        data = _data(line)
        if data is None:
            continue
        fields = data.split()
        if len(fields) < 2:
            continue
        family = ip_family(fields[0])
        if family is None:
            continue
        ip = fields[0].strip("[]")
        for name in fields[1:]:
            entry = hosts.setdefault(name, HostsEntry())
            if family == "ipv4" and entry.ipv4 is None:
                entry.ipv4 = ip
            elif family == "ipv6" and entry.ipv6 is None:
                entry.ipv6 = ip
    return hosts


def _parse_option(options: dict[str, int | bool], details: str) -> None:
    match = _OPTION.match(details)
    if match is None:
        return
    option, number = match.groups()
    if option in _BOOL_OPTIONS and number == "":
        options[option] = True
        if option == "ip6-dotint":
            options.pop("no-ip6-dotint", None)
        elif option == "no-ip6-dotint":
            options.pop("ip6-dotint", None)
    elif option in _NUM_OPTIONS and number:
        options[option] = int(number)


def parse_resolv_conf(text: str) -> ResolvConf:
    """The settings in the text of a resolv.conf; unknown keys and bad options are ignored, as the C resolver does."""
    conf = ResolvConf()
    for line in text.splitlines():
        data = _data(line)
        if data is None:
            continue
        match = re.match(r"^\s*([A-Za-z]+)\s+(.*?)\s*$", data)
        if match is None:
            continue
        key, details = match.groups()
        if key == "nameserver":
            if len(conf.nameservers) < MAXNS:
                conf.nameservers.append(details.lower())
        elif key == "domain":
            conf.search = None  # domain and search exclude each other: the last one wins
            conf.domain = details.lower()
        elif key == "search":
            conf.domain = None
            conf.search = [host.lower() for host in details.split()][:MAXSEARCH]
        elif key == "options":
            for option in details.split():
                _parse_option(conf.options, option)
    return conf


def apply_env(conf: ResolvConf, env: Mapping[str, str]) -> ResolvConf:
    """resolv.conf overridden by the environment as the C resolver does: LOCALDOMAIN replaces `search` (and
    `domain`), RES_OPTIONS adds options."""
    localdomain = env.get("LOCALDOMAIN", "")
    if localdomain:  # one of blanks too: it empties the search list (utils.lua `if localdomain ~= ""`)
        conf.domain = None
        conf.search = [host.lower() for host in localdomain.split()]
    for option in env.get("RES_OPTIONS", "").split():
        _parse_option(conf.options, option)
    return conf


def parse_nameserver(text: str, default_port: int = 53) -> Nameserver:
    """(ip, port) of a nameserver written "ip", "ip:port", "ipv6", "[ipv6]" or "[ipv6]:port" (a dns_resolver entry,
    or a resolv.conf nameserver, which some systems allow a port on); ValueError when it is none of those."""
    text = text.strip()
    host, port_text = text, ""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"invalid nameserver {text!r}: expected ip, ip:port or [ipv6]:port")
        port_text = rest[1:]
        if ip_family(host) != "ipv6":
            raise ValueError(f"invalid nameserver {text!r}: {host!r} is not an IPv6 address")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        if ip_family(host) != "ipv4":
            raise ValueError(f"invalid nameserver {text!r}: {host!r} is not an IPv4 address")
    elif ip_family(text) is None:
        raise ValueError(f"invalid nameserver {text!r}: not an IP address (a nameserver cannot be a name)")
    if port_text == "":
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"invalid nameserver {text!r}: port {port_text!r} is not in 1-65535")
    return host, int(port_text)


def resolv_conf_nameservers(conf: ResolvConf) -> list[Nameserver]:
    """resolv.conf's nameservers as Kong's client takes them (enable_ipv6 on, as kong/tools/dns.lua sets it):
    IPv6 ones with a scope (fe80::1%eth0) skipped, and so are entries that are not addresses."""
    servers: list[Nameserver] = []
    for entry in conf.nameservers:
        if "%" in entry:
            continue
        try:
            servers.append(parse_nameserver(entry))
        except ValueError:
            continue
    return servers
