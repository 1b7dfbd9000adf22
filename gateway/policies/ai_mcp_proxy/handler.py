"""ai-mcp-proxy in passthrough-listener mode: per-tool access control in front of MCP servers.

Every POST body is read whole (at most max_request_body_size: larger, 413 with a JSON-RPC error) and judged message
by message (gateway.mcp.governance): a tools/call the caller may not make never reaches the server; the gateway
answers it with a JSON-RPC error with the request's id (code -32602, "tool 'X' is not allowed"), with HTTP 200 as an
MCP server answers a tool call it will not run. With `acl_attribute_type: oauth_access_token` on the token's
`scope` (or `scp`) claim, a refused single call is answered 403 with `WWW-Authenticate: Bearer
error="insufficient_scope", scope="..."` instead, so an MCP client can ask its authorization server for the scope
(the spec's step-up). tools/list answers are filtered for the caller, in JSON and in event-stream answers; a batch
is judged element by element and its answer carries the gateway's errors beside the server's. A body that is not
JSON-RPC gets 400 (-32700 / -32600): what cannot be judged is not forwarded.

Subjects: the consumer's username (consumer_identifier: or its id, or custom_id) and, with include_consumer_groups,
its groups; or, with acl_attribute_type oauth_access_token, the values of the token's access_token_claim_field
(ai-mcp-oauth2 must authenticate the request).
"""

from __future__ import annotations

import logging

from gateway.http.server import Exchange
from gateway.mcp import body as mcp_body
from gateway.mcp import jsonrpc
from gateway.mcp.affinity import caller_identity, target_down
from gateway.mcp.audit import ToolAudit, audit_log_for
from gateway.mcp.bearer import challenge, claim_at
from gateway.mcp.governance import ANY_ID, Denial, ResponseEdit, Verdict, error_response, judge
from gateway.mcp.step import McpRequest, session_not_found
from gateway.mcp.toolacl import SPACE_SEPARATED, Rule, ToolAcl, claim_path, claim_subjects
from gateway.policies.ai_mcp_proxy.schema import AiMcpProxyConfig

log = logging.getLogger("gateway.policies")

JSON = b"application/json"
_NO_SUBJECTS: frozenset[str] = frozenset()
_IDENTIFIER = {"username": "username", "consumer_id": "id", "custom_id": "custom_id"}


class AiMcpProxy:
    name = "ai-mcp-proxy"
    priority = 820  # Kong's

    def __init__(self, config: AiMcpProxyConfig, plugin_id: str, audit_log: str = "-", shared: object = None) -> None:
        default = next((Rule(d.allow, d.deny) for d in config.default_acl), None)
        self.acl = ToolAcl({t.name: Rule(t.acl.allow, t.acl.deny) for t in config.tools if t.acl is not None},
                           default)
        self.limit = config.max_request_body_size
        self.identifier = _IDENTIFIER[config.consumer_identifier]
        self.groups = config.include_consumer_groups
        self.claim = claim_path(config.access_token_claim_field) \
            if config.acl_attribute_type == "oauth_access_token" and config.access_token_claim_field else None
        # Refusals by a rule on the token's scopes are the spec's insufficient_scope (403), so clients can step up.
        self.scoped = self.claim is not None and bool(self.claim) and self.claim[-1] in SPACE_SEPARATED
        self.audit = ToolAudit(audit_log_for(audit_log)) if config.logging.log_audits else None
        self.too_large = error_response(None, jsonrpc.INVALID_REQUEST,
                                        f"request body larger than max_request_body_size ({self.limit} bytes)")
        self.shared = shared  # the worker's gateway.state.SharedState: whether a session's server is down

    def subjects(self, ex: Exchange) -> frozenset[str]:
        """Who the caller is, as the ACLs name it."""
        if self.claim is not None:
            entry = ex.state.get("oauth2") if ex.state is not None else None
            return claim_subjects(claim_at(entry.claims, self.claim), self.claim) if entry is not None else \
                _NO_SUBJECTS
        who = ex.consumer
        if who is None:
            return _NO_SUBJECTS
        ident = getattr(who, self.identifier)
        if self.groups and who.groups:
            return frozenset((ident, *who.groups)) if ident is not None else frozenset(who.groups)
        return frozenset((ident,)) if ident is not None else _NO_SUBJECTS

    async def access(self, ex: Exchange) -> bool:
        method = ex.request.method
        acl = self.acl
        if method != b"POST":
            if method == b"GET" and not acl.open:  # the server's stream may replay a tools/list answer
                subjects = self.subjects(ex)
                mcp = mcp_body.current(ex) or mcp_body.attach(ex, McpRequest())
                mcp.edit = ResponseEdit({ANY_ID}, lambda tool: acl.allowed(tool, subjects), [], False)
                _no_coding(ex)
            return False
        mcp, whole = mcp_body.buffered(ex, self.limit) or await mcp_body.whole(ex, self.limit)
        if not whole:
            ex.close_after = True
            await ex.respond(413, self.too_large)
            return True
        body = mcp.body or b""
        decoded = mcp_body.messages(mcp)
        if decoded is None:
            await ex.respond(400, _unreadable(body))
            return True
        messages, batch = decoded
        subjects = self.subjects(ex)
        verdict = judge(messages, batch, lambda tool: self._decide(tool, subjects), body, not acl.open)
        if ex.state is not None:
            ex.state["mcp_calls"] = verdict.calls
        if verdict.forward is None:
            await self._answer(ex, verdict)
            return True
        if verdict.forward is not body:
            mcp.body = verdict.forward
            _set_length(ex, len(verdict.forward))
        if verdict.list_ids is not None or verdict.errors:
            mcp.edit = ResponseEdit(verdict.list_ids, lambda tool: acl.allowed(tool, subjects), verdict.errors,
                                    verdict.batch)
            _no_coding(ex)
        return False

    def _decide(self, tool: str, subjects: frozenset[str]) -> Denial | None:
        rule = self.acl.rule(tool)
        if rule is None or rule.permits(subjects):
            return None
        scope = " ".join(sorted(rule.allow)) if self.scoped and rule.allow else None
        return Denial(f"tool '{tool}' is not allowed", scope)

    async def _answer(self, ex: Exchange, verdict: Verdict) -> None:
        """Nothing is left to forward: the gateway's errors are the whole answer (202 when there are none), or the
        400 a server gives an unsupported MCP-Protocol-Version, which it checks before it runs anything."""
        for name, value in ex.request.headers:
            if name == b"mcp-protocol-version" and (refused := jsonrpc.unsupported_version(value)) is not None:
                await ex.respond(400, refused)
                return
        if not _session_known(ex, self.shared):  # the forwarder's answer: the client must not think the session alive
            await session_not_found(ex)
            return
        if not verdict.errors:
            await ex.send_head(202, [(b"content-length", b"0")], end=True)
            return
        if verdict.batch:
            await ex.respond(200, b"[" + b",".join(verdict.errors) + b"]")
            return
        denial = verdict.denial
        entry = ex.state.get("oauth2") if ex.state is not None else None
        if denial is not None and denial.scope is not None and entry is not None:
            www = challenge(entry.challenge_url, "insufficient_scope", denial.message, denial.scope)
            await ex.respond(403, verdict.errors[0], extra=[(b"www-authenticate", www.encode())])
            return
        await ex.respond(200, verdict.errors[0])


def _unreadable(body: bytes) -> bytes:
    """The JSON-RPC error for a body the gateway cannot judge: not JSON (-32700), or not JSON-RPC (-32600)."""
    try:
        jsonrpc.msgspec.json.decode(body)
    except (jsonrpc.msgspec.DecodeError, RecursionError):
        return error_response(None, jsonrpc.PARSE_ERROR, "Parse error: the body is not JSON")
    return error_response(None, jsonrpc.INVALID_REQUEST, "Invalid Request: expected a JSON-RPC message or a batch "
                          f"of at most {jsonrpc.MAX_BATCH} of them")


def _no_coding(ex: Exchange) -> None:
    """The answer may be edited: ask the server for it uncompressed (a compressed one cannot be filtered, and an
    event stream would be read whole to find that out)."""
    ex.request.headers = [hv for hv in ex.request.headers if hv[0] != b"accept-encoding"]


def _set_length(ex: Exchange, length: int) -> None:
    """The body changed size (a batch without its refused elements): its Content-Length follows."""
    headers = ex.request.headers
    for i, (name, _) in enumerate(headers):
        if name == b"content-length":
            headers[i] = (name, b"%d" % length)


def _session_known(ex: Exchange, shared: object) -> bool:
    """False when the request names an MCP session the route's affinity cannot open (forged, another caller's, its
    target gone) or whose server is circuit-open or unhealthy: the forwarder answers those 404, and so must an answer
    made here (MCP 2025-11-25 transports, Session Management: a request of a terminated session gets 404, so the
    client starts a new one)."""
    route = ex.route
    affinity = getattr(route, "affinity", None)
    if affinity is None:
        return True
    for name, value in ex.request.headers:
        if name == b"mcp-session-id":
            opened = affinity.open(value, caller_identity(ex))
            return opened is not None and not target_down(route.service.group, opened[0], shared)  # type: ignore[union-attr]
    return True
