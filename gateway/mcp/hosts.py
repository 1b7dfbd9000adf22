"""The Host policy of MCP routes (sans-I/O): the DNS-rebinding defence MCP servers apply, moved to the gateway.

A browser tricked by DNS rebinding sends requests for `evil.example:8000` to a local server; MCP servers bound to
loopback answer 421 to a Host that is not theirs (the Python SDK allows `127.0.0.1:*`, `localhost:*`, `[::1]:*`).
Behind the gateway the server sees the target's own host:port, so its check always passes: the gateway checks the
client's Host instead. Entries: `host` (any port), `host:port`, `host:*`, `*.domain` (its subdomains, any port;
`*.domain:port` on that port only), `*:port` (any host on that port), or `*` (anything). By default
(`allowed_hosts` not set) a gateway listening only on loopback allows the loopback names and its listen addresses,
as the SDK does; one listening elsewhere allows any Host.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

from gateway.config.errors import show
from gateway.memo import Memo

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
VERDICTS_KEPT = 1024  # distinct Host values remembered (random Hosts are cheap to judge again)
MAX_KEPT_HOST = 300  # longer values are judged every time (a DNS name is at most 253 bytes)
_ENTRY = re.compile(r"^(\*|\*\.[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~-]+)(:(\d{1,5}|\*))?$")


class HostPolicy:
    """Which Host header values may reach an MCP route's servers."""

    __slots__ = ("any", "hosts", "host_ports", "suffixes", "suffix_ports", "ports", "_verdicts")

    def __init__(self, allow: Sequence[str]) -> None:
        hosts: set[bytes] = set()
        host_ports: set[bytes] = set()
        suffixes: list[bytes] = []
        suffix_ports: set[tuple[bytes, bytes]] = set()
        ports: set[bytes] = set()  # any host on these
        self.any = False
        for entry in allow:
            value = entry.strip().lower()
            host, _, port = value.rpartition(":") if not value.endswith("]") and ":" in value else (value, "", "")
            if port == "*":
                port = ""
            if host == "*":
                if port:
                    ports.add(port.encode())
                else:
                    self.any = True
            elif host.startswith("*."):
                if port:
                    suffix_ports.add((host[1:].encode(), port.encode()))
                else:
                    suffixes.append(host[1:].encode())
            elif port:
                host_ports.add(value.encode())
            else:
                hosts.add(host.encode())
        self.hosts = frozenset(hosts)
        self.host_ports = frozenset(host_ports)
        self.suffixes = tuple(suffixes)
        self.suffix_ports = frozenset(suffix_ports)
        self.ports = frozenset(ports)
        self._verdicts: Memo[bytes, bool] = Memo(VERDICTS_KEPT)  # Host values seen lately (the same few, in practice)

    def allowed(self, host: bytes | None) -> bool:
        """May a request with this Host header (None: absent, HTTP/1.0) pass the gateway?"""
        if self.any:
            return True
        if host is None:
            return False
        verdict = self._verdicts.get(host)
        if verdict is None:
            verdict = self._judge(host)
            if len(host) <= MAX_KEPT_HOST:
                self._verdicts.keep(host, verdict)
        return verdict

    def _judge(self, host: bytes) -> bool:
        value = host.lower()
        if value in self.host_ports:
            return True
        name = value[: value.index(b"]") + 1] if value.startswith(b"[") and b"]" in value else value.partition(b":")[0]
        if name in self.hosts or (bool(self.suffixes) and name.endswith(self.suffixes)):
            return True
        port = value[len(name) + 1:] if value[len(name):len(name) + 1] == b":" else b""
        if not port:
            return False
        return port in self.ports or any(name.endswith(suffix) and port == p for suffix, p in self.suffix_ports)


def check_host_entry(entry: str) -> str | None:
    """Why an allowed_hosts entry is malformed, or None."""
    if _ENTRY.match(entry.strip()) is None:
        return f'expected "host", "host:port", "host:*", "*.domain[:port]", "*:port" or "*", got {show(entry)}'
    return None


def default_allowed_hosts(listen_hosts: Sequence[str]) -> list[str]:
    """The SDK's default for a server bound to loopback, when every listen address is loopback; else any Host."""
    names: list[str] = list(LOOPBACK_NAMES)
    for host in listen_hosts:
        try:
            if not ipaddress.ip_address(host).is_loopback:
                return ["*"]
        except ValueError:
            if host != "localhost":
                return ["*"]
        names.append(f"[{host}]" if ":" in host else host)
    return names
