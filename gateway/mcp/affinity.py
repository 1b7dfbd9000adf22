"""MCP session affinity of one route, on by default for every route (`mcp: false` turns it off).

An upstream's `Mcp-Session-Id` never reaches the client: the forwarder seals it (sessions.py) into the gateway's id,
which names the target that created the session and is bound to its Kong upstream. A request carrying a gateway id
is opened here into the upstream's id and that target, so it reaches the server holding its session whichever worker
(or gateway restart) takes it. A target named by a host name may have several addresses, which take turns connection
by connection: its sessions are sealed with the address that created them (`name:port@address`), and go to that
address. An id the gateway did not seal, sealed for another upstream (whose target may share the address: another
server behind one ingress, told apart by host_header), or whose target is no longer in the route's upstream, opens
to None: the client gets the spec's 404 and initialises a new session. Costs on other traffic: one name compare per
header, both ways, in loops that walk the headers anyway (gateway.pipeline.headers and forward).

A session created by an authenticated request is bound to its caller (caller_identity: the consumer, else the
token's issuer and subject, else the credential): its id opens only for that caller, another one (or a request no
one authenticated) gets the 404 of an unknown session. The MCP server cannot do this itself when it never sees the
token (ai-mcp-oauth2 does not forward it); the spec's Security Best Practices, "Session Hijacking", ask for it.
A session created unauthenticated is not bound.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from gateway.mcp.sessions import NO_UPSTREAM, SessionCodec, valid_header_value

if TYPE_CHECKING:
    from gateway.http.server import Exchange

log = logging.getLogger("gateway.mcp")


class SessionAffinity:
    """Opens and seals session ids for the targets of one upstream group."""

    __slots__ = ("_shared", "_group", "_upstream", "_index", "_index_of")

    def __init__(self, shared: Any, group: Any) -> None:
        self._shared = shared  # gateway.mcp.step.McpShared: its `codec` holds the keys (read on first use)
        self._group = group  # an UpstreamGroup: .targets, each with .name (discovery may replace the list)
        # what the ids are bound to: the upstream entity's name; a service's own host:port is named by its target
        self._upstream = NO_UPSTREAM if group.direct else group.name.encode()
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

    def open(self, session_id: bytes, identity: bytes | None) -> tuple[int, str | None, bytes] | None:
        """(target index, the address of a named target that created it (else None), upstream session id) of a
        gateway session id for a caller of `identity` (caller_identity); None when the gateway did not seal it for
        this upstream (forged, altered, another gateway's or upstream's, or from before the gateway bound ids to
        upstreams), it is bound to another caller, or its target left the upstream."""
        codec = self.codec
        opened = codec.decode(session_id, self._upstream)
        if opened is None:
            log.info("MCP session id refused (not issued by this gateway's keys for this route's upstream, or altered)")
            return None
        sealed, upstream_sid, subject = opened
        if subject is not None and (identity is None or not codec.same_subject(session_id, subject, identity)):
            log.info("MCP session id refused: its session belongs to another caller")
            return None
        target, _, address = sealed.partition("@")
        index = self.target_index(target)
        if index is None:
            log.info("MCP session of target %s refused: not a target of this route's upstream", target)
            return None
        return index, address or None, upstream_sid

    def seal(self, target: Any, upstream_sid: bytes, address: str, identity: bytes | None) -> bytes:
        """The gateway's id for a session a target (a TargetRuntime) created over a connection to `address`, bound
        to `identity` (the caller's, unless None); an id the spec forbids passes on unsealed."""
        if not valid_header_value(upstream_sid):
            log.warning("upstream %s sent an unusable Mcp-Session-Id (%d bytes): passed on unsealed", target.name,
                        len(upstream_sid))
            return upstream_sid
        return self.codec.encode(f"{target.name}@{address}" if target.named else target.name, upstream_sid, identity,
                                 self._upstream)


def target_down(group: Any, index: int, shared: Any) -> bool:
    """Whether a session's server, at `index` of `group`'s targets, is circuit-open or unhealthy: its sessions end
    (404), so the client starts one elsewhere. A drained target, one of weight 0 or a healthy one of an upstream
    below its healthchecks.threshold keeps its sessions: those stop new ones, as connection draining does. `shared`
    is the worker's gateway.state.SharedState (None: every unusable target counts as down)."""
    return index in group.unusable and (shared is None or shared.is_down(group.keys[index]))


def caller_identity(ex: Exchange) -> bytes | None:
    """Who a request is, as its MCP sessions are bound to: kind and id of its consumer, else of the token's issuer
    and subject (ai-mcp-oauth2 without a consumer), else of its credential; None when no one authenticated it."""
    who = ex.consumer
    if who is None or who.anonymous:  # (the anonymous consumer is whoever did not authenticate)
        return None
    if who.id is not None:
        return b"consumer\x00" + who.id.encode("utf-8", "surrogatepass")
    state = ex.state
    entry = state.get("oauth2") if state is not None else None
    if entry is not None:
        sub = entry.claims.get("sub")
        if type(sub) is str and sub:
            # iss is one of the configured authorization servers (a URL: no NUL); JSON strings may hold surrogates
            iss: str = entry.claims["iss"].rstrip("/")
            return b"token\x00" + iss.encode("utf-8", "surrogatepass") + b"\x00" + sub.encode("utf-8", "surrogatepass")
    credential = who.credential_id
    return b"credential\x00" + credential.encode("utf-8", "surrogatepass") if credential else None
