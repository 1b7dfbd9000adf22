"""Kong AI Gateway's ai-mcp-proxy plugin config, in `mode: passthrough-listener` (the gateway in front of MCP servers,
governing them per tool). Kong's other modes turn REST APIs into MCP tools, which this gateway does not do: they are
refused, as are the keys that only they use (a tool's method/path/parameters, `server`)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

Subjects = list[Annotated[str, msgspec.Meta(min_length=1)]]


class Acl(msgspec.Struct, forbid_unknown_fields=True):
    """Who may use a tool: `deny` wins over `allow`; no `allow` list lets everyone not denied in."""

    allow: Subjects | None = None
    deny: Subjects | None = None


class Tool(msgspec.Struct, forbid_unknown_fields=True):
    """A tool of the upstream MCP servers, by its exact name, with its access control."""

    name: Annotated[str, msgspec.Meta(min_length=1)]
    description: str | None = None  # Kong requires it for every tool; in passthrough mode it only documents
    acl: Acl | None = None


class DefaultAcl(msgspec.Struct, forbid_unknown_fields=True):
    scope: Literal["tools"] = "tools"
    allow: Subjects | None = None
    deny: Subjects | None = None


class Logging(msgspec.Struct, forbid_unknown_fields=True):
    log_audits: bool = False  # an audit line per tools/call (gateway.mcp.audit, to gateway.mcp.audit_log)
    log_payloads: bool = False
    log_statistics: bool = False

    def __post_init__(self) -> None:
        for name in ("log_payloads", "log_statistics"):
            if getattr(self, name):
                raise ValueError(f"logging.{name}: not supported (the gateway writes one audit line per tools/call "
                                 "with logging.log_audits, to gateway.mcp.audit_log, without payloads)")


class AiMcpProxyConfig(msgspec.Struct, forbid_unknown_fields=True):
    mode: str
    tools: list[Tool] = []
    default_acl: list[DefaultAcl] = []
    include_consumer_groups: bool = False
    consumer_identifier: Literal["username", "consumer_id", "custom_id"] = "username"
    acl_attribute_type: Literal["consumer", "oauth_access_token"] = "consumer"
    access_token_claim_field: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    max_request_body_size: Annotated[int, msgspec.Meta(ge=0)] = 1 << 20
    logging: Logging = msgspec.field(default_factory=Logging)

    def __post_init__(self) -> None:
        if self.mode != "passthrough-listener":
            raise ValueError(f"mode: {self.mode!r} is not supported: the gateway governs existing MCP servers "
                             "(mode passthrough-listener); it does not turn REST APIs into MCP tools")
        if self.max_request_body_size == 0:
            raise ValueError("max_request_body_size: 0 (unlimited) is not supported: the gateway reads each MCP "
                             "body whole to judge it; give a size in bytes (default 1048576)")
        names = [t.name for t in self.tools]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"tools: the tool {name!r} is listed twice")
        if len(self.default_acl) > 1:
            raise ValueError("default_acl: one entry for scope tools (the only scope of passthrough-listener mode)")
        if self.acl_attribute_type == "oauth_access_token":
            if self.access_token_claim_field is None:
                raise ValueError("access_token_claim_field: required when acl_attribute_type is oauth_access_token")
            if self.include_consumer_groups:
                raise ValueError("include_consumer_groups: consumer groups are subjects only with acl_attribute_type "
                                 "consumer")
        elif self.access_token_claim_field is not None:
            raise ValueError("access_token_claim_field: only with acl_attribute_type oauth_access_token")
