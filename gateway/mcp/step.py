"""The MCP step of the request pipeline, run only for MCP routes (route `mcp: true`, `mcp_methods`, `mcp_tools`).

    route ─▶ policies ─▶ MCP step ─▶ forward (pinned target or balancer) ─▶ relay (session id sealed)

The step, in order: the Host check (421, gateway.mcp.hosts), the Origin check (403) and the 2026-07-28 header
check (Mcp-Method / Mcp-Name against the body, 400 with JSON-RPC error -32020). Session affinity is not part of it:
every route has it unless `mcp: false` (gateway.mcp.affinity, applied by the forwarder).

Bodies are read only when needed (routing on method/tool, or a request with Mcp-Method/Mcp-Name headers), and then
at most `gateway.mcp.peek_bytes`; the bytes read are handed to the forwarder, which sends them first (or given back
to a plugin that reads the body: gateway.mcp.body). When a route on method or tool could take a request, a body that
cannot be attributed is refused rather than routed as something else: 400 (JSON-RPC -32700 or -32600) when it is not
a JSON-RPC message. A POST routed there on its Mcp-Method header has the header check before routing
(`peek_for_routing`), since the route it picks may be a plain one, which has no MCP step. A body longer than
peek_bytes is then read whole (gateway.mcp.confirm, up to `whole_bytes`) before the call its first bytes name is
routed on or confirms the headers, since the server runs the last of a repeated member: 400 when the whole body
names another call, 413 (400 with -32020 for the header check) when it is too long to know. What the first bytes
leave unnamed (a response has no method; a method or tool may follow large params) is taken from the whole body the
same way: a response goes where a request without a method goes. On a route no method or tool decided, a body too
long to read whole goes to the server with its headers unconfirmed: nothing in the gateway acts on them there, and
the server checks them against what it runs (SEP-2243 requires it of servers).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from gateway.config.mcp import McpSettings
from gateway.http.codec import Headers
from gateway.http.server import Exchange
from gateway.mcp import jsonrpc
from gateway.mcp.confirm import mismatch, read_all, read_to, unnamed, whole_call, whole_limit
from gateway.mcp.hosts import HostPolicy, check_host_entry, default_allowed_hosts
from gateway.mcp.keys import default_key_file, file_or_random_key, key_file_problem, resolve_secret
from gateway.mcp.origin import PASS, REWRITE, OriginPolicy, check_entry
from gateway.mcp.sessions import SessionCodec

log = logging.getLogger("gateway.mcp")

AUDIT_LOG_NAME = "mcp-audit.log"  # ai-mcp-proxy's audit lines, beside the pid file unless gateway.mcp.audit_log
SESSION_NOT_FOUND = jsonrpc.error_body(jsonrpc.SESSION_NOT_FOUND, "Session not found")
ORIGIN_FORBIDDEN = jsonrpc.error_body(jsonrpc.INVALID_REQUEST, "Origin not allowed")
HOST_MISDIRECTED = jsonrpc.error_body(jsonrpc.INVALID_REQUEST, "Invalid Host header")
_INBOUND = {b"origin": 0, b"mcp-method": 1, b"mcp-name": 2, b"mcp-protocol-version": 3}  # what inbound reads


class McpShared:
    """The gateway-wide MCP settings of one config load: keys (the codec), Origin policy, peek bound."""

    def __init__(self, settings: McpSettings, pid_file: str, errors: list[str],
                 listen_hosts: Sequence[str] = ("127.0.0.1",)) -> None:
        self.peek_bytes = settings.peek_bytes
        self.whole_bytes = whole_limit(settings.peek_bytes)  # a longer body's call is read whole up to this
        self.key_file = settings.session_key_file or default_key_file(pid_file)
        self.audit_log = settings.audit_log or os.path.join(os.path.dirname(os.path.abspath(pid_file)),
                                                            AUDIT_LOG_NAME)
        self._codec: SessionCodec | None = None
        keys: list[tuple[str, bytes]] = []
        for i, key in enumerate(settings.session_keys):
            try:
                keys.append((key.id, resolve_secret(key.secret)))
            except ValueError as e:
                errors.append(f"gateway.mcp.session_keys[{i}].secret: {e}")
        if keys and len(keys) == len(settings.session_keys):
            try:
                self._codec = SessionCodec(keys)
            except ValueError as e:
                errors.append(f"gateway.mcp.session_keys: {e}")
        elif not settings.session_keys and (why := key_file_problem(self.key_file)) is not None:
            # (at run time it would give each process a random key of its own: file_or_random_key)
            errors.append(f"gateway.mcp.session_key_file: {why}")
        origin = settings.origin
        for i, entry in enumerate(origin.allow):
            if (why := check_entry(entry)) is not None:
                errors.append(f"gateway.mcp.origin.allow[{i}]: {why}")
        if origin.upstream != PASS and not origin.allow:
            errors.append(f"gateway.mcp.origin.upstream is {origin.upstream}: it hides the client's Origin from the "
                          'upstream, so set gateway.mcp.origin.allow (["*"] accepts any origin)')
        self.origin = OriginPolicy(origin.allow, origin.upstream)
        allowed = settings.allowed_hosts
        for i, entry in enumerate(allowed or ()):
            if (why := check_host_entry(entry)) is not None:
                errors.append(f"gateway.mcp.allowed_hosts[{i}]: {why}")
        self.hosts = HostPolicy(default_allowed_hosts(listen_hosts) if allowed is None else allowed)

    @property
    def codec(self) -> SessionCodec:
        """The session-id codec; with no configured keys, the key file is read (or created) on first use."""
        codec = self._codec
        if codec is None:
            codec = self._codec = SessionCodec([file_or_random_key(self.key_file)])
        return codec


class McpRequest:
    """What the MCP step (and the policies that read MCP bodies) learnt about one request, for the forwarder: body
    bytes already read, the Origin policy, edits its answer needs (ai-mcp-proxy: gateway.mcp.governance)."""

    __slots__ = ("body", "body_done", "info", "peeked", "checked", "decoded", "lenient", "origin_mode", "edit")

    def __init__(self) -> None:
        self.body: bytes | None = None  # None: nothing read yet (the forwarder takes the buffered body itself)
        self.body_done = False
        self.info: jsonrpc.RpcInfo | None = None
        self.peeked = False  # info comes from the body (not only from Mcp-Method / Mcp-Name headers)
        self.checked = False  # the Mcp-Method / Mcp-Name headers agree with the body
        self.decoded: Any = None  # the whole body's messages, once decoded (gateway.mcp.body.messages)
        self.lenient: Any = None  # as a server's lenient parser reads them, once (gateway.mcp.body.leniently)
        self.origin_mode = PASS
        self.edit: Any = None  # a gateway.mcp.governance.ResponseEdit for the answer, or None

    def take_body(self, ex: Exchange) -> tuple[bytes, bool]:
        """The body bytes in hand for the forwarder: those read here, else the Exchange's (a plugin's, say)."""
        if self.body is None:
            return ex.take_buffered_body()
        body, self.body = self.body, b""
        return body, self.body_done

    def give_back(self, replaced: bool = False) -> bytes | None:
        """Hand the bytes read here back to the Exchange (gateway.http.server.BodyReader), when a plugin reads the
        body (Kong's plugins read the client's whole body, whatever the router looked at): the next reader here
        takes them from there again, with what a plugin set in their place (`replaced`: then the messages decoded
        from the old body no longer hold)."""
        body, self.body, self.body_done = self.body, None, False
        if replaced:
            self.decoded = self.lenient = None
        return body

    def upstream_headers(self, headers: Headers) -> Headers:
        """Drop the client's Origin when the policy strips or rewrites it."""
        if self.origin_mode == PASS:
            return headers
        return [hv for hv in headers if hv[0] != b"origin"]

    @property
    def rewrite_origin(self) -> bool:
        return self.origin_mode == REWRITE


class McpRoute:
    """The MCP side of a route with `mcp: true` (or mcp_methods / mcp_tools): its method/tool match (used by the
    router) and the inbound step."""

    __slots__ = ("shared", "methods", "tools")

    def __init__(self, shared: McpShared, methods: Sequence[str] = (), tools: Sequence[str] = ()) -> None:
        self.shared = shared
        self.methods = frozenset(methods)
        self.tools = frozenset(tools)

    async def inbound(self, ex: Exchange, mcp: McpRequest | None) -> McpRequest | None:
        """Check the request's Host, Origin and MCP headers; None when it has been answered here (421/403/400)."""
        req = ex.request
        found: list[bytes | None] = [None, None, None, None]
        slots = _INBOUND
        for name, value in req.headers:
            slot = slots.get(name)
            if slot is not None:
                found[slot] = value
        origin, h_method, h_name, h_version = found
        shared = self.shared
        if not shared.hosts.allowed(req.host):
            log.info("MCP request with Host %r refused (421): not in gateway.mcp.allowed_hosts", req.host)
            await ex.respond(421, HOST_MISDIRECTED)
            return None
        if mcp is None:
            mcp = McpRequest()
        if origin is not None:
            if not shared.origin.allowed(origin):
                await ex.respond(403, ORIGIN_FORBIDDEN)
                return None
            mcp.origin_mode = shared.origin.upstream
        if (h_method is not None or h_name is not None) and req.method == b"POST" and not mcp.checked:
            if not await _check_headers(ex, mcp, shared, h_method, h_name, h_version,
                                        bool(self.methods or self.tools)):
                return None
        return mcp


async def _check_headers(ex: Exchange, mcp: McpRequest, shared: McpShared, h_method: bytes | None,
                         h_name: bytes | None, h_version: bytes | None, routed: bool) -> bool:
    """The 2026-07-28 check of Mcp-Method / Mcp-Name / MCP-Protocol-Version against the body (its first peek_bytes,
    then all of a longer one: the server runs its last call, and its method or name may follow large params); False
    when the request has been answered (400 with -32020).

    `routed`: a route on MCP method or tool takes, or could take, the request. Only then does a body too long to read
    whole get 400: elsewhere nothing in the gateway acts on the headers, and the server, which SEP-2243 requires to
    check them against what it runs, gets the request unconfirmed (`checked` stays False)."""
    await read_peek(ex, mcp, shared.peek_bytes)
    info: jsonrpc.RpcInfo = mcp.info  # type: ignore[assignment]
    why = jsonrpc.header_mismatch(info, h_method, h_name, h_version, routed)
    missing = unnamed(info, names=True) if why is not None and info.valid else None
    if (why is None or missing is not None) and _cut(mcp, shared):
        if mcp.body_done or await read_all(ex, mcp, shared.whole_bytes):  # (a policy may hold it whole already)
            info = mcp.info = whole_call(mcp)
            why = jsonrpc.header_mismatch(info, h_method, h_name, h_version, routed)
        elif not routed:
            return True
        else:
            ex.close_after = True  # the rest of the body is not read
            if missing is None:
                why = (f"the body is longer than {shared.whole_bytes} bytes: the gateway cannot confirm the headers "
                       f"past its first {shared.peek_bytes} (gateway.mcp.peek_bytes), where a repeated member would "
                       "name the call a server runs, and a route on MCP method or tool could take the request "
                       "(raise gateway.mcp.peek_bytes to at least the body's length)")
            else:
                why = (f"the body is longer than {shared.whole_bytes} bytes and its {missing} is not within its "
                       f"first {shared.peek_bytes} (gateway.mcp.peek_bytes), and a route on MCP method or tool could "
                       "take the request: the gateway cannot confirm the headers (send it before large params, or "
                       "raise gateway.mcp.peek_bytes)")
    if why is not None:
        await ex.respond(400, jsonrpc.error_body(jsonrpc.HEADER_MISMATCH, why, info.id))
        return False
    mcp.checked = True
    return True


async def session_not_found(ex: Exchange) -> None:
    """404 with a JSON-RPC error: the spec's answer to an unknown session; the client initialises a new one."""
    await ex.respond(404, SESSION_NOT_FOUND)


async def peek_for_routing(ex: Exchange, shared: McpShared) -> McpRequest | None:
    """Read (at most peek_bytes of) the body to find the method and tool a route may match, and check a POST's
    Mcp-Method / Mcp-Name headers against it, whatever route they pick; None if answered."""
    mcp = McpRequest()
    req = ex.request
    h_method = h_name = h_version = None
    for name, value in req.headers:
        if name == b"mcp-method":
            h_method = value
        elif name == b"mcp-name":
            h_name = value
        elif name == b"mcp-protocol-version":
            h_version = value
    if h_method is not None:
        if req.method == b"POST":
            # 2026-07-28: the headers say it, but the route they pick may not look at them (a plain route, with
            # no MCP step): they are checked against the body here, so the body's call is the one routed.
            return mcp if await _check_headers(ex, mcp, shared, h_method, h_name, h_version, True) else None
        tool = jsonrpc.decode_header_value(h_name) if h_name is not None else None
        mcp.info = jsonrpc.RpcInfo(h_method.decode("latin-1"), tool)  # no body to check them against
        return mcp
    if req.method != b"POST":
        mcp.info = jsonrpc.NOT_JSON
        return mcp
    await read_peek(ex, mcp, shared.peek_bytes)
    info: jsonrpc.RpcInfo = mcp.info  # type: ignore[assignment]
    cut = _cut(mcp, shared)
    if not info.valid:
        await _unroutable(ex, mcp, cut)
        return None
    if cut and not await _confirm(ex, mcp, shared):
        return None
    return mcp


def _cut(mcp: McpRequest, shared: McpShared) -> bool:
    """Whether the peek saw only the first peek_bytes of a longer body (and is a JSON object's: a batch has no
    single call to confirm)."""
    info = mcp.info
    return (not mcp.body_done or len(mcp.body or b"") > shared.peek_bytes) and info is not None and not info.batch


async def _confirm(ex: Exchange, mcp: McpRequest, shared: McpShared) -> bool:
    """Read a body longer than peek_bytes whole and route on its call only if it is the one its first bytes name
    (the server runs the last of a repeated member), what they leave unnamed taken from the whole body; False when
    answered (413 too long to know, 400 another call or not a message)."""
    prefix: jsonrpc.RpcInfo = mcp.info  # type: ignore[assignment]
    if not await read_all(ex, mcp, shared.whole_bytes):
        ex.close_after = True  # the rest of the body is not read
        missing = unnamed(prefix)
        if missing is None:
            why = (f"the body is longer than {shared.whole_bytes} bytes: the call named in its first "
                   f"{shared.peek_bytes} (gateway.mcp.peek_bytes) cannot be confirmed, a member repeated after them "
                   "would be the one a server runs, and a route on MCP method or tool could take the request")
        else:
            why = (f"the body is longer than {shared.whole_bytes} bytes and its {missing} is not within its first "
                   f"{shared.peek_bytes} (gateway.mcp.peek_bytes), and a route on MCP method or tool could take the "
                   "request: send the method and tool name before large params, or raise gateway.mcp.peek_bytes")
        await ex.respond(413, jsonrpc.error_body(jsonrpc.INVALID_REQUEST, why, prefix.id))
        return False
    whole = mcp.info = whole_call(mcp)
    if not whole.valid:
        await _unroutable(ex, mcp, False)
        return False
    other = mismatch(prefix, whole, shared.peek_bytes)
    if other is not None:
        await ex.respond(400, jsonrpc.error_body(jsonrpc.INVALID_REQUEST, other, whole.id))
        return False
    return True


async def _unroutable(ex: Exchange, mcp: McpRequest, cut: bool) -> None:
    """Refuse a body that is not a JSON-RPC message while a route on method or tool could take it: routed as one
    without a method, it could reach a server through another route than its own, past that route's limits."""
    info: jsonrpc.RpcInfo = mcp.info  # type: ignore[assignment]
    if cut:
        ex.close_after = True  # the rest of the body is not read
    if info is jsonrpc.BAD_ID:
        await ex.respond(400, jsonrpc.error_body(jsonrpc.INVALID_REQUEST, "Invalid Request: the id is not a "
                                                 "string, number or null"))
    elif cut or not jsonrpc.is_json(mcp.body or b""):
        await ex.respond(400, jsonrpc.error_body(jsonrpc.PARSE_ERROR, "Parse error: the body is not JSON"))
    else:
        await ex.respond(400, jsonrpc.error_body(jsonrpc.INVALID_REQUEST, "Invalid Request: the body is not a "
                                                 "JSON-RPC message or batch"))


def routing_key(mcp: McpRequest) -> tuple[str | None, str | None]:
    """(method, tool name) for the router."""
    info = mcp.info
    if info is None:
        return None, None
    return info.method, info.tool


async def read_peek(ex: Exchange, mcp: McpRequest, limit: int) -> None:
    """Read the body up to `limit` (peek_bytes; it stays in `mcp` for the forwarder) and inspect it."""
    if mcp.peeked:
        return
    await read_to(ex, mcp, limit)
    body, done = mcp.body or b"", mcp.body_done
    mcp.peeked = True
    if done and len(body) <= limit:
        mcp.info = jsonrpc.peek(body, True)
    else:
        mcp.info = jsonrpc.peek(body[:limit], False)
