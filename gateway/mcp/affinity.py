"""MCP session affinity of one route, on by default for every route (`mcp: false` turns it off).

An upstream's `Mcp-Session-Id` never reaches the client: the forwarder seals it (sessions.py) into the gateway's id,
which names the target that created the session. A request carrying a gateway id is opened here into the upstream's
id and that target, so it reaches the server holding its session whichever worker (or gateway restart) takes it. An
id the gateway did not seal, or whose target is no longer in the route's upstream, opens to None: the client gets
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

    def open(self, session_id: bytes) -> tuple[int, bytes] | None:
        """(target index, upstream session id) of a gateway session id; None when the gateway did not seal it
        (forged, altered, another gateway's, or from before the gateway) or its target left the upstream."""
        opened = self.codec.decode(session_id)
        if opened is None:
            log.info("MCP session id refused (not issued by this gateway's keys, or altered)")
            return None
        target, upstream_sid = opened
        index = self.target_index(target)
        if index is None:
            log.info("MCP session of target %s refused: not a target of this route's upstream", target)
            return None
        return index, upstream_sid

    def seal(self, target_name: str, upstream_sid: bytes) -> bytes:
        """The gateway's id for a session `target_name` created; an id the spec forbids passes on unsealed."""
        if not valid_header_value(upstream_sid):
            log.warning("upstream %s sent an unusable Mcp-Session-Id (%d bytes): passed on unsealed", target_name,
                        len(upstream_sid))
            return upstream_sid
        return self.codec.encode(target_name, upstream_sid)
