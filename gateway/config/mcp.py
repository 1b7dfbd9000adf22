"""Config for the MCP-aware parts of the gateway: session-id keys, the Origin policy, body peeking.

Lives in `gateway.mcp:` under the `gateway:` block; the route fields `mcp`, `mcp_methods` and `mcp_tools` are on
`Route` (gateway.config.schema). Cross-field rules and secret resolution are checked when the config is compiled
(gateway.mcp.runtime), so `gateway check-config` reports them with their field paths.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

KeyId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,32}\Z")]


class _Base(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, dict=True):
    """Same options as gateway.config.schema.Base (not imported from there: schema imports this module)."""


class McpSessionKey(_Base):
    """One HMAC key for gateway session ids. The first key of the list signs; every key verifies (rotation)."""

    id: KeyId  # written into every session id it signs, so verification picks the right key
    secret: str  # the secret itself (at least 16 characters), or "env:NAME" to read it from the environment


class McpOrigin(_Base):
    """Origin policy on MCP routes (the DNS-rebinding defence MCP servers apply, moved to the gateway)."""

    # Origins accepted at the gateway: "https://app.example.com", "http://localhost:*" (any port), "*" (any).
    # Empty: the gateway does not check Origin (the upstream still does, when upstream is "pass").
    allow: list[str] = []
    # What the upstream sees: "pass" the client's Origin, "strip" it, or "rewrite" it to the target's own origin
    # (http://host:port, which an MCP server accepts). strip/rewrite need an allow list: they turn the upstream's
    # own check off, so the gateway must do it.
    upstream: Literal["pass", "strip", "rewrite"] = "pass"


class McpSettings(_Base):
    # HMAC keys for session ids; empty: one generated key kept in session_key_file (created with mode 0600 by the
    # first process that needs it), shared by every worker and kept across restarts.
    session_keys: list[McpSessionKey] = []
    session_key_file: str | None = None  # default: mcp-session.key beside gateway.pid_file (run/)
    origin: McpOrigin = msgspec.field(default_factory=McpOrigin)
    # Host values MCP routes (`mcp: true`) accept, else 421 (DNS rebinding, gateway.mcp.hosts); not set: on a
    # loopback-only listener the loopback names and listen addresses (as the SDK), elsewhere any.
    allowed_hosts: list[str] | None = None
    # At most this much of a JSON-RPC body is read to find its method and tool name (routing, header checks).
    peek_bytes: Annotated[int, msgspec.Meta(ge=1024, le=16 << 20)] = 65536
    # Where ai-mcp-proxy's audit lines go (logging.log_audits): a file, or "-" / "stdout"; default: mcp-audit.log
    # beside gateway.pid_file (run/).
    audit_log: str | None = None
