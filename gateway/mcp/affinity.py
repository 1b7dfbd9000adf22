"""MCP session affinity of one route, on by default for every route (`mcp: false` turns it off).

An upstream's `Mcp-Session-Id` never reaches the client: the forwarder seals it (sessions.py) into the gateway's id,
which names the target that created the session. A request carrying a gateway id is opened here into the upstream's
id and that target, so it reaches the server holding its session whichever worker (or gateway restart) takes it. A
target named by a host name may have several addresses, which take turns connection by connection: its sessions are
sealed with the address that created them (`name:port@address`), and go to that address. An id the gateway did not
seal, or whose target is no longer in the route's upstream, opens to None: the client gets
the spec's 404 and initialises a new session. Costs on other traffic: one name compare per header, both ways, in
loops that walk the headers anyway (gateway.pipeline.headers and forward).
"""

from __future__ import annotations

import logging
from typing import Any

from gateway.mcp.sessions import SessionCodec, valid_header_value

log = logging.getLogger("gateway.mcp")


class SessionAffinity:
    """Opens and seals session ids for the targets of one upstream group."""

    __slots__ = ("_shared", "_group", "_index", "_index_of")

    def __init__(self, shared: Any, group: Any) -> None:
        self._shared = shared  # gateway.mcp.step.McpShared: its `codec` holds the keys (read on first use)
        self._group = group  # an UpstreamGroup: .targets, each with .name (discovery may replace the list)
        self._index: dict[str, int] = {}
        self._index_of: object = None

    @property
    def codec(self) -> SessionCodec:
        return self._shared.codec  # type: ignore[no-any-return]

    def target_index(self, name: str) -> int | None:
        """The index of target `name` ("host:port") in the group's current target list."""
        targets: list[Any] = self._group.targets
        if self._index_of is not targets or len(self._index) != len(targets):
            self._index = {t.name: i for i, t in enumerate(targets)}
            self._index_of = targets
        return self._index.get(name)

    def open(self, session_id: bytes) -> tuple[int, str | None, bytes] | None:
        """(target index, the address of a named target that created it (else None), upstream session id) of a
        gateway session id; None when the gateway did not seal it (forged, altered, another gateway's, or from
        before the gateway) or its target left the upstream."""
        opened = self.codec.decode(session_id)
        if opened is None:
            log.info("MCP session id refused (not issued by this gateway's keys, or altered)")
            return None
        sealed, upstream_sid = opened
        target, _, address = sealed.partition("@")
        index = self.target_index(target)
        if index is None:
            log.info("MCP session of target %s refused: not a target of this route's upstream", target)
            return None
        return index, address or None, upstream_sid

    def seal(self, target: Any, upstream_sid: bytes, address: str) -> bytes:
        """The gateway's id for a session a target (a TargetRuntime) created over a connection to `address`; an id
        the spec forbids passes on unsealed."""
        if not valid_header_value(upstream_sid):
            log.warning("upstream %s sent an unusable Mcp-Session-Id (%d bytes): passed on unsealed", target.name,
                        len(upstream_sid))
            return upstream_sid
        return self.codec.encode(f"{target.name}@{address}" if target.named else target.name, upstream_sid)
