"""The Origin policy of MCP routes (sans-I/O).

MCP servers must validate `Origin` against DNS rebinding (the Python SDK answers 403 to a foreign one). Behind a
gateway the browser's origin is not the server's own, so the check moves to the gateway: `allow` lists the accepted
origins, and `upstream` says what the server then sees: the client's Origin ("pass"), none ("strip"), or the
target's own origin ("rewrite", e.g. http://127.0.0.1:9001), which a server bound there accepts.

A request without Origin (every non-browser client) is always accepted, as the spec and the SDK do.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from gateway.config.errors import show

PASS, STRIP, REWRITE = "pass", "strip", "rewrite"


class OriginPolicy:
    __slots__ = ("check", "any", "exact", "ports", "upstream")

    def __init__(self, allow: Sequence[str], upstream: str = PASS) -> None:
        if upstream not in (PASS, STRIP, REWRITE):
            raise ValueError(f"upstream must be pass, strip or rewrite, got {upstream!r}")
        self.upstream = upstream
        self.check = bool(allow)
        self.any = "*" in allow
        exact: set[bytes] = set()
        ports: list[bytes] = []
        for entry in allow:
            if entry == "*":
                continue
            value = entry.strip().lower().rstrip("/").encode()
            if value.endswith(b":*"):
                ports.append(value[:-2])
            else:
                exact.add(value)
        self.exact = frozenset(exact)
        self.ports = [re.compile(re.escape(p) + rb"(?::\d{1,5})?\Z") for p in ports]

    def allowed(self, origin: bytes | None) -> bool:
        """Whether a request with this Origin header (None: absent) may pass the gateway."""
        if origin is None or not self.check or self.any:
            return True
        value = origin.strip().lower()
        if value in self.exact:
            return True
        return any(p.match(value) for p in self.ports)


def check_entry(entry: str) -> str | None:
    """Why an allow-list entry is malformed, or None."""
    if entry == "*":
        return None
    if entry == "null":
        return None  # the opaque origin of sandboxed frames and file: pages, allowed only when listed
    m = re.match(r"^(https?)://(\[[0-9a-fA-F:.]+\]|[^/:\s\[\]*]+)(:(\d{1,5}|\*))?/?$", entry)
    if m is None:
        return (f'expected "*", "null" or "scheme://host[:port]" (port may be "*"; the host is one name, no '
                f'wildcard), got {show(entry)}')
    return None
